"""The exercises of notebooks 00, 01, 02, 03 and 04 follow the autograder pattern (read from the
notebook JSON; nothing is executed); 05-08's own rules are in test_late_notebooks.py.

- every notebook's parameters cell declares ``solutions = False``: a learner's Run All runs no solution;
- every exercise is three code cells in this order: the learner's cell (tagged ``exercise``: a
  stub whose body is ``...``, or a variable set to ``None``), the check (a call of
  ``exercises.check_*(N, ...)`` on the learner's answer), and the solution (tagged ``solution``,
  source hidden, everything under ``if solutions:``, with the same check on itself); nothing
  between them reassigns the answer;
- the checks are numbered 1, 2, ... in order, like the exercises' headings;
- every notebook's setup cell imports at most :data:`MAX_KIT_NAMES` names from ``dwf_lab``.
"""
from __future__ import annotations

import pytest
from exercise_cells import check_exercises, kit_names, solutions_default

from dwf_lab.course.runner import notebook_sequence

MINE = ("00", "01", "02", "03", "04")
NOTEBOOKS = [p for p in notebook_sequence() if p.name[:2] in MINE]
COURSE = notebook_sequence()
MAX_KIT_NAMES = {"00": 12, "01": 13, "02": 12, "03": 12, "04": 12, "05": 12, "06": 10, "07": 11, "08": 7}


def test_my_notebooks_are_there():
    assert [p.name[:2] for p in NOTEBOOKS] == list(MINE)


@pytest.mark.parametrize("path", COURSE, ids=lambda p: p.stem)
def test_solutions_parameter_defaults_to_false(path):
    assert solutions_default(path) is False


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_each_exercise_is_learner_cell_then_check_then_solution(path):
    check_exercises(path, "exercises")


@pytest.mark.parametrize("path", COURSE, ids=lambda p: p.stem)
def test_few_kit_names_are_imported(path):
    names = kit_names(path)
    assert len(names) <= MAX_KIT_NAMES[path.name[:2]], f"{path.name} imports {len(names)} names from dwf_lab: {names}"
