"""Auditing a table of accuracies with the kit's rules: what the numbers say about how they were measured.

Whatever the model, a sound evaluation obeys a few rules: a stronger attack does no less
damage, a larger ε does no less damage, an attacked accuracy is never above the clean one,
and an undefended network falls under PGD. Each rule below reads an :class:`AuditTable`
(rows = models, columns = the kit's metric keys, every cell a mean with its standard error)
and returns one :class:`Finding` per row it applies to, with a status:

- ``"ok"``: the numbers go the way a sound evaluation goes;
- ``"within noise"``: the wrong way, by no more than :data:`~dwf_lab.reporting.noise.Z`
  standard errors (nothing to conclude);
- ``"flagged"``: the wrong way, beyond noise.

``pgd-vs-fgsm`` and ``eps-growth`` are :mod:`dwf_lab.evaluation.consistency`'s, as in notebook 05 and the
checklist: their errors are binomial on the test images; the others' include the seeds' spread.

The same rules read the paper's published Tables 2-3 (:func:`paper_table`) and a run's own
results (:func:`run_table`); notebook 08 runs both. A rule never proves an evaluation right:
it can only catch numbers that contradict each other.

| rule | what a sound evaluation shows | a violation points to |
|---|---|---|
| ``pgd-vs-fgsm`` | the strongest PGD column at 8/255 (many steps in a ball that contains FGSM's at 0.03) leaves no more accuracy than one FGSM step at 0.03 | gradient masking, or a weak PGD |
| ``eps-growth`` | FGSM accuracy does not rise with ε | gradient masking (Carlini et al. 2019) |
| ``pgd-steps`` | more PGD iterations leave no more accuracy | a noisy or broken attack |
| ``restarts`` | PGD-100 with restarts leaves no more than one PGD-100 run, or than fewer steps | the columns are not the attacks they are named |
| ``late-cliff`` | a PGD curve that flattened by 50 steps does not fall further from 50 to 100 than from 10 to 50 | the short attacks had not converged, or the long one is another attack |
| ``clean-bound`` | no attacked accuracy above the clean accuracy | robust accuracy counted on other images |
| ``undefended`` | an undefended network keeps almost nothing (≤ :data:`UNDEFENDED_PGD_MAX` %) under PGD at 8/255 | ε on the wrong scale (e.g. on normalized inputs), or an attack that does not reach the model |
| ``undefended-flat`` | against an undefended network that still holds out, the most PGD steps take at least a tenth of what the fewest leave (:data:`FLAT_FRACTION`) | an attack that stalls |
| ``reference`` | no more than the best published numbers for the same recipe (:data:`REFERENCE_POINTS`) | a result that needs more checking than the paper gives |
"""
import math
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Callable, Iterable, Mapping, Sequence

from dwf_lab.evaluation import consistency
from dwf_lab.evaluation import keys as K
from dwf_lab.evaluation.metrics import DERIVED
from dwf_lab.evaluation.records import infer_dataset, validated
from dwf_lab.reporting.noise import Cell, Z, accuracy_se, binomial_se, run_cells
from dwf_lab.reporting.paper import (
    DATASET_LABELS,
    METRIC_FOR_COLUMN,
    PLAIN_NETWORK_ROWS,
    TABLE_KEYS,
    paper_dataset,
    paper_tables,
)

STATUSES = ("ok", "within noise", "flagged")

# test-set sizes behind the paper's numbers, and the training runs behind a row with a std
PAPER_TEST_IMAGES = {"cifar10": 10000, "svhn": 26032}
PAPER_RUNS = 5

# the plain networks of Tables 2-3 (no adversarial training); in a run, "ResNet-18" is the benign expert
UNDEFENDED_ROWS: frozenset[str] = frozenset(PLAIN_NETWORK_ROWS)
# "almost nothing": standard training usually leaves a few percent or less under PGD at 8/255
UNDEFENDED_PGD_MAX = 10.0
# "flat": more PGD steps take less than this fraction of what an undefended network still keeps
FLAT_FRACTION = 0.1


@dataclass(frozen=True)
class Reference:
    """A published number a row is held against (CIFAR-10, L-inf 8/255)."""
    row: str
    metric: str
    value: float
    source: str


# the higher of the published figures, to be generous (docs/paper-notes.md, reference points)
REFERENCE_POINTS: tuple[Reference, ...] = (
    Reference("ResNet-18 (PGD-AT)", "SA", 84.9, "Rice et al. 2020, PreActResNet-18 PGD-AT (last epoch)"),
    Reference("ResNet-18 (PGD-AT)", "pgd:10", 53.5, "Rice et al. 2020, PreActResNet-18 PGD-AT (best epoch)"),
    Reference("ResNet-18 (FGSM-AT)", "SA", 86.1, "Wong et al. 2020, fast FGSM-AT with a random start"),
    Reference("ResNet-18 (FGSM-AT)", "pgd:50", 46.1, "Wong et al. 2020, fast FGSM-AT (PGD-50, 10 restarts)"),
)


# ------------------------------------------------------------------ tables --
@dataclass
class AuditTable:
    """What the rules read: ``cells[row][metric]``, with where the numbers come from."""
    label: str                      # "the paper, CIFAR-10", "this run"
    dataset: str | None             # the kit's dataset name ("cifar10", "svhn", "synthetic", ...)
    cells: dict[str, dict[str, Cell]] = field(default_factory=dict)
    pgd_eps: float = 8 / 255        # the ε of the PGD columns


def paper_table(dataset: str = "cifar10") -> AuditTable:
    """The paper's Tables 2 and 3 for ``dataset`` as one table, with binomial standard errors
    on the paper's test set (10,000 CIFAR-10 / 26,032 SVHN images) and, for the rows given
    as mean ± std over five runs (DWF), the spread between runs as well."""
    ds = paper_dataset(dataset)
    if ds not in PAPER_TEST_IMAGES:
        raise ValueError(f"the paper has no tables for {dataset!r}; use one of {', '.join(PAPER_TEST_IMAGES)}")
    n = PAPER_TEST_IMAGES[ds]
    cells: dict[str, dict[str, Cell]] = {}
    tables = paper_tables()
    for key in TABLE_KEYS.values():
        for row, columns in tables[key].get(ds, {}).items():
            for column, value in columns.items():
                if value.get("mean") is None:
                    continue
                runs = PAPER_RUNS if value.get("std") is not None else 1
                se = accuracy_se(value["mean"], n, value.get("std"), runs)
                cells.setdefault(row, {})[METRIC_FOR_COLUMN[column]] = Cell(value["mean"], se, n, runs)
    return AuditTable(f"the paper, {DATASET_LABELS[ds]}", ds, cells)


def run_table(results: Iterable[dict], dataset: str | None = None, label: str = "this run") -> AuditTable:
    """A run's evaluation records as a table: each row's mean over seeds, with the binomial
    standard error on its test images and the spread between seeds (:func:`~dwf_lab.reporting.noise.run_cells`)."""
    results = validated(results)
    dataset = infer_dataset(results, dataset)
    eps = [e for r in results if isinstance(e := (r.get("settings") or {}).get("pgd_eps"), (int, float))]
    return AuditTable(label, dataset, run_cells(results, dataset), float(eps[-1]) if eps else 8 / 255)


# ---------------------------------------------------------------- findings --
@dataclass(frozen=True)
class Finding:
    rule: str
    row: str
    status: str               # one of STATUSES
    detail: str               # one sentence, with the numbers
    excess: float | None = None   # how far the numbers go the wrong way (points; <= 0: the right way)
    se: float | None = None       # the standard error of that excess


def _status(excess: float, se: float) -> str:
    if excess <= 0:
        return "ok"
    return "within noise" if excess <= Z * se else "flagged"


def _z(excess: float, se: float) -> str:
    return f"{excess / se:+.1f} SE" if se > 0 else "exact"


metric_label = K.label   # 'fgsm:0.03' -> 'FGSM 0.03', 'pgd:20' -> 'PGD-20', 'pgd:100-ms' -> 'PGD-100 (MS)'


def _pgd_steps(cells: Mapping[str, Cell]) -> list[tuple[int, str]]:
    return [(k.steps, k.text) for k in K.of(cells, "pgd")]


def _pgd_long(cells: Mapping[str, Cell], kind: str) -> tuple[int, str] | None:
    found = K.of(cells, "pgd", kind)
    return (found[-1].steps, found[-1].text) if found else None


# ------------------------------------------------------------------- rules --
RowCheck = Callable[[AuditTable, str, Mapping[str, Cell]], Finding | None]


def _per_row(check: RowCheck) -> Callable[[AuditTable], list[Finding]]:
    """A rule read on every row of a table: ``check(table, row, cells)``, None where it does not apply."""
    return lambda t: [f for row, c in t.cells.items() if (f := check(t, row, c)) is not None]


def _shared(rule: consistency.Rule) -> RowCheck:
    """One of the shared consistency rules (:mod:`dwf_lab.evaluation.consistency`)."""
    def check(t: AuditTable, row: str, c: Mapping[str, Cell]) -> Finding | None:
        k = rule.check({m: x.mean for m, x in c.items()}, {m: x.n for m, x in c.items()}, t.pgd_eps)
        return None if k is None else Finding(
            rule.name, row, k.status, f"{metric_label(k.stronger)} leaves {k.a:.2f}%, {metric_label(k.weaker)} "
            f"{k.b:.2f}% ({k.excess:+.2f} points, {_z(k.excess, k.se)})", k.excess, k.se)
    return check


def rule_pgd_steps(t: AuditTable, row: str, c: Mapping[str, Cell]) -> Finding | None:
    pairs = [(a, b, c[b].mean - c[a].mean, math.hypot(c[a].se, c[b].se))
             for (_, a), (_, b) in pairwise(_pgd_steps(c))]
    if not pairs:
        return None
    a, b, excess, se = max(pairs, key=lambda p: (p[2] - Z * p[3], p[2]))   # the steepest rise
    step = f"{metric_label(a)} {c[a].mean:.2f}% → {metric_label(b)} {c[b].mean:.2f}%"
    if excess <= 0:
        return Finding("pgd-steps", row, "ok", f"accuracy never rises with more steps (closest: {step})", excess, se)
    return Finding("pgd-steps", row, _status(excess, se),
                   f"accuracy rises with more steps: {step} ({excess:+.2f} points, {_z(excess, se)})", excess, se)


def rule_restarts(t: AuditTable, row: str, c: Mapping[str, Cell]) -> Finding | None:
    ms = _pgd_long(c, "ms")
    others = [m for m in ([_pgd_long(c, "a")] + _pgd_steps(c)[-1:]) if m is not None and ms and m[0] <= ms[0]]
    if not others:
        return None
    weakest_bound = min((m for _, m in others), key=lambda m: c[m].mean)
    a, b = c[ms[1]], c[weakest_bound]
    excess, se = a.mean - b.mean, math.hypot(a.se, b.se)
    return Finding("restarts", row, _status(excess, se),
                   f"{metric_label(ms[1])} (restarts, worst case) leaves {a.mean:.2f}%, {metric_label(weakest_bound)} "
                   f"{b.mean:.2f}% ({excess:+.2f} points, {_z(excess, se)})", excess, se)


def rule_late_cliff(t: AuditTable, row: str, c: Mapping[str, Cell]) -> Finding | None:
    steps = _pgd_steps(c)
    long = _pgd_long(c, "a") or _pgd_long(c, "ms")
    if len(steps) < 2 or long is None or long[0] <= steps[-1][0]:
        return None
    (k0, m0), (k1, m1) = steps[0], steps[-1]
    first, late = c[m0].mean - c[m1].mean, c[m1].mean - c[long[1]].mean
    excess = late - first
    se = math.sqrt(c[m0].se ** 2 + 4 * c[m1].se ** 2 + c[long[1]].se ** 2)
    return Finding("late-cliff", row, _status(excess, se),
                   f"PGD-{k0} → PGD-{k1} loses {first:.2f} points, PGD-{k1} → {metric_label(long[1])} "
                   f"loses {late:.2f} ({excess:+.2f} points more late than early, {_z(excess, se)})", excess, se)


def rule_clean_bound(t: AuditTable, row: str, c: Mapping[str, Cell]) -> Finding | None:
    attacked = [m for m in c if m != "SA" and m not in DERIVED]
    if "SA" not in c or not attacked:
        return None
    top = max(attacked, key=lambda m: c[m].mean)
    excess, se = c[top].mean - c["SA"].mean, math.hypot(c[top].se, c["SA"].se)
    return Finding("clean-bound", row, _status(excess, se),
                   f"highest attacked accuracy {metric_label(top)} {c[top].mean:.2f}%, clean {c['SA'].mean:.2f}% "
                   f"({excess:+.2f} points)", excess, se)


def rule_undefended(t: AuditTable, row: str, c: Mapping[str, Cell]) -> Finding | None:
    pgd = consistency.pgd_columns(c)
    if row not in UNDEFENDED_ROWS or not pgd:
        return None
    strongest = min(pgd, key=lambda m: c[m].mean)
    s = c[strongest]
    excess = s.mean - UNDEFENDED_PGD_MAX
    return Finding("undefended", row, _status(excess, s.se),
                   f"an undefended network keeps {s.mean:.2f}% under its strongest PGD column "
                   f"({metric_label(strongest)}); expected at most about {UNDEFENDED_PGD_MAX:g}%", excess, s.se)


def rule_undefended_flat(t: AuditTable, row: str, c: Mapping[str, Cell]) -> Finding | None:
    steps = _pgd_steps(c)
    if row not in UNDEFENDED_ROWS or len(steps) < 2:
        return None
    (k0, m0), (k1, m1) = steps[0], steps[-1]
    a, b = c[m0], c[m1]
    drop, se = a.mean - b.mean, math.hypot(a.se, b.se)
    if a.mean <= UNDEFENDED_PGD_MAX:
        return Finding("undefended-flat", row, "ok", f"PGD-{k0} already leaves only {a.mean:.2f}%: nothing left to fall")
    excess = FLAT_FRACTION * a.mean - drop          # > 0: the curve falls by less than it should
    return Finding("undefended-flat", row, _status(excess, se),
                   f"PGD-{k0} {a.mean:.2f}% → PGD-{k1} {b.mean:.2f}%: {k1} steps instead of {k0} take "
                   f"{drop:.2f} points more from a network with no defence (a tenth of what is left "
                   f"would be {FLAT_FRACTION * a.mean:.2f}; {_z(excess, se)})", excess, se)


def rule_reference(t: AuditTable) -> list[Finding]:
    out = []
    if paper_dataset(t.dataset) != "cifar10" or t.dataset == "synthetic":
        return out
    for ref in REFERENCE_POINTS:
        cell = t.cells.get(ref.row, {}).get(ref.metric)
        if cell is None:
            continue
        se = math.hypot(cell.se, binomial_se(ref.value, PAPER_TEST_IMAGES["cifar10"]))
        excess = cell.mean - ref.value
        out.append(Finding("reference", ref.row, _status(excess, se),
                           f"{metric_label(ref.metric)} {cell.mean:.2f}% against {ref.value:.1f}% published by "
                           f"{ref.source} ({excess:+.2f} points, {_z(excess, se)})", excess, se))
    return out


@dataclass(frozen=True)
class Rule:
    name: str
    title: str       # what a sound evaluation shows
    points_to: str   # what a violation suggests
    check: Callable[[AuditTable], list[Finding]]


POINTS_TO = {"pgd-vs-fgsm": "gradient masking, or a PGD that is weaker than it should be",
             "eps-growth": "gradient masking: a bigger step should not help the model"}
RULES: tuple[Rule, ...] = tuple(Rule(r.name, r.description, POINTS_TO[r.name], _per_row(_shared(r)))
                                for r in consistency.RULES) + (
    Rule("pgd-steps", "more PGD iterations do no less damage", "a noisy or broken attack", _per_row(rule_pgd_steps)),
    Rule("restarts", "restarts and longer runs do no less damage",
         "columns that are not the attacks they are named", _per_row(rule_restarts)),
    Rule("late-cliff", "no cliff after a flattened PGD curve",
         "short attacks that had not converged, or a long attack that is another attack", _per_row(rule_late_cliff)),
    Rule("clean-bound", "no attacked accuracy above the clean one",
         "robust accuracy counted on other images than the clean one", _per_row(rule_clean_bound)),
    Rule("undefended", "an undefended network falls under PGD",
         "ε on the wrong scale (e.g. on normalized inputs), or an attack that does not reach the model",
         _per_row(rule_undefended)),
    Rule("undefended-flat", "more steps keep hurting an undefended network", "an attack that stalls",
         _per_row(rule_undefended_flat)),
    Rule("reference", "not above the best published results for the same recipe",
         "a result that needs more checking than the paper gives", rule_reference),
)
BY_NAME = {r.name: r for r in RULES}


def audit(table: AuditTable, rules: Sequence[str] | None = None) -> list[Finding]:
    """Every finding of the chosen rules (default: all of :data:`RULES`), rule by rule."""
    unknown = [r for r in rules or () if r not in BY_NAME]
    if unknown:
        raise ValueError(f"unknown audit rule(s) {unknown}; known: {', '.join(BY_NAME)}")
    chosen = [BY_NAME[r] for r in rules] if rules else list(RULES)
    return [f for rule in chosen for f in rule.check(table)]


def summary_rows(findings: Sequence[Finding]) -> list[dict]:
    """One row per rule that applied: how many rows it checked, passed, left within noise, flagged."""
    rows = []
    for rule in RULES:
        fs = [f for f in findings if f.rule == rule.name]
        if not fs:
            continue
        rows.append({"rule": rule.name, "a sound evaluation shows": rule.title, "rows": len(fs),
                     **{s: sum(f.status == s for f in fs) for s in STATUSES},
                     "flagged rows": ", ".join(dict.fromkeys(f.row for f in fs if f.status == "flagged")) or "—"})
    return rows


def finding_rows(findings: Sequence[Finding], statuses: Sequence[str] = ("flagged",)) -> list[dict]:
    """The findings with one of ``statuses``, as table rows (rule, model, status, detail)."""
    return [{"rule": f.rule, "model": f.row, "status": f.status, "detail": f.detail}
            for f in findings if f.status in statuses]


def rule_rows() -> list[dict]:
    """The rules as table rows: name, what a sound evaluation shows, what a violation points to."""
    return [{"rule": r.name, "a sound evaluation shows": r.title, "a violation points to": r.points_to}
            for r in RULES]


def audit_reading(findings: Sequence[Finding], label: str = "the table") -> str:
    """What the audit found, one bullet per rule that applied (markdown), computed from the findings."""
    lines = []
    for rule in RULES:
        fs = [f for f in findings if f.rule == rule.name]
        if not fs:
            continue
        flagged = list(dict.fromkeys(f.row for f in fs if f.status == "flagged"))
        noisy = list(dict.fromkeys(f.row for f in fs if f.status == "within noise"))
        text = f"- **{rule.name}** ({rule.title}), {len(fs)} check{'s' if len(fs) != 1 else ''}: "
        if flagged:
            text += f"**flagged for {', '.join(flagged)}** — points to {rule.points_to}"
        else:
            text += "nothing flagged"
        if noisy:
            text += f"; the wrong way but within noise for {', '.join(noisy)}"
        lines.append(text + ".")
    if not lines:
        return f"- No rule applies to {label}: it has none of the columns the rules read."
    return "\n".join(lines)
