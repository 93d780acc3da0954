"""What every L-infinity attack of the kit guarantees, and the pieces the attacks share.

Conventions (DESIGN.md, and what every attack here guarantees):
- inputs are images in [0, 1]; the model normalizes inside; eps is in pixel units;
- the model runs in eval mode during the attack (BatchNorm uses its running
  statistics: docs/paper-notes.md, gap 6, one choice applied everywhere) and gets its
  mode back afterwards (:func:`attack_mode`, :func:`keep_state`);
- parameter gradients are never computed or accumulated (``requires_grad`` is
  switched off during the attack and restored);
- the result satisfies ||x_adv - x||_inf <= eps and x_adv in [0, 1] (:func:`project`, Eq. 5);
- inputs are checked once per call, on the whole batch (:func:`check_inputs`: eps and alpha
  finite and in [0, 1], float images in [0, 1] without NaN, the shape the model was built for;
  float64 is converted to float32), never per step; batch sizes by :func:`check_batch_size`.

A loss is either a name ("ce", "dlr": Croce & Hein 2020) or a callable
``loss(model, x, y) -> (B,)`` returning a per-example loss to *maximise*
(:func:`resolve_loss`); the gate-aware losses of :mod:`dwf_lab.attacks.gate` plug in that way.
"""
import contextlib
import math
import numbers
from typing import Callable, Sequence, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from dwf_lab.models.registry import built_for

LossFn = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]


# ------------------------------------------------------------------ checks --
def check_eps(eps, name: str = "eps") -> float:
    """``eps`` (or a step size ``alpha``) in pixel units: a finite number in [0, 1], else one clear error.

    A value above 1 is refused: images are in [0, 1], so it would allow any image; it is
    almost always a radius written in 0-255 units (8 for 8/255).
    """
    try:
        v = float(eps)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number (pixel units, e.g. 8/255), got {eps!r}") from None
    if not v >= 0:  # also catches NaN
        raise ValueError(f"{name} must be >= 0 (pixel units, e.g. 8/255), got {eps}")
    if math.isinf(v):
        raise ValueError(f"{name} must be finite (pixel units, e.g. 8/255), got {eps}")
    if v > 1:
        raise ValueError(f"{name} is in pixel units: did you mean {v:g}/255? Got {name}={eps}, but images "
                         f"are in [0, 1], so {name} > 1 would allow any image.")
    return v


def check_batch_size(batch_size) -> int:
    """A batch size: a positive integer, else one clear error (0 would divide by zero)."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    return int(batch_size)


def check_counts(**counts) -> None:
    """Step counts, restarts, samples: whole numbers (``steps=2.5`` or ``True`` is one clear error,
    not a TypeError from ``range()``)."""
    for name, v in counts.items():
        if isinstance(v, bool) or not isinstance(v, numbers.Integral):
            raise ValueError(f"{name} must be a whole number, got {v!r}")


def check_fits_model(x: torch.Tensor, model: nn.Module | None) -> None:
    """Refuse images of another shape than the model was built for (``model.dwf_arch``).

    Channels are always known for a model made by ``build_model`` (``in_channels``, else its
    factory's default); the size only for an architecture that takes ``image_size`` (a
    mixture's gate). A model without ``dwf_arch`` is not checked. Without this a 1-channel
    image fed to a 3-channel model is silently broadcast to three channels by its Normalize.
    """
    arch = getattr(model, "dwf_arch", None)
    if not isinstance(arch, dict) or x.dim() != 4:
        return
    spec = built_for(arch.get("arch"), arch.get("kwargs") or {})
    _, c, h, w = x.shape
    want_c = spec.get("in_channels")
    if want_c is not None and c != want_c and w == want_c and c != w:
        raise ValueError(
            f"this {arch.get('arch')} model takes (N, C, H, W) batches of {want_c}-channel images, got shape "
            f"{tuple(x.shape)}: the images look channels-last (N, H, W, C); pass x.permute(0, 3, 1, 2)")
    if want_c is not None and c != want_c:
        raise ValueError(
            f"this {arch.get('arch')} model was built for {want_c}-channel images (in_channels={want_c}), "
            f"got {c}x{h}x{w} images: pass images of the dataset it was trained on (a model for "
            f"{c}-channel images is built with in_channels={c} and that dataset).")
    size = spec.get("image_size")
    if size is not None and (h, w) != (size, size):
        raise ValueError(f"this {arch.get('arch')} model was built for {size}x{size} images "
                         f"(image_size={size}), got {h}x{w}: pass images of the dataset it was trained on.")


def check_inputs(x: torch.Tensor, eps: float | None = None, model: nn.Module | None = None,
                 alpha: float | None = None) -> torch.Tensor:
    """One clear error for the usual mistakes; returns ``x`` as the attacks take it.

    Refused: eps or alpha that is negative, NaN, infinite or above 1 (:func:`check_eps`);
    anything but a (N, C, H, W) batch; integer images (uint8 0-255: divide by 255); NaN
    or infinite pixels; values outside [0, 1] (normalized inputs); with ``model``, images
    of another shape than it was built for (:func:`check_fits_model`). Floating-point
    images of another precision (float64 from NumPy, float16) are converted to float32,
    the precision every attack and evaluation of the kit runs in: use the returned tensor.
    One pass over the batch (min and max): call it once per attack, never per step.
    """
    if eps is not None:
        check_eps(eps)
    if alpha is not None:
        check_eps(alpha, "alpha")
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"expected a batch of images as a torch.Tensor (N, C, H, W), got {type(x).__name__}")
    if x.dim() != 4:
        raise ValueError(f"expected a batch of images (N, C, H, W), got shape {tuple(x.shape)}")
    if not torch.is_floating_point(x):
        raise ValueError(f"attack inputs must be float images in [0, 1], got dtype {x.dtype}. "
                         "For 0-255 images divide by 255: x.float() / 255.")
    if x.dtype != torch.float32:
        x = x.float()
    check_fits_model(x, model)
    if x.numel() == 0:
        return x
    lo_t, hi_t = torch.aminmax(x)
    lo, hi = float(lo_t), float(hi_t)
    if not (math.isfinite(lo) and math.isfinite(hi)):   # min and max are NaN if any pixel is
        n_nan, n_inf = int(torch.isnan(x).sum()), int(torch.isinf(x).sum())
        raise ValueError(
            f"attack inputs contain {n_nan} NaN and {n_inf} infinite pixel values (of {x.numel()}): "
            "an attack on them returns NaN images and any accuracy on them means nothing. "
            "Fix the data where it is made.")
    if lo < 0.0 or hi > 1.0:
        raise ValueError(
            f"attack inputs must be images in [0, 1], got values in [{lo:.3f}, {hi:.3f}]. "
            "Pass un-normalized images: every dwf_lab model normalizes inside.")
    return x


@contextlib.contextmanager
def attack_mode(model: nn.Module):
    """Eval mode and no parameter gradients for the duration; both restored after."""
    was_training = model.training
    flags = [(p, p.requires_grad) for p in model.parameters()]
    model.eval()
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield model
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        model.train(was_training)


# ------------------------------------------------------------------ losses --
def dlr_from_logits(z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Difference-of-logits-ratio loss (Croce & Hein 2020), per example, to maximise."""
    if z.shape[1] < 3:
        raise ValueError("the DLR loss needs at least 3 classes")
    z = z.float()
    zs, _ = z.sort(dim=1)
    z_y = z.gather(1, y[:, None]).squeeze(1)
    top_is_y = (zs[:, -1] == z_y).float()
    z_other = zs[:, -2] * top_is_y + zs[:, -1] * (1 - top_is_y)
    return -(z_y - z_other) / (zs[:, -1] - zs[:, -3] + 1e-12)


def ce_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(model(x).float(), y, reduction="none")


def dlr_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return dlr_from_logits(model(x), y)


LOSSES: dict[str, LossFn] = {"ce": ce_loss, "dlr": dlr_loss}


def resolve_loss(loss: Union[str, LossFn]) -> LossFn:
    if callable(loss):
        return loss
    if loss not in LOSSES:
        raise ValueError(f"unknown attack loss {loss!r}; use one of {sorted(LOSSES)} or a callable")
    return LOSSES[loss]


def input_gradient(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                   loss: Union[str, LossFn] = "ce", eot_samples: int = 1) -> torch.Tensor:
    """d(sum of per-example loss)/dx, averaged over ``eot_samples`` forward passes."""
    loss_fn = resolve_loss(loss)
    grad = torch.zeros_like(x)
    for _ in range(eot_samples):
        xg = x.detach().requires_grad_(True)
        with torch.enable_grad():
            total = loss_fn(model, xg, y).sum()
            (g,) = torch.autograd.grad(total, xg)
        grad += g
    return grad / eot_samples


def project(x_adv: torch.Tensor, x: torch.Tensor, eps: float) -> torch.Tensor:
    """Eq. 5: back into the eps-ball around x, then into the image box [0, 1]."""
    return torch.min(torch.max(x_adv, x - eps), x + eps).clamp_(0.0, 1.0)


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 512) -> float:
    """Top-1 accuracy in [0, 1], model in eval mode (mode restored)."""
    check_batch_size(batch_size)
    was = model.training
    model.eval()
    try:
        correct = 0
        for i in range(0, len(x), batch_size):
            correct += (model(x[i:i + batch_size]).argmax(1) == y[i:i + batch_size]).sum().item()
    finally:
        model.train(was)
    return correct / max(1, len(x))


def correct_mask(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per example: is the model (in eval mode, no gradients) right on x?"""
    with torch.no_grad(), attack_mode(model):
        return model(x).argmax(1) == y


# ---------------------------------------------------------------- sources --
@contextlib.contextmanager
def keep_state(modules: Sequence[nn.Module]):
    """Restore the train/eval mode and requires_grad of every submodule/parameter afterwards."""
    modes = [(m, m.training) for mod in modules for m in mod.modules()]
    flags = [(p, p.requires_grad) for mod in modules for p in mod.parameters()]
    try:
        yield
    finally:
        for m, t in modes:
            m.training = t
        for p, f in flags:
            p.requires_grad_(f)
