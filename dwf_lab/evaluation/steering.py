"""Steering the gate: the gate-steering PGD and what it does as λ grows.

The attack climbs CE(mixture(x), y) + λ · log w_k(x): the mixture's loss, plus a term that pulls
the gate's weight onto expert k (the benign expert, k = 0, in a DWF run). λ = 0 is plain PGD.
:func:`gate_steering_pgd` is that attack, exactly :func:`dwf_lab.attacks.pgd` on
:func:`dwf_lab.attacks.gate.routing_loss` (what notebook 06's learner writes by hand);
:func:`steering_sweep` runs it over a grid of λ on a few images and keeps, per λ, the accuracy
under it and the gate's mean weight on every expert at the attacked images: the states of
notebook 06's λ slider, computed once (a plotly slider over them works without a kernel).

The evaluation's own routing attack (:func:`dwf_lab.attacks.gate.routing_attack`) balances the
two gradients and counts an image broken if any iterate fools the mixture; this plain version
keeps the last iterate, as the learner's does.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn

from dwf_lab import attacks
from dwf_lab.attacks.gate import routing_loss
from dwf_lab.mixture.moe import MixtureOfExperts


def gate_steering_pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, k: int, lam: float, eps: float,
                      alpha: float, steps: int, seed: int = 0) -> torch.Tensor:
    """PGD-``steps`` on CE(model(x), y) + λ · log w_k(x), from the random start of
    ``torch.Generator(x.device).manual_seed(seed)``; λ = 0 is plain PGD."""
    return attacks.pgd(model, x, y, eps, alpha, steps, loss=routing_loss(k, lam),
                       generator=torch.Generator(x.device).manual_seed(seed))


@torch.no_grad()
def _weights(mixture: MixtureOfExperts, x: torch.Tensor) -> list[float]:
    return [float(v) for v in mixture.log_weights(x).exp().mean(0)]


def steering_sweep(mixture: nn.Module, x: torch.Tensor, y: torch.Tensor, lams: Sequence[float], eps: float,
                   alpha: float, steps: int, k: int = 0, seed: int = 0) -> list[dict]:
    """One row for the clean images (``lam`` None) and one per λ of ``lams``: ``accuracy`` (%) under
    :func:`gate_steering_pgd` toward expert ``k``, ``weights`` (the gate's mean weight on each
    expert at the attacked images) and ``w_target`` (that of expert k)."""
    if not isinstance(mixture, MixtureOfExperts) or mixture.gate is None or mixture.routing == "uniform":
        raise TypeError("steering_sweep needs a gated dwf_lab MixtureOfExperts")
    if not 0 <= k < mixture.n_experts:
        raise ValueError(f"k must be an expert index in [0, {mixture.n_experts - 1}], got {k}")
    was = mixture.training
    mixture.eval()
    try:
        w = _weights(mixture, x)
        rows = [{"lam": None, "accuracy": 100.0 * attacks.accuracy(mixture, x, y), "weights": w, "w_target": w[k]}]
        for lam in lams:
            xa = gate_steering_pgd(mixture, x, y, k, float(lam), eps, alpha, steps, seed)
            w = _weights(mixture, xa)
            rows.append({"lam": float(lam), "accuracy": 100.0 * attacks.accuracy(mixture, xa, y), "weights": w,
                         "w_target": w[k]})
    finally:
        mixture.train(was)
    return rows


__all__ = ["gate_steering_pgd", "steering_sweep"]
