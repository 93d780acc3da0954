"""Model and data factories of a run: what every stage starts from.

:func:`load_data` (the profile's dataset with its fallback, class-stratified to ``n_train`` /
``n_test``), :func:`build_expert`, :func:`build_mixture`, :func:`build_baseline` (and what each
builds, :func:`stage_arch`); the run's trained experts in a mixture (:func:`assemble_mixture`,
:func:`load_experts_into`, gate untrained) or averaged without a gate (:func:`uniform_ensemble`).

A run only loads checkpoints that fit it: :func:`check_fits_run` compares a checkpoint's
metadata with what the run builds (architecture, width, dataset, classes, the stage and seed it
was saved for, the training settings), and :func:`load_run_model` loads a run's finished model
after that check, so another run's file dropped into ``models/`` is refused, never evaluated
as this run's row."""
import json
from functools import partial
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn

from dwf_lab.core.config import NOT_IN_DIGEST, PROFILES, Profile, canonical_dataset
from dwf_lab.core.runtime import seed_from
from dwf_lab.data import ImageData, load_dataset
from dwf_lab.mixture.moe import MixtureOfExperts
from dwf_lab.models.registry import arguments, build_model
from dwf_lab.store.checkpoints import load_model, read_metadata
from dwf_lab.store.runs import Run
from dwf_lab.training.fast_path import for_evaluation
from dwf_lab.training.recipes import RECIPES
from dwf_lab.training.stages import Stage, baseline_stages, expert_stage_names, plan_stages


def load_data(p: Profile) -> ImageData:
    """The profile's dataset, class-stratified to n_train / n_test.

    Generated data stands in (loudly) only when nothing else was asked for: the named profile's
    own dataset with its ``fallback``. A dataset chosen with ``--set dataset=...`` never falls
    back unless ``fallback`` was set too (and :func:`load_dataset` refuses to fall back from a
    subset file or data directory set in the environment)."""
    own = PROFILES.get(p.name)
    asked = own is not None and canonical_dataset(p.dataset) != canonical_dataset(own.dataset)
    fallback = None if asked and p.fallback == own.fallback else p.fallback
    return load_dataset(p.dataset, n_train=p.n_train, n_test=p.n_test, seed=0, fallback=fallback)


def model_kwargs(p: Profile, data: ImageData) -> dict:
    c, h, _ = data.shape
    return {"num_classes": data.num_classes, "width": p.width, "in_channels": c, "dataset": data.norm_key}


def expert_arch(p: Profile, data: ImageData) -> tuple[str, dict]:
    return "resnet18", model_kwargs(p, data)


def mixture_arch(p: Profile, data: ImageData, routing: str = "soft") -> tuple[str, dict]:
    return "dwf_mixture", dict(n_experts=p.n_experts, image_size=data.shape[1],
                               gate_hidden=p.gate_hidden, routing=routing, **model_kwargs(p, data))


def baseline_arch(kind: str, p: Profile, data: ImageData) -> tuple[str, dict]:
    """A MoE baseline's architecture (its recipe's model: "soe", "advmoe") with its experts."""
    r = RECIPES.get(kind)
    if r is None or r.model not in ("soe", "advmoe"):
        raise ValueError(f"unknown baseline {kind!r}")
    return r.model, dict(n_experts=r.networks(p), **model_kwargs(p, data))


def stage_arch(p: Profile, data: ImageData, stage: Stage) -> tuple[str, dict] | None:
    """(architecture, arguments) the run builds for ``stage`` (its recipe's model); None for a kind
    no recipe registers."""
    r = RECIPES.get(stage.kind)
    if r is None:
        return None
    return {"expert": expert_arch, "mixture": mixture_arch}.get(r.model, partial(baseline_arch, stage.kind))(p, data)


def build_expert(p: Profile, data: ImageData) -> nn.Module:
    arch, kw = expert_arch(p, data)
    return build_model(arch, **kw)


def build_mixture(p: Profile, data: ImageData, routing: str = "soft") -> nn.Module:
    arch, kw = mixture_arch(p, data, routing)
    return build_model(arch, **kw)


# ========================================================== fits the run? ==
# the architecture's arguments that must agree (a mixture's gate size is left to the training
# settings below: a mixture assembled by hand may use its own)
FIT_KEYS = ("width", "dataset", "num_classes", "in_channels", "image_size", "n_experts")


def stage_named(p: Profile, name: str) -> Stage:
    for st in plan_stages(p) + baseline_stages(p):
        if st.name == name:
            return st
    raise ValueError(f"no stage {name!r} in this profile")


def _show(v) -> str:
    return repr(v) if isinstance(v, str) else json.dumps(v, default=str)


def check_fits_run(meta: dict, p: Profile, data: ImageData, stage: Stage | str, *,
                   seed: int | None = None, path: Path | str | None = None) -> None:
    """Refuse a checkpoint (its metadata ``meta``) that is not the run's own ``stage``: one ValueError
    naming the file and the differences, e.g. "<file> was trained with width 0.25, this run uses
    0.125: it belongs to another run; move it away or use that run".

    Compared, where the checkpoint records them: the architecture and its arguments
    (:data:`FIT_KEYS`; one it does not record reads as its factory's default), the stage and
    seed it was saved for (its report row when it names no stage: a renamed row of the same
    stage is not another run), and for a checkpoint written by training, the data it was
    trained on and every training setting that changes results (the fields of the profile's
    digest). A checkpoint written outside a run (no stage, no settings) is compared on its
    architecture alone.
    """
    st = stage_named(p, stage) if isinstance(stage, str) else stage
    diffs: list[tuple[str, object, object]] = []
    want = stage_arch(p, data, st)
    if want is not None:
        arch, kw = want
        if meta.get("arch") != arch:
            diffs.append(("architecture", meta.get("arch"), arch))
        else:
            kwargs = meta.get("arch_kwargs")
            got_args = arguments(arch, kwargs if isinstance(kwargs, dict) else {})
            want_args = arguments(arch, kw)
            diffs += [(k, got_args[k], want_args[k]) for k in FIT_KEYS
                      if k in got_args and k in want_args and got_args[k] != want_args[k]]
    if meta.get("stage") is not None:
        if meta["stage"] != st.name:
            diffs.append(("stage", meta["stage"], st.name))
    elif meta.get("row") is not None and meta["row"] != st.row:
        diffs.append(("row", meta["row"], st.row))
    if seed is not None and meta.get("seed") is not None and meta["seed"] != seed:
        diffs.append(("seed", meta["seed"], seed))
    trained = meta.get("training")
    if isinstance(trained, dict):
        if meta.get("dataset") is not None and meta["dataset"] != data.name:
            diffs.append(("data", meta["dataset"], data.name))
        named = {d[0] for d in diffs}
        diffs += [(k, trained[k], v) for k, v in p.to_dict().items()
                  if k in trained and k not in NOT_IN_DIGEST and k not in named
                  and json.dumps(trained[k], default=str) != json.dumps(v, default=str)]
    if diffs:
        shown = "; and with ".join(f"{k} {_show(a)}, this run uses {_show(b)}" for k, a, b in diffs[:4])
        more = f" (and {len(diffs) - 4} more differences)" if len(diffs) > 4 else ""
        raise ValueError(f"{path or 'this checkpoint'} was trained with {shown}{more}: it belongs to "
                         "another run; move it away or use that run.")


def load_run_model(run: Run, seed: int, stage: Stage | str, data: ImageData,
                   map_location: str | torch.device = "cpu", expect_arch: str | None = None) -> nn.Module:
    """The run's finished model of ``stage`` for ``seed``, after :func:`check_fits_run`, ready to be
    evaluated (eval mode, the layout of :func:`dwf_lab.training.fast_path.for_evaluation`)."""
    st = stage_named(run.profile, stage) if isinstance(stage, str) else stage
    path = run.model_path(seed, st.name)
    check_fits_run(read_metadata(path), run.profile, data, st, seed=seed, path=path)
    return for_evaluation(load_model(path, expect_arch=expect_arch, map_location=map_location), run.profile,
                          map_location)


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
    paths = [run.model_path(seed, n) for n in names]
    for name, path in zip(names, paths):   # every expert is this run's own, before anything is built
        check_fits_run(read_metadata(path), p, data, name, seed=seed, path=path)
    torch.manual_seed(seed_from(seed, 9001))
    return load_experts_into(build_mixture(p, data, routing=routing), paths)


def load_experts_into(mix: nn.Module, paths,
                      check: Callable[[dict, Path], None] | None = None) -> nn.Module:
    """Load trained expert checkpoints into a mixture's experts, in order.

    ``check(meta, path)`` vets each checkpoint's metadata before it is loaded (e.g. with
    :func:`check_fits_run`; :func:`assemble_mixture` checks every expert against its run)."""
    for i, path in enumerate(paths):
        if check is not None:
            check(read_metadata(path), Path(path))
        mix.experts[i].load_state_dict(load_model(path, expect_arch="resnet18").state_dict())
    return mix


def build_baseline(kind: str, p, data) -> nn.Module:
    arch, kw = baseline_arch(kind, p, data)
    return build_model(arch, **kw)


# ========================================================= uniform ensemble ==
def uniform_ensemble(run, seed: int, data) -> MixtureOfExperts:
    """The run's trained experts averaged with equal weights, no gate: y = mean_i f_i(x).

    Isolates what the gate (and end-to-end training) add on top of the experts.
    """
    return for_evaluation(assemble_mixture(run, seed, data, routing="uniform"), run.profile)
