"""Choosing the fast path on a CPU by measuring it.

bf16 autocast and channels_last make a training step much faster on CPUs with AMX or
AVX-512 BF16 units and slower on CPUs without them, and which wins also depends on the
width and the batch. So on a CPU a profile's ``amp="auto"`` / ``channels_last="auto"`` are
decided by :func:`probe_cpu_paths`: a few timed training steps of the run's ResNet-18 in
fp32, fp32 + channels_last, bf16 and bf16 + channels_last. A faster path is taken only when
it beats fp32 by :data:`MARGIN`; the numbers are returned for the run's log. Evaluation
never uses autocast (attacks run in fp32), so the choice changes speed, not what is measured.
"""
import copy
import dataclasses
import functools
import time

import torch
import torch.nn.functional as F

from dwf_lab.core.config import Profile
from dwf_lab.core.runtime import Runtime
from dwf_lab.models.resnet import resnet18

PATHS = {"fp32": (False, False), "fp32+channels_last": (False, True),
         "bf16": (True, False), "bf16+channels_last": (True, True)}
MARGIN = 1.05          # a path must be 5% faster than fp32 to be chosen (timing noise)


def bf16_supported() -> bool:
    """Whether this CPU has native bf16 kernels (oneDNN); without them bf16 is emulated and slow."""
    check = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    return bool(check()) if check is not None else False


def channels_last_ok(width: float) -> bool:
    """Whether channels_last is safe to try on this CPU for a ResNet-18 of ``width``: on AVX-512 CPUs
    always; elsewhere only when its narrowest layer has at least 8 channels (on an AVX2 EPYC, torch
    2.14.1's oneDNN crashed or hung in the channels_last backward of the 4-channel width 1/16)."""
    return torch.backends.cpu.get_cpu_capability().startswith("AVX512") or 64 * width >= 8


@functools.lru_cache(maxsize=8)
def probe_cpu_paths(width: float, batch: int, threads: int, steps: int = 3) -> dict:
    """Images/s of a ResNet-18 training step (width, batch) on each path of :data:`PATHS`;
    ``choice``: the fastest path (fp32 unless another is :data:`MARGIN` faster)."""
    torch.manual_seed(0)
    base = resnet18(10, width)
    x, y = torch.rand(batch, 3, 32, 32), torch.randint(0, 10, (batch,))
    rates = {}
    for name, (amp, cl) in PATHS.items():
        if (amp and not bf16_supported()) or (cl and not channels_last_ok(width)):
            continue
        model = copy.deepcopy(base).train()
        xs = x.contiguous(memory_format=torch.channels_last) if cl else x
        if cl:
            model.to(memory_format=torch.channels_last)
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        for i in range(steps + 1):                       # the first step warms up
            if i == 1:
                t0 = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
                loss = F.cross_entropy(model(xs).float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        rates[name] = round(batch * steps / (time.perf_counter() - t0), 1)
    return {"images_per_s": rates, "choice": choose(rates), "width": width, "batch": batch, "threads": threads,
            "bf16_supported": bf16_supported()}


def choose(rates: dict[str, float]) -> str:
    """The fastest path, unless it beats fp32 by less than :data:`MARGIN` (then fp32)."""
    best = max(rates, key=rates.get)
    return best if rates[best] >= MARGIN * rates["fp32"] else "fp32"


def training_runtime(p: Profile) -> Runtime:
    """:meth:`Runtime.from_profile`, with "auto" decided by :func:`probe_cpu_paths` on a CPU.

    A switch the profile sets explicitly ("bf16"/"off", "on"/"off") is kept as it is."""
    rt = Runtime.from_profile(p)
    if not rt.cpu_auto(p):
        return rt
    probe = probe_cpu_paths(p.width, p.expert_batch, torch.get_num_threads())
    amp, cl = PATHS[probe["choice"]]
    return dataclasses.replace(rt, amp=amp if p.amp == "auto" else rt.amp,
                               channels_last=cl if p.channels_last == "auto" else rt.channels_last,
                               fast_path=probe)


def evaluation_channels_last(p: Profile, device: torch.device | str = "cpu") -> bool:
    """Whether models are evaluated in channels_last. Evaluation is always fp32 (no autocast);
    channels_last is a memory layout, not a precision: the same arithmetic in another order,
    so attacks agree with the contiguous layout up to float rounding (a test checks it).

    "on"/"off" as the profile says, and off for a ``deterministic`` run. "auto": on a CPU when
    :func:`probe_cpu_paths` measured fp32 + channels_last at least :data:`MARGIN` faster than
    fp32 (on this project's CPU about 1.4x for PGD on the laptop profile's models); off on
    other devices, where it has not been measured."""
    if p.channels_last != "auto" or p.deterministic:
        return p.channels_last == "on"
    if torch.device(device).type != "cpu":
        return False
    rates = probe_cpu_paths(p.width, p.expert_batch, torch.get_num_threads())["images_per_s"]
    return rates.get("fp32+channels_last", 0.0) >= MARGIN * rates["fp32"]


def for_evaluation(model: torch.nn.Module, p: Profile, device: torch.device | str = "cpu") -> torch.nn.Module:
    """``model`` in eval mode, in the layout :func:`evaluation_channels_last` chooses."""
    if evaluation_channels_last(p, device):
        model.to(memory_format=torch.channels_last)
    return model.eval()
