"""Notebook 04's "write it here" cells, on a tiny mixture: the gate and soft mixture written out
(Eq. 1-2) equal ``MixtureOfExperts.forward_details``, and one step of Algorithm 3 written out
(draw ε and the PGD iterations, FGSM and PGD against the whole mixture, cross-entropy on the
3x batch, one SGD step) equals ``train_step("mixture", ...)`` on the same start and draws. A
step that leaves out the clean third is *not* equal: the check can fail.
"""
import copy

import torch
import torch.nn.functional as F

from dwf_lab import attacks
from dwf_lab.core.config import get_profile
from dwf_lab.course.analyses import reference_runtime, same_state
from dwf_lab.models.registry import build_model
from dwf_lab.training.loop import train_step


def _mixture() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model("dwf_mixture", n_experts=3, width=0.0625, dataset="synthetic", gate_hidden=8).eval()


def test_eq_1_and_2_written_out_equal_the_mixture(synthetic_data):
    mix, x = _mixture(), synthetic_data.x_test[:8]
    with torch.no_grad():
        w = torch.softmax(mix.gate(x), dim=1)
        f = torch.stack([e(x) for e in mix.experts], dim=1)
        y = (w[:, :, None] * f).sum(dim=1)
        out = mix.forward_details(x)
    assert torch.allclose(w, out.weights, atol=1e-6) and torch.allclose(y, out.logits, atol=1e-5)
    assert not torch.allclose(y, f.mean(dim=1), atol=1e-5)     # the gate's weights matter


def _hand_step(model, p, x, y, gen, gen_dev, clean_third: bool = True):
    eps = attacks.pick(p.fgsm_eps_choices, gen)
    x_f = attacks.fgsm(model, x, y, eps)
    steps = attacks.pick(p.pgd_steps_choices, gen)
    x_p = attacks.pgd(model, x, y, p.pgd_eps, p.pgd_alpha, steps, p.random_start, generator=gen_dev)
    xs, ys = ([x, x_f, x_p], [y, y, y]) if clean_third else ([x_f, x_p], [y, y])
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=p.lr, momentum=p.momentum, weight_decay=p.weight_decay)
    loss = F.cross_entropy(model(torch.cat(xs)), torch.cat(ys))
    opt.zero_grad()
    loss.backward()
    opt.step()
    return loss


def test_one_step_of_algorithm_3_written_out_equals_train_step(synthetic_data):
    p = get_profile("smoke")
    rt = reference_runtime(p)
    x, y = synthetic_data.x_train[:8], synthetic_data.y_train[:8]
    start = _mixture()
    mine, ref, without_clean = copy.deepcopy(start), copy.deepcopy(start), copy.deepcopy(start)
    loss = _hand_step(mine, p, x, y, *rt.step_generators(0, 1, 0))
    opt = torch.optim.SGD(ref.parameters(), lr=p.lr, momentum=p.momentum, weight_decay=p.weight_decay)
    loss_ref, _, _ = train_step("mixture", ref, opt, x, y, p, rt, *rt.step_generators(0, 1, 0), lr=p.lr)
    assert torch.allclose(loss, loss_ref) and same_state(mine, ref)
    assert not same_state(mine, start)                            # the step moved gate and experts
    _hand_step(without_clean, p, x, y, *rt.step_generators(0, 1, 0), clean_third=False)
    assert not same_state(without_clean, ref)
