"""What each course notebook trains, evaluates and reads, and what a run already has.

:data:`NOTEBOOK_PLANS` says, per notebook number, which stages it trains (the selection it
gives :func:`dwf_lab.pipeline.reproduce.train_run`, read by
:func:`dwf_lab.training.stages.select_stages`), whether it evaluates, attacks (adaptive),
trains baselines or runs ablations. Notebooks 06 and 07 depend on the course scope:
:func:`adaptive_selection`, :func:`baseline_selection` and :func:`ablation_selection` are
what they run in "core" and "full" (the notebooks read them from ``ctx.selection``, so the
banner and the notebook agree). :func:`inventory` reads what a run directory holds;
:func:`notebook_steps` lists one notebook's steps, each marked done or to do. Nothing here
times or runs anything: the cost is :mod:`dwf_lab.course.cost`.
"""
import json
from dataclasses import dataclass, field
from pathlib import Path

from dwf_lab.core.config import Profile
from dwf_lab.evaluation.adaptive import AdaptiveSettings
from dwf_lab.pipeline.adaptive import gets_gate_attacks
from dwf_lab.pipeline.convergence import HEADLINE
from dwf_lab.training.recipes import recipe
from dwf_lab.training.stages import BASELINE_ROWS, Stage, baseline_stages, plan_stages, select_stages
from dwf_lab.training.variants import ABLATIONS, Ablation, select_ablations, skip_reason


# ================================================================ the plan ==
@dataclass(frozen=True)
class NotebookPlan:
    """What one notebook does to the run (besides its own quick checks)."""
    trains: str | None = None   # the stage selection it trains ("benign", "experts,mixture", "all")
    every_seed: bool = False    # trains / evaluates every seed of the profile (else the first)
    evaluates: str | None = None  # the paper protocol on "all" stages or the "key" ones
    adaptive: bool = False      # attacks beyond the paper on adaptive_selection(p, scope)
    convergence: bool = False   # the headline's worst case again at twice the attacks' budget
    baselines: bool = False     # SoE / ADVMoE / uniform ensemble: baseline_selection(scope)
    ablations: bool = False     # the ablation variants: ablation_selection(p, scope)
    scoped: bool = False        # what it runs depends on the course scope
    reads_only: bool = False    # trains and evaluates nothing: reads the run's results
    note: str = ""              # what else it does that costs time, in one line
    own_unless: str | None = None  # trains a model of its own (not saved) unless the run has this stage


NOTEBOOK_PLANS: dict[str, NotebookPlan] = {
    "00": NotebookPlan(note="uses the run's benign expert if it has one, else trains a quick classifier "
                            "for about 30 s (not saved); notebook 01 trains the benign expert",
                       own_unless="benign"),
    "01": NotebookPlan(trains="benign"),
    "02": NotebookPlan(trains="fgsm,benign",
                       note="also trains a side run beside the run, once (FGSM at 16/255 without a random "
                            "start, from the benign expert, on a few hundred images: catastrophic "
                            "overfitting); kept in the run folder"),
    "03": NotebookPlan(trains="experts",
                       note="also trains a side run beside the run, once (PGD training of a ResNet-18 on "
                            "a few training images for many epochs: robust overfitting); kept in the run folder"),
    "04": NotebookPlan(trains="experts,mixture"),
    "05": NotebookPlan(trains="all", every_seed=True, evaluates="all"),
    "06": NotebookPlan(trains="all", evaluates="key", adaptive=True, convergence=True, scoped=True),
    "07": NotebookPlan(trains="all", baselines=True, ablations=True, scoped=True),
    "08": NotebookPlan(reads_only=True),
}


def notebook_plan(notebook: str) -> NotebookPlan:
    if notebook not in NOTEBOOK_PLANS:
        raise ValueError(f"no course plan for notebook {notebook!r}; the course's notebooks are "
                         f"{', '.join(NOTEBOOK_PLANS)} (add its plan to dwf_lab.course.plan.NOTEBOOK_PLANS)")
    return NOTEBOOK_PLANS[notebook]


# ------------------------------------------------- what the scope switches --
# core: what fits an evening on a laptop; full: every model under every attack, every
# baseline, the whole ablation sweep (python -m dwf_lab course --scope full)
CORE_BASELINES = ("uniform-ensemble",)
CORE_ABLATIONS = ("reference", "uniform-untrained", "routing-uniform")


def key_stages(p: Profile) -> list[str]:
    """The plain ResNet-18, the FGSM-AT / PGD-AT baselines and DWF: the rows the paper compares."""
    return [s.name for s in plan_stages(p) if recipe(s.kind).key]


def adaptive_selection(p: Profile, scope: str) -> list[str]:
    """The stages notebook 06 attacks with the adaptive attacks: core, the key rows
    (:func:`key_stages`); full, every stage of the run (each expert too)."""
    if scope == "full":
        return [s.name for s in plan_stages(p) if not recipe(s.kind).gate_only]
    return key_stages(p)


def baseline_selection(scope: str) -> tuple[str, ...]:
    """The MoE peers notebook 07 trains and evaluates: core, the uniform ensemble (no training);
    full, SoE, ADVMoE and the uniform ensemble."""
    return tuple(BASELINE_ROWS) if scope == "full" else CORE_BASELINES


def ablation_selection(p: Profile, scope: str) -> list[str]:
    """The ablation variants notebook 07 runs (those that apply to the profile): core, the
    reference, the untrained uniform average and the trained one (the same end-to-end training with
    equal weights: the gate alone, which notebook 08's lessons read); full, every default variant."""
    chosen = select_ablations(None if scope == "full" else list(CORE_ABLATIONS))
    return [a.name for a in chosen if skip_reason(a, p) is None]


def selection(p: Profile, scope: str) -> dict:
    """Everything the scope decides, as notebook 06 / 07 use it: ``{"scope", "adaptive",
    "baselines", "ablations"}`` (stage names, baseline names, ablation names)."""
    return {"scope": scope, "adaptive": adaptive_selection(p, scope),
            "baselines": list(baseline_selection(scope)), "ablations": ablation_selection(p, scope)}


# ====================================================== what the run holds ==
def _read_json(path: Path) -> dict | None:
    try:
        out = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return out if isinstance(out, dict) else None


def _seconds(events) -> float | None:
    """The last ``stage_time`` of a log's events."""
    t = [float(r["seconds"]) for r in events if r.get("event") == "stage_time"
         and isinstance(r.get("seconds"), (int, float))]
    return t[-1] if t else None


@dataclass
class RunInventory:
    """What a run directory holds, read once (file names and the small records the cost needs)."""
    seeds: list[int]
    trained: dict[int, list[str]] = field(default_factory=dict)     # seed -> finished stages
    records: dict[tuple[int, str], dict] = field(default_factory=dict)  # (seed, model) -> eval record
    ablations: dict[int, dict[str, dict]] = field(default_factory=dict)  # seed -> variant -> eval record
    checklists: set = field(default_factory=set)                    # {(seed, model)}
    convergences: set = field(default_factory=set)                  # {(seed, model)} checked at twice the budget
    stage_seconds: dict[tuple[int, str], float] = field(default_factory=dict)  # (seed, stage) -> s
    ablation_seconds: dict[tuple[int, str], float] = field(default_factory=dict)  # (seed, variant) -> s
    fast_path: dict | None = None                                   # the last fast-path probe logged
    report: bool = False
    course_times: dict = field(default_factory=dict)                # notebook -> seconds (course_times.json)

    def is_trained(self, seed: int, stage: str) -> bool:
        return stage in self.trained.get(seed, [])

    def evaluated(self, seed: int) -> list[str]:
        return [m for (s, m) in self.records if s == seed]

    def attacked(self, seed: int) -> list[str]:
        """Models of ``seed`` whose record holds adaptive attack results."""
        return [m for (s, m), rec in self.records.items() if s == seed and rec.get("adaptive")]


def inventory(run) -> RunInventory:
    """Read what ``run`` (a :class:`dwf_lab.store.runs.Run`) already has: finished stages,
    evaluation records, adaptive results, ablation results, checklists, the measured stage
    times and fast-path probe from each seed's ``metrics.jsonl``, the report, and the
    per-notebook times of ``course_times.json``. Unreadable files count as absent."""
    p = run.profile
    root = Path(run.root)
    seeds = sorted({*p.seeds, *(int(d.name[5:]) for d in root.glob("seed-*") if d.name[5:].isdigit())})
    inv = RunInventory(seeds=seeds, report=(run.report_dir / "report.md").exists())
    names = [s.name for s in plan_stages(p)] + [s.name for s in baseline_stages(p)]
    for seed in seeds:
        inv.trained[seed] = [n for n in names if run.is_done(seed, n)]
        for rec in run.metrics(seed):
            if rec.get("event") == "stage_time" and isinstance(rec.get("seconds"), (int, float)):
                inv.stage_seconds[(seed, str(rec.get("stage")))] = float(rec["seconds"])
            elif rec.get("event") == "fast_path" and isinstance(rec.get("images_per_s"), dict):
                inv.fast_path = rec
        abl = run.seed_dir(seed) / "ablations"
        for vdir in sorted(abl.glob("*")) if abl.is_dir() else []:
            rec = _read_json(vdir / "eval.json")
            if rec is not None:
                inv.ablations.setdefault(seed, {})[vdir.name] = rec
            seconds = _seconds(run.metrics(seed, vdir))
            if seconds is not None:
                inv.ablation_seconds[(seed, vdir.name)] = seconds
    for key, path in run.evaluations().items():
        rec = _read_json(path)
        if rec is not None:
            inv.records[key] = rec
    inv.checklists = run.checklists()
    inv.convergences = set(run.convergences())
    times = _read_json(root / "course_times.json") or {}
    inv.course_times = {k: v for k, v in (times.get("notebooks") or {}).items() if isinstance(v, dict)}
    return inv


# ================================================================== steps ==
@dataclass
class Step:
    """One thing a notebook does to the run: ``action`` is "train", "evaluate", "attack"
    (adaptive attacks + gradient-masking checklist), "converge" (the worst case's attacks again at
    twice their budget) or "ablation" (train and evaluate a variant); ``done`` when the run already
    has it (the notebook then loads it)."""
    action: str
    name: str
    seed: int
    done: bool
    stage: Stage | None = None          # train: the stage
    kind: str = ""                      # the stage / model kind
    missing: tuple[str, ...] = ()       # attack: the attack keys not stored yet
    checklist: bool = False             # attack: the checklist still to compute
    ablation: Ablation | None = None    # ablation: the variant


def model_kind(p: Profile, name: str) -> str:
    """The kind of the run's model ``name``: its stage's recipe, or "uniform_ensemble"."""
    for s in plan_stages(p) + baseline_stages(p):
        if s.name == name:
            return s.kind
    return {"uniform-ensemble": "uniform_ensemble"}.get(name, name)


def _train_steps(p: Profile, inv: RunInventory, which: str, seeds) -> list[Step]:
    return [Step("train", st.name, seed, inv.is_trained(seed, st.name), stage=st, kind=st.kind)
            for seed in seeds for st in select_stages(p, which)]


def _eval_steps(p: Profile, inv: RunInventory, names, seeds) -> list[Step]:
    return [Step("evaluate", n, seed, (seed, n) in inv.records, kind=model_kind(p, n))
            for seed in seeds for n in names]


def _attack_steps(p: Profile, inv: RunInventory, names, seed: int) -> list[Step]:
    s = AdaptiveSettings.from_profile(p)
    out = []
    for n in names:
        kind = model_kind(p, n)
        stored = set((inv.records.get((seed, n)) or {}).get("per_example", {}))
        missing = tuple(k for k in s.attack_names(gets_gate_attacks(kind) or kind) if k not in stored)
        checklist = (seed, n) not in inv.checklists
        out.append(Step("attack", n, seed, not missing and not checklist, kind=kind,
                        missing=missing, checklist=checklist))
    return out


def notebook_steps(notebook: str, p: Profile, inv: RunInventory, scope: str = "core") -> list[Step]:
    """The steps of one notebook on this run, in the order it runs them, each marked done or
    to do (what the notebook's own quick checks compute is not a step)."""
    plan = notebook_plan(notebook)
    seeds = list(p.seeds) if plan.every_seed else [p.seeds[0]]
    seed = p.seeds[0]
    steps: list[Step] = []
    if plan.trains:
        steps += _train_steps(p, inv, plan.trains, seeds)
    if plan.evaluates:
        names = adaptive_selection(p, "full") if plan.evaluates == "all" else key_stages(p)
        steps += _eval_steps(p, inv, names, seeds)
    if plan.adaptive:
        names = adaptive_selection(p, scope)
        steps += _eval_steps(p, inv, names, [seed])     # the paper protocol comes first
        steps += _attack_steps(p, inv, names, seed)
    if plan.convergence:
        steps.append(Step("converge", HEADLINE, seed, (seed, HEADLINE) in inv.convergences,
                          kind=model_kind(p, HEADLINE)))
    if plan.baselines:
        chosen = baseline_selection(scope)
        steps += [Step("train", st.name, seed, inv.is_trained(seed, st.name), stage=st, kind=st.kind)
                  for st in baseline_stages(p) if st.name in chosen]
        steps += _eval_steps(p, inv, chosen, [seed])
    if plan.ablations:
        done = inv.ablations.get(seed, {})
        steps += [Step("ablation", a.name, seed, a.name in done, kind=a.kind, ablation=a)
                  for a in ABLATIONS if a.name in ablation_selection(p, scope)]
    seen, unique = set(), []
    for st in steps:   # a stage two selections name (e.g. evaluated for 06 twice) counts once
        key = (st.action, st.name, st.seed)
        if key not in seen:
            seen.add(key)
            unique.append(st)
    return unique
