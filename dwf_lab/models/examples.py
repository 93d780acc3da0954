"""Example factories for ``python -m dwf_lab evaluate --model package.module:factory``.

``--model dwf_lab.models.examples:torchvision_resnet18`` evaluates torchvision's ImageNet-style
ResNet-18 with 10 outputs and random weights (nothing is downloaded), its normalization wrapped
inside so that it takes images in [0, 1] like every model the kit attacks. Copy it for your own
network: load your weights in the factory (``model.load_state_dict(torch.load(path,
weights_only=True))``) and keep the :class:`~dwf_lab.models.common.Normalize` in front with the
constants your network was trained with.
"""
import torch.nn as nn
from torchvision.models import resnet18

from dwf_lab.models.common import Normalize, normalization_for


def normalized(model: nn.Module, dataset: str = "cifar10") -> nn.Sequential:
    """``model`` behind a :class:`Normalize` with ``dataset``'s constants: it then takes images in [0, 1]."""
    return nn.Sequential(Normalize(*normalization_for(dataset)), model)


def torchvision_resnet18(num_classes: int = 10, dataset: str = "cifar10") -> nn.Sequential:
    """torchvision's ResNet-18 (random weights, ``num_classes`` outputs), normalization inside."""
    return normalized(resnet18(weights=None, num_classes=num_classes), dataset)
