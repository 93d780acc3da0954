"""Classifiers with normalization inside: every model takes images in [0, 1].

The CIFAR ResNet-18 (3x3 stem, no max-pool) follows kuangliu/pytorch-cifar,
with a ``width`` multiplier so CPU-sized versions are the same code.

Normalization constants (PAPER-NOTES.md, error 1): the paper prints SVHN's
constants under CIFAR-10. We use the correct per-pixel CIFAR-10 values.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

# dataset -> (mean, std), per channel, for images in [0, 1]
NORMALIZATION: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "svhn": ((0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970)),
    "mnist": ((0.1307,), (0.3081,)),
    # the kit's generated offline data (dwf_lab.data.synthetic): mid-grey, unit-ish spread
    "synthetic": ((0.5, 0.5, 0.5), (0.25, 0.25, 0.25)),
}


def normalization_for(dataset: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    key = dataset.lower().replace("-", "").replace("_", "")
    if key.startswith("cifar10"):  # cifar10, cifar10-subset
        key = "cifar10"
    if key not in NORMALIZATION:
        raise ValueError(
            f"no normalization constants for dataset {dataset!r}; "
            f"known: {sorted(NORMALIZATION)}")
    return NORMALIZATION[key]


class Normalize(nn.Module):
    """(x - mean) / std with constants stored as buffers (saved in checkpoints)."""

    def __init__(self, mean, std):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """CIFAR-style ResNet: 3x3 stem, no max-pool, four stages, global average pool."""

    def __init__(self, num_blocks=(2, 2, 2, 2), num_classes: int = 10, width: float = 1.0,
                 in_channels: int = 3, dataset: str = "cifar10"):
        super().__init__()
        mean, std = normalization_for(dataset)
        if len(mean) != in_channels:
            raise ValueError(f"dataset {dataset!r} has {len(mean)} channel(s), "
                             f"but in_channels={in_channels}")
        if width <= 0:
            raise ValueError(f"width must be > 0, got {width}")
        planes = [max(1, int(round(p * width))) for p in (64, 128, 256, 512)]
        self.normalize = Normalize(mean, std)
        self.conv1 = nn.Conv2d(in_channels, planes[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes[0])
        layers, in_planes = [], planes[0]
        for i, (p, n) in enumerate(zip(planes, num_blocks)):
            blocks = []
            for j in range(n):
                stride = 2 if (i > 0 and j == 0) else 1
                blocks.append(BasicBlock(in_planes, p, stride))
                in_planes = p
            layers.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.linear = nn.Linear(in_planes, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(self.normalize(x))))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.linear(out)


def resnet18(num_classes: int = 10, width: float = 1.0, in_channels: int = 3,
             dataset: str = "cifar10") -> ResNet:
    return ResNet((2, 2, 2, 2), num_classes, width, in_channels, dataset)


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
    _load_registrations()
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}; known: {sorted(ARCHITECTURES)}")
    model = ARCHITECTURES[arch](**kwargs)
    model.dwf_arch = {"arch": arch, "kwargs": dict(kwargs)}
    return model


def _load_registrations() -> None:
    # importing these modules registers their architectures
    from dwf_lab import moe  # noqa: F401
    try:
        from dwf_lab import zoo  # noqa: F401
    except ImportError:
        pass
    try:
        from dwf_lab import baselines  # noqa: F401
    except ImportError:
        pass


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
