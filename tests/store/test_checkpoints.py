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


# ------------------------------------------------------- integrity (sha256) --
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

from dwf_lab.store.checkpoints import DIGEST_KEY, weights_digest  # noqa: E402

DAMAGED = "Delete it and re-run; a run resumes from its previous checkpoint."


def _header(data: bytes) -> tuple[int, dict]:
    n = struct.unpack("<Q", data[:8])[0]
    return n, json.loads(data[8:8 + n])


def _with_header(data: bytes, header: dict | bytes) -> bytes:
    """The same tensor bytes under another header (JSON object, or raw bytes as given)."""
    n, _ = _header(data)
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + data[8 + n:]


def _with_meta(data: bytes, change) -> bytes:
    """The same file with its dwf_lab metadata passed through ``change(meta) -> meta or raw str``."""
    _, header = _header(data)
    meta = json.loads(header["__metadata__"]["dwf_lab"])
    new = change(meta)
    header["__metadata__"]["dwf_lab"] = new if isinstance(new, str) else json.dumps(new)
    return _with_header(data, header)


def test_the_weights_digest_is_written_in_both_kinds(saved, tmp_path):
    path, model = saved
    meta = read_metadata(path)
    assert meta[DIGEST_KEY] == weights_digest(load_file(str(path))) == weights_digest(model.state_dict())
    assert len(meta[DIGEST_KEY]) == 64
    state = tmp_path / "state.safetensors"
    save_training_state(state, model, torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9),
                        progress={"epoch": 0})
    assert read_metadata(state)[DIGEST_KEY] == weights_digest(load_file(str(state)))


def test_the_digest_covers_names_dtypes_shapes_and_bytes():
    t = {"a": torch.arange(6, dtype=torch.float32).view(2, 3), "b": torch.zeros(2)}
    base = weights_digest(t)
    assert weights_digest(dict(reversed(list(t.items())))) == base          # a fixed order
    assert weights_digest({"a": t["a"], "c": t["b"]}) != base               # names
    assert weights_digest({**t, "b": torch.zeros(2, dtype=torch.float64)}) != base   # dtypes
    assert weights_digest({**t, "a": t["a"].view(3, 2)}) != base            # shapes
    assert weights_digest({**t, "b": torch.tensor([0.0, 1e-30])}) != base   # bytes


@pytest.mark.parametrize("where", ["model", "training"])
def test_refuses_flipped_bytes_in_the_weights(saved, tmp_path, where):
    path, model = saved
    if where == "training":
        path = tmp_path / "state.safetensors"
        save_training_state(path, model, torch.optim.SGD(model.parameters(), lr=0.1), progress={"epoch": 0})
    data = bytearray(path.read_bytes())
    n, _ = _header(bytes(data))
    g = torch.Generator().manual_seed(0)
    for i in torch.randint(8 + n, len(data), (1000,), generator=g).tolist():   # 1,000 flipped bytes
        data[i] ^= 0xFF
    bad = tmp_path / "flipped.safetensors"
    bad.write_bytes(bytes(data))
    read_metadata(bad)     # the header is intact ...
    loads = [load_tensors, load_model]
    if where == "training":
        loads.append(lambda p: load_training_state(p, model, torch.optim.SGD(model.parameters(), lr=0.1)))
    for load in loads:     # ... the weights are not: refused, whatever reads them
        with pytest.raises(CheckpointError) as err:
            load(bad)
        msg = str(err.value)
        assert f"{bad} is damaged: its weights do not match the sha256 written when it was saved" in msg
        assert msg.endswith(DAMAGED)


def test_one_flipped_bit_is_enough(saved, tmp_path):
    path, _ = saved
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x01
    bad = tmp_path / "bit.safetensors"
    bad.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="is damaged: its weights do not match"):
        load_model(bad)


def test_checkpoints_written_before_the_digest_still_load(saved, tmp_path, images):
    path, model = saved
    old = tmp_path / "old.safetensors"

    def drop(meta):
        del meta[DIGEST_KEY]
        return meta
    old.write_bytes(_with_meta(path.read_bytes(), drop))
    assert DIGEST_KEY not in read_metadata(old)
    assert torch.equal(_outputs(load_model(old), images), _outputs(model, images))


def test_model_metadata_says_what_the_model_was_built_for(tmp_path, make_mixture):
    path = tmp_path / "m.safetensors"
    save_model(path, build_model("resnet18", **TINY))
    meta = read_metadata(path)
    assert meta["input_shape"] == [3, 32, 32] and meta["num_classes"] == 10
    save_model(path, build_model("resnet18", width=0.0625, num_classes=7, in_channels=1, dataset="mnist"))
    meta = read_metadata(path)
    assert meta["input_shape"] == [1, 28, 28] and meta["num_classes"] == 7
    save_model(path, make_mixture(2, image_size=32))
    assert read_metadata(path)["input_shape"] == [3, 32, 32]
    model = build_model("resnet18", **TINY)
    save_training_state(path, model, torch.optim.SGD(model.parameters(), lr=0.1), progress={"epoch": 0})
    assert read_metadata(path)["input_shape"] == [3, 32, 32]


# every malformed header: one CheckpointError that says what is wrong, never another exception
def _entry(**kw):
    return {"dtype": "F32", "shape": [2], "data_offsets": [0, 8], **kw}


MALFORMED = {
    "not JSON": (b"{not json at all}", "has an unreadable header (not JSON"),
    "not UTF-8": (b"{\xff\xfe}", "has an unreadable header (not JSON"),
    "a JSON list": (b"[1, 2, 3]", None),     # does not start with '{': not a checkpoint
    "a JSON string": (b'{"a": 1}'[:1] + b'"', "unreadable header"),
    "entry a list": ({"w": [1, 2]}, "tensor 'w' is a JSON list, not an object"),
    "entry a number": ({"w": 3}, "tensor 'w' is a JSON int, not an object"),
    "no offsets": ({"w": {"dtype": "F32", "shape": [2]}}, "tensor 'w' has data_offsets None, not two"),
    "string offsets": ({"w": _entry(data_offsets=["0", "8"])}, "has data_offsets ['0', '8'], not two non-negative"),
    "three offsets": ({"w": _entry(data_offsets=[0, 4, 8])}, "has data_offsets [0, 4, 8]"),
    "negative offset": ({"w": _entry(data_offsets=[-8, 8])}, "has data_offsets [-8, 8]"),
    "offsets reversed": ({"w": _entry(data_offsets=[8, 0])}, "not two non-negative integers in order"),
    "float offsets": ({"w": _entry(data_offsets=[0.0, 8.0])}, "has data_offsets [0.0, 8.0]"),
    "bool offsets": ({"w": _entry(data_offsets=[False, True])}, "has data_offsets [False, True]"),
    "offsets an object": ({"w": _entry(data_offsets={"a": 1})}, "has data_offsets {'a': 1}"),
    "no dtype": ({"w": _entry(dtype=None)}, "tensor 'w' has dtype None, not a name"),
    "shape a string": ({"w": _entry(shape="2")}, "tensor 'w' has shape '2', not a list"),
    "offsets past the file": ({"w": _entry(data_offsets=[0, 10 ** 12])}, "is truncated or damaged"),
    "metadata a list": ({"__metadata__": [1]}, "__metadata__ is not an object of strings"),
    "metadata values not strings": ({"__metadata__": {"dwf_lab": {"a": 1}}},
                                    "__metadata__ is not an object of strings"),
    "dwf_lab metadata not JSON": ({"__metadata__": {"dwf_lab": "{oops"}},
                                  "its dwf_lab metadata is not valid JSON"),
    "dwf_lab metadata a list": ({"__metadata__": {"dwf_lab": "[1, 2]"}},
                                "its dwf_lab metadata is a JSON list, not an object"),
    "dwf_lab metadata a number": ({"__metadata__": {"dwf_lab": "3"}}, "its dwf_lab metadata is a JSON int"),
    "version a string": ({"__metadata__": {"dwf_lab": json.dumps({"format": "dwf-lab-checkpoint",
                                                                  "version": "1"})}},
                         "unsupported checkpoint format 'dwf-lab-checkpoint' version '1'"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_every_malformed_header_is_one_checkpoint_error(tmp_path, case):
    header, message = MALFORMED[case]
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    path = tmp_path / "bad.safetensors"
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + bytes(8))
    for load in (read_metadata, load_tensors, load_model):
        with pytest.raises(CheckpointError) as err:
            load(path)
        assert type(err.value) is CheckpointError
        if message:
            assert message in str(err.value), (case, str(err.value))
        assert str(path) in str(err.value)


@pytest.mark.parametrize("change, message", [
    (lambda m: {**m, "arch_kwargs": {**m["arch_kwargs"], "width": 64.0}}, "does not fit this model"),
    (lambda m: {**m, "arch_kwargs": {**m["arch_kwargs"], "dataset": "imagenet"}}, "cannot be rebuilt"),
    (lambda m: {**m, "arch_kwargs": {**m["arch_kwargs"], "depth": 3}}, "cannot be rebuilt"),
    (lambda m: {**m, "arch_kwargs": [1, 2]}, "has malformed metadata"),
    (lambda m: {**m, "arch": "resnet9000"}, "cannot be rebuilt"),
    (lambda m: {**m, "arch": ["resnet18"]}, "has malformed metadata"),
], ids=["huge width", "unknown dataset", "unknown argument", "kwargs a list", "unknown arch", "arch a list"])
def test_metadata_that_cannot_rebuild_the_model_is_refused_before_allocating_it(saved, tmp_path, change,
                                                                                 message):
    path, _ = saved
    bad = tmp_path / "meta.safetensors"
    bad.write_bytes(_with_meta(path.read_bytes(), change))
    with pytest.raises(CheckpointError, match=message):   # a 64x-wide ResNet would need ~2 GB: built on
        load_model(bad)                                    # the meta device first, refused at once


def test_inspecting_a_directory_is_one_clear_error(saved, tmp_path):
    path, _ = saved
    with pytest.raises(CheckpointError) as err:
        read_metadata(tmp_path)
    msg = str(err.value)
    assert msg.startswith(f"{tmp_path} is a directory, not a checkpoint: pass one .safetensors file.")
    assert str(path) in msg                                # an example of what to pass
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CheckpointError, match="there is no .safetensors file in it"):
        load_model(empty)


# ------------------------------------------------- property-based: headers --
def _no_unpickling(mp: pytest.MonkeyPatch) -> None:
    import pickle

    def refuse(*a, **k):
        raise AssertionError("a checkpoint load reached the unpickler")
    for name in ("load", "loads", "Unpickler"):
        mp.setattr(pickle, name, refuse)
    mp.setattr(torch, "load", refuse)


def _load_everything(path, model, opt):
    """Every loader on one file: each either works or raises CheckpointError (anything else fails
    the test). The torch RNG, which a training checkpoint restores, is put back after."""
    rng = torch.get_rng_state()
    try:
        for load in (read_metadata, load_tensors, load_model,
                     lambda p: load_training_state(p, model, opt)):
            try:
                load(path)
            except CheckpointError:
                pass
    finally:
        torch.set_rng_state(rng)


def test_the_guard_catches_unpickling(tmp_path):
    """The property tests below would notice a loader reaching pickle or torch.load."""
    import pickle
    path = tmp_path / "model.pt"
    torch.save({"w": torch.zeros(2)}, path)
    with pytest.MonkeyPatch.context() as mp:
        _no_unpickling(mp)
        with pytest.raises(AssertionError, match="reached the unpickler"):
            torch.load(path)
        with pytest.raises(AssertionError, match="reached the unpickler"):
            pickle.loads(pickle.dumps(1))
        with pytest.raises(CheckpointError, match="PyTorch pickle"):   # refused before any of that
            _load_everything_strict(path)


def _load_everything_strict(path):
    for load in (read_metadata, load_tensors, load_model):
        load(path)


_JSON = st.recursive(st.none() | st.booleans() | st.integers(-2 ** 70, 2 ** 70) | st.floats() | st.text(max_size=8),
                     lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                                 max_size=4),
                     max_leaves=12)
PROPERTY = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module")
def valid_files(tmp_path_factory):
    """(model checkpoint bytes, training checkpoint bytes, model, optimizer, scratch dir)."""
    d = tmp_path_factory.mktemp("prop")
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    save_model(d / "m.safetensors", model, meta={"stage": "benign", "seed": 0})
    save_training_state(d / "s.safetensors", model, opt, progress={"epoch": 1, "next_step": 0})
    return (d / "m.safetensors").read_bytes(), (d / "s.safetensors").read_bytes(), model, opt, d


@PROPERTY
@given(data=st.binary(max_size=400))
def test_random_bytes_never_run_code_and_give_only_checkpoint_errors(valid_files, data):
    _, _, model, opt, d = valid_files
    path = d / "random.safetensors"
    path.write_bytes(data)
    with pytest.MonkeyPatch.context() as mp:
        _no_unpickling(mp)
        _load_everything(path, model, opt)


@PROPERTY
@given(header=st.dictionaries(st.text(max_size=10), _JSON, max_size=5) | _JSON, tail=st.binary(max_size=64),
       meta=st.none() | _JSON)
def test_random_json_headers_give_only_checkpoint_errors(valid_files, header, tail, meta):
    _, _, model, opt, d = valid_files
    if meta is not None and isinstance(header, dict):
        header["__metadata__"] = {"dwf_lab": json.dumps(meta)}
    raw = json.dumps(header).encode()
    path = d / "json.safetensors"
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + tail)
    with pytest.MonkeyPatch.context() as mp:
        _no_unpickling(mp)
        _load_everything(path, model, opt)


_JSONISH = st.sampled_from(list(b'0123456789.-eE"{}[],: tfn'))   # bytes that keep the header JSON-like
_MUTATION = st.one_of(
    st.tuples(st.just("flip"), st.floats(0, 1), st.sampled_from([1, 2, 4, 8, 16]) | st.integers(1, 255)),
    st.tuples(st.just("set"), st.floats(0, 1), _JSONISH),
    st.tuples(st.just("truncate"), st.floats(0, 1), st.just(0)),
    st.tuples(st.just("insert"), st.floats(0, 1),
              st.binary(min_size=1, max_size=8) | st.lists(_JSONISH, min_size=1, max_size=3).map(bytes)),
)


def _mutate(data: bytes, ops, header_len: int) -> bytes:
    """``data`` after byte flips, byte changes, truncations and insertions, in order."""
    b = bytearray(data)
    for i, (op, where, arg) in enumerate(ops):
        # most positions in the header (where damage changes what is built), the rest anywhere
        span = min(len(b), 8 + header_len) if i % 3 != 2 else len(b)
        pos = min(int(where * span), max(0, len(b) - 1))
        if op == "flip" and b:
            b[pos] ^= arg
        elif op == "set" and b:
            b[pos] = arg
        elif op == "truncate":
            del b[pos:]
        elif op == "insert":
            b[pos:pos] = arg
    return bytes(b)


@PROPERTY
@given(ops=st.lists(_MUTATION, min_size=1, max_size=4), training=st.booleans())
def test_damaged_checkpoints_never_run_code_and_give_only_checkpoint_errors(valid_files, ops, training):
    model_bytes, state_bytes, model, opt, d = valid_files
    data = state_bytes if training else model_bytes
    path = d / "mutated.safetensors"
    path.write_bytes(_mutate(data, ops, struct.unpack("<Q", data[:8])[0]))
    with pytest.MonkeyPatch.context() as mp:
        _no_unpickling(mp)
        _load_everything(path, model, opt)


def test_a_missing_path_is_file_not_found(tmp_path):
    for load in (read_metadata, load_tensors, load_model):
        with pytest.raises(FileNotFoundError, match="no checkpoint at"):
            load(tmp_path / "nope.safetensors")


def test_save_then_resave_is_stable(saved, tmp_path):
    """The digest depends on the weights alone: the same model saved twice has the same one."""
    path, model = saved
    again = tmp_path / "again.safetensors"
    save_model(again, model)
    assert read_metadata(again)[DIGEST_KEY] == read_metadata(path)[DIGEST_KEY]


@PROPERTY
@given(ops=st.lists(st.tuples(st.sampled_from(["set", "insert", "truncate"]), st.floats(0, 1), _JSONISH),
                    min_size=1, max_size=3), training=st.booleans())
def test_damaged_metadata_in_a_sound_header_gives_only_checkpoint_errors(valid_files, ops, training):
    """Damage inside the dwf_lab metadata (the JSON that says what to build), the header around it
    sound: the file is refused or loads, never another exception."""
    model_bytes, state_bytes, model, opt, d = valid_files
    data = state_bytes if training else model_bytes

    def damage(meta):
        text = json.dumps(meta)
        for op, where, ch in ops:
            pos = int(where * (len(text) - 1))
            text = {"set": lambda: text[:pos] + chr(ch) + text[pos + 1:],
                    "insert": lambda: text[:pos] + chr(ch) + text[pos:],
                    "truncate": lambda: text[:pos]}[op]()
        return text
    path = d / "meta-damaged.safetensors"
    path.write_bytes(_with_meta(data, damage))
    with pytest.MonkeyPatch.context() as mp:
        _no_unpickling(mp)
        _load_everything(path, model, opt)
