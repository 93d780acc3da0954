"""dwf_lab.store.checkpoints: round trips, atomic writes, and every refusal with a useful message."""
from __future__ import annotations

import datetime as dt
import json
import os
import struct

import pytest
import torch
import torch.nn.functional as F

from dwf_lab.core import io
from dwf_lab.core.io import atomic_write_bytes
from dwf_lab.models.registry import build_model
from dwf_lab.models.resnet import resnet18
from dwf_lab.store.checkpoints import (
    CheckpointError,
    load_model,
    load_state,
    load_tensors,
    load_training_state,
    read_metadata,
    save_model,
    save_training_state,
)

TINY = dict(width=0.0625, dataset="synthetic")


def _model(seed=0, **kw):
    torch.manual_seed(seed)
    model = build_model("resnet18", **{**TINY, **kw})
    # move the BatchNorm statistics away from their defaults, so buffers are checked too
    model.train()
    with torch.no_grad():
        model(torch.rand(8, 3, 32, 32))
    return model.eval()


@pytest.fixture
def saved(tmp_path, images):
    model = _model()
    path = tmp_path / "model.safetensors"
    save_model(path, model, meta={"seed": 123, "metrics": {"SA": 91.5, "pgd:10": 40.25},
                                  "stage": "expert"})
    return path, model


def _outputs(model, x):
    with torch.no_grad():
        return model.eval()(x)


# ------------------------------------------------------------- round trips --
def test_model_round_trip_from_the_file_alone(saved, images):
    path, model = saved
    meta = {}
    loaded = load_model(path, meta_out=meta)
    assert type(loaded) is type(model)
    assert not loaded.training
    assert loaded.dwf_arch == model.dwf_arch
    sd, lsd = model.state_dict(), loaded.state_dict()
    assert sd.keys() == lsd.keys()
    for k in sd:
        assert torch.equal(sd[k], lsd[k]), k
    assert torch.equal(_outputs(loaded, images), _outputs(model, images))
    assert meta == read_metadata(path)


def test_model_metadata(saved):
    path, _ = saved
    meta = read_metadata(path)
    assert meta["format"] == "dwf-lab-checkpoint" and meta["version"] == 1
    assert meta["kind"] == "model"
    assert meta["arch"] == "resnet18"
    assert meta["arch_kwargs"] == {"width": 0.0625, "dataset": "synthetic"}
    assert meta["dataset"] == "synthetic"
    assert meta["normalization"] == {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}
    assert {"dwf_lab", "torch", "python"} <= set(meta["versions"])
    assert meta["versions"]["torch"] == torch.__version__
    created = dt.datetime.fromisoformat(meta["created"])
    assert created.tzinfo is not None
    assert abs((dt.datetime.now(dt.timezone.utc) - created).total_seconds()) < 600
    # user metadata comes back as given
    assert meta["seed"] == 123
    assert meta["metrics"] == {"SA": 91.5, "pgd:10": 40.25}
    assert meta["stage"] == "expert"


def test_cifar_normalization_recorded(tmp_path):
    path = tmp_path / "c.safetensors"
    save_model(path, build_model("resnet18", width=0.0625))  # default dataset: cifar10
    meta = read_metadata(path)
    assert meta["dataset"] == "cifar10"
    assert meta["normalization"] == {"mean": [0.4914, 0.4822, 0.4465],
                                     "std": [0.2470, 0.2435, 0.2616]}


@pytest.mark.parametrize("kw", [{}, {"routing": "topk", "k": 1, "freeze_experts": True}],
                         ids=["soft", "top1-frozen"])
def test_mixture_round_trip(tmp_path, make_mixture, images, kw):
    model = make_mixture(2, **kw)
    model.train()
    with torch.no_grad():
        model(images)  # move (unfrozen) BatchNorm statistics
    path = tmp_path / "dwf.safetensors"
    save_model(path, model, meta={"seed": 7})
    loaded = load_model(path, expect_arch="dwf_mixture")
    assert loaded.n_experts == 2 and loaded.routing == model.routing
    assert loaded.freeze_experts == model.freeze_experts
    assert not loaded.training
    with torch.no_grad():
        a, b = model.eval().forward_details(images), loaded.forward_details(images)
    assert torch.equal(a.logits, b.logits) and torch.equal(a.weights, b.weights)
    assert read_metadata(path)["arch_kwargs"]["n_experts"] == 2


def test_training_state_round_trip(tmp_path, images):
    y = torch.arange(8) % 10

    def step(model, opt):
        opt.zero_grad()
        F.cross_entropy(model(images), y).backward()
        opt.step()

    def make():
        model = build_model("resnet18", **TINY)
        return model, torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9,
                                      weight_decay=5e-4)

    torch.manual_seed(0)
    model, opt = make()
    model.train()
    for _ in range(2):
        step(model, opt)
    path = tmp_path / "state.safetensors"
    save_training_state(path, model, opt, progress={"epoch": 1, "step": 17},
                        meta={"seed": 5})
    rng_after_save = torch.rand(4)  # what the uninterrupted run draws next
    step(model, opt)  # ... and the uninterrupted run's next step

    torch.manual_seed(99)  # a fresh process: other weights, other RNG, no momentum
    resumed, ropt = make()
    resumed.train()
    meta = load_training_state(path, resumed, ropt)
    assert meta["progress"] == {"epoch": 1, "step": 17}
    assert meta["seed"] == 5 and meta["kind"] == "training"
    assert torch.equal(torch.rand(4), rng_after_save)  # RNG restored
    assert len(ropt.state) == len(list(resumed.parameters()))
    for p in resumed.parameters():
        assert "momentum_buffer" in ropt.state[p]
    assert ropt.param_groups[0]["lr"] == 0.05 and ropt.param_groups[0]["momentum"] == 0.9
    step(resumed, ropt)  # same step from the restored state == the uninterrupted run
    for (n, a), b in zip(model.state_dict().items(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=n)

    # a training checkpoint also yields the bare model
    loaded = load_model(path)
    assert not loaded.training
    assert loaded.dwf_arch["arch"] == "resnet18"


def test_training_state_refuses_other_settings(tmp_path):
    model = build_model("resnet18", **TINY)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    path = tmp_path / "state.safetensors"
    save_training_state(path, model, opt, progress={"epoch": 0})
    other = build_model("resnet18", width=0.125, dataset="synthetic")
    with pytest.raises(CheckpointError, match="use another run directory or the old settings"):
        load_training_state(path, other, torch.optim.SGD(other.parameters(), lr=0.1))
    model_path = tmp_path / "m.safetensors"
    save_model(model_path, model)
    with pytest.raises(CheckpointError, match="not a training checkpoint"):
        load_training_state(model_path, model, opt)


# -------------------------------------------------------------- atomicity --
def _leftovers(directory, keep):
    return sorted(p.name for p in directory.iterdir() if p.name != keep)


def test_crash_during_rename_keeps_the_previous_checkpoint(saved, monkeypatch, images):
    path, old = saved
    before = path.read_bytes()

    def crash(src, dst):
        raise OSError("simulated crash during os.replace")

    monkeypatch.setattr(io.os, "replace", crash)
    with pytest.raises(OSError, match="simulated crash"):
        save_model(path, _model(seed=1))
    monkeypatch.undo()

    assert path.read_bytes() == before
    assert torch.equal(_outputs(load_model(path), images), _outputs(old, images))
    assert _leftovers(path.parent, path.name) == [], "temporary files left behind"


def test_crash_while_writing_keeps_the_previous_checkpoint(saved, monkeypatch):
    path, _ = saved
    before = path.read_bytes()

    def crash(fd):
        raise OSError("disk full")

    monkeypatch.setattr(io.os, "fsync", crash)
    with pytest.raises(OSError, match="disk full"):
        save_model(path, _model(seed=1))
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert _leftovers(path.parent, path.name) == []


def test_atomic_write_bytes_replaces_and_creates_dirs(tmp_path):
    target = tmp_path / "a" / "b" / "f.bin"
    atomic_write_bytes(target, b"one")
    atomic_write_bytes(target, b"two")
    assert target.read_bytes() == b"two"
    assert _leftovers(target.parent, target.name) == []


# ---------------------------------------------------------------- refusals --
@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_refuses_torch_pickles(tmp_path, zip_format):
    model = build_model("resnet18", **TINY)
    path = tmp_path / "model.pt"
    torch.save(model.state_dict(), path, _use_new_zipfile_serialization=zip_format)
    for load in (read_metadata, load_model):
        with pytest.raises(CheckpointError) as err:
            load(path)
        msg = str(err.value)
        assert "PyTorch pickle" in msg and "never loads" in msg
        assert "weights_only=True" in msg and "save_model" in msg  # what to do instead


def _cut(path, n, dest):
    dest.write_bytes(path.read_bytes()[:n])
    return dest


def test_refuses_truncated_files(saved, tmp_path):
    path, _ = saved
    data = path.read_bytes()
    header_len = struct.unpack("<Q", data[:8])[0]
    cuts = {"empty": 0, "4 bytes": 4, "length only": 8, "mid-header": 8 + header_len // 2,
            "header only": 8 + header_len, "mid-data": (8 + header_len + len(data)) // 2,
            "last byte missing": len(data) - 1}
    for what, n in cuts.items():
        bad = _cut(path, n, tmp_path / f"cut{n}.safetensors")
        for load in (read_metadata, load_model):
            with pytest.raises(CheckpointError, match="truncated") as err:
                load(bad)
            assert "Delete it and re-run" in str(err.value), what


def test_refuses_a_plain_safetensors_file(tmp_path):
    from safetensors.torch import save_file
    path = tmp_path / "plain.safetensors"
    save_file(build_model("resnet18", **TINY).state_dict(), str(path))
    with pytest.raises(CheckpointError, match="not a dwf-lab checkpoint.*save_model"):
        load_model(path)
    save_file({"w": torch.zeros(2)}, str(path), metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="no dwf_lab metadata"):
        read_metadata(path)


def test_refuses_garbage_and_missing_files(tmp_path):
    path = tmp_path / "junk.safetensors"
    path.write_bytes(b"hello world, this is not a checkpoint at all")
    with pytest.raises(CheckpointError):
        load_model(path)
    header = json.dumps({"__metadata__": {"dwf_lab": json.dumps({"format": "other"})}}).encode()
    path.write_bytes(struct.pack("<Q", len(header)) + header)
    with pytest.raises(CheckpointError, match="unsupported checkpoint format"):
        load_model(path)
    with pytest.raises(FileNotFoundError):
        load_model(tmp_path / "nope.safetensors")


def test_refuses_another_architecture(saved):
    path, _ = saved
    with pytest.raises(CheckpointError,
                       match="architecture 'resnet18', not 'dwf_mixture': pass the right file"):
        load_model(path, expect_arch="dwf_mixture")
    assert load_model(path, expect_arch="resnet18") is not None


def test_refuses_a_state_dict_of_another_width(saved):
    path, _ = saved
    tensors, _ = load_tensors(path)
    wider = build_model("resnet18", width=0.125, dataset="synthetic")
    with pytest.raises(CheckpointError, match="does not fit this model.*another architecture or "
                                              "width.*of another shape"):
        load_state(wider, tensors, str(path))
    mixture = build_model("dwf_mixture", n_experts=2, gate_hidden=4, **TINY)
    with pytest.raises(CheckpointError, match=r"\d+ missing.*\d+ unexpected"):
        load_state(mixture, tensors, str(path))


def test_refuses_a_model_that_does_not_know_how_it_was_built(tmp_path):
    with pytest.raises(CheckpointError, match="build_model"):
        save_model(tmp_path / "x.safetensors", resnet18(width=0.0625))
    assert not (tmp_path / "x.safetensors").exists()


def test_checkpoint_is_not_a_pickle(saved):
    path, _ = saved
    data = path.read_bytes()
    assert not data.startswith(b"PK") and not data.startswith(b"\x80")
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + n])
    assert "dwf_lab" in header["__metadata__"]
    assert os.path.getsize(path) == len(data)
