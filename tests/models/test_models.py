"""dwf_lab.models: normalization constants, normalization inside the model, width, registry."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn

from dwf_lab.models.common import NORMALIZATION, Normalize, normalization_for
from dwf_lab.models.registry import ARCHITECTURES, build_model, count_parameters
from dwf_lab.models.resnet import ResNet, resnet18


def test_normalization_constants_are_the_papers_per_dataset_values():
    assert NORMALIZATION["cifar10"] == ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))
    assert NORMALIZATION["svhn"] == ((0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970))
    assert NORMALIZATION["mnist"] == ((0.1307,), (0.3081,))
    # the paper's misprint (SVHN's constants printed under CIFAR-10) is not reproduced
    assert NORMALIZATION["cifar10"] != NORMALIZATION["svhn"]


@pytest.mark.parametrize("name", ["cifar10", "CIFAR-10", "cifar10-subset", "cifar10_subset"])
def test_normalization_for_cifar10_aliases(name):
    assert normalization_for(name) == NORMALIZATION["cifar10"]


def test_normalization_for_unknown_dataset_names_the_known_ones():
    with pytest.raises(ValueError, match="no normalization constants.*imagenet.*known"):
        normalization_for("imagenet")


def test_normalize_module_is_per_channel_and_saved_as_buffers():
    mean, std = NORMALIZATION["cifar10"]
    norm = Normalize(mean, std)
    x = torch.rand(2, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    want = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    torch.testing.assert_close(norm(x), want)
    assert set(norm.state_dict()) == {"mean", "std"}
    assert list(norm.parameters()) == []  # constants, never trained


@pytest.mark.parametrize("dataset", ["cifar10", "svhn"])
def test_model_normalizes_inside(dataset, images):
    torch.manual_seed(0)
    model = build_model("resnet18", width=0.0625, dataset=dataset).eval()
    mean, std = NORMALIZATION[dataset]
    torch.testing.assert_close(model.normalize.mean.flatten(), torch.tensor(mean))
    torch.testing.assert_close(model.normalize.std.flatten(), torch.tensor(std))
    assert "normalize.mean" in model.state_dict() and "normalize.std" in model.state_dict()
    # the model on raw [0, 1] images == its body (normalization removed) on (x - mean) / std
    body = copy.deepcopy(model)
    body.normalize = nn.Identity()
    x_norm = (images - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(model(images), body(x_norm), rtol=1e-5, atol=1e-5)
        assert not torch.allclose(model(images), body(images), atol=1e-3)


def test_mnist_model_takes_one_channel():
    torch.manual_seed(0)
    model = build_model("resnet18", width=0.0625, in_channels=1, dataset="mnist").eval()
    assert model.normalize.mean.shape == (1, 1, 1, 1)
    with torch.no_grad():
        assert model(torch.rand(2, 1, 28, 28)).shape == (2, 10)
    with pytest.raises(ValueError, match="channel"):
        build_model("resnet18", width=0.0625, in_channels=3, dataset="mnist")


def test_width_knob_changes_parameter_count():
    counts = [count_parameters(resnet18(width=w)) for w in (0.0625, 0.125, 0.25, 0.5)]
    assert counts == sorted(counts) and len(set(counts)) == len(counts)
    # conv parameters grow ~quadratically with width
    assert 3.0 < counts[2] / counts[1] < 4.5
    for bad in (0, -1):
        with pytest.raises(ValueError, match="width"):
            resnet18(width=bad)


def test_cifar_resnet18_full_width_shape():
    model = resnet18()
    n = count_parameters(model)
    assert 11.1e6 < n < 11.25e6, n  # kuangliu CIFAR ResNet-18: 11,173,962
    assert n == 11_173_962
    # 3x3 stride-1 stem, no max-pool anywhere
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)
    assert not any(isinstance(m, nn.MaxPool2d) for m in model.modules())
    assert [len(layer) for layer in (model.layer1, model.layer2, model.layer3, model.layer4)] \
        == [2, 2, 2, 2]
    assert model.linear.in_features == 512 and model.linear.out_features == 10


def test_forward_shape_and_32px_resolution_kept_by_stem(tiny_model):
    tiny_model.eval()
    seen = {}

    def hook(module, inputs, output):
        seen["layer1"] = output.shape

    tiny_model.layer1.register_forward_hook(hook)
    with torch.no_grad():
        out = tiny_model(torch.rand(2, 3, 32, 32))
    assert out.shape == (2, 10)
    assert seen["layer1"][-2:] == (32, 32)  # no stride-2 stem, no pool


def test_build_model_registry_and_dwf_arch():
    model = build_model("resnet18", num_classes=7, width=0.0625, dataset="synthetic")
    assert isinstance(model, ResNet)
    assert model.dwf_arch == {"arch": "resnet18",
                              "kwargs": {"num_classes": 7, "width": 0.0625,
                                         "dataset": "synthetic"}}
    assert model.linear.out_features == 7
    assert "dwf_mixture" in ARCHITECTURES  # registered by importing dwf_lab.mixture
    with pytest.raises(ValueError, match="unknown architecture 'resnet19'.*known.*resnet18"):
        build_model("resnet19")
