"""Notebook 06's battery of adaptive attacks in the few calls the notebook makes.

The notebook teaches two attacks by having the learner write them (the DLR loss, the
gate-steering PGD) and then runs the whole battery: the kit's adaptive attacks and the official
AutoAttack on the key models (:func:`dwf_lab.pipeline.adaptive.evaluate_adaptive_run`), the
gradient-masking checklist and the look inside the mixture. What each cell shows of the battery
is one function here, so the notebook imports this module and not the dozen kit modules behind
it:

- :func:`settings` / :func:`settings_markdown`: the attacks' budgets for the run (the standard
  AutoAttack in the full scope, or when the run already stored it);
- :func:`train` and :func:`evaluate`: the models trained or loaded, then every attack evaluated
  (resumable: stored results are kept);
- :func:`tables`: the comparison table beside the paper's Table 3, its bar chart, the reading,
  and AutoAttack stage by stage;
- :func:`standard_suite`: the standard AutoAttack on a few images (or the command that runs it);
- :func:`checklists`: the gradient-masking checklist of every model and the mixture's evidence;
- :func:`inside`: each expert alone, the gate's weights under attack, transfer between them;
- :func:`convergence`: DWF's worst case at the budget and at twice it, against attack compute, with
  its verdict (resumable: the doubled attacks are stored with the run).
"""
from __future__ import annotations

from typing import Sequence

from dwf_lab.attacks.autoattack import label, official_autoattack
from dwf_lab.evaluation.adaptive import AdaptiveSettings
from dwf_lab.evaluation.attribution import attribution_rows
from dwf_lab.evaluation.diagnostics import DiagnosticSettings, diagnose_mixture
from dwf_lab.evaluation.records import load_checklist
from dwf_lab.evaluation.suite import scored_points
from dwf_lab.pipeline.adaptive import evaluate_adaptive_run, stored_autoattack_is_standard
from dwf_lab.pipeline.convergence import HEADLINE, convergence_run
from dwf_lab.pipeline.reproduce import evaluate_run, train_run
from dwf_lab.pipeline.run_all import report_run
from dwf_lab.reporting.figures import (
    accuracy_bars,
    convergence_figure,
    expert_accuracy_bar,
    transfer_heatmap,
    weights_bar,
)
from dwf_lab.reporting.paper import comparability_note
from dwf_lab.reporting.readings import adaptive_reading, autoattack_reading
from dwf_lab.reporting.render import markdown_table
from dwf_lab.reporting.tables import autoattack_stage_rows, checklist_overview, comparison_rows
from dwf_lab.training.stages import expert_stage_names

STANDARD_IMAGES = 10   # the standard AutoAttack's images on a GPU or at the smoke profile
TABLE_EXTRA = ("model", "seed", "images (paper / adaptive)", "paper PGD-20", "paper 100 (MS)")


def settings(p, run, seed: int, scope: str, stages: Sequence[str]) -> AdaptiveSettings:
    """The profile's attack budgets; the standard AutoAttack in the full scope, or where the run's
    models already have it stored (a run keeps it)."""
    s = AdaptiveSettings.from_profile(p)
    if scope == "full" or stored_autoattack_is_standard(run, seed, stages):
        s = s.standard_autoattack()     # the library's own budget (a run that has it keeps it)
    return s


def settings_markdown(s: AdaptiveSettings, seed: int) -> str:
    return (f"AutoAttack here: {label(s.attack_settings('autoattack', seed))}\n\n"
            + markdown_table([{"setting": k, "value": str(v)} for k, v in s.to_dict().items()], ["setting", "value"]))


def expert_names(p) -> list[str]:
    """The mixture's experts in its order (benign, fgsm-1, ..., pgd-1, ...)."""
    return expert_stage_names(p)


def train(run, seed: int, data) -> None:
    """Every stage of the run trained (finished ones are loaded, not retrained)."""
    train_run(run, seed, data)


def evaluate(run, seed: int, data, s: AdaptiveSettings, stages: Sequence[str], scope: str) -> list[dict]:
    """The paper's protocol and the adaptive attacks on ``stages``; returns their records. Stored
    results are kept; the full scope's standard AutoAttack replaces a smaller one."""
    train_run(run, seed, data)
    evaluate_run(run, seed, data, which=",".join(stages))
    records = evaluate_adaptive_run(run, seed, data, s, which=",".join(stages),
                                    replace=("autoattack",) if scope == "full" else ())
    report_run(run, data.name, data)   # the report's "Beyond the paper" table gets these columns
    return records


def tables(records: Sequence[dict], dataset: str) -> dict:
    """``{"rows", "columns", "comparison" (markdown, with the point each attack scores), "broken_by"
    (markdown: per model, the images broken by generic / router-aware / expert-aware attacks only, or
    several), "bars" (figure), "reading" (markdown),
    "autoattack" (markdown: stage by stage and in words)}``."""
    rows, cols = comparison_rows(records, dataset)
    attack_cols = [c for c in cols if c not in TABLE_EXTRA]
    return {"rows": rows, "columns": cols,
            "comparison": markdown_table(rows, cols) + f"\n\n*{comparability_note(dataset)}* "
                          f"*{scored_points(cols)}*",
            "broken_by": markdown_table(attribution_rows(records)),
            "bars": accuracy_bars(rows, attack_cols,
                                  title="Accuracy under each attack, and the per-image worst case (%)"),
            "reading": adaptive_reading(rows),
            "autoattack": markdown_table(autoattack_stage_rows(records)) + "\n\n" + autoattack_reading(records)}


def standard_suite(run, s: AdaptiveSettings, stages: Sequence[str], mixture, data, seed: int, device, p,
                   n: int = STANDARD_IMAGES) -> str:
    """The standard AutoAttack on DWF's first ``n`` test images (on a GPU, and at the smoke
    profile with the reduced budget, labelled so); on a CPU the command that runs it on the key
    models; or a line saying the table already is the standard suite."""
    if s.aa_budget() == s.standard_autoattack().aa_budget():
        return "The table above is already the standard suite, on the adaptive attacks' images."
    if device.type == "cpu" and p.name != "smoke":
        return ("The standard suite on this run's key models (it replaces the reduced-budget results; nothing is "
                f"relabelled):\n\n    python -m dwf_lab adaptive --run {run.name} --aa standard --redo autoattack "
                f"--stage {','.join(stages)}")
    budget = s.aa_budget() if p.name == "smoke" else None   # None: the standard budget
    aa = official_autoattack(mixture, data.x_test[:n], data.y_test[:n], eps=s.eps, seed=seed, batch_size=n,
                             budget=budget)
    return (f"{label(aa.settings)}, DWF, first {n} test images: {aa.robust:.0f}% robust (seconds per attack: "
            f"{aa.seconds})\n\n" + markdown_table([{"after": k, "robust accuracy (%)": v} for k, v in aa.stages.items()]))


def checklists(run, seed: int, stages: Sequence[str]) -> tuple[str, str]:
    """(every model's checklist at a glance, the mixture's checklist with its evidence), markdown."""
    named = {st: load_checklist(run.checklist_path(seed, st))["items"] for st in stages}
    ov_rows, ov_cols = checklist_overview(named)
    mixture_md = run.checklist_path(seed, "mixture", ".md")
    return (markdown_table(ov_rows, ov_cols),
            mixture_md.read_text(encoding="utf-8") if mixture_md.exists() else "No checklist for the mixture yet.")


def inside(mixture, data, p, seed: int) -> list:
    """Three figures: each expert alone (clean and under PGD on itself), the gate's weights on clean,
    FGSM and PGD inputs, and the transfer matrix between the experts and the mixture."""
    diag = diagnose_mixture(mixture, data.x_test, data.y_test, DiagnosticSettings.from_profile(p),
                            names=expert_stage_names(p), seed=seed)
    return [expert_accuracy_bar(diag["experts"]), weights_bar(diag["gate"]),
            transfer_heatmap(diag["transfer"]["accuracy"], diag["transfer"]["sources"])]


def convergence(run, seed: int, data, s: AdaptiveSettings | None = None, which: str = HEADLINE):
    """(markdown, figure): the worst case of ``which`` (default DWF's mixture) at the budget ``s``
    (default the profile's), at twice it and both per example, against the attacks' work in passes
    per image, and the verdict ("converged" only when doubling broke at most one image in 500)."""
    found = convergence_run(run, seed, data, s, which=which, progress=False)
    md = "\n\n".join(markdown_table(c["rows"], ["budget", "robust accuracy (%)", "images broken", "passes per image"])
                      + f"\n\n**{c['row']}**, first {c['n']} test images: {c['sentence']}" for c in found)
    fig = convergence_figure({c["row"]: c["rows"] for c in found})
    return md or f"No finished {which} in this run yet.", fig


__all__ = ["checklists", "convergence", "evaluate", "expert_names", "inside", "settings", "settings_markdown", "standard_suite",
           "tables", "train"]
