"""Running the notebook course headlessly: every notebook in order, with papermill.

:func:`notebook_sequence` lists ``notebooks/NN_*.ipynb``; :func:`run_course` executes them in
order (``python -m dwf_lab course``) with the parameters that rebuild the profile
(:func:`notebook_parameters`), the course scope and ``solutions = True`` (every exercise's
solution runs and is checked; :mod:`dwf_lab.course.exercises`), writing executed copies to
``runs/<run>/notebooks/`` and stopping at the first failure with a :class:`CourseError` that
names the notebook, the cell and the exception, and says where the partly executed copy is.
Each notebook's wall time goes to ``runs/<run>/course_times.json`` (:func:`record_time`), and
the executed course is rendered as a static site in ``runs/<run>/site/``
(:func:`dwf_lab.course.site.build_site`).
"""
import json
import os
import re
import sys
import time
from pathlib import Path
from typing import Iterable, Sequence

import nbformat
import papermill as pm

from dwf_lab.core.config import PROFILES, Profile, get_profile, parse_sets
from dwf_lab.core.io import atomic_write_text
from dwf_lab.core.runtime import Runtime
from dwf_lab.course.display import STATIC_ENV
from dwf_lab.course.forecast import course_forecast, forecast_line
from dwf_lab.course.plan import inventory
from dwf_lab.course.setup import SCOPE_ENV, configure_threads, course_scope
from dwf_lab.course.site import TIMES_FILE, build_site, read_times
from dwf_lab.store.runs import Run
from dwf_lab.training.builders import load_data

NOTEBOOKS_DIR = Path(__file__).resolve().parents[2] / "notebooks"
NOTEBOOK_PATTERN = re.compile(r"^\d\d_[\w\-]+\.ipynb$")


class CourseError(RuntimeError):
    """A notebook of the course failed; the message says which, where, and what to look at."""


# =============================================================== running ==
def notebook_sequence(directory: str | Path | None = None) -> list[Path]:
    """The course notebooks ``NN_name.ipynb`` in ``directory`` (default: the repo's notebooks/), sorted."""
    d = Path(directory) if directory is not None else NOTEBOOKS_DIR
    if not d.is_dir():
        raise FileNotFoundError(f"no notebooks directory at {d}")
    return sorted(p for p in d.iterdir() if NOTEBOOK_PATTERN.match(p.name))


def _select_notebooks(all_nbs: list[Path], wanted: Iterable[str | Path] | None) -> list[Path]:
    if not wanted:
        return all_nbs
    out = []
    for w in wanted:
        p = Path(w)
        if p.suffix == ".ipynb" and p.exists() and p not in all_nbs:
            out.append(p.resolve())
            continue
        key = p.name
        hits = [nb for nb in all_nbs if nb.name == key or nb.stem == key or nb.name.startswith(key)]
        if len(hits) != 1:
            names = ", ".join(nb.name for nb in all_nbs)
            raise ValueError(f"notebook {str(w)!r} matches {len(hits)} of the course's notebooks "
                             f"({names}); give its number ('02') or its file name")
        if hits[0] not in out:
            out.append(hits[0])
    return sorted(out, key=lambda nb: nb.name)


def notebook_parameters(p: Profile, run_name: str, sets: Sequence[str] | None = None) -> dict:
    """The papermill parameters that make a notebook rebuild exactly profile ``p``.

    ``overrides`` holds every field that differs from the named profile (so a
    profile changed in code travels too), plus the raw ``--set`` values.
    """
    if p.name not in PROFILES:
        raise ValueError(f"profile {p.name!r} is not a named profile ({', '.join(PROFILES)}); "
                         "the notebooks rebuild profiles by name plus overrides")
    base = PROFILES[p.name].to_dict()
    overrides = {}
    for k, v in p.to_dict().items():
        if k != "name" and json.dumps(v, default=str) != json.dumps(base[k], default=str):
            overrides[k] = list(v) if isinstance(v, tuple) else v
    for k, v in parse_sets(list(sets or [])).items():
        overrides.setdefault(k, v)
    get_profile(p.name, **overrides)  # fail here, not in the first notebook
    return {"profile": p.name, "run_name": run_name, "overrides": overrides}


def _failure_message(nb: Path, out: Path, err: Exception) -> str:
    where, what = "", f"{type(err).__name__}: {err}"
    try:
        from papermill.exceptions import PapermillExecutionError
    except ImportError:  # pragma: no cover
        PapermillExecutionError = ()  # type: ignore
    if PapermillExecutionError and isinstance(err, PapermillExecutionError):
        where = f" in the cell numbered [{err.exec_count}] in the executed copy"
        what = f"{err.ename}: {err.evalue}"
        src = (err.source or "").strip().splitlines()
        if src:
            where += "; the cell begins: " + src[0][:100]
    return (f"notebook {nb.name} failed{where}.\n  {what}\n  The partly executed copy, with the "
            f"traceback in its outputs, is at {out}.\n  Earlier notebooks' results are kept: fix "
            f"the problem and re-run the same command; finished stages are loaded, not retrained.")


# ================================================================= times ==
def machine_line() -> str:
    """'2 CPU cores, load 0.4 1.1 1.0 (1, 5, 15 min)': what the times were measured on."""
    cores = os.cpu_count() or 1
    try:
        load = " ".join(f"{v:.1f}" for v in os.getloadavg())
        return f"{cores} CPU core{'s' if cores != 1 else ''}, load {load} (1, 5, 15 min) at the start"
    except (AttributeError, OSError):
        return f"{cores} CPU core{'s' if cores != 1 else ''}"


def _trained(run) -> set:
    inv = inventory(run)
    return {(seed, name) for seed, names in inv.trained.items() for name in names}


def record_time(run_root: Path, nb: Path, seconds: float, ok: bool, profile: str, scope: str,
                load: str, trained: Sequence[str] = ()) -> dict:
    """Add one notebook's wall time to ``<run>/course_times.json`` (atomic; the other notebooks'
    times are kept, so a course run notebook by notebook still adds up); returns the file's data."""
    data = read_times(run_root)
    nbs = data.get("notebooks") if isinstance(data.get("notebooks"), dict) else {}
    nbs[nb.name[:2]] = {"notebook": nb.name, "seconds": round(seconds, 1), "ok": ok, "profile": profile,
                        "scope": scope, "finished": time.strftime("%Y-%m-%d %H:%M:%S"), "machine": load,
                        "trained": list(trained)}
    data = {"profile": profile, "scope": scope, "machine": load,
            **({"forecast": data["forecast"]} if isinstance(data.get("forecast"), dict) else {}),
            "notebooks": dict(sorted(nbs.items())),
            "total_s": round(sum(float(v["seconds"]) for v in nbs.values() if isinstance(v, dict)
                                 and isinstance(v.get("seconds"), (int, float))), 1)}
    atomic_write_text(Path(run_root) / TIMES_FILE, json.dumps(data, indent=1))
    return data


def record_forecast(run_root: Path, forecast: list, line: str) -> None:
    """Keep the course's forecast (:func:`dwf_lab.course.forecast.course_forecast`, made before its
    first notebook ran) in ``course_times.json`` beside the times it forecast, for
    ``benchmarks/banner_vs_measured.py``; the notebooks' recorded times are kept."""
    data = read_times(run_root)
    data["forecast"] = {"made": time.strftime("%Y-%m-%d %H:%M:%S"), "line": line,
                        "notebooks": {f.notebook: round(f.seconds, 1) for f in forecast}}
    atomic_write_text(Path(run_root) / TIMES_FILE, json.dumps(data, indent=1))


def _forecast(run: Run, scope: str, nbs: list[Path], say) -> None:
    """Say, before the first notebook, about how long the run's own work in these notebooks takes on
    this machine, and keep the figures; an estimate never stops the course."""
    try:
        p = run.profile
        forecast = course_forecast(p, load_data(p), run, scope, [nb.name[:2] for nb in nbs],
                                   Runtime.from_profile(p).device, configure_threads(p))   # as a kernel will
        if not forecast:
            return   # none of these notebooks is in the course's plan: nothing to price
        line = forecast_line(forecast, p)
        record_forecast(run.root, forecast, line)
    except Exception as e:   # noqa: BLE001 - a forecast is advice; the course goes on without it
        say(f"[dwf-lab course] no forecast of the course's length ({type(e).__name__}: {e})")
        return
    say(f"[dwf-lab course] {line}")


# parameters a notebook gets only when its parameters cell declares them (papermill warns of others)
OPTIONAL_PARAMETERS = ("scope", "solutions")


STUDENT_COPY_KEY = "student_copy"   # in a notebook's "dwf_lab" metadata: a copy without solutions


def is_student_copy(nb) -> bool:
    return bool((nb.metadata.get("dwf_lab") or {}).get(STUDENT_COPY_KEY))


def _declared(nb: Path, params: dict) -> dict:
    """``params`` less the :data:`OPTIONAL_PARAMETERS` the notebook's parameters cell does not
    declare; ``solutions`` is False for a student copy (:func:`dwf_lab.course.student.student_copy`)."""
    declared = pm.inspect_notebook(str(nb))
    out = {k: v for k, v in params.items() if k not in OPTIONAL_PARAMETERS or k in declared}
    if "solutions" in out and is_student_copy(nbformat.read(str(nb), as_version=4)):
        out["solutions"] = False
    return out


def run_course(profile: Profile | str | None = None, run_name: str | None = None,
               sets: Sequence[str] | None = None, notebooks: Iterable[str | Path] | None = None,
               out_dir: str | Path | None = None, kernel: str = "python3",
               log=None, scope: str | None = None, site: bool = True, solutions: bool = True,
               forecast: bool = True) -> list[Path]:
    """Execute the course notebooks in order with papermill; returns the executed copies.

    Each notebook gets the parameters ``profile`` (the profile's name), ``run_name``
    (default: the profile's name), ``overrides`` (see :func:`notebook_parameters`),
    ``scope`` (:func:`dwf_lab.course.setup.course_scope`: "core" unless asked; passed only to
    the notebooks whose parameters cell declares it, and every kernel sees it as
    ``$DWF_COURSE_SCOPE``) and ``solutions`` (True: every exercise's solution cell runs, and the
    check it ends with; False: a learner's Run All, no answer shown; passed to the notebooks that
    declare it, and never True to a student copy), runs with ``notebooks/`` as its
    working directory, and is written to ``out_dir`` (default ``runs/<run>/notebooks/``).
    Figures are static there (``$DWF_STATIC_FIGURES=1`` unless set), so they are stored in
    the copies. Each notebook's time goes to ``runs/<run>/course_times.json``; with ``site``
    (and the default ``out_dir``) the executed course is then rendered as a static site in
    ``runs/<run>/site/``. The first failing notebook stops the course with a :class:`CourseError`.
    Before the first notebook (``forecast``) it says about how long the run's own work in them will
    take on this machine (:func:`dwf_lab.course.forecast.course_forecast`), and keeps the figures in
    ``course_times.json`` under ``"forecast"``.
    """

    say = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    p = profile if isinstance(profile, Profile) else get_profile(profile, **parse_sets(list(sets or [])))
    name = run_name or p.name
    params = notebook_parameters(p, name, sets)   # everything is checked before the run folder exists
    params["scope"] = scope = course_scope(scope)
    params["solutions"] = bool(solutions)
    nbs = _select_notebooks(notebook_sequence(), notebooks)
    if not nbs:
        raise CourseError(f"no notebooks to run in {NOTEBOOKS_DIR}")
    run = Run(name, p)  # checks the run directory's settings before any work
    out_dir = Path(out_dir) if out_dir is not None else run.notebooks_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    say(f"[dwf-lab course] {len(nbs)} notebook(s), profile {p.name}, scope {scope}, run {run.name} at "
        f"{run.root}; executed copies go to {out_dir}")
    if forecast:
        _forecast(run, scope, nbs, say)
    old_env = {k: os.environ.get(k) for k in (STATIC_ENV, SCOPE_ENV)}
    if old_env[STATIC_ENV] is None:
        os.environ[STATIC_ENV] = "1"
    os.environ[SCOPE_ENV] = scope
    own_copies = out_dir == run.notebooks_dir
    done: list[Path] = []
    t_all = time.time()
    try:
        for i, nb in enumerate(nbs, 1):
            out = out_dir / nb.name
            say(f"[dwf-lab course] ({i}/{len(nbs)}) {nb.name} ...")
            t0, load, before = time.time(), machine_line(), _trained(run)
            try:
                pm.execute_notebook(str(nb), str(out), parameters=_declared(nb, params), kernel_name=kernel,
                                    cwd=str(nb.parent), progress_bar=False, log_output=False,
                                    request_save_on_cell_execute=True)
            except Exception as err:  # papermill, a dead kernel, a missing kernel ...
                say(f"[dwf-lab course] ({i}/{len(nbs)}) {nb.name} FAILED after {time.time() - t0:.0f}s")
                record_time(run.root, nb, time.time() - t0, False, p.name, scope, load,
                            sorted(f"{n} (seed {s})" for s, n in _trained(run) - before))
                raise CourseError(_failure_message(nb, out, err)) from err
            done.append(out)
            record_time(run.root, nb, time.time() - t0, True, p.name, scope, load,
                        sorted(f"{n} (seed {s})" for s, n in _trained(run) - before))
            say(f"[dwf-lab course] ({i}/{len(nbs)}) {nb.name} done in {time.time() - t0:.0f}s -> {out}")
    finally:
        for k, v in old_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    say(f"[dwf-lab course] all {len(done)} notebook(s) ran in {time.time() - t_all:.0f}s; "
        f"report: {run.report_dir / 'report.md'}; times: {run.root / TIMES_FILE}")
    if site and own_copies:
        try:
            index = build_site(run.root)
        except (OSError, RuntimeError, ValueError) as err:   # the notebooks ran: never lose that to the site
            say(f"[dwf-lab course] the static site was not built: {err}. Fix it, then: python -m dwf_lab "
                f"site {run.name}")
        else:
            say(f"[dwf-lab course] the course as a static site (opens offline): {index}")
    return done
