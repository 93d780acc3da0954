"""Models from outside the kit (dwf_lab.models.external): the factory spec, the classifier checks
and the two rules that say a model expects normalized images."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
import torchvision
from tinymodels import tiny_trained  # tests/ is on sys.path

from dwf_lab.models.common import Normalize, normalization_for
from dwf_lab.models.examples import torchvision_resnet18
from dwf_lab.models.external import (
    behaviour_reason,
    check_classifier,
    load_factory,
    normalization_warning,
    parse_model_args,
    structure_reason,
)
from dwf_lab.models.registry import build_model


def test_model_args_are_python_literals_or_text():
    assert parse_model_args(["num_classes=10", "width=0.5", "pretrained=False", "name=resnet", "s=(1, 2)"]) == \
        {"num_classes": 10, "width": 0.5, "pretrained": False, "name": "resnet", "s": (1, 2)}
    with pytest.raises(ValueError, match="name=value"):
        parse_model_args(["10"])


def test_a_factory_is_called_with_its_arguments_under_a_fixed_seed():
    a = load_factory("dwf_lab.models.examples:torchvision_resnet18", {"num_classes": 7})
    b = load_factory("dwf_lab.models.examples:torchvision_resnet18", {"num_classes": 7})
    assert isinstance(a, nn.Sequential) and a[1].fc.out_features == 7
    assert all(torch.equal(a.state_dict()[k], b.state_dict()[k]) for k in a.state_dict())   # same random weights
    torch.manual_seed(123)
    load_factory("torch.nn:Linear", {"in_features": 2, "out_features": 2})
    after = torch.rand(1)
    torch.manual_seed(123)
    assert torch.equal(torch.rand(1), after)   # the caller's random stream is untouched


def test_a_factory_from_a_file(tmp_path):
    f = tmp_path / "my_models.py"
    f.write_text("import torch.nn as nn\ndef net(k=3):\n    return nn.Linear(k, 2)\n")
    assert load_factory(f"{f}:net", {"k": 5}).in_features == 5


@pytest.mark.parametrize("spec, kwargs, message", [
    ("torchvision", None, "expects package.module:factory"),
    ("no_such_package_xyz.models:f", None, "cannot import no_such_package_xyz.models .*ModuleNotFoundError"),
    ("torchvision.models:no_such_net", None, "has no 'no_such_net'"),
    ("dwf_lab.models.common:NORMALIZATION", None, "is a dict, not a factory"),
    ("collections:OrderedDict", None, "not a torch.nn.Module"),
    ("torch.nn:Linear", {"bogus": 1}, r"Linear\(bogus=1\) fails \(TypeError"),
])
def test_a_bad_spec_is_one_clear_error(spec, kwargs, message):
    with pytest.raises(ValueError, match=message):
        load_factory(spec, kwargs)


def test_the_classifier_checks():
    shape = (3, 32, 32)
    check_classifier(torchvision_resnet18(), shape, 10, "m")   # passes
    with pytest.raises(ValueError, match="predicts 1000 classes but the data has 10.*num_classes=10"):
        check_classifier(torchvision.models.resnet18(weights=None), shape, 10, "m")
    with pytest.raises(ValueError, match=r"fails on a \(1, 3, 32, 32\) batch .*RuntimeError"):
        check_classifier(nn.Linear(3, 10), shape, 10, "m")
    with pytest.raises(ValueError, match="no parameters"):
        check_classifier(nn.Identity(), shape, 10, "m")

    class Pair(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = torchvision_resnet18()

        def forward(self, x):
            return self.net(x), self.net(x)
    with pytest.raises(ValueError, match="returns a tuple, not a tensor of logits"):
        check_classifier(Pair(), shape, 10, "m")


def test_structure_flags_an_unwrapped_torchvision_classifier_only():
    tv = torchvision.models.resnet18(weights=None, num_classes=10)
    assert "torchvision's ResNet itself" in structure_reason(tv)
    assert "contains torchvision's ResNet" in structure_reason(nn.Sequential(tv))
    assert structure_reason(nn.Sequential(Normalize(*normalization_for("cifar10")), tv)) is None
    assert structure_reason(torchvision_resnet18()) is None
    assert structure_reason(build_model("resnet18", width=0.0625)) is None   # the kit's own: Normalize inside
    assert structure_reason(nn.Sequential(nn.Flatten(), nn.Linear(3072, 10))) is None   # nothing to say


def test_behaviour_flags_a_model_that_only_works_on_normalized_images():
    model, data = tiny_trained(0)
    x, y = data.x_test[:200], data.y_test[:200]
    mean, std = normalization_for("synthetic")
    assert behaviour_reason(model, x, y, mean, std) is None      # normalizes inside: fine on [0, 1]
    stripped = copy.deepcopy(model)
    stripped.normalize = nn.Identity()                           # the same network, expecting normalized inputs
    reason = behaviour_reason(stripped, x, y, mean, std)
    assert reason is not None and "accurate on images in [0, 1]" in reason
    line = normalization_warning("net", stripped, x, y, mean, std)
    assert "\n" not in line and "wrap the normalization inside the model" in line
    assert normalization_warning("net", model, x, y, mean, std) is None
