"""The MoE peers of Tables 2-3 as stages of a run: SoE, ADVMoE and the gate-less uniform ensemble.

:func:`train_and_evaluate_baselines` trains ``soe`` and ``advmoe`` (models in
:mod:`dwf_lab.mixture`, recipes in :mod:`dwf_lab.training.recipes`) and evaluates them with
the paper's protocol (SoE with both the hard and the BPDA gradient, per-example worst case),
and evaluates :func:`~dwf_lab.training.builders.uniform_ensemble`, the run's trained experts
averaged without a gate. Results are the rows "SoE", "ADVMoE" and "Uniform ensemble" of the
run's evaluation files; finished trainings and existing results are reused. Every choice
where the papers or their code are ambiguous is listed in ``docs/baselines.md``.
"""
import dataclasses
import json
import time

import torch

from dwf_lab.attacks.precision import precision_for
from dwf_lab.core.runtime import seed_from
from dwf_lab.evaluation.protocol import evaluate_and_write, evaluate_soe, protocol_settings
from dwf_lab.evaluation.records import write_result
from dwf_lab.training.builders import build_baseline, load_run_model, uniform_ensemble
from dwf_lab.training.fast_path import training_runtime
from dwf_lab.training.loop import train_stage
from dwf_lab.training.stages import BASELINE_ROWS, baseline_stages


def train_and_evaluate_baselines(run, seed: int, data, progress: bool = True,
                                 which=("soe", "advmoe", "uniform-ensemble"),
                                 device: str | None = None) -> list[dict]:
    """Train SoE and ADVMoE as stages of the run, evaluate them and the uniform ensemble.

    Models go to ``run.model_path(seed, "soe" | "advmoe")``, results to
    ``run.eval_path(seed, name)`` in the format of every other row (rows
    "SoE", "ADVMoE", "Uniform ensemble"), so the report picks them up.
    Idempotent: finished trainings and existing results are reused.
    """
    unknown = set(which) - set(BASELINE_ROWS)
    if unknown:
        raise ValueError(f"unknown baselines {sorted(unknown)}; choose from {sorted(BASELINE_ROWS)}")
    p = run.profile
    rt = training_runtime(p)
    dev = torch.device(device) if device else rt.device
    log = run.logger(seed)
    for stage in baseline_stages(p):
        if stage.name not in which or run.is_done(seed, stage.name):
            continue
        torch.manual_seed(seed_from(seed, stage.sid))
        model = build_baseline(stage.kind, p, data)
        t0 = time.time()
        train_stage(model, data, stage, p, seed=seed, ckpt_dir=run.ckpt_dir(seed, stage.name),
                    final_path=run.model_path(seed, stage.name), runtime=rt, log=log, progress=progress)
        log({"event": "stage_time", "stage": stage.name, "seconds": time.time() - t0})
    results = []
    for name in which:
        path = run.eval_path(seed, name)
        if path.exists():
            results.append(json.loads(path.read_text()))
            continue
        row = BASELINE_ROWS[name]
        if name == "uniform-ensemble":
            model = uniform_ensemble(run, seed, data).to(dev)
            s = protocol_settings(p, "uniform_ensemble")
            results.append(evaluate_and_write(
                model, data.x_test, data.y_test, s, path, name=name, row=row, seed=seed,
                dataset=data.name, device=dev, progress=progress,
                extra={"stage_kind": "uniform_ensemble",
                       "note": "the run's trained experts averaged with equal weights, no gate, "
                               "no end-to-end training"}))
            continue
        if not run.is_done(seed, name):
            raise FileNotFoundError(f"{name} is not trained for seed {seed}")
        model = load_run_model(run, seed, name, data, map_location=dev)   # refuses another run's file
        s = protocol_settings(p, name)
        s = dataclasses.replace(s, precision=precision_for(model, s.precision))   # SoE, ADVMoE: fp32
        if name == "soe":
            t0 = time.time()
            metrics, correct, per_mode = evaluate_soe(model, data.x_test, data.y_test, s, seed=seed,
                                                      device=dev, progress=progress)
            results.append(write_result(
                path, model=name, row=row, seed=seed, dataset=data.name, metrics=metrics,
                correct=correct, settings=s, elapsed_s=time.time() - t0,
                extra={"stage_kind": "soe", "gradient_modes": per_mode,
                       "note": "hard-argmax selection: every attack is run with the hard model's "
                               "gradient and with the soft relaxation's (BPDA); per example the "
                               "worse outcome counts"}))
        else:
            results.append(evaluate_and_write(
                model, data.x_test, data.y_test, s, path, name=name, row=row, seed=seed,
                dataset=data.name, device=dev, progress=progress,
                extra={"stage_kind": "advmoe",
                       "note": "attacked through the straight-through top-1 routing"}))
    return results
