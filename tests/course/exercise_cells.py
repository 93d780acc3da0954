"""Reading a notebook's exercises from its JSON (nothing executed), for the tests of both halves of the
course: an exercise is the learner's cell (tagged ``exercise``), the check (``<module>.check_*(N,
answer, ...)``), then the solution (tagged ``solution``, source hidden, one ``if solutions:`` block
ending with the same check)."""
from __future__ import annotations

import ast
import re

import nbformat


def read(path):
    return nbformat.read(str(path), as_version=4)


def tags(cell) -> list[str]:
    return cell.metadata.get("tags", [])


def answer_name(cell) -> str:
    """The name the learner's cell binds: its function's (a stub whose body is ``...``), or its
    variable's (set to None)."""
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


def solutions_default(path):
    """The value the notebook's parameters cell gives ``solutions``."""
    cell = next(c for c in read(path).cells if "parameters" in tags(c))
    ns: dict = {}
    exec(cell.source, ns)  # noqa: S102 - our own notebook's parameter defaults
    return ns.get("solutions")


def check_exercises(path, module: str) -> set[str]:
    """Assert the notebook's exercises follow the pattern with checks from ``module`` ("exercises",
    "checks_late"), numbered 1, 2, ... like their headings; returns the names the learner writes."""
    nb = read(path)
    check_call = re.compile(rf"{module}\.check_\w+\(\s*(\d+)\s*,\s*(\w+)")
    code = [c for c in nb.cells if c.cell_type == "code"]
    learners = [i for i, c in enumerate(code) if "exercise" in tags(c)]
    solutions = [i for i, c in enumerate(code) if "solution" in tags(c)]
    assert learners and len(learners) == len(solutions), \
        f"{path.name}: {len(learners)} exercise cells, {len(solutions)} solutions"
    numbers, names = [], set()
    for k, i in enumerate(learners):
        learner, check, sol = code[i], code[i + 1], code[i + 2]
        name = answer_name(learner)
        names.add(name)
        assert "solution" in tags(sol), f"{path.name}: exercise cell {name} is not followed by its check, then its solution"
        m = check_call.search(check.source)
        assert m and m[2] == name, f"{path.name}: the cell after {name}'s must check it, got {check.source!r}"
        assert "exercise" not in tags(check) and "solution" not in tags(check)
        assert not re.search(rf"^\s*{name}\s*=|^\s*def {name}\b", check.source, re.M), \
            f"{path.name}: the check cell of {name} must not set it"
        numbers.append(int(m[1]))
        tree = ast.parse(sol.source)
        assert len(tree.body) == 1 and isinstance(tree.body[0], ast.If) and ast.unparse(tree.body[0].test) == "solutions", \
            f"{path.name}: solution {k + 1} must be one `if solutions:` block"
        assert not tree.body[0].orelse
        assert any(f"{module}.check_" in line and f"({m[1]}," in line for line in sol.source.splitlines()), \
            f"{path.name}: solution {k + 1} must check itself"
        assert sol.metadata.get("jupyter", {}).get("source_hidden") is True
    assert numbers == list(range(1, len(numbers) + 1)), f"{path.name}: checks numbered {numbers}"
    headings = [int(n) for c in nb.cells if c.cell_type == "markdown"
                for n in re.findall(r"\*\*Exercise (\d+) —", c.source)]
    assert headings == numbers, f"{path.name}: exercise headings {headings}, checks {numbers}"
    return names


def kit_names(path) -> list[str]:
    """The names the notebook's setup cell imports from ``dwf_lab``."""
    setup = next(c for c in read(path).cells if c.cell_type == "code" and "setup_notebook(" in c.source)
    return [a.asname or a.name for n in ast.parse(setup.source).body
            if isinstance(n, ast.ImportFrom) and (n.module or "").startswith("dwf_lab") for a in n.names]
