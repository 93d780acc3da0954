"""Factories for the ``evaluate --model tests/pipeline/external_factories.py:<name>`` tests
(imported by file path, as a user's own file would be)."""
import copy

import torch.nn as nn
from tinymodels import tiny_trained  # tests/ is on sys.path (conftest)


def unnormalized_tiny() -> nn.Module:
    """The tests' tiny trained ResNet-18 without its Normalize: it works on normalized images only."""
    model = copy.deepcopy(tiny_trained(0)[0])
    model.normalize = nn.Identity()
    return model


def broken() -> nn.Module:
    raise RuntimeError("weights file not found: /nowhere/model.pt")


class _Scaled(nn.Module):
    """The tiny trained network with its logits multiplied by ``scale``, then a softmax when ``softmax``."""

    def __init__(self, scale: float, softmax: bool):
        super().__init__()
        self.net, self.scale, self.softmax = copy.deepcopy(tiny_trained(0)[0]), scale, softmax

    def forward(self, x):
        z = self.net(x) * self.scale
        return z.softmax(1) if self.softmax else z


def softmax_tiny() -> nn.Module:
    """The issue's case: logits x 100, then a softmax (a saturated probability output)."""
    return _Scaled(100.0, True)


def logits_tiny() -> nn.Module:
    """The same network returning its logits."""
    return _Scaled(1.0, False)


def saturated_tiny() -> nn.Module:
    """Logits so large (x 1000) that the softmax saturates and the gradients underflow to zero."""
    return _Scaled(1000.0, False)
