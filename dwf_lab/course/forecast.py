"""The whole course's cost on this machine, said before the first notebook starts.

Each notebook's banner (:mod:`dwf_lab.course.banner`) prices what that notebook will do to the run
as the run stands when it opens. :func:`course_forecast` prices every notebook in turn the same
way (the same steps, :func:`dwf_lab.course.plan.notebook_steps`; the same rates,
:class:`dwf_lab.course.cost.Estimator`), on a copy of the run's inventory to which each notebook's
steps are added as done before the next notebook is priced: a stage notebook 02 trains is loaded
by 04, not priced twice. Nothing is trained, evaluated or written; the only cost is the banner's
throughput probe (about two seconds) when the run has measured nothing yet.

Like the banners it prices the run's own work (training, the paper's evaluation, the attacks
beyond it, the ablations), not each notebook's own quick checks, side runs and figures.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

from dwf_lab.core.config import Profile
from dwf_lab.course.banner import duration
from dwf_lab.course.cost import ASSUMED_CLEAN, ASSUMED_SURVIVING, Estimator
from dwf_lab.course.plan import NOTEBOOK_PLANS, RunInventory, Step, inventory, notebook_steps

# the course's length that a learner is told to expect from the laptop profile (README, running.md)
SIZED_FOR_S = 60 * 60


@dataclass
class NotebookForecast:
    notebook: str
    seconds: float          # the run's own work this notebook will do, on this machine
    steps: int              # how many steps it will run (not already done)
    unpriced: int = 0       # steps without a cost model (not counted in ``seconds``)


def _as_done(inv: RunInventory, step: Step) -> None:
    """Add ``step`` to ``inv`` as if it had run, so the next notebook loads what it made."""
    key = (step.seed, step.name)
    # an evaluation not made yet: the shares the banner assumes for a model never evaluated (the
    # cascades of the attacks beyond the paper attack what the protocol left correct)
    made = {"stage_kind": step.kind, "metrics": {"SA": 100 * ASSUMED_CLEAN, "worst-case": 100 * ASSUMED_SURVIVING}}
    if step.action == "train":
        inv.trained.setdefault(step.seed, []).append(step.name)
    elif step.action == "evaluate":
        inv.records.setdefault(key, made)
    elif step.action == "attack":
        rec = inv.records.setdefault(key, made)
        rec.setdefault("per_example", {}).update(dict.fromkeys(step.missing))
        inv.checklists.add(key)
    elif step.action == "converge":
        inv.convergences.add(key)
    elif step.action == "ablation":
        inv.ablations.setdefault(step.seed, {})[step.name] = {}


def course_forecast(p: Profile, data, run, scope: str = "core", notebooks=None, device="cpu",
                    threads: int | None = None) -> list[NotebookForecast]:
    """Each course notebook's run work on this machine, in order (``notebooks``: their two-digit
    keys, default every planned one), each priced after the ones before it have run."""
    inv = copy.deepcopy(inventory(run))
    est = Estimator(p, data, inv, device, threads if threads is not None else torch.get_num_threads())
    out = []
    for nb in notebooks if notebooks is not None else list(NOTEBOOK_PLANS):
        if nb not in NOTEBOOK_PLANS:
            continue   # a notebook without a plan trains nothing the banner knows of
        todo = [s for s in notebook_steps(nb, p, inv, scope) if not s.done]
        costs = [est.safe_cost(s) for s in todo]
        out.append(NotebookForecast(nb, sum(c.seconds for c in costs if not c.failed), len(todo),
                                    sum(1 for c in costs if c.failed)))
        for s in todo:
            _as_done(inv, s)
    return out


def forecast_line(forecast: list[NotebookForecast], p: Profile) -> str:
    """One line for the start of a course run: the total, the heaviest notebooks, and, when it is
    far beyond the hour the laptop profile was sized for, what to do instead."""
    total = sum(f.seconds for f in forecast)
    if total <= 0:
        return "the run already has everything the course trains, evaluates and attacks: it only loads it"
    top = sorted((f for f in forecast if f.seconds > 0), key=lambda f: -f.seconds)[:3]
    unpriced = sum(f.unpriced for f in forecast)
    line = (f"the run's own work in this course: about {duration(total)} on this machine (an estimate from "
            f"the cost banners' model; most in {', '.join(f'{f.notebook} ({duration(f.seconds)})' for f in top)}), "
            "plus each notebook's own checks and side runs"
            + (f"; {unpriced} step{'s' if unpriced != 1 else ''} without a cost model not counted" if unpriced else ""))
    if p.name == "laptop" and total > 1.5 * SIZED_FOR_S:
        line += (". The laptop profile was sized for about an hour on a 2-core CPU with bf16 units "
                 "(AVX-512 BF16); this machine is slower at it. Every stage is saved as it finishes, so the "
                 "course can be stopped and run again later; --profile smoke runs the whole course in minutes")
    return line
