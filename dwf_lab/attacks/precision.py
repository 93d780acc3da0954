"""The arithmetic an evaluation's forward and backward passes run in: fp32, or bf16 autocast.

On CPUs with AMX / AVX-512 BF16 units an attack step in bf16 autocast is about twice as fast as
in fp32 (``benchmarks/eval_precision.py``); on CPUs without them it is slower, which is why
"auto" is decided by a measurement (:func:`dwf_lab.core.precision.evaluation_precision`). Low
precision must not weaken the attacks, so bf16 is used only:

- on the kit's own CIFAR ResNet-18s and mixtures of them (:func:`bf16_validated`), where a
  test on a trained model shows it agreeing with fp32 within a point of robust accuracy
  (``tests/evaluation/test_precision.py``) and every run's checklist measures it again on the
  run's own models (``precision-agrees``, :mod:`dwf_lab.evaluation.checklist`);
- with logits computed in fp32: the experts' heads, the gate and the mixture's combination run
  outside autocast (:mod:`dwf_lab.models.resnet`, :mod:`dwf_lab.mixture.moe`), on bf16
  features, and every loss, margin and softmax of an attack, the official AutoAttack's
  included, is computed in fp32; only the convolutions (and their BatchNorm) run in bf16.

Every stored result records the precision it was computed in (the settings' ``precision``); a
result in one precision is never read as the other.
"""
import contextlib
import dataclasses

import torch
import torch.nn as nn

from dwf_lab.mixture.moe import MixtureOfExperts
from dwf_lab.models.resnet import ResNet

PRECISIONS = ("fp32", "bf16")
_PATCHED = "_dwf_precision"     # marks a forward replaced by compute_precision


def bf16_validated(model: nn.Module) -> bool:
    """True for the models bf16 evaluation has been checked on: a kit ResNet-18, or a mixture
    whose experts are all kit ResNet-18s (DWF, its ablations, the uniform ensemble)."""
    if isinstance(model, ResNet):
        return True
    return isinstance(model, MixtureOfExperts) and all(isinstance(e, ResNet) for e in model.experts)


def precision_for(model: nn.Module, wanted: str) -> str:
    """``wanted`` where the model supports it, else "fp32" (a baseline such as SoE or ADVMoE, or a
    user's model: fp32, never a precision it was not checked in)."""
    check_precision(wanted)
    return wanted if wanted == "fp32" or bf16_validated(model) else "fp32"


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    return precision


def _as_fp32(out):
    if isinstance(out, torch.Tensor):
        return out.float() if out.is_floating_point() else out
    if isinstance(out, tuple):
        items = [_as_fp32(o) for o in out]
        return type(out)(*items) if hasattr(out, "_fields") else tuple(items)
    if dataclasses.is_dataclass(out) and not isinstance(out, type):
        return dataclasses.replace(out, **{f.name: _as_fp32(getattr(out, f.name))
                                           for f in dataclasses.fields(out)})
    return out


def _in_bf16(fn, device_type: str):
    def run(*args, **kwargs):
        with torch.autocast(device_type=device_type, dtype=torch.bfloat16):
            out = fn(*args, **kwargs)
        return _as_fp32(out)
    setattr(run, _PATCHED, True)
    return run


@contextlib.contextmanager
def compute_precision(model: nn.Module, precision: str):
    """For the duration, ``model`` runs in ``precision``: "fp32" changes nothing; "bf16" runs its
    ``forward`` (and a mixture's ``forward_details``) under bf16 autocast and returns fp32 outputs,
    and so does every kit ResNet-18 inside it (a mixture's experts, attacked alone by the transfer
    attacks and the diagnostics). A model bf16 is not validated for (:func:`bf16_validated`) is
    refused with one line. Nested calls are fine; every module is restored afterwards."""
    check_precision(precision)
    if precision == "fp32":
        yield model
        return
    if not bf16_validated(model):
        raise ValueError(f"bf16 evaluation is checked only on the kit's ResNet-18s and their mixtures, not on "
                         f"{type(model).__name__}: evaluate it with precision 'fp32' (precision_for(model, ...))")
    device_type = next(model.parameters()).device.type
    patched = []
    for module in [model] + [m for m in model.modules() if m is not model and isinstance(m, ResNet)]:
        for name in ("forward", "forward_details"):
            fn = getattr(module, name, None)
            if fn is None or getattr(fn, _PATCHED, False):
                continue
            module.__dict__[name] = _in_bf16(fn, device_type)
            patched.append((module, name))
    try:
        yield model
    finally:
        for module, name in patched:
            del module.__dict__[name]

