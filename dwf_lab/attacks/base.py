"""What every L-infinity attack of the kit guarantees, and the pieces the attacks share.

Conventions (DESIGN.md, and what every attack here guarantees):
- inputs are images in [0, 1]; the model normalizes inside; eps is in pixel units;
- the model runs in eval mode during the attack (BatchNorm uses its running
  statistics: docs/paper-notes.md, gap 6, one choice applied everywhere) and gets its
  mode back afterwards (:func:`attack_mode`, :func:`keep_state`);
- parameter gradients are never computed or accumulated (``requires_grad`` is
  switched off during the attack and restored);
- the result satisfies ||x_adv - x||_inf <= eps and x_adv in [0, 1] (:func:`project`, Eq. 5).

A loss is either a name ("ce", "dlr": Croce & Hein 2020) or a callable
``loss(model, x, y) -> (B,)`` returning a per-example loss to *maximise*
(:func:`resolve_loss`); the gate-aware losses of :mod:`dwf_lab.attacks.gate` plug in that way.
"""
import contextlib
from typing import Callable, Sequence, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

LossFn = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]


# ------------------------------------------------------------------ checks --
def check_inputs(x: torch.Tensor, eps: float | None = None) -> None:
    """One clear error for the usual mistakes: negative eps, normalized inputs."""
    if eps is not None and not (eps >= 0):  # also catches NaN
        raise ValueError(f"eps must be >= 0 (pixel units, e.g. 8/255), got {eps}")
    if x.dim() != 4:
        raise ValueError(f"expected a batch of images (N, C, H, W), got shape {tuple(x.shape)}")
    lo, hi = float(x.min()), float(x.max())
    if lo < 0.0 or hi > 1.0:
        raise ValueError(
            f"attack inputs must be images in [0, 1], got values in [{lo:.3f}, {hi:.3f}]. "
            "Pass un-normalized images: every dwf_lab model normalizes inside.")


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
