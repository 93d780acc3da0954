"""Normalization inside the model: the datasets' constants and the :class:`Normalize` layer.

Every model of the kit takes images in [0, 1]; its first op is a :class:`Normalize`
holding the constants of :func:`normalization_for`, stored as buffers so they travel
in checkpoints. Normalization constants (docs/paper-notes.md, gap 1): the paper prints
SVHN's constants under CIFAR-10. We use the correct per-pixel CIFAR-10 values.
"""
import torch
import torch.nn as nn

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
