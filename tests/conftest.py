"""Shared fixtures for the core tests (models, mixture, attacks, checkpoints, evaluation).

The expensive object is :func:`trained_model`: a tiny CIFAR ResNet-18 (width
1/16) trained for three epochs on 1,200 generated images, once per session
(a few CPU seconds on a quiet machine). Tests get a deep copy, so nothing one
test does to it (mode, requires_grad, BatchNorm statistics) leaks into another.

Torch runs with ONE intra-op thread here (env ``DWF_TEST_THREADS`` overrides):
these models are so small that on a shared 2-core machine extra threads only
fight each other; measured 5-10x slower with 2 threads under load.
"""
from __future__ import annotations

import copy
import os
import socket
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from dwf_lab.data import DATA_DIR_ENV, SUBSET_ENV, ImageData, iterate_batches, load_dataset
from dwf_lab.models.registry import build_model
from dwf_lab.store.runs import RUNS_DIR_ENV

# tests/<package>/ import the shared helpers in tests/ (tinymodels)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

torch.set_num_threads(int(os.environ.get("DWF_TEST_THREADS", "1")))

TRAIN_SEED = 0
N_TRAIN, N_TEST = 1200, 300
TRAIN_EPOCHS = 3
TINY_WIDTH = 0.0625  # planes 4/8/16/32: ~45k parameters
N_ATTACK = 200       # test images the attack tests use


@pytest.fixture(scope="session")
def synthetic_data() -> ImageData:
    return load_dataset("synthetic", n_train=N_TRAIN, n_test=N_TEST, seed=TRAIN_SEED)


@pytest.fixture(scope="session")
def _trained(synthetic_data) -> torch.nn.Module:
    t0 = time.time()
    torch.manual_seed(TRAIN_SEED)
    model = build_model("resnet18", width=TINY_WIDTH, dataset="synthetic")
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4,
                          nesterov=True)
    model.train()
    for epoch in range(TRAIN_EPOCHS):
        for _, xb, yb in iterate_batches(synthetic_data.x_train, synthetic_data.y_train, 64,
                                         seed=TRAIN_SEED, epoch=epoch):
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(xb), yb).backward()
            opt.step()
    model.eval()
    for p in model.parameters():
        p.grad = None
    print(f"\n[conftest] trained tiny ResNet-18 in {time.time() - t0:.1f}s")
    return model


@pytest.fixture
def trained_model(_trained) -> torch.nn.Module:
    """A private copy (eval mode, no grads) of the session's trained tiny ResNet-18."""
    return copy.deepcopy(_trained).eval()


@pytest.fixture(scope="session")
def attack_batch(synthetic_data) -> tuple[torch.Tensor, torch.Tensor]:
    """(x, y): the first N_ATTACK test images, in [0, 1], and their labels."""
    return synthetic_data.x_test[:N_ATTACK], synthetic_data.y_test[:N_ATTACK]


@pytest.fixture
def tiny_model() -> torch.nn.Module:
    """An untrained tiny ResNet-18 (seeded), in train mode."""
    torch.manual_seed(1)
    return build_model("resnet18", width=TINY_WIDTH, dataset="synthetic")


@pytest.fixture
def make_mixture():
    """Factory for small DWF mixtures: tiny experts, a 16-unit gate, synthetic normalization."""
    def make(n_experts: int = 3, seed: int = 2, **kw) -> torch.nn.Module:
        torch.manual_seed(seed)
        args = dict(n_experts=n_experts, width=TINY_WIDTH, dataset="synthetic", gate_hidden=16)
        args.update(kw)
        return build_model("dwf_mixture", **args)
    return make


@pytest.fixture
def images() -> torch.Tensor:
    """A small batch of random images in [0, 1] (seeded, independent of the global RNG)."""
    return torch.rand(8, 3, 32, 32, generator=torch.Generator().manual_seed(3))


@pytest.fixture
def runs(tmp_path, monkeypatch) -> Path:
    """An empty runs folder, no dataset settings, no network."""
    root = tmp_path / "runs"
    root.mkdir()
    monkeypatch.setenv(RUNS_DIR_ENV, str(root))
    monkeypatch.delenv(SUBSET_ENV, raising=False)
    monkeypatch.delenv(DATA_DIR_ENV, raising=False)

    def refuse(*args, **kwargs):
        raise OSError("network blocked by the test")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    return root
