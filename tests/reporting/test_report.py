"""dwf_lab.reporting (tables, rendering, figures) on a small fixture of evaluation files.

Fixture (tests/fixtures/eval_small, dataset cifar10-subset):
- DWF seeds 0 and 1 (seed 1 lacks "pgd:100-a"; seed 0 adds "autoattack", "worst-case"),
- ResNet-18 (PGD-AT) seed 0, and the kit-only row "FGSM expert 1" (no PGD metrics).
"""
import html
import json
import math
import shutil
from pathlib import Path

import pytest

from dwf_lab.evaluation.records import load_results
from dwf_lab.reporting import paper
from dwf_lab.reporting.figures import figure_fgsm, figure_pgd
from dwf_lab.reporting.paper import TABLE2_COLUMNS, TABLE3_COLUMNS
from dwf_lab.reporting.render import PM_NOTE, to_html, to_markdown, write_report
from dwf_lab.reporting.tables import aggregate, build_tables

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "eval_small"
SHARED_TABLES = Path(__file__).resolve().parents[3] / "shared" / "paper-tables.json"


@pytest.fixture(scope="module")
def results():
    return load_results(FIXTURE)


@pytest.fixture(scope="module")
def tables(results):
    return build_tables(results, "cifar10-subset")


def _row(table, name):
    matches = [r for r in table["rows"] if r["row"] == name]
    assert len(matches) == 1, name
    return matches[0]


# -------------------------------------------------------------- aggregate --
def test_load_results_reads_every_file(results):
    assert len(results) == 4
    assert {r["row"] for r in results} == {"DWF", "ResNet-18 (PGD-AT)", "FGSM expert 1"}
    assert all(Path(r["source"]).parent == FIXTURE for r in results)


def test_aggregate_mean_std_by_hand(results):
    agg = aggregate(results)
    # paper rows in the paper's order first, then kit-only rows
    assert list(agg) == ["ResNet-18 (PGD-AT)", "DWF", "FGSM expert 1"]
    sa = agg["DWF"]["SA"]  # seeds: 84.0, 86.0
    assert sa["n"] == 2 and sa["mean"] == pytest.approx(85.0)
    assert sa["std"] == pytest.approx(math.sqrt(((84 - 85) ** 2 + (86 - 85) ** 2) / 1))
    assert agg["DWF"]["pgd:20"]["mean"] == pytest.approx((29.5 + 30.5) / 2)
    # a metric only one seed measured
    assert agg["DWF"]["pgd:100-a"] == {"mean": 27.0, "std": None, "n": 1}
    assert agg["DWF"]["autoattack"] == {"mean": 20.0, "std": None, "n": 1}
    # one seed: no std
    assert agg["ResNet-18 (PGD-AT)"]["SA"] == {"mean": 80.0, "std": None, "n": 1}
    assert "pgd:10" not in agg["FGSM expert 1"]


def test_duplicate_seed_is_an_error(results):
    twice = results + [dict(results[0], source="copy.json")]
    with pytest.raises(ValueError, match="two evaluation results"):
        aggregate(twice)


def test_mixed_datasets_are_an_error(results):
    other = dict(results[-1], dataset="svhn", seed=7, source="svhn.json")
    with pytest.raises(ValueError, match="mix datasets"):
        aggregate(results + [other])


def test_only_settings_that_change_numbers_raise_the_warning(results):
    def with_settings(**changes):
        last = dict(results[-1])
        last["settings"] = dict(last.get("settings") or {}, **changes)
        return build_tables(results[:-1] + [last], "cifar10-subset")["meta"]["settings_differ"]
    base = dict(results[0].get("settings") or {})
    assert with_settings(long=not base.get("long", True), pgd_steps=[20]) == []   # columns, not numbers
    assert with_settings(pgd_alpha=1 / 255) == ["pgd_alpha"]


def test_the_notes_say_which_models_were_attacked_in_bf16(results):
    last = dict(results[-1], settings=dict(results[-1].get("settings") or {}, precision="bf16"))
    tables = build_tables(results[:-1] + [last], "cifar10-subset")
    assert tables["meta"]["settings_differ"] == []          # a per-model setting, not a warning
    md = to_markdown(tables)
    line = next(x for x in md.splitlines() if x.startswith("- Attack arithmetic:"))
    assert f"bf16 autocast (convolutions in bf16; heads, gate and combination in fp32) for {last['row']}" in line and "; fp32 for " in line
    assert "Attack arithmetic" not in to_markdown(build_tables(results, "cifar10-subset"))   # all fp32


# ----------------------------------------------------------------- tables --
def test_build_tables_structure(tables):
    json.dumps(tables, allow_nan=False)  # JSON-able
    t2, t3, beyond = tables["table2"], tables["table3"], tables["beyond"]
    assert t2["columns"] == list(TABLE2_COLUMNS)
    assert t3["columns"] == list(TABLE3_COLUMNS)
    # every paper row is there, paper-only rows have no "ours"
    paper_rows = paper.paper_rows("table2", "cifar10")
    assert [r["row"] for r in t2["rows"]][:len(paper_rows)] == paper_rows
    assert _row(t2, "VGG-19")["ours"] is None
    assert _row(t2, "VGG-19")["paper"]["SA"] == {"mean": 93.18, "std": None}
    dwf = _row(t2, "DWF")
    assert dwf["ours"]["SA"]["mean"] == pytest.approx(85.0)
    assert dwf["paper"]["SA"] == {"mean": 91.19, "std": 0.43}
    expert = _row(t2, "FGSM expert 1")
    assert expert["paper"] is None and expert["ours"]["0.01"]["mean"] == 60.0
    # a row without any PGD metric is left out of Table 3; missing cell -> None
    assert "FGSM expert 1" not in [r["row"] for r in t3["rows"]]
    assert _row(t3, "DWF")["ours"]["100 (A)"]["n"] == 1
    # extra metrics go beyond the paper
    assert beyond["columns"] == ["autoattack", "worst-case"]
    assert [r["row"] for r in beyond["rows"]] == ["DWF"]
    meta = tables["meta"]
    assert meta["dataset"] == "cifar10-subset" and meta["paper_dataset"] == "cifar10"
    assert meta["n_test"] == [1017] and meta["seeds"]["DWF"] == [0, 1]


def test_markdown_has_rows_and_paper_numbers(tables):
    md = to_markdown(tables, title="Fixture report")
    assert md.startswith("# Fixture report")
    for row in ("DWF", "ResNet-18 (PGD-AT)", "FGSM expert 1", "VGG-19", "ADVMoE"):
        assert row in md
    assert "85.0 ± 1.4 / 91.19 ± 0.43" in md         # DWF SA: ours / paper
    assert "80.0 / 87.99" in md                       # PGD-AT SA, one seed
    assert "— / 93.18" in md                          # paper-only VGG-19 SA
    assert "27.0 (n=1) / 64.32 ± 1.12" in md         # DWF PGD-100 (A), one seed measured
    assert "Beyond the paper" in md and "autoattack" in md
    assert "cifar10-subset" in md and "1017" in md and "as measured" in md
    dwf_line = next(line for line in md.splitlines() if line.startswith("| **DWF** |"))
    assert dwf_line.count("|") == 2 + len(TABLE2_COLUMNS) + 1  # one line per row
    assert "Seeds: ResNet-18 (PGD-AT) 0; DWF 0, 1; FGSM expert 1 0" in md


def test_every_table_says_what_plus_minus_means(tables):
    """In the report ± is the std over seeds (the README and the entries use the standard error):
    each table says so under it, in markdown and HTML."""
    md, page = to_markdown(tables), to_html(tables)
    n_tables = sum(1 for k in ("table2", "table3", "beyond") if tables.get(k) and tables[k]["rows"])
    assert n_tables == 3 and md.count(PM_NOTE) == n_tables and page.count(html.escape(PM_NOTE)) == n_tables
    assert "standard deviation over the row's seeds" in PM_NOTE and "not a standard error" in PM_NOTE
    for block in md.split("\n## ")[1:]:                  # the note closes each table
        assert block.rstrip().endswith(PM_NOTE)


def test_synthetic_run_says_not_comparable(results):
    synthetic = [dict(r, dataset="synthetic") for r in results]
    md = to_markdown(build_tables(synthetic))
    assert "NOT comparable" in md


def test_html_is_standalone(tables):
    page = to_html(tables)
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    assert "91.19 ± 0.43" in page and "ResNet-18 (PGD-AT)" in page and "<style>" in page
    assert "http" not in page  # nothing fetched from outside


# ---------------------------------------------------------------- figures --
def test_figure_fgsm_traces(results):
    fig = figure_fgsm(results, "cifar10-subset")
    names = [t.name for t in fig.data]
    assert names == ["ResNet-18 (PGD-AT) (ours)", "ResNet-18 (PGD-AT) (paper, CIFAR-10)",
                     "DWF (ours)", "DWF (paper, CIFAR-10)", "FGSM expert 1 (ours)"]
    eps = [0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.07, 0.08, 0.09]
    for trace in fig.data:
        assert list(trace.x) == pytest.approx(eps)
    dwf, dwf_paper = fig.data[2], fig.data[3]
    assert dwf.line.dash == "solid" and dwf_paper.line.dash == "dash"
    assert dwf.y[0] == pytest.approx(71.0) and dwf.error_y.array[0] == pytest.approx(math.sqrt(2))
    assert dwf_paper.y[0] == pytest.approx(82.83)
    assert "ε" in fig.layout.xaxis.title.text


def test_figure_pgd_traces(results):
    fig = figure_pgd(results)
    names = [t.name for t in fig.data]
    assert names == ["ResNet-18 (PGD-AT) (ours)", "ResNet-18 (PGD-AT) (paper, CIFAR-10)",
                     "DWF (ours)", "DWF (paper, CIFAR-10)"]  # the FGSM expert has no PGD
    for trace in fig.data:
        assert list(trace.x) == [10, 20, 30, 40, 50]
    assert fig.data[3].y[1] == pytest.approx(64.7)
    assert fig.layout.xaxis.title.text == "PGD iterations (ε = 8/255, α = 2/255)"


# ----------------------------------------------------------------- writing --
def test_write_report_files(tmp_path):
    out = tmp_path / "report"
    written = write_report(FIXTURE, out, "cifar10-subset")
    for name in ("report.json", "report.md", "report.html", "fig6_fgsm.html", "fig7_pgd.html"):
        assert written[name] == out / name and (out / name).stat().st_size > 0
    record = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert set(record["written"]) == set(written)
    assert record["table2"]["columns"] == list(TABLE2_COLUMNS)
    if "fig6_fgsm.png" not in written:
        assert record["png"].startswith("skipped")
    # self-contained figures: plotly.js embedded, no CDN
    fig_html = (out / "fig6_fgsm.html").read_text(encoding="utf-8")
    assert "<script src=" not in fig_html and "Plotly" in fig_html
    assert not list(out.glob("*.tmp"))  # atomic writes leave nothing behind


def test_malformed_file_names_the_file(tmp_path):
    shutil.copytree(FIXTURE, tmp_path / "eval")
    bad = tmp_path / "eval" / "broken_seed0.json"
    bad.write_text('{"row": "DWF", "metrics": {"SA": 84', encoding="utf-8")
    with pytest.raises(ValueError, match="broken_seed0.json.*not valid JSON"):
        load_results(tmp_path / "eval")
    bad.write_text(json.dumps({"row": "DWF", "metrics": {"SA": "high"}}), encoding="utf-8")
    with pytest.raises(ValueError, match="broken_seed0.json.*'SA'"):
        load_results(tmp_path / "eval")
    bad.write_text(json.dumps({"row": "DWF", "metrics": {"SA": 0.84e3}}), encoding="utf-8")
    with pytest.raises(ValueError, match="broken_seed0.json.*percent"):
        load_results(tmp_path / "eval")
    bad.write_text(json.dumps([1, 2]), encoding="utf-8")
    with pytest.raises(ValueError, match="broken_seed0.json"):
        write_report(tmp_path / "eval", tmp_path / "out")


def test_missing_or_empty_eval_dir(tmp_path):
    with pytest.raises(FileNotFoundError, match="run the evaluation"):
        load_results(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="no evaluation results"):
        load_results(tmp_path)
