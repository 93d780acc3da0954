"""The runtime of a process: stable seeds, the device and the fast-path switches.

- :func:`seed_from` mixes integers into one stable 63-bit seed (blake2b, the same on every
  run and machine); every random draw of the kit is derived from (seed, stage, step, ...)
  through it, so a resumed run replays the uninterrupted one;
- :func:`package_versions`: what checkpoints record;
- :class:`Runtime`: a profile's device, bf16 autocast, channels_last, ``torch.compile``,
  expert batching and SyncBatchNorm, resolved; it also joins the torchrun process group
  (:mod:`dwf_lab.core.distributed`) and hands out each step's generators;
- :func:`compile_for_training`: ``torch.compile`` that falls back to eager on an error.
"""
import contextlib
import hashlib
import platform
import warnings
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn

import dwf_lab
from dwf_lab.core import distributed
from dwf_lab.core.config import Profile
from dwf_lab.core.device import resolve_device


# ----------------------------------------------------------------- seeding --
def seed_from(*parts: int) -> int:
    """Mix integers into one stable 63-bit seed (blake2b; the same on every run and machine)."""
    text = ",".join(str(int(p)) for p in parts).encode()
    digest = hashlib.blake2b(text, digest_size=8, person=b"dwf_lab").digest()
    return int.from_bytes(digest, "little") & (2 ** 63 - 1)


def package_versions() -> dict[str, str]:
    out = {"dwf_lab": dwf_lab.__version__, "torch": torch.__version__,
           "python": platform.python_version()}
    try:
        import torchvision
        out["torchvision"] = torchvision.__version__
    except ImportError:
        pass
    return out


@dataclass
class Runtime:
    """Where and how fast: the device and the fast-path switches, resolved.

    ``compile``: wrap the model's training forward in ``torch.compile`` (attacks
    stay eager); a compilation error warns once and training continues eager.
    ``expert_batching``: set on a mixture by :meth:`prepare` (None: leave it;
    profile field ``expert_batching``).
    ``sync_batchnorm``: under torchrun on CUDA, BatchNorm statistics over the
    global batch (the single-process semantics) instead of per rank (profile
    field ``sync_batchnorm``).
    Under ``torchrun`` the device is ``cuda:LOCAL_RANK`` and the process group
    is set up here (``dwf_lab.core.distributed``).
    """
    device: torch.device
    amp: bool
    channels_last: bool
    compile: bool = False
    expert_batching: str | None = None
    sync_batchnorm: bool = False
    fast_path: dict | None = None    # how "auto" was decided on a CPU (the probe's numbers), for the log

    def cpu_auto(self, p: Profile) -> bool:
        """True when amp or channels_last is "auto" on a CPU, where only a measurement can decide
        (bf16 and channels_last are faster on CPUs with AMX / AVX-512 BF16 units, slower without).
        A ``deterministic`` run keeps the reference path (fp32, contiguous)."""
        return self.device.type == "cpu" and not p.deterministic and "auto" in (p.amp, p.channels_last)

    @classmethod
    def from_profile(cls, p: Profile) -> "Runtime":
        """The profile's switches; "auto" means on for CUDA and off elsewhere until a probe
        (:func:`dwf_lab.training.fast_path.training_runtime`) decides for a CPU."""
        dev = distributed.init_from_env(resolve_device(p.device))
        cuda = dev.type == "cuda"
        amp = p.amp == "bf16" or (p.amp == "auto" and cuda)
        cl = p.channels_last == "on" or (p.channels_last == "auto" and cuda)
        if p.num_threads > 0:
            torch.set_num_threads(p.num_threads)
        if p.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=False)
            torch.backends.cudnn.benchmark = False
        elif cuda:
            torch.backends.cudnn.benchmark = True
        return cls(dev, amp, cl, compile=bool(p.compile),
                   expert_batching=p.expert_batching, sync_batchnorm=bool(p.sync_batchnorm))

    @property
    def rank(self) -> int:
        return distributed.rank()

    @property
    def world_size(self) -> int:
        return distributed.world()

    def autocast(self):
        if not self.amp:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)

    def prepare(self, model: nn.Module) -> nn.Module:
        model.to(self.device)
        if self.channels_last:
            model.to(memory_format=torch.channels_last)
        if self.expert_batching is not None and hasattr(model, "expert_batching"):
            model.expert_batching = self.expert_batching
        return model

    def inputs(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device, non_blocking=True)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def step_generators(self, seed: int, sid: int, g: int) -> tuple[torch.Generator, torch.Generator]:
        """(gen, gen_dev) of global step ``g``: gen (CPU) draws the attack settings, the
        same on every rank; gen_dev draws the attack noise on the device, per rank."""
        gen = torch.Generator().manual_seed(seed_from(seed, sid, g))
        world = self.world_size
        if self.device.type == "cpu" and world == 1:
            return gen, gen
        parts = (seed, sid, g, 1) if world == 1 else (seed, sid, g, 1, self.rank)
        return gen, torch.Generator(self.device).manual_seed(seed_from(*parts))


# ------------------------------------------------------- torch.compile --
_compile_warned = False


def _warn_compile(err: BaseException) -> None:
    global _compile_warned
    if not _compile_warned:
        _compile_warned = True
        warnings.warn(f"torch.compile failed ({type(err).__name__}: {str(err)[:300]}); "
                      "training continues eager (set compile=false to silence this).",
                      RuntimeWarning, stacklevel=3)


class _CompiledOrEager:
    """Calls the compiled module; if compiling raises, warns once and stays eager for good."""

    def __init__(self, compiled: Callable, eager: nn.Module):
        self.compiled, self.eager, self.failed = compiled, eager, False

    def __call__(self, *args, **kwargs):
        if not self.failed:
            try:
                return self.compiled(*args, **kwargs)
            except Exception as err:  # dynamo/inductor errors surface at the first call
                self.failed = True
                _warn_compile(err)
        return self.eager(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.eager, name)


def compile_for_training(module: nn.Module) -> Callable:
    """``torch.compile(module)`` with a clean fallback to ``module`` itself (see _CompiledOrEager)."""
    try:
        compiled = torch.compile(module)
    except Exception as err:
        _warn_compile(err)
        return module
    return _CompiledOrEager(compiled, module)
