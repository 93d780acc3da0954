"""The student copy of the course: every solution cell removed, ``solutions = False``.

``python -m dwf_lab course --student-copy DIR`` writes it (:func:`student_copy`); an instructor
hands DIR to a class. A cell is a solution when its metadata tags hold :data:`SOLUTION_TAG`; the
exercise before it (the learner's cell and its check, :mod:`dwf_lab.course.exercises`) stays, so the
copy opens and runs to the end unanswered ("not attempted").
"""
import json
import re
from pathlib import Path

import nbformat

from dwf_lab.course.runner import NOTEBOOKS_DIR, STUDENT_COPY_KEY, notebook_sequence

SOLUTION_TAG = "solution"
REMOVED_NOTE = "(solution removed in the student copy)"


def _force_no_solutions(source: str) -> str:
    line = "solutions = False  # the student copy has no solutions"
    if re.search(r"^solutions\s*=", source, flags=re.M):
        return re.sub(r"^solutions\s*=.*$", line, source, flags=re.M)
    return source.rstrip("\n") + "\n" + line


def student_notebook(nb):
    """A copy of notebook ``nb`` for students: every cell tagged ``solution`` replaced by the
    markdown note :data:`REMOVED_NOTE`, ``solutions = False`` in its parameters cell, no outputs."""
    nb = nbformat.from_dict(json.loads(json.dumps(nb)))   # a deep copy
    cells = []
    for cell in nb.cells:
        tags = cell.metadata.get("tags", [])
        if SOLUTION_TAG in tags:
            cells.append(nbformat.v4.new_markdown_cell(REMOVED_NOTE, metadata={"tags": ["solution-removed"]}))
            continue
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
            if "parameters" in tags:
                cell.source = _force_no_solutions(cell.source)
        cells.append(cell)
    nb.cells = cells
    nb.metadata.pop("papermill", None)
    nb.metadata.setdefault("dwf_lab", {})[STUDENT_COPY_KEY] = True
    nbformat.validate(nb)
    return nb


def student_copy(out_dir: str | Path, notebooks_dir: str | Path | None = None) -> list[Path]:
    """Write the course's notebooks to ``out_dir`` with their solutions removed
    (:func:`student_notebook`); returns the written paths. Refuses to write over the course itself."""
    src = Path(notebooks_dir) if notebooks_dir is not None else NOTEBOOKS_DIR
    out = Path(out_dir)
    if out.exists() and out.resolve() == src.resolve():
        raise ValueError(f"the student copy would overwrite the course's own notebooks in {src}: give another folder")
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out} exists and is not a folder")
    nbs = notebook_sequence(src)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for path in nbs:
        nb = student_notebook(nbformat.read(str(path), as_version=4))
        target = out / path.name
        nbformat.write(nb, str(target))
        written.append(target)
    return written


def count_solutions(nb) -> int:
    return sum(SOLUTION_TAG in c.metadata.get("tags", []) for c in nb.cells)
