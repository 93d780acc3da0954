"""Loss landscape and input gradients (evaluation/landscape.py)."""
import torch
import torch.nn.functional as F

from dwf_lab import attacks
from dwf_lab.evaluation.landscape import (
    edge_alignment,
    edges,
    gradient_masked,
    gradient_picture,
    gradient_study,
    input_gradients,
    landscape_rise,
    loss_along,
    loss_landscape,
    random_sign_direction,
    sign_gradient_direction,
)

RADII = [0, 1 / 255, 2 / 255, 4 / 255, 8 / 255]


def test_random_direction_is_a_corner_of_the_ball():
    d = random_sign_direction(torch.zeros(4, 3, 8, 8), torch.Generator().manual_seed(0))
    assert set(d.unique().tolist()) == {-1.0, 1.0}
    assert 0.4 < float((d > 0).float().mean()) < 0.6


def test_loss_at_radius_0_is_the_clean_loss(trained_model, attack_batch):
    x, y = attack_batch[0][:32], attack_batch[1][:32]
    d = sign_gradient_direction(trained_model, x, y)
    with torch.no_grad():
        clean = float(F.cross_entropy(trained_model(x), y))
    assert abs(loss_along(trained_model, x, y, d, [0.0])[0] - clean) < 1e-5


def test_the_gradient_points_uphill_and_a_masked_gradient_does_not(trained_model, attack_batch):
    x, y = attack_batch[0][:64], attack_batch[1][:64]
    masked = gradient_masked(trained_model)
    with torch.no_grad():
        assert torch.equal(masked(x), trained_model(x))
    assert float(attacks.input_gradient(masked, x, y).abs().sum()) == 0
    land = loss_landscape({"plain": trained_model, "masked": masked}, x, y, RADII, seed=0)
    rise = landscape_rise(land, RADII, 8 / 255)
    assert rise["plain"]["sign-gradient"] > rise["plain"]["random"]
    assert rise["plain"]["ratio"] > 1
    assert land["masked"]["sign-gradient"] == [land["masked"]["sign-gradient"][0]] * len(RADII)   # sign(0) = 0: flat
    assert rise["masked"]["ratio"] == 0
    assert land["masked"]["random"] == land["plain"]["random"]     # same predictions, same random direction


def test_input_gradients_are_the_attacks_and_leave_the_model_alone(trained_model, attack_batch):
    x, y = attack_batch[0][:8], attack_batch[1][:8]
    trained_model.train()
    before = {k: v.clone() for k, v in trained_model.state_dict().items()}
    g = input_gradients(trained_model, x, y)
    assert trained_model.training
    assert all(torch.equal(before[k], v) for k, v in trained_model.state_dict().items())
    with attacks.attack_mode(trained_model):
        assert torch.allclose(g, attacks.input_gradient(trained_model, x, y))


def test_gradient_picture_is_grey_at_zero_and_in_range():
    g = torch.randn(3, 3, 8, 8)
    pic = gradient_picture(g)
    assert pic.min() >= 0 and pic.max() <= 1
    assert torch.allclose(gradient_picture(torch.zeros(1, 3, 4, 4)), torch.full((1, 3, 4, 4), 0.5))


def test_edge_alignment_sees_edges_and_not_noise():
    x = torch.zeros(2, 3, 16, 16)
    x[:, :, :, 8:] = 1.0                        # one vertical edge
    x[1, :, 8:, :] = 0.5                        # and a horizontal one in the second image
    on_edges = edges(x)[:, None].repeat(1, 3, 1, 1)
    assert (edge_alignment(on_edges, x) > 0.99).all()
    noise = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    assert (edge_alignment(noise, x).abs() < 0.3).all()


def test_gradient_study_has_one_entry_per_model(trained_model, attack_batch):
    x, y = attack_batch[0][:4], attack_batch[1][:4]
    s = gradient_study({"a": trained_model}, x, y)
    assert s["a"]["pictures"].shape == x.shape and s["a"]["per_image"].shape == (4,)
    assert -1 <= s["a"]["alignment"] <= 1
