"""Two pictures of what an attack sees: the loss along a direction, and the input gradient.

- :func:`loss_along` / :func:`loss_landscape`: the mean cross-entropy at x + r · d for radii r
  (pixel units) along two directions per image: the **sign of the input gradient** (the
  direction FGSM steps in) and a **random sign** direction (a corner of the ε-ball drawn
  uniformly). On a standard network the loss climbs far faster along the gradient's sign; on an
  adversarially trained one it climbs slowly along both (a flat, nearly linear landscape); on a
  network whose gradient is *masked* the gradient's direction is uninformative, and the loss can
  climb faster along a random one — the picture of Athalye et al.'s vanishing gradients.
  :func:`landscape_rise` reads one number per curve: how much the loss rose by radius ε.
- :func:`input_gradients` / :func:`gradient_picture` / :func:`edge_alignment`: ∇ₓ ℓ per image, as
  a picture (grey = 0), and one number per image: the correlation between the gradient's
  magnitude and the image's edges (a Sobel filter on the grey image). A standard network's
  gradient looks like noise (low alignment); an adversarially trained one's follows the object's
  edges (higher alignment): Tsipras et al. 2019, *Robustness May Be at Odds with Accuracy*.

Every computation runs the model in eval mode with its parameters' gradients off
(:func:`dwf_lab.attacks.attack_mode`), on images in [0, 1] (pixel units, as every attack here).
"""
from __future__ import annotations

import copy
from typing import Mapping, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from dwf_lab import attacks

DIRECTIONS = ("sign-gradient", "random")


def random_sign_direction(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """A direction of ±1 per pixel, each sign drawn with probability 1/2: a random corner of the
    L∞ ball (the same size as the sign of a gradient)."""
    r = torch.randint(0, 2, x.shape, generator=generator, device="cpu").to(x.device, x.dtype)
    return 2 * r - 1


def sign_gradient_direction(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """sign(∇ₓ CE) per pixel at x: the direction of FGSM (0 where the gradient is exactly 0)."""
    with attacks.attack_mode(model):
        return attacks.input_gradient(model, x, y).sign()


@torch.no_grad()
def loss_along(model: nn.Module, x: torch.Tensor, y: torch.Tensor, direction: torch.Tensor,
               radii: Sequence[float]) -> list[float]:
    """Mean cross-entropy over the images at clip(x + r · direction, 0, 1), for each radius r."""
    was = model.training
    model.eval()
    try:
        return [float(F.cross_entropy(model((x + r * direction).clamp(0, 1)).float(), y)) for r in radii]
    finally:
        model.train(was)


def loss_landscape(models: Mapping[str, nn.Module], x: torch.Tensor, y: torch.Tensor, radii: Sequence[float],
                   seed: int = 0) -> dict[str, dict[str, list[float]]]:
    """``{model: {"sign-gradient": losses, "random": losses}}`` along :data:`DIRECTIONS`, one loss per
    radius (the same random direction for every model, from ``seed``)."""
    x = attacks.check_inputs(x).detach()
    rand = random_sign_direction(x, torch.Generator().manual_seed(seed))
    out = {}
    for name, model in models.items():
        out[name] = {"sign-gradient": loss_along(model, x, y, sign_gradient_direction(model, x, y), radii),
                     "random": loss_along(model, x, y, rand, radii)}
    return out


def landscape_rise(landscape: Mapping[str, Mapping[str, Sequence[float]]], radii: Sequence[float],
                   eps: float) -> dict[str, dict[str, float]]:
    """How much the mean loss rose from r = 0 to the radius nearest ``eps``, per model and direction,
    and ``ratio``: the rise along the gradient's sign over the rise along the random direction
    (≫ 1 for a gradient that points uphill; ≤ 1 for a masked or uninformative one; infinite when
    only the gradient's direction climbs)."""
    i = min(range(len(radii)), key=lambda j: abs(radii[j] - eps))
    out = {}
    for name, curves in landscape.items():
        rise = {d: float(curves[d][i] - curves[d][0]) for d in DIRECTIONS}
        g, r = rise["sign-gradient"], rise["random"]
        rise["ratio"] = g / r if r > 1e-9 else (float("inf") if g > 1e-9 else 0.0)
        out[name] = rise
    return out


def gradient_masked(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with the same predictions and no gradient (its logits z become
    ``z * 0 + z.detach()``): the simplest masked model, for showing what masking looks like."""
    masked = copy.deepcopy(model).eval()
    masked.register_forward_hook(lambda module, inputs, z: z * 0 + z.detach())
    return masked


# ------------------------------------------------------------ input gradients --
def input_gradients(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """∇ₓ CE(model(x), y) per image (B, C, H, W), the model in eval mode."""
    x = attacks.check_inputs(x).detach()
    with attacks.attack_mode(model):
        return attacks.input_gradient(model, x, y)


def gradient_picture(g: torch.Tensor, clip: float = 3.0) -> torch.Tensor:
    """Gradients as images in [0, 1]: 0.5 + g / (2 · clip · std), per image (grey = 0; a pixel
    ``clip`` standard deviations out is black or white)."""
    std = g.flatten(1).std(1).clamp_min(1e-12).view(-1, *([1] * (g.dim() - 1)))
    return (0.5 + g / (2 * clip * std)).clamp(0, 1)


SOBEL = torch.tensor([[1.0, 0.0, -1.0], [2.0, 0.0, -2.0], [1.0, 0.0, -1.0]])


def edges(x: torch.Tensor) -> torch.Tensor:
    """Edge magnitude (B, H, W) of the grey images: the length of the Sobel gradient."""
    grey = x.mean(1, keepdim=True)
    kx = SOBEL.to(x)[None, None]
    gx = F.conv2d(grey, kx, padding=1)
    gy = F.conv2d(grey, kx.transpose(-1, -2), padding=1)
    return (gx ** 2 + gy ** 2).sqrt()[:, 0]


def edge_alignment(g: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Per image, the Pearson correlation (−1 … 1) between the gradient's magnitude per pixel
    (summed over channels) and the image's edge magnitude (:func:`edges`); the border pixels,
    where the filter sees padding, are left out."""
    mag = g.abs().sum(1)[:, 1:-1, 1:-1].flatten(1)
    e = edges(x)[:, 1:-1, 1:-1].flatten(1)
    mag = mag - mag.mean(1, keepdim=True)
    e = e - e.mean(1, keepdim=True)
    den = (mag.norm(dim=1) * e.norm(dim=1)).clamp_min(1e-12)
    return (mag * e).sum(1) / den


def gradient_study(models: Mapping[str, nn.Module], x: torch.Tensor, y: torch.Tensor) -> dict[str, dict]:
    """``{model: {"pictures": (B, C, H, W) in [0, 1], "alignment": mean edge alignment,
    "per_image": alignment per image}}`` for every model, on the same images."""
    out = {}
    for name, model in models.items():
        g = input_gradients(model, x, y)
        a = edge_alignment(g, x)
        out[name] = {"pictures": gradient_picture(g).cpu(), "alignment": float(a.mean()), "per_image": a.cpu()}
    return out


__all__ = ["DIRECTIONS", "edge_alignment", "edges", "gradient_masked", "gradient_picture", "gradient_study",
           "input_gradients", "landscape_rise", "loss_along", "loss_landscape", "random_sign_direction",
           "sign_gradient_direction"]
