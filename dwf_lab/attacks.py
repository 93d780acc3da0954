"""L-infinity attacks in pixel space: FGSM (Eq. 3), PGD (Eq. 4-5), restarts, EoT.

Conventions (DESIGN.md, and what every attack here guarantees):
- inputs are images in [0, 1]; the model normalizes inside; eps is in pixel units;
- the model runs in eval mode during the attack (BatchNorm uses its running
  statistics: PAPER-NOTES.md gap 6, one choice applied everywhere) and gets its
  mode back afterwards;
- parameter gradients are never computed or accumulated (``requires_grad`` is
  switched off during the attack and restored);
- the result satisfies ||x_adv - x||_inf <= eps and x_adv in [0, 1];
- PGD with restarts keeps, per example, the worst case over restarts.

A loss is either a name ("ce", "dlr") or a callable ``loss(model, x, y) -> (B,)``
returning a per-example loss to *maximise*; the gate-aware attacks of
``dwf_lab.adaptive`` plug in that way.
"""
from __future__ import annotations

import contextlib
from typing import Callable, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

# Algorithms 1 and 3: eps drawn per batch from {0.01, ..., 0.09} (pixel scale)
FGSM_EPSILONS: tuple[float, ...] = tuple(round(0.01 * i, 2) for i in range(1, 10))
# Algorithms 2 and 3: PGD iterations drawn per batch from {10, 20, 30, 40, 50}
PGD_STEPS: tuple[int, ...] = (10, 20, 30, 40, 50)
PGD_EPS = 8 / 255
PGD_ALPHA = 2 / 255

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


# ----------------------------------------------------------------- attacks --
def fgsm(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float,
         loss: Union[str, LossFn] = "ce", check: bool = True) -> torch.Tensor:
    """Eq. 3: x_adv = clip(x + eps * sign(grad_x L(f(x), y)), 0, 1)."""
    if check:
        check_inputs(x, eps)
    if eps == 0:
        return x.detach().clone()
    with attack_mode(model):
        g = input_gradient(model, x, y, loss)
    return (x.detach() + eps * g.sign()).clamp_(0.0, 1.0)


def pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float = PGD_EPS,
        alpha: float = PGD_ALPHA, steps: int = 10, random_start: bool = True,
        restarts: int = 1, loss: Union[str, LossFn] = "ce", eot_samples: int = 1,
        generator: torch.Generator | None = None, check: bool = True) -> torch.Tensor:
    """Eq. 4-5: ``steps`` signed-gradient steps of size alpha, projected after each.

    ``random_start`` draws the start uniformly in the eps-ball (Madry et al.; the
    paper does not say, PAPER-NOTES.md gap 3). With ``restarts > 1`` each example
    keeps its worst case: a misclassifying restart if any, else the highest loss.
    ``eot_samples > 1`` averages the gradient over that many forward passes
    (Expectation over Transformation, for randomized models).
    """
    if check:
        check_inputs(x, eps)
        if steps < 0 or restarts < 1 or eot_samples < 1 or alpha < 0:
            raise ValueError(f"need steps >= 0, restarts >= 1, eot_samples >= 1 and alpha >= 0; "
                             f"got steps={steps}, restarts={restarts}, "
                             f"eot_samples={eot_samples}, alpha={alpha}")
    x = x.detach()
    if eps == 0 or steps == 0 and not random_start:
        return x.clone()
    loss_fn = resolve_loss(loss)
    best, best_score = x.clone(), None
    with attack_mode(model):
        for _ in range(restarts):
            x_adv = x.clone()
            if random_start:
                noise = torch.empty_like(x).uniform_(-eps, eps, generator=generator)
                x_adv = (x + noise).clamp_(0.0, 1.0)
            for _ in range(steps):
                g = input_gradient(model, x_adv, y, loss_fn, eot_samples)
                x_adv = project(x_adv + alpha * g.sign(), x, eps)
            if restarts == 1:
                return x_adv
            with torch.no_grad():
                logits = model(x_adv)
                wrong = (logits.argmax(1) != y).float()
                lval = loss_fn(model, x_adv, y).float()   # rank restarts by the attack's own loss
                score = wrong * 1e6 + lval.clamp(-1e5, 1e5)
            if best_score is None:
                best, best_score = x_adv, score
            else:
                take = score > best_score
                best = torch.where(take[:, None, None, None], x_adv, best)
                best_score = torch.where(take, score, best_score)
    return best


def eot_pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float = PGD_EPS,
            alpha: float = PGD_ALPHA, steps: int = 100, eot_samples: int = 1, **kw) -> torch.Tensor:
    """PGD whose gradient is averaged over ``eot_samples`` passes (the paper's "adaptive" row).

    On a deterministic model EoT = 1 is plain PGD (PAPER-NOTES.md, error 4).
    """
    return pgd(model, x, y, eps, alpha, steps, eot_samples=eot_samples, **kw)


# ---------------------------------------------------------------- samplers --
def pick(values, generator: torch.Generator | None = None):
    """One value drawn uniformly from ``values`` with a (CPU) generator."""
    i = int(torch.randint(len(values), (1,), generator=generator))
    return values[i]


def sample_fgsm_eps(generator: torch.Generator | None = None) -> float:
    """Algorithms 1 and 3: an eps drawn uniformly from {0.01, ..., 0.09}."""
    return pick(FGSM_EPSILONS, generator)


def sample_pgd_steps(generator: torch.Generator | None = None) -> int:
    """Algorithms 2 and 3: a number of PGD iterations drawn from {10, ..., 50}."""
    return pick(PGD_STEPS, generator)


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
