"""The gradient-masking checklist: it passes an honest model and FLAGS masked ones.

The second half is the point: a model whose gradients vanish (a detached output,
a rounding step on the input) looks perfectly robust to PGD and FGSM; the
checklist must say so, with the numbers.
"""
import copy
import dataclasses
import importlib.util
import json

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from dwf_lab import attacks
from dwf_lab.evaluation.checklist import (
    CheckItem,
    ChecklistSettings,
    ModeWatch,
    StoredPGD,
    check_bn_eval,
    check_deterministic,
    check_gradients,
    check_own_vs_relaxed_gradient,
    check_pgd_vs_worst_case,
    checklist_markdown,
    items_to_json,
    run_checklist,
    summary,
    with_stored_checks,
)
from dwf_lab.evaluation.metrics import WORST, pack_bits

EPS, ALPHA = 8 / 255, 2 / 255
from tinymodels import tiny_trained  # noqa: E402  (tests/ is on sys.path)

HAVE_ART = importlib.util.find_spec("art") is not None


class DetachedLogits(nn.Module):
    """Same predictions, zero gradient: ``logits * 0 + logits.detach()``."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        z = self.model(x)
        return z * 0 + z.detach()


class QuantizedInput(nn.Module):
    """Rounds the input to 8 levels first: a non-differentiable step (gradient 0 almost everywhere)."""

    def __init__(self, model, levels: int = 8):
        super().__init__()
        self.model, self.levels = model, levels

    def forward(self, x):
        return self.model(torch.round(x * (self.levels - 1)) / (self.levels - 1))


class NoisyLogits(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        z = self.model(x)
        return z + torch.randn_like(z)


def settings(**kw) -> ChecklistSettings:
    return ChecklistSettings.smoke(eps=EPS, alpha=ALPHA, steps=8, long_steps=12, long_restarts=2,
                                   eps_grid=(EPS, 16 / 255, 0.3), eps_grid_steps=8, square_queries=60,
                                   n_examples=32, **kw)


def by_key(items):
    return {it.key: it for it in items}


def test_checklist_passes_an_honest_model():
    model, data = tiny_trained(0)
    surrogate, _ = tiny_trained(1)
    items = run_checklist(model, data.x_test, data.y_test, settings(), surrogate=surrogate, square=HAVE_ART)
    assert len(items) == 9 and all(isinstance(it, CheckItem) for it in items)
    failed = [(it.key, it.evidence) for it in items if it.passed is False]
    assert not failed, failed
    k = by_key(items)
    assert k["white-box-vs-transfer"].passed is True
    assert k["eps-growth"].evidence["pgd_acc"][-1] <= 10
    assert k["non-zero-gradients"].evidence["fraction_zero_gradient"] == 0
    if HAVE_ART:
        assert k["white-box-vs-black-box"].passed is True
    md = checklist_markdown(items)
    assert "FAIL" not in md and md.count("✅ pass") == sum(it.passed is True for it in items)
    json.dumps(items_to_json(items))


@pytest.mark.parametrize("wrapper", [DetachedLogits, QuantizedInput])
def test_checklist_flags_a_gradient_masked_model(wrapper):
    honest, data = tiny_trained(0)
    masked = wrapper(honest).eval()
    x, y = data.x_test, data.y_test
    # what makes masking dangerous: it looks robust to the gradient attacks
    pgd = attacks.pgd(masked, x[:32], y[:32], EPS, ALPHA, 8)
    assert attacks.accuracy(masked, pgd, y[:32]) > attacks.accuracy(
        honest, attacks.pgd(honest, x[:32], y[:32], EPS, ALPHA, 8), y[:32]) + 0.2

    # Square gets enough queries to be a real attack: at 60 it beat masked PGD by only ~4 points
    # (a margin one CPU's kernels can erase), at 300 by 30+ on both wrappers
    items = run_checklist(masked, x, y, dataclasses.replace(settings(), square_queries=300),
                          surrogate=honest, square=HAVE_ART)
    k = by_key(items)
    assert summary(items)["failed"] > 0
    assert k["non-zero-gradients"].passed is False
    assert k["non-zero-gradients"].evidence["fraction_zero_gradient"] >= 0.9
    # attacks that do not need this model's gradients expose it
    assert k["white-box-vs-transfer"].passed is False
    assert k["eps-growth"].passed is False
    if HAVE_ART:
        assert k["white-box-vs-black-box"].passed is False
    assert len(summary(items)["failed_checks"]) >= 3
    md = checklist_markdown(items)
    assert "FAIL" in md and "fraction_zero_gradient = 1" in md


def test_batchnorm_hook_check():
    model, data = tiny_trained(0)
    x, y = data.x_test[:8], data.y_test[:8]
    model.train()
    try:
        ok = check_bn_eval(model, x, y, eps=EPS, alpha=ALPHA)   # our FGSM + PGD
        assert ok.passed and ok.evidence["calls"] > 0 and ok.evidence["calls_in_train_mode"] == 0
        assert ok.evidence["mode_restored"] and model.training

        def careless_attack(m, xb, yb):            # forgets eval mode
            xg = xb.clone().requires_grad_(True)
            F.cross_entropy(m(xg), yb).backward()
            return (xb + EPS * xg.grad.sign()).clamp(0, 1)
        bad = check_bn_eval(model, x, y, attack=careless_attack)
        assert bad.passed is False and bad.evidence["calls_in_train_mode"] > 0

        def leaves_eval(m, xb, yb):                # eval mode, but never gives the mode back
            m.eval()
            return m(xb)
        bad2 = check_bn_eval(model, x, y, attack=leaves_eval)
        assert bad2.passed is False and bad2.evidence["mode_restored"] is False
    finally:
        model.eval()


def test_determinism_check_flags_a_randomised_model():
    model, data = tiny_trained(0)
    assert check_deterministic(model, data.x_test[:16]).passed
    item = check_deterministic(NoisyLogits(model), data.x_test[:16])
    assert item.passed is False and item.evidence["max_abs_logit_diff"] > 0.1


# ------------------------------------------------- checks on stored results --
def _first(pct: float, n: int = 200) -> torch.Tensor:
    """Per example: the first pct% of n images correct (so every attack's survivors are nested)."""
    return torch.arange(n) < round(pct * n / 100)


def _record(**metrics):
    """An evaluation record with these accuracies, per example nested; the worst case is computed."""
    metrics = {"SA": 37.5, "fgsm:0.09": 5.0, **metrics}
    per = {k: _first(v) for k, v in metrics.items()}
    if any(k not in ("SA", "fgsm:0.09") for k in metrics):
        per[WORST] = torch.stack([c for k, c in per.items() if k != "fgsm:0.09"]).all(0)
        metrics[WORST] = 100.0 * per[WORST].float().mean().item()
    return {"n_test": 200, "metrics": metrics, "per_example": {k: pack_bits(c) for k, c in per.items()}}


def test_pgd_vs_worst_case_flags_a_model_that_other_attacks_break():
    s = ChecklistSettings(steps=20)             # at most 2% of the images (plus one example: 2.5%)
    # the laptop run's DWF: PGD-20 21.0, AutoAttack 15.0 -> 12 of 200 images only AutoAttack broke
    bad = check_pgd_vs_worst_case(_record(**{"pgd:20": 21.0, "autoattack": 15.0, "square": 26.0}), s)
    assert bad.passed is False
    ev = bad.evidence
    assert ev["broken_only_by_others"] == 12 and ev["broken_by"] == {"autoattack": 12} and ev["max_pct"] == 2.5
    # FGSM at eps = 0.09 is another threat model: never among the attacks that broke them
    assert "fgsm:0.09" not in ev["broken_by"]
    ok = check_pgd_vs_worst_case(_record(**{"pgd:20": 21.0, "autoattack": 19.5}), s)
    assert ok.passed is True and ok.evidence["broken_only_by_others"] == 3
    edge = check_pgd_vs_worst_case(_record(**{"pgd:20": 14.0, "autoattack": 11.5}), s)    # 5 images: the limit
    assert edge.passed is True
    # without adaptive attacks the check cannot run, and says how to make it run
    none = check_pgd_vs_worst_case({"n_test": 200, "metrics": {"SA": 37.5, "pgd:20": 21.0}}, s)
    assert none.passed is None and "dwf_lab adaptive" in none.evidence["not_run"]


def test_pgd_vs_worst_case_counts_per_example_not_the_net_gap():
    """Two attacks with the same accuracy that break different images: the aggregate gap is 0, the
    images only the other attack broke are 10%."""
    s = ChecklistSettings(steps=20)
    pgd, other = torch.zeros(200, dtype=torch.bool), torch.zeros(200, dtype=torch.bool)
    pgd[:40], other[20:60] = True, True
    rec = {"n_test": 200, "metrics": {"SA": 50.0, "pgd:20": 20.0, "apgd": 20.0, WORST: 10.0},
           "per_example": {"SA": pack_bits(_first(50.0)), "pgd:20": pack_bits(pgd), "apgd": pack_bits(other),
                           WORST: pack_bits(pgd & other)}}
    item = check_pgd_vs_worst_case(rec, s)
    assert item.passed is False and item.evidence["broken_only_by_others"] == 20


def test_own_vs_relaxed_gradient_flags_a_hard_selection():
    s = ChecklistSettings(steps=20)
    rec = {"n_test": 200, "gradient_modes": {"hard": {"pgd:20": 21.0}, "bpda": {"pgd:20": 13.5}}}
    item = check_own_vs_relaxed_gradient(rec, s)
    assert item.passed is False and item.evidence["own_gradient"] == "hard"
    assert item.evidence["pgd:20 (bpda)"] == 13.5
    rec["gradient_modes"]["bpda"]["pgd:20"] = 20.0     # within 2 points + one example
    assert check_own_vs_relaxed_gradient(rec, s).passed is True
    # a model with one gradient has nothing to compare
    assert check_own_vs_relaxed_gradient({"n_test": 200, "metrics": {}}, s) is None


def test_stored_checks_are_replaced_not_repeated_and_survive_a_json_round_trip():
    base = [CheckItem("x", True, {}, "", "batchnorm-eval")]
    rec = _record(**{"pgd:20": 21.0, "autoattack": 15.0, WORST: 15.0})
    first = with_stored_checks(base, rec)
    assert [it.key for it in first] == ["batchnorm-eval", "pgd-vs-worst-case"] and not first[-1].passed
    rec = _record(**{"pgd:20": 21.0, "autoattack": 20.0})               # a weaker set of attacks
    back = [CheckItem.from_dict(d) for d in items_to_json(first)]
    second = with_stored_checks(back, rec)
    assert [it.key for it in second] == ["batchnorm-eval", "pgd-vs-worst-case"]
    assert second[-1].passed is True and second[0] == base[0]


def test_the_checklist_reads_the_protocols_pgd_instead_of_attacking_again(tmp_path, monkeypatch):
    from dwf_lab.evaluation import checklist
    from dwf_lab.evaluation.checklist import stored_pgd
    from dwf_lab.evaluation.protocol import EvalSettings, evaluate_and_write

    model, data = tiny_trained(0)
    s = dataclasses.replace(settings(), steps=10, eps_grid_steps=10)   # the grid's step size at 8/255 is alpha
    x, y = data.x_test[:s.n_examples], data.y_test[:s.n_examples]
    ev = EvalSettings(fgsm_eps=(0.03,), pgd_steps=(s.steps,), pgd_eps=s.eps, pgd_alpha=s.alpha,
                      long_steps=s.long_steps, restarts=s.long_restarts + 1, batch_size=64)
    rec = evaluate_and_write(model, data.x_test[:48], data.y_test[:48], ev, tmp_path / "m_seed0.json", name="m",
                             row="m", seed=0, dataset="synthetic", progress=False)
    stored = stored_pgd(rec, s, len(x))
    assert stored is not None and (stored.long_steps, stored.restarts) == (s.long_steps, s.long_restarts + 1)
    steps_attacked = []
    real = checklist._pgd_acc
    monkeypatch.setattr(checklist, "_pgd_acc", lambda *a, **k: steps_attacked.append((a[3], a[5])) or real(*a, **k))
    items = by_key(run_checklist(model, x, y, s, square=False, stored=stored))
    conv = items["pgd-converged"].evidence
    assert conv["pgd_from"].startswith("the protocol's stored pgd:10 and pgd:12-ms")
    assert conv["pgd-10"] == round(100 * stored.short[:len(x)].float().mean().item(), 2)
    assert f"pgd-{s.long_steps}x{s.long_restarts + 1}" in conv
    # nothing ran the short or the long PGD again, nor the eps-grid's point at 8/255 (the same PGD-10)
    assert (s.eps, s.long_steps) not in steps_attacked and (s.eps, s.steps) not in steps_attacked
    assert sorted(e for e, _ in steps_attacked) == [16 / 255, 0.3]
    assert items["eps-growth"].evidence["pgd_acc"][0] == conv["pgd-10"]
    # what does not match is attacked, not reused: another eps, a longer attack, more images
    assert stored_pgd(rec, dataclasses.replace(s, eps=4 / 255), len(x)) is None
    assert stored_pgd(rec, dataclasses.replace(s, long_steps=s.long_steps + 1), len(x)) is None
    assert stored_pgd(rec, s, 49) is None


class TrainsItsBatchNorm(nn.Module):
    """A model that switches its BatchNorm layers to train mode inside its own forward pass."""
    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        for m in self.inner.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.train()
        return self.inner(x)


def test_batchnorm_check_fails_a_model_that_trains_its_batchnorm_inside_forward():
    model, data = tiny_trained(0)
    wrapped = TrainsItsBatchNorm(copy.deepcopy(model)).eval()
    item = check_bn_eval(wrapped, data.x_test[:8], data.y_test[:8], eps=EPS, alpha=ALPHA)   # the kit's own attacks
    assert item.passed is False and item.evidence["calls_in_train_mode"] > 0


# ------------------------------------------------ each check, made to fail --
def test_zero_gradient_check_fails_a_detached_model():
    model, data = tiny_trained(0)
    x, y = data.x_test[:16], data.y_test[:16]
    assert check_gradients(model, x, y).passed is True
    item = check_gradients(DetachedLogits(model).eval(), x, y)
    assert item.passed is False and item.evidence["fraction_zero_gradient"] == 1


def test_convergence_check_counts_the_images_only_the_long_attack_broke():
    """Short and long PGD at the same accuracy, breaking different images: no net drop, yet the
    long attack broke 25% of the images the short one left -- not converged."""
    model, data = tiny_trained(0)
    s = settings()
    x, y = data.x_test[:s.n_examples], data.y_test[:s.n_examples]
    short, long = torch.zeros(len(x), dtype=torch.bool), torch.zeros(len(x), dtype=torch.bool)
    short[:16], long[8:24] = True, True
    stored = StoredPGD(short, long, s.steps, s.long_steps, s.long_restarts, "made up")
    items = by_key(run_checklist(model, x, y, s, square=False, stored=stored))
    conv = items["pgd-converged"]
    assert conv.evidence[f"pgd-{s.steps}"] == conv.evidence[f"pgd-{s.long_steps}x{s.long_restarts}"]
    assert conv.passed is False and conv.evidence["broken_only_by_long"] == 8
    assert items["more-steps-help-attacker"].passed is True      # the aggregate sees nothing


class BatchStatsWhenNotAttacked(nn.Module):
    """Normalises its input with the batch's own statistics (``F.batch_norm(training=True)``, no layer
    to hook) -- but only in forward passes without gradients, i.e. never inside a gradient attack."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        if not torch.is_grad_enabled():
            x = F.batch_norm(x, None, None, training=True) * 0.01 + x
        return self.inner(x)


def test_batchnorm_check_sees_every_forward_pass_and_functional_batch_stats():
    model, data = tiny_trained(0)
    x, y = data.x_test[:8], data.y_test[:8]
    with ModeWatch() as watch:                         # a functional call in training mode is counted
        F.batch_norm(x, None, None, training=True)
        model(x)
    assert watch.train_calls == 1 and watch.calls > 1
    sly = BatchStatsWhenNotAttacked(model).eval()
    assert check_bn_eval(sly, x, y, eps=EPS, alpha=ALPHA).passed is True     # the attack alone never sees it
    items = by_key(run_checklist(sly, data.x_test, data.y_test, settings(), square=False))
    bn = items["batchnorm-eval"]
    assert bn.passed is False and bn.evidence["calls_in_train_mode"] > 0
    assert bn.evidence["watched"] == "every forward pass of the checklist"
