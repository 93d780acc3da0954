"""Every reference the course makes resolves inside the repository.

The notebooks, ``README.md`` and ``docs/*.md`` cite files of the kit (markdown links,
``docs/...md`` and ``notebooks/...ipynb`` mentions) and items of the paper notes
(``../docs/paper-notes.md#point-3``). A learner has only the repository, so:

- (a) every relative path cited exists;
- (b) every ``#fragment`` of a link into a markdown file (or a notebook) names an
  ``id="..."`` / ``name="..."`` anchor or a heading of that file;
- (c) nothing cites ``PAPER-NOTES.md``, a project-internal file learners do not have;
- (d) the code paths the notes name (where each decision lives) exist, and the package's
  docstrings that cite ``docs/paper-notes.md, gap N`` (or error/point N) name an item N
  that the notes have.

Pure text checks: no model, no torch work.
"""
from __future__ import annotations

import json
import re
import unicodedata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
NOTES = ROOT / "docs" / "paper-notes.md"
FORBIDDEN = "PAPER-NOTES"

# ](target) or ](target "title")
LINK = re.compile(r"\]\(\s*<?([^)\s>]+)>?(?:\s+[\"'][^\"']*[\"'])?\s*\)")
# docs/...md and notebooks/...ipynb written root-relative, not as part of a longer path
MENTION = re.compile(r"(?<![\w./-])((?:docs/[\w./-]*?\.md)|(?:notebooks/[\w./-]*?\.ipynb))(#[\w-]+)?(?![\w])")
SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")
ANCHOR = re.compile(r"""<a\s[^>]*?\b(?:id|name)\s*=\s*["']([^"']+)["']""", re.IGNORECASE)
ID_ATTR = re.compile(r"""\bid\s*=\s*["']([^"']+)["']""")
HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
FENCE = re.compile(r"^ {0,3}(```|~~~)")
# a package or test path written in backticks: `dwf_lab/models/common.py`
CODE_PATH = re.compile(r"`((?:dwf_lab|tests)/[\w./-]*)`")
# a template, not a file: notebooks/NN_name.ipynb
PLACEHOLDER = re.compile(r"(?:^|/)N+_")
PY_CITE = re.compile(r"docs/paper-notes\.md,?\s+(?:gap|error|point|item)\s+(\d+)")


# ------------------------------------------------------------------ reading --
def course_documents(root: Path = ROOT) -> dict[Path, str]:
    """{file: its text}: every notebook (all cells), README.md and docs/*.md."""
    docs: dict[Path, str] = {}
    for nb in sorted((root / "notebooks").glob("*.ipynb")):
        docs[nb] = notebook_text(nb)
    readme = root / "README.md"
    if readme.exists():
        docs[readme] = readme.read_text(encoding="utf-8")
    for md in sorted((root / "docs").glob("*.md")):
        docs[md] = md.read_text(encoding="utf-8")
    return docs


def notebook_text(path: Path) -> str:
    cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
    return "\n\n".join("".join(c["source"]) if isinstance(c["source"], list) else c["source"]
                       for c in cells)


def markdown_of(path: Path) -> str:
    """The markdown a file renders: a .md file's text, a notebook's markdown cells."""
    if path.suffix == ".ipynb":
        cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
        return "\n\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "markdown")
    return path.read_text(encoding="utf-8")


# ------------------------------------------------------------------ anchors --
def slug(heading: str) -> str:
    """GitHub's heading anchor: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)      # [text](url) -> text
    text = re.sub(r"<[^>]+>", "", text).strip().lower()            # inline HTML
    kept = "".join(ch for ch in text
                   if ch in " -_" or unicodedata.category(ch)[0] in "LN")
    return kept.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every fragment a link may use into ``path``: explicit ids and heading slugs."""
    text = markdown_of(path)
    found = set(ANCHOR.findall(text)) | set(ID_ATTR.findall(text))
    seen: dict[str, int] = {}
    in_fence = False
    for line in text.splitlines():
        if FENCE.match(line):
            in_fence = not in_fence
            continue
        m = None if in_fence else HEADING.match(line)
        if not m:
            continue
        base = slug(m.group(2))
        n = seen.get(base, 0)
        seen[base] = n + 1
        found.add(base if n == 0 else f"{base}-{n}")
        if path.suffix == ".ipynb":          # JupyterLab keeps case and punctuation
            found.add(m.group(2).strip().replace(" ", "-"))
    return found


# ------------------------------------------------------------------- checks --
def broken_references(source: Path, text: str, root: Path = ROOT) -> list[str]:
    """What in ``text`` (the contents of ``source``) points at nothing in the repository."""
    problems: list[str] = []
    cited: list[tuple[str, Path, str]] = []   # (as written, resolved path, fragment)
    for target in LINK.findall(text):
        if SCHEME.match(target) or target.startswith("//"):
            continue                              # http(s)://, mailto:, ...
        path_part, _, fragment = target.partition("#")
        if not path_part and not fragment:
            continue                              # [text](#): a link to the page itself
        resolved = (source.parent / path_part).resolve() if path_part else source.resolve()
        cited.append((target, resolved, fragment))
    for path_part, fragment in MENTION.findall(text):
        if PLACEHOLDER.search(path_part):
            continue
        cited.append((path_part + fragment, (root / path_part).resolve(), fragment.lstrip("#")))
    for written, resolved, fragment in cited:
        try:
            resolved.relative_to(root)
        except ValueError:
            problems.append(f"{written!r} leaves the repository")
            continue
        if not resolved.exists():
            problems.append(f"{written!r}: no file {resolved.relative_to(root)}")
        elif fragment and resolved.suffix in (".md", ".ipynb") and fragment not in anchors(resolved):
            problems.append(f"{written!r}: no anchor #{fragment} in {resolved.relative_to(root)}")
    return problems


DOCUMENTS = course_documents()


def _id(path: Path) -> str:
    return str(path.relative_to(ROOT))


def test_course_documents_are_found():
    names = {_id(p) for p in DOCUMENTS}
    assert "README.md" in names and "docs/paper-notes.md" in names
    assert sum(p.suffix == ".ipynb" for p in DOCUMENTS) >= 8


@pytest.mark.parametrize("path", sorted(DOCUMENTS), ids=_id)
def test_every_cited_path_and_anchor_exists(path: Path):
    problems = broken_references(path, DOCUMENTS[path])
    assert not problems, f"{_id(path)}:\n  " + "\n  ".join(problems)


@pytest.mark.parametrize("path", sorted(DOCUMENTS), ids=_id)
def test_nothing_cites_the_internal_notes(path: Path):
    hits = [line.strip() for line in DOCUMENTS[path].splitlines() if FORBIDDEN in line]
    assert not hits, f"{_id(path)} cites {FORBIDDEN}.md (use docs/paper-notes.md): {hits}"


def test_paper_notes_have_the_seven_numbered_points():
    ids = anchors(NOTES)
    for n in range(1, 8):
        assert f"point-{n}" in ids, f"docs/paper-notes.md has no <a id=\"point-{n}\"></a>"


def test_code_paths_named_by_the_notes_exist():
    """The notes say where each decision lives (`dwf_lab/models/common.py`): those paths exist."""
    named = set(CODE_PATH.findall(NOTES.read_text(encoding="utf-8")))
    assert named, "docs/paper-notes.md names no code path"
    missing = sorted(p for p in named if not (ROOT / p).exists())
    assert not missing, f"docs/paper-notes.md names missing paths: {missing}"


def test_code_citations_of_the_notes_resolve():
    """dwf_lab/ and tests/: 'docs/paper-notes.md, gap N' names an existing point; no PAPER-NOTES."""
    ids = anchors(NOTES)
    problems = []
    for py in sorted([*(ROOT / "dwf_lab").rglob("*.py"), *(ROOT / "tests").rglob("*.py")]):
        if py.resolve() == Path(__file__).resolve():
            continue
        text = py.read_text(encoding="utf-8")
        if FORBIDDEN in text:
            problems.append(f"{_id(py)}: cites {FORBIDDEN}")
        for n in PY_CITE.findall(text):
            if f"point-{n}" not in ids:
                problems.append(f"{_id(py)}: docs/paper-notes.md has no point {n}")
    assert not problems, "\n".join(problems)


def test_the_checker_catches_broken_references(tmp_path: Path):
    """The checks above can fail: a missing file, a missing anchor, a path outside the repo."""
    (tmp_path / "docs").mkdir()
    (tmp_path / "notebooks").mkdir()
    (tmp_path / "docs" / "notes.md").write_text(
        '# Notes\n\n```bash\n# not a heading\n```\n\n1. <a id="point-1"></a>**One.**\n## Two words\n',
        encoding="utf-8")
    source = tmp_path / "notebooks" / "00.ipynb"
    source.write_text(json.dumps({"cells": [{"cell_type": "markdown", "source": ["# Start here"]}]}),
                      encoding="utf-8")
    good = ("[a](../docs/notes.md#point-1) [b](../docs/notes.md#two-words) [c](#) "
            "[d](https://example.org/x.md) [e](#Start-here) `docs/notes.md` `docs/notes.md#notes` "
            "`notebooks/NN_name.ipynb`")
    assert broken_references(source, good, root=tmp_path) == []
    bad = ("[a](../docs/notes.md#point-2) [b](../docs/missing.md) `docs/gone.md` "
           "[c](../../outside.md) [d](../docs/notes.md#not-a-heading) [e](#nowhere) `notebooks/01.ipynb`")
    problems = broken_references(source, bad, root=tmp_path)
    assert len(problems) == 7, problems
