"""dwf_lab.mixture.moe: Eq. 1-2 by hand, routings, frozen experts, gradients, any number of experts."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from dwf_lab.mixture.moe import Gate, MixtureOfExperts, MixtureOutput, gate_entropy
from dwf_lab.models.registry import build_model


def _hand_mixture(model, x):
    """Eq. 1-2 computed by hand from the mixture's own gate and experts."""
    w = torch.softmax(model.gate(x), dim=1)
    z = torch.stack([e(x) for e in model.experts], dim=1)
    return w, z, (w[:, :, None] * z).sum(1)


def test_soft_mixture_is_the_weighted_sum_of_expert_logits(make_mixture, images):
    model = make_mixture(3).eval()
    with torch.no_grad():
        out = model.forward_details(images)
        w, z, y = _hand_mixture(model, images)
        plain = model(images)
    assert isinstance(out, MixtureOutput)
    assert out.logits.shape == (8, 10) and out.weights.shape == (8, 3)
    assert out.expert_logits.shape == (8, 3, 10)
    torch.testing.assert_close(out.weights, w)
    torch.testing.assert_close(out.expert_logits, z)
    torch.testing.assert_close(out.logits, y, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(plain, out.logits)
    torch.testing.assert_close(out.weights.sum(1), torch.ones(8))
    assert (out.weights > 0).all()  # soft: every expert contributes


def test_gate_sees_the_normalized_image():
    gate = Gate(4, (3, 32, 32), hidden=8, dataset="cifar10")
    assert gate.normalize.mean.flatten().tolist() == pytest.approx([0.4914, 0.4822, 0.4465])
    assert gate(torch.rand(5, 3, 32, 32)).shape == (5, 4)
    with pytest.raises(ValueError, match="n_experts"):
        Gate(0)


def test_gradients_reach_the_gate_and_every_expert(make_mixture, images):
    model = make_mixture(3).train()
    y = torch.arange(8) % 10
    F.cross_entropy(model(images), y).backward()
    named = list(model.named_parameters())
    assert any(n.startswith("gate.") for n, _ in named)
    for i in range(3):
        assert any(n.startswith(f"experts.{i}.") for n, _ in named)
    for name, p in named:
        assert p.grad is not None, f"no gradient reached {name}"
        assert p.grad.abs().sum() > 0, f"zero gradient at {name}"


def test_topk_keeps_exactly_k_renormalised(make_mixture, images):
    model = make_mixture(4, routing="topk", k=2).eval()
    with torch.no_grad():
        out = model.forward_details(images)
        soft = torch.softmax(model.gate(images), dim=1)
    assert ((out.weights > 0).sum(1) == 2).all()
    torch.testing.assert_close(out.weights.sum(1), torch.ones(8))
    top = soft.topk(2, dim=1).indices
    kept = torch.zeros_like(soft).scatter_(1, top, 1.0).bool()
    assert torch.equal(out.weights > 0, kept)  # the kept experts are the gate's top 2
    want = torch.where(kept, soft, torch.zeros_like(soft))
    torch.testing.assert_close(out.weights, want / want.sum(1, keepdim=True))
    torch.testing.assert_close(out.logits, (out.weights[:, :, None] * out.expert_logits).sum(1),
                               rtol=1e-5, atol=1e-6)
    # log_weights: the distribution the k are kept from (every expert finite: an attack can climb it)
    torch.testing.assert_close(model.log_weights(images).exp(), soft)


def test_top1_is_one_expert(make_mixture, images):
    model = make_mixture(3, routing="topk", k=1).eval()
    with torch.no_grad():
        out = model.forward_details(images)
    assert ((out.weights == 1.0).sum(1) == 1).all() and ((out.weights > 0).sum(1) == 1).all()
    chosen = out.weights.argmax(1)
    torch.testing.assert_close(out.logits, out.expert_logits[torch.arange(8), chosen])


def test_uniform_is_the_plain_average_and_has_no_gate(make_mixture, images):
    model = make_mixture(3, routing="uniform").eval()
    assert model.gate is None
    assert not any(n.startswith("gate.") for n, _ in model.named_parameters())
    with torch.no_grad():
        out = model.forward_details(images)
        avg = torch.stack([e(images) for e in model.experts], 1).mean(1)
    torch.testing.assert_close(out.weights, torch.full((8, 3), 1 / 3))
    torch.testing.assert_close(model.log_weights(images), torch.full((8, 3), -math.log(3)))
    torch.testing.assert_close(out.logits, avg, rtol=1e-5, atol=1e-6)


def _bn_buffers(module):
    return {n: b.clone() for n, b in module.named_buffers()}


def test_frozen_experts_get_no_grad_keep_bn_stats_and_the_gate_still_trains(make_mixture, images):
    model = make_mixture(2, freeze_experts=True)
    model.train()
    assert model.training and model.gate.training
    assert all(not e.training for e in model.experts)  # BatchNorm stays in eval mode
    assert all(not p.requires_grad for p in model.experts.parameters())
    before_buffers = _bn_buffers(model.experts)
    before_experts = {n: p.clone() for n, p in model.experts.named_parameters()}
    before_gate = {n: p.clone() for n, p in model.gate.named_parameters()}

    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    F.cross_entropy(model(images), torch.arange(8) % 10).backward()
    for n, p in model.experts.named_parameters():
        assert p.grad is None, n
    for n, p in model.gate.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, n
    opt.step()

    after = _bn_buffers(model.experts)
    for n, b in before_buffers.items():
        assert torch.equal(after[n], b), f"frozen expert buffer {n} changed"
    for n, p in model.experts.named_parameters():
        assert torch.equal(p, before_experts[n]), n
    assert any(not torch.equal(p, before_gate[n]) for n, p in model.gate.named_parameters())

    # unfreezing gives the experts back their gradients and train mode
    model.set_frozen(False)
    model.train()
    assert all(p.requires_grad for p in model.experts.parameters())
    assert all(e.training for e in model.experts)


def test_unfrozen_experts_do_update_bn_stats_in_train_mode(make_mixture, images):
    # the control for the test above: a train-mode forward does move unfrozen statistics
    model = make_mixture(2).train()
    before = _bn_buffers(model.experts)
    with torch.no_grad():
        model(images)
    after = _bn_buffers(model.experts)
    assert any(not torch.equal(after[n], b) for n, b in before.items() if "running_mean" in n)


@pytest.mark.parametrize("n", [1, 3, 9])
def test_any_number_of_experts(make_mixture, n):
    model = make_mixture(n).eval()
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(n))
    with torch.no_grad():
        out = model.forward_details(x)
        w, z, y = _hand_mixture(model, x)
    assert model.n_experts == n and len(model.experts) == n
    assert out.weights.shape == (4, n) and out.expert_logits.shape == (4, n, 10)
    torch.testing.assert_close(out.weights.sum(1), torch.ones(4))
    torch.testing.assert_close(out.logits, y, rtol=1e-5, atol=1e-6)
    if n == 1:
        torch.testing.assert_close(out.weights, torch.ones(4, 1))
        torch.testing.assert_close(out.logits, out.expert_logits[:, 0])


def test_default_is_nine_experts_soft():
    model = build_model("dwf_mixture", width=0.0625, dataset="synthetic", gate_hidden=4)
    assert model.n_experts == 9 and model.routing == "soft" and not model.freeze_experts


def test_clear_errors_for_bad_routing_and_k(make_mixture):
    with pytest.raises(ValueError, match=r"routing must be one of .*soft.*topk.*uniform.*'hard'"):
        make_mixture(2, routing="hard")
    for k in (0, 3, -1):
        with pytest.raises(ValueError, match=r"k must be in \[1, 2\], got " + str(k)):
            make_mixture(2, routing="topk", k=k)
    experts = [build_model("resnet18", width=0.0625, dataset="synthetic") for _ in range(2)]
    with pytest.raises(ValueError, match="needs a gate.*uniform"):
        MixtureOfExperts(experts, None, routing="soft")
    with pytest.raises(ValueError, match="at least one expert"):
        MixtureOfExperts([], Gate(1), routing="soft")
    with pytest.raises(ValueError, match="n_experts"):
        make_mixture(0)


def test_gate_entropy_bounds():
    n = 4
    torch.testing.assert_close(gate_entropy(torch.full((2, n), 1 / n)),
                               torch.full((2,), math.log(n)))
    assert gate_entropy(torch.eye(n)).abs().max() < 1e-6


def test_top1_routing_still_trains_the_gate():
    """Renormalised top-1 weights are the constant 1; the straight-through gradient keeps the gate learning."""
    import torch
    torch.manual_seed(0)
    mix = build_model("dwf_mixture", n_experts=3, width=0.0625, gate_hidden=8, routing="topk", k=1,
                      dataset="synthetic")
    x = torch.rand(4, 3, 32, 32)
    w = mix.gate_weights(x)
    assert torch.allclose(w.sum(1), torch.ones(4)) and ((w > 0).sum(1) == 1).all()
    torch.nn.functional.cross_entropy(mix(x), torch.randint(0, 10, (4,))).backward()
    assert mix.gate.net[1].weight.grad.abs().sum() > 0
