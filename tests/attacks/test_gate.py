"""The gate-aware attacks read the mixture's own routing (MixtureOfExperts.log_weights), never a copy of it."""
import sys

import torch
import torch.nn.functional as F

from dwf_lab.attacks import gate as gate_attacks
from dwf_lab.mixture.moe import MixtureOfExperts

EPS, ALPHA, T = 8 / 255, 2 / 255, 0.25


class HotMixture(MixtureOfExperts):
    """Routing with a temperature: w = softmax(g(x) / T)."""

    def log_weights(self, x):
        return torch.log_softmax(self.gate(x).float() / T, dim=1)


def test_the_routing_attack_uses_the_weights_forward_uses(make_mixture, images, monkeypatch):
    base = make_mixture(3)
    hot = HotMixture(list(base.experts), base.gate).eval()
    y = torch.arange(8) % 10
    with torch.no_grad():
        want = torch.softmax(hot.gate(images) / T, dim=1)
        torch.testing.assert_close(hot.forward_details(images).weights, want)          # forward
        torch.testing.assert_close(gate_attacks.log_gate_weights(hot, images), want.log())
        loss = gate_attacks.routing_loss(1, lam=0.5)(hot, images, y)                      # the routing loss
        torch.testing.assert_close(loss, F.cross_entropy(hot(images), y, reduction="none") + 0.5 * want[:, 1].log())

    # the balanced routing PGD's step: grad CE and grad log w_1, each normalised per example
    seen = {}

    def one_step(*args, start, gradient, **kw):
        seen["g"] = gradient(start)
        return ()
    monkeypatch.setattr(sys.modules["dwf_lab.attacks.pgd"], "pgd_iterates", one_step)   # the one core
    gate_attacks.routing_pgd(hot, images, y, 1, 1.0, EPS, ALPHA, 1, False, None)
    xg = images.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(F.cross_entropy(hot(xg), y, reduction="sum"), xg)

    def step(logw):
        (g_r,) = torch.autograd.grad(logw(xg)[:, 1].sum(), xg)
        return g / g.abs().mean((1, 2, 3), keepdim=True) + g_r / g_r.abs().mean((1, 2, 3), keepdim=True)
    torch.testing.assert_close(seen["g"], step(hot.log_weights))
    assert not torch.allclose(seen["g"], step(lambda x: torch.log_softmax(hot.gate(x), 1)))   # not the plain softmax's
