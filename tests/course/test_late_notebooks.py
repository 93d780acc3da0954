"""Notebooks 05-08 teach by having the learner write the idea (read from the notebook JSON;
nothing is executed; the smoke course in test_notebooks.py runs them).

- (``solutions = False`` and the kit names each setup cell imports: test_exercise_cells.py, for
  every notebook);
- every exercise is three code cells in this order: the learner's cell (tagged ``exercise``: a
  stub whose body is ``...``, or a variable set to ``None``), the check (a call of
  ``checks_late.check_*(N, answer, ...)``), and the solution (tagged ``solution``, source hidden,
  one ``if solutions:`` block ending with the same check); nothing between them reassigns the
  answer, the checks are numbered 1, 2, ... like the exercises' headings;
- each notebook has at least one exercise where the learner writes a function the package confirms
  (05: the worst case, 06: DLR and the gate-steering PGD, 07: the uniform average, 08: the paired
  test), and 06 has the λ slider;
- a "Predict first" line comes before each generated reading (``protocol_reading``, the adaptive
  reading, ``verdict_reading``, the audit readings, ``course_lessons``), with a ``my_guess`` cell.
"""
from __future__ import annotations

import re

import pytest
from exercise_cells import check_exercises, read

from dwf_lab.course.runner import notebook_sequence

LATE = ("05", "06", "07", "08")
NOTEBOOKS = [p for p in notebook_sequence() if p.name[:2] in LATE]
WRITTEN = {"05": {"my_worst_case"}, "06": {"my_dlr", "my_gate_pgd"}, "07": {"my_uniform"}, "08": {"my_paired"}}
READINGS = ("protocol_reading(", 'shown["reading"]', "verdict_reading(", "audit.audit_reading(findings,",
            "audit.audit_reading(findings_run", "course_lessons(", "noise.paired_difference(a, b)")


def test_the_late_notebooks_are_there():
    assert [p.name[:2] for p in NOTEBOOKS] == list(LATE)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_each_exercise_is_learner_cell_then_check_then_solution(path):
    names = check_exercises(path, "checks_late")
    assert WRITTEN[path.name[:2]] <= names, f"{path.name}: the learner writes {sorted(names)}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_predict_first_before_each_generated_reading(path):
    cells = read(path).cells
    found = 0
    for i, cell in enumerate(cells):
        if cell.cell_type != "code" or not any(r in cell.source for r in READINGS):
            continue
        found += 1
        before = cells[max(0, i - 3):i]
        assert any(c.cell_type == "markdown" and "**Predict first.**" in c.source for c in before), \
            f"{path.name} cell {i}: no 'Predict first' line before the reading"
        assert any(c.cell_type == "code" and re.search(r"^my_guess\w*\s*=\s*None", c.source, re.M) for c in before), \
            f"{path.name} cell {i}: no my_guess cell before the reading"
    assert found, f"{path.name}: no generated reading found"


def test_notebook_06_has_the_lambda_slider():
    nb = read(next(p for p in NOTEBOOKS if p.name.startswith("06")))
    src = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    assert "steering.steering_sweep(" in src and "concepts.steering_figure(" in src
