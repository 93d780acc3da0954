"""The layout rules of docs/architecture.md, checked on the source: no import cycle between
modules, no dwf_lab import inside a function (except the CLI's dispatch), no private name taken
from another module. The layers themselves are import-linter's contract (.importlinter, make lint).
"""
from __future__ import annotations

import ast
from pathlib import Path

import grimp

PACKAGE = Path(__file__).resolve().parents[1] / "dwf_lab"
LAZY_OK = {"__main__.py"}   # the CLI imports a command's modules only when it runs that command


def _modules():
    for f in sorted(PACKAGE.rglob("*.py")):
        rel = f.relative_to(PACKAGE.parent).with_suffix("")
        name = ".".join(rel.parts).removesuffix(".__init__")
        yield f, name, ast.parse(f.read_text(encoding="utf-8"))


def _dwf_imports(tree):
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("dwf_lab"):
            yield node
        elif isinstance(node, ast.Import) and any(a.name.startswith("dwf_lab") for a in node.names):
            yield node


def test_no_dwf_lab_import_inside_a_function():
    bad = []
    for f, _, tree in _modules():
        if f.name in LAZY_OK:
            continue
        for fn in ast.walk(tree):
            if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                bad += [f"{f.relative_to(PACKAGE.parent)}:{n.lineno}" for n in _dwf_imports(fn)]
    assert not bad, f"dwf_lab imports inside functions: {bad}"


def test_no_private_name_is_imported_from_another_module():
    bad = []
    for f, _, tree in _modules():
        for node in _dwf_imports(tree):
            if isinstance(node, ast.ImportFrom):
                bad += [f"{f.relative_to(PACKAGE.parent)}:{node.lineno} {node.module}.{a.name}"
                        for a in node.names if a.name.startswith("_") and a.name != "__version__"]
    assert not bad, f"private names used across modules: {bad}"


def test_no_import_cycles_between_modules():
    graph = grimp.build_graph("dwf_lab")
    cycles = []
    for m in sorted(graph.modules):
        for imported in graph.find_modules_directly_imported_by(m):
            if imported != m and graph.chain_exists(importer=imported, imported=m):
                cycles.append((m, imported))
    assert not cycles, f"modules importing each other (directly or through others): {cycles[:10]}"
