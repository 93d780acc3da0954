"""Model and data factories of a run: what every stage starts from.

:func:`load_data` (the profile's dataset with its fallback, class-stratified to ``n_train`` /
``n_test``), :func:`build_expert`, :func:`build_mixture`, :func:`build_baseline`; the run's
trained experts in a mixture (:func:`assemble_mixture`, :func:`load_experts_into`, gate
untrained) or averaged without a gate (:func:`uniform_ensemble`)."""
import torch
import torch.nn as nn

from dwf_lab.core.config import Profile
from dwf_lab.core.runtime import seed_from
from dwf_lab.data import ImageData, load_dataset
from dwf_lab.mixture.moe import MixtureOfExperts
from dwf_lab.models.registry import build_model
from dwf_lab.store.checkpoints import load_model
from dwf_lab.store.runs import Run
from dwf_lab.training.stages import expert_stage_names


def load_data(p: Profile) -> ImageData:
    """The profile's dataset (with its fallback), class-stratified to n_train / n_test."""
    return load_dataset(p.dataset, n_train=p.n_train, n_test=p.n_test, seed=0, fallback=p.fallback)


def model_kwargs(p: Profile, data: ImageData) -> dict:
    c, h, _ = data.shape
    return {"num_classes": data.num_classes, "width": p.width, "in_channels": c, "dataset": data.norm_key}


def build_expert(p: Profile, data: ImageData) -> nn.Module:
    return build_model("resnet18", **model_kwargs(p, data))


def build_mixture(p: Profile, data: ImageData, routing: str = "soft") -> nn.Module:
    kw = model_kwargs(p, data)
    return build_model("dwf_mixture", n_experts=p.n_experts, image_size=data.shape[1],
                       gate_hidden=p.gate_hidden, routing=routing, **kw)


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


def build_baseline(kind: str, p, data) -> nn.Module:
    kw = model_kwargs(p, data)
    if kind == "soe":
        return build_model("soe", n_experts=3, **kw)
    if kind == "advmoe":
        return build_model("advmoe", n_experts=2, **kw)
    raise ValueError(f"unknown baseline {kind!r}")


# ========================================================= uniform ensemble ==
def uniform_ensemble(run, seed: int, data) -> MixtureOfExperts:
    """The run's trained experts averaged with equal weights, no gate: y = mean_i f_i(x).

    Isolates what the gate (and end-to-end training) add on top of the experts.
    """
    return assemble_mixture(run, seed, data, routing="uniform").eval()
