"""Attacks beyond the paper, run as one evaluation with the per-example worst case over all of them.

The paper's strongest attack is PGD-100 on the mixture's cross-entropy (its "adaptive" row is the
same attack with EoT = 1: docs/paper-notes.md, error 4). A gated mixture can look robust to it for
reasons that have nothing to do with robustness: the gate can route perturbed inputs to experts
with uninformative gradients, the soft weighting can flatten the loss, and one loss can be a poor
objective (Carlini et al. 2019; Tramer et al. 2020; the gate attack of Bai et al., "Adaptive
Smoothing"). :func:`evaluate_adaptive` runs, at :class:`AdaptiveSettings` budgets, PGD with CE
and DLR losses, the gate-aware routing and transfer attacks (:mod:`dwf_lab.attacks.gate`; mixtures
only), long PGD with restarts, AutoAttack and Square (:mod:`dwf_lab.attacks.art_suite`), and the
per-example worst case: an attacker may pick, for each image, whichever attack works.

Metric keys (accuracy in percent, :meth:`AdaptiveSettings.metric_names`): ``"SA"``, ``"pgd-<k>"``
(PGD-k, CE), ``"pgd-dlr"``, ``"routing"`` and ``"transfer-best"`` (mixtures only),
``"pgd-<L>x<R>"`` (L steps, R restarts), ``"autoattack"``, ``"square"``, ``"worst-case (all)"``.
"""
import time
from dataclasses import dataclass
from typing import Callable, ClassVar, Sequence

import torch
import torch.nn as nn

from dwf_lab import attacks
from dwf_lab.attacks import art_suite
from dwf_lab.attacks.base import check_batch_size, correct_mask
from dwf_lab.attacks.gate import (
    expert_models,
    is_mixture,
    long_pgd,
    routing_attack,
    routing_pgd,
    transfer_attack,
    uniform_mixture,
)
from dwf_lab.core.config import SizedSettings
from dwf_lab.core.runtime import seed_from
from dwf_lab.evaluation.diagnostics import gate_weights
from dwf_lab.evaluation.metrics import WORST, over_gradient_modes, per_example, worst_case
from dwf_lab.mixture.moe import MixtureOfExperts, gate_entropy


# ---------------------------------------------------------------- settings --
@dataclass
class AdaptiveSettings(SizedSettings):
    """What :func:`evaluate_adaptive` runs, and how hard. Sizes: :meth:`smoke`, :meth:`laptop`, :meth:`paper`."""
    eps: float = attacks.PGD_EPS
    alpha: float = attacks.PGD_ALPHA
    pgd_steps: int = 20                  # "pgd-<k>", "pgd-dlr", "routing", transfers
    random_start: bool = True
    dlr: bool = True
    routing: bool = True                 # mixtures only
    routing_targets: tuple | None = (0, "weakest")   # experts to push weight onto; None = each + weakest
    routing_lam: float = 1.0
    transfer: bool = True                # mixtures only: from each expert and the uniform average
    long_steps: int = 500
    long_restarts: int = 5
    autoattack: bool = True
    aa_version: str = "standard"
    aa_iter: int = 100
    aa_queries: int = 5000
    aa_targets: int = 9
    square: bool = True
    square_queries: int = 5000
    batch_size: int = 500
    name: str = "paper"
    SIZES: ClassVar[dict[str, dict]] = {
        "paper": {},   # PGD-20, PGD-500 x 5, AutoAttack (100 iterations, 9 targets, 5,000 queries)
        "laptop": dict(long_steps=100, long_restarts=2, aa_iter=50, aa_queries=500, aa_targets=3,
                       square_queries=500, name="laptop"),
        "smoke": dict(pgd_steps=5, long_steps=6, long_restarts=2, aa_iter=5, aa_queries=10, aa_targets=1,
                      square_queries=10, batch_size=256, name="smoke")}

    # ---- metric keys
    @property
    def pgd_key(self) -> str:
        return f"pgd-{self.pgd_steps}"

    @property
    def long_key(self) -> str:
        return f"pgd-{self.long_steps}x{self.long_restarts}"

    def attack_names(self, mixture: bool) -> list[str]:
        """The attack metric keys for a model (mixtures get the gate-aware ones too)."""
        names = [self.pgd_key]
        if self.dlr:
            names.append("pgd-dlr")
        if mixture and self.routing:
            names.append("routing")
        if mixture and self.transfer:
            names.append("transfer-best")
        if self.long_steps > 0 and self.long_restarts > 0:
            names.append(self.long_key)
        if self.autoattack:
            names.append("autoattack")
        if self.square:
            names.append("square")
        return names

    def metric_names(self, mixture: bool) -> list[str]:
        return ["SA"] + self.attack_names(mixture) + [WORST]



# -------------------------------------------------------------- evaluation --
def _run_batch(model: nn.Module, xb: torch.Tensor, yb: torch.Tensor, s: AdaptiveSettings, want: set,
               gen: Callable[[int], torch.Generator], aa_seed: int, timings: dict, aa_left: dict) -> dict:
    """One batch of every attack in ``want``: per-example correctness per key. Adds each attack's
    seconds to ``timings`` and, per AutoAttack stage, the images still correct to ``aa_left``."""
    res: dict[str, torch.Tensor] = {}

    def timed(key: str, fn):
        t0 = time.time()
        res[key] = fn().cpu()
        timings[key] = timings.get(key, 0.0) + time.time() - t0

    def pgdcorrect_mask(loss, steps, tag):
        xa = attacks.pgd(model, xb, yb, s.eps, s.alpha, steps, s.random_start, loss=loss,
                         generator=gen(tag), check=False)
        return correct_mask(model, xa, yb)

    timed("SA", lambda: correct_mask(model, xb, yb))
    if s.pgd_key in want:
        timed(s.pgd_key, lambda: pgdcorrect_mask("ce", s.pgd_steps, 11))
    if "pgd-dlr" in want:
        timed("pgd-dlr", lambda: pgdcorrect_mask("dlr", s.pgd_steps, 12))
    if "routing" in want:
        def routing():
            n = model.n_experts if hasattr(model, "n_experts") else len(model.experts)
            targets = [*range(n), "weakest"] if s.routing_targets is None else list(s.routing_targets)
            targets = [t for t in targets if t == "weakest" or int(t) < n]
            outs = [routing_attack(model, xb, yb, t if t == "weakest" else int(t), s.routing_lam, s.eps,
                                   s.alpha, s.pgd_steps, s.random_start,
                                   generator=gen(100 + (n if t == "weakest" else int(t))))
                    for t in targets]
            return torch.stack(outs).all(0)
        timed("routing", routing)
    if "transfer-best" in want:
        def transfer():
            sources = expert_models(model) + [uniform_mixture(model)]
            outs = [transfer_attack(src, model, xb, yb, s.eps, s.alpha, s.pgd_steps, s.random_start,
                                    generator=gen(200 + i)) for i, src in enumerate(sources)]
            return torch.stack(outs).all(0)
        timed("transfer-best", transfer)
    if s.long_key in want:
        timed(s.long_key, lambda: long_pgd(model, xb, yb, s.eps, s.alpha, s.long_steps, s.long_restarts,
                                           generator=gen(13)))
    if "autoattack" in want or "square" in want:
        if "autoattack" in want:
            def autoattack():
                ok, details = art_suite.autoattack(model, xb, yb, s.eps, version=s.aa_version, n_iter=s.aa_iter,
                                            n_queries=s.aa_queries, n_target_classes=s.aa_targets,
                                            batch_size=s.batch_size, seed=aa_seed, return_details=True)
                for k, v in details.items():
                    if k == "clean" or k.startswith("after "):
                        aa_left[k] = aa_left.get(k, 0) + round(v * details["n"] / 100)
                return ok
            timed("autoattack", autoattack)
        if "square" in want:
            timed("square", lambda: art_suite.square(model, xb, yb, s.eps, max_iter=s.square_queries,
                                              batch_size=s.batch_size, seed=aa_seed + 1))
    return res


def _evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, s: AdaptiveSettings, seed: int,
              device, progress: bool, skip: Sequence[str], desc: str):
    x = attacks.check_inputs(x, s.eps, model, alpha=s.alpha)   # once, on the whole data
    check_batch_size(s.batch_size)
    mixture = is_mixture(model)
    want = set(s.attack_names(mixture)) - set(skip)
    timings: dict[str, float] = {}
    aa_left: dict[str, int] = {}
    correct = per_example(model, x, y, s.batch_size, device, seed,
                          lambda b, xb, yb, gen: _run_batch(model, xb, yb, s, want, gen,
                                                            seed_from(seed, b, 99) % (2 ** 31), timings,
                                                            aa_left),
                          desc, progress)
    order = [k for k in s.metric_names(mixture) if k in correct]
    correct = {k: correct[k] for k in order}
    correct[WORST] = worst_case(correct, s.eps)
    metrics = {k: 100.0 * v.float().mean().item() for k, v in correct.items()}
    info: dict = {"elapsed_s": {k: round(v, 2) for k, v in timings.items()}}
    if aa_left:     # robust accuracy (%) after each stage of the AutoAttack cascade
        info["autoattack_stages"] = {k: round(100.0 * v / max(1, len(x)), 2) for k, v in aa_left.items()}
    return metrics, correct, info


def evaluate_adaptive(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                      settings: AdaptiveSettings | None = None, *, seed: int = 0, device=None,
                      progress: bool = True, skip: Sequence[str] = (),
                      desc: str = "adaptive attacks") -> tuple[dict, dict]:
    """Run every adaptive attack; returns (metrics in percent, per-example correctness per metric).

    ``"worst-case (all)"`` is the per-example worst case over clean accuracy and
    every attack that ran. ``skip`` leaves out attack keys (e.g. ones already
    stored). Accuracies are over the same images, in fp32, model in eval mode.
    """
    metrics, correct, _ = _evaluate(model, x, y, settings or AdaptiveSettings(), seed, device,
                                    progress, skip, desc)
    return metrics, correct


def evaluate_any(model: nn.Module, x, y, s: AdaptiveSettings, seed: int, dev, progress: bool,
                  skip: Sequence[str], desc: str):
    """:func:`_evaluate`, and for models with a hard selection (SoE) once per gradient mode --
    its own gradient and the BPDA relaxation's -- keeping, per example, the worse outcome."""
    if not getattr(model, "gradient_modes", None):
        return _evaluate(model, x, y, s, seed, dev, progress, skip, desc)

    def one(mode):
        _, c, info = _evaluate(model, x, y, s, seed, dev, progress, skip, f"{desc} ({mode})")
        return c, info
    combined, per_mode = over_gradient_modes(model, one)
    info: dict = {"elapsed_s": {f"{k} ({mode})": v for mode, i in per_mode.items()
                                for k, v in i["elapsed_s"].items()}}
    stages = {mode: i["autoattack_stages"] for mode, i in per_mode.items() if "autoattack_stages" in i}
    if stages:
        info["autoattack_stages"] = stages
    combined[WORST] = worst_case({k: v for k, v in combined.items() if k != WORST}, s.eps)
    return {k: 100.0 * v.float().mean().item() for k, v in combined.items()}, combined, info


def _gate_stats(model, x):
    w = gate_weights(model, x)
    return w, gate_entropy(w)


def routing_sweep(mix: nn.Module, x: torch.Tensor, y: torch.Tensor, target_expert: int = 0,
                  lams: Sequence[float] = (0.0, 1.0, 5.0), settings: AdaptiveSettings | None = None,
                  seed: int = 0) -> list[dict]:
    """The routing attack (:func:`routing_attack`) at several lam, beside clean inputs.

    lam = 0 is plain PGD on the mixture's cross-entropy. Rows: ``{"inputs", "accuracy",
    "weight on target", "gate entropy"}``: accuracy in percent (an image counts as broken
    if any iterate fooled the model), gate statistics at the last iterate.
    """
    s = settings or AdaptiveSettings()
    if not isinstance(mix, MixtureOfExperts) or mix.gate is None:
        raise TypeError("routing_sweep needs a gated dwf_lab.moe.MixtureOfExperts")
    if not isinstance(target_expert, int):
        raise TypeError(f"routing_sweep needs one expert index as target, got {target_expert!r}")
    x = attacks.check_inputs(x, s.eps, mix, alpha=s.alpha)
    dev = next(mix.parameters()).device
    x, y = x.to(dev), y.to(dev)
    rows = []
    with attacks.attack_mode(mix):
        w, h = _gate_stats(mix, x)
        rows.append({"inputs": "clean", "accuracy": 100.0 * correct_mask(mix, x, y).float().mean().item(),
                     "weight on target": w[:, target_expert].mean().item(), "gate entropy": h.mean().item()})
        for lam in lams:
            g = torch.Generator(dev).manual_seed(seed_from(seed, 77))
            xa, ok = routing_pgd(mix, x, y, target_expert, lam, s.eps, s.alpha, s.pgd_steps,
                                  s.random_start, g)
            w, h = _gate_stats(mix, xa)
            rows.append({"inputs": f"PGD-{s.pgd_steps}" + ("" if lam == 0 else f", routing lam={lam:g}"),
                         "accuracy": 100.0 * ok.float().mean().item(),
                         "weight on target": w[:, target_expert].mean().item(),
                         "gate entropy": h.mean().item()})
    return rows
