"""The whole course, run once per session at the smoke profile (``run_course``, as ``python -m
dwf_lab course`` does), for the tests that read what it leaves: the headless run's outputs
(test_notebooks.py) and the static site in a real browser (test_browser.py).

Under ``make test`` ($DWF_RUNS_DIR is a fresh temporary folder, $DWF_PROFILE=smoke) the course
runs as the notebooks' own default run, ``smoke``, so nbval, which executes every notebook again
after the tests, finds the stages trained and evaluated and loads them: the fresh path of every
notebook is the course run's, the loading path nbval's. Elsewhere it runs in a temporary folder.
"""
from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import pytest

from dwf_lab.core.config import get_profile
from dwf_lab.course.runner import run_course
from dwf_lab.store.runs import RUNS_DIR_ENV


@pytest.fixture(scope="session")
def smoke_course(tmp_path_factory) -> SimpleNamespace:
    """``done`` (the executed notebooks, in order) and ``root`` (the run directory) of the whole
    course at the smoke profile, with live (not static) figures."""
    shared = os.environ.get(RUNS_DIR_ENV)
    if shared and os.environ.get("DWF_PROFILE") == "smoke" and not (Path(shared) / "smoke").exists():
        runs, name = Path(shared), "smoke"
    else:
        runs, name = tmp_path_factory.mktemp("course") / "runs", "ci"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(RUNS_DIR_ENV, str(runs))
        mp.delenv("DWF_PROFILE", raising=False)
        mp.delenv("DWF_STATIC_FIGURES", raising=False)
        done = run_course(get_profile("smoke"), run_name=name)
    return SimpleNamespace(done=[Path(p) for p in done], root=runs / name)
