"""The baseline zoo: every paper baseline builds, classifies [0, 1] images and trains."""
import pytest
import torch
import torch.nn as nn

from dwf_lab.models.common import Normalize, normalization_for
from dwf_lab.models.registry import ARCHITECTURES, build_model, count_parameters
from dwf_lab.models.zoo import ZOO

ARCHS = sorted(ZOO)
SMALL = 0.125

PAPER_ROWS = {"VGG-19", "ResNet-18", "ResNet-34", "ResNet-50", "DenseNet-121",
              "DenseNet-169", "GoogLeNet", "Inception-V3", "Xception", "MobileNet-V2"}


def _small(arch, **kwargs):
    torch.manual_seed(0)
    return build_model(arch, width=SMALL, **kwargs)


def test_zoo_covers_the_paper_rows_and_is_registered():
    assert set(ZOO.values()) == PAPER_ROWS
    build_model("resnet18", width=SMALL)  # loads the registrations
    assert set(ZOO) <= set(ARCHITECTURES)


@pytest.mark.parametrize("arch", ARCHS)
def test_output_shape_and_normalization_inside(arch):
    model = _small(arch).eval()
    assert isinstance(model.normalize, Normalize)
    mean, std = normalization_for("cifar10")
    assert torch.allclose(model.normalize.mean.flatten(), torch.tensor(mean))
    assert torch.allclose(model.normalize.std.flatten(), torch.tensor(std))

    seen = []
    model.normalize.register_forward_hook(lambda m, inp, out: seen.append(inp[0]))
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        y = model(x)
    assert y.shape == (4, 10) and torch.isfinite(y).all()
    assert len(seen) == 1 and seen[0] is x  # the raw [0, 1] image goes straight into normalize


@pytest.mark.parametrize("arch", ARCHS)
def test_other_datasets_and_class_counts(arch):
    m = _small(arch, dataset="mnist", in_channels=1, num_classes=7).eval()
    with torch.no_grad():
        assert m(torch.rand(2, 1, 28, 28)).shape == (2, 7)
    svhn = _small(arch, dataset="svhn")
    assert torch.allclose(svhn.normalize.mean.flatten(), torch.tensor(normalization_for("svhn")[0]))
    with pytest.raises(ValueError):
        build_model(arch, width=SMALL, dataset="mnist")  # 1-channel constants, 3 channels
    with pytest.raises(ValueError):
        build_model(arch, width=0.0)


@pytest.mark.parametrize("arch", ARCHS)
def test_a_few_sgd_steps_overfit_one_batch(arch):
    model = _small(arch).train()
    g = torch.Generator().manual_seed(1)
    x = torch.rand(16, 3, 32, 32, generator=g)
    y = torch.randint(0, 10, (16,), generator=g)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    losses = []
    for _ in range(10):
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    with torch.no_grad():
        final = nn.functional.cross_entropy(model(x), y).item()
    assert all(torch.isfinite(torch.tensor(losses)))
    assert final < 0.8 * losses[0], (losses, final)  # chance level is ln 10 = 2.3


@pytest.mark.parametrize("arch", ARCHS)
def test_width_scales_parameter_count(arch):
    counts = [count_parameters(build_model(arch, width=w)) for w in (0.0625, 0.125, 0.25, 0.5)]
    assert counts == sorted(counts) and len(set(counts)) == len(counts), counts


@pytest.mark.parametrize("arch", ARCHS)
def test_build_model_records_arch_and_rebuilds(arch):
    model = _small(arch, num_classes=10).eval()
    assert model.dwf_arch == {"arch": arch, "kwargs": {"width": SMALL, "num_classes": 10}}
    again = build_model(model.dwf_arch["arch"], **model.dwf_arch["kwargs"]).eval()
    again.load_state_dict(model.state_dict())
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model(x), again(x))


def test_xception_middle_flow_repeats():
    a = build_model("xception", width=SMALL, middle_repeats=2)
    b = build_model("xception", width=SMALL)
    assert len(a.middle) == 2 and len(b.middle) == 8
    assert count_parameters(a) < count_parameters(b)
    with torch.no_grad():
        assert a.eval()(torch.rand(1, 3, 32, 32)).shape == (1, 10)


def test_width_one_matches_reference_sizes():
    """Parameter counts at width 1 equal the kuangliu/pytorch-cifar (or paper) models'."""
    expected = {"vgg19": 20_035_018, "resnet34": 21_282_122, "resnet50": 23_520_842,
                "densenet121": 6_956_298, "googlenet": 6_158_346, "mobilenet_v2": 2_296_922}
    for arch, n in expected.items():
        assert count_parameters(build_model(arch)) == n, arch
