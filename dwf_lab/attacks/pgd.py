"""FGSM (Eq. 3) and PGD (Eq. 4-5) in pixel space, with restarts and EoT, and the training draws.

- :func:`fgsm`: one signed-gradient step of size eps;
- :func:`pgd`: ``steps`` signed steps of size alpha, projected after each, from a random
  start in the ball (:func:`random_start_in_ball`); with restarts it keeps, per example,
  the worst case over restarts. :func:`pgd_iterates` is the one core every PGD runs;
  :func:`pgd_any_iterate` scores it at every point it visits;
- :func:`eot_pgd`: the gradient averaged over ``eot_samples`` passes (the paper's "adaptive" row);
- :func:`pgd_trajectory`: correctness after each step count of one run (PGD-k is the first
  k steps of PGD-50);
- :func:`sample_fgsm_eps` / :func:`sample_pgd_steps`: the randomized attack strengths of
  Algorithms 1-3, eps from {0.01, ..., 0.09} and steps from {10, ..., 50}.

Every attack keeps the conventions of :mod:`dwf_lab.attacks.base`.
"""
from typing import Callable, Union

import torch
import torch.nn as nn

from dwf_lab.attacks.base import (
    LossFn,
    attack_mode,
    check_counts,
    check_eps,
    check_inputs,
    input_gradient,
    project,
    resolve_loss,
)
from dwf_lab.core.config import FGSM_EPSILONS, PGD_ALPHA, PGD_EPS, PGD_STEPS


# ----------------------------------------------------------------- attacks --
def fgsm(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float,
         loss: Union[str, LossFn] = "ce", check: bool = True) -> torch.Tensor:
    """Eq. 3: x_adv = clip(x + eps * sign(grad_x L(f(x), y)), 0, 1).

    ``check=False`` skips :func:`~dwf_lab.attacks.base.check_inputs` (a caller that checked
    the whole data once already)."""
    if check:
        x = check_inputs(x, eps, model)
    if eps == 0:
        return x.detach().clone()
    with attack_mode(model):
        g = input_gradient(model, x, y, loss)
    return (x.detach() + eps * g.sign()).clamp_(0.0, 1.0)


def random_start_in_ball(x: torch.Tensor, eps: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """A point drawn uniformly in the eps-ball around x, clipped to [0, 1] (Madry et al.'s start)."""
    return (x + torch.empty_like(x).uniform_(-eps, eps, generator=generator)).clamp_(0.0, 1.0)


def pgd_iterates(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, alpha: float,
                 steps: int, random_start: bool = True, loss: Union[str, LossFn] = "ce",
                 eot_samples: int = 1, generator: torch.Generator | None = None,
                 start: torch.Tensor | None = None,
                 gradient: Callable[[torch.Tensor], torch.Tensor] | None = None):
    """The one PGD core (Eq. 4-5): yields x_adv after each of ``steps`` signed-gradient steps.

    The caller holds :func:`attack_mode` and has checked its inputs
    (:func:`~dwf_lab.attacks.base.check_inputs`): nothing is checked here, per step or at all.
    Every iterate lies in the eps-ball and [0, 1].
    ``start`` replaces the (random) starting point; ``gradient(x_adv)`` replaces the
    gradient of ``loss`` (the routing attack balances two; TRADES ascends a KL).
    """
    x = x.detach()
    if start is not None:
        x_adv = start
    else:
        x_adv = random_start_in_ball(x, eps, generator) if random_start and eps > 0 else x.clone()
    loss_fn = resolve_loss(loss)
    for _ in range(steps):
        g = gradient(x_adv) if gradient is not None else input_gradient(model, x_adv, y, loss_fn, eot_samples)
        x_adv = project(x_adv + alpha * g.sign(), x, eps)
        yield x_adv


def pgd_any_iterate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, alpha: float, steps: int,
                    gradient: Callable[[torch.Tensor], torch.Tensor], start: torch.Tensor,
                    judge: nn.Module | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(last iterate, per-example correctness at *every* point visited) of :func:`pgd_iterates`
    from ``start`` with the step direction ``gradient(x_adv)``.

    Every iterate lies in the eps-ball and [0, 1], so an image counts as broken if the start or
    any iterate fools ``judge`` (default ``model``): the score of an attack whose objective is not
    the classification itself (a routing term, a surrogate's gradient). The caller holds
    :func:`attack_mode` and has checked its inputs.
    """
    judge = model if judge is None else judge
    with torch.no_grad():
        correct = judge(start).argmax(1) == y
    x_adv = start
    for x_adv in pgd_iterates(model, x, y, eps, alpha, steps, start=start, gradient=gradient):
        with torch.no_grad():
            correct &= judge(x_adv).argmax(1) == y
    return x_adv, correct


def pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float = PGD_EPS,
        alpha: float = PGD_ALPHA, steps: int = 10, random_start: bool = True,
        restarts: int = 1, loss: Union[str, LossFn] = "ce", eot_samples: int = 1,
        generator: torch.Generator | None = None, check: bool = True) -> torch.Tensor:
    """Eq. 4-5: ``steps`` signed-gradient steps of size alpha, projected after each.

    ``random_start`` draws the start uniformly in the eps-ball (Madry et al.; the
    paper does not say: docs/paper-notes.md, gap 3). With ``restarts > 1`` each example
    keeps its worst case: a misclassifying restart if any, else the highest loss.
    ``eot_samples > 1`` averages the gradient over that many forward passes
    (Expectation over Transformation, for randomized models).
    """
    if check:
        x = check_inputs(x, eps, model)
        check_counts(steps=steps, restarts=restarts, eot_samples=eot_samples)
        if steps < 0 or restarts < 1 or eot_samples < 1 or not alpha >= 0:
            raise ValueError(f"need steps >= 0, restarts >= 1, eot_samples >= 1 and alpha >= 0; "
                             f"got steps={steps}, restarts={restarts}, "
                             f"eot_samples={eot_samples}, alpha={alpha}")
        check_eps(alpha, "alpha")
    x = x.detach()
    if eps == 0 or steps == 0 and not random_start:
        return x.clone()
    loss_fn = resolve_loss(loss)
    best, best_score = x.clone(), None
    with attack_mode(model):
        for _ in range(restarts):
            if steps == 0:   # random_start: the start itself
                x_adv = random_start_in_ball(x, eps, generator)
            for x_adv in pgd_iterates(model, x, y, eps, alpha, steps, random_start, loss_fn,
                                      eot_samples, generator):
                pass
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

    On a deterministic model EoT = 1 is plain PGD (docs/paper-notes.md, error 4).
    """
    return pgd(model, x, y, eps, alpha, steps, eot_samples=eot_samples, **kw)


def pgd_trajectory(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, alpha: float,
                   read_at: tuple[int, ...], random_start: bool = True,
                   generator: torch.Generator | None = None, check: bool = True) -> dict[int, torch.Tensor]:
    """Correctness (bool per example) after each number of PGD steps in ``read_at``: PGD-k from
    one random start is the first k steps of the longest run, so one trajectory serves them all.
    ``check=False`` skips the input checks (a caller that checked the whole data once)."""
    if check:
        x = check_inputs(x, eps, model, alpha=alpha)
        check_counts(**{f"read_at[{i}]": k for i, k in enumerate(read_at)})
        if not read_at or any(int(k) < 1 for k in read_at):
            raise ValueError(f"read_at must list step counts >= 1, got {tuple(read_at)}")
    out: dict[int, torch.Tensor] = {}
    with attack_mode(model):
        for step, x_adv in enumerate(pgd_iterates(model, x, y, eps, alpha, max(read_at), random_start,
                                                  generator=generator), 1):
            if step in read_at:
                with torch.no_grad():
                    out[step] = model(x_adv).argmax(1) == y
    return out


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
