"""The official AutoAttack (pyautoattack) through dwf_lab.attacks.autoattack, on tiny trained models.

Reduced budgets keep these to seconds; what is checked is what the wrapper promises: the threat
model, the stage by stage accuracies, the labels, quiet and side-effect-free calls, one-line errors.
"""
import importlib.util
import logging
import re
import sys

import pytest
import torch
import torch.nn as nn
from tinymodels import tiny_trained  # tests/ is on sys.path

from dwf_lab.attacks import autoattack as official
from dwf_lab.attacks.autoattack import Budget, label, official_autoattack, planned_settings

EPS = 4 / 255
SMALL = Budget(n_iter=5, n_target_classes=2, n_queries=20, eot_iter=2)
needs_aa = pytest.mark.skipif(importlib.util.find_spec("pyautoattack") is None, reason="pyautoattack not installed")


@needs_aa
def test_official_suite_breaks_images_inside_the_ball_stage_by_stage(capsys):
    model, data = tiny_trained(0)
    x, y = data.x_test[:24], data.y_test[:24]
    model.train()
    rng = torch.get_rng_state()
    root_handlers = list(logging.getLogger().handlers)
    r = official_autoattack(model, x, y, eps=EPS, seed=3, batch_size=10, budget=SMALL)
    assert model.training, "the model's mode is given back"
    assert torch.equal(torch.get_rng_state(), rng), "the library's reseeding of torch is undone"
    assert logging.getLogger().handlers == root_handlers
    assert capsys.readouterr() == ("", ""), "the library's output is kept quiet"
    clean = (model.eval()(x).argmax(1) == y)
    assert r.correct.dtype == torch.bool and r.correct.shape == (24,)
    assert not (r.correct & ~clean).any()
    assert r.robust < 100 * clean.float().mean().item() - 10, "the suite lowers accuracy on a trained model"
    # the threat model, and the recomputation on the returned images
    assert (r.x_adv - x).abs().max() <= EPS + 1e-6 and r.x_adv.min() >= 0 and r.x_adv.max() <= 1
    with torch.no_grad():
        assert torch.equal(r.correct, model(r.x_adv).argmax(1) == y)
    # stages: clean first, each attack's accuracy after it, never rising, ending at the result
    assert list(r.stages) == ["clean", "apgd-ce", "apgd-t", "fab-t", "square"]
    vals = list(r.stages.values())
    assert vals[0] == pytest.approx(100 * clean.float().mean().item())
    assert all(b <= a for a, b in zip(vals, vals[1:]))
    assert vals[-1] == pytest.approx(r.robust) and r.rechecked == 0
    s = r.settings
    assert (s["version"], s["norm"], s["eps"], s["seed"], s["n"], s["batch_size"]) == \
        ("standard", "Linf", EPS, 3, 24, 10)
    assert s["attacks"] == ["apgd-ce", "apgd-t", "fab-t", "square"] and s["pyautoattack"] == "0.2.0"
    assert s["budget"]["apgd_iter"] == 5 and s["budget"]["fab_targets"] == 2 and s["budget"]["square_queries"] == 20


@needs_aa
def test_a_reduced_budget_is_never_labelled_standard():
    std = planned_settings(eps=8 / 255)
    assert std["standard"] is True and label(std) == "AutoAttack (official, standard)"
    assert std["budget"] == {"apgd_iter": 100, "apgd_restarts": 1, "apgd_eot_iter": 1, "apgd_rho": 0.75,
                             "apgd_t_iter": 100, "apgd_t_targets": 9, "apgd_t_restarts": 1, "fab_iter": 100,
                             "fab_targets": 9, "fab_restarts": 1, "square_queries": 5000, "square_p_init": 0.8,
                             "square_restarts": 1}
    # the standard values given explicitly change nothing
    assert planned_settings(eps=8 / 255, budget=Budget(100, 9, 5000, 20))["standard"] is True
    for small in (Budget(n_iter=99), Budget(n_target_classes=3), Budget(n_queries=500)):
        s = planned_settings(eps=8 / 255, budget=small)
        assert s["standard"] is False and "reduced budget: NOT the standard suite" in label(s)
    rand = planned_settings(eps=8 / 255, version="rand")
    assert rand["attacks"] == ["apgd-ce", "apgd-dlr"] and rand["budget"]["apgd_eot_iter"] == 20 and rand["standard"]
    assert not planned_settings(eps=8 / 255, version="rand", budget=Budget(eot_iter=2))["standard"]
    # APGD's checkpoints follow its iterations, by the library's own formulas
    aa = official._configured(None, "cpu", 8 / 255, "Linf", "standard", 0, Budget(n_iter=10))[0]
    assert (aa.apgd.n_iter, aa.apgd.n_iter_2, aa.apgd_targeted.n_iter) == (10, 2, 10)


class _Noisy(nn.Module):
    """A model with a random forward pass (noise on the input): the case for version="rand"."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner((x + 0.05 * torch.randn_like(x)).clamp(0, 1))


@needs_aa
def test_rand_version_for_a_random_forward_pass_and_the_library_warning():
    model, data = tiny_trained(0)
    x, y = data.x_test[:12], data.y_test[:12]
    noisy = _Noisy(model).eval()   # (a new module starts in train mode; the attack gives back the mode it found)
    r = official_autoattack(noisy, x, y, eps=EPS, version="rand", budget=Budget(n_iter=3, eot_iter=2))
    assert list(r.stages) == ["clean", "apgd-ce", "apgd-dlr"] and r.settings["budget"]["apgd_eot_iter"] == 2
    assert not r.settings["standard"]
    std = official_autoattack(noisy, x, y, eps=EPS, budget=Budget(n_iter=2, n_target_classes=1, n_queries=2))
    assert any("randomized defense" in w for w in std.settings["library_warnings"])


@needs_aa
def test_bad_requests_get_one_clear_error():
    model, data = tiny_trained(0)
    x, y = data.x_test[:4], data.y_test[:4]
    for kw, msg in ((dict(version="plus"), "standard"), (dict(norm="L2"), "L-inf"), (dict(seed=None), "seed"),
                    (dict(eps=8), "8/255")):
        with pytest.raises(ValueError, match=msg):
            official_autoattack(model, x, y, **{"eps": EPS, **kw})
    with pytest.raises(ValueError, match="positive integer"):
        Budget(n_iter=0)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        official_autoattack(model, x * 2 - 0.5, y, eps=EPS)


@needs_aa
def test_a_changed_library_log_gives_no_stages_not_a_guess(monkeypatch):
    """A log this kit cannot read loses the stage-by-stage figures, never guesses them, and says
    why (with the version to pin); the per-example result the library finished is kept."""
    model, data = tiny_trained(0)
    monkeypatch.setattr(official, "_PERTURBED", re.compile("never matches"))
    r = official_autoattack(model, data.x_test[:16], data.y_test[:16], eps=EPS, budget=SMALL)
    assert r.stages == {} and "pyautoattack==0.2.0" in r.settings["stage_error"]
    assert r.correct.dtype == torch.bool and r.correct.shape == (16,)


def test_missing_library_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "pyautoattack", None)
    model, data = tiny_trained(0)
    with pytest.raises(official.AutoAttackUnavailableError, match="pip install pyautoattack==0.2.0"):
        official_autoattack(model, data.x_test[:4], data.y_test[:4], eps=EPS)
    assert not official.available()
    assert issubclass(official.AutoAttackUnavailableError, RuntimeError)   # the CLI shows it in one line


@needs_aa
def test_the_official_square_alone_lowers_accuracy_inside_the_ball():
    model, data = tiny_trained(0)
    x, y = data.x_test[:32], data.y_test[:32]
    model.eval()
    with torch.no_grad():
        clean = model(x).argmax(1) == y
    ok = official.official_square(model, x, y, eps=8 / 255, max_iter=50, batch_size=16, seed=1)
    assert ok.dtype == torch.bool and ok.shape == (32,)
    assert not (ok & ~clean).any()
    assert ok.sum() < clean.sum(), "a black-box attack still breaks some images of a tiny model"
    again = official.official_square(model, x, y, eps=8 / 255, max_iter=50, batch_size=16, seed=1)
    assert torch.equal(ok, again), "the seed fixes the result"


@needs_aa
def test_the_library_leaves_torchs_global_generator_as_it_found_it():
    model, data = tiny_trained(0)
    x, y = data.x_test[:16], data.y_test[:16]
    torch.manual_seed(1234)
    before = torch.random.get_rng_state()
    official.official_square(model, x, y, 8 / 255, max_iter=5, seed=7)
    official_autoattack(model, x, y, eps=8 / 255, seed=7, budget=Budget(n_iter=2, n_target_classes=1, n_queries=3))
    assert torch.equal(torch.random.get_rng_state(), before)


@needs_aa
def test_a_log_it_cannot_read_loses_the_stages_never_the_per_example_result(monkeypatch):
    model, data = tiny_trained(0)
    x, y = data.x_test[:16], data.y_test[:16]
    budget = Budget(n_iter=2, n_target_classes=1, n_queries=3)
    good = official_autoattack(model, x, y, eps=8 / 255, seed=3, budget=budget)

    def unreadable(*a, **k):
        raise RuntimeError("could not read AutoAttack's stage by stage accuracies (test)")
    monkeypatch.setattr(official, "_stages", unreadable)
    r = official_autoattack(model, x, y, eps=8 / 255, seed=3, budget=budget)
    assert torch.equal(r.correct, good.correct) and r.stages == {}
    assert "could not read" in r.settings["stage_error"]
