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

The same rules read the paper's published Tables 2-3 (:func:`paper_table`) and a run's own
results (:func:`run_table`); notebook 08 runs both. A rule never proves an evaluation right:
it can only catch numbers that contradict each other.

| rule | what a sound evaluation shows | a violation points to |
|---|---|---|
| ``pgd-vs-fgsm`` | PGD at 8/255 (many steps in a ball that contains FGSM's at 0.03) leaves no more accuracy than one FGSM step at 0.03 | gradient masking, or a weak PGD |
| ``fgsm-eps`` | FGSM accuracy does not rise with ε | gradient masking (Carlini et al. 2019) |
| ``pgd-steps`` | more PGD iterations leave no more accuracy | a noisy or broken attack |
| ``restarts`` | PGD-100 with restarts leaves no more than one PGD-100 run, or than fewer steps | the columns are not the attacks they are named |
| ``late-cliff`` | a PGD curve that flattened by 50 steps does not fall further from 50 to 100 than from 10 to 50 | the short attacks had not converged, or the long one is another attack |
| ``clean-bound`` | no attacked accuracy above the clean accuracy | robust accuracy counted on other images |
| ``undefended`` | an undefended network keeps almost nothing (≤ :data:`UNDEFENDED_PGD_MAX` %) under PGD at 8/255 | ε on the wrong scale (e.g. on normalized inputs), or an attack that does not reach the model |
| ``undefended-flat`` | against an undefended network that still holds out, the most PGD steps take at least a tenth of what the fewest leave (:data:`FLAT_FRACTION`) | an attack that stalls |
| ``reference`` | no more than the best published numbers for the same recipe (:data:`REFERENCE_POINTS`) | a result that needs more checking than the paper gives |
"""
import math
import re
from dataclasses import dataclass, field
from typing import Callable, Iterable, Mapping, Sequence

from dwf_lab.evaluation.metrics import DERIVED
from dwf_lab.evaluation.records import infer_dataset, key_n, validated
from dwf_lab.models.zoo import ZOO
from dwf_lab.reporting.noise import Z, accuracy_se, binomial_se
from dwf_lab.reporting.paper import DATASET_LABELS, METRIC_FOR_COLUMN, TABLE_KEYS, paper_dataset, paper_tables
from dwf_lab.reporting.tables import aggregate

STATUSES = ("ok", "within noise", "flagged")

# test-set sizes behind the paper's numbers, and the training runs behind a row with a std
PAPER_TEST_IMAGES = {"cifar10": 10000, "svhn": 26032}
PAPER_RUNS = 5

# the plain networks of Tables 2-3 (no adversarial training); in a run, "ResNet-18" is the benign expert
UNDEFENDED_ROWS: frozenset[str] = frozenset(ZOO.values())
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
@dataclass(frozen=True)
class Cell:
    mean: float   # percent
    se: float     # standard error, points


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
                se = accuracy_se(value["mean"], n, value.get("std"), PAPER_RUNS)
                cells.setdefault(row, {})[METRIC_FOR_COLUMN[column]] = Cell(value["mean"], se)
    return AuditTable(f"the paper, {DATASET_LABELS[ds]}", ds, cells)


def run_table(results: Iterable[dict], dataset: str | None = None, label: str = "this run") -> AuditTable:
    """A run's evaluation records as a table: each row's mean over seeds, with the binomial
    standard error on its test images and the spread between seeds."""
    results = validated(results)
    dataset = infer_dataset(results, dataset)
    pgd_eps = 8 / 255
    for r in results:
        eps = (r.get("settings") or {}).get("pgd_eps")
        if isinstance(eps, (int, float)):
            pgd_eps = float(eps)

    def n_images(row: str, metric: str) -> int:
        # the fewest test images this metric covers in the row's records (attacks may use fewer)
        return min(key_n(r, metric) for r in results if r["row"] == row and r.get("n_test"))

    rows_with_n = {r["row"] for r in results if r.get("n_test")}
    cells: dict[str, dict[str, Cell]] = {}
    for row, metrics in aggregate(results, dataset).items():
        if row not in rows_with_n:
            continue
        cells[row] = {m: Cell(c["mean"], accuracy_se(c["mean"], n_images(row, m), c["std"], c["n"]))
                      for m, c in metrics.items()}
    return AuditTable(label, dataset, cells, pgd_eps)


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


def metric_label(metric: str) -> str:
    """'fgsm:0.03' -> 'FGSM 0.03', 'pgd:20' -> 'PGD-20', 'pgd:100-ms' -> 'PGD-100 (MS)'."""
    m = re.fullmatch(r"pgd:(\d+)(?:-(ms|a))?", metric)
    if m:
        return f"PGD-{m.group(1)}" + (f" ({m.group(2).upper()})" if m.group(2) else "")
    if metric.startswith("fgsm:"):
        return f"FGSM {metric[5:]}"
    return metric


def _fgsm(cells: Mapping[str, Cell]) -> list[tuple[float, str]]:
    return sorted((float(m[5:]), m) for m in cells if re.fullmatch(r"fgsm:[0-9.]+", m))


def _pgd_steps(cells: Mapping[str, Cell]) -> list[tuple[int, str]]:
    return sorted((int(m[4:]), m) for m in cells if re.fullmatch(r"pgd:\d+", m))


def _pgd_long(cells: Mapping[str, Cell], kind: str) -> tuple[int, str] | None:
    found = sorted((int(m[4:-len(kind) - 1]), m) for m in cells if re.fullmatch(rf"pgd:\d+-{kind}", m))
    return found[-1] if found else None


def _pgd_all(cells: Mapping[str, Cell]) -> list[str]:
    return [m for m in cells if re.fullmatch(r"pgd:\d+(-ms|-a)?", m)]


def _worst_rise(cells: Mapping[str, Cell], ordered: Sequence[str]) -> tuple[str, str, float, float] | None:
    """The consecutive pair (a, b) of ``ordered`` where accuracy rises most from a to b."""
    pairs = [(a, b, cells[b].mean - cells[a].mean, math.hypot(cells[a].se, cells[b].se))
             for a, b in zip(ordered, ordered[1:])]
    return max(pairs, key=lambda t: (t[2] - Z * t[3], t[2])) if pairs else None


def _rise_finding(rule: str, row: str, c: Mapping[str, Cell], a: str, b: str, excess: float, se: float,
                  what: str) -> Finding:
    step = f"{metric_label(a)} {c[a].mean:.2f}% → {metric_label(b)} {c[b].mean:.2f}%"
    if excess <= 0:
        return Finding(rule, row, "ok", f"accuracy never rises with {what} (closest: {step})", excess, se)
    return Finding(rule, row, _status(excess, se),
                   f"accuracy rises with {what}: {step} ({excess:+.2f} points, {_z(excess, se)})", excess, se)


# ------------------------------------------------------------------- rules --
def rule_pgd_vs_fgsm(t: AuditTable) -> list[Finding]:
    out = []
    if t.pgd_eps < 0.03:
        return out
    for row, c in t.cells.items():
        pgd = _pgd_all(c)
        if "fgsm:0.03" not in c or not pgd:
            continue
        strongest = min(pgd, key=lambda m: c[m].mean)
        f, s = c["fgsm:0.03"], c[strongest]
        excess, se = s.mean - f.mean, math.hypot(s.se, f.se)
        out.append(Finding("pgd-vs-fgsm", row, _status(excess, se),
                           f"the strongest PGD column ({metric_label(strongest)}, ε = 8/255) leaves {s.mean:.2f}%, "
                           f"one FGSM step at ε = 0.03 leaves {f.mean:.2f}% ({excess:+.2f} points, "
                           f"{_z(excess, se)})", excess, se))
    return out


def _no_rise(t: AuditTable, rule: str, columns, stronger: str) -> list[Finding]:
    """Per row: accuracy must not rise along ``columns(cells)`` (an ordered attack sweep)."""
    out = []
    for row, c in t.cells.items():
        rise = _worst_rise(c, [m for _, m in columns(c)])
        if rise is not None:
            out.append(_rise_finding(rule, row, c, *rise, stronger))
    return out


def rule_fgsm_eps(t: AuditTable) -> list[Finding]:
    return _no_rise(t, "fgsm-eps", _fgsm, "a larger ε")


def rule_pgd_steps(t: AuditTable) -> list[Finding]:
    return _no_rise(t, "pgd-steps", _pgd_steps, "more steps")


def rule_restarts(t: AuditTable) -> list[Finding]:
    out = []
    for row, c in t.cells.items():
        ms = _pgd_long(c, "ms")
        if ms is None:
            continue
        others = [m for m in ([_pgd_long(c, "a")] + _pgd_steps(c)[-1:]) if m is not None and m[0] <= ms[0]]
        if not others:
            continue
        weakest_bound = min((m for _, m in others), key=lambda m: c[m].mean)
        a, b = c[ms[1]], c[weakest_bound]
        excess, se = a.mean - b.mean, math.hypot(a.se, b.se)
        out.append(Finding("restarts", row, _status(excess, se),
                           f"{metric_label(ms[1])} (restarts, worst case) leaves {a.mean:.2f}%, {metric_label(weakest_bound)} "
                           f"{b.mean:.2f}% ({excess:+.2f} points, {_z(excess, se)})", excess, se))
    return out


def rule_late_cliff(t: AuditTable) -> list[Finding]:
    out = []
    for row, c in t.cells.items():
        steps = _pgd_steps(c)
        long = _pgd_long(c, "a") or _pgd_long(c, "ms")
        if len(steps) < 2 or long is None or long[0] <= steps[-1][0]:
            continue
        (k0, m0), (k1, m1) = steps[0], steps[-1]
        first, late = c[m0].mean - c[m1].mean, c[m1].mean - c[long[1]].mean
        excess = late - first
        se = math.sqrt(c[m0].se ** 2 + 4 * c[m1].se ** 2 + c[long[1]].se ** 2)
        out.append(Finding("late-cliff", row, _status(excess, se),
                           f"PGD-{k0} → PGD-{k1} loses {first:.2f} points, PGD-{k1} → {metric_label(long[1])} "
                           f"loses {late:.2f} ({excess:+.2f} points more late than early, {_z(excess, se)})",
                           excess, se))
    return out


def rule_clean_bound(t: AuditTable) -> list[Finding]:
    out = []
    for row, c in t.cells.items():
        attacked = [m for m in c if m != "SA" and m not in DERIVED]
        if "SA" not in c or not attacked:
            continue
        top = max(attacked, key=lambda m: c[m].mean)
        excess, se = c[top].mean - c["SA"].mean, math.hypot(c[top].se, c["SA"].se)
        out.append(Finding("clean-bound", row, _status(excess, se),
                           f"highest attacked accuracy {metric_label(top)} {c[top].mean:.2f}%, clean {c['SA'].mean:.2f}% "
                           f"({excess:+.2f} points)", excess, se))
    return out


def rule_undefended(t: AuditTable) -> list[Finding]:
    out = []
    for row, c in t.cells.items():
        pgd = _pgd_all(c)
        if row not in UNDEFENDED_ROWS or not pgd:
            continue
        strongest = min(pgd, key=lambda m: c[m].mean)
        s = c[strongest]
        excess = s.mean - UNDEFENDED_PGD_MAX
        out.append(Finding("undefended", row, _status(excess, s.se),
                           f"an undefended network keeps {s.mean:.2f}% under its strongest PGD column "
                           f"({metric_label(strongest)}); expected at most about {UNDEFENDED_PGD_MAX:g}%", excess, s.se))
    return out


def rule_undefended_flat(t: AuditTable) -> list[Finding]:
    out = []
    for row, c in t.cells.items():
        steps = _pgd_steps(c)
        if row not in UNDEFENDED_ROWS or len(steps) < 2:
            continue
        (k0, m0), (k1, m1) = steps[0], steps[-1]
        a, b = c[m0], c[m1]
        drop, se = a.mean - b.mean, math.hypot(a.se, b.se)
        if a.mean <= UNDEFENDED_PGD_MAX:
            out.append(Finding("undefended-flat", row, "ok",
                               f"PGD-{k0} already leaves only {a.mean:.2f}%: nothing left to fall", None, None))
            continue
        excess = FLAT_FRACTION * a.mean - drop          # > 0: the curve falls by less than it should
        out.append(Finding("undefended-flat", row, _status(excess, se),
                           f"PGD-{k0} {a.mean:.2f}% → PGD-{k1} {b.mean:.2f}%: {k1} steps instead of {k0} take "
                           f"{drop:.2f} points more from a network with no defence (a tenth of what is left "
                           f"would be {FLAT_FRACTION * a.mean:.2f}; {_z(excess, se)})", excess, se))
    return out


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


RULES: tuple[Rule, ...] = (
    Rule("pgd-vs-fgsm", "PGD at 8/255 does no less damage than one FGSM step at 0.03",
         "gradient masking, or a PGD that is weaker than it should be", rule_pgd_vs_fgsm),
    Rule("fgsm-eps", "FGSM accuracy does not rise with ε",
         "gradient masking: a bigger step should not help the model", rule_fgsm_eps),
    Rule("pgd-steps", "more PGD iterations do no less damage", "a noisy or broken attack", rule_pgd_steps),
    Rule("restarts", "restarts and longer runs do no less damage",
         "columns that are not the attacks they are named", rule_restarts),
    Rule("late-cliff", "no cliff after a flattened PGD curve",
         "short attacks that had not converged, or a long attack that is another attack", rule_late_cliff),
    Rule("clean-bound", "no attacked accuracy above the clean one",
         "robust accuracy counted on other images than the clean one", rule_clean_bound),
    Rule("undefended", "an undefended network falls under PGD",
         "ε on the wrong scale (e.g. on normalized inputs), or an attack that does not reach the model",
         rule_undefended),
    Rule("undefended-flat", "more steps keep hurting an undefended network", "an attack that stalls",
         rule_undefended_flat),
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
