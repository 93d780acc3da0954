"""The attacks made for a mixture's parts (dwf_lab.attacks.mixture_aware): each reads the model's own
parts, stays in the ball, and the registered suite breaks a mixture whose gate masks gradients."""
import copy

import pytest
import torch
import torch.nn.functional as F

from dwf_lab.attacks import mixture_aware as ma
from dwf_lab.attacks.pgd import pgd_any_iterate
from dwf_lab.evaluation.adaptive import AdaptiveSettings, evaluate_adaptive
from dwf_lab.evaluation.keys import WORST
from dwf_lab.evaluation.suite import ATTACKS, planned, scored_points
from dwf_lab.mixture.moe import Gate, MixtureOfExperts
from dwf_lab.models.registry import build_model

EPS, ALPHA = 8 / 255, 2 / 255
from tinymodels import tiny_trained  # noqa: E402  (tests/ is on sys.path)

KW = dict(width=0.0625, dataset="synthetic")


class ShatteredGateMixture(MixtureOfExperts):
    """A soft mixture whose gate masks gradients: the forward pass is the ordinary soft gate, but
    its backward is the gradient of a high-frequency function of the image (1000 * sin(3000 p.x):
    a non-differentiable step in all but name, Athalye et al.'s shattered gradients). Plain PGD on
    the mixture follows that noise; the experts underneath are untouched."""

    def log_weights(self, x):
        lw = super().log_weights(x)
        v = 1e3 * torch.sin(3000.0 * x.flatten(1) @ self.proj)
        return lw + (v - v.detach())


@pytest.fixture(scope="module")
def masked():
    expert, data = tiny_trained(0)
    torch.manual_seed(0)
    mix = ShatteredGateMixture([copy.deepcopy(expert), copy.deepcopy(expert)],
                               Gate(2, tuple(data.x_test.shape[1:]), 16, "synthetic")).eval()
    mix.proj = torch.randn(data.x_test[0].numel(), 2)
    return mix, expert, data.x_test[:32], data.y_test[:32]


def test_the_suite_breaks_a_mixture_whose_gate_masks_gradients(masked):
    mix, expert, x, y = masked
    with torch.no_grad():     # the forward pass is an ordinary mixture: the same answers as its experts
        assert torch.equal(mix(x).argmax(1), expert(x).argmax(1))
    s = AdaptiveSettings(pgd_steps=8, long_steps=0, autoattack=False, dlr=False, transfer=False,
                         routing_restarts=1, batch_size=64)
    m, correct = evaluate_adaptive(mix, x, y, s, progress=False)
    plain, _ = evaluate_adaptive(expert, x, y, s, progress=False)
    print({k: round(v, 1) for k, v in m.items()}, "expert alone:", {k: round(v, 1) for k, v in plain.items()})
    assert m["pgd-8"] >= m["SA"] - 5                  # plain PGD on the mixture: a useless gradient
    assert m["fixed-gate"] <= m["pgd-8"] - 30         # the gate held fixed: the experts' own gradient
    assert m["fixed-gate"] <= plain["pgd-8"] + 100 / len(x)
    assert m[WORST] <= m["pgd-8"] - 30                # and the per-example worst case counts it


def test_fixed_gate_forward_is_the_mixture_and_its_gradient_skips_the_gate(make_mixture, images):
    mix = make_mixture(3).eval()
    y = torch.arange(8) % 10
    held = ma._Detached(mix)
    with torch.no_grad():
        torch.testing.assert_close(held(images), mix(images))
    g = ma.fixed_gate_gradient(mix, y)(images)
    xg = images.clone().requires_grad_(True)
    w = mix.gate_weights(images).detach()
    logits = torch.einsum("bn,bnc->bc", w, mix.expert_outputs(xg))
    (want,) = torch.autograd.grad(F.cross_entropy(logits, y, reduction="sum"), xg)
    torch.testing.assert_close(g, want)
    (full,) = torch.autograd.grad(F.cross_entropy(mix(xg), y, reduction="sum"), xg)
    assert not torch.allclose(g, full)                  # the gate's own term is gone


def test_gated_margin_is_the_gate_weighted_sum_of_expert_margins(make_mixture, images):
    mix = make_mixture(3).eval()
    y = torch.arange(8) % 10
    with torch.no_grad():
        out = mix.forward_details(images)
        z = out.expert_logits
        want = torch.stack([(z[:, i].masked_fill(F.one_hot(y, 10).bool(), -1e9).amax(1)
                             - z[:, i].gather(1, y[:, None]).squeeze(1)) for i in range(3)], 1)
        torch.testing.assert_close(ma.margin_from_logits(z, y), want)
        torch.testing.assert_close(ma.gated_margin_loss(mix, images, y), (out.weights * want).sum(1))


def test_lam_schedule_decays_to_zero():
    lam = ma.lam_schedule(2.0, 5)
    assert [lam(t) for t in range(5)] == [2.0, 1.5, 1.0, 0.5, 0.0]


def test_any_iterate_stays_in_the_ball_and_counts_every_point(make_mixture, images):
    mix = make_mixture(2).eval()
    y = torch.arange(8) % 10
    seen = []

    def gradient(x_adv):
        seen.append(x_adv)
        return torch.randn_like(x_adv)
    last, ok = pgd_any_iterate(mix, images, y, EPS, ALPHA, 3, gradient, images.clone())
    assert len(seen) == 3 and (last - images).abs().max() <= EPS + 1e-6 and 0 <= last.min() <= last.max() <= 1
    with torch.no_grad():
        right = [mix(p).argmax(1) == y for p in [images, *seen[1:], last]]
    assert torch.equal(ok, torch.stack(right).all(0))


def test_each_model_kind_gets_its_own_attacks():
    s = AdaptiveSettings()
    names = {kind: {a.name for a in planned(s, kind)} for kind in ma.MODEL_KINDS}
    assert {"fixed-gate", "gated-margin", "routing-dlr"} <= names["mixture"]
    assert "soe-transfer" in names["soe"] and "route-fixed" in names["advmoe"]
    assert not {"fixed-gate", "soe-transfer", "route-fixed"} & (names["plain"] | names["advmoe"] - {"route-fixed"})
    assert planned(s, True) == planned(s, "mixture") and planned(s, False) == planned(s, "plain")
    assert ma.model_kind(build_model("soe", n_experts=2, **KW)) == "soe"
    assert ma.model_kind(build_model("advmoe", n_experts=2, **KW)) == "advmoe"
    for a in ATTACKS.values():   # every entry says what it scores and what it is built to see
        assert a.iterate and a.family
    line = scored_points(["pgd:20", "pgd-20", "fixed-gate", "autoattack"])
    assert "the last iterate: pgd:20, pgd-20" in line and "any iterate: fixed-gate" in line and "best" in line


def test_soe_transfer_and_route_fixed_run_on_their_models(images):
    y = torch.arange(8) % 10
    torch.manual_seed(0)
    soe = build_model("soe", n_experts=2, **KW).eval()
    ok = ma.soe_transfer(soe, images, y, EPS, ALPHA, 2, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        clean = soe(images).argmax(1) == y
    assert ok.dtype == torch.bool and not (ok & ~clean).any() and soe.selection == "hard"

    adv = build_model("advmoe", n_experts=2, **KW).eval()
    with torch.no_grad():
        before = adv.router_scores(images[:4])
    ok = ma.route_fixed_pgd(adv, images, y, EPS, ALPHA, 2, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        clean = adv(images).argmax(1) == y
        torch.testing.assert_close(adv.router_scores(images[:4]), before)    # the hook is gone
    assert not (ok & ~clean).any() and not adv._detach_router
    with pytest.raises(TypeError):
        ma.route_fixed_pgd(soe, images, y, EPS, ALPHA, 1)


def test_an_attack_that_sets_its_own_gradient_mode_runs_once_on_a_model_with_two(images, monkeypatch):
    """SoE is attacked once per gradient mode (its own, BPDA's); soe-transfer sets the hard mode
    itself, so it runs in the first mode only and the second takes its result."""
    from dwf_lab.evaluation import suite
    torch.manual_seed(0)
    soe = build_model("soe", n_experts=2, **KW).eval()
    with torch.no_grad():
        y = soe(images).argmax(1)                   # every image classified right: every attack runs
    calls = []
    real = suite.soe_transfer
    monkeypatch.setattr(suite, "soe_transfer", lambda m, *a, **k: (calls.append(m.selection), real(m, *a, **k))[1])
    s = AdaptiveSettings(eps=EPS, alpha=ALPHA, pgd_steps=2, long_steps=0, n_examples=8, batch_size=8,
                         autoattack=False, dlr=False, routing_restarts=0)
    metrics, correct = evaluate_adaptive(soe, images, y, s, progress=False)
    assert calls == ["hard"]                                  # once, not once per mode
    assert len(soe.gradient_modes) == 2 and "soe-transfer" in correct
    assert correct["soe-transfer"].shape == (len(images),)
    assert not (correct[WORST] & ~correct["soe-transfer"]).any()   # the worst case counts it
