"""The classifiers: every model takes images in [0, 1] and normalizes inside.

Importing this package registers ``resnet``'s architecture
with :func:`build_model`; the mixtures register theirs in :mod:`dwf_lab.mixture`.
"""
from dwf_lab.models import resnet  # noqa: F401  (registers the architecture)
from dwf_lab.models.common import NORMALIZATION, Normalize, normalization_for
from dwf_lab.models.registry import ARCHITECTURES, build_model, count_parameters, register
from dwf_lab.models.resnet import BasicBlock, ResNet, resnet18

__all__ = ["ARCHITECTURES", "BasicBlock", "NORMALIZATION", "Normalize", "ResNet", "build_model",
           "count_parameters", "normalization_for", "register", "resnet18"]
