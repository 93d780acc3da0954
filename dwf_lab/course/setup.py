"""Setting a course notebook up, and what its quick checks share.

:func:`setup_notebook` (every notebook's second cell) resolves the profile, opens the run
directory, loads the data, seeds and picks a sensible number of CPU threads
(:func:`configure_threads`), and returns ``ctx``. :func:`load_stage` / :func:`load_stages`
load finished models, with a clear error for one not trained yet; :func:`quick_batch` and
:func:`quick_settings` are the notebooks' quick checks, :func:`fgsm_label` and
:func:`pgd_label` their labels.
"""
import os
import time
from types import SimpleNamespace
from typing import Mapping, Sequence

import torch
import torch.nn as nn

from dwf_lab.core.config import Profile, get_profile
from dwf_lab.core.runtime import Runtime
from dwf_lab.course.banner import about_block, notebook_banner, show_banner
from dwf_lab.course.display import configure_display, static_figures
from dwf_lab.course.plan import selection
from dwf_lab.pipeline.reproduce import train_run
from dwf_lab.store.checkpoints import load_model
from dwf_lab.store.runs import Run
from dwf_lab.training.builders import load_data
from dwf_lab.training.fast_path import for_evaluation
from dwf_lab.training.stages import select_stages

# ============================================================ notebook setup ==
SCOPE_ENV = "DWF_COURSE_SCOPE"
SCOPES = ("core", "full")


def course_scope(scope: str | None = None) -> str:
    """The course scope: "core" (what fits an evening on a laptop) or "full" (every expert under
    every attack, every baseline, the whole ablation sweep). None: ``$DWF_COURSE_SCOPE``, else
    "core". ``python -m dwf_lab course --scope full`` sets ``$DWF_COURSE_SCOPE`` for every notebook's
    kernel and passes ``scope`` to the notebooks whose parameters cell declares it (06, 07)."""
    value = scope if scope is not None else os.environ.get(SCOPE_ENV) or "core"
    if value not in SCOPES:
        raise ValueError(f"course scope must be one of {', '.join(SCOPES)}, got {value!r} "
                         f"(from {'the scope parameter' if scope is not None else '$' + SCOPE_ENV})")
    return value


def busy_cores(window_s: float = 0.3) -> float:
    """How many cores other work keeps busy now: the CPU time spent outside the idle state over a
    short window (Linux ``/proc/stat``), else the 1-minute load average. The load average alone
    is not enough: it still counts, for a minute, work that has just finished -- the previous
    notebook of the course, whose kernel has exited."""
    def sample():
        with open("/proc/stat", encoding="ascii") as f:
            v = [int(t) for t in f.readline().split()[1:]]
        return sum(v), v[3] + (v[4] if len(v) > 4 else 0)   # total, idle + iowait
    try:
        t0, i0 = sample()
        time.sleep(window_s)
        t1, i1 = sample()
        cores = os.cpu_count() or 1
        return cores * (1.0 - (i1 - i0) / max(1, t1 - t0))
    except (OSError, ValueError, IndexError):
        try:
            return os.getloadavg()[0]
        except (AttributeError, OSError):
            return 0.0


def configure_threads(p: Profile) -> int:
    """Set torch's CPU threads: the profile's ``num_threads`` if > 0; else $OMP_NUM_THREADS
    if set; else the cores that other work does not keep busy right now (:func:`busy_cores`;
    at least 1, at most 8). The kit's small CPU models gain little from many threads and lose a
    lot when they compete."""
    if p.num_threads > 0:
        n = p.num_threads
    elif os.environ.get("OMP_NUM_THREADS"):
        return torch.get_num_threads()
    else:
        try:
            cores = len(os.sched_getaffinity(0))
        except AttributeError:  # macOS, Windows
            cores = os.cpu_count() or 1
        n = max(1, min(8, cores, int(cores - busy_cores() + 0.5)))
    torch.set_num_threads(n)
    return n


class Lesson(SimpleNamespace):
    """A notebook's ``ctx``: the run it works on, and the few verbs a lesson needs from it.

    The attributes are set by :func:`setup_notebook`; the methods keep the pipeline's plumbing
    (which stages a kind has, where a model is stored, which runtime a hand-written step is
    compared under) out of the lessons, so a notebook imports only what it teaches with."""

    def names(self, which: str) -> list[str]:
        """The stage names of a kind or group ("fgsm", "pgd", "experts", "mixture", "pgd-2", ...)."""
        return [s.name for s in select_stages(self.profile, which)]

    def train(self, which: str) -> dict[str, nn.Module]:
        """Train what ``which`` selects (finished stages are loaded, never retrained) and return
        those models by stage name, in eval mode on ``ctx.device``."""
        train_run(self.run, self.seed, self.data, which)
        return self.load(self.names(which))

    def load(self, stages: str | Sequence[str]) -> dict[str, nn.Module]:
        """Finished stages' models by name (a name or a list of names)."""
        return load_stages(self.run, self.seed, [stages] if isinstance(stages, str) else stages, self.device)

    def model(self, stage: str) -> nn.Module:
        """One finished stage's model."""
        return load_stage(self.run, self.seed, stage, self.device)

    def batch(self, n: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The first ``n`` test images and labels (all if None), on ``ctx.device``."""
        return quick_batch(self.data, n, self.device)

    def train_batch(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The first ``n`` training images and labels, on the CPU (where a hand-written training
        step is compared with the package's: every operation there is deterministic)."""
        return self.data.x_train[:n].cpu(), self.data.y_train[:n].cpu()

    def step_draws(self, which: str, step: int = 0) -> tuple[torch.Generator, torch.Generator]:
        """The random generators the package's training step number ``step`` of the first stage
        of ``which`` draws from (ε, iterations, random starts), on the CPU: a hand-written step
        that draws from them in the same order makes the same draws."""
        stage = select_stages(self.profile, which)[0]
        return Runtime.from_profile(self.profile.replace(device="cpu")).step_generators(self.seed, stage.sid, step)


def setup_notebook(profile: str | Profile | None = None, run_name: str | None = None,
                   overrides: Mapping | None = None, seed: int | None = None,
                   verbose: bool = True, notebook: str | None = None,
                   scope: str | None = None) -> Lesson:
    """Everything a course notebook starts from, as ``ctx`` (a :class:`Lesson`).

    ``profile``: a name, a Profile, or None = ``$DWF_PROFILE`` if set, else "laptop"
    (papermill passes the name explicitly, so the environment never overrides it).
    Returns a namespace with ``profile``, ``run`` (:class:`dwf_lab.store.runs.Run`, default
    name = the profile's), ``data``, ``seed`` (the profile's first seed), ``device``,
    ``threads``, ``static`` (figures static?), ``quick`` (:func:`quick_settings`) and
    ``n_quick`` / ``n_small`` (how many test images the notebooks' quick checks use).
    ``notebook`` is the calling notebook's number ("00" ... ), kept as ``ctx.notebook``; with it
    the notebook's cost banner (:func:`dwf_lab.course.banner.notebook_banner`: what the run has,
    what this notebook will train or evaluate, about how long) is shown before anything runs
    and kept as ``ctx.banner``. ``scope``: the course scope (:func:`course_scope`), kept as
    ``ctx.scope``; ``ctx.selection`` is what it selects in notebooks 06 and 07
    (:func:`dwf_lab.course.plan.selection`).
    """

    scope = course_scope(scope)   # a typo fails here, before the run folder exists
    p = profile if isinstance(profile, Profile) else get_profile(profile, **dict(overrides or {}))
    if isinstance(profile, Profile) and overrides:
        p = p.replace(**dict(overrides))
    threads = configure_threads(p)
    data = load_data(p)   # before the run folder: a dataset that cannot be used leaves nothing behind
    run = Run(run_name or p.name, p)
    p = run.profile   # evaluation_precision "auto" pinned to what the run's results were computed in
    seed = p.seeds[0] if seed is None else int(seed)
    torch.manual_seed(seed)
    device = Runtime.from_profile(p).device
    configure_display()
    static = static_figures()
    quick = quick_settings(p, device)
    ctx = Lesson(profile=p, run=run, data=data, seed=seed, device=device, notebook=notebook,
                 scope=scope, selection=selection(p, scope), banner=None,
                 threads=threads, static=static, quick=quick,
                 n_quick=min(len(data.x_test), quick["n"]),
                 n_small=min(len(data.x_test), quick["n_small"]))
    about = about_this_run(ctx)
    if notebook is not None:
        try:
            ctx.banner = notebook_banner(notebook, p, run, data, scope, device, threads, about=about)
        except Exception as e:   # an estimate never stops a lesson: say so in one line and go on
            print(f"cost banner: no estimate for notebook {notebook} ({type(e).__name__}: {e})")
    if verbose:   # one or two lines, "about this run" collapsed below them
        show_banner(ctx.banner if ctx.banner is not None else about_block(about))
    return ctx


def about_this_run(ctx) -> list[tuple[str, str]]:
    """The "about this run" rows a notebook shows collapsed under its banner: the profile, the run,
    the data, the models, the scope, the arithmetic, the seed, the device and threads."""
    p, data = ctx.profile, ctx.data
    return [("profile", f"{p.name}: {p.description}"),
            ("run", f"{ctx.run.name} at {ctx.run.root}"),
            ("data", f"{data.name}: {len(data.x_train)} train / {len(data.x_test)} test images "
                     f"{tuple(data.shape)}, {data.num_classes} classes; {data.source}"),
            ("models", f"ResNet-18 experts at width {p.width:g}; {p.n_fgsm_experts} FGSM + {p.n_pgd_experts} "
                       f"PGD experts; {p.expert_epochs} expert epochs, {p.mixture_epochs} mixture epochs"),
            ("scope", f"{ctx.scope} (the course scope: what notebooks 06 and 07 run)"),
            ("precision", f"training amp {p.amp}" + (" (bf16 on a GPU, fp32 on a CPU)" if p.amp == "auto" else "")
                          + f"; evaluation attacks {p.eval_precision}"
                          + (" (bf16 where a probe measures it faster on this CPU, else fp32)"
                             if p.eval_precision == "auto" else "")),
            ("seed", str(ctx.seed)),
            ("device", f"{ctx.device}, {ctx.threads} CPU thread{'s' if ctx.threads != 1 else ''}; figures "
                       f"{'static' if ctx.static else 'live widgets'}")]


def quick_batch(data, n: int | None = None, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``n`` test images and labels (all if None), on ``device``."""
    x, y = data.x_test, data.y_test
    if n is not None:
        x, y = x[:n], y[:n]
    if device is not None:
        x, y = x.to(device), y.to(device)
    return x, y


# ============================================================ stages, models ==
def load_stage(run, seed: int, stage: str, device=None) -> nn.Module:
    """A finished stage's model (eval mode, the evaluation layout of
    :func:`dwf_lab.training.fast_path.for_evaluation`), with a clear error if it is not trained yet."""
    path = run.model_path(seed, stage)
    if not path.exists():
        raise FileNotFoundError(f"stage {stage!r} of run {run.name!r} (seed {seed}) is not trained "
                                f"yet: run pipeline.train_run(run, seed, data, {stage!r}) first")
    return for_evaluation(load_model(path, map_location=device or "cpu"), run.profile, device or "cpu")


def load_stages(run, seed: int, stages: Sequence[str], device=None) -> dict[str, nn.Module]:
    return {s: load_stage(run, seed, s, device) for s in stages}


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
