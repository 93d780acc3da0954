"""The cost banner at the top of every notebook: what this notebook will do and about how long
it will take on this machine, in one or two lines; what the run has, how the estimate was made
and "about this run" (profile, scope, precision, seed, threads) collapsed below them.

:func:`notebook_banner` reads the run directory (:func:`dwf_lab.course.plan.inventory`), lists
the notebook's steps (:func:`dwf_lab.course.plan.notebook_steps`) and estimates each
(:func:`dwf_lab.course.cost.estimate`); :class:`Banner` renders it as plain text (printed
outside a notebook, and the ``text/plain`` of the notebook output: :meth:`Banner.headline`
first, the details indented below) and as a small HTML box whose details are an HTML
``<details>`` block, closed until the reader opens it (in JupyterLab and in the static site
alike). :func:`show_banner` displays it; :func:`about_block` is the same collapsed block alone,
for a notebook without a banner. It runs before anything trains, so opening a notebook first
tells the learner what it is about to do.
"""
import html
import re
from dataclasses import dataclass, field
from typing import Sequence

from IPython.display import display

from dwf_lab.core.config import Profile
from dwf_lab.course.cost import StepCost, estimate
from dwf_lab.course.display import in_kernel
from dwf_lab.course.plan import (
    NOTEBOOK_PLANS,
    NotebookPlan,
    RunInventory,
    inventory,
    notebook_plan,
    notebook_steps,
    selection,
)
from dwf_lab.training.recipes import RECIPES
from dwf_lab.training.stages import baseline_stages, plan_stages

ACTIONS = {"train": "will train", "evaluate": "will evaluate", "attack": "will attack", "ablation": "will run",
           "converge": "will attack again at twice the budget"}
W = 15   # the label column of the text banner
METHOD = ("work = images x epochs x passes per image of each recipe (attack steps included) x networks "
          "(a mixture counts its experts); an estimate, not a measurement of this notebook")


# ------------------------------------------------------------------ format --
def duration(seconds: float) -> str:
    """'under a second', '40 s', '7 min', '1 h 05 min'."""
    if seconds < 1:
        return "under a second"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    h, m = divmod(round(seconds / 60), 60)
    return f"{h} h {m:02d} min"


def _row(label: str, value: str) -> str:
    """One row of the text banner: the label in its column, or, when longer, followed by a space."""
    return f"  {label:<{W}}{value}" if len(label) < W else f"  {label} {value}"


def about(seconds: float | None) -> str:
    """'about 7 min', 'under a second', or 'no estimate' (None: a step without a cost model)."""
    if seconds is None:
        return "no estimate"
    return duration(seconds) if seconds < 1 else f"about {duration(seconds)}"


def compact(names) -> str:
    """'benign, fgsm-1, fgsm-2, fgsm-3' -> 'benign, fgsm-1..3' (runs of three or more numbered names)."""
    names, out, i = list(names), [], 0
    while i < len(names):
        m = re.fullmatch(r"(.*-)(\d+)", names[i])
        j = i
        if m:
            while j + 1 < len(names) and names[j + 1] == f"{m[1]}{int(m[2]) + j + 1 - i}":
                j += 1
        if j - i >= 2:
            out.append(f"{names[i]}..{int(m[2]) + j - i}")
        else:
            out.extend(names[i:j + 1])
        i = j + 1
    return ", ".join(out)


def _seeds(steps) -> str:
    seeds = sorted({s.step.seed for s in steps})
    return f" (seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))})" if len(seeds) > 1 else ""


def _kind_label(kind: str, n: int) -> str:
    r = RECIPES.get(kind)
    return r.labels(n) if r else (kind if n == 1 else f"{n} {kind}")


# ------------------------------------------------------------------ banner --
@dataclass
class Banner:
    notebook: str
    title: str
    has: list[tuple[str, str]]                  # (label, text): what the run already has
    todo: list[tuple[str, str, float, str]]     # (action, what, seconds, detail)
    loads: list[str]                            # trained stages the notebook loads
    total_s: float
    how: list[str]                              # how the estimate was made
    notes: list[str] = field(default_factory=list)
    costs: list[StepCost] = field(default_factory=list)
    reads_only: bool = False
    own: str = ""                               # what the notebook trains of its own (not saved)
    about: list[tuple[str, str]] = field(default_factory=list)   # "about this run": profile, scope, ...

    @property
    def trains(self) -> list[str]:
        """Stage names this notebook will train (for tests and the runner)."""
        return [c.step.name for c in self.costs if c.step.action == "train" and not c.step.done]

    def headline(self) -> list[str]:
        """What the notebook will do and about how long, in one or two lines: the part of the
        banner that is always visible (the rest is collapsed)."""
        first = f"Notebook {self.notebook}: "
        if self.todo:
            verbs = []
            for action in dict.fromkeys(a for a, *_ in self.todo):
                names = [c.step.name for c in self.costs if c.step.action == action and not c.step.done]
                verbs.append(f"{ACTIONS[action]} {compact(dict.fromkeys(names))}")
            first += "; ".join(verbs) + f" — {self.total_line()}"
        elif self.own:
            first += f"{self.own}; nothing of the run's is trained, evaluated or attacked"
        elif self.reads_only:
            first += "trains and evaluates nothing: it reads the run's results"
        else:
            first += "nothing to train, evaluate or attack: the run already has what it uses"
        lines = [first]
        if self.loads:
            lines.append(f"It loads {compact(self.loads)} (already trained: loaded, not retrained).")
        elif self.reads_only and not any(label == "evaluated" and value != "nothing yet" for label, value in self.has):
            lines.append("The run has no evaluation results yet: notebook 05 makes them.")
        return lines

    def details(self) -> list[tuple[str, str]]:
        """The collapsed part, as (label, text) rows: about this run, what the run has, each step
        with its estimate, how the estimate was made, and the notes."""
        rows = list(self.about) + [(label, value) for label, value in self.has
                                   if not (self.about and label == "run")]   # "about" names the run
        last = None
        for action, what, seconds, detail in self.todo:
            label = ACTIONS[action] if action != last else ""
            last = action
            rows.append((label, f"{what}: {about(seconds)}" + (f" [{detail}]" if detail else "")))
        if self.loads:
            rows.append(("will load", f"{compact(self.loads)} (already trained: loaded, not retrained)"))
        rows.append(("time", self.total_line()))
        rows += [("how" if i == 0 else "", h) for i, h in enumerate(self.how)]
        rows += [("note", n) for n in self.notes]
        return rows

    def text(self) -> str:
        """The headline, then the details indented below it (plain text: nothing collapses)."""
        return "\n".join(self.headline() + [_row(label, value) for label, value in self.details()])

    def total_line(self) -> str:
        if not self.todo:
            if self.own:
                return f"nothing of the run's to train, evaluate or attack; it {self.own}"
            return ("nothing to train, evaluate or attack" if self.reads_only else
                    "nothing to train, evaluate or attack: the run already has what this notebook uses")
        unknown = sum(1 for c in self.costs if c.failed)
        return (f"{about(self.total_s)} on this machine (an estimate), plus the notebook's own quick checks"
                + (f"; {unknown} step{'s' if unknown != 1 else ''} without a cost model not counted" if unknown else ""))

    def html(self) -> str:
        """A small box: the headline, then the details in a closed ``<details>`` block."""
        e = html.escape
        bold = " style='font-weight:600'"
        head = "".join(f"<div class='dwf-headline'{bold if i == 0 else ''}>{e(line)}</div>"
                       for i, line in enumerate(self.headline()))
        return (f"<div class='dwf-banner' style='border:1px solid #c5d2e3;border-left:4px solid #3b6ea8;"
                f"background:#f4f7fb;color:#1d2733;padding:6px 12px;margin:4px 0;font-size:13px;"
                f"line-height:1.45'>{head}{details_html(self.details(), DETAILS_SUMMARY)}</div>")

    def _repr_mimebundle_(self, include=None, exclude=None):
        return {"text/plain": self.text(), "text/html": self.html()}


DETAILS_SUMMARY = "about this run, what it has, and how the estimate was made"
ABOUT_SUMMARY = "about this run"


def details_html(rows: Sequence[tuple[str, str]], summary: str) -> str:
    """(label, text) rows in a closed HTML ``<details>`` block: a live notebook and the static
    site show only ``summary`` until the reader opens it."""
    e = html.escape
    # inline styles: JupyterLab's and nbconvert's table styles (right-aligned, striped) stay out
    cell = "text-align:left;border:none;background:none;vertical-align:top;padding:1px "
    body = "".join(f"<tr style='background:none;border:none'><td style='{cell}12px 1px 0;white-space:nowrap;"
                   f"color:#445'>{e(label)}</td><td style='{cell}0'>{e(value)}</td></tr>"
                   for label, value in rows)
    return (f"<details class='dwf-details' style='margin-top:2px'><summary style='color:#556;cursor:pointer;"
            f"font-size:12px'>{e(summary)}</summary><table style='border-collapse:collapse;border:none;"
            f"margin:2px 0 0;font-size:12px'>{body}</table></details>")


@dataclass
class AboutBlock:
    """"About this run" alone (a notebook without a cost banner): collapsed in a notebook."""
    rows: list[tuple[str, str]]

    def text(self) -> str:
        return "\n".join([ABOUT_SUMMARY] + [_row(label, value) for label, value in self.rows])

    def html(self) -> str:
        return details_html(self.rows, ABOUT_SUMMARY)

    def _repr_mimebundle_(self, include=None, exclude=None):
        return {"text/plain": self.text(), "text/html": self.html()}


def about_block(rows: Sequence[tuple[str, str]]) -> AboutBlock:
    return AboutBlock(list(rows))


def _has_lines(p: Profile, inv: RunInventory, run) -> list[tuple[str, str]]:
    names = [s.name for s in plan_stages(p)]
    extra = [s.name for s in baseline_stages(p)]
    trained = []
    for seed in inv.seeds:
        done = [n for n in names + extra if inv.is_trained(seed, n)]
        if done or seed == p.seeds[0]:
            own = [n for n in done if n in names]
            trained.append((f"seed {seed}: " if len(inv.seeds) > 1 else "")
                           + (f"{compact(done)} ({len(own)} of {len(names)} stages)" if done else "nothing yet"))
    order = {n: i for i, n in enumerate(names + extra)}

    def in_order(found):
        return sorted(set(found), key=lambda n: (order.get(n, len(order)), n))
    evaluated = in_order(m for (_, m) in inv.records)
    attacked = in_order(m for s in inv.seeds for m in inv.attacked(s))
    ablations = sorted({v for d in inv.ablations.values() for v in d})
    return [("run", f"{run.root} (profile {p.name})"),
            ("trained", "; ".join(trained)),
            ("evaluated", compact(evaluated) if evaluated else "nothing yet"),
            ("adaptive", compact(attacked) if attacked else "no adaptive attack results yet"),
            ("ablations", ", ".join(ablations) if ablations else "none yet")]


def _todo(costs: list[StepCost]) -> list[tuple[str, str, float, str]]:
    """One line per (action, kind): train lines grouped by stage kind, the rest per model."""
    out = []
    groups: dict[tuple[str, str], list[StepCost]] = {}
    for c in costs:
        if c.step.done:
            continue
        key = (c.step.action, c.step.kind if c.step.action == "train" else c.step.name)
        groups.setdefault(key, []).append(c)
    for (action, key), cs in groups.items():
        names = list(dict.fromkeys(c.step.name for c in cs))
        seconds = None if any(c.failed for c in cs) else sum(c.seconds for c in cs)
        if action == "train":
            label = _kind_label(key, len(names))
            what = (label if names == [key] else f"{label} ({compact(names)})") + _seeds(cs)
            detail = cs[0].detail
        elif action == "ablation":
            what, detail = f"ablation {key}{_seeds(cs)}", cs[0].detail
        else:
            what, detail = f"{key}{_seeds(cs)}", cs[0].detail
        out.append((action, what, seconds, detail))
    return out


def _how(costs: list[StepCost]) -> list[str]:
    out: dict[str, list[str]] = {}
    words = {"train": "training", "evaluate": "evaluation", "attack": "adaptive attacks", "ablation": "ablations",
             "converge": "convergence check"}
    for c in costs:
        if c.rate is not None:
            used = out.setdefault(c.rate.how, [])
            if words[c.step.action] not in used:
                used.append(words[c.step.action])
    lines = [f"{', '.join(what)}: {how}" for how, what in out.items()]
    return lines + ([METHOD] if lines else [])


def notebook_banner(notebook: str, p: Profile, run, data, scope: str = "core", device="cpu",
                    threads: int | None = None, about: Sequence[tuple[str, str]] = ()) -> Banner:
    """The banner of notebook ``notebook`` ("00" ... ) on ``run``: quick (file reads; a probe of
    about a second only when something will run and the run has measured nothing yet). ``about``:
    the "about this run" rows (:func:`dwf_lab.course.setup.setup_notebook` passes them), first in
    the collapsed details."""
    planned = notebook in NOTEBOOK_PLANS
    plan = notebook_plan(notebook) if planned else NotebookPlan()
    inv = inventory(run)
    steps = notebook_steps(notebook, p, inv, scope) if planned else []
    costs = estimate(steps, p, data, inv, device, threads)
    title = f"Notebook {notebook}: what it will do, and about how long it takes"
    has = _has_lines(p, inv, run)
    if plan.scoped:
        sel = selection(p, scope)
        what = {"06": f"adaptive attacks on {compact(sel['adaptive'])}",
                "07": f"baselines {', '.join(sel['baselines'])}; ablations {', '.join(sel['ablations'])}"}
        has.insert(1, ("scope", f"{scope}: {what.get(notebook, '')}"
                                + (" (python -m dwf_lab course --scope full, or scope = \"full\" in the "
                                   "parameters cell, runs everything)" if scope == "core" else "")))
    notes = [plan.note] if plan.note else []
    if not planned:
        notes.append(f"dwf_lab.course.plan.NOTEBOOK_PLANS has no plan for notebook {notebook}: this banner "
                     "cannot say what it trains")
    if plan.reads_only:
        notes.append("this notebook trains and evaluates nothing: it reads the run's results")
        if not inv.records:
            notes.append("the run has no evaluation results yet: notebook 05 makes them "
                         "(and 06, 07 the adaptive attacks and baselines)")
    last = inv.course_times.get(notebook)
    if last and isinstance(last.get("seconds"), (int, float)):
        notes.append(f"the last headless run of this notebook on this run took {duration(last['seconds'])} "
                     f"(course_times.json{'; it trained ' + str(len(last['trained'])) + ' stage(s) then' if last.get('trained') else ''})")
    todo = _todo(costs)
    loads = [c.step.name for c in costs if c.step.action == "train" and c.step.done]
    if plan.own_unless and inv.is_trained(p.seeds[0], plan.own_unless):
        loads.append(plan.own_unless)   # what it would otherwise train of its own: the run's model instead
    own = ("trains a quick classifier of its own (under a minute, not saved)"
           if plan.own_unless and not inv.is_trained(p.seeds[0], plan.own_unless) else "")
    return Banner(notebook, title, has, todo, list(dict.fromkeys(loads)), sum(c.seconds for c in costs),
                  _how(costs), notes, costs, plan.reads_only, own, list(about))


def show_banner(banner: Banner | AboutBlock) -> None:
    """In a notebook: one output with the HTML box (and the text for plain viewers); else printed."""
    if in_kernel():
        display(banner._repr_mimebundle_(), raw=True)
    else:
        print(banner.text())
