"""The gate-steering PGD and its λ sweep (evaluation/steering.py)."""
import pytest
import torch

from dwf_lab import attacks
from dwf_lab.evaluation.steering import gate_steering_pgd, steering_sweep

EPS, ALPHA = 8 / 255, 2 / 255


def test_lambda_0_is_plain_pgd(make_mixture, images):
    mix = make_mixture().eval()
    y = torch.arange(len(images)) % 10
    a = gate_steering_pgd(mix, images, y, 0, 0.0, EPS, ALPHA, 3, seed=1)
    b = attacks.pgd(mix, images, y, EPS, ALPHA, 3, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(a, b)


def test_the_sweep_steers_weight_onto_the_target(make_mixture, images):
    mix = make_mixture().eval()
    y = torch.arange(len(images)) % 10
    rows = steering_sweep(mix, images, y, (0.0, 50.0), EPS, ALPHA, 5, k=1, seed=0)
    assert [r["lam"] for r in rows] == [None, 0.0, 50.0]
    for r in rows:
        assert abs(sum(r["weights"]) - 1) < 1e-5 and r["w_target"] == r["weights"][1]
        assert 0 <= r["accuracy"] <= 100
    assert rows[2]["w_target"] > rows[1]["w_target"]
    assert not mix.training


def test_the_sweep_needs_a_gated_mixture(make_mixture, images):
    with pytest.raises(TypeError, match="gated"):
        steering_sweep(make_mixture(routing="uniform"), images, torch.zeros(len(images), dtype=torch.long),
                       (1.0,), EPS, ALPHA, 1)
    with pytest.raises(ValueError, match="expert index"):
        steering_sweep(make_mixture(), images, torch.zeros(len(images), dtype=torch.long), (1.0,), EPS, ALPHA, 1, k=7)
