"""The architecture registry: models are built by name, so a checkpoint can rebuild them.

:func:`register` adds a factory to :data:`ARCHITECTURES`; :func:`build_model` builds one
and records on the model how it was built (``dwf_arch``: name and arguments), which
:func:`dwf_lab.store.checkpoints.save_model` stores; :func:`built_for` and :func:`input_shape`
say what such a model takes and predicts (checkpoints record it, attacks check their inputs
against it); :func:`count_parameters` counts.
"""
import inspect
from typing import Callable

import torch.nn as nn

from dwf_lab.models.resnet import resnet18

# ---------------------------------------------------------------- registry --
# Every buildable architecture is registered by name so a checkpoint can rebuild
# its model from (arch, kwargs) alone. Other modules (moe) register theirs.
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


# the arguments that say what a model takes and predicts (every factory of the kit has the first
# two; a mixture's gate is sized for its images, so its factory also takes image_size)
BUILT_FOR = ("in_channels", "image_size", "num_classes")


def arguments(arch: str, kwargs: dict) -> dict:
    """The named arguments ``build_model(arch, **kwargs)`` builds with: ``kwargs`` over the
    factory's defaults (``{}`` for an unknown architecture)."""
    fn = ARCHITECTURES.get(arch)
    if fn is None:
        return {}
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return dict(kwargs)
    out = {k: v.default for k, v in params.items()
           if v.default is not inspect.Parameter.empty and v.kind is not inspect.Parameter.VAR_KEYWORD}
    out.update(kwargs)
    return out


def built_for(arch: str, kwargs: dict) -> dict:
    """What ``build_model(arch, **kwargs)`` was built for: ``in_channels``, ``num_classes`` and, for
    an architecture that takes one, ``image_size``; each from ``kwargs``, else the factory's default.

    A key the factory does not take is left out (a ResNet has no ``image_size``: its global
    pooling accepts any size); an unknown architecture gives ``{}``.
    """
    args = arguments(arch, kwargs)
    return {k: args[k] for k in BUILT_FOR if k in args}


def default_image_size(dataset: str | None) -> int:
    """The image size of the kit's datasets: 28 for MNIST, 32 for CIFAR-10, SVHN and the synthetic data."""
    return 28 if str(dataset or "").lower().startswith("mnist") else 32


def input_shape(arch: str, kwargs: dict) -> tuple[int, int, int] | None:
    """(channels, height, width) of the images a model of ``arch`` built with ``kwargs`` was made for.

    The rule: channels are ``in_channels`` (:func:`built_for`); the size is the architecture's
    ``image_size`` when it takes one, else :func:`default_image_size` of its ``dataset``
    (28 for MNIST, 32 otherwise). None for an unknown architecture.
    """
    spec = built_for(arch, kwargs)
    if "in_channels" not in spec:
        return None
    size = spec.get("image_size") or default_image_size(kwargs.get("dataset", "cifar10"))
    return int(spec["in_channels"]), int(size), int(size)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
