"""What the notebooks' "write it here" cells rely on: the few lines a learner writes equal the
package's own function on the same inputs and random draws.

- FGSM (Eq. 3) and the PGD loop (Eq. 4-5, random start from a seeded generator) written out
  equal ``attacks.fgsm`` / ``attacks.pgd`` (notebook 00);
- one step of Algorithm 1 and of Algorithm 2 written out (draw, attack, train-mode loss, SGD
  step) equals ``train_step("fgsm" | "pgd", ...)`` under :func:`reference_runtime` (notebooks 02, 03);
- :func:`same_state` tells equal models from models one step apart.
"""
import copy

import torch
import torch.nn.functional as F

from dwf_lab import attacks
from dwf_lab.core.config import get_profile
from dwf_lab.course.analyses import reference_runtime, same_state
from dwf_lab.models.registry import build_model
from dwf_lab.training.loop import train_step


def _net(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model("resnet18", width=0.0625, dataset="synthetic")


def _batch(synthetic_data, n: int = 16):
    return synthetic_data.x_test[:n], synthetic_data.y_test[:n]


def test_fgsm_written_out_equals_the_package(trained_model, synthetic_data):
    x, y = _batch(synthetic_data)
    net, eps = trained_model.eval(), 8 / 255
    xr = x.clone().requires_grad_(True)
    grad = torch.autograd.grad(F.cross_entropy(net(xr), y, reduction="sum"), xr)[0]
    mine = (x + eps * grad.sign()).clamp(0, 1)
    assert torch.allclose(mine, attacks.fgsm(net, x, y, eps))
    assert not torch.allclose(mine, x)


def test_pgd_loop_written_out_equals_the_package_from_the_same_start(trained_model, synthetic_data):
    x, y = _batch(synthetic_data)
    net, eps, alpha, steps = trained_model.eval(), 8 / 255, 2 / 255, 5
    gen = torch.Generator().manual_seed(0)
    xa = (x + torch.empty_like(x).uniform_(-eps, eps, generator=gen)).clamp(0, 1)
    for _ in range(steps):
        xr = xa.clone().requires_grad_(True)
        grad = torch.autograd.grad(F.cross_entropy(net(xr), y, reduction="sum"), xr)[0]
        xa = torch.min(torch.max(xa + alpha * grad.sign(), x - eps), x + eps).clamp(0, 1)
    pkg = attacks.pgd(net, x, y, eps, alpha, steps, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(xa, pkg)
    other = attacks.pgd(net, x, y, eps, alpha, steps, generator=torch.Generator().manual_seed(1))
    assert not torch.allclose(xa, other)      # the start really comes from the generator


def _sgd(model, p):
    return torch.optim.SGD(model.parameters(), lr=p.lr, momentum=p.momentum, weight_decay=p.weight_decay)


def _hand_step(model, p, x_adv, y):
    opt = _sgd(model, p)
    model.train()
    loss = F.cross_entropy(model(x_adv), y)
    opt.zero_grad()
    loss.backward()
    opt.step()
    return loss


def test_algorithm_1_step_written_out_equals_train_step(synthetic_data):
    p = get_profile("smoke")
    x, y = synthetic_data.x_train[:16], synthetic_data.y_train[:16]
    net = _net()
    mine, ref = copy.deepcopy(net), copy.deepcopy(net)
    gen = torch.Generator().manual_seed(1)
    eps = p.fgsm_eps_choices[int(torch.randint(len(p.fgsm_eps_choices), (1,), generator=gen))]
    loss = _hand_step(mine, p, attacks.fgsm(mine, x, y, eps), y)
    g = torch.Generator().manual_seed(1)
    loss_ref, _, _ = train_step("fgsm", ref, _sgd(ref, p), x, y, p, reference_runtime(p), g, g, lr=p.lr)
    assert torch.allclose(loss, loss_ref) and same_state(mine, ref)
    assert not same_state(mine, net)          # the step moved the weights


def test_algorithm_2_step_written_out_equals_train_step(synthetic_data):
    p = get_profile("smoke")
    x, y = synthetic_data.x_train[:16], synthetic_data.y_train[:16]
    net = _net(1)
    mine, ref = copy.deepcopy(net), copy.deepcopy(net)
    gen, gen_dev = torch.Generator().manual_seed(2), torch.Generator().manual_seed(3)
    k = p.pgd_steps_choices[int(torch.randint(len(p.pgd_steps_choices), (1,), generator=gen))]
    x_adv = attacks.pgd(mine, x, y, p.pgd_eps, p.pgd_alpha, k, p.random_start, generator=gen_dev)
    loss = _hand_step(mine, p, x_adv, y)
    g, gd = torch.Generator().manual_seed(2), torch.Generator().manual_seed(3)
    loss_ref, _, _ = train_step("pgd", ref, _sgd(ref, p), x, y, p, reference_runtime(p), g, gd, lr=p.lr)
    assert torch.allclose(loss, loss_ref) and same_state(mine, ref)


def test_same_state_sees_weights_and_batchnorm_statistics():
    a = _net()
    b = copy.deepcopy(a)
    assert same_state(a, b)
    with torch.no_grad():
        next(b.parameters()).add_(1e-3)
    assert not same_state(a, b)
    c = copy.deepcopy(a)
    bn = next(m for m in c.modules() if isinstance(m, torch.nn.BatchNorm2d))
    bn.num_batches_tracked += 1               # an integer buffer, compared exactly
    assert not same_state(a, c)
    assert not same_state(a, build_model("resnet18", width=0.125, dataset="synthetic"))   # other shapes


def test_reference_runtime_is_fp32_on_the_cpu():
    rt = reference_runtime(get_profile("laptop", amp="bf16", channels_last="on"))
    assert rt.device.type == "cpu" and not rt.amp and not rt.channels_last


class _Ctx:
    """What check_matches_package asks of a notebook's ctx: the profile and the step's draws."""

    def __init__(self, p, seed=0):
        from dwf_lab.course.setup import Lesson
        self.lesson = Lesson(profile=p, seed=seed)

    def __getattr__(self, name):
        return getattr(self.lesson, name)


def _fgsm_step_by_hand(start, p, x, y, ctx, mode="train", lr_scale=1.0, step=True):
    mine = copy.deepcopy(start)
    gen, _ = ctx.step_draws("fgsm")
    eps = attacks.pick(p.fgsm_eps_choices, gen)
    x_adv = attacks.fgsm(mine, x, y, eps)
    mine.train(mode == "train")
    opt = torch.optim.SGD(mine.parameters(), lr=p.lr * lr_scale, momentum=p.momentum, weight_decay=p.weight_decay)
    loss = F.cross_entropy(mine(x_adv), y)
    opt.zero_grad()
    loss.backward()
    if step:
        opt.step()
    return mine, loss


def test_check_matches_package_passes_the_right_step_and_names_each_wrong_one(synthetic_data, capsys):
    from dwf_lab.course.analyses import check_matches_package
    from dwf_lab.course.exercises import ExerciseFailed
    p = get_profile("smoke")
    ctx = _Ctx(p)
    x, y = synthetic_data.x_train[:16], synthetic_data.y_train[:16]
    start = _net(2)
    mine, loss = _fgsm_step_by_hand(start, p, x, y, ctx)
    check_matches_package("fgsm", mine, loss, start, x, y, ctx)
    assert "equals dwf_lab's train_step('fgsm')" in capsys.readouterr().out
    cases = {"changed no weight": dict(step=False),
             "differs from the package's": dict(mode="eval"),           # BatchNorm in eval mode: another loss
             "after the step": dict(lr_scale=2.0)}                      # same loss, another update
    for words, kw in cases.items():
        mine, loss = _fgsm_step_by_hand(start, p, x, y, ctx, **kw)
        try:
            check_matches_package("fgsm", mine, loss, start, x, y, ctx)
        except ExerciseFailed as e:
            assert words in str(e) and "\n" not in str(e), (kw, str(e))
        else:
            raise AssertionError(f"{kw}: the check passed a wrong step")
