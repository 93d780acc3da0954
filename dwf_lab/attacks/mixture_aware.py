"""Attacks that see a mixture's parts: its experts with the gate held fixed, the gate-weighted
experts' margins, a stronger routing attack, and the attacks made for SoE and ADVMoE.

A gate can mask gradients: the mixture's input gradient is sum_i w_i grad z_i + sum_i z_i grad w_i,
and when the second sum is useless (a gate computed through a non-differentiable or
high-frequency step, a saturated softmax) plain PGD on the mixture follows it nowhere, while the
experts underneath are as breakable as ever. Each attack here asks the model for its own parts
(:meth:`~dwf_lab.mixture.moe.MixtureOfExperts.forward_details`, ``log_weights``; SoE's experts and
selection modes; ADVMoE's router), never recomputes the gate, runs the one PGD core
(:func:`~dwf_lab.attacks.pgd.pgd_iterates`) and scores every point it visits in the eps-ball
(:func:`~dwf_lab.attacks.pgd.pgd_any_iterate`): an image is broken if any iterate fools the true model.

- :func:`fixed_gate_pgd`: forward the true mixture, backward with the gate's weights detached
  (the gradient of sum_i w_i(x) z_i(x) through the experts only);
- :func:`gated_margin_pgd`: maximise sum_i w_i(x) * margin_i(x), the CW margin
  (max_{j != y} z_ij - z_iy) of each expert weighted by the gate: every expert is pushed across
  its own decision boundary, the heavily weighted ones most;
- :func:`routing_restarts`: the routing attack with the DLR loss, a lambda that decays to 0 over
  the steps (steer the gate first, then attack the loss) and random restarts;
- :func:`soe_transfer`: PGD on each SoE expert alone and on SoE's soft selection, moved to SoE;
- :func:`route_fixed_pgd`: ADVMoE attacked with its route frozen at the clean image's selection,
  and with the router detached (the route follows the image, its gradient does not).
"""
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from dwf_lab.attacks.base import attack_mode, check_fits_model, check_inputs, resolve_loss
from dwf_lab.attacks.gate import routing_gradient
from dwf_lab.attacks.pgd import pgd_any_iterate, random_start_in_ball
from dwf_lab.mixture.advmoe import ADVMoE
from dwf_lab.mixture.moe import MixtureOfExperts
from dwf_lab.mixture.soe import SoE

MODEL_KINDS = ("plain", "mixture", "soe", "advmoe")


def model_kind(model: nn.Module) -> str:
    """Which attacks made for a model's parts apply to it: ``"mixture"`` (a gated or uniform
    :class:`MixtureOfExperts`), ``"soe"``, ``"advmoe"``, else ``"plain"`` (one network)."""
    for kind, cls in (("mixture", MixtureOfExperts), ("soe", SoE), ("advmoe", ADVMoE)):
        if isinstance(model, cls):
            return kind
    return "plain"


def margin_from_logits(z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """CW margin per example (and per expert for (B, n, C) logits): max_{j != y} z_j - z_y, to maximise
    (positive = misclassified)."""
    z = z.float()
    idx = y.view(-1, *([1] * (z.dim() - 1))).expand(*z.shape[:-1], 1)
    z_y = z.gather(-1, idx).squeeze(-1)
    other = z.scatter(-1, idx, float("-inf")).amax(-1)
    return other - z_y


def _start(x: torch.Tensor, eps: float, generator: torch.Generator | None) -> torch.Tensor:
    return random_start_in_ball(x, eps, generator) if eps > 0 else x.clone()


def _restarted(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, alpha: float, steps: int,
               restarts: int, make_gradient: Callable[[], Callable[[torch.Tensor], torch.Tensor]],
               generator: torch.Generator | None, judge: nn.Module | None = None) -> torch.Tensor:
    """Per-example correctness of ``judge`` (default ``model``) over ``restarts`` random starts of
    PGD-``steps`` along ``make_gradient()`` (a fresh direction per restart): broken if any point
    of any restart is misclassified."""
    judge = model if judge is None else judge
    x = check_inputs(x, eps, model, alpha=alpha).detach()
    check_fits_model(x, judge)
    correct = torch.ones(len(x), dtype=torch.bool, device=x.device)
    with attack_mode(model), attack_mode(judge):
        for _ in range(restarts):
            _, ok = pgd_any_iterate(model, x, y, eps, alpha, steps, make_gradient(), _start(x, eps, generator),
                                    judge)
            correct &= ok
    return correct


def _mixture(model: nn.Module) -> MixtureOfExperts:
    if not isinstance(model, MixtureOfExperts):
        raise TypeError(f"this attack needs a dwf_lab MixtureOfExperts, got {type(model).__name__}")
    return model


# ------------------------------------------------------------ gate held fixed --
def fixed_gate_gradient(model: MixtureOfExperts, y: torch.Tensor, loss: str = "ce") -> Callable:
    """grad_x loss(sum_i sg[w_i(x)] z_i(x), y): the mixture's own weights (``forward_details``),
    detached, so the value is the true mixture's and the gradient runs through the experts only."""
    base = resolve_loss(loss)
    held = _Detached(model)

    def gradient(x_adv: torch.Tensor) -> torch.Tensor:
        xg = x_adv.detach().requires_grad_(True)
        with torch.enable_grad():
            (g,) = torch.autograd.grad(base(held, xg, y).sum(), xg)
        return g
    return gradient


class _Detached(nn.Module):
    """The mixture's logits with its gate's weights detached (a view for a loss function, not a model
    of its own: it shares every module with ``mix``)."""

    def __init__(self, mix: MixtureOfExperts):
        super().__init__()
        self.__dict__["mix"] = mix     # not a submodule: attack_mode is held on the mixture

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.mix.forward_details(x)
        with torch.autocast(x.device.type, enabled=False):
            return torch.einsum("bn,bnc->bc", out.weights.detach().float(), out.expert_logits.float())


def fixed_gate_pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, alpha: float, steps: int,
                   restarts: int = 1, loss: str = "ce", generator: torch.Generator | None = None) -> torch.Tensor:
    """Per-example correctness under PGD whose backward holds the gate's weights fixed
    (:func:`fixed_gate_gradient`); every point visited is judged by the true mixture."""
    mix = _mixture(model)
    return _restarted(mix, x, y, eps, alpha, steps, restarts, lambda: fixed_gate_gradient(mix, y, loss), generator)


# ------------------------------------------------------- gate-weighted margins --
def gated_margin_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """sum_i w_i(x) * margin_i(x) per example, to maximise: the experts' CW margins
    (:func:`margin_from_logits`) weighted by the mixture's own gate weights (``forward_details``)."""
    out = _mixture(model).forward_details(x)
    return (out.weights.float() * margin_from_logits(out.expert_logits, y)).sum(1)


def gated_margin_pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, alpha: float, steps: int,
                     restarts: int = 1, generator: torch.Generator | None = None) -> torch.Tensor:
    """Per-example correctness under PGD on :func:`gated_margin_loss`, any iterate."""
    mix = _mixture(model)

    def make():
        def gradient(x_adv):
            xg = x_adv.detach().requires_grad_(True)
            with torch.enable_grad():
                (g,) = torch.autograd.grad(gated_margin_loss(mix, xg, y).sum(), xg)
            return g
        return gradient
    return _restarted(mix, x, y, eps, alpha, steps, restarts, make, generator)


# ------------------------------------------------------ routing, strengthened --
def lam_schedule(lam: float, steps: int) -> Callable[[int], float]:
    """lam at step t: linear from ``lam`` at the first step to 0 at the last (steer the gate, then
    attack the loss under the routing it reached)."""
    return lambda t: lam * max(0.0, 1.0 - t / max(1, steps - 1))


def routing_restarts(model: nn.Module, x: torch.Tensor, y: torch.Tensor, targets, lam: float, eps: float,
                     alpha: float, steps: int, restarts: int = 2, loss: str = "dlr",
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """Per-example correctness under the routing attack (:func:`~dwf_lab.attacks.gate.routing_gradient`)
    on ``loss`` (DLR: scale-free, so a soft mixture's flattened logits do not shrink its steps) with
    :func:`lam_schedule`, toward each of ``targets`` (expert indices or ``"weakest"``), ``restarts``
    random starts each; broken if any point of any run fools the mixture."""
    mix = _mixture(model)
    gated = mix.routing != "uniform" and mix.gate is not None
    correct = torch.ones(len(x), dtype=torch.bool, device=x.device)
    for t in targets:
        if t != "weakest" and not 0 <= int(t) < mix.n_experts:
            raise ValueError(f"routing target must be 'weakest' or in [0, {mix.n_experts - 1}], got {t!r}")
        target = (t if t == "weakest" else int(t)) if gated else None
        correct &= _restarted(mix, x, y, eps, alpha, steps, restarts,
                              lambda: routing_gradient(mix, y, target, lam_schedule(lam, steps), loss), generator)
    return correct


# ---------------------------------------------------------------------- SoE --
class _SoEPart(nn.Module):
    """One view of an SoE as a plain classifier: expert ``i``'s logits, or (``i`` None) the model
    under selection ``selection`` (its soft relaxation)."""

    def __init__(self, soe: SoE, i: int | None, selection: str = "soft"):
        super().__init__()
        self.__dict__["soe"] = soe
        self.i, self.selection = i, selection

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.i is not None:
            return self.soe.experts[self.i](x)[0]
        with self.soe.selection_mode(self.selection):
            return self.soe(x)


def soe_transfer(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, alpha: float, steps: int,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """Per-example correctness of SoE under PGD crafted on each expert alone and on its soft
    selection (a differentiable stand-in for the argmax), every point judged by SoE itself (its
    own hard selection); the BPDA mode is the evaluation's second gradient mode already."""
    if not isinstance(model, SoE):
        raise TypeError(f"soe_transfer needs an SoE, got {type(model).__name__}")
    sources = [_SoEPart(model, i) for i in range(model.n_experts)] + [_SoEPart(model, None, "soft")]
    correct = torch.ones(len(x), dtype=torch.bool, device=x.device)
    for src in sources:
        def make(src=src):
            def gradient(x_adv):
                xg = x_adv.detach().requires_grad_(True)
                with torch.enable_grad():
                    (g,) = torch.autograd.grad(F.cross_entropy(src(xg).float(), y, reduction="sum"), xg)
                return g
            return gradient
        with model.selection_mode("hard"):
            correct &= _restarted(model, x, y, eps, alpha, steps, 1, make, generator)
    return correct


# ------------------------------------------------------------------- ADVMoE --
def route_fixed_pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, alpha: float, steps: int,
                    generator: torch.Generator | None = None) -> torch.Tensor:
    """Per-example correctness of ADVMoE under PGD (cross-entropy) with (1) the route frozen at the
    clean image's selection (the router's output replaced by its clean scores during the attack's
    forward passes) and (2) the router detached (the route follows the image; its straight-through
    gradient is dropped). Every point is judged by the true model, route recomputed."""
    if not isinstance(model, ADVMoE):
        raise TypeError(f"route_fixed_pgd needs an ADVMoE, got {type(model).__name__}")
    x = check_inputs(x, eps, model, alpha=alpha).detach()
    with torch.no_grad(), attack_mode(model):
        clean_scores = model.router(model.normalize(x))
    frozen = [False]

    def hold(_mod, _inp, out):
        return clean_scores if frozen[0] and out.shape == clean_scores.shape else out

    def make(freeze: bool):
        def gradient(x_adv):
            xg = x_adv.detach().requires_grad_(True)
            frozen[0] = freeze
            try:
                with torch.enable_grad(), model.router_detached():
                    (g,) = torch.autograd.grad(F.cross_entropy(model(xg).float(), y, reduction="sum"), xg)
            finally:
                frozen[0] = False
            return g
        return gradient

    handle = model.router.register_forward_hook(hold)
    try:
        return (_restarted(model, x, y, eps, alpha, steps, 1, lambda: make(True), generator)
                & _restarted(model, x, y, eps, alpha, steps, 1, lambda: make(False), generator))
    finally:
        handle.remove()
