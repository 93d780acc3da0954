"""The reproduction of one seed: train the selected stages, then evaluate them.

:func:`train_run` and :func:`evaluate_run` are idempotent on a run directory: a finished
stage is never retrained, an interrupted one resumes from its last checkpoint, an existing
evaluation is not recomputed. A checkpoint in ``models/`` that is not this run's own (another
run's, dropped in) is refused before anything is evaluated or written
(:func:`dwf_lab.training.builders.check_fits_run`). The notebooks and the CLI both call these.
"""
import contextlib
import json
import sys
import time
from pathlib import Path

import torch

from dwf_lab.core import distributed
from dwf_lab.core.runtime import Runtime, seed_from
from dwf_lab.data import ImageData
from dwf_lab.evaluation.protocol import evaluate_and_write, protocol_settings
from dwf_lab.store.runs import Run, RunBusyError
from dwf_lab.training.builders import assemble_mixture, build_expert, load_run_model
from dwf_lab.training.fast_path import training_runtime
from dwf_lab.training.loop import train_stage
from dwf_lab.training.recipes import recipe
from dwf_lab.training.stages import select_stages


def stage_part(seed: int, stage: str) -> str:
    """The part of a run one process holds while it trains ``stage`` of ``seed`` (:meth:`Run.lock`)."""
    return f"seed-{seed}/{stage}"


@contextlib.contextmanager
def _held(run: Run, part: str, command: str, wait: float):
    """The part's lock, or (under torchrun, where every rank trains the same stage) nothing."""
    if distributed.env_world_size() > 1:
        yield
        return
    with run.lock(command, part, wait=wait):
        yield


WAIT_S = 7 * 24 * 3600   # a stage another process trains: wait for it (it holds the lock while it works)


def train_run(run: Run, seed: int, data: ImageData, which: str | None = None,
              progress: bool = True) -> dict[str, Path]:
    """Train the selected stages for one seed; finished stages are skipped.

    Each stage is trained under its own lock (:func:`stage_part`), so processes share a run: a stage
    another process is training is left for later, the next one is trained meanwhile, and before a
    stage that needs the others (the mixture needs every expert) this process waits for them."""
    out, later, rt = {}, [], {}
    for stage in select_stages(run.profile, which):
        if recipe(stage.kind).model == "mixture":
            for st in later:                      # the experts it is assembled from: done first
                out[st.name] = _train_stage(run, seed, data, st, progress, WAIT_S, rt)
            later = []
        try:
            out[stage.name] = _train_stage(run, seed, data, stage, progress, 0, rt)
        except RunBusyError as busy:
            print(f"[dwf-lab] {stage.name} (seed {seed}) is being trained by another process: "
                  f"this one goes on and waits for it later ({busy})", file=sys.stderr)
            later.append(stage)
    for st in later:
        out[st.name] = _train_stage(run, seed, data, st, progress, WAIT_S, rt)
    return out


def _train_stage(run: Run, seed: int, data: ImageData, stage, progress: bool, wait: float,
                 runtime: dict) -> Path:
    """One stage, under its lock (waiting up to ``wait`` s for another holder); its model's path.
    ``runtime``: this call of :func:`train_run`'s runtime, decided when something first trains."""
    p = run.profile
    path = run.model_path(seed, stage.name)
    if path.exists():
        return path
    log = run.logger(seed) if distributed.is_main() else (lambda rec: None)   # torchrun: rank 0 logs
    with _held(run, stage_part(seed, stage.name), "train", wait):
        if path.exists():            # another process finished it while this one waited
            return path
        rt = runtime.get("rt")
        if rt is None:   # only when something trains: on a CPU "auto" runs a probe of a few seconds
            rt = runtime["rt"] = training_runtime(p)
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
    return path


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
        with run.lock("evaluate", f"seed-{seed}/eval-{stage.name}", wait=WAIT_S):   # one evaluator per model
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


