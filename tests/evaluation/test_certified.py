"""IBP (evaluation/certified.py): its bounds are sound (every output of the box lies inside them,
every margin above its lower bound), exact at ε = 0, and a certified image is never one PGD breaks."""
import pytest
import torch
import torch.nn as nn

from dwf_lab import attacks
from dwf_lab.evaluation.certified import (
    _layers,
    certified_mask,
    input_box,
    interval_bounds,
    margin_lower_bounds,
    sandwich,
    small_net,
    train_ibp,
)

EPS = 8 / 255


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return small_net("synthetic").eval()


@pytest.fixture(scope="module")
def batch():
    g = torch.Generator().manual_seed(1)
    return torch.rand(16, 3, 32, 32, generator=g), torch.randint(0, 10, (16,), generator=g)


def _points_in_box(x, eps, k, seed=0):
    g = torch.Generator().manual_seed(seed)
    lo, hi = input_box(x, eps)
    return [lo + (hi - lo) * torch.rand(x.shape, generator=g) for _ in range(k)]


def test_interval_bounds_hold_every_output_of_the_box(net, batch):
    x, _ = batch
    lo, hi = interval_bounds(_layers(net), *input_box(x, EPS))
    assert (lo <= hi).all()
    with torch.no_grad():
        for p in _points_in_box(x, EPS, 20):
            z = net(p)
            assert (z >= lo - 1e-5).all() and (z <= hi + 1e-5).all()


def test_margin_lower_bound_is_sound_and_exact_at_eps_0(net, batch):
    x, y = batch
    m = margin_lower_bounds(net, x, y, EPS)
    with torch.no_grad():
        for p in _points_in_box(x, EPS, 20, seed=3):
            z = net(p)
            true = z.gather(1, y[:, None]) - z
            assert (true >= m - 1e-5).all()
        z = net(x)
    assert torch.allclose(margin_lower_bounds(net, x, y, 0.0), z.gather(1, y[:, None]) - z, atol=1e-5)
    assert torch.all(m.gather(1, y[:, None]) == 0)


def test_a_seeded_mistake_in_the_bound_is_unsound(net, batch):
    """Radius pushed through W instead of |W| (the classic slip) gives bounds some output escapes."""
    x, _ = batch
    lo, hi = input_box(x, EPS)
    centre, radius = (hi + lo) / 2, (hi - lo) / 2
    for m in _layers(net)[:3]:
        if isinstance(m, nn.Conv2d):
            centre = nn.functional.conv2d(centre, m.weight, m.bias, m.stride, m.padding)
            radius = nn.functional.conv2d(radius, m.weight, None, m.stride, m.padding)   # the mistake
        else:
            centre, radius = m(centre), radius
            if hasattr(m, "std"):
                radius = radius / m.std
    with torch.no_grad():
        out = _layers(net)[1](_layers(net)[0](_points_in_box(x, EPS, 1)[0]))
    assert ((out < centre - radius.abs() - 1e-6) | (out > centre + radius.abs() + 1e-6)).any()


def test_only_bounded_layers_are_accepted():
    with pytest.raises(TypeError, match="Sequential"):
        _layers(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4, 2)))
    with pytest.raises(TypeError, match="last layer"):
        _layers(nn.Sequential(nn.Flatten(), nn.Linear(4, 2), nn.ReLU()))


def test_certified_images_are_correct_and_survive_pgd(synthetic_data):
    x, y = synthetic_data.x_train[:512], synthetic_data.y_train[:512]
    net, info = train_ibp(x, y, 2 / 255, dataset="synthetic", epochs=2, batch=64)
    assert info.steps == 16 and not net.training and not any(p.requires_grad for p in net.parameters())
    xt, yt = synthetic_data.x_test[:64], synthetic_data.y_test[:64]
    s = sandwich(net, xt, yt, 2 / 255, steps=10)
    assert s["certified"] <= s["attacked"] <= s["clean"]
    masks = s["masks"]
    assert not (masks["certified"] & ~masks["attacked"]).any()
    assert not (certified_mask(net, xt, yt, 2 / 255) & ~attacks.correct_mask(net, xt, yt).cpu()).any()


def test_training_is_repeatable(synthetic_data):
    x, y = synthetic_data.x_train[:128], synthetic_data.y_train[:128]
    a, _ = train_ibp(x, y, EPS, dataset="synthetic", epochs=1, batch=64, seed=5)
    b, _ = train_ibp(x, y, EPS, dataset="synthetic", epochs=1, batch=64, seed=5)
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))
