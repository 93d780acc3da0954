"""dwf_lab.data: synthetic data, stratified subsets, augmentation, batches, offline errors.

Nothing here downloads: network access is blocked by monkeypatching where a
test could reach for it. Real-data tests use the CIFAR-10 subset file (env
DWF_CIFAR10_SUBSET, or ../shared/data next to the checkout) and skip without it.
"""
from __future__ import annotations

import hashlib
import os
import socket
import time
import urllib.request
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from dwf_lab import data as D
from dwf_lab.core.runtime import seed_from
from dwf_lab.data import (
    CIFAR10_CLASSES,
    SUBSET_ENV,
    DatasetUnavailableError,
    ImageData,
    augment_batch,
    iterate_batches,
    load_dataset,
    steps_per_epoch,
    stratified_indices,
)
from dwf_lab.models.common import normalization_for

SHARED_SUBSET = Path(__file__).resolve().parents[3] / "shared" / "data" / "cifar10-subset.npz"
PINNED_SEED_0_1 = 5924397826646591131  # seed_from(0, 1): blake2b, must never change


def real_subset() -> Path:
    """The real CIFAR-10 subset for these tests, or skip with the reason."""
    env = os.environ.get(SUBSET_ENV)
    path = Path(env) if env else SHARED_SUBSET
    if not path.is_file():
        pytest.skip(f"no CIFAR-10 subset file: set {SUBSET_ENV} or put it at {SHARED_SUBSET}")
    return path


@pytest.fixture
def offline(monkeypatch):
    """Make every network attempt fail at once (also keeps tests fast on slow networks)."""
    def refuse(*args, **kwargs):
        raise OSError("network blocked by the test")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(urllib.request, "urlopen", refuse)


@pytest.fixture
def no_subset(monkeypatch):
    monkeypatch.delenv(SUBSET_ENV, raising=False)


# ------------------------------------------------------------------ seeds --
def test_seed_from_is_stable_and_mixes():
    assert seed_from(1, 2) == seed_from(1, 2)
    assert len({seed_from(1, 2), seed_from(2, 1), seed_from(1, 2, 0), seed_from(12)}) == 4
    assert all(0 <= seed_from(*p) < 2 ** 63 for p in [(0,), (0, 0, 0), (-1, 2 ** 70)])
    # pinned value: the mix must not change between runs, machines or versions
    assert seed_from(0, 1) == PINNED_SEED_0_1
    torch.Generator().manual_seed(seed_from(2 ** 40, -5))  # any ints give a valid seed


# -------------------------------------------------------------- synthetic --
def test_synthetic_shapes_range_balance_and_metadata():
    d = load_dataset("synthetic")
    assert isinstance(d, ImageData)
    assert d.name == "synthetic" and d.norm_key == "synthetic" and d.augment == "crop_flip"
    assert d.x_train.shape == (2000, 3, 32, 32) and d.x_test.shape == (500, 3, 32, 32)
    assert d.x_train.dtype == torch.float32 and d.y_train.dtype == torch.int64
    assert d.x_train.device.type == "cpu"
    assert d.shape == (3, 32, 32) and d.num_classes == 10
    assert d.classes == tuple(f"class{i}" for i in range(10))
    for x in (d.x_train, d.x_test):
        assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
        assert float(x.std()) > 0.05  # not a constant image
    assert torch.bincount(d.y_train, minlength=10).tolist() == [200] * 10
    assert torch.bincount(d.y_test, minlength=10).tolist() == [50] * 10
    normalization_for(d.norm_key)  # the key is one the models know
    info = d.describe()
    assert info["n_train"] == 2000 and info["n_test"] == 500 and info["shape"] == [3, 32, 32]
    assert info["train_class_counts"]["class3"] == 200
    import json
    json.dumps(info)


def test_synthetic_deterministic_per_seed_and_sizes():
    a = load_dataset("synthetic", n_train=300, n_test=100, seed=3)
    b = load_dataset("Synthetic", n_train=300, n_test=100, seed=3)
    c = load_dataset("synthetic", n_train=300, n_test=100, seed=4)
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_train, b.y_train)
    assert torch.equal(a.x_test, b.x_test)
    assert not torch.equal(a.x_train, c.x_train)
    assert a.x_train.shape[0] == 300 and a.x_test.shape[0] == 100
    assert torch.bincount(a.y_train, minlength=10).tolist() == [30] * 10
    # the test set does not depend on the training-set size
    e = load_dataset("synthetic", n_train=50, n_test=100, seed=3)
    assert torch.equal(e.x_test, a.x_test)


class TinyNet(nn.Sequential):
    def __init__(self):
        super().__init__(
            nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10))


def test_synthetic_is_learnable_and_attackable():
    torch.manual_seed(0)
    d = load_dataset("synthetic", seed=0)
    model = TinyNet()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny convs: one thread is as fast, and far faster on a busy machine
    try:
        start = time.perf_counter()
        for epoch in range(3):
            for _, xb, yb in iterate_batches(d.x_train, d.y_train, 64, seed=0, epoch=epoch):
                loss = F.cross_entropy(model(xb), yb)
                opt.zero_grad()
                loss.backward()
                opt.step()
        seconds = time.perf_counter() - start
    finally:
        torch.set_num_threads(threads)
    model.eval()
    with torch.no_grad():
        acc = (model(d.x_test).argmax(1) == d.y_test).float().mean().item()
    print(f"tiny CNN on synthetic: {acc:.3f} test accuracy after {seconds:.1f} s")
    assert acc > 0.6, f"synthetic data should be learnable, got {acc:.3f}"
    # and not trivially robust: one FGSM step of 8/255 costs accuracy
    x = d.x_test.clone().requires_grad_(True)
    F.cross_entropy(model(x), d.y_test).backward()
    x_adv = (d.x_test + 8 / 255 * x.grad.sign()).clamp(0, 1)
    with torch.no_grad():
        adv = (model(x_adv).argmax(1) == d.y_test).float().mean().item()
    assert adv < acc - 0.1, f"FGSM 8/255 should lower accuracy: clean {acc:.3f}, adv {adv:.3f}"


# ------------------------------------------------------------- stratified --
def test_test_set_hash_is_the_same_for_float64_float32_and_channels_last_copies():
    d = D.synthetic(n_train=20, n_test=30, seed=0)
    ref = d.test_set_sha256()
    for x in (d.x_test.double(), d.x_test.contiguous(memory_format=torch.channels_last), d.x_test.clone()):
        assert D.images_sha256(x) == ref["test_images_sha256"]
    assert D.labels_sha256(d.y_test.int()) == ref["test_labels_sha256"]
    assert D.images_sha256(d.x_test + 1e-3) != ref["test_images_sha256"]
    # little-endian float32 in (N, C, H, W) C order: hashlib over those bytes gives the same digest
    raw = np.ascontiguousarray(d.x_test.numpy().astype("<f4")).tobytes()
    assert hashlib.sha256(raw).hexdigest() == ref["test_images_sha256"]


def test_stratified_indices_counts_and_order():
    labels = np.repeat(np.arange(4), [50, 30, 5, 15])
    np.random.default_rng(0).shuffle(labels)
    idx = stratified_indices(labels, 40, seed=1)
    assert len(idx) == 40 and np.all(np.diff(idx) > 0)  # sorted, no duplicates
    # a small class gives all it has, the others share the rest as equally as possible
    counts = np.bincount(labels[idx], minlength=4)
    assert counts[2] == 5 and sorted(counts[[0, 1, 3]].tolist()) == [11, 12, 12]
    counts = np.bincount(labels[stratified_indices(labels, 80, seed=1)], minlength=4)
    assert counts.tolist() == [30, 30, 5, 15]
    # deterministic per seed, different across seeds
    assert np.array_equal(idx, stratified_indices(labels, 40, seed=1))
    assert not np.array_equal(idx, stratified_indices(labels, 40, seed=2))
    # all of it / too many
    assert np.array_equal(stratified_indices(labels, None), np.arange(100))
    assert np.array_equal(stratified_indices(labels, 100), np.arange(100))
    with pytest.raises(ValueError, match="only 100 exist"):
        stratified_indices(labels, 101)
    # remainder: 10 classes, 23 examples -> 2 or 3 each
    labels10 = np.arange(1000) % 10
    c = np.bincount(labels10[stratified_indices(labels10, 23, seed=0)], minlength=10)
    assert c.sum() == 23 and set(c.tolist()) == {2, 3}


# ----------------------------------------------------------- augmentation --
def test_augment_none_is_identity():
    x = torch.rand(4, 3, 8, 8)
    assert augment_batch(x, "none") is x
    with pytest.raises(ValueError, match="crop_flip"):
        augment_batch(x, "rotate")


def test_augment_crop_flip_shape_range_determinism():
    x = torch.rand(64, 3, 32, 32) * 0.8 + 0.1  # strictly positive: padding zeros are visible
    a = augment_batch(x, "crop_flip", torch.Generator().manual_seed(5))
    b = augment_batch(x, "crop_flip", torch.Generator().manual_seed(5))
    c = augment_batch(x, "crop_flip", torch.Generator().manual_seed(6))
    assert a.shape == x.shape and a.dtype == x.dtype
    assert float(a.min()) >= 0.0 and float(a.max()) <= 1.0
    assert torch.equal(a, b) and not torch.equal(a, c)
    # some images got shifted: a band of padding zeros appears at an edge
    zero_rows = (a == 0).all(dim=(1, 3))  # (N, H): whole row zero
    zero_cols = (a == 0).all(dim=(1, 2))  # (N, W)
    assert (zero_rows.any(1) | zero_cols.any(1)).sum() > 32
    # every output pixel is either a padding zero or an input pixel of the same image
    for i in range(8):
        vals = set(x[i].flatten().tolist())
        assert all(v == 0.0 or v in vals for v in a[i].flatten().tolist())


def test_augment_crop_flip_really_flips_and_crops():
    # a horizontal ramp: flipping reverses it, cropping shifts it
    ramp = torch.linspace(0.1, 1.0, 32).view(1, 1, 1, 32).expand(200, 3, 32, 32).contiguous()
    out = augment_batch(ramp, "crop_flip", torch.Generator().manual_seed(0))
    centre = out[:, 0, 16, 8:24]  # inside any crop's valid region
    increasing = (centre.diff() > 0).all(1)
    decreasing = (centre.diff() < 0).all(1)
    assert bool((increasing | decreasing).all())
    assert 60 < int(decreasing.sum()) < 140  # about half flipped
    # horizontal offsets vary: the centre pixel takes several input positions
    assert len(set(out[:, 0, 16, 16].tolist())) >= 5
    # vertical crop also happens: rows of zeros at the top or bottom for some images
    assert bool(((out[:, 0, 0, :] == 0).all(1) | (out[:, 0, -1, :] == 0).all(1)).any())


def test_augment_generator_on_cpu_for_data_elsewhere():
    # the generator's device is used for drawing, the result lives on x's device
    x = torch.rand(10, 3, 16, 16)
    g = torch.Generator(device="cpu").manual_seed(1)
    out = augment_batch(x, "crop_flip", g)
    assert out.device == x.device
    augment_batch(x, "crop_flip")  # global RNG works too


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_augment_and_batches_on_cuda():
    x = torch.rand(40, 3, 32, 32, device="cuda")
    y = torch.arange(40, device="cuda") % 10
    g = torch.Generator().manual_seed(0)
    out = augment_batch(x, "crop_flip", g)
    ref = augment_batch(x.cpu(), "crop_flip", torch.Generator().manual_seed(0))
    assert out.is_cuda and torch.equal(out.cpu(), ref)
    for _, xb, yb in iterate_batches(x, y, 8, augment="crop_flip"):
        assert xb.is_cuda and yb.is_cuda
    for _, xb, yb in iterate_batches(x.cpu(), y.cpu(), 8, device="cuda"):
        assert xb.is_cuda and yb.is_cuda


# ---------------------------------------------------------------- batches --
def test_steps_per_epoch():
    assert steps_per_epoch(100, 32) == 3
    assert steps_per_epoch(100, 32, drop_last=False) == 4
    assert steps_per_epoch(96, 32, drop_last=False) == 3
    with pytest.raises(ValueError):
        steps_per_epoch(10, 0)


def test_iterate_batches_covers_each_index_once():
    x = torch.arange(103, dtype=torch.float32).view(-1, 1, 1, 1)
    y = torch.arange(103)
    seen, steps = [], []
    for step, xb, yb in iterate_batches(x, y, 10, drop_last=False, seed=1, epoch=0):
        assert torch.equal(xb.view(-1).long(), yb)  # x and y stay paired
        seen += yb.tolist()
        steps.append(step)
    assert sorted(seen) == list(range(103)) and steps == list(range(11))
    assert seen != list(range(103))  # shuffled
    dropped = [yb for _, _, yb in iterate_batches(x, y, 10, seed=1)]
    assert len(dropped) == 10 and all(len(b) == 10 for b in dropped)
    ordered = torch.cat([yb for _, _, yb in iterate_batches(x, y, 10, shuffle=False,
                                                             drop_last=False)])
    assert ordered.tolist() == list(range(103))


def test_iterate_batches_order_per_epoch_and_seed():
    x = torch.rand(64, 3, 8, 8)
    y = torch.arange(64)

    def order(seed, epoch):
        return torch.cat([yb for _, _, yb in iterate_batches(x, y, 16, seed=seed, epoch=epoch)])
    assert torch.equal(order(0, 0), order(0, 0))
    assert not torch.equal(order(0, 0), order(0, 1))
    assert not torch.equal(order(0, 0), order(1, 0))


def test_iterate_batches_resume_reproduces_tail():
    d = load_dataset("synthetic", n_train=200, n_test=10, seed=0)
    full = list(iterate_batches(d.x_train, d.y_train, 32, augment="crop_flip", seed=7, epoch=3))
    tail = list(iterate_batches(d.x_train, d.y_train, 32, augment="crop_flip", seed=7, epoch=3,
                                start_step=4))
    assert [s for s, _, _ in full] == list(range(6)) and [s for s, _, _ in tail] == [4, 5]
    for (s1, x1, y1), (s2, x2, y2) in zip(full[4:], tail):
        assert s1 == s2 and torch.equal(x1, x2) and torch.equal(y1, y2)
    # the augmentation really did something
    raw = list(iterate_batches(d.x_train, d.y_train, 32, seed=7, epoch=3))
    assert torch.equal(raw[0][2], full[0][2]) and not torch.equal(raw[0][1], full[0][1])


# ------------------------------------------------------ names and errors --
def test_unknown_name_lists_known_ones():
    with pytest.raises(ValueError, match="cifar10.*svhn.*mnist.*synthetic"):
        load_dataset("imagenet")


def test_cifar10_offline_without_download(tmp_path, no_subset):
    with pytest.raises(DatasetUnavailableError) as info:
        load_dataset("cifar10", root=tmp_path, download=False)
    msg = str(info.value)
    assert "cifar10" in msg and str(tmp_path) in msg
    assert SUBSET_ENV in msg and "synthetic" in msg and "download" in msg


def test_cifar10_offline_with_download_blocked(tmp_path, no_subset, offline):
    start = time.perf_counter()
    with pytest.raises(DatasetUnavailableError) as info:
        load_dataset("CIFAR-10", root=tmp_path, download=True)
    assert time.perf_counter() - start < 10
    msg = str(info.value)
    assert "cifar10" in msg and str(tmp_path) in msg and "download failed" in msg


@pytest.mark.parametrize("name", ["svhn", "mnist"])
def test_svhn_mnist_offline(tmp_path, no_subset, offline, name):
    for download in (False, True):
        with pytest.raises(DatasetUnavailableError) as info:
            load_dataset(name, root=tmp_path, download=download)
        assert name in str(info.value) and str(tmp_path) in str(info.value)


def test_fallback_to_synthetic_warns(tmp_path, no_subset, offline):
    with pytest.warns(RuntimeWarning, match="SYNTHETIC DATA, NOT CIFAR10"):
        d = load_dataset("cifar10", n_train=100, n_test=50, root=tmp_path, fallback="synthetic")
    assert d.name == "synthetic" and d.x_train.shape[0] == 100 and d.x_test.shape[0] == 50
    assert "FALLBACK" in d.source and "cifar10" in d.source
    with pytest.warns(RuntimeWarning, match="NOT SVHN"):
        d = load_dataset("svhn", root=tmp_path, download=False, fallback="synthetic")
    assert (d.x_train.shape[0], d.x_test.shape[0]) == D.SYNTHETIC_DEFAULT_SIZES
    with pytest.raises(ValueError, match="fallback"):
        load_dataset("cifar10", root=tmp_path, download=False, fallback="mnist")


def test_subset_env_missing_file(tmp_path, monkeypatch):
    missing = tmp_path / "nope.npz"
    monkeypatch.setenv(SUBSET_ENV, str(missing))
    with pytest.raises(DatasetUnavailableError, match=f"{SUBSET_ENV}.*nope.npz"):
        D.subset_path()
    with pytest.raises(DatasetUnavailableError, match="nope.npz"):
        load_dataset("cifar10", root=tmp_path, download=False)
    with pytest.raises(DatasetUnavailableError, match="nope.npz"):
        load_dataset("cifar10-subset")
    monkeypatch.delenv(SUBSET_ENV)
    assert D.subset_path() is None
    with pytest.raises(DatasetUnavailableError, match=SUBSET_ENV):
        load_dataset("cifar10-subset")


def test_data_dir_env(monkeypatch, tmp_path):
    monkeypatch.setenv(D.DATA_DIR_ENV, str(tmp_path))
    assert D.data_dir() == tmp_path
    monkeypatch.delenv(D.DATA_DIR_ENV)
    assert D.data_dir().name == "data"


def test_fake_subset_file_and_too_large_request(tmp_path, monkeypatch, offline):
    """A small hand-made subset file: conversion to NCHW/255 and the size rules."""
    rng = np.random.default_rng(0)
    x_train = rng.integers(0, 256, (40, 32, 32, 3), dtype=np.uint8)
    x_test = rng.integers(0, 256, (20, 32, 32, 3), dtype=np.uint8)
    y_train = (np.arange(40) % 10).astype(np.uint8)
    y_test = (np.arange(20) % 10).astype(np.uint8)
    path = tmp_path / "fake.npz"
    np.savez(path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test,
             train_source=np.zeros((40, 2), np.int32))
    monkeypatch.setenv(SUBSET_ENV, str(path))
    d = load_dataset("cifar10", root=tmp_path / "cache", download=False)
    assert d.name == "cifar10-subset" and d.classes == CIFAR10_CLASSES
    assert d.norm_key == "cifar10" and d.augment == "crop_flip"
    assert torch.equal(d.x_train[3], torch.from_numpy(x_train[3]).permute(2, 0, 1).float() / 255)
    assert d.y_train.dtype == torch.int64 and d.y_train.tolist() == y_train.tolist()
    # more than the subset holds: not the subset, and the download is blocked
    with pytest.raises(DatasetUnavailableError, match="holds only 40 train"):
        load_dataset("cifar10", n_train=41, root=tmp_path / "cache", download=True)
    # the subset name itself: asking for too many is a ValueError saying how many exist
    with pytest.raises(ValueError, match="only 40 exist"):
        load_dataset("cifar10-subset", n_train=41)


# ------------------------------------------------------ the real subset --
def test_real_subset_shapes_and_values(monkeypatch):
    monkeypatch.setenv(SUBSET_ENV, str(real_subset()))
    d = load_dataset("cifar10-subset")
    assert d.name == "cifar10-subset" and "subset file" in d.source
    assert d.x_train.shape == (5085, 3, 32, 32) and d.x_test.shape == (1017, 3, 32, 32)
    assert d.x_train.dtype == torch.float32 and d.y_test.dtype == torch.int64
    assert 0.0 <= float(d.x_train.min()) and float(d.x_train.max()) <= 1.0
    assert float(d.x_train.max()) > 0.99  # really /255, not /255 twice
    for y in (d.y_train, d.y_test):
        assert int(y.min()) == 0 and int(y.max()) == 9
    mean = d.x_train.mean(dim=(0, 2, 3))
    cifar_mean = torch.tensor(normalization_for("cifar10")[0])
    assert torch.allclose(mean, cifar_mean, atol=0.02)  # it is CIFAR-10 in RGB order


def test_real_subset_stratified_and_picked_for_cifar10(monkeypatch, tmp_path, offline):
    monkeypatch.setenv(SUBSET_ENV, str(real_subset()))
    d = load_dataset("cifar10-subset", n_train=1000, n_test=200, seed=0)
    assert torch.bincount(d.y_train, minlength=10).tolist() == [100] * 10
    assert torch.bincount(d.y_test, minlength=10).tolist() == [20] * 10
    d2 = load_dataset("cifar10", n_train=500, n_test=200, root=tmp_path)
    assert d2.name == "cifar10-subset" and d2.x_train.shape[0] == 500
    assert torch.bincount(d2.y_train, minlength=10).tolist() == [50] * 10
    with pytest.raises(ValueError, match="5085"):
        load_dataset("cifar10-subset", n_train=6000)


# ------------------------------------- what was asked for never falls back --
def _subset_file(path: Path, y_train=None, x_train=None, **extra) -> Path:
    rng = np.random.default_rng(0)
    arrays = dict(x_train=rng.integers(0, 256, (40, 32, 32, 3), dtype=np.uint8) if x_train is None else x_train,
                  y_train=(np.arange(40) % 10).astype(np.uint8) if y_train is None else y_train,
                  x_test=rng.integers(0, 256, (20, 32, 32, 3), dtype=np.uint8),
                  y_test=(np.arange(20) % 10).astype(np.uint8))
    arrays.update(extra)
    np.savez(path, **arrays)
    return path


def _garbage(path: Path) -> Path:
    path.write_bytes(b"not an npz at all")
    return path


def _truncated(path: Path) -> Path:
    _subset_file(path)
    path.write_bytes(path.read_bytes()[:300])
    return path


@pytest.mark.parametrize("make, message", [
    (lambda d: d / "missing.npz", "but there is no file at {path}"),
    (lambda d: d, "but there is a directory, not a file at {path}"),
    (lambda d: _garbage(d / "garbage.npz"), "{path} is not a readable CIFAR-10 subset file"),
    (lambda d: _truncated(d / "cut.npz"), "{path} is not a readable CIFAR-10 subset file"),
    (lambda d: _subset_file(d / "f.npz", x_train=np.zeros((40, 32, 32, 3), np.float32)),
     "{path}: x_train must be uint8 (N, 32, 32, 3)"),
    (lambda d: _subset_file(d / "f.npz", x_train=np.zeros((40, 3, 32, 32), np.uint8)),
     "{path}: x_train must be uint8 (N, 32, 32, 3)"),
    (lambda d: _subset_file(d / "f.npz", y_train=np.arange(40) % 11),
     "{path} (y_train): 3 label(s) outside the classes 0..9 (e.g. 10)"),
    (lambda d: _subset_file(d / "f.npz", y_train=np.arange(40) - 1.0),
     "{path} (y_train): labels must be whole numbers, one per image, got float64"),
])
def test_a_subset_file_that_was_set_and_cannot_be_used_stops_with_one_error(tmp_path, monkeypatch, offline,
                                                                            make, message):
    path = make(tmp_path)
    monkeypatch.setenv(SUBSET_ENV, str(path))
    for name in ("cifar10", "cifar10-subset"):
        with warnings.catch_warnings():
            warnings.simplefilter("error")      # no fallback warning: no fallback
            with pytest.raises(D.UnusableDatasetError) as info:
                load_dataset(name, n_train=20, n_test=10, root=tmp_path / "cache", fallback="synthetic")
        assert message.format(path=path.resolve() if "no file" in message or "directory" in message
                              else path) in str(info.value)
        assert "\n" not in str(info.value)


def test_a_subset_too_small_for_the_request_is_not_replaced_by_generated_data(tmp_path, monkeypatch, offline):
    monkeypatch.setenv(SUBSET_ENV, str(_subset_file(tmp_path / "small.npz")))
    with pytest.raises(D.UnusableDatasetError, match="holds only 40 train / 20 test images"):
        load_dataset("cifar10", n_train=100, root=tmp_path / "cache", fallback="synthetic")


def test_a_data_directory_that_was_set_never_falls_back(tmp_path, monkeypatch, no_subset, offline):
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    monkeypatch.setenv(D.DATA_DIR_ENV, str(a_file))
    with pytest.raises(D.UnusableDatasetError) as info:
        load_dataset("cifar10", fallback="synthetic")
    assert str(info.value) == (f"{D.DATA_DIR_ENV} is set to {str(a_file)!r}, which is not a directory, so cifar10 "
                               f"cannot be downloaded into it; make it writable or point {D.DATA_DIR_ENV} elsewhere")
    # not writable (simulated: the tests may run as root, who may write anywhere)
    monkeypatch.setenv(D.DATA_DIR_ENV, str(tmp_path / "ro"))
    (tmp_path / "ro").mkdir()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(D.os, "access", lambda path, mode: Path(path) != tmp_path / "ro")
        with pytest.raises(D.UnusableDatasetError, match="which is not writable, so svhn cannot be downloaded"):
            load_dataset("svhn", fallback="synthetic")
    # writable but empty, and offline: the user's directory is named, no generated data
    monkeypatch.setenv(D.DATA_DIR_ENV, str(tmp_path / "empty"))
    with pytest.raises(D.UnusableDatasetError, match="so no generated data stands in: dataset 'mnist' is not"):
        load_dataset("mnist", download=False, fallback="synthetic")


def test_generated_data_says_so(tmp_path, no_subset, offline):
    d = load_dataset("synthetic", n_train=20, n_test=10)
    assert d.generated and d.fallback_reason is None
    with pytest.warns(RuntimeWarning, match="SYNTHETIC DATA"):
        d = load_dataset("cifar10", n_train=20, n_test=10, root=tmp_path, download=False, fallback="synthetic")
    assert d.generated and "cifar10" in d.fallback_reason and d.describe()["generated"]
    assert d.describe()["fallback_reason"] == d.fallback_reason


def test_real_data_is_not_marked_generated(tmp_path, monkeypatch, offline):
    monkeypatch.setenv(SUBSET_ENV, str(_subset_file(tmp_path / "ok.npz")))
    d = load_dataset("cifar10-subset", n_train=20, n_test=10)
    assert not d.generated and d.fallback_reason is None


def test_labels_outside_the_classes_are_refused_for_any_dataset(monkeypatch):
    x = np.zeros((4, 28, 28), np.uint8)
    with pytest.raises(D.UnusableDatasetError, match=r"1 label\(s\) outside the classes 0\.\.9 \(e\.g\. 12\)"):
        D._build("mnist", x, np.array([0, 1, 2, 12]), x, np.array([0, 1, 2, 3]), None, None, 0, False,
                 classes=D.DIGIT_CLASSES, norm_key="mnist", augment="none", source="torchvision MNIST in /x")


def test_a_dataset_set_by_hand_does_not_fall_back(tmp_path, monkeypatch, no_subset, offline):
    from dwf_lab.core.config import get_profile
    from dwf_lab.training.builders import load_data
    monkeypatch.delenv(D.DATA_DIR_ENV, raising=False)
    monkeypatch.setattr(D, "data_dir", lambda: tmp_path)
    with pytest.raises(D.DatasetUnavailableError, match="dataset 'svhn' is not available"):
        load_data(get_profile("smoke", dataset="svhn"))
    with pytest.warns(RuntimeWarning, match="NOT SVHN"):   # unless the fallback was asked for too
        assert load_data(get_profile("paper", dataset="svhn", fallback="synthetic", n_train=20, n_test=8)).generated
    with pytest.warns(RuntimeWarning, match="NOT CIFAR10"):   # the laptop's own dataset keeps its fallback
        assert load_data(get_profile("laptop", n_train=20, n_test=10)).generated
