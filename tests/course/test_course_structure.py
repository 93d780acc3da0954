"""Every course notebook has the same shape (read from the notebook JSON; nothing is executed).

- it opens with a markdown title (``# ...``) and a "What you will learn" section, before any code;
- one ``parameters`` cell (papermill) defining ``profile``, ``run_name`` and ``overrides``
  (defaults None, None, {}), then a setup cell ``ctx = setup_notebook(profile, run_name,
  overrides, ..., notebook="NN")`` passing the notebook's own number (and ``scope=scope`` when
  the notebook declares a ``scope`` parameter);
- it is stored clean: nbformat-valid, the python3 kernel, no outputs, no execution counts, no
  widget state; no function or class defined in a cell (logic lives in ``dwf_lab``), but for an
  exercise's cells (tagged ``exercise``: the learner's stub, ``def my_fgsm(...): ...``, and its
  ``solution``);
- exercise solutions are code cells (tagged ``solution``, their source hidden:
  ``metadata.jupyter.source_hidden``), so nbval runs them; no Python code inside a markdown
  ``<details>`` block, where nothing would ever run it;
- its number has a plan in :data:`dwf_lab.course.plan.NOTEBOOK_PLANS`, which the cost banner reads.
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

import nbformat
import pytest

from dwf_lab.course.plan import NOTEBOOK_PLANS
from dwf_lab.course.runner import notebook_sequence

NOTEBOOKS = notebook_sequence()
DETAILS = re.compile(r"<details\b.*?</details>", re.S | re.I)
CODE_FENCE = re.compile(r"^\s*(```|~~~)\s*(python|py|ipython|python3)?\s*$", re.M | re.I)
SETUP_CALL = re.compile(r"setup_notebook\(\s*profile\s*,\s*run_name\s*,\s*overrides\b(?P<rest>[^)]*)\)")


def _read(path: Path):
    return nbformat.read(str(path), as_version=4)


def _number(path: Path) -> str:
    return path.name[:2]


def _parameters(nb) -> tuple[int, dict]:
    tagged = [i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, f"expected one cell tagged 'parameters', got {len(tagged)}"
    cell = nb.cells[tagged[0]]
    assert cell.cell_type == "code", "the parameters cell must be a code cell"
    ns: dict = {}
    exec(cell.source, ns)  # noqa: S102 - our own notebook's parameter defaults
    return tagged[0], {k: v for k, v in ns.items() if not k.startswith("__")}


def test_there_are_notebooks_and_each_has_a_plan():
    assert len(NOTEBOOKS) >= 8
    numbers = [_number(p) for p in NOTEBOOKS]
    assert len(set(numbers)) == len(numbers), f"two notebooks share a number: {numbers}"
    missing = [n for n in numbers if n not in NOTEBOOK_PLANS]
    assert not missing, f"notebook(s) {missing} have no plan in dwf_lab.course.plan.NOTEBOOK_PLANS"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_opens_with_a_title_and_what_you_will_learn(path):
    nb = _read(path)
    first = nb.cells[0]
    assert first.cell_type == "markdown", f"{path.name}: the first cell must be markdown (the title)"
    assert re.match(r"#\s+\S", first.source.lstrip()), f"{path.name}: the first cell must start with '# title'"
    before_code = []
    for cell in nb.cells:
        if cell.cell_type == "code":
            break
        before_code.append(cell.source)
    assert re.search(r"^#+\s*What you will learn", "\n".join(before_code), re.M), \
        f"{path.name}: no 'What you will learn' heading before the first code cell"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_parameters_then_setup_with_its_own_number(path):
    nb = _read(path)
    i, params = _parameters(nb)
    assert {"profile", "run_name", "overrides"} <= set(params), f"{path.name}: parameters {sorted(params)}"
    assert params["profile"] is None and params["run_name"] is None and params["overrides"] == {}
    if "scope" in params:
        assert params["scope"] is None, f"{path.name}: scope must default to None (core, or $DWF_COURSE_SCOPE)"
    setup = next(c for c in nb.cells[i + 1:] if c.cell_type == "code")
    m = SETUP_CALL.search(setup.source)
    assert m, f"{path.name}: the cell after the parameters must call setup_notebook(profile, run_name, overrides, ...)"
    assert re.search(rf"""notebook\s*=\s*["']{_number(path)}["']""", m["rest"]), \
        f"{path.name}: setup_notebook must get notebook=\"{_number(path)}\" (its cost banner), got {m.group(0)!r}"
    if "scope" in params:
        assert re.search(r"\bscope\s*=\s*scope\b", m["rest"]), \
            f"{path.name}: declares a scope parameter but does not pass scope=scope to setup_notebook"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_stored_clean(path):
    nb = _read(path)
    nbformat.validate(nb)
    assert nb.metadata["kernelspec"]["name"] == "python3"
    assert "papermill" not in nb.metadata and "widgets" not in nb.metadata
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        assert cell.outputs == [], f"{path.name} cell {i} has stored outputs"
        assert cell.execution_count is None, f"{path.name} cell {i} has an execution count"
        tree = ast.parse(re.sub(r"^\s*[%!].*$", "", cell.source, flags=re.M))
        if {"exercise", "solution"} & set(cell.metadata.get("tags", [])):
            continue   # a learner writes a function there, and its solution is one
        defined = [n.name for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.ClassDef))]
        assert not defined, f"{path.name} cell {i} defines {defined}: put it in dwf_lab"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_no_python_inside_markdown_details(path):
    nb = _read(path)
    found = [i for i, c in enumerate(nb.cells) if c.cell_type == "markdown"
             and any(CODE_FENCE.search(block) for block in DETAILS.findall(c.source))]
    assert not found, (f"{path.name}: markdown cell(s) {found} hold Python code inside <details>: "
                       "make each solution a code cell tagged 'solution' with its source hidden")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_solutions_are_hidden_code_cells(path):
    nb = _read(path)
    for i, cell in enumerate(nb.cells):
        if "solution" not in cell.metadata.get("tags", []):
            continue
        assert cell.cell_type == "code", f"{path.name} cell {i}: a solution must be a code cell (nbval runs it)"
        hidden = cell.metadata.get("jupyter", {}).get("source_hidden")
        assert hidden is True, f"{path.name} cell {i}: a solution starts collapsed (metadata.jupyter.source_hidden)"
