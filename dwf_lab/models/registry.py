"""The architecture registry: models are built by name, so a checkpoint can rebuild them.

:func:`register` adds a factory to :data:`ARCHITECTURES`; :func:`build_model` builds one
and records on the model how it was built (``dwf_arch``: name and arguments), which
:func:`dwf_lab.store.checkpoints.save_model` stores; :func:`count_parameters` counts.
"""
from typing import Callable

import torch.nn as nn

from dwf_lab.models.resnet import resnet18

# ---------------------------------------------------------------- registry --
# Every buildable architecture is registered by name so a checkpoint can rebuild
# its model from (arch, kwargs) alone. Other modules (moe, zoo) register theirs.
ARCHITECTURES: dict[str, Callable[..., nn.Module]] = {"resnet18": resnet18}


def register(name: str):
    def deco(fn):
        ARCHITECTURES[name] = fn
        return fn
    return deco


def build_model(arch: str, **kwargs) -> nn.Module:
    """Build a registered architecture; the result remembers how it was built."""
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}; known: {sorted(ARCHITECTURES)}")
    model = ARCHITECTURES[arch](**kwargs)
    model.dwf_arch = {"arch": arch, "kwargs": dict(kwargs)}
    return model


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
