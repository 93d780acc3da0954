"""The checks of notebooks 05-08 (course/checks_late.py): each passes the reference answer, says
"not attempted" for none, and names each seeded mistake in its one line."""
import copy

import pytest
import torch
import torch.nn.functional as F

from dwf_lab import attacks
from dwf_lab.course import checks_late as cl
from dwf_lab.course.exercises import ExerciseFailed
from dwf_lab.reporting.noise import paired_difference

EPS, ALPHA = 8 / 255, 2 / 255


def _fails(match, check, *args, **kw):
    with pytest.raises(ExerciseFailed, match=match) as e:
        check(*args, **kw)
    assert "\n" not in str(e.value)


def _not_attempted(capsys, check, *args, **kw):
    assert not check(*args, **kw)
    assert "not attempted" in capsys.readouterr().out


# ------------------------------------------------------------------ 05 --
@pytest.fixture
def correct():
    g = torch.Generator().manual_seed(0)
    base = torch.rand(60, generator=g) < 0.7
    out = {"SA": torch.ones(60, dtype=torch.bool)}
    for key, p in (("fgsm:0.01", 0.05), ("fgsm:0.03", 0.2), ("fgsm:0.09", 0.6), ("pgd:2", 0.25), ("pgd:4", 0.3)):
        out[key] = base & (torch.rand(60, generator=g) > p)
    out["worst-case"] = torch.stack([out[k] for k in ("SA", "fgsm:0.01", "fgsm:0.03", "pgd:2", "pgd:4")]).all(0)
    return out


def test_worst_case(correct, capsys):
    _not_attempted(capsys, cl.check_worst_case, 1, None, correct, EPS)
    _not_attempted(capsys, cl.check_worst_case, 1, lambda c: None, correct, EPS)
    keys = ("SA", "fgsm:0.01", "fgsm:0.03", "pgd:2", "pgd:4")
    assert cl.check_worst_case(1, lambda c: torch.stack([c[k] for k in keys]).all(0), correct, EPS)
    assert "correct" in capsys.readouterr().out
    _fails("took the minimum of the column accuracies", cl.check_worst_case, 1,
           lambda c: min(100 * float(c[k].float().mean()) for k in keys), correct, EPS)
    _fails("used any\\(\\) instead of all\\(\\)", cl.check_worst_case, 1,
           lambda c: torch.stack([c[k] for k in keys]).any(0), correct, EPS)
    _fails("included FGSM at ε above", cl.check_worst_case, 1,
           lambda c: torch.stack([v for v in c.values()]).all(0), correct, EPS)
    lowest = min(keys, key=lambda k: float(correct[k].float().mean()))
    _fails("lowest column alone", cl.check_worst_case, 1, lambda c: c[lowest], correct, EPS)
    _fails("one True/False per image", cl.check_worst_case, 1, lambda c: torch.ones(3, dtype=torch.bool), correct, EPS)


def test_survivor_counts(capsys):
    a = torch.tensor([1, 1, 0, 0, 1], dtype=torch.bool)
    b = torch.tensor([1, 0, 1, 0, 0], dtype=torch.bool)
    _not_attempted(capsys, cl.check_survivor_counts, 2, None, a, b)
    right = {"only DWF": 2, "only PGD-AT": 1, "both": 1, "neither": 1}
    assert cl.check_survivor_counts(2, right, a, b)
    _fails("swapped", cl.check_survivor_counts, 2, {**right, "only DWF": 1, "only PGD-AT": 2}, a, b)
    _fails("add up to", cl.check_survivor_counts, 2, {**right, "both": 3}, a, b)


def test_stronger_attack(trained_model, attack_batch, capsys):
    x, y = attack_batch[0][:8], attack_batch[1][:8]
    _not_attempted(capsys, cl.check_stronger_attack, 3, None, trained_model, x, y, EPS, 8, 100)
    good = attacks.pgd(trained_model, x, y, EPS, ALPHA, 5, generator=torch.Generator().manual_seed(0))
    assert cl.check_stronger_attack(3, good, trained_model, x, y, EPS, 8, 100)
    _fails("ε", cl.check_stronger_attack, 3, (x + 2 * EPS).clamp(0, 1), trained_model, x, y, EPS, 8, 100)
    _fails("\\[0, 1\\]", cl.check_stronger_attack, 3, x + EPS, trained_model, x, y, EPS, 8, 100)


# ------------------------------------------------------------------ 06 --
def _dlr(z, y):
    zs = z.sort(1).values
    z_y = z.gather(1, y[:, None]).squeeze(1)
    z_other = torch.where(zs[:, -1] == z_y, zs[:, -2], zs[:, -1])
    return -(z_y - z_other) / (zs[:, -1] - zs[:, -3] + 1e-12)


@pytest.fixture
def logits():
    g = torch.Generator().manual_seed(1)
    z = 3 * torch.randn(40, 10, generator=g)
    y = torch.randint(0, 10, (40,), generator=g)
    y[:20] = z[:20].argmax(1)           # half of them classified correctly
    return z, y


def test_dlr(logits, capsys):
    z, y = logits
    _not_attempted(capsys, cl.check_dlr, 1, None, z, y)
    assert cl.check_dlr(1, _dlr, z, y)
    _fails("sign reversed", cl.check_dlr, 1, lambda z, y: -_dlr(z, y), z, y)
    _fails("the max includes the true class", cl.check_dlr, 1,
           lambda z, y: -(z.gather(1, y[:, None]).squeeze(1) - z.max(1).values)
           / (z.sort(1).values[:, -1] - z.sort(1).values[:, -3] + 1e-12), z, y)
    _fails("no denominator", cl.check_dlr, 1,
           lambda z, y: _dlr(z, y) * (z.sort(1).values[:, -1] - z.sort(1).values[:, -3] + 1e-12), z, y)
    _fails("softmax probabilities", cl.check_dlr, 1, lambda z, y: _dlr(z.softmax(1), y), z, y)
    _fails("one number", cl.check_dlr, 1, lambda z, y: _dlr(z, y).mean(), z, y)


def _gate_pgd(sign=1.0, detach=False, evaluate=True, clamp=True, at=None):
    def fn(model, x, y, k, lam, eps, alpha, steps, generator):
        if evaluate:
            model.eval()
        x_adv = attacks.random_start_in_ball(x, eps, generator)
        for _ in range(steps):
            x_req = x_adv.clone().requires_grad_(True)
            logw = model.log_weights(x if at == "x" else x_req)
            if detach:
                logw = logw.detach()
            loss = F.cross_entropy(model(x_req), y, reduction="sum") + sign * lam * logw[:, k].sum()
            g = torch.autograd.grad(loss, x_req)[0]
            x_adv = torch.min(torch.max(x_adv + alpha * g.sign(), x - eps), x + eps)
            if clamp:
                x_adv = x_adv.clamp(0, 1)
        return x_adv
    return fn


def test_gate_attack(make_mixture, images, capsys):
    mix = make_mixture().eval()
    y = torch.arange(len(images)) % 10
    args = (mix, images, y, 0, 2.0, EPS, ALPHA, 3)
    _not_attempted(capsys, cl.check_gate_attack, 2, None, *args)
    assert cl.check_gate_attack(2, _gate_pgd(), *args)
    assert "routing_loss" in capsys.readouterr().out
    _fails("detached gate / zero gradient", cl.check_gate_attack, 2, _gate_pgd(detach=True), *args)
    _fails("detached gate / zero gradient", cl.check_gate_attack, 2, _gate_pgd(at="x"), *args)
    _fails("sign of λ term reversed", cl.check_gate_attack, 2, _gate_pgd(sign=-1.0), *args)
    _fails("BatchNorm in train mode", cl.check_gate_attack, 2, _gate_pgd(evaluate=False), *args)
    stacked = copy.deepcopy(mix)
    stacked.expert_batching = "vmap"        # the evaluation layout: the check still sees each expert's BatchNorm
    _fails("BatchNorm in train mode", cl.check_gate_attack, 2, _gate_pgd(evaluate=False),
           stacked, images, y, 0, 2.0, EPS, ALPHA, 3)
    _fails("missing clamp", cl.check_gate_attack, 2, _gate_pgd(clamp=False),
           mix, torch.ones_like(images) * 0.999, y, 0, 2.0, EPS, ALPHA, 3)
    _fails("zero gradient", cl.check_gate_attack, 2,
           lambda m, x, y, k, lam, eps, alpha, steps, gen: attacks.random_start_in_ball(x, eps, gen), *args)


def test_masked_and_noisy_models(trained_model, attack_batch, make_mixture, images, capsys):
    x, y = attack_batch[0][:8], attack_batch[1][:8]
    _not_attempted(capsys, cl.check_masked_model, 3, None, trained_model, x, y)
    masked = copy.deepcopy(trained_model)
    masked.register_forward_hook(lambda m, i, z: z * 0 + z.detach())
    assert cl.check_masked_model(3, masked, trained_model, x, y)
    _fails("the model itself", cl.check_masked_model, 3, trained_model, trained_model, x, y)
    _fails("not zero", cl.check_masked_model, 3, copy.deepcopy(trained_model), trained_model, x, y)
    doubled = copy.deepcopy(trained_model)
    doubled.register_forward_hook(lambda m, i, z: -z.detach())
    _fails("predictions differ", cl.check_masked_model, 3, doubled, trained_model, x, y)

    mix = make_mixture().eval()
    noisy = copy.deepcopy(mix)
    noisy.register_forward_pre_hook(lambda m, a: ((a[0] + 0.001 * torch.randn_like(a[0])).clamp(0, 1),))
    assert cl.check_noisy_model(4, noisy, mix, images)
    _fails("same logits", cl.check_noisy_model, 4, copy.deepcopy(mix), mix, images)
    _fails("the mixture itself", cl.check_noisy_model, 4, mix, mix, images)


# ------------------------------------------------------------------ 07 --
def test_uniform_logits(make_mixture, images, capsys):
    experts = list(make_mixture().eval().experts)
    _not_attempted(capsys, cl.check_uniform_logits, 1, None, experts, images)
    assert cl.check_uniform_logits(1, lambda es, x: torch.stack([e(x) for e in es]).mean(0), experts, images)
    _fails("softmax probabilities", cl.check_uniform_logits, 1,
           lambda es, x: torch.stack([e(x).softmax(1) for e in es]).mean(0), experts, images)
    _fails("summed, not averaged", cl.check_uniform_logits, 1,
           lambda es, x: torch.stack([e(x) for e in es]).sum(0), experts, images)


def test_paired_rows(capsys):
    paired = {"a": (5.0, 1.0), "b": (1.0, 1.0), "c": (-3.0, 1.0)}
    unpaired = {"a": 2.0, "b": 2.0, "c": 2.0}
    _not_attempted(capsys, cl.check_paired_rows, 2, None, paired, unpaired)
    assert cl.check_paired_rows(2, {"a", "c"}, paired, unpaired)
    _fails("unpaired", cl.check_paired_rows, 2, ["a"], paired, unpaired)
    _fails("not beyond noise: b", cl.check_paired_rows, 2, {"a", "b", "c"}, paired, unpaired)


# ------------------------------------------------------------------ 08 --
def _paired(a, b):
    d = a.float() - b.float()
    return 100 * float(d.mean()), 100 * float(d.std()) / len(d) ** 0.5


def test_paired_se(capsys):
    _not_attempted(capsys, cl.check_paired_se, 3, None)
    assert cl.check_paired_se(3, _paired)
    by_hand = lambda a, b: (100 * float((a.float() - b.float()).mean()),   # noqa: E731 - the notebook's formula
                            100 * ((a & ~b).sum().item() + (b & ~a).sum().item()
                                   - ((a & ~b).sum().item() - (b & ~a).sum().item()) ** 2 / len(a)) ** 0.5 / len(a))
    assert cl.check_paired_se(3, by_hand)

    def unpaired(a, b):
        pa, pb = 100 * a.float().mean(), 100 * b.float().mean()
        return float(pa - pb), float(((pa * (100 - pa) + pb * (100 - pb)) / len(a)) ** 0.5)
    _fails("as if independent", cl.check_paired_se, 3, unpaired)
    _fails("fractions", cl.check_paired_se, 3, lambda a, b: tuple(v / 100 for v in _paired(a, b)))
    _fails("wrong sign", cl.check_paired_se, 3, lambda a, b: _paired(b, a))
    _fails("divide by √n", cl.check_paired_se, 3,
           lambda a, b: (_paired(a, b)[0], 100 * float((a.float() - b.float()).std())))
    a = torch.tensor([1, 1, 0, 1, 0, 1], dtype=torch.bool)
    b = torch.tensor([1, 0, 0, 1, 1, 0], dtype=torch.bool)
    assert cl.check_paired_se(3, lambda a, b: paired_difference(a, b)[:2], [(a, b)])


def test_numbers(capsys):
    _not_attempted(capsys, cl.check_number, 1, None, 2.0, "the ratio")
    assert cl.check_number(1, 2.0004, 2.0, "the ratio", rel=1e-3)
    _fails("forgot the 2", cl.check_number, 1, 0.5, 2.0, "n'", mistakes={"no_two": (0.5, "forgot the 2")})
    _fails("you have 3", cl.check_number, 1, 3.0, 2.0, "n'")
    assert cl.check_numbers(2, {"a": 1.0, "b": 2.0}, {"a": 1.0, "b": 2.0}, "sizes")
    _fails("keys", cl.check_numbers, 2, {"a": 1.0}, {"a": 1.0, "b": 2.0}, "sizes")
    _fails("quarter", cl.check_numbers, 2, {"a": 0.25, "b": 0.5}, {"a": 1.0, "b": 2.0}, "sizes",
           mistakes={"q": ({"a": 0.25, "b": 0.5}, "a quarter of it")})
    assert cl.check_numbers(2, {}, {}, "sizes")


def test_average_without(trained_model, tiny_model, attack_batch, capsys):
    x, y = attack_batch[0][:32], attack_batch[1][:32]
    other = copy.deepcopy(trained_model)
    with torch.no_grad():
        for q in other.parameters():
            q.mul_(1.05)
    experts = {"benign": tiny_model.eval(), "fgsm-1": trained_model, "pgd-1": other}
    args = (experts, "benign", x, y, 1 / 255, 0.5 / 255, 2, 0)
    _not_attempted(capsys, cl.check_average_without, 3, None, *args)
    right = cl.average_pgd_accuracy([trained_model, other], x, y, 1 / 255, 0.5 / 255, 2, 0)
    every = cl.average_pgd_accuracy(list(experts.values()), x, y, 1 / 255, 0.5 / 255, 2, 0)
    assert right > 0 and abs(every - right) > 1e-4
    assert cl.check_average_without(3, right, *args)
    _fails("average of every expert", cl.check_average_without, 3, every, *args)
    _fails("a fraction", cl.check_average_without, 3, right / 100, *args)
