"""The whole reproduction, stage by stage: data -> experts -> baselines -> mixture -> evaluation -> report.

Every function is idempotent on a run directory: a finished stage is never
retrained, an interrupted one resumes from its last checkpoint, an existing
evaluation is not recomputed. The notebooks and the CLI both call these.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import torch
import torch.nn as nn

from dwf_lab import distributed
from dwf_lab.checkpoints import load_model
from dwf_lab.data import ImageData, load_dataset, seed_from
from dwf_lab.evaluate import EvalSettings, evaluate_and_write
from dwf_lab.models import build_model
from dwf_lab.profiles import Profile
from dwf_lab.runs import Run
from dwf_lab.train import Runtime, Stage, plan_stages, train_stage

EXPERT_KINDS = ("benign", "fgsm", "pgd")
KEY_KINDS = ("benign", "fgsm_at", "pgd_at", "mixture")   # evaluated with the long PGD columns


def load_data(p: Profile) -> ImageData:
    """The profile's dataset (with its fallback), class-stratified to n_train / n_test."""
    return load_dataset(p.dataset, n_train=p.n_train, n_test=p.n_test, seed=0, fallback=p.fallback)


def _model_kwargs(p: Profile, data: ImageData) -> dict:
    c, h, _ = data.shape
    return {"num_classes": data.num_classes, "width": p.width, "in_channels": c, "dataset": data.norm_key}


def build_expert(p: Profile, data: ImageData) -> nn.Module:
    return build_model("resnet18", **_model_kwargs(p, data))


def build_mixture(p: Profile, data: ImageData, routing: str = "soft") -> nn.Module:
    kw = _model_kwargs(p, data)
    return build_model("dwf_mixture", n_experts=p.n_experts, image_size=data.shape[1],
                       gate_hidden=p.gate_hidden, routing=routing, **kw)


def expert_stage_names(p: Profile) -> list[str]:
    return [s.name for s in plan_stages(p) if s.kind in EXPERT_KINDS]


def select_stages(p: Profile, which: str | None) -> list[Stage]:
    """'all', 'experts', 'baselines', 'mixture', a kind ('fgsm') or a stage name ('pgd-2'), comma-separated."""
    stages = plan_stages(p)
    if not which or which == "all":
        return stages
    picked = []
    for token in which.split(","):
        token = token.strip()
        group = {"experts": [s for s in stages if s.kind in EXPERT_KINDS],
                 "baselines": [s for s in stages if s.kind in ("fgsm_at", "pgd_at")],
                 "mixture": [s for s in stages if s.kind in ("gate", "mixture")]}.get(token)
        if group is None:
            group = [s for s in stages if token in (s.name, s.kind)]
        if not group:
            raise ValueError(f"no stage {token!r} in this profile; stages: "
                             f"{', '.join(s.name for s in stages)} (or all/experts/baselines/mixture)")
        picked += [s for s in group if s not in picked]
    return [s for s in stages if s in picked]   # keep training order


def assemble_mixture(run: Run, seed: int, data: ImageData, routing: str = "soft") -> nn.Module:
    """A fresh mixture whose experts are the run's trained experts (gate untrained;
    ``routing="uniform"``: no gate at all, the plain average of the experts)."""
    p = run.profile
    names = expert_stage_names(p)
    missing = [n for n in names if not run.is_done(seed, n)]
    if missing:
        raise FileNotFoundError(f"the mixture needs its trained experts first; missing: "
                                f"{', '.join(missing)}. Run: python -m dwf_lab train --stage experts "
                                f"--run {run.name}")
    torch.manual_seed(seed_from(seed, 9001))
    return load_experts_into(build_mixture(p, data, routing=routing),
                             [run.model_path(seed, n) for n in names])


def load_experts_into(mix: nn.Module, paths) -> nn.Module:
    """Load trained expert checkpoints into a mixture's experts, in order."""
    for i, path in enumerate(paths):
        mix.experts[i].load_state_dict(load_model(path, expect_arch="resnet18").state_dict())
    return mix


def train_run(run: Run, seed: int, data: ImageData, which: str | None = None,
              progress: bool = True) -> dict[str, Path]:
    """Train the selected stages for one seed; finished stages are skipped."""
    p = run.profile
    rt = Runtime.from_profile(p)
    log = run.logger(seed) if distributed.is_main() else (lambda rec: None)   # torchrun: rank 0 logs
    out = {}
    for stage in select_stages(p, which):
        path = run.model_path(seed, stage.name)
        if path.exists():
            out[stage.name] = path
            continue
        if stage.kind in ("gate", "mixture"):
            model = assemble_mixture(run, seed, data)
            if stage.kind == "mixture" and p.gate_epochs > 0:
                if not run.is_done(seed, "gate"):
                    raise FileNotFoundError("gate_epochs > 0: train the gate stage before the mixture")
                model.load_state_dict(load_model(run.model_path(seed, "gate")).state_dict())
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
    import json
    if not distributed.is_main():
        return []
    p = run.profile
    dev = torch.device(device) if device else Runtime.from_profile(p).device
    results = []
    for stage in select_stages(p, which):
        if stage.kind == "gate" or not run.is_done(seed, stage.name):
            continue
        path = run.eval_path(seed, stage.name)
        if path.exists():
            results.append(json.loads(path.read_text()))
            continue
        model = load_model(run.model_path(seed, stage.name), map_location=dev)
        long = p.eval_long_for == "all" or stage.kind in KEY_KINDS
        s = EvalSettings.from_profile(p, long=long)
        extra = {"stage_kind": stage.kind}
        if stage.name == "benign":
            extra["note"] = "the plain ResNet-18 row is the benign expert (standard training)"
        results.append(evaluate_and_write(model, data.x_test, data.y_test, s, path, name=stage.name,
                                          row=stage.row, seed=seed, dataset=data.name, device=dev,
                                          progress=progress, extra=extra))
    return results


def report_run(run: Run, dataset: str | None = None) -> dict:
    """Tables 2-3 and the "beyond" table from the run's results, then AutoAttack stage by stage,
    the gradient-masking checklists and the ablation table where they exist. ``dataset`` None: the one the results name."""
    from dwf_lab import ablations, adaptive, checklist
    from dwf_lab.report import write_report
    sections = [sec for sec in (adaptive.autoattack_section(run.eval_dir),
                                checklist.report_section(run.report_dir), ablations.report_section(run))
                if sec is not None]
    return write_report(run.eval_dir, run.report_dir, dataset, sections=sections)


def run_all(p: Profile, run_name: str | None = None, which: str | None = None,
            progress: bool = True, beyond: bool = False) -> Run:
    """Train, evaluate and report every seed of a profile, without Jupyter.

    ``beyond`` adds what the paper did not run itself: SoE, ADVMoE and the uniform
    ensemble under the same protocol, the adaptive attacks with the per-example worst
    case over all of them, and the ablation table.
    """
    run = Run(run_name or p.name, p)
    data = load_data(p)
    print(f"[dwf-lab] run {run.name} at {run.root}: profile {p.name}, data {data.name} "
          f"({len(data.x_train)} train / {len(data.x_test)} test), seeds {list(p.seeds)}",
          file=sys.stderr)
    if distributed.world() > 1:
        # torchrun: every rank trains every seed, then rank 0 alone evaluates and reports
        # (ranks never wait in a collective while rank 0 evaluates)
        for seed in p.seeds:
            train_run(run, seed, data, which, progress)
        if distributed.is_main():
            for seed in p.seeds:
                evaluate_run(run, seed, data, which, progress)
            report_run(run, data.name)
        return run
    for seed in p.seeds:
        train_run(run, seed, data, which, progress)
        evaluate_run(run, seed, data, which, progress)
        if beyond:
            from dwf_lab.ablations import run_ablations
            from dwf_lab.adaptive import evaluate_adaptive_run
            from dwf_lab.baselines import train_and_evaluate_baselines
            if p.baselines:
                train_and_evaluate_baselines(run, seed, data, progress=progress)
            evaluate_adaptive_run(run, seed, data, progress=progress, which=which)
            run_ablations(run, seed, data, progress=progress)
    report_run(run, data.name)
    return run
