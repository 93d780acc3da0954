"""The student copy of the course and the static site's collapsed solutions.

- ``python -m dwf_lab course --student-copy DIR`` writes the notebooks without their solutions;
- the student copy of notebook 00 runs to its end unanswered at the smoke profile (papermill,
  through the course runner, which never hands a student copy ``solutions = True``): every
  exercise's check says "not attempted", nothing fails, no solution ran;
- on the static site a solution cell (tagged ``solution``) starts collapsed in a ``<details>``.
"""
from __future__ import annotations

from pathlib import Path

import nbformat
import pytest

from dwf_lab.__main__ import main
from dwf_lab.core.config import get_profile
from dwf_lab.course import runner, student
from dwf_lab.course.runner import run_course
from dwf_lab.course.site import build_site


def _outputs(nb) -> str:
    return "".join(o.get("text", "") + str(o.get("evalue", "")) for c in nb.cells if c.cell_type == "code"
                   for o in c.outputs)


def test_the_command_writes_the_student_copy(tmp_path, capsys):
    assert main(["course", "--student-copy", str(tmp_path / "students")]) == 0
    assert "without their solutions" in capsys.readouterr().out
    nb = nbformat.read(str(tmp_path / "students" / "00_threat_models.ipynb"), as_version=4)
    assert student.count_solutions(nb) == 0 and runner.is_student_copy(nb)
    assert any(c.cell_type == "markdown" and c.source == student.REMOVED_NOTE for c in nb.cells)


def test_the_student_copy_of_00_runs_unanswered_at_smoke(tmp_path, monkeypatch):
    monkeypatch.setenv("DWF_RUNS_DIR", str(tmp_path / "runs"))
    monkeypatch.delenv("DWF_PROFILE", raising=False)
    copy = student.student_copy(tmp_path / "students")
    done = run_course(get_profile("smoke"), run_name="students", notebooks=[copy[0]], site=False)
    nb = nbformat.read(str(done[0]), as_version=4)
    assert nb.metadata["papermill"]["parameters"]["solutions"] is False
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.execution_count is not None for c in code)
    assert not [o for c in code for o in c.outputs if o.output_type == "error"]
    text = _outputs(nb)
    checks = sum("exercises.check_" in c.source for c in code)   # the solutions, which check too, are gone
    assert text.count("not attempted") == checks >= 6 and "correct —" not in text


@pytest.fixture
def executed(tmp_path) -> Path:
    root = tmp_path / "run"
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_markdown_cell("# 98 · A notebook with an exercise"),
        nbformat.v4.new_code_cell("answer = None", metadata={"tags": ["exercise"]},
                                  outputs=[nbformat.v4.new_output("stream", text="Exercise 1: not attempted\n")]),
        nbformat.v4.new_code_cell("if solutions:\n    answer = 42", metadata={"tags": ["solution"],
                                                                            "jupyter": {"source_hidden": True}},
                                  outputs=[nbformat.v4.new_output("stream", text="Exercise 1: correct — 42\n")])])
    (root / "notebooks").mkdir(parents=True)
    nbformat.write(nb, str(root / "notebooks" / "98_exercise.ipynb"))
    return root


def test_the_site_shows_a_solution_collapsed(executed):
    page = (build_site(executed).parent / "98_exercise.html").read_text()
    assert page.count("<details class=\"dwf-solution\">") == 1
    opened = page.index("<details class=\"dwf-solution\">")
    assert opened < page.index("Exercise 1: correct") < page.index("</details>", opened)
    assert page.index("Exercise 1: not attempted") < opened          # the learner's cell stays open
