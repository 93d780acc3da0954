"""The course runner, and that the whole sequence runs headlessly.

- the course runner: notebook selection, the parameters that rebuild a profile, the course
  scope reaching every notebook, per-notebook times in ``course_times.json``, the static site,
  and a failing notebook reported with the notebook, the cell and the partial copy;
- the papermill smoke run of the whole sequence (``run_course`` at the ``smoke`` profile,
  with ``$DWF_RUNS_DIR`` in a temporary directory), as ``python -m dwf_lab course`` does.

How each notebook is stored (no outputs, parameters then setup, solutions as hidden code cells)
is checked in ``test_course_structure.py``.

nbval runs separately (Makefile): ``DWF_PROFILE=smoke pytest --nbval-lax notebooks/
--nbval-sanitize-with tests/nbval_sanitize.cfg``.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import nbformat
import pytest

from dwf_lab.core.config import get_profile
from dwf_lab.course.runner import CourseError, _select_notebooks, notebook_parameters, notebook_sequence, run_course
from dwf_lab.course.setup import SCOPE_ENV, setup_notebook
from dwf_lab.course.site import TIMES_FILE
from dwf_lab.evaluation.records import load_results
from dwf_lab.reporting.readings import protocol_reading
from dwf_lab.reporting.tables import aggregate

NOTEBOOKS = notebook_sequence()
CORE = ["00_threat_models", "01_benign_expert", "02_fgsm_experts", "03_pgd_experts",
        "04_mixture_of_experts", "05_robustness_evaluation"]
FIXTURE_EVAL = Path(__file__).resolve().parents[1] / "fixtures" / "eval_small"


def _read(path: Path):
    return nbformat.read(str(path), as_version=4)


# ------------------------------------------------------------------ storage --
def test_the_course_notebooks_exist_in_order():
    stems = [p.stem for p in NOTEBOOKS]
    assert stems[:len(CORE)] == CORE
    assert stems == sorted(stems)


# ------------------------------------------------------------ course runner --
def test_notebook_parameters_rebuild_the_profile():
    p = get_profile("smoke", width=0.125, seeds="0,1")
    params = notebook_parameters(p, "r", ["width=0.125", "seeds=0,1"])
    assert params["profile"] == "smoke" and params["run_name"] == "r"
    assert params["overrides"]["width"] == 0.125 and params["overrides"]["seeds"] == [0, 1]
    json.dumps(params)  # papermill needs plain values
    assert get_profile(params["profile"], **params["overrides"]) == p
    assert notebook_parameters(get_profile("smoke"), "s")["overrides"] == {}


def test_select_notebooks_by_number_or_name():
    picked = _select_notebooks(NOTEBOOKS, ["02", "00_threat_models.ipynb"])
    assert [p.stem for p in picked] == ["00_threat_models", "02_fgsm_experts"]
    with pytest.raises(ValueError, match="matches 0"):
        _select_notebooks(NOTEBOOKS, ["99"])


def test_setup_notebook_honours_dwf_profile(monkeypatch, tmp_path):
    monkeypatch.setenv("DWF_RUNS_DIR", str(tmp_path))
    monkeypatch.setenv("DWF_PROFILE", "smoke")
    ctx = setup_notebook(None, None, {"n_test": 16}, verbose=False)
    assert ctx.profile.name == "smoke" and ctx.profile.n_test == 16
    assert ctx.run.root == tmp_path / "smoke" and len(ctx.data.x_test) == 16
    assert ctx.seed == 0 and ctx.threads >= 1 and ctx.n_quick == 16


def _tiny_notebook(path: Path, source: str) -> Path:
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_markdown_cell("# A tiny notebook"),
        nbformat.v4.new_code_cell("profile = None\nrun_name = None\noverrides = {}",
                                  metadata={"tags": ["parameters"]}),
        nbformat.v4.new_code_cell(source)])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, str(path))
    return path


def test_scope_reaches_every_notebook_and_times_and_site_are_written(monkeypatch, tmp_path):
    """A notebook that does not declare ``scope`` is not handed the parameter (papermill would warn
    of an unknown one) but its kernel sees $DWF_COURSE_SCOPE; its time goes to course_times.json,
    its page to the site."""
    monkeypatch.setenv("DWF_RUNS_DIR", str(tmp_path / "runs"))
    monkeypatch.delenv(SCOPE_ENV, raising=False)
    nb = _tiny_notebook(tmp_path / "97_scope.ipynb", "import os\nprint('scope', 'scope' in globals(), os.environ['DWF_COURSE_SCOPE'])")
    done = run_course(get_profile("smoke"), run_name="scoped", notebooks=[nb], scope="full")
    run = tmp_path / "runs" / "scoped"
    assert done == [run / "notebooks" / "97_scope.ipynb"]
    out = "".join(o.get("text", "") for c in _read(done[0]).cells if c.cell_type == "code" for o in c.outputs)
    assert "scope False full" in out
    assert SCOPE_ENV not in os.environ          # restored after the course
    times = json.loads((run / TIMES_FILE).read_text())
    assert times["scope"] == "full" and times["profile"] == "smoke" and "load" in times["machine"]
    entry = times["notebooks"]["97"]
    assert entry["ok"] and entry["seconds"] > 0 and entry["notebook"] == "97_scope.ipynb"
    assert times["total_s"] == entry["seconds"]
    index = (run / "site" / "index.html").read_text()
    assert "97_scope.html" in index and (run / "site" / "97_scope.html").exists()


def test_an_unknown_scope_is_refused_before_anything_runs(monkeypatch, tmp_path):
    monkeypatch.setenv("DWF_RUNS_DIR", str(tmp_path / "runs"))
    with pytest.raises(ValueError, match="course scope must be one of core, full"):
        run_course(get_profile("smoke"), run_name="bad", scope="everything")
    assert not (tmp_path / "runs" / "bad").exists()


def test_a_failing_notebook_stops_the_course(monkeypatch, tmp_path):
    monkeypatch.setenv("DWF_RUNS_DIR", str(tmp_path / "runs"))
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell("profile = None\nrun_name = None\noverrides = {}",
                                  metadata={"tags": ["parameters"]}),
        nbformat.v4.new_code_cell("x = 1"),
        nbformat.v4.new_code_cell("raise ValueError('broken on purpose')")])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    bad = tmp_path / "98_broken.ipynb"
    nbformat.write(nb, str(bad))
    out = tmp_path / "out"
    with pytest.raises(CourseError) as err:
        run_course(get_profile("smoke"), run_name="broken", notebooks=[bad], out_dir=out)
    msg = str(err.value)
    assert "98_broken.ipynb" in msg and "ValueError: broken on purpose" in msg
    assert "the cell numbered [" in msg and "raise ValueError('broken on purpose')" in msg
    assert str(out / "98_broken.ipynb") in msg and (out / "98_broken.ipynb").exists()


def test_reading_is_computed_from_the_numbers():
    results = load_results(FIXTURE_EVAL)
    agg = aggregate(results)
    text = protocol_reading(results)
    dwf, pat = agg["DWF"]["pgd:20"]["mean"], agg["ResNet-18 (PGD-AT)"]["pgd:20"]["mean"]
    word = "above" if dwf > pat else "below"
    assert f"DWF's PGD-20 accuracy is **{abs(dwf - pat):.1f} points {word}** ResNet-18 (PGD-AT)" in text
    assert "the paper: 64.70 vs 58.35" in text
    assert protocol_reading([]).startswith("- No evaluation results")


# ---------------------------------------------------- papermill smoke run --
@pytest.mark.slow
def test_course_runs_headlessly_at_smoke(smoke_course):
    done, run = smoke_course.done, smoke_course.root
    out = run / "notebooks"
    assert [p.name for p in done] == [p.name for p in NOTEBOOKS]
    for path in done:
        nb = _read(path)
        assert nb.metadata["papermill"]["parameters"]["profile"] == "smoke"
        code = [c for c in nb.cells if c.cell_type == "code"]
        assert all(c.execution_count is not None for c in code), path.name
        outputs = [o for c in code for o in c.outputs]
        assert outputs, f"{path.name} produced no outputs"
        assert not [o for o in outputs if o.output_type == "error"], path.name
    assert (run / "report" / "report.md").exists()
    assert (run / "seed-0" / "models" / "mixture.safetensors").exists()
    times = json.loads((run / TIMES_FILE).read_text())["notebooks"]
    assert sorted(times) == [p.name[:2] for p in NOTEBOOKS] and all(t["ok"] for t in times.values())
    site = run / "site"
    assert all((site / f"{p.stem}.html").exists() for p in NOTEBOOKS) and (site / "index.html").exists()
    executed_00 = _read(out / "00_threat_models.ipynb")
    assert any(o.get("data", {}).get("application/vnd.plotly.v1+json")
               for c in executed_00.cells if c.cell_type == "code" for o in c.outputs)
