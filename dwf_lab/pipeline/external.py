"""Evaluate a model that no run of the kit trained: a kit checkpoint on its own, or any ``nn.Module``
that takes images in [0, 1] (``python -m dwf_lab evaluate --checkpoint FILE`` / ``--model
package.module:factory``).

The model goes through what a run's models go through, at the profile's threat model, budgets and
test images: the paper's protocol (:mod:`dwf_lab.evaluation.protocol`), the adaptive attacks that
apply to it (the gate-aware ones only for mixtures) with AutoAttack and the per-example worst case
(:func:`dwf_lab.evaluation.adaptive.evaluate_any`), the gradient-masking checklist, then the same
report. The output folder is laid out like a run, so the report code reads it as one::

    runs/external/<name>/          (--out DIR; default under $DWF_RUNS_DIR when it is set)
      config.json                  the profile (a later call with other settings is refused)
      model.json                   what was evaluated: the checkpoint's sha256, or the spec, its
                                   arguments and the sha256 of its state_dict; warnings; the data
      eval/<name>_seed<k>.json     the results, per example, with the same identity under "external"
      report/                      report.md / .html / .json, figures, checklist_<name>_seed<k>.md

A folder that holds another model's results is refused before anything is written; the same model
again keeps what is stored and computes only what is missing; a stored result computed with other
settings than asked for (``--aa standard`` after the profile's AutoAttack budget, say) is refused
with one line, and recomputed with ``--redo KEY``. The first seed of the profile seeds
the attacks (one model: one evaluation).
"""
import dataclasses
import json
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch
import torch.nn as nn

from dwf_lab.attacks.mixture_aware import model_kind
from dwf_lab.attacks.precision import precision_for
from dwf_lab.core.config import Profile
from dwf_lab.core.io import atomic_write_text, file_sha256, jsonable
from dwf_lab.core.runtime import Runtime, package_versions
from dwf_lab.data import ImageData
from dwf_lab.evaluation.adaptive import AdaptiveSettings
from dwf_lab.evaluation.checklist import ChecklistSettings
from dwf_lab.evaluation.model_checks import NOT_VALID, check_logits
from dwf_lab.evaluation.protocol import EvalSettings, evaluate_model, evaluate_soe
from dwf_lab.evaluation.records import write_result
from dwf_lab.models.common import normalization_for
from dwf_lab.models.external import check_classifier, load_factory, normalization_warning
from dwf_lab.pipeline.adaptive import adaptive_into_record, check_redo, check_stored_settings, write_checklist
from dwf_lab.pipeline.run_all import report_run
from dwf_lab.store.checkpoints import load_model, weights_digest
from dwf_lab.store.runs import Run, check_not_busy, runs_dir

IDENTITY_FILE = "model.json"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


@dataclass
class ExternalModel:
    """A model to evaluate and what names it: ``identity`` goes into every result it gets."""
    name: str                 # file stem of its results and folder name
    row: str                  # its row in the report's tables
    model: nn.Module
    identity: dict
    warnings: list[str] = field(default_factory=list)
    validity: dict = field(default_factory=lambda: {"valid": True})   # evaluation.model_checks.validity


def _checked_name(name: str) -> str:
    if not _NAME.fullmatch(name or ""):
        raise ValueError(f"--name {name!r}: use letters, digits, '.', '_' and '-' (it names files and a folder)")
    return name


def _same_family(a: str, b: str) -> bool:
    try:
        return normalization_for(a) == normalization_for(b)
    except ValueError:
        return a == b


def from_checkpoint(path, data: ImageData, name: str | None = None,
                    device: torch.device | str = "cpu") -> ExternalModel:
    """A kit checkpoint, rebuilt from its file alone (:func:`dwf_lab.store.checkpoints.load_model`:
    sha256 of the weights verified, pickles and damaged files refused), checked against the data."""
    path = Path(path).expanduser()
    meta: dict = {}
    model = load_model(path, map_location=device, meta_out=meta)
    built = meta.get("dataset")
    if isinstance(built, str) and not _same_family(built, data.norm_key):
        raise ValueError(f"{path} was built for {built} images (its normalization), the data is {data.name}: "
                         f"evaluate it on its own dataset (--set dataset={built})")
    name = _checked_name(name or str(meta.get("stage") or path.stem))
    check_classifier(model, data.shape, data.num_classes, str(path), device)
    validity = check_logits(model, data.x_test, data.y_test, str(path))   # probabilities: refused here
    identity = {"source": "checkpoint", "path": str(path.resolve()), "sha256": file_sha256(path),
                "weights_sha256": meta.get("weights_sha256"), "arch": meta.get("arch"),
                "arch_kwargs": meta.get("arch_kwargs"), "stage": meta.get("stage"),
                "trained_on": built}
    return ExternalModel(name, str(meta.get("row") or name), model, identity, validity=validity)


def from_spec(spec: str, data: ImageData, kwargs: dict | None = None, name: str | None = None,
              device: torch.device | str = "cpu", probe: int = 256) -> ExternalModel:
    """Any ``nn.Module`` from a ``package.module:factory`` spec (:func:`dwf_lab.models.external.load_factory`),
    checked on one batch of the data's shape; a warning when it evidently expects normalized images
    (structure, and accuracy on the first ``probe`` test images: :func:`normalization_warning`)."""
    model = load_factory(spec, kwargs).to(device).eval()
    name = _checked_name(name or spec.rpartition(":")[2].split(".")[-1])
    check_classifier(model, data.shape, data.num_classes, f"--model {spec}", device)
    validity = check_logits(model, data.x_test, data.y_test, f"--model {spec}")   # probabilities: refused here
    identity = {"source": "factory", "spec": spec, "kwargs": jsonable(kwargs or {}),
                "class": f"{type(model).__module__}.{type(model).__qualname__}",
                "state_dict_sha256": weights_digest(model.state_dict())}
    mean, std = normalization_for(data.norm_key)
    warning = normalization_warning(name, model, data.x_test[:probe], data.y_test[:probe], mean, std)
    return ExternalModel(name, name, model, identity, [warning] if warning else [], validity)


# ------------------------------------------------------------- the folder --
def default_out(name: str) -> Path:
    return runs_dir() / "external" / name


def _key(identity: dict) -> dict:
    """What must agree for two identities to be the same model."""
    if identity.get("source") == "checkpoint":
        return {"source": "checkpoint", "sha256": identity.get("sha256")}
    return {k: identity.get(k) for k in ("source", "spec", "kwargs", "state_dict_sha256")}


def check_folder(out: Path, ext: ExternalModel) -> None:
    """Refuse an output folder that holds another model's results (one ValueError; nothing written)."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file, not a folder")
    ident = out / IDENTITY_FILE
    if not ident.exists():
        if (out / "eval").exists() or (out / "seed-0").exists():
            raise ValueError(f"{out} already holds results but no {IDENTITY_FILE} (a run's folder?): pass "
                             "another --out")
        return
    try:
        old = json.loads(ident.read_text())
        old_id, old_name = old["identity"], old["name"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{ident} is unreadable ({type(e).__name__}: {e}): delete the folder or pass "
                         "another --out") from None
    if _key(old_id) != _key(ext.identity) or old_name != ext.name:
        what = (f"checkpoint sha256 {str(old_id.get('sha256'))[:12]}..." if old_id.get("source") == "checkpoint"
                else f"{old_id.get('spec')} {old_id.get('kwargs')} state_dict sha256 "
                     f"{str(old_id.get('state_dict_sha256'))[:12]}...")
        raise ValueError(f"{out} holds the results of another model ({old_name}: {what}); nothing was "
                         "changed. Pass another --out (or --name), or delete that folder")


def _data_record(data: ImageData) -> dict:
    return {"name": data.name, "source": data.source, "n_test": int(len(data.x_test)),
            "shape": list(data.shape), "generated": data.generated, **data.test_set_sha256()}


# ------------------------------------------------------------- evaluation --
def evaluate_external(ext: ExternalModel, p: Profile, data: ImageData, out: Path | None = None,
                      progress: bool = True, device: str | None = None, command: str | None = None,
                      adaptive_settings: AdaptiveSettings | None = None,
                      checklist_settings: ChecklistSettings | None = None,
                      redo: Sequence[str] = ()) -> dict[str, Path]:
    """Protocol, adaptive attacks, checklist and report of one model into ``out`` (module docstring).

    Returns the report's files and the evaluation record's path. Settings that differ from the
    folder's config.json, another model's results in it, or a stored adaptive result computed with
    other settings than ``adaptive_settings`` (one line naming it, the difference and the
    ``--redo`` that recomputes it) are refused before anything is written. Attack keys in ``redo``
    are run again and replace the stored ones (:func:`dwf_lab.pipeline.adaptive.adaptive_into_record`,
    the step a run's models go through too). ``command``: the command line, stored and quoted in
    that line.
    """
    out = Path(out).expanduser() if out is not None else default_out(ext.name)
    check_folder(out, ext)
    s = adaptive_settings or AdaptiveSettings.from_profile(p)
    s = dataclasses.replace(s, precision=precision_for(ext.model, s.precision))   # a user's model: fp32
    check_redo(s, redo)
    check_not_busy(out.name, out)   # another process evaluating into it: refused before config.json is touched
    run = Run(_checked_name(out.resolve().name), p, root=out)   # writes config.json; refuses other settings
    dev = torch.device(device) if device else Runtime.from_profile(p).device
    seed = p.seeds[0]
    model = ext.model.to(dev).eval()
    for w in ext.warnings:
        print(f"dwf-lab: warning: {w}", file=sys.stderr)
    if not ext.validity.get("valid", True):   # said before any number, and in every row of the report
        print(f"dwf-lab: warning: {ext.name}: {NOT_VALID}: {'; '.join(ext.validity['reasons'])}", file=sys.stderr)
    mixture = model_kind(model)   # which attacks made for a model's parts apply
    again = f"{command or 'python -m dwf_lab evaluate --checkpoint FILE (or --model SPEC)'} --out {out}"
    with run.lock("evaluate"):
        path = run.eval_path(seed, ext.name)
        if path.exists():   # results made with other settings: refused before anything is written
            check_stored_settings(json.loads(path.read_text()), path, s, mixture, seed, redo, again)
        atomic_write_text(out / IDENTITY_FILE, json.dumps(
            {"name": ext.name, "row": ext.row, "identity": ext.identity, "warnings": ext.warnings,
             "data": _data_record(data), "threat_model": p.threat_model.label(), "seed": seed,
             "versions": package_versions(), "command": command}, indent=1, default=str))
        extra = {"stage_kind": "external", "external": ext.identity, "warnings": ext.warnings,
                 **({} if ext.validity.get("valid", True) else {"validity": ext.validity})}
        if not path.exists():
            _protocol(model, data, p, path, ext, seed, dev, progress, extra)
        rec = json.loads(path.read_text())
        if not ext.validity.get("valid", True):
            rec["validity"] = ext.validity
        adaptive_into_record(rec, path, lambda: model, mixture, data, s, seed, dev, progress=progress,
                             desc=f"adaptive {ext.name}", redo=redo, command=again)
        atomic_write_text(path, json.dumps(rec, indent=1))
        # no surrogate model: the transfer check is not run, except for a mixture (the average of its own experts)
        write_checklist(run, seed, ext.name, ext.row, rec, lambda: model, data, dev,
                        checklist_settings or ChecklistSettings.from_profile(p))
        written = report_run(run, data.name, data)   # the entries hash its test images
    return {"eval": path, "model": out / IDENTITY_FILE, **written}


def _protocol(model, data, p, path, ext, seed, dev, progress, extra) -> None:
    """Tables 2-4 (both PGD-100 columns: every external model is a key model), SoE under each gradient mode."""
    s = EvalSettings.from_profile(p, long=True)
    s = dataclasses.replace(s, precision=precision_for(model, s.precision))
    t0 = time.time()
    if getattr(model, "gradient_modes", None):
        metrics, correct, per_mode = evaluate_soe(model, data.x_test, data.y_test, s, seed=seed, device=dev,
                                                  progress=progress)
        extra = {**extra, "gradient_modes": per_mode}
    else:
        metrics, correct = evaluate_model(model, data.x_test, data.y_test, s, seed=seed, device=dev,
                                          progress=progress, desc=f"eval {ext.name}")
    write_result(path, model=ext.name, row=ext.row, seed=seed, dataset=data.name, metrics=metrics,
                 correct=correct, settings=s, elapsed_s=time.time() - t0, extra=extra)
