"""A certified lower bound, computed: interval bound propagation (IBP) on a small network.

Accuracy under an attack is an **upper** bound on the true robust accuracy; a certificate is a
**lower** one: a proof, image by image, that no point of the ε-ball changes the prediction.
Interval bound propagation (Gowal et al. 2018, *On the Effectiveness of Interval Bound
Propagation for Training Verifiably Robust Models*) is the simplest such proof: push the box
[x − ε, x + ε] ∩ [0, 1] through the network layer by layer, each layer's output box holding
every output any input of the box can produce:

- an affine layer (``Linear``, ``Conv2d``, the model's :class:`~dwf_lab.models.common.Normalize`)
  maps the box's centre c and radius r to W c + b and |W| r;
- a monotone activation (ReLU) maps the bounds themselves.

An image is **certified** when the lower bound of z_y − z_j is positive for every other class j
(the last layer is applied to the differences of its rows, which is tighter than subtracting two
boxes). Bounds through a ResNet-18 are far too loose to certify anything, so the lesson trains a
network small enough to bound, with the IBP loss (cross-entropy of the worst-case logits), in
seconds: :func:`train_ibp`. :func:`sandwich` then gives the three numbers of
"certified ≤ true robust ≤ attacked" on the same images, and checks the order holds image by
image (a certified image that PGD breaks would be a bug in the bound or in the attack).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from dwf_lab import attacks
from dwf_lab.models.common import Normalize, normalization_for

AFFINE = (nn.Linear, nn.Conv2d)
MONOTONE = (nn.ReLU,)


def small_net(dataset: str = "cifar10", in_channels: int = 3, image_size: int = 32, num_classes: int = 10,
              width: int = 16, hidden: int = 100) -> nn.Sequential:
    """A network IBP can bound: the dataset's normalisation, two stride-2 convolutions, two linear
    layers (the "small" model of Gowal et al. at a quarter of its width: ~0.2 M parameters on
    32×32 images)."""
    mean, std = normalization_for(dataset)
    side = image_size // 4
    return nn.Sequential(
        Normalize(mean, std),
        nn.Conv2d(in_channels, width, 4, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(width, 2 * width, 4, stride=2, padding=1), nn.ReLU(),
        nn.Flatten(),
        nn.Linear(2 * width * side * side, hidden), nn.ReLU(),
        nn.Linear(hidden, num_classes))


def _layers(net: nn.Module) -> list[nn.Module]:
    layers = list(net) if isinstance(net, nn.Sequential) else [net]
    for m in layers:
        if not isinstance(m, AFFINE + MONOTONE + (Normalize, nn.Flatten)):
            raise TypeError(f"interval bounds need an nn.Sequential of Normalize, Linear, Conv2d, ReLU and "
                            f"Flatten layers, got {type(m).__name__}")
    if not isinstance(layers[-1], nn.Linear):
        raise TypeError("the last layer must be an nn.Linear (its rows are differenced for the margin bound)")
    return layers


def _affine(m: nn.Module, centre: torch.Tensor, radius: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if isinstance(m, nn.Linear):
        return F.linear(centre, m.weight, m.bias), F.linear(radius, m.weight.abs())
    return (F.conv2d(centre, m.weight, m.bias, m.stride, m.padding, m.dilation, m.groups),
            F.conv2d(radius, m.weight.abs(), None, m.stride, m.padding, m.dilation, m.groups))


def interval_bounds(layers, lower: torch.Tensor, upper: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(lower, upper) bounds of ``layers``' output over every input of the box [lower, upper]."""
    for m in layers:
        if isinstance(m, Normalize):
            lower, upper = (lower - m.mean) / m.std, (upper - m.mean) / m.std   # std > 0: order kept
        elif isinstance(m, nn.Flatten):
            lower, upper = m(lower), m(upper)
        elif isinstance(m, MONOTONE):
            lower, upper = m(lower), m(upper)
        else:
            centre, radius = _affine(m, (upper + lower) / 2, (upper - lower) / 2)
            lower, upper = centre - radius, centre + radius
    return lower, upper


def input_box(x: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The L∞ ball of radius ``eps`` around the images x, intersected with the image box [0, 1]."""
    return (x - eps).clamp(0, 1), (x + eps).clamp(0, 1)


def margin_lower_bounds(net: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
    """(B, classes): a lower bound of z_y − z_j over the ε-ball, for every class j (0 at j = y).
    The last linear layer is applied to the differences of its rows (W_y − W_j) on the box of
    its input, which is tighter than the difference of two output boxes."""
    layers = _layers(net)
    lo, hi = interval_bounds(layers[:-1], *input_box(x, eps))
    last = layers[-1]
    w_diff = last.weight[y][:, None, :] - last.weight[None, :, :]           # (B, classes, features)
    b_diff = (last.bias[y][:, None] - last.bias[None, :]) if last.bias is not None else 0.0
    centre, radius = (hi + lo) / 2, (hi - lo) / 2
    return (w_diff * centre[:, None, :]).sum(-1) - (w_diff.abs() * radius[:, None, :]).sum(-1) + b_diff


@torch.no_grad()
def certified_mask(net: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
    """Per image: True when IBP proves that no point of the ε-ball (in [0, 1]) changes the prediction
    from y (so the image is also classified correctly)."""
    m = margin_lower_bounds(net, x, y, eps)
    others = torch.ones_like(m, dtype=torch.bool).scatter_(1, y[:, None], False)
    return torch.where(others, m, torch.full_like(m, math.inf)).amin(1) > 0


def ibp_loss(net: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, kappa: float) -> torch.Tensor:
    """κ · CE(clean logits) + (1 − κ) · CE(worst-case logits): the worst-case logit of class j is
    −(lower bound of z_y − z_j), the y entry 0 (Gowal et al.'s specification loss)."""
    clean = F.cross_entropy(net(x), y)
    if kappa >= 1:
        return clean
    worst = -margin_lower_bounds(net, x, y, eps)
    return kappa * clean + (1 - kappa) * F.cross_entropy(worst, y)


@dataclass
class IBPTraining:
    """What :func:`train_ibp` did: steps, epochs, seconds, the ε it certified for."""
    steps: int
    epochs: float
    seconds: float
    eps: float


def train_ibp(x: torch.Tensor, y: torch.Tensor, eps: float, dataset: str = "cifar10", epochs: int = 3,
              batch: int = 128, lr: float = 3e-3, seed: int = 0,
              net: nn.Module | None = None) -> tuple[nn.Module, IBPTraining]:
    """Train :func:`small_net` (or ``net``) with the IBP loss for ``epochs`` passes over (x, y),
    Gowal et al.'s schedule compressed: over the first half of the steps ε ramps from 0 to ``eps``
    and κ from 1 to 0.5, then both stay. Adam; a fixed number of steps (the same net on any
    machine, given the seed); returns the net in eval mode and what was done."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    if net is None:
        net = small_net(dataset, x.shape[1], x.shape[-1], int(y.max()) + 1)
    net = net.to(x.device).train()
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    n, t0 = len(x), time.time()
    per_epoch = max(1, math.ceil(n / batch))
    total = per_epoch * epochs
    step = 0
    for _ in range(epochs):
        order = torch.randperm(n, generator=gen).to(x.device)
        for i in range(per_epoch):
            ramp = min(1.0, step / max(1, total / 2))
            idx = order[i * batch:(i + 1) * batch]
            loss = ibp_loss(net, x[idx], y[idx], eps * ramp, 1.0 - 0.5 * ramp)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
    net.eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return net, IBPTraining(step, float(epochs), time.time() - t0, eps)


def sandwich(net: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, alpha: float | None = None,
             steps: int = 20, restarts: int = 1, seed: int = 0) -> dict:
    """The three numbers of "certified ≤ true robust ≤ attacked", in %, on the same images:
    ``clean``, ``attacked`` (PGD-``steps`` with ``restarts``: an upper bound) and ``certified``
    (IBP: a lower bound), with the per-image masks. Raises if an image is certified and yet broken
    (the order cannot fail: a failure is a bug)."""
    alpha = eps / 4 if alpha is None else alpha
    clean = attacks.correct_mask(net, x, y).cpu()
    x_adv = attacks.pgd(net, x, y, eps, alpha, steps, restarts=restarts,
                        generator=torch.Generator(x.device).manual_seed(seed))
    attacked = attacks.correct_mask(net, x_adv, y).cpu() & clean
    certified = certified_mask(net, x, y, eps).cpu()
    broken_yet_certified = int((certified & ~attacked).sum())
    if broken_yet_certified:
        raise RuntimeError(f"{broken_yet_certified} image(s) certified at eps={eps:g} and broken by PGD: "
                           "the bound or the attack is wrong")
    pct = {k: 100.0 * float(v.float().mean()) for k, v in
           (("clean", clean), ("attacked", attacked), ("certified", certified))}
    return {**pct, "n": len(x), "eps": eps, "masks": {"clean": clean, "attacked": attacked, "certified": certified},
            "attack": f"PGD-{steps}" + (f" x {restarts} restarts" if restarts > 1 else "")}


__all__ = ["IBPTraining", "certified_mask", "ibp_loss", "input_box", "interval_bounds", "margin_lower_bounds",
           "sandwich", "small_net", "train_ibp"]
