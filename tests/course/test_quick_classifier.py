"""Notebook 00's first classifier: trained in a time budget, it learns, keeps the budget and the
epoch cap, and is left in eval mode; pick_fooled finds an image FGSM fools and says how common
that is; accuracy_text gives the binomial standard error."""
import math

import pytest
import torch

from dwf_lab import attacks
from dwf_lab.core.config import get_profile
from dwf_lab.course.analyses import QUICK_BATCH, accuracy_text, pick_fooled, quick_classifier
from dwf_lab.data import load_dataset


@pytest.fixture(scope="module")
def data():
    return load_dataset("synthetic", n_train=640, n_test=200, seed=0)


@pytest.fixture(scope="module")
def quick(data):
    p = get_profile("smoke")
    return quick_classifier(p, data, seconds=60, max_epochs=3)


def test_it_learns_within_the_epoch_cap(quick, data):
    model, info = quick
    assert info["steps"] == 3 * (640 // QUICK_BATCH) and info["epochs"] == pytest.approx(3.0)
    assert info["width"] == get_profile("smoke").width        # narrower than QUICK_WIDTH: the profile's
    assert not model.training
    acc = attacks.accuracy(model, data.x_test, data.y_test)
    assert acc > 1.5 / data.num_classes, f"accuracy {acc:.2f} is barely above chance"


def test_a_short_budget_stops_early(data):
    _, info = quick_classifier(get_profile("smoke"), data, seconds=1e-3, max_epochs=3)
    assert info["steps"] == 8           # the warm-up steps only, then the plan says: time is up


def test_bad_budget_is_one_clear_error(data):
    with pytest.raises(ValueError, match="seconds > 0"):
        quick_classifier(get_profile("smoke"), data, seconds=0)


def test_pick_fooled_returns_an_image_that_fgsm_fools(quick, data):
    model, _ = quick
    x, y = data.x_test, data.y_test
    r = pick_fooled(model, x, y, eps=0.09)
    assert r["n"] == len(x) and 0 < r["fooled"] <= r["right"]
    i = r["index"]
    xi, yi = x[i:i + 1], y[i:i + 1]
    assert bool(attacks.correct_mask(model, xi, yi)) and not bool(
        attacks.correct_mask(model, attacks.fgsm(model, xi, yi, 0.09), yi))
    assert r["right"] == int(attacks.correct_mask(model, x, y).sum())


def test_accuracy_text_has_the_binomial_standard_error(quick, data):
    model, _ = quick
    acc = attacks.accuracy(model, data.x_test, data.y_test)
    se = math.sqrt(acc * (1 - acc) / len(data.x_test))
    assert accuracy_text(model, data.x_test, data.y_test) == \
        f"{100 * acc:.1f}% ± {100 * se:.1f}% on {len(data.x_test)} test images"
    assert torch.is_grad_enabled()
