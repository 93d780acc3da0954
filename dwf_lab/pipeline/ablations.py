"""The ablations of a run: train and evaluate each variant of :mod:`dwf_lab.training.variants`.

Each variant starts from the run's trained experts, trains for the profile's
``mixture_epochs`` on the same data order and with the same per-step random draws
as the run's "mixture" stage, and is evaluated the same way: clean accuracy (SA),
PGD-20 (eps 8/255, step 2/255, random start) through the whole model, and the
per-example worst case of the two.

Layout (idempotent: a variant with an ``eval.json`` is not touched again)::

    runs/<run>/seed-<k>/ablations/<variant>/
        model.safetensors   checkpoints/   metrics.jsonl   eval.json
    runs/<run>/report/ablations.json, ablations.md   (all seeds found)

Main entry point: :func:`run_ablations`.
"""
import json
import time
from pathlib import Path

import torch

from dwf_lab.core.config import Profile
from dwf_lab.core.runtime import Runtime, seed_from
from dwf_lab.evaluation.protocol import ablation_eval_settings, evaluate_and_write, stored_subset
from dwf_lab.evaluation.records import write_result
from dwf_lab.reporting.render import write_ablation_report
from dwf_lab.reporting.tables import ablation_row
from dwf_lab.store.checkpoints import load_model
from dwf_lab.training.builders import build_expert
from dwf_lab.training.fast_path import for_evaluation, training_runtime
from dwf_lab.training.loop import train_stage
from dwf_lab.training.stages import expert_stage_names, plan_stages
from dwf_lab.training.variants import (
    Ablation,
    CommonSeedStage,
    build_variant,
    composition_order,
    select_ablations,
    skip_reason,
    variant_profile,
)


def _expert_paths(run, seed: int, data, a: Ablation, pv: Profile, rt: Runtime, log,
                  progress: bool) -> list[Path]:
    """The trained experts the variant starts from (retrained ones under its directory)."""
    p = run.profile
    names = composition_order(p)[:a.experts] if a.experts else expert_stage_names(p)
    missing = [n for n in names if not run.is_done(seed, n)]
    if missing:
        raise FileNotFoundError(f"ablations start from the run's trained experts; missing: "
                                f"{', '.join(missing)}. Train them first (pipeline.train_run).")
    paths = {n: run.model_path(seed, n) for n in names}
    if a.retrain_experts:
        for stage in plan_stages(pv):
            if stage.name not in paths or stage.kind not in ("fgsm", "pgd"):
                continue
            path = run.ablation_dir(seed, a.name) / "experts" / f"{stage.name}.safetensors"
            if not path.exists():
                torch.manual_seed(seed_from(seed, stage.sid))   # as the run's own expert
                train_stage(build_expert(pv, data), data, stage, pv, seed=seed,
                            ckpt_dir=run.ablation_dir(seed, a.name) / "checkpoints" / stage.name,
                            final_path=path, runtime=rt, log=log, progress=progress)
            paths[stage.name] = path
    return [paths[n] for n in names]


def same_model_as(a: Ablation, p, is_done) -> str | None:
    """The run model variant ``a`` is exactly (its stored result may serve, its training is skipped):
    the run's DWF for the reference when it has no gate-only phase and is trained ("mixture"), the
    untrained uniform average of the run's experts ("uniform-ensemble"); else None. ``is_done(name)``:
    whether the run has trained a stage. The cost banner asks this too."""
    if a.kind == "none":
        return "uniform-ensemble" if a.routing == "uniform" and not a.experts else None
    if a.name == "reference" and p.gate_epochs == 0 and is_done("mixture"):
        return "mixture"
    return None


def run_variant(run, seed: int, data, a: Ablation, progress: bool = True,
                device: str | None = None, reuse: bool = True) -> dict:
    """Train (if needed) and evaluate one variant; returns its row.

    The reference (the run's DWF, when the run has it) and the untrained uniform average (the
    "Uniform ensemble" baseline) are models the run evaluates anyway; with ``reuse``, their rows
    are read off those stored results when the settings match, and say so (``reused_from``)."""
    p = run.profile
    vdir = run.ablation_dir(seed, a.name)
    eval_path = vdir / "eval.json"
    if eval_path.exists():
        return ablation_row(json.loads(eval_path.read_text()))
    pv = variant_profile(p, a)
    rt = training_runtime(p)
    dev = torch.device(device) if device else rt.device
    log = run.logger(seed, vdir)

    model_path = vdir / "model.safetensors"
    note, train_s = "", 0.0
    same_as = same_model_as(a, p, lambda name: run.is_done(seed, name))   # evaluated anyway: may serve
    n_experts = a.experts or p.n_experts
    if a.kind == "none":
        model = build_variant(p, data, a, _expert_paths(run, seed, data, a, pv, rt, log, progress), seed)
        note = "no end-to-end training"
    elif model_path.exists():
        model = load_model(model_path)
    elif same_as == "mixture":
        model = load_model(run.model_path(seed, "mixture"))
        note = "the run's DWF model (trained exactly as this variant would be)"
    else:
        paths = _expert_paths(run, seed, data, a, pv, rt, log, progress)
        model = build_variant(pv, data, a, paths, seed)
        stage = CommonSeedStage(f"ablation-{a.name}", a.kind, p.mixture_epochs, p.mixture_batch, a.label)
        t0 = time.time()
        train_stage(model, data, stage, pv, seed=seed, ckpt_dir=vdir / "checkpoints",
                    final_path=model_path, runtime=rt, log=log, progress=progress)
        train_s = time.time() - t0
        log({"event": "stage_time", "stage": stage.name, "seconds": train_s})   # as the run's stages log it
    model = for_evaluation(model.to(dev), p, dev)
    extra = {"variant": a.name, "question": a.question, "experts": n_experts, "routing": a.routing,
             "k": a.k, "kind": a.kind, "train_s": round(train_s, 2), "note": note,
             "attack_strengths": {"fgsm_eps_choices": list(pv.fgsm_eps_choices),
                                  "pgd_steps_choices": list(pv.pgd_steps_choices)}}
    s = ablation_eval_settings(p)
    stored = _stored_result(run, seed, same_as, s, len(data.x_test)) if reuse else None
    if stored is not None:
        (metrics, correct), source = stored
        rec = write_result(eval_path, model=f"ablation:{a.name}", row=a.label, seed=seed, dataset=data.name,
                           metrics=metrics, correct=correct, settings=s, elapsed_s=0.0,
                           extra={**extra, "reused_from": source})
        return ablation_row(rec)
    rec = evaluate_and_write(model, data.x_test, data.y_test, s, eval_path,
                             name=f"ablation:{a.name}", row=a.label, seed=seed, dataset=data.name,
                             device=dev, progress=progress, extra=extra)
    return ablation_row(rec)


def _stored_result(run, seed: int, name: str | None, s, n_test: int):
    """``((metrics, correct), where)`` when the run's stored evaluation ``name`` (the same model)
    already holds the ablation's attacks with the same settings (:func:`stored_subset`), else None:
    attacking the same model again with the same random starts would only repeat it."""
    if name is None:
        return None
    path = run.eval_path(seed, name)
    try:
        rec = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    sub = stored_subset(rec, s, n_test, seed)
    if sub is None:
        return None
    where = path.relative_to(run.root) if path.is_relative_to(run.root) else path
    return sub, f"{where} (the same model, the same attack settings and random starts)"


def run_ablations(run, seed: int, data, names=None, progress: bool = True,
                  device: str | None = None) -> list[dict]:
    """Train and evaluate the selected variants (default: every ``default`` one) for one seed.

    Variants that do not apply to the profile (e.g. 5 experts of 3) are
    skipped and listed in the report. Writes ``report/ablations.{json,md}``
    over every seed found, and returns this seed's rows in table order.
    """
    p = run.profile
    rows, skipped = [], {}
    for a in select_ablations(names):
        why = skip_reason(a, p)
        if why:
            skipped[a.name] = why
            continue
        rows.append(run_variant(run, seed, data, a, progress=progress, device=device))
    write_ablation_report(run, skipped)
    return rows
