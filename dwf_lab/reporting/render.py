"""The report as files: markdown, standalone HTML and Figures 6-7, beside the published numbers.

:func:`write_report` reads a run's evaluation records (``runs/<run>/eval/*.json``) and writes
report.json, report.md, report.html, fig6_fgsm.html, fig7_pgd.html, and the figures as PNG
when a working exporter (kaleido) is installed. Cells read "ours / paper": ours ``mean ± std``
over seeds, the paper's value as published; a missing metric is shown as "—". Every number
is as measured; nothing is rescaled or rounded before it is stored. Also the report's other
sections: the ablations, the official AutoAttack stage by stage, the gradient-masking checklists.
"""
import html
import importlib.util
import json
import math
from dataclasses import asdict
from pathlib import Path
from typing import Mapping, Sequence

import plotly.graph_objects as go

from dwf_lab.core.config import Profile
from dwf_lab.core.io import atomic_write_bytes, atomic_write_text
from dwf_lab.evaluation.attribution import CATEGORIES, attribution_rows
from dwf_lab.evaluation.convergence import sentence as convergence_sentence
from dwf_lab.evaluation.model_checks import NOT_VALID
from dwf_lab.evaluation.protocol import ablation_eval_settings
from dwf_lab.evaluation.records import infer_dataset, load_checklist, load_results
from dwf_lab.evaluation.suite import scored_points
from dwf_lab.reporting.figures import convergence_figure, figure_fgsm, figure_pgd
from dwf_lab.reporting.paper import DATASET_LABELS
from dwf_lab.reporting.tables import (
    AA_STAGE_LABELS,
    AA_STAGES,
    ablation_table,
    autoattack_stage_rows,
    build_tables,
    checklist_overview,
    collect_ablation_rows,
    row_order,
)
from dwf_lab.training.recipes import FIXED_FGSM_EPS
from dwf_lab.training.variants import BY_NAME, fixed_pgd_steps

DEFAULT_TITLE = "Divided We Fall: this run beside the paper's Tables 2 and 3"
DASH = "—"
# what "±" means in this report's tables (one meaning per output; the README and the entries use SE)
PM_NOTE = ("± is the sample standard deviation over the row's seeds (the runs column; none for one seed), "
           "not a standard error; the paper's ± is the std over its five training runs.")


# ----------------------------------------------------------- formatting --
def fmt_ours(cell: dict | None, runs: int | None = None) -> str:
    """``mean ± std`` with one decimal; no ± for one seed; "(n=k)" if fewer seeds than runs."""
    if not cell:
        return DASH
    text = f"{cell['mean']:.1f}"
    if cell.get("std") is not None:
        text += f" ± {cell['std']:.1f}"
    if runs is not None and cell.get("n", runs) < runs:
        text += f" (n={cell['n']})"
    return text


def fmt_paper(cell: dict | None, missing: str = DASH) -> str:
    """Two decimals, ``± std`` where there is one: the paper's values as published, the ablations."""
    if not cell or cell.get("mean") is None:
        return missing
    std = cell.get("std")
    return f"{cell['mean']:.2f}" + (f" ± {std:.2f}" if std is not None and not math.isnan(std) else "")


def _settings_line(settings: dict) -> str | None:
    parts = []
    if isinstance(settings.get("pgd_eps"), (int, float)):
        parts.append(f"ε = {settings['pgd_eps']:.4f} (8/255 = {8 / 255:.4f})")
    if isinstance(settings.get("pgd_alpha"), (int, float)):
        parts.append(f"α = {settings['pgd_alpha']:.4f} (2/255 = {2 / 255:.4f})")
    if "random_start" in settings:
        start = "uniform in the ε-ball (Madry et al.)" if settings["random_start"] else "none"
        parts.append(f"random start: {start} — the paper does not say")
    return "PGD: " + ", ".join(parts) if parts else None


def _precision_line(precision: dict[str, list[str]]) -> str | None:
    """What arithmetic the attacks ran in, per model, when any ran in bf16 (fp32 alone goes unsaid)."""
    if set(precision) <= {"fp32"}:
        return None
    parts = [f"{'bf16 autocast (convolutions in bf16; heads, gate and combination in fp32)' if p == 'bf16' else p} for {', '.join(rows)}"
             for p, rows in sorted(precision.items())]
    return ("Attack arithmetic: " + "; ".join(parts) + ". bf16 was chosen because a probe measured it "
            "faster on this CPU; the gradient-masking checklist re-runs PGD-20 in fp32 on each model it "
            "checks (\"bf16 attacks agree with fp32\").")


def _notes(meta: dict, cells: str) -> list[str]:
    ds = meta.get("dataset")
    pds = meta.get("paper_dataset")
    paper_label = DATASET_LABELS.get(pds, "none") if pds else "none"
    notes = [f"NOT A VALID EVALUATION -- {row}: {why}. Its numbers overstate its robustness and must not "
             "be read as results." for row, why in (meta.get("invalid") or {}).items()]
    notes.append(f"Dataset: {ds or 'unknown'} (paper columns: {paper_label}). "
                 f"{meta.get('comparability', '')}")
    n_test = meta.get("n_test") or []
    if n_test:
        text = ", ".join(str(n) for n in n_test)
        notes.append(f"Test images per evaluation: {text}"
                     + (" (differs across files!)" if len(n_test) > 1 else "") + ".")
    fewer = meta.get("adaptive_images") or []
    if fewer:
        notes.append(f"The attacks beyond the paper ran on the first {', '.join(str(n) for n in fewer)} "
                     "test images only (a profile setting, to fit the time): their columns and the worst "
                     "case over all attacks cover those images.")
    seeds = meta.get("seeds") or {}
    if seeds:
        notes.append("Seeds: " + "; ".join(
            f"{row} {', '.join('?' if s is None else str(s) for s in ss)}"
            for row, ss in seeds.items()) + ".")
    notes.append("Numbers are as measured (accuracy in %): ours = mean ± sample std over seeds, "
                 "one decimal, no ± for a single seed, \"(n=k)\" when only k seeds measured a "
                 "column; paper = as published (DWF: mean ± std over five runs).")
    line = _settings_line(meta.get("settings") or {})
    if line:
        notes.append(line + ".")
    line = _precision_line(meta.get("precision") or {})
    if line:
        notes.append(line)
    if meta.get("settings_differ"):
        notes.append("Warning: evaluation settings differ across files: "
                     + ", ".join(meta["settings_differ"]) + ".")
    notes.append(f"{cells}; {DASH} = not measured or not reported.")
    return notes


def _table_rows(table: dict, meta: dict):
    """(row label, runs text, [ours text], [paper text] or None) for each row."""
    runs = meta.get("runs") or {}
    for entry in table["rows"]:
        row = entry["row"]
        ours = entry.get("ours")
        ours_cells = [fmt_ours(ours.get(c) if ours else None, runs.get(row))
                      for c in table["columns"]]
        paper = entry.get("paper")
        paper_cells = [fmt_paper(paper.get(c)) for c in table["columns"]] if paper else None
        runs_text = str(runs[row]) if ours and row in runs else "paper only"
        label = f"{row} ({NOT_VALID})" if ours and row in (meta.get("invalid") or {}) else row
        yield label, runs_text, ours_cells, paper_cells, ours is None


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|")


def to_markdown(tables: dict, title: str = DEFAULT_TITLE,
                figures: dict[str, str] | None = None, sections: list[dict] | None = None) -> str:
    """The tables as readable markdown: one line per row, cells "ours / paper".

    ``sections`` (see :func:`write_report`) follow the tables; ``figures``
    (label -> relative link) adds a list of figure links at the end.
    """
    meta = tables.get("meta", {})
    lines = [f"# {title}", ""]
    lines += [f"- {n}" for n in _notes(meta, 'Cells read "ours / paper"')]
    for key in ("table2", "table3", "beyond"):
        table = tables.get(key)
        if not table or not table["rows"]:
            continue
        has_paper = key != "beyond"
        lines += ["", f"## {table['title']}", ""]
        header = ["Model", "runs"] + [table.get("headers", {}).get(c, c) for c in table["columns"]]
        lines.append("| " + " | ".join(_md_escape(h) for h in header) + " |")
        lines.append("| --- | ---: |" + " ---: |" * len(table["columns"]))
        for row, runs_text, ours, paper, _ in _table_rows(table, meta):
            if has_paper:
                cells = [f"{o} / {p}" for o, p in zip(ours, paper or [DASH] * len(ours))]
            else:
                cells = ours
            label = row if runs_text == "paper only" else f"**{row}**"
            cells = [label, runs_text] + cells
            lines.append("| " + " | ".join(_md_escape(c) for c in cells) + " |")
        lines += ["", PM_NOTE]
    for sec in sections or []:
        lines += ["", f"## {sec['title']}", ""]
        lines += [f"- {n}" for n in sec.get("notes", [])]
        lines += [""] if sec.get("notes") else []
        lines.append("| " + " | ".join(_md_escape(c) for c in sec["columns"]) + " |")
        lines.append("| --- |" + " ---: |" * (len(sec["columns"]) - 1))
        lines += ["| " + " | ".join(_md_escape(str(c)) for c in row) + " |" for row in sec["rows"]]
    if figures:
        lines += ["", "## Figures", ""]
        lines += [f"- [{label}]({link})" for label, link in figures.items()]
    return "\n".join(lines) + "\n"


_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin: 1em 0 2em; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: right; vertical-align: top; }
th:first-child, td:first-child { text-align: left; }
thead th { background: #f2f2f2; }
.paper { color: #777; font-size: 0.85em; }
tr.paper-only td { color: #777; font-style: italic; }
li { margin: 0.2em 0; }
"""


def to_html(tables: dict, title: str = DEFAULT_TITLE,
            figures: dict[str, str] | None = None, sections: list[dict] | None = None) -> str:
    """A standalone HTML page with the same tables: ours on top, the paper's value below in grey."""
    esc = html.escape
    meta = tables.get("meta", {})
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             f"<title>{esc(title)}</title><style>{_CSS}</style></head><body>",
             f"<h1>{esc(title)}</h1>", "<ul>"]
    parts += [f"<li>{esc(n)}</li>" for n in _notes(meta, "Cells: this run on top, the paper below")]
    parts.append("</ul>")
    for key in ("table2", "table3", "beyond"):
        table = tables.get(key)
        if not table or not table["rows"]:
            continue
        parts.append(f"<h2>{esc(table['title'])}</h2>")
        parts.append("<table><thead><tr><th>Model</th><th>runs</th>"
                     + "".join(f"<th>{esc(table.get('headers', {}).get(c, c))}</th>" for c in table["columns"])
                     + "</tr></thead><tbody>")
        for row, runs_text, ours, paper, paper_only in _table_rows(table, meta):
            cls = ' class="paper-only"' if paper_only else ""
            cells = []
            for i, o in enumerate(ours):
                cell = esc(o)
                if key != "beyond":
                    cell += f'<br><span class="paper">{esc(paper[i] if paper else DASH)}</span>'
                cells.append(f"<td>{cell}</td>")
            parts.append(f"<tr{cls}><td>{esc(row)}</td><td>{esc(runs_text)}</td>"
                         + "".join(cells) + "</tr>")
        parts.append(f"</tbody></table><p>{esc(PM_NOTE)}</p>")
    for sec in sections or []:
        parts.append(f"<h2>{esc(sec['title'])}</h2>")
        if sec.get("notes"):
            parts.append("<ul>" + "".join(f"<li>{esc(n)}</li>" for n in sec["notes"]) + "</ul>")
        parts.append("<table><thead><tr>" + "".join(f"<th>{esc(c)}</th>" for c in sec["columns"])
                     + "</tr></thead><tbody>")
        parts += ["<tr>" + "".join(f"<td>{esc(str(c))}</td>" for c in row) + "</tr>" for row in sec["rows"]]
        parts.append("</tbody></table>")
    if figures:
        parts.append("<h2>Figures</h2><ul>")
        parts += [f'<li><a href="{esc(link)}">{esc(label)}</a></li>'
                  for label, link in figures.items()]
        parts.append("</ul>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


# ---------------------------------------------------------------- writing --
def _png(fig: go.Figure) -> tuple[bytes | None, str | None]:
    """PNG bytes if an exporter works here, else (None, why)."""
    if importlib.util.find_spec("kaleido") is None:
        return None, "kaleido is not installed"
    try:
        return fig.to_image(format="png", scale=2), None
    except Exception as err:  # any exporter failure (no Chrome, ...): skip the PNG
        return None, f"{type(err).__name__}: {err}".splitlines()[0][:200]


def write_report(eval_dir, out_dir, dataset: str | None = None, title: str = DEFAULT_TITLE,
                 png: bool = True, sections: list[dict] | None = None) -> dict[str, Path]:
    """Read ``eval_dir/*.json``, write the report into ``out_dir``; return {file name: path}.

    ``sections``: further tables after the paper's, each
    ``{"title", "notes": [str], "columns": [str], "rows": [[cell, ...]]}``
    (the run's gradient-masking checklist and ablations: :func:`dwf_lab.pipeline.run_all.report_run`).

    Writes report.md, report.html, fig6_fgsm.html, fig7_pgd.html (plotly.js
    embedded: they open offline), fig6_fgsm.png and fig7_pgd.png when ``png`` and
    an exporter works (skipped silently otherwise), and report.json (the tables,
    plus which files were written and why PNGs were skipped). Each file is
    written atomically.
    """
    results = load_results(eval_dir)
    dataset = infer_dataset(results, dataset)
    tables = build_tables(results, dataset)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}

    def put(name: str, data: str | bytes) -> None:
        path = out_dir / name
        atomic_write_bytes(path, data.encode("utf-8") if isinstance(data, str) else data)
        written[name] = path

    figures = {"fig6_fgsm": figure_fgsm(results, dataset), "fig7_pgd": figure_pgd(results, dataset)}
    png_note = "not requested" if not png else None
    for stem, fig in figures.items():
        put(f"{stem}.html", fig.to_html(include_plotlyjs=True, full_html=True))
        data, why = _png(fig) if png else (None, png_note)
        if data:
            put(f"{stem}.png", data)
        else:
            png_note = why
            (out_dir / f"{stem}.png").unlink(missing_ok=True)  # no stale PNG beside new data
    links = {"Figure 6: robust accuracy vs FGSM ε (interactive)": "fig6_fgsm.html",
             "Figure 7: robust accuracy vs PGD iterations (interactive)": "fig7_pgd.html"}
    if "fig6_fgsm.png" in written:
        links.update({"Figure 6 (PNG)": "fig6_fgsm.png", "Figure 7 (PNG)": "fig7_pgd.png"})
    sections = list(sections or [])
    put("report.md", to_markdown(tables, title, figures=links, sections=sections))
    put("report.html", to_html(tables, title, figures=links, sections=sections))
    record = dict(tables, title=title, sections=sections,
                  written=sorted(list(written) + ["report.json"]),
                  png=("written" if "fig6_fgsm.png" in written else f"skipped: {png_note}"))
    put("report.json", json.dumps(record, indent=2, ensure_ascii=False, allow_nan=False) + "\n")
    return written


def markdown_table(rows: Sequence[Mapping], columns: Sequence[str] | None = None,
                   fmt: str = "{:.1f}") -> str:
    """Rows of dicts as a markdown table (numbers formatted with ``fmt``)."""
    if not rows:
        return "_(nothing to show)_"
    cols = list(columns) if columns is not None else list(rows[0])

    def cell(v) -> str:
        if v is None:
            return "—"
        if isinstance(v, float):
            return fmt.format(v)
        return str(v).replace("|", "\\|")
    lines = ["| " + " | ".join(cols) + " |",
             "|" + "|".join(" --- " if i == 0 else " ---: " for i in range(len(cols))) + "|"]
    lines += ["| " + " | ".join(cell(r.get(c)) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def ablation_markdown(table: list[dict], skipped: dict | None = None, profile: Profile | None = None) -> str:
    lines = ["# Ablations", "",
             "Accuracy in percent on the run's test set. PGD-20: eps 8/255, step 2/255, random "
             "start, through the whole model (gate included). Worst case: correct both clean "
             "and under PGD-20, per example. Mean ± sample std over seeds where there are several "
             "(± is not a standard error).", ""]
    if profile is not None:
        lines += [f"Profile `{profile.name}`: end-to-end phase {profile.mixture_epochs} epoch(s), "
                  f"{profile.mixture_batch} clean images per step; fixed strengths = FGSM eps "
                  f"{FIXED_FGSM_EPS}, PGD-{fixed_pgd_steps(profile)}.", ""]
    lines += ["| Variant | Question | Experts | SA | PGD-20 | Worst case | Seeds |",
              "|---|---|---|---|---|---|---|"]
    lines += ["| " + " | ".join(map(str, row)) + " |" for row in _ablation_rows(table)]
    if skipped:
        lines += ["", "Not run for this profile: " + "; ".join(
            f"{BY_NAME[n].label if n in BY_NAME else n} ({why})" for n, why in skipped.items()) + "."]
    lines += ["", "Variants:", ""]
    lines += [f"- **{r['label']}** (`{r['variant']}`): {r['description']}" for r in table]
    return "\n".join(lines) + "\n"


def write_ablation_report(run, skipped: dict | None = None) -> dict:
    table = ablation_table(run)
    rep = {"profile": run.profile.name, "columns": ["SA", "PGD-20", "worst-case"],
           "eval": asdict(ablation_eval_settings(run.profile)), "rows": table,
           "per_seed": collect_ablation_rows(run), "skipped": skipped or {}}
    run.report_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run.report_dir / "ablations.json", json.dumps(rep, indent=1, default=str))
    atomic_write_text(run.report_dir / "ablations.md", ablation_markdown(table, skipped, run.profile))
    return rep


def autoattack_section(eval_dir) -> dict | None:
    """The official AutoAttack stage by stage (:func:`autoattack_stage_rows`) of a run's evaluation
    files as a report section (None: no record has its stages)."""
    records = load_results(eval_dir)
    names = list(dict.fromkeys(r.get("row") or r.get("model") for r in records))
    order = row_order(names, records[0].get("dataset") if records else None)
    records.sort(key=lambda r: (order.index(r.get("row") or r.get("model")), str(r.get("seed"))))
    rows = autoattack_stage_rows(records)
    if not rows:
        return None
    stages = [k for k in AA_STAGES if any(k in r for r in rows)]
    fmt = lambda v: "-" if v is None else f"{v:.1f}"   # noqa: E731
    suites = list(dict.fromkeys(r["suite"] for r in rows))
    notes = ["The official AutoAttack (Croce & Hein 2020), run with the authors' code (pyautoattack): "
             "APGD-CE, APGD-T, FAB-T and Square in the standard version (APGD-CE and APGD-DLR with "
             "EoT in the rand version), each attack only on the images every earlier one failed on. "
             "Suite: " + "; ".join(suites) + ".",
             "Robust accuracy after each attack: a large drop at APGD-T or FAB-T (margin losses, "
             "targeted) and none at APGD-CE means cross-entropy is a poor objective for the model; a "
             "drop at Square (no gradients) after the white-box stages means its gradients hide "
             "adversarial examples."]
    for r in records:   # what the library itself warned about (Square beating the gradient attacks, ...)
        warned = ((r.get("attack_settings") or {}).get("autoattack") or {}).get("library_warnings") or []
        notes += [f"pyautoattack warned on {r.get('row') or r.get('model')} (seed {r.get('seed')}): {w}"
                  for w in warned]
    return {"title": "AutoAttack (the official suite) stage by stage (%)", "notes": notes,
            "columns": ["model", "seed", "suite", *(AA_STAGE_LABELS[k] for k in stages), "AutoAttack"],
            "rows": [[r["model"], r["seed"], r["suite"], *(fmt(r.get(k)) for k in stages), fmt(r["AutoAttack"])]
                     for r in rows]}


def checklist_section(report_dir) -> dict | None:
    """The run's checklists (``checklist_*_seed*.json`` in ``report_dir``) as one report table:
    a row per check, a column per model; None when there are none yet."""
    found = sorted(Path(report_dir).glob("checklist_*_seed*.json"))
    loaded = [load_checklist(f) for f in found]
    if not loaded:
        return None
    seeds = {c.get("seed") for c in loaded}
    named = {(c.get("row") or c.get("model")) + (f" (seed {c.get('seed')})" if len(seeds) > 1 else ""):
             c["items"] for c in loaded}
    rows, cols = checklist_overview(named)
    n = sorted({c.get("n_examples") for c in loaded})
    return {"title": "Gradient-masking checklist (Carlini et al. 2019)",
            "notes": ["✅ pass, ❌ fail, ➖ could not run. Evidence for every item: "
                      "report/checklist_<model>_seed<k>.md.",
                      f"Test images per checklist: {', '.join(str(v) for v in n)}."],
            "columns": cols, "rows": [[r.get(c, "➖") for c in cols] for r in rows]}


def ablation_section(run) -> dict | None:
    """The ablation table as a section of the run's main report (None: no variant run yet)."""
    table = ablation_table(run)
    if not table:
        return None
    p = run.profile
    return {"title": "Ablations the paper left open (%)",
            "notes": ["One change to DWF per row, the same experts and end-to-end phase otherwise "
                      f"({p.mixture_epochs} epoch(s), {p.mixture_batch} clean images per step). "
                      "PGD-20: eps 8/255, step 2/255, random start, through the whole model; worst "
                      "case: correct clean and under PGD-20, per example.",
                      "Mean ± sample std over the Seeds column's seeds where there are several (± is not a "
                      "standard error). Details and the variants that did not apply: report/ablations.md."],
            "columns": ["Variant", "Question", "Experts", "SA", "PGD-20", "Worst case", "Seeds"],
            "rows": _ablation_rows(table)}


def _ablation_rows(table: list[dict]) -> list[list]:
    return [[r["label"], r["question"], r["experts"], *(fmt_paper(r[k], "-") for k in ("SA", "PGD-20", "worst-case")),
             len(r["seeds"])] for r in table]


def confirmation_section(eval_dir) -> dict | None:
    """The headline confirmed in fp32, image by image (``"fp32_confirmation"`` of each record, written
    by ``python -m dwf_lab bundle``: :mod:`dwf_lab.evaluation.confirm`), as a report section: the
    stored worst case and its precision beside the fp32 one, and how many images each verdict alone
    broke (None: no record was confirmed)."""
    records = [r for r in load_results(eval_dir) if isinstance(r.get("fp32_confirmation"), dict)]
    if not records:
        return None
    rows = []
    for r in records:
        c = r["fp32_confirmation"]
        only_s, only_f = c.get("broken_only_stored") or [], c.get("broken_only_fp32") or []
        rows.append([r.get("row") or r.get("model"), r.get("seed"), c.get("n"),
                     f"{c.get('robust_stored_pct', 0):.1f} ({c.get('stored_precision')})",
                     f"{c.get('robust_fp32_pct', 0):.1f}", len(only_s), len(only_f),
                     "yes" if c.get("agree") else "no: images " + ", ".join(map(str, (only_s + only_f)[:8]))
                     + (" ..." if len(only_s) + len(only_f) > 8 else "")])
    notes = ["Each model's worst case confirmed per example in fp32: every image the stored verdict broke is "
             "attacked again in fp32 until an fp32 forward pass on a point of its eps-ball is wrong (its "
             "witness, kept in the model's bundle), and every image it left robust is attacked again in fp32 "
             "by PGD-CE, PGD-DLR and AutoAttack. The fp32 column is the model's number; the bundle's "
             "adversarial.pt re-derives it with one forward pass (python -m dwf_lab verify)."]
    return {"title": "The worst case in fp32, per example (robust accuracy %, images)", "notes": notes,
            "columns": ["model", "seed", "images", "stored worst case", "fp32 worst case",
                        "broken only in the stored verdict", "broken only in fp32", "agree"], "rows": rows}


def attribution_section(eval_dir) -> dict | None:
    """Which kind of attack broke each image (:mod:`dwf_lab.evaluation.attribution`), per evaluated
    model, as a report section, with the point each attack of the run scores (last iterate, any
    iterate, best); None when no record has per-example results for two or more attacks."""
    records = load_results(eval_dir) if any(Path(eval_dir).glob("*.json")) else []
    rows = attribution_rows(records)
    if not rows:
        return None
    keys = sorted({k for r in records for k in (r.get("per_example") or {})})
    notes = ["Each image a model classifies correctly and the per-example worst case breaks, under the "
             "families of the attacks that broke it: generic (the paper's FGSM and PGD, PGD on other "
             "losses, AutoAttack), router-aware (attacks that steer or bypass the gate) and expert-aware "
             "(attacks through the experts with the gate held fixed, on their margins, or crafted on one "
             "expert). Images that only a router- or expert-aware attack breaks are robustness the "
             "generic numbers overstate."]
    line = scored_points(keys)
    if line:
        notes.append(line)
    columns = ["model", "seed", "images", *CATEGORIES]
    return {"title": "Broken images by attack family", "notes": notes, "columns": columns,
            "rows": [[r[c] for c in columns] for r in rows]}


CONVERGENCE_FIGURE = "convergence.html"


def _convergence_files(run) -> list[dict]:
    return [json.loads(path.read_text(encoding="utf-8")) for path in run.convergences().values()]


def convergence_section(run) -> dict | None:
    """Robust accuracy against attack compute for the models with a convergence file
    (:mod:`dwf_lab.pipeline.convergence`): the worst case at the profile's budget, at twice it and
    both per example, with the verdict of each, computed from its numbers (None: no file yet)."""
    found = _convergence_files(run)
    if not found:
        return None
    rows, notes = [], []
    for c in found:
        name = c.get("row") or c.get("model")
        rows += [[name, c["seed"], c["n"], r["budget"], f"{r['robust accuracy (%)']:.1f}", r["images broken"],
                  f"{r['passes per image']:g}"] for r in c["rows"]]
        notes.append(f"{name} (seed {c['seed']}): {convergence_sentence(c)}")
    twice = found[0].get("attacks") or {}
    notes += ["Twice the budget, per attack: " + "; ".join(f"{e['label']}: {e['change']}" for e in twice.values()
                                                           if e.get("change")) + ". Same images, same eps; the "
              "columns no attack of the suite owns (clean, the paper's protocol) count in both.",
              f"Attack work is the adaptive attacks' (dwf_lab.core.work: passes per image). Figure: "
              f"report/{CONVERGENCE_FIGURE}."]
    return {"title": "Has the worst case converged? Robust accuracy against attack compute", "notes": notes,
            "columns": ["model", "seed", "images", "budget", "robust accuracy (%)", "images broken",
                        "passes per image"], "rows": rows}


def write_convergence_figure(run) -> Path | None:
    """``report/convergence.html`` (:func:`convergence_figure`) when a model has a convergence file."""
    found = _convergence_files(run)
    if not found:
        return None
    fig = convergence_figure({f"{c.get('row') or c.get('model')} (seed {c['seed']})": c["rows"] for c in found})
    path = run.report_dir / CONVERGENCE_FIGURE
    run.report_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, fig.to_html(include_plotlyjs=True, full_html=True))
    return path
