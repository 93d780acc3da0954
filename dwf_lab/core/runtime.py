"""The runtime of a process: stable seeds, the device and the fast-path switches.

- :func:`seed_from` mixes integers into one stable 63-bit seed (blake2b, the same on every
  run and machine); every random draw of the kit is derived from (seed, stage, step, ...)
  through it, so a resumed run replays the uninterrupted one;
- :func:`package_versions`: what checkpoints record;
- :class:`Runtime`: a profile's device, bf16 autocast, channels_last, ``torch.compile``,
  expert batching and SyncBatchNorm, resolved; it also joins the torchrun process group
  (:mod:`dwf_lab.core.distributed`) and hands out each step's generators;
- :func:`evaluation_precision`: fp32 or bf16 for the evaluation attacks ("auto" measured);
- :func:`compile_for_training`: ``torch.compile`` that falls back to eager on an error.
"""
import contextlib
import functools
import hashlib
import platform
import time
import warnings
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

import dwf_lab
from dwf_lab.core import distributed
from dwf_lab.core.config import Profile


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


def mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def resolve_device(name: str = "auto") -> torch.device:
    """``auto``: CUDA, else an Apple-silicon GPU (``mps``), else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "mps" if mps_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {name!r} requested but CUDA is not available; use device=cpu")
    if dev.type == "mps" and not mps_available():
        raise RuntimeError(f"device {name!r} requested but no Apple-silicon GPU (mps) is available; use device=cpu")
    return dev


# ------------------------------------------------- evaluation precision --
BF16_EVAL_MARGIN = 1.25    # bf16 must be this much faster than fp32 for "auto" to pick it


@functools.lru_cache(maxsize=None)
def bf16_attack_speedup(threads: int) -> float:
    """fp32 time over bf16-autocast time of an attack's inner loop on this CPU: the forward and the
    input gradient of two 3x3 convolutions at the laptop experts' size (channels_last, batch 64,
    32 -> 32 channels, 32 x 32), the fastest of five interleaved tries of each. About a second,
    measured once per process and thread count. On CPUs without bf16 units it is well below 1."""
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(64, 32, 32, 32, generator=gen).contiguous(memory_format=torch.channels_last)
    w1, w2 = (torch.randn(32, 32, 3, 3, generator=gen) * 0.05 for _ in range(2))

    def step(bf16: bool) -> None:
        xi = x.clone().requires_grad_(True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            z = F.conv2d(F.relu(F.conv2d(xi, w1, padding=1)), w2, padding=1)
        z.float().square().mean().backward()

    def seconds(bf16: bool) -> float:
        t = time.perf_counter()
        step(bf16)
        return time.perf_counter() - t
    try:
        step(False), step(True)         # warm-up (oneDNN picks its kernels on the first call)
        # interleaved, the fastest of five each: a busy moment slows one try, not one path
        times = [(seconds(False), seconds(True)) for _ in range(5)]
        return min(t for t, _ in times) / min(t for _, t in times)
    except RuntimeError:                # no bf16 kernels on this CPU at all
        return 0.0


def evaluation_precision(p: Profile) -> str:
    """The precision the profile's evaluation attacks run in: ``eval_precision`` when it names one;
    "auto": bf16 on a CPU where :func:`bf16_attack_speedup` measures it at least
    :data:`BF16_EVAL_MARGIN` faster, else fp32 (a GPU, a ``deterministic`` run, a CPU without bf16
    units). What bf16 evaluation is allowed on, and how it is checked: :mod:`dwf_lab.attacks.precision`."""
    if p.eval_precision != "auto":
        return p.eval_precision
    if p.deterministic or resolve_device(p.device).type != "cpu":
        return "fp32"
    return "bf16" if bf16_attack_speedup(torch.get_num_threads()) >= BF16_EVAL_MARGIN else "fp32"


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
