"""Metric keys, the per-example runner and the per-example worst case.

- :func:`eval_batches` / :func:`per_example`: the fixed test batches every evaluation uses,
  the model in eval mode, per-batch seeded generators, per-example correctness;
- :func:`over_gradient_modes`: a model with a non-differentiable step (SoE) evaluated
  under each of its gradient modes, correct only where correct under all;
- :func:`worst_case_keys` / :func:`worst_case`: the metrics sharing the L-inf threat model,
  and per example "correct under every one of them"; ``"worst-case"`` and
  ``"worst-case (all)"`` (:data:`DERIVED`) are derived, never attacks of their own;
- :func:`pack_bits` / :func:`unpack_bits`: per-example booleans as a compact hex string.
"""
from typing import Sequence

import numpy as np
import torch
import torch.nn as nn

from dwf_lab import attacks
from dwf_lab.attacks.base import check_batch_size
from dwf_lab.core.io import progress_bar
from dwf_lab.core.runtime import seed_from
from dwf_lab.evaluation.keys import DERIVED, WORST, parse  # noqa: F401 (WORST: re-exported)
from dwf_lab.evaluation.suite import attack_for_key


def batched(fn, x: torch.Tensor, y: torch.Tensor, batch_size: int) -> torch.Tensor:
    """``fn(xb, yb, b)`` over the batches of (x, y), concatenated (``b``, the batch index, seeds its draws)."""
    check_batch_size(batch_size)
    return torch.cat([fn(xb, yb, b) for b, xb, yb in eval_batches(x, y, batch_size, x.device)])


def accuracy_pct(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Top-1 accuracy in percent, model in eval mode (mode restored)."""
    return 100.0 * attacks.accuracy(model, x, y)


def eval_batches(x: torch.Tensor, y: torch.Tensor, batch_size: int, device):
    """Yields (batch index, xb, yb) on ``device``: the fixed test-set batches every evaluation uses."""
    check_batch_size(batch_size)
    for b in range((len(x) + batch_size - 1) // batch_size):
        sl = slice(b * batch_size, (b + 1) * batch_size)
        yield b, x[sl].to(device), y[sl].to(device)


def per_example(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int, device, seed: int,
                run_batch, desc: str = "evaluate", progress: bool = True) -> dict[str, torch.Tensor]:
    """``run_batch(b, xb, yb, gen)`` over the fixed test batches, the model in eval mode (its mode
    given back after): each metric's per-example correctness, concatenated on the CPU.

    ``gen(tag)`` is batch ``b``'s random generator for ``tag`` (seeded from ``seed``, ``b`` and
    ``tag``), so a batch's draws do not depend on which other attacks ran before it.
    """
    check_batch_size(batch_size)
    device = torch.device(device) if device is not None else next(model.parameters()).device
    was_training = model.training
    model.eval()
    per: dict[str, list[torch.Tensor]] = {}
    n_batches = (len(x) + batch_size - 1) // batch_size
    bar = progress_bar(total=n_batches, desc=desc, disable=not progress, leave=False)
    try:
        for b, xb, yb in eval_batches(x, y, batch_size, device):

            def gen(tag: int, b=b) -> torch.Generator:
                return torch.Generator(device).manual_seed(seed_from(seed, b, tag))

            for k, v in run_batch(b, xb, yb, gen).items():
                per.setdefault(k, []).append(v.cpu())
            bar.update(1)
    finally:
        bar.close()
        model.train(was_training)
    return {k: torch.cat(v) for k, v in per.items()}


def over_gradient_modes(model: nn.Module, evaluate_one,
                        modes=None) -> tuple[dict[str, torch.Tensor], dict]:
    """Evaluate a model whose forward pass has a non-differentiable step under each gradient an
    attacker could use, keeping per example the worst outcome.

    ``modes`` (default ``model.gradient_modes``) names the modes (SoE: ``("hard", "bpda")``,
    its own gradient and the BPDA relaxation's) and ``model.selection_mode(mode)`` switches to one.
    ``evaluate_one(mode)`` returns ``(correct, extra)``: per-example correctness per metric
    and anything to keep per mode. An example counts as correct only if it is correct in
    every mode. Returns ``(combined correct, {mode: extra})``.
    """
    combined: dict[str, torch.Tensor] | None = None
    per_mode = {}
    for mode in (model.gradient_modes if modes is None else modes):
        with model.selection_mode(mode):
            correct, per_mode[mode] = evaluate_one(mode)
        combined = dict(correct) if combined is None else {k: combined[k] & correct[k] for k in combined}
    if combined is None:
        raise ValueError(f"no gradient mode to evaluate {type(model).__name__} with: name at least one")
    return combined, per_mode


def worst_case_keys(keys, eps: float) -> list[str]:
    """The metrics that share the L-inf threat model ||delta|| <= eps, for a per-example worst case.

    Drops derived worst cases, FGSM columns whose eps exceeds ``eps`` (a larger ball is another
    threat model; every other attack here is run at ``eps``) and registered attacks that say they
    stay out of the worst case (:attr:`dwf_lab.evaluation.suite.AdaptiveAttack.worst_case`).
    """
    out = []
    for k in map(parse, keys):
        if k.derived or (k.attack == "fgsm" and k.eps > eps + 1e-9):
            continue
        a = attack_for_key(k.text)
        if a is not None and not a.worst_case:
            continue
        out.append(k.text)
    return out


def pack_bits(correct: torch.Tensor) -> str:
    """Per-example booleans as a compact hex string (first example = most significant bit)."""
    return np.packbits(correct.numpy().astype(np.uint8)).tobytes().hex()


def unpack_bits(hexstr: str, n: int) -> torch.Tensor:
    bits = np.unpackbits(np.frombuffer(bytes.fromhex(hexstr), dtype=np.uint8))[:n]
    return torch.from_numpy(bits.astype(bool))


def worst_case(correct: dict[str, torch.Tensor], eps: float,
               keys: Sequence[str] | None = None) -> torch.Tensor:
    """Per example: correct under every listed metric (default: every attack inside the L-inf
    ball of radius ``eps``, see :func:`worst_case_keys`; FGSM at a larger eps is left out)."""
    keys = [k for k in (keys if keys is not None else worst_case_keys(correct, eps)) if k not in DERIVED]
    if not keys:
        raise ValueError("no metrics to take a worst case over")
    return torch.stack([correct[k].bool().cpu() for k in keys]).all(0)
