"""PGD with one bug at a time: what each does to the numbers an evaluation reports.

The course's PGD (notebook 00, :func:`dwf_lab.attacks.pgd`) follows Eq. 4-5 with the kit's
conventions. Three ways of getting it wrong are common in published code, and each leaves a
fingerprint in a table of results (notebook 08 compares them with the paper's Tables 2-3):

- ``"gradient_at_x"``: the gradient taken at the clean image x at every step, as the paper's
  printed Eq. 4 has it. Every step then moves in the same direction: after ε/α steps the iterate
  sits on the corner x + ε · sign(∇ₓℓ(x)) — **FGSM at ε** — and more steps change nothing (a flat
  PGD-k curve);
- ``"normalized_eps"``: ε and α applied to the *normalized* input (x − μ)/σ, so in pixels the
  ball is ε·σ per channel, about a quarter of 8/255 on CIFAR-10 (σ ≈ 0.25): a smaller threat
  model than the table claims;
- ``"bn_train"``: the attack run with the model in train mode, so BatchNorm normalises with each
  batch's own statistics (and updates its running ones): the images are crafted against a
  different function than the one that is then judged in eval mode.

:func:`pgd_with_bug` runs the loop with one bug (``"none"``: the correct loop, identical to
:func:`dwf_lab.attacks.pgd` from the same generator) and reads the accuracy after each step count
of ``read_at``; :func:`bug_table` does it for several models beside FGSM at the paper's 0.03.
Only a copy of a model ever runs in train mode: the models given are never changed.
"""
from __future__ import annotations

import copy
from typing import Mapping, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from dwf_lab import attacks
from dwf_lab.models.common import Normalize

BUGS = {
    "none": "the loop as written in notebook 00 (Eq. 4-5, gradient at the iterate, eval mode, pixel ε)",
    "gradient_at_x": "the gradient taken at x at every step (the paper's printed Eq. 4)",
    "normalized_eps": "ε and α applied to normalized inputs (ε·σ per channel in pixels)",
    "bn_train": "the attack run in train mode (BatchNorm on the batch's statistics)",
}


def channel_std(model: nn.Module) -> torch.Tensor:
    """σ per channel of the model's own normalisation (its first :class:`Normalize`)."""
    for m in model.modules():
        if isinstance(m, Normalize):
            return m.std.detach().flatten()
    raise ValueError("the model has no Normalize layer: its inputs are not normalized inside it")


def _gradient(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """∇ₓ of the summed cross-entropy, in whatever mode ``model`` is in."""
    xg = x.detach().requires_grad_(True)
    with torch.enable_grad():
        (g,) = torch.autograd.grad(F.cross_entropy(model(xg).float(), y, reduction="sum"), xg)
    return g


def pgd_with_bug(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, alpha: float, steps: int,
                 bug: str = "none", read_at: Sequence[int] | None = None,
                 generator: torch.Generator | None = None, return_images: bool = False) -> dict:
    """PGD-``steps`` from a random start, with ``bug`` (a key of :data:`BUGS`): ``{k: correct}``,
    the per-image correctness (judged by ``model`` in eval mode) after each k in ``read_at``
    (default: the last step only); with ``return_images``, also ``"images"``: the last iterate."""
    if bug not in BUGS:
        raise ValueError(f"bug must be one of {sorted(BUGS)}, got {bug!r}")
    read_at = tuple(read_at or (steps,))
    if not read_at or min(read_at) < 1 or max(read_at) > steps:
        raise ValueError(f"read_at must list step counts in 1..{steps}, got {read_at}")
    x = attacks.check_inputs(x, eps, model).detach()
    if bug == "normalized_eps":
        sigma = channel_std(model).to(x).view(1, -1, 1, 1)
        e, a = eps * sigma, alpha * sigma
        x_adv = (x + torch.empty_like(x).uniform_(-1, 1, generator=generator) * e).clamp(0, 1)
    else:
        e, a = eps, alpha
        x_adv = attacks.random_start_in_ball(x, eps, generator)
    out: dict = {}
    attacker = copy.deepcopy(model).train() if bug == "bn_train" else model
    with attacks.attack_mode(model):
        g_x = _gradient(model, x, y) if bug == "gradient_at_x" else None
        for k in range(1, steps + 1):
            g = g_x if g_x is not None else _gradient(attacker, x_adv, y)
            x_adv = torch.min(torch.max(x_adv + a * g.sign(), x - e), x + e).clamp(0, 1)
            if k in read_at:
                out[k] = attacks.correct_mask(model, x_adv, y).cpu()
    if return_images:
        out["images"] = x_adv
    return out


def bug_table(models: Mapping[str, nn.Module], x: torch.Tensor, y: torch.Tensor, eps: float, alpha: float,
              read_at: Sequence[int] = (1, 10, 20), fgsm_eps: float = 0.03, seed: int = 0,
              bugs: Sequence[str] = tuple(BUGS)) -> list[dict]:
    """One row per model and bug: accuracy (%) clean, under FGSM at ``fgsm_eps`` and at ``eps``,
    and under the PGD with that bug after each step count of ``read_at`` (every PGD from the
    random start of ``torch.Generator().manual_seed(seed)``), plus ``same_as_fgsm``: the share of
    images on which the last PGD's verdict equals FGSM at ``eps``'s."""
    rows = []
    for name, model in models.items():
        clean = attacks.correct_mask(model, x, y).cpu()
        fgsm_small = attacks.correct_mask(model, attacks.fgsm(model, x, y, fgsm_eps), y).cpu()
        fgsm_eps_ok = attacks.correct_mask(model, attacks.fgsm(model, x, y, eps), y).cpu()
        for bug in bugs:
            res = pgd_with_bug(model, x, y, eps, alpha, max(read_at), bug, read_at,
                               torch.Generator(x.device).manual_seed(seed))
            row = {"model": name, "bug": bug, "clean": 100 * float(clean.float().mean()),
                   f"FGSM {fgsm_eps:g}": 100 * float(fgsm_small.float().mean()),
                   f"FGSM {eps * 255:.0f}/255": 100 * float(fgsm_eps_ok.float().mean())}
            row.update({f"PGD-{k}": 100 * float(res[k].float().mean()) for k in read_at})
            row["same_as_fgsm"] = 100 * float((res[max(read_at)] == fgsm_eps_ok).float().mean())
            rows.append(row)
    return rows


__all__ = ["BUGS", "bug_table", "channel_std", "pgd_with_bug"]
