"""The reproduction of one seed: train the selected stages, then evaluate them.

:func:`train_run` and :func:`evaluate_run` are idempotent on a run directory: a finished
stage is never retrained, an interrupted one resumes from its last checkpoint, an existing
evaluation is not recomputed. A checkpoint in ``models/`` that is not this run's own (another
run's, dropped in) is refused before anything is evaluated or written
(:func:`dwf_lab.training.builders.check_fits_run`). The notebooks and the CLI both call these.
"""
import json
import sys
import time
from pathlib import Path

import torch

from dwf_lab.core import distributed
from dwf_lab.core.runtime import Runtime, seed_from
from dwf_lab.data import ImageData
from dwf_lab.evaluation.protocol import evaluate_and_write, protocol_settings
from dwf_lab.store.runs import Run
from dwf_lab.training.builders import assemble_mixture, build_expert, load_run_model
from dwf_lab.training.fast_path import training_runtime
from dwf_lab.training.loop import train_stage
from dwf_lab.training.recipes import recipe
from dwf_lab.training.stages import select_stages


def train_run(run: Run, seed: int, data: ImageData, which: str | None = None,
              progress: bool = True) -> dict[str, Path]:
    """Train the selected stages for one seed; finished stages are skipped."""
    p = run.profile
    rt = None
    log = run.logger(seed) if distributed.is_main() else (lambda rec: None)   # torchrun: rank 0 logs
    out = {}
    for stage in select_stages(p, which):
        path = run.model_path(seed, stage.name)
        if path.exists():
            out[stage.name] = path
            continue
        if rt is None:   # only when something trains: on a CPU "auto" runs a probe of a few seconds
            rt = training_runtime(p)
            if rt.fast_path is not None:
                log({"event": "fast_path", **rt.fast_path})
                print(f"[dwf-lab] CPU fast path: {rt.fast_path['choice']} (measured images/s: "
                      f"{rt.fast_path['images_per_s']})", file=sys.stderr)
        r = recipe(stage.kind)
        if r.model == "mixture":
            model = assemble_mixture(run, seed, data)
            if not r.gate_only and p.gate_epochs > 0:
                if not run.is_done(seed, "gate"):
                    raise FileNotFoundError("gate_epochs > 0: train the gate stage before the mixture")
                model.load_state_dict(load_run_model(run, seed, "gate", data).state_dict())
        else:
            torch.manual_seed(seed_from(seed, stage.sid))
            model = build_expert(p, data)
        t0 = time.time()
        train_stage(model, data, stage, p, seed=seed, ckpt_dir=run.ckpt_dir(seed, stage.name),
                    final_path=path, runtime=rt, log=log, progress=progress)
        log({"event": "stage_time", "stage": stage.name, "seconds": time.time() - t0})
        out[stage.name] = path
    return out


def evaluate_run(run: Run, seed: int, data: ImageData, which: str | None = None,
                 progress: bool = True, device: str | None = None) -> list[dict]:
    """Evaluate every finished stage of a seed (existing results are kept).

    Under torchrun only rank 0 evaluates (the others return an empty list).
    """
    if not distributed.is_main():
        return []
    p = run.profile
    dev = torch.device(device) if device else Runtime.from_profile(p).device
    results = []
    for stage in select_stages(p, which):
        if recipe(stage.kind).gate_only or not run.is_done(seed, stage.name):
            continue
        path = run.eval_path(seed, stage.name)
        if path.exists():
            results.append(json.loads(path.read_text()))
            continue
        model = load_run_model(run, seed, stage, data, map_location=dev)   # refuses another run's file
        s = protocol_settings(p, stage.kind)
        extra = {"stage_kind": stage.kind}
        if stage.name == "benign":
            extra["note"] = "the plain ResNet-18 row is the benign expert (standard training)"
        results.append(evaluate_and_write(model, data.x_test, data.y_test, s, path, name=stage.name,
                                          row=stage.row, seed=seed, dataset=data.name, device=dev,
                                          progress=progress, extra=extra))
    return results


