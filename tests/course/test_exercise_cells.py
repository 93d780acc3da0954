"""The exercises of notebooks 00, 01, 02 and 04 follow the autograder pattern (read from the
notebook JSON; nothing is executed).

- the parameters cell declares ``solutions = False``: a learner's Run All runs no solution;
- every exercise is three code cells in this order: the learner's cell (tagged ``exercise``: a
  stub whose body is ``...``, or a variable set to ``None``), the check (a call of
  ``exercises.check_*(N, ...)`` on the learner's answer), and the solution (tagged ``solution``,
  source hidden, everything under ``if solutions:``, with the same check on itself); nothing
  between them reassigns the answer;
- the checks are numbered 1, 2, ... in order, like the exercises' headings;
- the setup cell imports at most :data:`MAX_KIT_NAMES` names from ``dwf_lab``.
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

import nbformat
import pytest

from dwf_lab.course.runner import notebook_sequence

MINE = ("00", "01", "02", "04")
NOTEBOOKS = [p for p in notebook_sequence() if p.name[:2] in MINE]
CHECK = re.compile(r"exercises\.check_\w+\(\s*(\d+)\s*,\s*(\w+)")
MAX_KIT_NAMES = {"00": 12, "01": 13, "02": 16, "04": 17}


def _read(path: Path):
    return nbformat.read(str(path), as_version=4)


def _tags(cell) -> list[str]:
    return cell.metadata.get("tags", [])


def _answer_name(cell) -> str:
    """The name the learner's cell binds: its function's, or its variable's (set to None)."""
    tree = ast.parse(cell.source)
    defs = [n for n in tree.body if isinstance(n, ast.FunctionDef)]
    if defs:
        assert len(defs) == 1
        body = [b for b in defs[0].body if not (isinstance(b, ast.Expr) and isinstance(b.value, ast.Constant)
                                                and isinstance(b.value.value, str))]
        stub = all(isinstance(b, ast.Expr) and isinstance(b.value, ast.Constant) and b.value.value is Ellipsis
                   for b in body)
        assert stub, f"the learner's function {defs[0].name} must be a stub (its body: ...)"
        return defs[0].name
    names = [t.id for n in tree.body if isinstance(n, ast.Assign) for t in n.targets if isinstance(t, ast.Name)
             and isinstance(n.value, ast.Constant) and n.value.value is None]
    assert len(names) == 1, f"the learner's cell must set one variable to None, got {cell.source!r}"
    return names[0]


def test_my_notebooks_are_there():
    assert [p.name[:2] for p in NOTEBOOKS] == list(MINE)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_solutions_parameter_defaults_to_false(path):
    nb = _read(path)
    cell = next(c for c in nb.cells if "parameters" in _tags(c))
    ns: dict = {}
    exec(cell.source, ns)  # noqa: S102 - our own notebook's parameter defaults
    assert ns.get("solutions") is False


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_each_exercise_is_learner_cell_then_check_then_solution(path):
    nb = _read(path)
    code = [c for c in nb.cells if c.cell_type == "code"]
    solutions = [i for i, c in enumerate(code) if "solution" in _tags(c)]
    learners = [i for i, c in enumerate(code) if "exercise" in _tags(c)]
    assert solutions and len(solutions) == len(learners), f"{path.name}: {len(learners)} exercise cells, {len(solutions)} solutions"
    numbers = []
    for k, i in enumerate(learners):
        learner, check, sol = code[i], code[i + 1], code[i + 2]
        name = _answer_name(learner)
        assert "solution" in _tags(sol), f"{path.name}: exercise cell {name} is not followed by its check, then its solution"
        m = CHECK.search(check.source)
        assert m and m[2] == name, f"{path.name}: the cell after {name}'s must check it, got {check.source!r}"
        assert "exercise" not in _tags(check) and "solution" not in _tags(check)
        assert not re.search(rf"^\s*{name}\s*=|^\s*def {name}\b", check.source, re.M), \
            f"{path.name}: the check cell of {name} must not set it"
        numbers.append(int(m[1]))
        tree = ast.parse(sol.source)
        assert len(tree.body) == 1 and isinstance(tree.body[0], ast.If) and ast.unparse(tree.body[0].test) == "solutions", \
            f"{path.name}: solution {k + 1} must be one `if solutions:` block"
        assert not tree.body[0].orelse
        assert any("exercises.check_" in line and f"({m[1]}," in line for line in sol.source.splitlines()), \
            f"{path.name}: solution {k + 1} must check itself"
        assert sol.metadata.get("jupyter", {}).get("source_hidden") is True
    assert numbers == list(range(1, len(numbers) + 1)), f"{path.name}: checks numbered {numbers}"
    headings = [int(n) for c in nb.cells if c.cell_type == "markdown"
                for n in re.findall(r"\*\*Exercise (\d+) —", c.source)]
    assert headings == numbers, f"{path.name}: exercise headings {headings}, checks {numbers}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_few_kit_names_are_imported(path):
    nb = _read(path)
    setup = next(c for c in nb.cells if c.cell_type == "code" and "setup_notebook(" in c.source)
    tree = ast.parse(setup.source)
    names = [a.asname or a.name for n in tree.body if isinstance(n, ast.ImportFrom) and (n.module or "").startswith("dwf_lab")
             for a in n.names]
    assert len(names) <= MAX_KIT_NAMES[path.name[:2]], f"{path.name} imports {len(names)} names from dwf_lab: {names}"
