"""Notebook 07's baselines and ablations in the few calls the notebook makes.

The notebook's own lesson is the ablation the learner makes by hand (the uniform average of the
run's trained experts against DWF, on the same images, with the paired difference) and the
reading of the ablation table. Training and evaluating the baselines and the variants, and
turning their records into tables, is the kit's work; each cell's share of it is one function
here, so the notebook imports this module and not the eight kit modules behind it:

- :func:`train`, :func:`baselines`, :func:`ablations`: train (or load) and evaluate;
- :func:`baselines_markdown`, :func:`soe_markdown`, :func:`plan_markdown`,
  :func:`ablations_markdown`, :func:`ablations_figure`: what the cells show;
- :func:`ablation_records` and :func:`ablation_differences`: each variant's stored per-image
  results, and each variant's difference from the reference, paired and unpaired;
- :func:`expert_names`, :func:`stored_record`: the experts in composition order, an evaluation
  record of the run.
"""
from __future__ import annotations

import json
import math
from typing import Sequence

from dwf_lab.evaluation.consistency import binomial_se
from dwf_lab.evaluation.records import stored_correct
from dwf_lab.pipeline.ablations import run_ablations
from dwf_lab.pipeline.baselines import train_and_evaluate_baselines
from dwf_lab.pipeline.reproduce import train_run
from dwf_lab.reporting.figures import ablation_bar_chart
from dwf_lab.reporting.noise import paired_difference
from dwf_lab.reporting.render import markdown_table
from dwf_lab.reporting.tables import ablation_plan_rows, ablation_table, gradient_mode_rows, metric_rows
from dwf_lab.training.variants import composition_order


def train(run, seed: int, data) -> None:
    """Every stage of the run trained (finished ones are loaded, not retrained)."""
    train_run(run, seed, data)


def expert_names(p) -> list[str]:
    """The experts in composition order: benign, then FGSM and PGD alternating."""
    return composition_order(p)


def _columns(p) -> list[str]:
    return ["SA"] + [f"pgd:{k}" for k in p.eval_pgd_steps] + ["worst-case"]


def baselines(run, seed: int, data, which: Sequence[str]) -> list[dict]:
    """Train and evaluate the baselines ``which`` (SoE, ADVMoE, the uniform ensemble); their results."""
    return train_and_evaluate_baselines(run, seed, data, which=which)


def baselines_markdown(results: Sequence[dict], p) -> str:
    cols = _columns(p)
    return markdown_table(metric_rows(results, cols), ["model"] + cols)


def soe_markdown(results: Sequence[dict], p) -> str:
    soe = next((r for r in results if r["model"] == "soe"), None)
    if soe is None:
        return 'SoE is trained and evaluated in the "full" scope only (scope = "full" in the parameters cell).'
    return markdown_table(gradient_mode_rows(soe, _columns(p)))


def plan_markdown(p, names: Sequence[str]) -> str:
    return markdown_table(ablation_plan_rows(p, names))


def ablations(run, seed: int, data, names: Sequence[str]) -> list[dict]:
    """Train and evaluate the variants ``names`` (resumable); writes report/ablations.md."""
    return run_ablations(run, seed, data, names=names)


def ablations_markdown(run) -> str:
    return (run.report_dir / "ablations.md").read_text(encoding="utf-8")


def ablations_figure(run):
    return ablation_bar_chart(ablation_table(run))


def ablation_records(run, seed: int) -> dict[str, dict]:
    """``{variant: its evaluation record}`` of the variants this seed has evaluated."""
    out = {}
    for row in ablation_table(run):
        if seed in row["seeds"]:
            path = run.ablation_dir(seed, row["variant"]) / "eval.json"
            if path.exists():
                out[row["variant"]] = json.loads(path.read_text(encoding="utf-8"))
    return out


def ablation_differences(run, seed: int, metric: str = "pgd:20",
                         reference: str = "reference") -> tuple[dict, dict]:
    """``(paired, unpaired)``: per variant, ``(difference, paired se)`` from the reference on the same
    images (:func:`~dwf_lab.reporting.noise.paired_difference`), and the unpaired
    sqrt(se₁² + se₂²) of the two rows' own binomial errors (for comparison)."""
    recs = ablation_records(run, seed)
    if reference not in recs:
        return {}, {}
    ref = stored_correct(recs[reference], metric)
    paired, unpaired = {}, {}
    for name, rec in recs.items():
        if name == reference or metric not in rec.get("per_example", {}):
            continue
        mine = stored_correct(rec, metric)
        d, se, n = paired_difference(mine, ref)
        paired[name] = (d, se)
        a, b = 100 * float(mine.float().mean()), 100 * float(ref.float().mean())
        unpaired[name] = math.hypot(binomial_se(a, n), binomial_se(b, n))
    return paired, unpaired


def stored_record(run, seed: int, stage: str) -> dict | None:
    """The evaluation record of one model of the run (``eval/<stage>_seed<k>.json``), or None."""
    path = run.eval_path(seed, stage)
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else None


__all__ = ["ablation_differences", "ablation_records", "ablations", "ablations_figure", "ablations_markdown",
           "baselines", "baselines_markdown", "expert_names", "plan_markdown", "soe_markdown", "stored_record",
           "train"]
