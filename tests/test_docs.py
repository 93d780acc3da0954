"""The README is a front page, and the commands the documentation quotes still parse.

- The README stays short (at most 150 lines), opens with ``make run`` and ``make test``, and
  links every page of ``docs/`` (the details live there).
- Every ``python -m dwf_lab ...`` command quoted in ``README.md`` or ``docs/*.md`` (in a code
  block, after ``$ `` in a transcript, after ``torchrun ... -m dwf_lab``, or in inline code) is
  accepted by the CLI's parser, so a renamed command or flag cannot leave the docs behind.
  Commands with an elided part (``...``) are skipped.

Pure text checks plus the argument parser: nothing is run.
"""
from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from dwf_lab.__main__ import _parser

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]

FENCE = re.compile(r"^ {0,3}(```|~~~)")
INLINE = re.compile(r"`([^`]+)`")
# "python -m dwf_lab <args>" or "torchrun ... -m dwf_lab <args>"; not python -m dwf_lab.bench
INVOCATION = re.compile(r"(?:^|\s)-m dwf_lab(?=\s|$)(.*)", re.DOTALL)


def quoted_commands(text: str) -> list[str]:
    """The argument strings of every dwf_lab command quoted in ``text``."""
    found: list[str] = []
    prose: list[str] = []
    in_fence = False
    for line in text.splitlines():
        if FENCE.match(line):
            in_fence = not in_fence
            continue
        if in_fence:
            command = line.strip().removeprefix("$ ")
            if command.startswith(("python -m dwf_lab ", "torchrun ")):
                m = INVOCATION.search(command.split(" #", 1)[0])
                if m:
                    found.append(m.group(1).strip())
        else:
            prose.append(line)
    for span in INLINE.findall("\n".join(prose)):
        span = " ".join(span.split())
        m = INVOCATION.search(span)
        if m and "python -m dwf_lab" in span:
            found.append(m.group(1).strip())
    return [c for c in found if c and "..." not in c and "…" not in c]   # not the bare name


def _id(path: Path) -> str:
    return str(path.relative_to(ROOT))


def test_the_readme_is_a_front_page():
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 150, f"README.md has {len(lines)} lines: move details into docs/"
    first_screen = "\n".join(lines[:25])
    assert "make run" in first_screen and "make test" in first_screen
    assert "Divided We Fall" in lines[0] or "Divided We Fall" in first_screen


def test_the_readme_links_every_docs_page():
    text = README.read_text(encoding="utf-8")
    missing = [_id(p) for p in PAGES[1:] if f"]({_id(p)})" not in text]
    assert not missing, f"README.md does not link: {missing}"


def test_quoted_commands_are_found():
    commands = [c for p in PAGES for c in quoted_commands(p.read_text(encoding="utf-8"))]
    joined = "\n".join(commands)
    for wanted in ("evaluate --model", "course --scope full", "unpack", "adaptive", "train --profile paper"):
        assert wanted in joined, f"no quoted command with {wanted!r}"


@pytest.mark.parametrize("path", PAGES, ids=_id)
def test_every_quoted_command_parses(path: Path):
    parser = _parser()
    problems = []
    for command in quoted_commands(path.read_text(encoding="utf-8")):
        try:
            parser.parse_args(shlex.split(command))
        except SystemExit:
            problems.append(command)
    assert not problems, f"{_id(path)}: the CLI refuses\n  " + "\n  ".join(problems)


def test_the_checker_catches_a_wrong_command():
    text = ("Run `python -m dwf_lab evaluate --no-such-flag`.\n\n```bash\n"
            "python -m dwf_lab report --run x   # fine\npython -m dwf_lab.bench --size tiny\n"
            "torchrun --nproc_per_node 2 -m dwf_lab trian --stage experts\n```\n")
    commands = quoted_commands(text)
    assert commands == ["report --run x", "trian --stage experts", "evaluate --no-such-flag"]
    parser = _parser()
    assert parser.parse_args(shlex.split(commands[0])).command == "report"
    for bad in commands[1:]:
        with pytest.raises(SystemExit):
            parser.parse_args(shlex.split(bad))
