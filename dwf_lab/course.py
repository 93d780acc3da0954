"""The notebook course: running it headlessly, setting each notebook up, and the analyses it shows.

Three parts:

- **running the course**: :func:`notebook_sequence` lists ``notebooks/NN_*.ipynb``;
  :func:`run_course` executes them in order with papermill (``python -m dwf_lab
  course``), writing executed copies to ``runs/<run>/notebooks/`` and stopping at
  the first failure with a :class:`CourseError` that names the notebook, the cell
  and the exception, and says where the partly executed copy is;
- **setting a notebook up**: :func:`setup_notebook` (every notebook's second cell)
  resolves the profile, opens the run directory, loads the data, seeds and
  picks a sensible number of CPU threads;
- **analyses the notebooks show** (everything two notebooks need lives here, not
  in the notebooks): training curves from the run's metrics, clean/FGSM/PGD
  accuracy of models, the per-epoch "catastrophic overfitting watch", how much
  experts disagree and how attacks transfer between them, gate statistics, and a
  reading of the evaluation computed from the numbers themselves.
"""
from __future__ import annotations

import json
import math
import os
import re
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Iterable, Mapping, Sequence

import numpy as np
import torch
import torch.nn as nn

from dwf_lab import attacks
from dwf_lab.profiles import PROFILES, Profile, get_profile, parse_sets

NOTEBOOKS_DIR = Path(__file__).resolve().parents[1] / "notebooks"
NOTEBOOK_PATTERN = re.compile(r"^\d\d_[\w\-]+\.ipynb$")
STATIC_ENV = "DWF_STATIC_FIGURES"


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


def run_course(profile: Profile | str | None = None, run_name: str | None = None,
               sets: Sequence[str] | None = None, notebooks: Iterable[str | Path] | None = None,
               out_dir: str | Path | None = None, kernel: str = "python3",
               log=None) -> list[Path]:
    """Execute the course notebooks in order with papermill; returns the executed copies.

    Each notebook gets the parameters ``profile`` (the profile's name), ``run_name``
    (default: the profile's name) and ``overrides`` (see :func:`notebook_parameters`),
    runs with ``notebooks/`` as its working directory, and is written to
    ``out_dir`` (default ``runs/<run>/notebooks/``). Figures are static there
    (``$DWF_STATIC_FIGURES=1`` unless set), so they are stored in the copies.
    The first failing notebook stops the course with a :class:`CourseError`.
    """
    import papermill as pm
    from dwf_lab.runs import Run

    say = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    p = profile if isinstance(profile, Profile) else get_profile(profile, **parse_sets(list(sets or [])))
    run = Run(run_name or p.name, p)  # checks the run directory's settings before any work
    params = notebook_parameters(p, run.name, sets)
    out_dir = Path(out_dir) if out_dir is not None else run.notebooks_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    nbs = _select_notebooks(notebook_sequence(), notebooks)
    if not nbs:
        raise CourseError(f"no notebooks to run in {NOTEBOOKS_DIR}")
    say(f"[dwf-lab course] {len(nbs)} notebook(s), profile {p.name}, run {run.name} at {run.root}; "
        f"executed copies go to {out_dir}")
    old_env = os.environ.get(STATIC_ENV)
    if old_env is None:
        os.environ[STATIC_ENV] = "1"
    done: list[Path] = []
    t_all = time.time()
    try:
        for i, nb in enumerate(nbs, 1):
            out = out_dir / nb.name
            say(f"[dwf-lab course] ({i}/{len(nbs)}) {nb.name} ...")
            t0 = time.time()
            try:
                pm.execute_notebook(str(nb), str(out), parameters=params, kernel_name=kernel,
                                    cwd=str(nb.parent), progress_bar=False, log_output=False,
                                    request_save_on_cell_execute=True)
            except Exception as err:  # papermill, a dead kernel, a missing kernel ...
                say(f"[dwf-lab course] ({i}/{len(nbs)}) {nb.name} FAILED after {time.time() - t0:.0f}s")
                raise CourseError(_failure_message(nb, out, err)) from err
            done.append(out)
            say(f"[dwf-lab course] ({i}/{len(nbs)}) {nb.name} done in {time.time() - t0:.0f}s -> {out}")
    finally:
        if old_env is None:
            os.environ.pop(STATIC_ENV, None)
    say(f"[dwf-lab course] all {len(done)} notebook(s) ran in {time.time() - t_all:.0f}s; "
        f"report: {run.report_dir / 'report.md'}")
    return done


# ============================================================ notebook setup ==
def configure_threads(p: Profile) -> int:
    """Set torch's CPU threads: the profile's ``num_threads`` if > 0; else $OMP_NUM_THREADS
    if set; else the cores that are not already busy (at least 1, at most 8). The kit's
    small CPU models gain little from many threads and lose a lot when they compete."""
    if p.num_threads > 0:
        n = p.num_threads
    elif os.environ.get("OMP_NUM_THREADS"):
        return torch.get_num_threads()
    else:
        try:
            cores = len(os.sched_getaffinity(0))
        except AttributeError:  # macOS, Windows
            cores = os.cpu_count() or 1
        try:
            busy = os.getloadavg()[0]
        except (AttributeError, OSError):
            busy = 0.0
        n = max(1, min(8, cores, int(cores - busy + 0.5)))
    torch.set_num_threads(n)
    return n


def setup_notebook(profile: str | Profile | None = None, run_name: str | None = None,
                   overrides: Mapping | None = None, seed: int | None = None,
                   verbose: bool = True) -> SimpleNamespace:
    """Everything a course notebook starts from, as ``ctx``.

    ``profile``: a name, a Profile, or None = ``$DWF_PROFILE`` if set, else "laptop"
    (papermill passes the name explicitly, so the environment never overrides it).
    Returns a namespace with ``profile``, ``run`` (:class:`dwf_lab.runs.Run`, default
    name = the profile's), ``data``, ``seed`` (the profile's first seed), ``device``,
    ``threads``, ``static`` (figures static?), ``quick`` (:func:`quick_settings`) and
    ``n_quick`` / ``n_small`` (how many test images the notebooks' quick checks use).
    """
    from dwf_lab import plots
    from dwf_lab.pipeline import load_data
    from dwf_lab.runs import Run
    from dwf_lab.train import Runtime

    p = profile if isinstance(profile, Profile) else get_profile(profile, **dict(overrides or {}))
    if isinstance(profile, Profile) and overrides:
        p = p.replace(**dict(overrides))
    threads = configure_threads(p)
    run = Run(run_name or p.name, p)
    data = load_data(p)
    seed = p.seeds[0] if seed is None else int(seed)
    torch.manual_seed(seed)
    device = Runtime.from_profile(p).device
    plots.configure_display()
    static = plots.static_figures()
    quick = quick_settings(p, device)
    ctx = SimpleNamespace(profile=p, run=run, data=data, seed=seed, device=device,
                          threads=threads, static=static, quick=quick,
                          n_quick=min(len(data.x_test), quick["n"]),
                          n_small=min(len(data.x_test), quick["n_small"]))
    if verbose:
        print(f"profile  {p.name}: {p.description}")
        print(f"run      {run.name} at {run.root}")
        print(f"data     {data.name}: {len(data.x_train)} train / {len(data.x_test)} test images "
              f"{tuple(data.shape)}, {data.num_classes} classes; {data.source}")
        print(f"models   ResNet-18 experts at width {p.width:g}; {p.n_fgsm_experts} FGSM + "
              f"{p.n_pgd_experts} PGD experts; {p.expert_epochs} expert epochs, "
              f"{p.mixture_epochs} mixture epochs")
        print(f"device   {device} ({threads} CPU thread{'s' if threads != 1 else ''}); seed {seed}; "
              f"figures {'static' if static else 'live widgets'}")
    return ctx


def quick_batch(data, n: int | None = None, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``n`` test images and labels (all if None), on ``device``."""
    x, y = data.x_test, data.y_test
    if n is not None:
        x, y = x[:n], y[:n]
    if device is not None:
        x, y = x.to(device), y.to(device)
    return x, y


# ============================================================ stages, models ==
def stage_names(p: Profile, kind: str) -> list[str]:
    """Stage names of one kind ("benign", "fgsm", "pgd", "fgsm_at", "pgd_at", "mixture")."""
    from dwf_lab.train import plan_stages
    return [s.name for s in plan_stages(p) if s.kind == kind]


def expert_kind(name: str) -> str:
    """'fgsm-2' -> 'fgsm', 'pgd-1' -> 'pgd', 'benign' -> 'benign'."""
    return name.split("-")[0]


def load_stage(run, seed: int, stage: str, device=None) -> nn.Module:
    """A finished stage's model (eval mode), with a clear error if it is not trained yet."""
    from dwf_lab.checkpoints import load_model
    path = run.model_path(seed, stage)
    if not path.exists():
        raise FileNotFoundError(f"stage {stage!r} of run {run.name!r} (seed {seed}) is not trained "
                                f"yet: run pipeline.train_run(run, seed, data, {stage!r}) first")
    return load_model(path, map_location=device or "cpu").eval()


def load_stages(run, seed: int, stages: Sequence[str], device=None) -> dict[str, nn.Module]:
    return {s: load_stage(run, seed, s, device) for s in stages}


# ======================================================== training curves ==
def training_curves(run, seed: int, stages: Sequence[str] | None = None) -> dict[str, dict]:
    """Per-epoch training loss and accuracy from the run's metrics log.

    ``{stage: {"epoch": [...], "train_loss": [...], "train_acc": [...], "seconds": [...]}}``
    in the order of ``stages`` (default: every stage with epochs). If an epoch was
    logged twice (a stage retrained), the last record wins.
    """
    recs: dict[str, dict[int, dict]] = {}
    for r in run.metrics(seed):
        if r.get("event") == "epoch":
            recs.setdefault(r["stage"], {})[int(r["epoch"])] = r
    order = list(stages) if stages is not None else list(recs)
    out = {}
    for s in order:
        if s not in recs:
            continue
        eps = sorted(recs[s])
        out[s] = {"epoch": eps,
                  "train_loss": [recs[s][e]["train_loss"] for e in eps],
                  "train_acc": [recs[s][e]["train_acc"] for e in eps],
                  "seconds": [recs[s][e].get("seconds") for e in eps]}
    return out


def stage_seconds(run, seed: int) -> dict[str, float]:
    """Training time per stage (seconds) as logged (``stage_time`` events)."""
    out: dict[str, float] = {}
    for r in run.metrics(seed):
        if r.get("event") == "stage_time":
            out[r["stage"]] = float(r["seconds"])
    return out


# =============================================================== robustness ==
QUICK_FGSM_EPS = (0.01, 0.03, 0.09)   # both ends of the paper's FGSM range and ≈ 8/255


def quick_settings(p: Profile, device=None) -> dict:
    """The attacks and sizes of the notebooks' quick checks (notebook 05 runs the full protocol).

    FGSM at ε 0.01, 0.03, 0.09; PGD with the profile's fewest evaluation iterations
    (ε 8/255, α 2/255); ``n``: test images for accuracy tables (1000 on a GPU, 200 on a
    CPU); ``n_small``: for the costlier looks — per-epoch checkpoints, transfer between
    experts, attacks through the whole mixture (1000 / 128).
    """
    cuda = device is not None and torch.device(device).type == "cuda"
    return {"fgsm_eps": QUICK_FGSM_EPS, "pgd_steps": (min(p.eval_pgd_steps),),
            "pgd_eps": 8 / 255, "pgd_alpha": 2 / 255,
            "n": 1000 if cuda else 200, "n_small": 1000 if cuda else 128}


def fgsm_label(eps: float) -> str:
    """'FGSM 0.03', or 'FGSM 8/255' when ε is a whole number of pixel levels."""
    k = eps * 255
    return f"FGSM {round(k)}/255" if eps > 0 and abs(k - round(k)) < 1e-6 else f"FGSM {eps:g}"


def pgd_label(steps: int) -> str:
    return f"PGD-{steps}"


def robustness(models: Mapping[str, nn.Module], x: torch.Tensor, y: torch.Tensor,
               fgsm_eps: Sequence[float] = (0.03,), pgd_steps: Sequence[int] = (10,),
               pgd_eps: float = 8 / 255, pgd_alpha: float = 2 / 255, batch_size: int = 256,
               seed: int = 0) -> list[dict]:
    """Clean, FGSM and PGD accuracy (%) of each model on (x, y): one row per model.

    Columns: "clean", "FGSM <ε>" per ε, "PGD-<k>" per k (one PGD trajectory read at
    each k, uniform random start, ε/α in pixel units). White-box against each model.
    """
    from dwf_lab.evaluate import pgd_trajectory
    rows = []
    for name, model in models.items():
        dev = next(model.parameters()).device
        model.eval()
        counts: dict[str, float] = {}
        for b in range(0, len(x), batch_size):
            xb, yb = x[b:b + batch_size].to(dev), y[b:b + batch_size].to(dev)
            with torch.no_grad():
                counts["clean"] = counts.get("clean", 0) + (model(xb).argmax(1) == yb).sum().item()
            for e in fgsm_eps:
                xa = attacks.fgsm(model, xb, yb, e, check=False)
                with torch.no_grad():
                    c = (model(xa).argmax(1) == yb).sum().item()
                counts[fgsm_label(e)] = counts.get(fgsm_label(e), 0) + c
            if pgd_steps:
                g = torch.Generator(dev).manual_seed(seed * 1000 + b)
                traj = pgd_trajectory(model, xb, yb, pgd_eps, pgd_alpha, tuple(pgd_steps), True, g)
                for k in pgd_steps:
                    counts[pgd_label(k)] = counts.get(pgd_label(k), 0) + traj[k].sum().item()
        rows.append({"model": name, **{k: 100.0 * v / max(1, len(x)) for k, v in counts.items()}})
    return rows


def markdown_table(rows: Sequence[Mapping], columns: Sequence[str] | None = None,
                   fmt: str = "{:.1f}") -> str:
    """Rows of dicts as a markdown table (numbers formatted with ``fmt``)."""
    if not rows:
        return "_(nothing to show)_"
    cols = list(columns) if columns is not None else list(rows[0])

    def cell(v) -> str:
        if v is None:
            return "—"
        if isinstance(v, float):
            return fmt.format(v)
        return str(v).replace("|", "\\|")
    lines = ["| " + " | ".join(cols) + " |",
             "|" + "|".join(" --- " if i == 0 else " ---: " for i in range(len(cols))) + "|"]
    lines += ["| " + " | ".join(cell(r.get(c)) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


# ============================================ catastrophic overfitting watch ==
def epoch_checkpoints(run, seed: int, stage: str) -> list[tuple[int, Path]]:
    """(epoch, path) of the stage's per-epoch model checkpoints, in order."""
    d = run.ckpt_dir(seed, stage)
    out = []
    for path in sorted(d.glob("epoch-*.safetensors")):
        m = re.match(r"epoch-(\d+)\.safetensors$", path.name)
        if m:
            out.append((int(m.group(1)), path))
    return out


def checkpoint_watch(run, seed: int, stages: Sequence[str], x: torch.Tensor, y: torch.Tensor,
                     fgsm_eps: float = 8 / 255, pgd_steps: int = 10, pgd_eps: float = 8 / 255,
                     pgd_alpha: float = 2 / 255, max_points: int = 20, device=None) -> dict:
    """Clean / FGSM / PGD accuracy (%) of every epoch checkpoint of each stage.

    The catastrophic-overfitting watch: an FGSM-trained model can suddenly become
    robust to FGSM only, with PGD accuracy collapsing to ~0 within an epoch (Wong et
    al. 2020). At most ``max_points`` evenly spaced epochs are evaluated (the last
    one always). Returns ``{stage: {"epoch", "clean", "fgsm", "pgd", "labels"}}``.
    """
    from dwf_lab.checkpoints import load_model
    out = {}
    for stage in stages:
        cks = epoch_checkpoints(run, seed, stage)
        if not cks:
            continue
        if len(cks) > max_points:
            idx = sorted({round(i * (len(cks) - 1) / (max_points - 1)) for i in range(max_points)})
            cks = [cks[i] for i in idx]
        w = {"epoch": [], "clean": [], "fgsm": [], "pgd": [],
             "labels": {"clean": "clean", "fgsm": fgsm_label(fgsm_eps), "pgd": pgd_label(pgd_steps)}}
        for epoch, path in cks:
            model = load_model(path, map_location=device or "cpu")
            r = robustness({stage: model}, x, y, (fgsm_eps,), (pgd_steps,), pgd_eps, pgd_alpha,
                           seed=seed)[0]
            w["epoch"].append(epoch)
            w["clean"].append(r["clean"])
            w["fgsm"].append(r[fgsm_label(fgsm_eps)])
            w["pgd"].append(r[pgd_label(pgd_steps)])
        out[stage] = w
    return out


def overfitting_verdicts(watch: Mapping[str, Mapping]) -> list[str]:
    """One sentence per stage on whether its PGD accuracy collapsed during training.

    "Collapsed": the last checkpoint's PGD accuracy is below half of its best
    earlier value and at least 10 points lower, while FGSM accuracy did not fall.
    """
    lines = []
    for stage, w in watch.items():
        pgd, fg, ep = w["pgd"], w["fgsm"], w["epoch"]
        if not pgd:
            continue
        best = int(np.argmax(pgd))
        last = pgd[-1]
        if len(pgd) == 1:
            lines.append(f"{stage}: one checkpoint only (epoch {ep[0]}): PGD {last:.1f}%, "
                         f"FGSM {fg[0]:.1f}% — too short a run to see a trend.")
            continue
        drop = pgd[best] - last
        if last < 0.5 * pgd[best] and drop >= 10 and fg[-1] >= fg[best] - 1:
            lines.append(f"{stage}: **PGD accuracy collapsed** from {pgd[best]:.1f}% (epoch "
                         f"{ep[best]}) to {last:.1f}% (epoch {ep[-1]}) while FGSM accuracy went "
                         f"{fg[best]:.1f}% → {fg[-1]:.1f}% — the signature of catastrophic "
                         f"overfitting.")
        else:
            lines.append(f"{stage}: no collapse — PGD accuracy best {pgd[best]:.1f}% (epoch "
                         f"{ep[best]}), last {last:.1f}% (epoch {ep[-1]}); FGSM last {fg[-1]:.1f}%.")
    return lines


# ===================================================== diversity of experts ==
@torch.no_grad()
def predictions(models: Mapping[str, nn.Module], x: torch.Tensor, batch_size: int = 512) -> dict:
    out = {}
    for name, m in models.items():
        dev = next(m.parameters()).device
        m.eval()
        out[name] = torch.cat([m(x[i:i + batch_size].to(dev)).argmax(1).cpu()
                               for i in range(0, len(x), batch_size)])
    return out


def disagreement_matrix(models: Mapping[str, nn.Module], x: torch.Tensor) -> np.ndarray:
    """% of inputs on which each pair of models predicts different classes."""
    preds = predictions(models, x)
    names = list(models)
    m = np.zeros((len(names), len(names)))
    for i, a in enumerate(names):
        for j, b in enumerate(names):
            m[i, j] = 100.0 * float((preds[a] != preds[b]).float().mean())
    return m


def transfer_matrix(models: Mapping[str, nn.Module], x: torch.Tensor, y: torch.Tensor,
                    attack: str = "fgsm", eps: float = 8 / 255, pgd_steps: int = 10,
                    pgd_alpha: float = 2 / 255, seed: int = 0) -> np.ndarray:
    """Accuracy (%) of model j (column) on adversarial examples crafted against model i (row).

    The diagonal is white-box accuracy; off-diagonal entries show how well attacks
    transfer between experts. Diverse experts (what the paper hopes for) have
    off-diagonal accuracies well above the diagonal.
    """
    names = list(models)
    m = np.zeros((len(names), len(names)))
    for i, a in enumerate(names):
        src = models[a]
        dev = next(src.parameters()).device
        xs, ys = x.to(dev), y.to(dev)
        if attack == "fgsm":
            xa = attacks.fgsm(src, xs, ys, eps, check=False)
        elif attack == "pgd":
            g = torch.Generator(dev).manual_seed(seed)
            xa = attacks.pgd(src, xs, ys, eps, pgd_alpha, pgd_steps, True, generator=g, check=False)
        else:
            raise ValueError(f"attack must be 'fgsm' or 'pgd', got {attack!r}")
        preds = predictions(models, xa)
        for j, b in enumerate(names):
            m[i, j] = 100.0 * float((preds[b] == y.cpu()).float().mean())
    return m


# ====================================================== adversarial example ==
@torch.no_grad()
def _probs(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    model.eval()
    return torch.softmax(model(x).float(), dim=1)


def pick_example(model: nn.Module, x: torch.Tensor, y: torch.Tensor, start: int = 0) -> int:
    """Index of the first test image (from ``start``) the model classifies correctly,
    preferring a confident one; ``start`` if none is correct."""
    dev = next(model.parameters()).device
    p = _probs(model, x.to(dev)).cpu()
    ok = (p.argmax(1) == y.cpu())
    conf = p.max(1).values
    idx = [i for i in range(start, len(x)) if ok[i]]
    if not idx:
        return start
    confident = [i for i in idx if conf[i] >= 0.5]
    return (confident or idx)[0]


def adversarial_example(model: nn.Module, x: torch.Tensor, y: torch.Tensor, index: int,
                        classes: Sequence[str], eps: float = 8 / 255, attack: str = "fgsm",
                        pgd_steps: int = 10) -> dict:
    """Attack one test image and describe the result (and a figure of it).

    Returns ``{"x", "x_adv", "delta", "label", "clean_pred", "adv_pred", "clean_probs",
    "adv_probs", "linf", "figure", "text"}``; names are class names.
    """
    from dwf_lab.plots import adversarial_example_figure
    from dwf_lab.widgets import attack_images
    dev = next(model.parameters()).device
    xi, yi = x[index:index + 1].to(dev), y[index:index + 1].to(dev)
    x_adv = attack_images(model, xi, yi, attack, eps, pgd_steps)
    pc, pa = _probs(model, xi)[0].cpu(), _probs(model, x_adv)[0].cpu()
    names = list(classes)
    label, cp, ap = names[int(yi)], names[int(pc.argmax())], names[int(pa.argmax())]
    name = "FGSM" if attack == "fgsm" else f"PGD-{pgd_steps}"
    text = (f"true label: {label}. Clean image → {cp} ({100 * float(pc.max()):.0f}%); "
            f"{name} at ε = {eps:.4f} → {ap} ({100 * float(pa.max()):.0f}%). "
            f"Largest pixel change: {float((x_adv - xi).abs().max()):.4f} "
            f"(= {float((x_adv - xi).abs().max()) * 255:.1f}/255).")
    fig = adversarial_example_figure(xi[0].cpu(), x_adv[0].cpu(), pc.numpy(), pa.numpy(), names,
                                     eps, title=f"{name}: {cp} → {ap} (true: {label})")
    return {"x": xi[0].cpu(), "x_adv": x_adv[0].cpu(), "delta": (x_adv - xi)[0].cpu(),
            "label": label, "clean_pred": cp, "adv_pred": ap, "clean_probs": pc.numpy(),
            "adv_probs": pa.numpy(), "linf": float((x_adv - xi).abs().max()), "figure": fig,
            "text": text}


def smallest_flipping_eps(model: nn.Module, x: torch.Tensor, y: torch.Tensor, index: int,
                          attack: str = "fgsm", eps_grid: Sequence[float] | None = None,
                          pgd_steps: int = 10) -> float | None:
    """The smallest ε on ``eps_grid`` (default 0, 1/255, ..., 25/255) at which the
    prediction of test image ``index`` changes; None if it never does."""
    from dwf_lab.widgets import attack_images
    grid = eps_grid if eps_grid is not None else [k / 255 for k in range(0, 26)]
    dev = next(model.parameters()).device
    xi, yi = x[index:index + 1].to(dev), y[index:index + 1].to(dev)
    clean = int(_probs(model, xi).argmax())
    for e in grid:
        if e <= 0:
            continue
        if int(_probs(model, attack_images(model, xi, yi, attack, e, pgd_steps)).argmax()) != clean:
            return float(e)
    return None


def accuracy_vs_eps(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                    eps_grid: Sequence[float]) -> list[float]:
    """FGSM accuracy (%) at each ε of ``eps_grid`` (0 = clean)."""
    dev = next(model.parameters()).device
    xs, ys = x.to(dev), y.to(dev)
    out = []
    for e in eps_grid:
        xa = attacks.fgsm(model, xs, ys, e, check=False) if e > 0 else xs
        with torch.no_grad():
            out.append(100.0 * float((model(xa).argmax(1) == ys).float().mean()))
    return out


# ================================================================ the gate ==
@torch.no_grad()
def _details(mixture, x):
    mixture.eval()
    return mixture.forward_details(x)


def gate_statistics(mixture: nn.Module, x: torch.Tensor, y: torch.Tensor,
                    expert_names: Sequence[str], fgsm_eps: float = 8 / 255,
                    pgd_steps: int = 10, pgd_eps: float = 8 / 255, pgd_alpha: float = 2 / 255,
                    seed: int = 0) -> dict:
    """How the gate spends its weight on clean, FGSM and PGD inputs (attacks on the whole mixture).

    Returns ``{"kinds": [...], "mean": {kind: per-expert mean weight}, "entropy": {kind:
    mean entropy in nats}, "accuracy": {kind: mixture accuracy %}, "expert_accuracy":
    {kind: per-expert accuracy % of each expert's own logits}, "group_weight": {kind:
    {"benign"|"fgsm"|"pgd": summed mean weight}}, "rows": a table, one row per kind}``.
    """
    from dwf_lab.moe import gate_entropy
    dev = next(mixture.parameters()).device
    xs, ys = x.to(dev), y.to(dev)
    g = torch.Generator(dev).manual_seed(seed)
    kinds = {"clean": xs,
             f"FGSM {fgsm_eps:.3f}": attacks.fgsm(mixture, xs, ys, fgsm_eps, check=False),
             f"PGD-{pgd_steps}": attacks.pgd(mixture, xs, ys, pgd_eps, pgd_alpha, pgd_steps, True,
                                             generator=g, check=False)}
    names = list(expert_names)
    kinds_present = [expert_kind(n) for n in names]
    groups = [k for k in ("benign", "fgsm", "pgd") if k in kinds_present]
    groups += sorted({k for k in kinds_present if k not in groups})
    res = {"kinds": list(kinds), "expert_names": names, "mean": {}, "entropy": {}, "accuracy": {},
           "expert_accuracy": {}, "group_weight": {}, "rows": []}
    for k, xa in kinds.items():
        d = _details(mixture, xa)
        w = d.weights.float().cpu()
        mean = w.mean(0).numpy()
        res["mean"][k] = mean
        res["entropy"][k] = float(gate_entropy(w).mean())
        res["accuracy"][k] = 100.0 * float((d.logits.argmax(1).cpu() == ys.cpu()).float().mean())
        res["expert_accuracy"][k] = (100.0 * (d.expert_logits.argmax(2).cpu() == ys.cpu()[:, None])
                                     .float().mean(0)).numpy()
        gw = {gname: float(sum(mean[i] for i, n in enumerate(names) if expert_kind(n) == gname))
              for gname in groups}
        res["group_weight"][k] = gw
        row = {"inputs": k, "mixture acc %": res["accuracy"][k],
               "gate entropy (nats)": res["entropy"][k]}
        row.update({f"weight on {gname}": v for gname, v in gw.items()})
        res["rows"].append(row)
    return res


# ===================================================== reading the results ==
def _mean(agg: Mapping, row: str, metric: str) -> float | None:
    cell = agg.get(row, {}).get(metric)
    return None if cell is None else cell["mean"]


def _pgd_metrics(agg: Mapping, rows: Sequence[str]) -> list[int]:
    ks = None
    for r in rows:
        have = {int(m.split(":")[1]) for m in agg.get(r, {}) if re.fullmatch(r"pgd:\d+", m)}
        ks = have if ks is None else ks & have
    return sorted(ks or [])


def _vs(a: float, b: float) -> str:
    d = a - b
    if abs(d) < 0.05:
        return "level with"
    return f"{abs(d):.1f} points {'above' if d > 0 else 'below'}"


def reading(results: Sequence[Mapping], dataset: str | None = None) -> str:
    """A short reading of an evaluation, every statement computed from the numbers.

    ``results``: evaluation records (``dwf_lab.report.load_results(run.eval_dir)``).
    Compares DWF with PGD-AT, FGSM-AT and the plain ResNet-18 where measured, with the
    paper's gap where the paper has one, checks the usual signs of gradient masking,
    and says how comparable the run is. Returns markdown (a bullet list).
    """
    from dwf_lab.reference import comparability_note, is_comparable, paper_value
    from dwf_lab.report import aggregate, infer_dataset
    results = list(results)
    if not results:
        return "- No evaluation results yet: run `pipeline.evaluate_run` first."
    dataset = infer_dataset(results, dataset)
    agg = aggregate(results, dataset)
    dwf, pat, fat, plain = "DWF", "ResNet-18 (PGD-AT)", "ResNet-18 (FGSM-AT)", "ResNet-18"
    lines = []
    comparable = is_comparable(dataset)

    def paper_gap(table, a, b, col) -> str:
        if not comparable:
            return ""
        pa, pb = paper_value(table, dataset, a, col), paper_value(table, dataset, b, col)
        if not pa or not pb or pa[0] is None or pb[0] is None:
            return ""
        return f" (the paper: {pa[0]:.2f} vs {pb[0]:.2f}, {_vs(pa[0], pb[0])})"

    if dwf not in agg:
        lines.append("- DWF has not been evaluated in this run yet.")
    else:
        for other in (pat, fat):
            ks = _pgd_metrics(agg, [dwf, other])
            if ks:
                k = 20 if 20 in ks else ks[-1]
                a, b = _mean(agg, dwf, f"pgd:{k}"), _mean(agg, other, f"pgd:{k}")
                lines.append(f"- DWF's PGD-{k} accuracy is **{_vs(a, b)}** {other} here "
                             f"({a:.1f}% vs {b:.1f}%){paper_gap('table3', dwf, other, str(k))}.")
        for other in (plain, pat):
            a, b = _mean(agg, dwf, "SA"), _mean(agg, other, "SA")
            if a is not None and b is not None:
                lines.append(f"- DWF's clean accuracy is {_vs(a, b)} {other}'s ({a:.1f}% vs "
                             f"{b:.1f}%){paper_gap('table2', dwf, other, 'SA')}.")
        a, b = _mean(agg, dwf, "fgsm:0.03"), _mean(agg, fat, "fgsm:0.03")
        if a is not None and b is not None:
            lines.append(f"- Under FGSM at ε = 0.03, DWF is {_vs(a, b)} FGSM-AT ({a:.1f}% vs "
                         f"{b:.1f}%){paper_gap('table2', dwf, fat, '0.03')}.")
        a, b = _mean(agg, dwf, "worst-case"), _mean(agg, pat, "worst-case")
        if a is not None:
            tail = f"; PGD-AT's is {b:.1f}%" if b is not None else ""
            lines.append(f"- Worst case over every attack run, per image (not in the paper): DWF "
                         f"keeps {a:.1f}% of the test images{tail}.")
        ks = _pgd_metrics(agg, [dwf])
        longs = sorted(m for m in agg[dwf] if re.fullmatch(r"pgd:\d+-ms", m))
        if ks and longs:
            a, b = _mean(agg, dwf, f"pgd:{ks[-1]}"), _mean(agg, dwf, longs[-1])
            lines.append(f"- A stronger attack ({longs[-1].split(':')[1].replace('-ms', '')} steps, "
                         f"restarts) moves DWF from {a:.1f}% (PGD-{ks[-1]}) to {b:.1f}%"
                         + (": longer attacks still find new adversarial examples."
                            if b < a - 0.5 else "."))
    # gradient-masking checks, per row
    flags = []
    for row, mets in agg.items():
        fg = sorted((float(m.split(":")[1]), c["mean"]) for m, c in mets.items()
                    if re.fullmatch(r"fgsm:[0-9.]+", m))
        rises = [(e1, e2) for (e1, a1), (e2, a2) in zip(fg, fg[1:]) if a2 > a1 + 2.0]
        if rises:
            flags.append(f"{row}: FGSM accuracy *rises* with ε (from ε={rises[0][0]:g} to "
                         f"{rises[0][1]:g})")
        f03 = mets.get("fgsm:0.03")
        pk = [c["mean"] for m, c in mets.items() if re.fullmatch(r"pgd:\d+", m)]
        if f03 is not None and pk and min(pk) > f03["mean"] + 2.0:
            flags.append(f"{row}: PGD (ε = 8/255 ≈ 0.031) leaves more accuracy ({min(pk):.1f}%) "
                         f"than one FGSM step at ε = 0.03 ({f03['mean']:.1f}%)")
    if flags:
        lines.append("- **Signs of gradient masking** (a multi-step attack should beat a single "
                     "step, and larger ε should not help the model): " + "; ".join(flags)
                     + ". Treat those rows' robustness as unproven.")
    else:
        lines.append("- No model shows the usual signs of gradient masking here (FGSM accuracy "
                     "never rises with ε by more than 2 points, and PGD is never weaker than one "
                     "FGSM step of the same size).")
    seeds = {row: cells.get("SA", {}).get("n") for row, cells in agg.items()}
    if seeds.get(dwf):
        lines.append(f"- DWF numbers are over {seeds[dwf]} training run(s)"
                     + (" — a single seed: differences of a point or two are noise."
                        if seeds[dwf] == 1 else "."))
    lines.append(f"- {comparability_note(dataset)}")
    return "\n".join(lines)


def describe_profile(p: Profile) -> str:
    """The settings that shape the results, as a markdown table beside the paper's."""
    paper = PROFILES["paper"]
    keys = [("dataset", "dataset"), ("n_train", "training images (None = all)"),
            ("n_test", "test images (None = all)"), ("width", "ResNet-18 width"),
            ("n_fgsm_experts", "FGSM experts"), ("n_pgd_experts", "PGD experts"),
            ("expert_epochs", "expert epochs"), ("mixture_epochs", "end-to-end epochs"),
            ("baseline_epochs", "baseline epochs"), ("pgd_steps_choices", "training PGD steps"),
            ("eval_pgd_steps", "evaluation PGD steps"), ("eval_long_steps", "long PGD steps"),
            ("seeds", "seeds")]
    rows = [{"setting": label, "this run": str(getattr(p, k)), "paper": str(getattr(paper, k))}
            for k, label in keys]
    return markdown_table(rows, ["setting", "this run", "paper"])


def gate_reading(stats: Mapping) -> str:
    """A few sentences on what the gate does, computed from :func:`gate_statistics`."""
    names = list(stats["expert_names"])
    n = len(names)
    uniform = math.log(n) if n > 1 else 0.0
    kinds = list(stats["kinds"])
    lines = []
    for k in kinds:
        h = stats["entropy"][k]
        ratio = h / uniform if uniform > 0 else 1.0
        shape = ("almost uniform — the mixture behaves like a plain average of its experts"
                 if ratio > 0.95 else "spread over several experts" if ratio > 0.6
                 else "concentrated on few experts")
        gw = stats["group_weight"][k]
        top_group = max(gw, key=gw.get)
        size = sum(expert_kind(nm) == top_group for nm in names)
        lines.append(f"- {k} inputs: gate entropy {h:.2f} nats of at most {uniform:.2f} ({shape}); "
                     f"the {size} {top_group} expert{'s' if size != 1 else ''} get "
                     f"{100 * gw[top_group]:.0f}% of the weight ({100 * size / n:.0f}% if uniform); "
                     f"mixture accuracy {stats['accuracy'][k]:.1f}%.")
    if len(kinds) >= 2:
        a, b = np.asarray(stats["mean"][kinds[0]]), np.asarray(stats["mean"][kinds[-1]])
        tv = 0.5 * float(np.abs(a - b).sum())
        lines.append(f"- From {kinds[0]} to {kinds[-1]} inputs the average routing moves by a total "
                     f"variation of {tv:.3f} (0 = the same weights, 1 = disjoint experts)"
                     + (": the gate hardly reacts to the attack." if tv < 0.02 else "."))
        k = kinds[-1]
        w, acc = np.asarray(stats["mean"][k]), np.asarray(stats["expert_accuracy"][k])
        heavy, best = int(np.argmax(w)), int(np.argmax(acc))
        if acc[heavy] >= acc[best] - 1e-9:
            lines.append(f"- On {k} inputs the heaviest expert, {names[heavy]}, is also (one of) the "
                         f"most accurate on them ({acc[heavy]:.1f}%).")
        else:
            lines.append(f"- On {k} inputs the heaviest expert is {names[heavy]} (accuracy "
                         f"{acc[heavy]:.1f}% on those inputs), but {names[best]} is right more often "
                         f"({acc[best]:.1f}%): the gate does not trust the best expert most.")
    return "\n".join(lines)
