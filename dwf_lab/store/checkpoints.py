"""Safe checkpoints: safetensors weights with JSON metadata, atomic writes, no unpickling.

A checkpoint is ONE ``.safetensors`` file; its header carries the JSON metadata
(architecture and arguments, what the model was built for, dataset, normalization,
training settings, metrics, package versions, seed, and the sha256 of the weights)
under the key ``"dwf_lab"``. One file means one atomic ``os.replace``: a crash
mid-write leaves the previous checkpoint intact. Loading never unpickles: a PyTorch
``.pt`` pickle, a truncated or damaged file, a malformed header or a checkpoint of
another architecture is refused with one :class:`CheckpointError` saying what to do.

Integrity: :func:`save_tensors` writes :func:`weights_digest` (sha256 over every
tensor's name, dtype, shape and bytes, in name order) as ``"weights_sha256"``;
:func:`load_tensors` recomputes it and refuses a file whose weights changed since (a
flipped bit on disk, a botched copy). Checkpoints written before the digest existed have
none: they still load, unchecked.

Two kinds share the format:
- ``model``: weights (and BatchNorm buffers) only; ``load_model`` rebuilds the
  model from the file alone. Its metadata also says what the model was built for:
  ``input_shape`` ``[channels, height, width]`` and ``num_classes``
  (:func:`dwf_lab.models.registry.input_shape`: the architecture's ``image_size`` if it
  takes one, else 28 for MNIST and 32 for the kit's other datasets);
- ``training``: model + optimizer state + progress, for resuming a stage.
"""
import datetime as _dt
import hashlib
import json
import struct
from pathlib import Path

import torch
import torch.nn as nn
from safetensors.torch import load_file, save

import dwf_lab.mixture  # noqa: F401  (registers the mixtures, so any checkpoint can be rebuilt)
from dwf_lab.core.io import atomic_write_bytes, jsonable
from dwf_lab.core.runtime import package_versions
from dwf_lab.models.common import normalization_for
from dwf_lab.models.registry import build_model, built_for, input_shape

FORMAT = "dwf-lab-checkpoint"
VERSION = 1
DIGEST_KEY = "weights_sha256"
_META_KEY = "dwf_lab"
_REDO = "Delete it and re-run; a run resumes from its previous checkpoint."
_DAMAGED = f"The file is damaged. {_REDO}"


class CheckpointError(ValueError):
    """A file that dwf-lab refuses to load, with the reason and what to do."""


def weights_digest(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 (hex) over the tensors' names, dtypes, shapes and bytes, in name order."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().to("cpu").contiguous()
        head = json.dumps([name, str(t.dtype).removeprefix("torch."), list(t.shape)]).encode()
        raw = t.reshape(-1).view(torch.uint8).numpy()
        h.update(struct.pack("<QQ", len(head), raw.nbytes))
        h.update(head)
        h.update(raw)
    return h.hexdigest()


def save_tensors(path: Path, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    """Atomically write tensors + JSON metadata (with the weights' sha256) as one safetensors file."""

    clean = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    meta = {"format": FORMAT, "version": VERSION,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "versions": package_versions(), **jsonable(meta), DIGEST_KEY: weights_digest(clean)}
    data = save(clean, metadata={_META_KEY: json.dumps(meta, sort_keys=True)})
    atomic_write_bytes(Path(path), data)


# ------------------------------------------------------------- the header --
def _is_count(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _entry_problem(entry) -> str | None:
    """What is wrong with one tensor entry of a safetensors header (None: nothing)."""
    if not isinstance(entry, dict):
        return f"is a JSON {type(entry).__name__}, not an object"
    offsets = entry.get("data_offsets")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_count(o) for o in offsets)
            and offsets[0] <= offsets[1]):
        return f"has data_offsets {offsets!r}, not two non-negative integers in order"
    if not isinstance(entry.get("dtype"), str):
        return f"has dtype {entry.get('dtype')!r}, not a name"
    shape = entry.get("shape")
    if not (isinstance(shape, list) and all(_is_count(d) for d in shape)):
        return f"has shape {shape!r}, not a list of non-negative integers"
    return None


def _directory_message(path: Path) -> str:
    # this folder and the one below only: a big tree (a home directory) is never walked
    found = sorted([*path.glob("*.safetensors"), *path.glob("*/*.safetensors")])[:3]
    hint = (" For example: " + ", ".join(str(f) for f in found)) if found else \
        " (there is no .safetensors file in it)"
    return f"{path} is a directory, not a checkpoint: pass one .safetensors file.{hint}"


def _read_header(path: Path) -> tuple[dict, int, int]:
    """(header, header length, file size) of a sound safetensors file, else one CheckpointError."""
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
                f"{path} is truncated or not a checkpoint ({size} bytes; header length {n}). {_REDO}")
        body = first + f.read(n - 1)
    try:
        header = json.loads(body)
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise CheckpointError(f"{path} has an unreadable header (not JSON: {e}); "
                              f"not a dwf-lab checkpoint, or a damaged one. {_REDO}") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path} is not a safetensors file: its header is a JSON "
                              f"{type(header).__name__}, not an object. {_DAMAGED}")
    data_end = 0
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        problem = _entry_problem(entry)
        if problem:
            raise CheckpointError(f"{path} has a malformed header: tensor {name!r} {problem}. {_DAMAGED}")
        data_end = max(data_end, entry["data_offsets"][1])
    if 8 + n + data_end > size:
        raise CheckpointError(f"{path} is truncated or damaged ({size} bytes, its header needs "
                              f"{8 + n + data_end}). {_REDO}")
    return header, n, size


def read_metadata(path: Path) -> dict:
    """The JSON metadata of a checkpoint, after checking the file is a sound safetensors file.

    Anything but a sound dwf-lab checkpoint gives one :class:`CheckpointError` (a
    directory, a pickle, a truncated file, a malformed header or metadata); a missing
    path gives FileNotFoundError. Reads the header only: never the weights, never code.
    """
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(_directory_message(path))
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        header, _, _ = _read_header(path)
    except FileNotFoundError:
        raise
    except OSError as e:
        raise CheckpointError(f"{path} cannot be read ({e})") from None
    extra = header.get("__metadata__")
    if extra is not None and not (isinstance(extra, dict) and all(isinstance(v, str) for v in extra.values())):
        raise CheckpointError(f"{path} has a malformed header: __metadata__ is not an object of strings. "
                              f"{_DAMAGED}")
    raw = (extra or {}).get(_META_KEY)
    if raw is None:
        raise CheckpointError(f"{path} is a safetensors file but not a dwf-lab checkpoint "
                              "(no dwf_lab metadata). Save models with dwf_lab.store.checkpoints.save_model.")
    try:
        meta = json.loads(raw)
    except (ValueError, RecursionError) as e:
        raise CheckpointError(f"{path}: its dwf_lab metadata is not valid JSON ({e}). {_DAMAGED}") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path}: its dwf_lab metadata is a JSON {type(meta).__name__}, not an "
                              f"object. {_DAMAGED}")
    version = meta.get("version", 0)
    if meta.get("format") != FORMAT or not _is_count(version) or version > VERSION:
        raise CheckpointError(f"{path}: unsupported checkpoint format {meta.get('format')!r} "
                              f"version {meta.get('version')!r}; upgrade dwf-lab.")
    return meta


def load_tensors(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    """The tensors and metadata of a checkpoint, its weights checked against their sha256.

    A checkpoint written before the digest was added (no ``"weights_sha256"`` in its
    metadata) still loads, without that check.
    """
    meta = read_metadata(path)
    try:
        tensors = load_file(str(path))
    except Exception as e:   # the file is untrusted: whatever the parser trips on is a refusal
        raise CheckpointError(f"{path} could not be read ({type(e).__name__}: {e}). {_DAMAGED}") from None
    want = meta.get(DIGEST_KEY)
    if want is not None:
        got = weights_digest(tensors)
        if got != want:
            raise CheckpointError(
                f"{path} is damaged: its weights do not match the sha256 written when it was saved "
                f"({str(want)[:12]}..., the file now gives {got[:12]}...), so some bytes changed on disk "
                f"or in a copy. {_REDO}")
    return tensors, meta


# ---------------------------------------------------------------- models --
def arch_of(model: nn.Module) -> dict:
    arch = getattr(model, "dwf_arch", None)
    if arch is None:
        raise CheckpointError(
            "this model does not know how it was built; create it with "
            "dwf_lab.models.build_model(arch, **kwargs) so its checkpoint can rebuild it")
    return arch


def built_for_meta(arch: str, kwargs: dict) -> dict:
    """What a model of ``arch`` built with ``kwargs`` takes and predicts, for its checkpoint's
    metadata: ``input_shape`` [channels, height, width] and ``num_classes`` (where known)."""
    out: dict = {}
    shape = input_shape(arch, kwargs)
    if shape is not None:
        out["input_shape"] = list(shape)
    n = built_for(arch, kwargs).get("num_classes")
    if n is not None:
        out["num_classes"] = n
    return out


def save_model(path: Path, model: nn.Module, meta: dict | None = None) -> None:
    """Save weights + buffers and everything needed to rebuild the model."""
    arch = arch_of(model)
    kw = arch["kwargs"]
    dataset = kw.get("dataset", "cifar10")
    mean, std = normalization_for(dataset)
    full = {"kind": "model", "arch": arch["arch"], "arch_kwargs": kw, "dataset": dataset,
            "normalization": {"mean": mean, "std": std}, **built_for_meta(arch["arch"], kw),
            **(meta or {})}
    save_tensors(path, model.state_dict(), full)


def _state_problems(own: dict, tensors: dict) -> str | None:
    missing = sorted(set(own) - set(tensors))
    unexpected = sorted(set(tensors) - set(own))
    wrong = sorted(k for k in set(own) & set(tensors) if tuple(own[k].shape) != tuple(tensors[k].shape))
    if not (missing or unexpected or wrong):
        return None

    def few(keys):
        return ", ".join(keys[:3]) + (" …" if len(keys) > 3 else "")
    return (f"{len(missing)} missing [{few(missing)}], {len(unexpected)} unexpected "
            f"[{few(unexpected)}], {len(wrong)} of another shape [{few(wrong)}]")


def rebuild(arch, kwargs, tensors: dict[str, torch.Tensor], where: str) -> nn.Module:
    """``build_model(arch, **kwargs)`` with ``tensors`` loaded, or one CheckpointError.

    The model is first built on PyTorch's ``meta`` device (shapes only, no memory), so
    metadata asking for a model that does not fit the file's tensors (a damaged width,
    say) is refused before anything large is allocated.
    """
    if not isinstance(arch, str) or not isinstance(kwargs, dict):
        raise CheckpointError(f"{where} has malformed metadata: arch {arch!r}, arch_kwargs of type "
                              f"{type(kwargs).__name__}. {_DAMAGED}")

    def build(device=None):
        try:
            if device is None:
                return build_model(arch, **kwargs)
            with torch.device(device):
                return build_model(arch, **kwargs)
        except NotImplementedError:
            if device is None:
                raise
            return None        # an architecture that cannot be built on the meta device
        except Exception as e:  # metadata from the file: whatever it asks for may fail
            raise CheckpointError(f"{where} cannot be rebuilt: {arch}({kwargs}) fails "
                                  f"({type(e).__name__}: {e}). The file is damaged or was written by "
                                  f"another dwf-lab version. {_REDO}") from None

    shell = build("meta")
    if shell is not None:
        problems = _state_problems(shell.state_dict(), tensors)
        if problems:
            raise CheckpointError(f"{where} does not fit this model (another architecture or width?): "
                                  f"{problems}")
        del shell
    model = build()
    load_state(model, tensors, where)
    return model


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
    if meta.get("kind") == "training":
        tensors = {k[len("model/"):]: v for k, v in tensors.items() if k.startswith("model/")}
    model = rebuild(arch, meta.get("arch_kwargs", {}), tensors, str(path))
    model.to(map_location).eval()
    if meta_out is not None:
        meta_out.update(meta)
    return model


def load_state(model: nn.Module, tensors: dict[str, torch.Tensor], where: str) -> None:
    """Strict load with one clear error if the checkpoint does not fit the model."""
    problems = _state_problems(model.state_dict(), tensors)
    if problems:
        raise CheckpointError(f"{where} does not fit this model (another architecture or width?): {problems}")
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"{where} does not fit this model ({e})") from None


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
            "dataset": arch["kwargs"].get("dataset"), **built_for_meta(arch["arch"], arch["kwargs"]),
            "progress": progress, "optimizer": opt_meta, **(meta or {})}
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
    if not isinstance(meta.get("progress"), dict) or not isinstance(meta.get("optimizer"), dict):
        raise CheckpointError(f"{path} has no readable progress or optimizer state. {_DAMAGED}")
    device = next(model.parameters()).device
    try:
        opt_sd = _unflatten_optimizer({k: v.to(device) for k, v in tensors.items()}, meta["optimizer"])
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise CheckpointError(f"{path} has an unreadable optimizer state ({type(e).__name__}: {e}). "
                              f"{_DAMAGED}") from None
    load_state(model, {k[6:]: v for k, v in tensors.items() if k.startswith("model/")}, str(path))
    try:
        optimizer.load_state_dict(opt_sd)
        if "rng/torch_cpu" in tensors:
            torch.set_rng_state(tensors["rng/torch_cpu"])
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{path} does not fit this optimizer ({type(e).__name__}: {e}): "
                              "use another run directory or the old settings.") from None
    return meta
