"""Safe checkpoints: safetensors weights with JSON metadata, atomic writes, no unpickling.

A checkpoint is ONE ``.safetensors`` file; its header carries the JSON metadata
(architecture and arguments, dataset, normalization, training settings,
metrics, package versions, seed) under the key ``"dwf_lab"``. One file means
one atomic ``os.replace``: a crash mid-write leaves the previous checkpoint
intact. Loading never unpickles: a PyTorch ``.pt`` pickle, a truncated file
or a checkpoint of another architecture is refused with a clear error.

Two kinds share the format:
- ``model``: weights (and BatchNorm buffers) only; ``load_model`` rebuilds the
  model from the file alone;
- ``training``: model + optimizer state + progress, for resuming a stage.
"""
import datetime as _dt
import json
import struct
from pathlib import Path

import torch
import torch.nn as nn
from safetensors import SafetensorError
from safetensors.torch import load_file, save

import dwf_lab.mixture  # noqa: F401  (registers the mixtures, so any checkpoint can be rebuilt)
from dwf_lab.core.io import atomic_write_bytes, jsonable
from dwf_lab.core.runtime import package_versions
from dwf_lab.models.common import normalization_for
from dwf_lab.models.registry import build_model

FORMAT = "dwf-lab-checkpoint"
VERSION = 1
_META_KEY = "dwf_lab"


class CheckpointError(ValueError):
    """A file that dwf-lab refuses to load, with the reason and what to do."""


def save_tensors(path: Path, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    """Atomically write tensors + JSON metadata as one safetensors file."""

    meta = {"format": FORMAT, "version": VERSION,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "versions": package_versions(), **jsonable(meta)}
    clean = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    data = save(clean, metadata={_META_KEY: json.dumps(meta, sort_keys=True)})
    atomic_write_bytes(Path(path), data)


def read_metadata(path: Path) -> dict:
    """The JSON metadata of a checkpoint, after checking the file is a sound safetensors file."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path}")
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        n = struct.unpack("<Q", head)[0] if len(head) == 8 else 0
        first = f.read(1) if 0 < n and 8 + n <= size else b""
        if first != b"{":
            if head[:4] == b"PK\x03\x04" or (head[:1] == b"\x80" and head[1:2] in b"\x02\x03\x04\x05"):
                raise CheckpointError(
                    f"{path} is a PyTorch pickle (torch.save / .pt), which dwf-lab never loads because "
                    "unpickling can run arbitrary code. If you trust it, load it yourself with "
                    "torch.load(..., weights_only=True), rebuild the model with "
                    "dwf_lab.models.build_model and save it with dwf_lab.store.checkpoints.save_model.")
            raise CheckpointError(
                f"{path} is truncated or not a checkpoint ({size} bytes; header length {n}). "
                "Delete it and re-run; a run resumes from its previous checkpoint.")
        try:
            header = json.loads(first + f.read(n - 1))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise CheckpointError(f"{path} has an unreadable header ({e}); not a dwf-lab checkpoint.")
    if not isinstance(header, dict):
        raise CheckpointError(f"{path} is not a safetensors file")
    data_end = max((v["data_offsets"][1] for k, v in header.items()
                    if k != "__metadata__" and isinstance(v, dict) and "data_offsets" in v),
                   default=0)
    if 8 + n + data_end > size:
        raise CheckpointError(
            f"{path} is truncated ({size} bytes, needs {8 + n + data_end}). Delete it and re-run; "
            "a run resumes from its previous checkpoint.")
    raw = (header.get("__metadata__") or {}).get(_META_KEY)
    if raw is None:
        raise CheckpointError(f"{path} is a safetensors file but not a dwf-lab checkpoint "
                              "(no dwf_lab metadata). Save models with dwf_lab.store.checkpoints.save_model.")
    meta = json.loads(raw)
    if meta.get("format") != FORMAT or meta.get("version", 0) > VERSION:
        raise CheckpointError(f"{path}: unsupported checkpoint format {meta.get('format')!r} "
                              f"version {meta.get('version')!r}; upgrade dwf-lab.")
    return meta


def load_tensors(path: Path) -> tuple[dict[str, torch.Tensor], dict]:

    meta = read_metadata(path)
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path} could not be read ({e}). Delete it and re-run.") from e
    return tensors, meta


# ---------------------------------------------------------------- models --
def arch_of(model: nn.Module) -> dict:
    arch = getattr(model, "dwf_arch", None)
    if arch is None:
        raise CheckpointError(
            "this model does not know how it was built; create it with "
            "dwf_lab.models.build_model(arch, **kwargs) so its checkpoint can rebuild it")
    return arch


def save_model(path: Path, model: nn.Module, meta: dict | None = None) -> None:
    """Save weights + buffers and everything needed to rebuild the model."""
    arch = arch_of(model)
    kw = arch["kwargs"]
    dataset = kw.get("dataset", "cifar10")
    mean, std = normalization_for(dataset)
    full = {"kind": "model", "arch": arch["arch"], "arch_kwargs": kw, "dataset": dataset,
            "normalization": {"mean": mean, "std": std}, **(meta or {})}
    save_tensors(path, model.state_dict(), full)


def load_model(path: Path, expect_arch: str | None = None, map_location: str | torch.device = "cpu",
               meta_out: dict | None = None) -> nn.Module:
    """Rebuild a model from its checkpoint alone (eval mode). Refuses another architecture."""
    tensors, meta = load_tensors(path)
    if meta.get("kind") not in ("model", "training"):
        raise CheckpointError(f"{path} holds {meta.get('kind')!r}, not a model")
    arch = meta.get("arch")
    if expect_arch is not None and arch != expect_arch:
        raise CheckpointError(f"{path} is a checkpoint of architecture {arch!r}, "
                              f"not {expect_arch!r}: pass the right file.")
    model = build_model(arch, **meta.get("arch_kwargs", {}))
    if meta.get("kind") == "training":
        tensors = {k[len("model/"):]: v for k, v in tensors.items() if k.startswith("model/")}
    load_state(model, tensors, str(path))
    model.to(map_location).eval()
    if meta_out is not None:
        meta_out.update(meta)
    return model


def load_state(model: nn.Module, tensors: dict[str, torch.Tensor], where: str) -> None:
    """Strict load with one clear error if the checkpoint does not fit the model."""
    own = model.state_dict()
    missing = sorted(set(own) - set(tensors))
    unexpected = sorted(set(tensors) - set(own))
    wrong = sorted(k for k in set(own) & set(tensors) if own[k].shape != tensors[k].shape)
    if missing or unexpected or wrong:
        def few(keys):
            return ", ".join(keys[:3]) + (" …" if len(keys) > 3 else "")
        raise CheckpointError(
            f"{where} does not fit this model (another architecture or width?): "
            f"{len(missing)} missing [{few(missing)}], {len(unexpected)} unexpected "
            f"[{few(unexpected)}], {len(wrong)} of another shape [{few(wrong)}]")
    model.load_state_dict(tensors, strict=True)


# ------------------------------------------------------------ training --
def _flatten_optimizer(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    sd = opt.state_dict()
    tensors, state_meta = {}, {}
    for pid, st in sd["state"].items():
        for key, val in st.items():
            if isinstance(val, torch.Tensor):
                tensors[f"optim/{pid}/{key}"] = val
            else:
                state_meta.setdefault(str(pid), {})[key] = val
    return tensors, {"param_groups": sd["param_groups"], "scalars": state_meta}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[int, dict] = {}
    for name, val in tensors.items():
        if name.startswith("optim/"):
            _, pid, key = name.split("/", 2)
            state.setdefault(int(pid), {})[key] = val
    for pid, scal in meta.get("scalars", {}).items():
        state.setdefault(int(pid), {}).update(scal)
    return {"state": state, "param_groups": meta["param_groups"]}


def save_training_state(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer,
                        progress: dict, meta: dict | None = None) -> None:
    """Model + optimizer + progress (epoch, step, ...) + torch RNG state, atomically."""
    arch = arch_of(model)
    tensors = {f"model/{k}": v for k, v in model.state_dict().items()}
    opt_t, opt_meta = _flatten_optimizer(optimizer)
    tensors.update(opt_t)
    tensors["rng/torch_cpu"] = torch.get_rng_state()
    full = {"kind": "training", "arch": arch["arch"], "arch_kwargs": arch["kwargs"],
            "dataset": arch["kwargs"].get("dataset"), "progress": progress,
            "optimizer": opt_meta, **(meta or {})}
    save_tensors(path, tensors, full)


def load_training_state(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """Restore model, optimizer and torch RNG in place; returns the metadata (with progress)."""
    tensors, meta = load_tensors(path)
    if meta.get("kind") != "training":
        raise CheckpointError(f"{path} is not a training checkpoint (kind={meta.get('kind')!r})")
    arch = arch_of(model)
    if meta.get("arch") != arch["arch"] or meta.get("arch_kwargs") != jsonable(arch["kwargs"]):
        raise CheckpointError(
            f"{path} was written for {meta.get('arch')} {meta.get('arch_kwargs')}, but this run "
            f"builds {arch['arch']} {arch['kwargs']}: use another run directory or the old settings.")
    load_state(model, {k[6:]: v for k, v in tensors.items() if k.startswith("model/")}, str(path))
    device = next(model.parameters()).device
    opt_sd = _unflatten_optimizer({k: v.to(device) for k, v in tensors.items()}, meta["optimizer"])
    optimizer.load_state_dict(opt_sd)
    if "rng/torch_cpu" in tensors:
        torch.set_rng_state(tensors["rng/torch_cpu"])
    return meta
