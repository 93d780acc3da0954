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
