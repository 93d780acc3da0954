"""Notebooks 05-08 teach by having the learner write the idea (read from the notebook JSON;
nothing is executed; the smoke course in test_notebooks.py runs them).

- the parameters cell declares ``solutions = False``;
- every exercise is three code cells in this order: the learner's cell (tagged ``exercise``: a
  stub whose body is ``...``, or a variable set to ``None``), the check (a call of
  ``checks_late.check_*(N, answer, ...)``), and the solution (tagged ``solution``, source hidden,
  one ``if solutions:`` block ending with the same check); nothing between them reassigns the
  answer, the checks are numbered 1, 2, ... like the exercises' headings;
- each notebook has at least one exercise where the learner writes a function the package confirms
  (05: the worst case, 06: DLR and the gate-steering PGD, 07: the uniform average, 08: the paired
  test), and 06 has the λ slider;
- a "Predict first" line comes before each generated reading (``protocol_reading``, the adaptive
  reading, ``verdict_reading``, the audit readings, ``course_lessons``), with a ``my_guess`` cell;
- the setup cell imports at most :data:`MAX_KIT_NAMES` names from ``dwf_lab``.
"""
from __future__ import annotations

import ast
import re

import nbformat
import pytest

from dwf_lab.course.runner import notebook_sequence

LATE = ("05", "06", "07", "08")
NOTEBOOKS = [p for p in notebook_sequence() if p.name[:2] in LATE]
CHECK = re.compile(r"checks_late\.check_\w+\(\s*(\d+)\s*,\s*(\w+)")
MAX_KIT_NAMES = {"05": 13, "06": 11, "07": 12, "08": 7}
WRITTEN = {"05": {"my_worst_case"}, "06": {"my_dlr", "my_gate_pgd"}, "07": {"my_uniform"}, "08": {"my_paired"}}
READINGS = ("protocol_reading(", 'shown["reading"]', "verdict_reading(", "audit.audit_reading(findings,",
            "audit.audit_reading(findings_run", "course_lessons(", "noise.paired_difference(a, b)")


def _read(path):
    return nbformat.read(str(path), as_version=4)


def _tags(cell) -> list[str]:
    return cell.metadata.get("tags", [])


def _answer_name(cell) -> str:
    tree = ast.parse(cell.source)
    defs = [n for n in tree.body if isinstance(n, ast.FunctionDef)]
    if defs:
        assert len(defs) == 1
        body = defs[0].body
        assert all(isinstance(b, ast.Expr) and isinstance(b.value, ast.Constant) and b.value.value is Ellipsis
                   for b in body), f"the learner's function {defs[0].name} must be a stub (its body: ...)"
        return defs[0].name
    names = [t.id for n in tree.body if isinstance(n, ast.Assign) for t in n.targets if isinstance(t, ast.Name)
             and isinstance(n.value, ast.Constant) and n.value.value is None]
    assert len(names) == 1, f"the learner's cell must set one variable to None, got {cell.source!r}"
    return names[0]


def test_the_late_notebooks_are_there():
    assert [p.name[:2] for p in NOTEBOOKS] == list(LATE)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_solutions_parameter_defaults_to_false(path):
    cell = next(c for c in _read(path).cells if "parameters" in _tags(c))
    ns: dict = {}
    exec(cell.source, ns)  # noqa: S102 - our own notebook's parameter defaults
    assert ns.get("solutions") is False


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_each_exercise_is_learner_cell_then_check_then_solution(path):
    nb = _read(path)
    code = [c for c in nb.cells if c.cell_type == "code"]
    learners = [i for i, c in enumerate(code) if "exercise" in _tags(c)]
    solutions = [i for i, c in enumerate(code) if "solution" in _tags(c)]
    assert learners and len(learners) == len(solutions), f"{path.name}: {len(learners)} exercises, {len(solutions)} solutions"
    numbers, names = [], set()
    for i in learners:
        learner, check, sol = code[i], code[i + 1], code[i + 2]
        name = _answer_name(learner)
        names.add(name)
        assert "solution" in _tags(sol), f"{path.name}: {name} is not followed by its check, then its solution"
        m = CHECK.search(check.source)
        assert m and m[2] == name, f"{path.name}: the cell after {name}'s must check it, got {check.source!r}"
        assert not re.search(rf"^\s*{name}\s*=|^\s*def {name}\b", check.source, re.M)
        numbers.append(int(m[1]))
        tree = ast.parse(sol.source)
        assert len(tree.body) == 1 and isinstance(tree.body[0], ast.If) and ast.unparse(tree.body[0].test) == "solutions"
        assert any("checks_late.check_" in line and f"({m[1]}," in line for line in sol.source.splitlines())
        assert sol.metadata.get("jupyter", {}).get("source_hidden") is True
    assert numbers == list(range(1, len(numbers) + 1)), f"{path.name}: checks numbered {numbers}"
    headings = [int(n) for c in nb.cells if c.cell_type == "markdown" for n in re.findall(r"\*\*Exercise (\d+) —", c.source)]
    assert headings == numbers, f"{path.name}: exercise headings {headings}, checks {numbers}"
    assert WRITTEN[path.name[:2]] <= names, f"{path.name}: the learner writes {sorted(names)}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_predict_first_before_each_generated_reading(path):
    cells = _read(path).cells
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
    nb = _read(next(p for p in NOTEBOOKS if p.name.startswith("06")))
    src = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    assert "steering.steering_sweep(" in src and "concepts.steering_figure(" in src


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_few_kit_names_are_imported(path):
    setup = next(c for c in _read(path).cells if c.cell_type == "code" and "setup_notebook(" in c.source)
    names = [a.asname or a.name for n in ast.parse(setup.source).body
             if isinstance(n, ast.ImportFrom) and (n.module or "").startswith("dwf_lab") for a in n.names]
    assert len(names) <= MAX_KIT_NAMES[path.name[:2]], f"{path.name} imports {len(names)} names from dwf_lab: {names}"
