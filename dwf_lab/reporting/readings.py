"""Prose computed from numbers: what a run's results say, never written by hand.

- :func:`protocol_reading`: the paper's protocol (Tables 2-3) of a run, beside the published numbers;
- :func:`adaptive_reading`: per model, the strongest attack beyond the paper and how far the
  worst case over all attacks falls below the paper's attacks;
- :func:`autoattack_reading`: per model, what each attack of the official AutoAttack took away;
- :func:`gate_reading`: what the gate does with clean, FGSM and PGD inputs;
- :func:`overfitting_verdicts`: catastrophic overfitting in a per-epoch checkpoint watch;
- :func:`describe_profile`: a profile's settings beside the paper's Table 5;
- :func:`verdict` / :func:`verdict_reading`: DWF's worst case against its baselines and the plain
  average of its experts, with standard errors (paired on the same images where the records
  hold per-image results), and which differences are within noise;
- :func:`audit_checks`: the audit's checks in two lists, the rules a sound evaluation obeys and the
  priors a better method may break;
- :func:`course_lessons`: what the course showed, each lesson stated only when the run's numbers
  support it, with its caveat.
"""
import math
from dataclasses import asdict
from typing import Mapping, Sequence

import numpy as np

from dwf_lab.attacks.autoattack import STAGE_NAMES
from dwf_lab.core.config import PROFILES, Profile
from dwf_lab.evaluation import consistency
from dwf_lab.evaluation import keys as K
from dwf_lab.evaluation.metrics import WORST
from dwf_lab.evaluation.records import infer_dataset, validated
from dwf_lab.reporting.audit import PAPER_RUNS, PAPER_TEST_IMAGES, audit, paper_table, rule_rows, run_table
from dwf_lab.reporting.audit import RULES as AUDIT_RULES
from dwf_lab.reporting.noise import Comparison, Z, accuracy_se, compare, paired_compare, run_cells
from dwf_lab.reporting.paper import DATASET_LABELS, comparability_note, is_comparable, paper_dataset, paper_value
from dwf_lab.reporting.render import markdown_table
from dwf_lab.reporting.tables import AA_STAGES, aggregate, autoattack_stage_rows
from dwf_lab.training.stages import expert_kind
from dwf_lab.training.variants import BY_NAME as ABLATION_BY_NAME


def adaptive_reading(rows: Sequence[dict]) -> str:
    """A few sentences per model, computed from :func:`comparison_rows` (markdown bullets)."""
    skip = {"model", "seed", "SA", "worst-case", WORST, "paper PGD-20", "paper 100 (MS)"}
    lines = []
    for r in rows:
        att = {k: v for k, v in r.items() if k not in skip and isinstance(v, (int, float))
               and not isinstance(v, bool)}   # accuracies only (not the "images" column)
        if not att:
            continue
        strongest = min(att, key=att.get)
        text = f"- **{r['model']}**: the strongest single attack is `{strongest}` ({att[strongest]:.1f}%)"
        ours, wc = r.get("worst-case"), r.get(WORST)
        if wc is not None:
            if ours is not None:
                drop = ours - wc
                text += (f"; per image, the paper's attacks together leave {ours:.1f}% and all attacks "
                         f"{wc:.1f}%" + (f", **{drop:.1f} points lower**" if drop >= 0.05 else
                                          ", no lower: the adaptive attacks found nothing new"))
            else:
                text += f"; the worst case over all attacks leaves {wc:.1f}%"
        gate = {k: att[k] for k in ("routing", "transfer-best") if k in att}
        plain = [v for k, v in att.items() if K.parse(k).attack == "pgd-adaptive"]
        if gate and plain:
            best_gate = min(gate, key=gate.get)
            if gate[best_gate] < min(plain) - 0.05:
                text += (f". The gate-aware `{best_gate}` attack beats plain PGD "
                         f"({gate[best_gate]:.1f}% vs {min(plain):.1f}%): the mixture's PGD numbers "
                         "overstate its robustness")
            else:
                text += (f". The gate-aware attacks do not beat plain PGD here ({gate[best_gate]:.1f}% "
                         f"vs {min(plain):.1f}%)")
        paper = r.get("paper PGD-20")
        if paper is not None and wc is not None:
            text += f". The paper reports {paper:.1f}% under PGD-20 for this row"
        lines.append(text + ".")
    return "\n".join(lines) if lines else "- No adaptive results yet."


def autoattack_reading(records: Sequence[dict]) -> str:
    """Per model, the official AutoAttack stage by stage (:func:`autoattack_stage_rows`) in words:
    which attack took how many points, and whether Square, which needs no gradient, broke images
    the white-box attacks left (markdown bullets)."""
    lines = []
    for r in autoattack_stage_rows(records):
        stages = [(k, r[k]) for k in AA_STAGES if r.get(k) is not None]
        if len(stages) < 2:
            continue
        drops = [(k, before - after) for (_, before), (k, after) in zip(stages, stages[1:])]
        took = [f"{STAGE_NAMES.get(k, k)} {d:.1f}" for k, d in drops if d >= 0.05]
        text = (f"- **{r['model']}** ({r['suite']}): {stages[0][1]:.1f}% clean, {stages[-1][1]:.1f}% after the "
                f"suite; points taken: " + (", ".join(took) if took else "none"))
        rest = sum(d for _, d in drops[1:])
        if rest >= 0.05:
            text += (f". APGD-CE alone (the cross-entropy) would have overstated its robustness by "
                     f"{rest:.1f} points")
        square = dict(drops).get("square", 0.0)
        if square >= 0.05:
            text += (f". Square, which never looks at a gradient, breaks {square:.1f} points that every "
                     "white-box attack left: its gradients hide adversarial examples")
        lines.append(text + ".")
    return "\n".join(lines) if lines else "- No AutoAttack stages recorded yet."


# ===================================================== reading the results ==
def _mean(agg: Mapping, row: str, metric: str) -> float | None:
    cell = agg.get(row, {}).get(metric)
    return None if cell is None else cell["mean"]


def _pgd_metrics(agg: Mapping, rows: Sequence[str]) -> list[int]:
    ks = None
    for r in rows:
        have = {k.steps for k in K.of(agg.get(r, {}), "pgd")}
        ks = have if ks is None else ks & have
    return sorted(ks or [])


def _vs(a: float, b: float) -> str:
    d = a - b
    if abs(d) < 0.05:
        return "level with"
    return f"{abs(d):.1f} points {'above' if d > 0 else 'below'}"


def protocol_reading(results: Sequence[Mapping], dataset: str | None = None) -> str:
    """A short reading of an evaluation, every statement computed from the numbers.

    ``results``: evaluation records (``dwf_lab.report.load_results(run.eval_dir)``).
    Compares DWF with PGD-AT, FGSM-AT and the plain ResNet-18 where measured, with the
    paper's gap where the paper has one, checks the usual signs of gradient masking,
    and says how comparable the run is. Returns markdown (a bullet list).
    """
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
        longs = K.of(agg[dwf], "pgd", "ms")
        if ks and longs:
            a, b = _mean(agg, dwf, K.pgd(ks[-1])), _mean(agg, dwf, longs[-1].text)
            lines.append(f"- A stronger attack ({longs[-1].steps} steps, "
                         f"restarts) moves DWF from {a:.1f}% (PGD-{ks[-1]}) to {b:.1f}%"
                         + (": longer attacks still find new adversarial examples."
                            if b < a - 0.5 else "."))
    # gradient-masking signs, per row: the shared consistency rules, as in the audit and the checklist
    found = audit(run_table(results, dataset), [r.name for r in consistency.RULES])
    flags = "; ".join(f"{f.row}: {f.detail}" for f in found if f.status == "flagged")
    rules = "; ".join(r.description for r in consistency.RULES)
    lines.append(f"- **Signs of gradient masking** ({rules}), beyond two binomial standard errors: {flags}. "
                 "Treat those rows' robustness as unproven." if flags else
                 f"- No model shows the usual signs of gradient masking here ({rules}: never "
                 "broken by more than two binomial standard errors of the difference).")
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
            ("expert_epochs", "expert epochs"), ("benign_epochs", "benign expert epochs (None = expert epochs)"),
            ("mixture_epochs", "end-to-end epochs"),
            ("baseline_epochs", "baseline epochs"), ("pgd_steps_choices", "training PGD steps"),
            ("eval_pgd_steps", "evaluation PGD steps"), ("eval_long_steps", "long PGD steps"),
            ("seeds", "seeds")]
    rows = [{"setting": label, "this run": str(getattr(p, k)), "paper": str(getattr(paper, k))}
            for k, label in keys]
    return markdown_table(rows, ["setting", "this run", "paper"])


def gate_reading(stats: Mapping) -> str:
    """A few sentences on what the gate does, computed from
    :func:`dwf_lab.evaluation.diagnostics.gate_statistics`."""
    names = list(stats["experts"])
    n = len(names)
    uniform = math.log(n) if n > 1 else 0.0
    inputs = list(stats["inputs"].values())
    lines = []
    for st in inputs:
        h = st["entropy"]
        ratio = h / uniform if uniform > 0 else 1.0
        shape = ("almost uniform — the mixture behaves like a plain average of its experts"
                 if ratio > 0.95 else "spread over several experts" if ratio > 0.6
                 else "concentrated on few experts")
        gw = st["group_weight"]
        top_group = max(gw, key=gw.get)
        size = sum(expert_kind(nm) == top_group for nm in names)
        lines.append(f"- {st['label']} inputs: gate entropy {h:.2f} nats of at most {uniform:.2f} ({shape}); "
                     f"the {size} {top_group} expert{'s' if size != 1 else ''} get "
                     f"{100 * gw[top_group]:.0f}% of the weight ({100 * size / n:.0f}% if uniform); "
                     f"mixture accuracy {st['accuracy']:.1f}%.")
    if len(inputs) >= 2:
        first, last = inputs[0], inputs[-1]
        w, acc = np.asarray(last["mean_weights"]), np.asarray(last["expert_accuracy"])
        tv = 0.5 * float(np.abs(np.asarray(first["mean_weights"]) - w).sum())
        lines.append(f"- From {first['label']} to {last['label']} inputs the average routing moves by a "
                     f"total variation of {tv:.3f} (0 = the same weights, 1 = disjoint experts)"
                     + (": the gate hardly reacts to the attack." if tv < 0.02 else "."))
        k, heavy, best = last["label"], int(np.argmax(w)), int(np.argmax(acc))
        if acc[heavy] >= acc[best] - 1e-9:
            lines.append(f"- On {k} inputs the heaviest expert, {names[heavy]}, is also (one of) the "
                         f"most accurate on them ({acc[heavy]:.1f}%).")
        else:
            lines.append(f"- On {k} inputs the heaviest expert is {names[heavy]} (accuracy "
                         f"{acc[heavy]:.1f}% on those inputs), but {names[best]} is right more often "
                         f"({acc[best]:.1f}%): the gate does not trust the best expert most.")
    return "\n".join(lines)


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


# ================================================================ verdict ==
# what DWF is held against in the verdict, and where a run gets each row
VERDICT_ROWS: dict[str, str] = {
    "ResNet-18 (PGD-AT)": "notebook 05 (`python -m dwf_lab evaluate`)",
    "ResNet-18 (FGSM-AT)": "notebook 05 (`python -m dwf_lab evaluate`)",
    "SoE": "notebook 07 with `scope=\"full\"` (`python -m dwf_lab baselines`)",
    "ADVMoE": "notebook 07 with `scope=\"full\"` (`python -m dwf_lab baselines`)",
    "Uniform ensemble": "notebook 07 (`python -m dwf_lab baselines`)",
    "ResNet-18": "notebook 05 (`python -m dwf_lab evaluate`)",
}
DWF_FROM = "notebook 05 (`python -m dwf_lab evaluate`)"
UNIFORM = "Uniform ensemble"
PGD_AT = "ResNet-18 (PGD-AT)"
WORST_CASES = (WORST, "worst-case")   # over every attack run; over the paper's attacks
# the ablation that tests the gate alone: the same end-to-end training, the gate replaced by equal weights
GATE_ALONE = "routing-uniform"


def _difference(results: Sequence[Mapping], a: tuple[str, str], b: tuple[str, str],
                cell_a: Mapping, cell_b: Mapping) -> Comparison:
    """a − b with the paired standard error on the same images where the records allow it
    (:func:`~dwf_lab.reporting.noise.paired_compare`), else the unpaired one from the two cells."""
    return (paired_compare(results, a, b)
            or compare(cell_a["mean"], cell_a["se"], cell_b["mean"], cell_b["se"]))


def verdict(results: Sequence[Mapping], dataset: str | None = None) -> dict:
    """DWF's per-image worst case against each row of :data:`VERDICT_ROWS`, with standard errors.

    Each comparison uses the worst case both rows have: over every attack run (``worst-case
    (all)``, after the adaptive attacks) when both have it, else over the paper's attacks
    (``worst-case``), so neither row is held to attacks the other escaped. Standard errors of
    each accuracy: :func:`dwf_lab.reporting.noise.accuracy_se` (the test images, and the seeds
    where there are several). The error of a difference is **paired** when both rows have
    per-image results on the same images (:func:`~dwf_lab.reporting.noise.paired_compare`: the
    models were attacked on the same images, so their errors are correlated), else unpaired,
    the two errors combined as if independent; each row says which (``"SE of the difference"``).
    A difference is "within noise" up to two standard errors of it.
    Returns ``{"dataset", "dwf": {metric: {"mean", "se", "n", "seeds"}} | None, "n_test", "seeds",
    "rows": [one dict per comparison], "missing": [{"model", "why"}]}``: nothing is left out
    silently, a row the run lacks is listed with where it comes from.
    """
    results = validated(results)
    out: dict = {"dataset": None, "dwf": None, "n_test": None, "seeds": 0, "rows": [], "missing": []}
    dataset = out["dataset"] = infer_dataset(results, dataset) if results else None
    cells = run_cells(results, dataset) if results else {}

    def cell(row: str, metric: str) -> dict | None:
        c = cells.get(row, {}).get(metric)
        return None if c is None else asdict(c)

    def why(row: str, where: str) -> str:
        if any(r["row"] == row for r in results):
            return f"evaluated, but without a per-image worst case; evaluate it again with {where}"
        return f"not evaluated yet; it comes from {where}"

    dwf = {m: cell("DWF", m) for m in WORST_CASES}
    if not any(dwf.values()):
        out["missing"] = [{"model": r, "why": why(r, w)} for r, w in {"DWF": DWF_FROM, **VERDICT_ROWS}.items()
                          if not any(cell(r, m) for m in WORST_CASES)]
        return out
    out["dwf"] = {m: c for m, c in dwf.items() if c}
    head = WORST if WORST in out["dwf"] else "worst-case"
    out["n_test"], out["seeds"] = out["dwf"][head]["n"], max(c["seeds"] for c in out["dwf"].values())
    for row, where in VERDICT_ROWS.items():
        metric = next((m for m in WORST_CASES if dwf[m] and cell(row, m)), None)
        if metric is None:
            out["missing"].append({"model": row, "why": why(row, where)})
            continue
        a, b = dwf[metric], cell(row, metric)
        cmp = _difference(results, ("DWF", metric), (row, metric), a, b)
        out["rows"].append({"model": row, "metric": metric, "DWF": a["mean"], "DWF ± SE": a["se"],
                            "model %": b["mean"], "model ± SE": b["se"], "DWF − model": cmp.difference,
                            "± SE": cmp.se, "SE of the difference": f"paired, {cmp.n} images" if cmp.paired
                            else "unpaired", "paired": cmp.paired, "images": cmp.n,
                            "reading": cmp.reading("DWF higher", "DWF lower")})
    return out


VERDICT_COLUMNS = ("model", "metric", "DWF", "DWF ± SE", "model %", "model ± SE", "DWF − model", "± SE",
                   "SE of the difference", "reading")


def verdict_reading(v: Mapping) -> str:
    """The verdict of :func:`verdict` in a few sentences (markdown bullets), every one computed;
    each difference says whether its standard error is paired (same images) or unpaired."""
    lines = []
    if v["dwf"] is None:
        lines.append("- DWF has no per-image worst case in this run yet, so there is no verdict to state.")
    else:
        head = WORST if WORST in v["dwf"] else "worst-case"
        c = v["dwf"][head]
        what = ("over every attack the run made, the adaptive ones included" if head == WORST
                else "over the paper's attacks (the adaptive attacks of notebook 06 have not run on it)")
        seeds = f", mean of {v['seeds']} training runs" if v["seeds"] > 1 else ", one training run"
        lines.append(f"- **DWF keeps {c['mean']:.1f}% ± {c['se']:.1f}%** of {v['n_test']} test images in the "
                     f"per-image worst case {what}{seeds} (± here and below: one standard error, from the "
                     "test images and, over several runs, the seeds).")
        for r in v["rows"]:
            metric = "all attacks" if r["metric"] == WORST else "the paper's attacks"
            if r["reading"] == "within noise":
                said = "**within noise**: this run cannot tell them apart"
            else:
                said = f"**DWF {'higher' if r['DWF − model'] > 0 else 'lower'}**, beyond noise"
            how = (f"paired standard error on the same {r['images']} images" if r["paired"] else
                   "unpaired standard error: the two rows have no per-image results on the same images")
            other = ("the plain average of its own experts (the uniform ensemble: no gate, no end-to-end "
                     "training)" if r["model"] == UNIFORM else r["model"])
            lines.append(f"- Against {other}: {r['DWF']:.1f}% vs {r['model %']:.1f}% ({metric}), "
                         f"a difference of {r['DWF − model']:+.1f} ± {r['± SE']:.1f} points ({how}) — {said}.")
        uni = next((r for r in v["rows"] if r["model"] == UNIFORM), None)
        if uni is not None:
            lines.append("- So in this run the gate and the end-to-end phase, together, "
                         + ("add nothing measurable over averaging the trained experts"
                            if uni["reading"] == "within noise" else
                            f"{'add' if uni['DWF − model'] > 0 else 'cost'} {abs(uni['DWF − model']):.1f} "
                            "points of worst-case accuracy over averaging the trained experts")
                         + f" (the gate alone is the ablation `{GATE_ALONE}` of notebook 07: the same "
                           "end-to-end training, equal weights instead of the gate).")
    lines += [f"- Missing: {m['model']} — {m['why']}." for m in v["missing"]]
    if v["dataset"]:
        lines.append(f"- {comparability_note(v['dataset'])}")
    return "\n".join(lines)


# ================================================================== audit ==
# the audit's checks (reporting.audit.RULES) that are priors: what published work leads one to expect,
# which a better method or an unusual model may break; every other check is a rule
AUDIT_PRIORS: frozenset[str] = frozenset({"late-cliff", "undefended", "undefended-flat", "reference"})


def audit_checks() -> dict[str, list[dict]]:
    """The audit's checks as table rows (:func:`~dwf_lab.reporting.audit.rule_rows`) in two lists:
    ``"rules"``, which a sound evaluation obeys whatever the model (a violation says the numbers
    contradict each other or the attack), and ``"priors"`` (:data:`AUDIT_PRIORS`), expectations from
    published work that a better method may break (a violation asks for evidence; it proves no error)."""
    rows = rule_rows()
    return {"rules": [r for r in rows if r["rule"] not in AUDIT_PRIORS],
            "priors": [r for r in rows if r["rule"] in AUDIT_PRIORS]}


def _rule_names() -> list[str]:
    return [r.name for r in AUDIT_RULES if r.name not in AUDIT_PRIORS]


# ================================================================ lessons ==
# the profile fields that make a run the paper's scale (the rest changes no number's meaning)
SCALE = ("dataset", "n_train", "width", "n_fgsm_experts", "n_pgd_experts", "expert_epochs", "benign_epochs",
         "mixture_epochs", "pgd_steps_choices")


def _flagged(findings) -> str:
    by_rule: dict[str, list[str]] = {}
    for f in findings:
        if f.status == "flagged":
            by_rule.setdefault(f.rule, []).append(f.row)
    return "; ".join(f"`{rule}` for {', '.join(dict.fromkeys(rows))}" for rule, rows in by_rule.items())


def course_lessons(results: Sequence[Mapping], ablations: Sequence[Mapping] = (),
                   dataset: str | None = None, profile: Profile | None = None) -> list[str]:
    """What the course showed, in sentences (markdown), each computed from the run's numbers and
    stated only when they support it, each with its caveat (the run's scale and seeds).

    ``results``: the run's evaluation records (notebook 05-07); ``ablations``: the ablation
    variants' records (``seed-*/ablations/*/eval.json``; optional); ``profile``: the run's
    profile (optional; it names the scale, and whether it is the paper's). A difference is claimed only
    beyond :data:`~dwf_lab.reporting.noise.Z` standard errors (paired on the same images where the
    records allow); within that, the sentence says the run cannot tell. A lesson whose numbers the
    run lacks is left out; no DWF result at all gives an empty list.
    """
    results = validated(results)
    if not results:
        return []
    dataset = infer_dataset(results, dataset)
    cells = run_cells(results, dataset)
    dwf = cells.get("DWF", {})
    if not dwf:
        return []
    v = verdict(results, dataset)
    rows = {r["model"]: r for r in v["rows"]}
    lessons: list[str] = []
    name = f"the {profile.name} profile, " if profile is not None else ""
    paper_scale = profile is not None and all(getattr(profile, f) == getattr(PROFILES["paper"], f) for f in SCALE)

    def scale(n: int, seeds: int) -> str:
        return f"at this scale, {name}{n:,} test images, {'one seed' if seeds == 1 else f'{seeds} seeds'}"

    def where(metric: str) -> str:
        return "over every attack the run made" if metric == WORST else "over the paper's attacks"

    # 1 · DWF against one adversarially trained ResNet-18, in the per-image worst case
    r = rows.get(PGD_AT)
    if r is not None:
        a, b, d, se = r["DWF"], r["model %"], r["DWF − model"], r["± SE"]
        kind = "paired" if r["paired"] else "unpaired"
        caveat = scale(r["images"] or v["n_test"], v["seeds"])
        if d < -Z * se:
            lessons.append(f"DWF's worst-case robust accuracy ({a:.1f}%) is below PGD-AT's ({b:.1f}%), "
                           f"{where(r['metric'])}: {d:+.1f} ± {se:.1f} points ({kind} SE), beyond noise — one "
                           f"adversarially trained ResNet-18 is more robust than the mixture ({caveat}).")
        elif d > Z * se:
            lessons.append(f"DWF's worst-case robust accuracy ({a:.1f}%) is above PGD-AT's ({b:.1f}%), "
                           f"{where(r['metric'])}: {d:+.1f} ± {se:.1f} points ({kind} SE), beyond noise "
                           f"({caveat}).")
        else:
            lessons.append(f"This run cannot tell DWF's worst-case robust accuracy ({a:.1f}%) from PGD-AT's "
                           f"({b:.1f}%), {where(r['metric'])}: {d:+.1f} ± {se:.1f} points ({kind} SE) is within "
                           f"noise, which is not the same as equal ({caveat}).")

    # 2 · what attacks beyond PGD take from DWF
    ks = _pgd_metrics(aggregate(results, dataset), ["DWF"])
    worst = next((m for m in WORST_CASES if m in dwf), None)
    if ks and worst is not None:
        k = 20 if 20 in ks else ks[-1]
        pgd = K.pgd(k)
        cmp = _difference(results, ("DWF", pgd), ("DWF", worst), asdict(dwf[pgd]), asdict(dwf[worst]))
        drop, what = cmp.difference, ("every attack the run made, the adaptive ones included" if worst == WORST
                                      else "the paper's attacks (the adaptive attacks have not run on it)")
        caveat = scale(min(dwf[pgd].n, dwf[worst].n), dwf[worst].seeds)
        if drop > Z * cmp.se:
            lessons.append(f"DWF loses accuracy to attacks beyond the paper's PGD-{k}: PGD-{k} leaves "
                           f"{cmp.a:.1f}%, the per-image worst case over {what} {cmp.b:.1f}% ({drop:.1f} ± "
                           f"{cmp.se:.1f} points lower) — PGD-{k} alone overstates its robustness ({caveat}).")
        else:
            lessons.append(f"On DWF, the attacks beyond PGD-{k} find nothing measurable: PGD-{k} leaves "
                           f"{cmp.a:.1f}%, the per-image worst case over {what} {cmp.b:.1f}%, {drop:.1f} ± "
                           f"{cmp.se:.1f} points lower, within noise ({caveat}).")

    # 3 · the paper's headline claim
    published = paper_value("table3", dataset, "DWF", "20") if dataset else None
    if published is not None and published[0] is not None and "pgd:20" in dwf:
        x, paper = dwf["pgd:20"], published[0]
        caveat = scale(x.n, x.seeds)
        if not is_comparable(dataset):
            lessons.append(f"The paper's {paper:.1f}% PGD-20 for DWF cannot be tested on this run's data "
                           f"({dataset}): we measure {x.mean:.1f} ± {x.se:.1f}% on images the paper's number "
                           f"says nothing about ({caveat}).")
        else:
            ds = paper_dataset(dataset)
            runs = PAPER_RUNS if published[1] is not None else 1
            cmp = compare(x.mean, x.se, paper, accuracy_se(paper, PAPER_TEST_IMAGES[ds], published[1], runs))
            if cmp.difference < -Z * cmp.se:
                lessons.append(f"The paper's {paper:.1f}% PGD-20 claim for DWF is not reproduced at this scale: "
                               f"we measure {x.mean:.1f} ± {x.se:.1f}% ({caveat}"
                               + (")." if paper_scale else "; a training run smaller than the paper's is "
                                  "expected to score lower, so this is no refutation either)."))
            elif cmp.difference > Z * cmp.se:
                lessons.append(f"DWF's PGD-20 here ({x.mean:.1f} ± {x.se:.1f}%) is above the paper's "
                               f"{paper:.1f}% ({caveat}).")
            else:
                lessons.append(f"DWF's PGD-20 here ({x.mean:.1f} ± {x.se:.1f}%) is within noise of the paper's "
                               f"{paper:.1f}% ({caveat}); PGD-20 is an upper bound, the worst case above is "
                               "the number to hold it to.")

    # 4 · what the gate and the end-to-end phase add: the untrained average, then the gate alone
    r = rows.get(UNIFORM)
    if r is not None:
        a, b, d, se = r["DWF"], r["model %"], r["DWF − model"], r["± SE"]
        caveat = scale(r["images"] or v["n_test"], v["seeds"])
        what = (f"worst case {a:.1f}% vs {b:.1f}% for the untrained average of its own experts, "
                f"{d:+.1f} ± {se:.1f} points")
        if d > Z * se:
            lessons.append(f"DWF's gate and end-to-end training, together, beat averaging its trained experts: "
                           f"{what} ({caveat}).")
        elif d < -Z * se:
            lessons.append(f"Averaging DWF's trained experts beats DWF itself: {what}; the gate and the "
                           f"end-to-end training, together, cost robustness here ({caveat}).")
        else:
            lessons.append(f"This run cannot tell DWF from averaging its trained experts: {what}, within noise; "
                           f"no evidence here that the gate and the end-to-end training add robustness "
                           f"({caveat}).")
    lessons += [f"{text} ({scale(n, seeds)})." for text, n, seeds in _gate_alone(ablations)]

    # 5 · the consistency rules: on this run, and on the paper's own tables
    names = _rule_names()
    found = audit(run_table(results, dataset), names)
    if found:
        n, seeds = v["n_test"] or dwf[next(iter(dwf))].n, v["seeds"] or dwf[next(iter(dwf))].seeds
        flagged = _flagged(found)
        lessons.append(f"This run breaks consistency rules beyond noise: {flagged}; those rows' robustness is "
                       f"unproven until it is explained ({scale(n, seeds)})." if flagged else
                       f"No model of this run breaks a consistency rule beyond noise ({len(found)} checks): "
                       f"that proves nothing, a rule only catches numbers that contradict each other "
                       f"({scale(n, seeds)}).")
    ds = paper_dataset(dataset)
    if ds in PAPER_TEST_IMAGES:
        flagged = _flagged(audit(paper_table(ds), names))
        if flagged:
            lessons.append(f"The paper's own Tables 2-3 ({DATASET_LABELS[ds]}) break consistency rules beyond noise: "
                           f"{flagged}. DWF's published numbers come from the same attacks, so they need an "
                           f"explanation the paper does not give (published numbers, "
                           f"{PAPER_TEST_IMAGES[ds]:,} test images each).")
    return lessons


def _gate_alone(ablations: Sequence[Mapping]) -> list[tuple[str, int, int]]:
    """The gate alone: the ablation reference against the trained uniform average (:data:`GATE_ALONE`),
    under PGD-20 and paired where both have per-image results, as (sentence, images, seeds); nothing
    without both."""
    if not ablations:
        return []
    ref, uni = ABLATION_BY_NAME["reference"].label, ABLATION_BY_NAME[GATE_ALONE].label
    recs = validated([r for r in ablations if r.get("row") in (ref, uni)])
    cells = run_cells(recs) if recs else {}
    a, b = cells.get(ref, {}).get("pgd:20"), cells.get(uni, {}).get("pgd:20")
    if a is None or b is None:
        return []
    cmp = _difference(recs, (ref, "pgd:20"), (uni, "pgd:20"), asdict(a), asdict(b))
    d, se = cmp.difference, cmp.se
    what = (f"PGD-20 {cmp.a:.1f}% for DWF (the ablation reference) vs {cmp.b:.1f}% for the trained uniform "
            f"average (ablation `{GATE_ALONE}`: the same end-to-end training, no gate), {d:+.1f} ± {se:.1f} "
            f"points, {'paired' if cmp.paired else 'unpaired'} SE")
    if d > Z * se:
        text = f"The gate itself adds robustness: {what}"
    elif d < -Z * se:
        text = f"The gate itself costs robustness: {what}"
    else:
        text = (f"This run cannot tell the gate from equal weights: {what}, within noise; no evidence here "
                "that the gate itself adds robustness")
    return [(text, min(a.n, b.n), min(a.seeds, b.seeds))]


def paper_claim(dataset: str = "cifar10") -> dict:
    """The claim the course tests, read from the paper's Tables 2-3 (never typed): DWF's clean
    accuracy and its accuracy under PGD-20 on ``dataset``, each mean and std over the paper's five
    runs, with a sentence. ``{"clean": (mean, std), "pgd20": (mean, std), "text": str}``."""
    clean, pgd20 = paper_value("table2", dataset, "DWF", "SA"), paper_value("table3", dataset, "DWF", "20")
    if clean is None or pgd20 is None:
        raise ValueError(f"the paper reports no DWF row for {dataset!r}")
    label = DATASET_LABELS[paper_dataset(dataset)]
    text = (f"The paper's claim (Tables 2 and 3): on {label}, DWF keeps {clean[0]:.1f} % ± {clean[1]:.1f} of the "
            f"clean test images and {pgd20[0]:.1f} % ± {pgd20[1]:.1f} under PGD-20 at ε = 8/255 "
            f"(mean ± std over the paper's {PAPER_RUNS} runs).")
    return {"clean": clean, "pgd20": pgd20, "text": text}


def logit_scale_reading(spread: Mapping, min_ratio: float = 1.5) -> str:
    """What :func:`dwf_lab.course.analyses.logit_spread` measured, in words: the benign expert's
    logits spread ``ratio`` times wider than the robust experts'; the sentence that a weighted sum
    of logits follows the benign expert is said only when the ratio is at least ``min_ratio`` and
    the benign expert's share of the mixture's logit scale exceeds its share of the gate's weight."""
    ratio, benign = spread.get("ratio"), spread.get("benign")
    rows = {r["expert"]: r for r in spread.get("rows", [])}
    if ratio is None or benign not in rows:
        return "No benign expert in this mixture: nothing to compare its logit scale with."
    b = rows[benign]
    measured = (f"The benign expert's logits spread {ratio:.1f}x as wide as the robust experts' (mean per-image "
                f"standard deviation over the classes: {b['std']:.2f} against {spread['robust_std']:.2f}).")
    if ratio >= min_ratio and b["share"] > b["weight"]:
        return (measured + f" Eq. 1 sums logits, so scale is a vote: with {100 * b['weight']:.0f} % of the gate's "
                f"weight the benign expert carries {100 * b['share']:.0f} % of the mixture's logit scale, and where "
                "an attack swings its logits the weighted sum follows them, unless the gate moves its weight away.")
    return measured + (" At this ratio, and with this weight, the logit scale alone does not explain why the "
                       "mixture follows one expert.")


def tradeoff_reading(rows: Sequence[Mapping], attack: str, mixture: str = "DWF mixture",
                     n: int | None = None) -> str:
    """Clean against ``attack`` accuracy of each expert and the mixture (rows as
    :func:`dwf_lab.course.analyses.robustness` gives them): the experts' trade-off in words, and
    whether the mixture escapes it here -- no expert at least as accurate *and* as robust, and a
    point above the line joining the experts around its clean accuracy. With ``n`` (the images
    measured) the binomial standard error is quoted, and a gap smaller than it is called noise."""
    experts = [r for r in rows if r["model"] != mixture]
    mix = next((r for r in rows if r["model"] == mixture), None)
    if mix is None or len(experts) < 2:
        return "Not enough models to read a trade-off."
    se = accuracy_se(50.0, n) if n else 0.0   # the largest standard error on n images (at 50 %), in points
    robust = max(experts, key=lambda r: r[attack])
    clean = max(experts, key=lambda r: r["clean"])
    out = [f"Among the experts, the most accurate on clean images ({clean['model']}, {clean['clean']:.0f} % clean) "
           f"keeps {clean[attack]:.0f} % under {attack}; the most robust ({robust['model']}, {robust[attack]:.0f} %) "
           f"keeps {robust['clean']:.0f} % clean."]
    traded = robust["clean"] < clean["clean"] - se and robust[attack] > clean[attack] + se
    if traded:
        out.append("Adversarial training bought robustness with clean accuracy, as the trade-off predicts.")
    else:
        out.append("On these images the experts do not show the trade-off beyond noise.")
    beats = [r for r in experts if r["clean"] >= mix["clean"] + se and r[attack] >= mix[attack] + se]
    where = f"The mixture sits at {mix['clean']:.0f} % clean, {mix[attack]:.0f} % under {attack}"
    if beats:
        out.append(where + f": {', '.join(r['model'] for r in beats)} {'is' if len(beats) == 1 else 'are'} more "
                   "accurate and more robust at once, so here the mixture does not escape the trade-off.")
        return " ".join(out)
    if not traded:
        out.append(where + ": with no trade-off among its experts, there is none for it to escape here.")
        return " ".join(out)
    pts = sorted((r["clean"], r[attack]) for r in experts)
    left = [p for p in pts if p[0] <= mix["clean"]]
    right = [p for p in pts if p[0] >= mix["clean"]]
    if left and right:
        (c0, a0), (c1, a1) = max(left, key=lambda p: p[1]), max(right, key=lambda p: p[1])
        line = a0 if c1 == c0 else a0 + (a1 - a0) * (mix["clean"] - c0) / (c1 - c0)
        if mix[attack] > line + se:
            out.append(where + f", above the line joining its experts ({line:.0f} % at that clean accuracy): "
                       "here it escapes the experts' trade-off.")
        else:
            out.append(where + f", not above the line joining its experts ({line:.0f} % at that clean accuracy): "
                       "here it trades like they do.")
    else:
        side = "cleaner" if not right else "less accurate"
        out.append(where + f": {side} than every expert, and no expert is both more accurate and more robust.")
    if n:
        out.append(f"(On {n} images a percentage is uncertain by up to ± {se:.1f} points: smaller gaps are noise.)")
    return " ".join(out)


def linear_gain_reading(rows: Sequence[Mapping]) -> str:
    """What :func:`dwf_lab.course.analyses.linear_model_gain` measured, in words: how much ε‖w‖₁
    grew from the smallest to the largest input dimension, beside the margins; the sentence that
    it grows with d is said only when it rose at every step."""
    if len(rows) < 2:
        return "One input dimension only: nothing to compare."
    first, last = rows[0], rows[-1]
    gains = [r["eps*|w|_1"] for r in rows]
    said = (f"From d = {first['d']} to d = {last['d']}, ε‖w‖₁ went from {gains[0]:.2f} to {gains[-1]:.2f} "
            f"({gains[-1] / gains[0]:.1f}x), the median margin from {first['median |margin|']:.2f} to "
            f"{last['median |margin|']:.2f}, and accuracy under δ* from {first['attacked %']:.0f} % to "
            f"{last['attacked %']:.0f} %.")
    if all(b > a for a, b in zip(gains, gains[1:])):
        if gains[-1] / gains[0] > last["median |margin|"] / max(first["median |margin|"], 1e-12):
            return said + (" The same ε = 8/255 per pixel shifts the score more the more pixels there are, and "
                           "faster than the typical margin grows: in high dimension a tiny ε is enough.")
        return said + (" The same ε = 8/255 per pixel shifts the score more the more pixels there are, but on "
                       "these data the typical margin grew as fast, so the attack gained nothing on it.")
    return said + " Here ε‖w‖₁ did not grow at every step with d: on these data the fit's weights shrank as d grew."
