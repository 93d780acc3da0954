"""Attacks aimed at a mixture: through its gate, by transfer, and long PGD.

A gated mixture can look robust to the paper's PGD for reasons that have nothing to do
with robustness: the gate can route perturbed inputs to experts whose gradients are
uninformative, and the soft weighting can flatten the loss surface (Carlini et al. 2019;
Tramer et al. 2020, "On Adaptive Attacks to Adversarial Example Defenses"; the gate attack
of Bai et al., "Adaptive Smoothing"). The attacks that target exactly that:

- :func:`routing_loss`: CE(mixture) + lam * log w_target(x), raising the loss *and*
  pushing gate weight onto a chosen expert (by default expert 0, the benign one: the
  mixture is then only as robust as a standard network); :func:`routing_attack` is the
  balanced version the evaluation runs, toward the benign expert and toward whichever
  expert is weakest at the current point;
- :func:`transfer_attack`: PGD crafted on one expert, or on :func:`uniform_mixture`
  (the mixture without its gate), evaluated on the mixture;
- :func:`long_pgd`: many more steps and restarts, a convergence check.

:mod:`dwf_lab.evaluation.adaptive` combines them, per example, with the other attacks.
"""
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from dwf_lab.attacks.base import (
    LossFn,
    attack_mode,
    check_fits_model,
    check_inputs,
    correct_mask,
    keep_state,
    resolve_loss,
)
from dwf_lab.attacks.pgd import pgd, pgd_any_iterate, random_start_in_ball
from dwf_lab.core.config import PGD_ALPHA, PGD_EPS
from dwf_lab.mixture.moe import MixtureOfExperts


# ------------------------------------------------------------------ losses --
def is_mixture(model: nn.Module) -> bool:
    """A mixture of expert classifiers with a gate (or a uniform average): it gets the
    gate-aware and transfer attacks. SoE (hard selection, experts with an extra head) and
    ADVMoE (experts inside the layers) are attacked as single models."""
    return isinstance(model, MixtureOfExperts)


def log_gate_weights(model: nn.Module, x: torch.Tensor) -> torch.Tensor | None:
    """log w(x), (B, n), differentiable; None for a model without a gate. A :class:`MixtureOfExperts`
    answers itself (:meth:`~MixtureOfExperts.log_weights`: the routing forward uses)."""
    if isinstance(model, MixtureOfExperts):
        return None if model.routing == "uniform" or model.gate is None else model.log_weights(x)
    if hasattr(model, "forward_details"):
        out = model.forward_details(x)
        w = getattr(out, "weights", None)
        if w is not None:
            return w.float().clamp_min(1e-12).log()
    return None


def routing_loss(target_expert: int = 0, lam: float = 1.0, base: str | LossFn = "ce") -> LossFn:
    """loss(model, x, y) = base(mixture) + lam * log w_target(x), per example, to maximise.

    Raising the mixture's loss while pulling the gate toward ``target_expert``
    (default 0: the benign expert of a DWF run) -- the gate attack of Adaptive
    Smoothing. A model without a gate (a single network, a uniform average) gets
    the base loss alone, so the same attack runs on every row.
    """
    base_fn = resolve_loss(base)

    def loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        main, logw = base_fn(model, x, y), log_gate_weights(model, x)
        if logw is None:
            return main
        if not 0 <= target_expert < logw.shape[1]:
            raise ValueError(f"target_expert must be in [0, {logw.shape[1] - 1}], got {target_expert}")
        return main + lam * logw[:, target_expert]

    loss.target_expert = target_expert  # type: ignore[attr-defined]
    loss.lam = lam                      # type: ignore[attr-defined]
    return loss


def routing_pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, target_expert: int | str, lam: float,
                 eps: float, alpha: float, steps: int, random_start: bool,
                 generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(last iterate, per-example correctness at every iterate) of the balanced routing PGD."""
    x = check_inputs(x, eps, model, alpha=alpha).detach()
    gated = isinstance(model, MixtureOfExperts) and model.routing != "uniform" and model.gate is not None
    weakest = target_expert == "weakest"
    if gated and not weakest and not (isinstance(target_expert, int)
                                      and 0 <= target_expert < model.n_experts):
        raise ValueError(f"target_expert must be 'weakest' or in [0, {model.n_experts - 1}], "
                         f"got {target_expert!r}")
    gradient = routing_gradient(model, y, target_expert if gated else None, lambda t: lam)
    with attack_mode(model):
        start = random_start_in_ball(x, eps, generator) if random_start and eps > 0 else x.clone()
        return pgd_any_iterate(model, x, y, eps, alpha, steps, gradient, start)


def routing_gradient(model: nn.Module, y: torch.Tensor, target_expert: int | str | None,
                     lam_at: Callable[[int], float], base: str | LossFn = "ce") -> Callable[[torch.Tensor], torch.Tensor]:
    """The routing attack's step direction at x_adv: grad base + lam_t * grad log w_target, each
    normalised per example (mean absolute value), ``lam_t = lam_at(t)`` at the t-th call (a
    schedule). ``target_expert="weakest"`` picks, per example and step, the expert whose own
    cross-entropy is highest; None (a model without a gate): the base loss alone."""
    base_fn = resolve_loss(base)
    calls = [0]

    def gradient(x_adv: torch.Tensor) -> torch.Tensor:
        lam, calls[0] = lam_at(calls[0]), calls[0] + 1
        xg = x_adv.detach().requires_grad_(True)
        with torch.enable_grad():
            if target_expert == "weakest":   # per example, the expert that is most wrong right now
                with torch.no_grad():
                    z = model.forward_details(xg).expert_logits.float()
                    per = F.cross_entropy(z.flatten(0, 1), y.repeat_interleave(z.shape[1]),
                                          reduction="none").view(len(y), -1)
                    t = per.argmax(1, keepdim=True)
            elif target_expert is not None:
                t = torch.full((len(y), 1), int(target_expert), device=xg.device)
            (g,) = torch.autograd.grad(base_fn(model, xg, y).sum(), xg)
            if target_expert is not None and lam != 0:
                logw = model.log_weights(xg).gather(1, t).sum()
                (g_r,) = torch.autograd.grad(logw, xg)
                dims = tuple(range(1, xg.dim()))
                g = g / (g.abs().mean(dims, keepdim=True) + 1e-20) \
                    + lam * g_r / (g_r.abs().mean(dims, keepdim=True) + 1e-20)
        return g
    return gradient


def routing_attack(model: nn.Module, x: torch.Tensor, y: torch.Tensor, target_expert: int | str = 0,
                   lam: float = 1.0, eps: float = PGD_EPS, alpha: float = PGD_ALPHA,
                   steps: int = 20, random_start: bool = True,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """The routing attack of the evaluation: per-example correctness (False = broken).

    Like PGD on :func:`routing_loss`, with two safeguards. (1) The two goals are
    *balanced*: each term's input gradient is normalised per example (mean
    absolute value) before ``grad CE + lam * grad log w_target`` is formed, so
    ``lam`` is a true relative weight; with the plain sum, whichever term happens
    to have the larger scale decides the sign of every pixel step and the other
    is ignored. (2) Every iterate lies in the eps-ball, so an image counts as
    broken if *any* iterate is misclassified (steering the gate and raising the
    loss can pull in different directions). ``target_expert="weakest"`` re-picks
    the target at every step, per example: the expert whose own cross-entropy is
    highest at the current point. A model without a gate gets plain CE PGD with
    the same bookkeeping.
    """
    return routing_pgd(model, x, y, target_expert, lam, eps, alpha, steps, random_start, generator)[1]


def uniform_mixture(mix: nn.Module) -> MixtureOfExperts:
    """The mixture without its gate: the plain average of the same expert modules (shared, not copied).

    Building a :class:`MixtureOfExperts` touches its experts' mode and
    ``requires_grad``; both are put back, so ``mix`` is left exactly as it was.
    """
    experts = list(mix.experts)
    with keep_state(experts):
        uni = MixtureOfExperts(experts, None, routing="uniform")
    uni.training = False
    return uni


def expert_models(mix: nn.Module) -> list[nn.Module]:
    return list(mix.experts)


def transfer_attack(source_model: nn.Module, target_model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                    eps: float = PGD_EPS, alpha: float = PGD_ALPHA, steps: int = 20,
                    random_start: bool = True, restarts: int = 1, loss: str | LossFn = "ce",
                    generator: torch.Generator | None = None) -> torch.Tensor:
    """PGD crafted on ``source_model``, evaluated on ``target_model``: per-example correctness.

    A transfer (gray-box) attack never differentiates through the target, so if
    it beats white-box PGD on the target, the target's own gradients are
    misleading the white-box attack (gradient masking).
    """
    x = check_inputs(x, eps, source_model, alpha=alpha)
    check_fits_model(x, target_model)
    x_adv = pgd(source_model, x, y, eps, alpha, steps, random_start, restarts, loss=loss,
                        generator=generator, check=False)
    return correct_mask(target_model, x_adv, y)


def long_pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float = PGD_EPS,
             alpha: float = PGD_ALPHA, steps: int = 500, restarts: int = 5,
             loss: str | LossFn = "ce", generator: torch.Generator | None = None) -> torch.Tensor:
    """PGD-``steps`` with ``restarts`` random starts (per-example worst case): per-example correctness.

    A convergence check: if this is much lower than PGD-20, the short attack had
    not converged and the short numbers overstate robustness.
    """
    x_adv = pgd(model, x, y, eps, alpha, steps, True, restarts, loss=loss, generator=generator)
    return correct_mask(model, x_adv, y)
