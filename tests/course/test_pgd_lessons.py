"""Notebooks 02 and 03: the checks of 03's exercises, the side runs and what is read off them.

- 03 Exercise 1 (``check_epoch_cost``): seconds per epoch, measured; the stages' total times, the
  ratio upside down and the cost model's number are each named; the reference passes;
- 03 Exercise 2 (``check_best_epoch``): early stopping on held-out PGD accuracy; the last epoch,
  training robust accuracy, clean or FGSM accuracy, a list position and the lowest epoch are each
  named; the reference passes;
- 03 Exercise 3 (``check_inner_max_at_x``): PGD with every gradient at x passes (and is FGSM once
  the steps span the ball); the correct PGD, no random start, no projection, BatchNorm in train
  mode are named;
- an unanswered exercise says "not attempted" and raises nothing;
- the side runs (``dwf_lab.training.side_runs``) run at the smoke profile in seconds and return one
  number per epoch; ``analyses.side_run`` keeps them in the run folder and loads them again;
  ``analyses.side_run_verdict`` says "collapsed" / "robust overfitting" only when the numbers do;
- the cost model is ⅔k + 1 (21x at the paper's mean k = 30, not 31x).
"""
from __future__ import annotations

import copy
import time
from types import SimpleNamespace

import pytest
import torch
from tinymodels import tiny_trained

from dwf_lab import attacks
from dwf_lab.core.config import get_profile
from dwf_lab.course import analyses, exercises
from dwf_lab.course.exercises import ExerciseFailed
from dwf_lab.store.runs import Run
from dwf_lab.training import side_runs
from dwf_lab.training.builders import build_expert, load_data

EPS, ALPHA, STEPS = 8 / 255, 2 / 255, 10


# ------------------------------------------------------ Exercise 1: cost --
CURVES = {"benign": {"seconds": [2.0, 2.0, 2.0, 2.0]}, "pgd-1": {"seconds": [6.0, 6.0]}}


def test_epoch_cost_reference_passes(capsys):
    assert exercises.check_epoch_cost(1, 3.0, CURVES, "pgd-1", model_ratio=2.0)
    assert "Exercise 1: correct" in capsys.readouterr().out


@pytest.mark.parametrize("answer, words", [(12 / 8, "total times"), (1 / 3, "upside down"),
                                           (2.0, "cost model's prediction"), (5.0, "you have 5.000")])
def test_epoch_cost_mistakes_are_named(answer, words):
    with pytest.raises(ExerciseFailed) as e:
        exercises.check_epoch_cost(1, answer, CURVES, "pgd-1", model_ratio=2.0)
    assert words in str(e.value) and "\n" not in str(e.value)


def test_epoch_cost_without_times_goes_on(capsys):
    assert not exercises.check_epoch_cost(1, 3.0, {"pgd-1": CURVES["pgd-1"]}, "pgd-1", model_ratio=2.0)
    assert "cannot be checked" in capsys.readouterr().out


# ------------------------------------------------ Exercise 2: early stopping --
WATCH = {"epoch": [1, 2, 3, 4, 5, 6], "pgd": [12.0, 20.0, 26.0, 24.0, 21.0, 19.0],
         "clean": [30.0, 34.0, 36.0, 39.0, 41.0, 42.0], "fgsm": [14.0, 22.0, 28.0, 29.0, 27.0, 26.0],
         "train_adv": [15.0, 25.0, 35.0, 50.0, 65.0, 80.0]}


def best_right(watch):
    pgd = watch["pgd"]
    return watch["epoch"][pgd.index(max(pgd))]


def _argmax(v):
    return max(range(len(v)), key=lambda i: (v[i], -i))


MISTAKES = [
    (lambda w: w["epoch"][-1], "kept the last epoch"),
    (lambda w: w["epoch"][_argmax(w["train_adv"])], "training attack's examples"),
    (lambda w: w["epoch"][_argmax(w["clean"])], "held-out clean accuracy"),
    (lambda w: w["epoch"][_argmax(w["fgsm"])], "held-out FGSM accuracy"),
    (lambda w: _argmax(w["pgd"]), "position in the list"),
    (lambda w: w["epoch"][min(range(len(w["pgd"])), key=lambda i: w["pgd"][i])], "LOWEST"),
]


def test_best_epoch_reference_passes(capsys):
    assert exercises.check_best_epoch(2, best_right, WATCH)
    out = capsys.readouterr().out
    assert "Exercise 2: correct" in out and "epoch 3" in out
    assert exercises.best_epoch(WATCH) == 3


@pytest.mark.parametrize("fn, words", MISTAKES, ids=[w for _, w in MISTAKES])
def test_each_early_stopping_mistake_is_named(fn, words):
    with pytest.raises(ExerciseFailed) as e:
        exercises.check_best_epoch(2, fn, WATCH)
    assert words in str(e.value) and "\n" not in str(e.value)


def test_best_epoch_returns_an_epoch_number():
    with pytest.raises(ExerciseFailed, match="one epoch number"):
        exercises.check_best_epoch(2, lambda w: (3, 26.0), WATCH)


# ------------------------------------------- Exercise 3: the gradient at x --
@pytest.fixture(scope="module")
def setting():
    model, data = tiny_trained(0)
    return model, data.x_test[:24], data.y_test[:24]


def at_x(random_start=True, projection=True, eval_mode=True, at_iterate=False):
    """PGD whose every gradient is at x (the printed Eq. 4), or one seeded mistake of it."""
    def attack(model, x, y, eps, alpha, steps, generator):
        if eval_mode:
            model.eval()
        x_adv = attacks.random_start_in_ball(x, eps, generator) if random_start else x.clone()
        for _ in range(steps):
            g = attacks.input_gradient(model, x_adv if at_iterate else x, y)
            x_adv = x_adv + alpha * g.sign()
            x_adv = attacks.project(x_adv, x, eps) if projection else x_adv.clamp(0, 1)
        return x_adv
    return attack


pgd_at_x = at_x()
pgd_right = at_x(at_iterate=True)                 # the correct PGD: not what the exercise asks
at_x_no_start = at_x(random_start=False)
at_x_no_projection = at_x(projection=False)
at_x_train_mode = at_x(eval_mode=False)


def test_pgd_with_the_gradient_at_x_passes_and_is_fgsm(setting, capsys):
    model, x, y = setting
    assert exercises.check_inner_max_at_x(3, pgd_at_x, model, x, y, EPS, ALPHA, STEPS)
    out = capsys.readouterr().out
    assert "Exercise 3: correct" in out and "equal plain FGSM" in out
    gen = torch.Generator().manual_seed(0)
    same = exercises.differing_share(pgd_at_x(copy.deepcopy(model), x, y, EPS, ALPHA, STEPS, gen),
                                     attacks.fgsm(model, x, y, EPS))
    assert same < 0.01        # 10 x 2/255 spans the ball: FGSM's corner, but for zero-gradient pixels


@pytest.mark.parametrize("fn, words, steps", [(pgd_right, "correct PGD", STEPS),
                                              (at_x_no_projection, "missing projection", STEPS),
                                              (at_x_train_mode, "BatchNorm in train mode", STEPS),
                                              # the start only matters while the steps do not span the ball
                                              (at_x_no_start, "no random start", 3)])
def test_the_gradient_at_x_mistakes_are_named(setting, fn, words, steps):
    model, x, y = setting
    with pytest.raises(ExerciseFailed) as e:
        exercises.check_inner_max_at_x(3, fn, model, x, y, EPS, ALPHA, steps)
    assert words in str(e.value) and "\n" not in str(e.value)


def test_unanswered_exercises_are_not_attempted(setting, capsys):
    model, x, y = setting

    def stub(*args):
        ...
    assert not exercises.check_epoch_cost(1, None, CURVES, "pgd-1", model_ratio=2.0)
    assert not exercises.check_best_epoch(2, stub, WATCH)
    assert not exercises.check_inner_max_at_x(3, stub, model, x, y, EPS, ALPHA, STEPS)
    assert capsys.readouterr().out.count("not attempted") == 3


# ------------------------------------------------------------- side runs --
@pytest.fixture(scope="module")
def smoke():
    p = get_profile("smoke")
    return p, load_data(p)


@pytest.mark.parametrize("kind", side_runs.KINDS)
def test_a_side_run_at_smoke_is_fast_and_gives_one_number_per_epoch(smoke, kind):
    p, data = smoke
    t0 = time.perf_counter()
    s = side_runs.side_run_settings(kind, p, data)
    start = build_expert(p, data) if s.warm_start else None
    r = side_runs.side_run(kind, p, data, seed=0, progress=False, start=start)
    assert time.perf_counter() - t0 < 60
    assert r["epoch"] == list(range(0 if s.warm_start else 1, s.epochs + 1))
    for key in ("clean", "fgsm", "pgd", "train_adv"):
        assert len(r[key]) == len(r["epoch"]) and all(0 <= v <= 100 for v in r[key] if v == v)   # NaN: no training yet
    assert set(analyses.side_run_series(r)) == set(r["labels"].values())


def test_side_run_settings(smoke):
    p, data = smoke
    laptop = get_profile("laptop")
    co = side_runs.side_run_settings("catastrophic", laptop, SimpleNamespace(x_train=torch.zeros(5000)))
    assert co.recipe == "fgsm" and not co.random_start and co.eps == 16 / 255 and co.decay_at is None
    assert co.warm_start      # from the run's benign expert
    with pytest.raises(ValueError, match="starts from a trained model"):
        side_runs.side_run("catastrophic", p, data, seed=0, progress=False)
    ro = side_runs.side_run_settings("robust", laptop, SimpleNamespace(x_train=torch.zeros(5000)))
    assert ro.recipe == "pgd" and ro.steps == max(laptop.pgd_steps_choices) and ro.decay_at is not None
    with pytest.raises(ValueError, match="side run must be one of"):
        side_runs.side_run_settings("other", p, data)


def test_the_side_run_is_kept_in_the_run_folder_and_loaded(smoke, tmp_path, monkeypatch):
    p, data = smoke
    run = Run("side", p, root=tmp_path / "side")
    ctx = SimpleNamespace(profile=run.profile, data=data, run=run, seed=0)
    first = analyses.side_run(ctx, "robust", progress=False)
    assert not first["loaded"] and (run.seed_dir(0) / "side-runs" / "robust.json").exists()
    monkeypatch.setattr(analyses, "train_side_run", lambda *a, **k: pytest.fail("trained again"))
    again = analyses.side_run(ctx, "robust", progress=False)
    assert again["loaded"] and again["pgd"] == first["pgd"]


def _result(kind, pgd, fgsm, clean, train, n_val=128):
    s = {"kind": kind, "recipe": "fgsm" if kind == "catastrophic" else "pgd", "eps": 16 / 255 if kind == "catastrophic"
         else 8 / 255, "alpha": 4 / 255, "steps": 3, "n_train": 192, "n_val": n_val, "epochs": len(pgd), "lr": 0.05,
         "decay_at": None if kind == "catastrophic" else 0.5, "eval_steps": 5}
    return {"kind": kind, "epoch": list(range(1, len(pgd) + 1)), "pgd": pgd, "fgsm": fgsm, "clean": clean,
            "train_adv": train, "settings": s, "labels": {}}


def test_the_verdicts_say_only_what_the_numbers_show():
    collapsed = _result("catastrophic", [10, 18, 22, 3, 1], [12, 20, 25, 45, 60], [30, 35, 40, 42, 44],
                        [12, 20, 30, 50, 70])
    text = " ".join(analyses.side_run_verdict(collapsed))
    assert "collapsed" in text and "learned to defeat its own single step" in text and "label leaking" in text
    steady = _result("catastrophic", [10, 14, 16, 17, 18], [12, 16, 19, 20, 21], [30, 35, 40, 42, 44],
                     [12, 16, 19, 20, 21])
    text = " ".join(analyses.side_run_verdict(steady))
    assert "no collapse" in text and "defeat its own" not in text
    overfit = _result("robust", [10, 20, 30, 28, 22, 20], [12] * 6, [40] * 6, [20, 30, 40, 55, 70, 85])
    text = " ".join(analyses.side_run_verdict(overfit))
    assert "Robust overfitting" in text and "keep epoch 3" in text
    noisy = _result("robust", [10, 20, 30, 29, 28, 28], [12] * 6, [40] * 6, [20, 30, 40, 55, 70, 85])
    text = " ".join(analyses.side_run_verdict(noisy))
    assert "No robust overfitting" in text and "Early stopping" not in text


def test_the_cost_model_is_two_thirds_k_plus_one():
    cost = analyses.pgd_cost(get_profile("laptop"))
    assert cost["attack_step"] == pytest.approx(2 / 3)
    assert cost["paper_per_batch"] == pytest.approx(21.0) and cost["paper_naive"] == pytest.approx(31.0)
    assert cost["per_batch"] == pytest.approx(2 / 3 * 2 + 1)      # k from {1, 2, 3}


def test_the_phenomenon_notes_are_computed_from_the_profile():
    laptop, paper = get_profile("laptop"), get_profile("paper")
    assert "cannot appear" in analyses.phenomenon_note(laptop, "pgd")
    assert "can show it" in analyses.phenomenon_note(paper, "pgd")
    assert "may or may not" in analyses.phenomenon_note(laptop, "fgsm")
    assert "long enough" in analyses.phenomenon_note(paper, "fgsm")
