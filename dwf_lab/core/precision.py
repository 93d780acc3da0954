"""fp32 or bf16 for a profile's evaluation attacks: :func:`evaluation_precision` ("auto" is measured).

Imports only :mod:`dwf_lab.core.device`: :mod:`dwf_lab.core.config` resolves a profile's precision with it."""
import functools
import time

import torch
import torch.nn.functional as F

from dwf_lab.core.device import resolve_device

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


def evaluation_precision(p) -> str:
    """The precision the profile's evaluation attacks run in: ``eval_precision`` when it names one;
    "auto": bf16 on a CPU where :func:`bf16_attack_speedup` measures it at least
    :data:`BF16_EVAL_MARGIN` faster, else fp32 (a GPU, a ``deterministic`` run, a CPU without bf16
    units). What bf16 evaluation is allowed on, and how it is checked: :mod:`dwf_lab.attacks.precision`."""
    if p.eval_precision != "auto":
        return p.eval_precision
    if p.deterministic or resolve_device(p.device).type != "cpu":
        return "fp32"
    return "bf16" if bf16_attack_speedup(torch.get_num_threads()) >= BF16_EVAL_MARGIN else "fp32"
