"""Real CIFAR-10 (the 6,102-image subset): a tiny ResNet-18 learns it and FGSM bites.

The subset file comes from env DWF_CIFAR10_SUBSET, else
<checkout>/../shared/data/cifar10-subset.npz; without it these tests skip and say why.
"""
from __future__ import annotations

import copy
import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dwf_lab import attacks
from dwf_lab.data import SUBSET_ENV, iterate_batches, load_dataset
from dwf_lab.evaluation.protocol import EvalSettings, evaluate_model
from dwf_lab.models.common import NORMALIZATION
from dwf_lab.models.registry import build_model

SHARED_SUBSET = Path(__file__).resolve().parents[3] / "shared" / "data" / "cifar10-subset.npz"
N_TRAIN, N_TEST, EPOCHS = 2000, 500, 3


@pytest.fixture(scope="module")
def subset_file() -> Path:
    env = os.environ.get(SUBSET_ENV)
    path = Path(env).expanduser() if env else SHARED_SUBSET
    if not path.is_file():
        if env:
            reason = f"{SUBSET_ENV}={env!r}, but there is no file there"
        else:
            reason = (f"no CIFAR-10 subset file: set {SUBSET_ENV} to a cifar10-subset.npz "
                      f"or put one at {SHARED_SUBSET}")
        print(f"\nSKIP: {reason}")
        pytest.skip(reason)
    return path


@pytest.fixture(scope="module")
def cifar(subset_file):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(SUBSET_ENV, str(subset_file))
        data = load_dataset("cifar10-subset", n_train=N_TRAIN, n_test=N_TEST, seed=0)
    assert data.norm_key == "cifar10" and data.shape == (3, 32, 32)
    return data


@pytest.fixture(scope="module")
def trained_on_cifar(cifar):
    t0 = time.time()
    torch.manual_seed(0)
    model = build_model("resnet18", width=0.125, dataset="cifar10")
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4,
                          nesterov=True)
    model.train()
    for epoch in range(EPOCHS):
        for _, xb, yb in iterate_batches(cifar.x_train, cifar.y_train, 64, seed=0, epoch=epoch):
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(xb), yb).backward()
            opt.step()
    print(f"\n[real data] trained width-0.125 ResNet-18 on {N_TRAIN} CIFAR-10 images, "
          f"{EPOCHS} epochs, in {time.time() - t0:.1f}s")
    return model.eval()


def test_tiny_resnet_learns_real_cifar10_and_fgsm_lowers_it(trained_on_cifar, cifar):
    model, x, y = trained_on_cifar, cifar.x_test, cifar.y_test
    clean = attacks.accuracy(model, x, y)
    adv = attacks.accuracy(model, attacks.fgsm(model, x, y, 8 / 255), y)
    print(f"\n[real data] clean {100 * clean:.1f}%, FGSM 8/255 {100 * adv:.1f}% (chance 10%)")
    assert clean > 0.25
    assert adv < clean - 0.05


def test_subset_pixel_statistics_match_the_cifar10_constants(subset_file):
    with np.load(subset_file) as f:
        x = f["x_train"]
    assert x.dtype == np.uint8 and x.shape[1:] == (32, 32, 3)
    pixels = x.reshape(-1, 3).astype(np.float64) / 255.0
    mean, std = pixels.mean(0), pixels.std(0)
    want_mean, want_std = NORMALIZATION["cifar10"]
    np.testing.assert_allclose(mean, want_mean, atol=0.02)
    np.testing.assert_allclose(std, want_std, atol=0.02)
    # and they are not SVHN's constants, which the paper printed under CIFAR-10
    svhn_mean, _ = NORMALIZATION["svhn"]
    assert np.abs(mean - np.array(svhn_mean)).max() > 0.03


@pytest.fixture(scope="module")
def fgsm_trained_on_cifar(trained_on_cifar, cifar):
    """The benign model above (a copy), fine-tuned with FGSM adversarial training (eps 8/255,
    random start, clean + adversarial halves) for 2 epochs: a real robust model, at half the cost
    of training one from scratch."""
    t0 = time.time()
    torch.manual_seed(0)
    model = copy.deepcopy(trained_on_cifar)
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9, weight_decay=5e-4, nesterov=True)
    for epoch in range(2):
        for _, xb, yb in iterate_batches(cifar.x_train, cifar.y_train, 64, seed=0, epoch=epoch):
            start = (xb + torch.empty_like(xb).uniform_(-8 / 255, 8 / 255)).clamp(0, 1)
            x_adv = attacks.project(attacks.fgsm(model.eval(), start, yb, 8 / 255, check=False), xb, 8 / 255)
            model.train()
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(torch.cat([xb, x_adv])), torch.cat([yb, yb])).backward()
            opt.step()
    print(f"\n[real data] FGSM fine-tuned width-0.125 ResNet-18 in {time.time() - t0:.1f}s")
    return model.eval()


def test_bf16_robust_accuracy_agrees_with_fp32_within_a_point_on_a_trained_model(fgsm_trained_on_cifar, cifar):
    x, y = cifar.x_test[:500], cifar.y_test[:500]
    got = {}
    for precision in ("fp32", "bf16"):
        s = EvalSettings(fgsm_eps=(8 / 255,), pgd_steps=(10, 20), long=False, batch_size=250, precision=precision)
        got[precision], _ = evaluate_model(fgsm_trained_on_cifar, x, y, s, progress=False)
    print(f"\n[real data] fp32 {got['fp32']}\n[real data] bf16 {got['bf16']}")
    assert got["fp32"]["pgd:20"] > 5.0 and got["fp32"]["SA"] > got["fp32"]["pgd:20"] + 5.0   # a real robust model
    for k in ("SA", "pgd:10", "pgd:20", "worst-case"):
        assert abs(got["bf16"][k] - got["fp32"][k]) <= 1.0, (k, got)
