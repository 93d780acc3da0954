"""Attacks designed for the mixture, and the per-example worst case over all of them.

The paper's strongest attack is PGD-100 on the mixture's cross-entropy (its
"adaptive" row is the same attack with EoT = 1: PAPER-NOTES.md, error 4). A
gated mixture can look robust to that attack for reasons that have nothing to
do with robustness: the gate can route perturbed inputs to experts whose
gradients are uninformative, the soft weighting can flatten the loss surface,
and a single loss can be a poor objective (Carlini et al. 2019; Tramer et al.
2020, "On Adaptive Attacks to Adversarial Example Defenses"; the gate attack of
Bai et al., "Adaptive Smoothing"). Here are the attacks that target exactly that:

- ``ce`` / ``dlr``: PGD on the mixture's output with cross-entropy and with the
  scale-free difference-of-logits-ratio loss (the loss of APGD-DLR/APGD-T);
- :func:`routing_loss`: CE(mixture) + lam * log w_target(x), raising the loss
  *and* pushing gate weight onto a chosen expert (by default expert 0, the
  benign one: the mixture is then only as robust as a standard network);
  :func:`routing_attack` is the balanced version the evaluation runs, toward the
  benign expert and toward whichever expert is weakest at the current point;
- :func:`transfer_attack`: PGD crafted on one expert, or on the uniform average of
  the experts (the mixture without its gate), evaluated on the mixture;
- :func:`long_pgd`: many more steps and restarts, a convergence check;
- AutoAttack and Square through ART (:mod:`dwf_lab.autoattack`), attacks this kit
  did not write.

:func:`evaluate_adaptive` runs them all and reports, per example, the worst
case over every attack (``"worst-case (all)"``): an attacker may pick, for each
image, whichever attack works. :func:`evaluate_adaptive_run` merges those
numbers into a run's evaluation files, so the report's "Beyond the paper" table
shows them beside Tables 2 and 3.

Metric keys (accuracy in percent, :meth:`AdaptiveSettings.metric_names`):
``"SA"``, ``"pgd-<k>"`` (PGD-k, CE), ``"pgd-dlr"``, ``"routing"`` and
``"transfer-best"`` (mixtures only), ``"pgd-<L>x<R>"`` (L steps, R restarts),
``"autoattack"``, ``"square"``, ``"worst-case (all)"``.
"""
from __future__ import annotations

import contextlib
import json
import time
from dataclasses import asdict, dataclass, replace
from typing import Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from dwf_lab import attacks
from dwf_lab.attacks import LossFn, ce_loss, dlr_loss
from dwf_lab.data import seed_from
from dwf_lab.evaluate import correct_mask, per_example, worst_case_keys
from dwf_lab.moe import MixtureOfExperts

WORST = "worst-case (all)"
# keys derived from the others: never an attack of their own, never part of a worst case
DERIVED = ("worst-case", WORST)

__all__ = ["AdaptiveSettings", "WORST", "ce_loss", "dlr_loss", "routing_loss", "is_mixture",
           "routing_attack", "uniform_mixture", "expert_models", "transfer_attack", "long_pgd",
           "evaluate_adaptive", "worst_case", "merge_into_result", "evaluate_adaptive_run",
           "comparison_rows", "routing_sweep"]


# ---------------------------------------------------------------- settings --
@dataclass
class AdaptiveSettings:
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

    # ---- named sizes
    @classmethod
    def paper(cls, **kw) -> "AdaptiveSettings":
        """The standard budgets: PGD-20, PGD-500 x 5, AutoAttack (100 it., 9 targets, 5,000 queries)."""
        return replace(cls(), **kw)

    @classmethod
    def laptop(cls, **kw) -> "AdaptiveSettings":
        """Minutes on a CPU for a few hundred images: shorter long-PGD, lighter AutoAttack."""
        return replace(cls(long_steps=100, long_restarts=2, aa_iter=50, aa_queries=500, aa_targets=3,
                           square_queries=500, name="laptop"), **kw)

    @classmethod
    def smoke(cls, **kw) -> "AdaptiveSettings":
        """Seconds on tiny models: every attack runs, with toy budgets (CI, notebook checks)."""
        return replace(cls(pgd_steps=5, long_steps=6, long_restarts=2, aa_iter=5, aa_queries=10,
                           aa_targets=1, square_queries=10, batch_size=256, name="smoke"), **kw)

    @classmethod
    def from_profile(cls, p, **kw) -> "AdaptiveSettings":
        """The size matching a :class:`dwf_lab.profiles.Profile` (by name; unknown names: laptop)."""
        make = {"smoke": cls.smoke, "paper": cls.paper}.get(getattr(p, "name", ""), cls.laptop)
        s = make(eps=p.pgd_eps, batch_size=p.eval_batch)
        return replace(s, **kw)

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

    def to_dict(self) -> dict:
        return asdict(self)


# ------------------------------------------------------------------ losses --
def is_mixture(model: nn.Module) -> bool:
    """A mixture of expert classifiers with a gate (or a uniform average): it gets the
    gate-aware and transfer attacks. SoE (hard selection, experts with an extra head) and
    ADVMoE (experts inside the layers) are attacked as single models."""
    return isinstance(model, MixtureOfExperts)


def log_gate_weights(model: nn.Module, x: torch.Tensor) -> torch.Tensor | None:
    """log w(x), (B, n), differentiable; None for a model without a gate.

    For :class:`MixtureOfExperts` it is the log-softmax of the gate scores: equal to
    log w for soft routing, and still informative under top-k routing (where the
    kept weights alone would give log 0 for every other expert).
    """
    if isinstance(model, MixtureOfExperts):
        if model.routing == "uniform" or model.gate is None:
            return None
        return torch.log_softmax(model.gate(x).float(), dim=1)
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
    base_fn = attacks.resolve_loss(base)

    def loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if isinstance(model, MixtureOfExperts) and model.routing != "uniform" and model.gate is not None:
            out = model.forward_details(x)
            if base_fn is ce_loss:
                main = F.cross_entropy(out.logits.float(), y, reduction="none")
            elif base_fn is dlr_loss:
                main = attacks.dlr_from_logits(out.logits, y)
            else:
                main = base_fn(model, x, y)
            logw = torch.log_softmax(model.gate(x).float(), dim=1)
        else:
            main = base_fn(model, x, y)
            logw = log_gate_weights(model, x)
            if logw is None:
                return main
        if not 0 <= target_expert < logw.shape[1]:
            raise ValueError(f"target_expert must be in [0, {logw.shape[1] - 1}], got {target_expert}")
        return main + lam * logw[:, target_expert]

    loss.target_expert = target_expert  # type: ignore[attr-defined]
    loss.lam = lam                      # type: ignore[attr-defined]
    return loss


def _routing_pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, target_expert: int | str, lam: float,
                 eps: float, alpha: float, steps: int, random_start: bool,
                 generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(last iterate, per-example correctness at every iterate) of the balanced routing PGD."""
    attacks.check_inputs(x, eps)
    x = x.detach()
    gated = isinstance(model, MixtureOfExperts) and model.routing != "uniform" and model.gate is not None
    weakest = target_expert == "weakest"
    if gated and not weakest and not (isinstance(target_expert, int)
                                      and 0 <= target_expert < model.n_experts):
        raise ValueError(f"target_expert must be 'weakest' or in [0, {model.n_experts - 1}], "
                         f"got {target_expert!r}")
    with attacks.attack_mode(model):
        x_adv = x.clone()
        if random_start and eps > 0:
            x_adv = (x + torch.empty_like(x).uniform_(-eps, eps, generator=generator)).clamp_(0, 1)
        with torch.no_grad():
            correct = model(x_adv).argmax(1) == y
        for _ in range(steps):
            xg = x_adv.detach().requires_grad_(True)
            with torch.enable_grad():
                if gated and weakest:   # per example, the expert that is most wrong right now
                    out = model.forward_details(xg)
                    logits = out.logits
                    with torch.no_grad():
                        z = out.expert_logits.float()
                        per = F.cross_entropy(z.flatten(0, 1), y.repeat_interleave(z.shape[1]),
                                              reduction="none").view(len(y), -1)
                        t = per.argmax(1, keepdim=True)
                else:
                    logits = model(xg)
                    t = torch.full((len(y), 1), int(target_expert) if gated else 0, device=x.device)
                ce = F.cross_entropy(logits.float(), y, reduction="none").sum()
                (g,) = torch.autograd.grad(ce, xg)
                if gated and lam != 0:
                    logw = torch.log_softmax(model.gate(xg).float(), dim=1).gather(1, t).sum()
                    (g_r,) = torch.autograd.grad(logw, xg)
                    dims = tuple(range(1, x.dim()))
                    g = g / (g.abs().mean(dims, keepdim=True) + 1e-20) \
                        + lam * g_r / (g_r.abs().mean(dims, keepdim=True) + 1e-20)
            x_adv = attacks.project(x_adv + alpha * g.sign(), x, eps)
            with torch.no_grad():
                correct &= model(x_adv).argmax(1) == y
    return x_adv, correct


def routing_attack(model: nn.Module, x: torch.Tensor, y: torch.Tensor, target_expert: int | str = 0,
                   lam: float = 1.0, eps: float = attacks.PGD_EPS, alpha: float = attacks.PGD_ALPHA,
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
    return _routing_pgd(model, x, y, target_expert, lam, eps, alpha, steps, random_start, generator)[1]


# ---------------------------------------------------------------- sources --
@contextlib.contextmanager
def _keep_state(modules: Sequence[nn.Module]):
    """Restore the train/eval mode and requires_grad of every submodule/parameter afterwards."""
    modes = [(m, m.training) for mod in modules for m in mod.modules()]
    flags = [(p, p.requires_grad) for mod in modules for p in mod.parameters()]
    try:
        yield
    finally:
        for m, t in modes:
            m.training = t
        for p, f in flags:
            p.requires_grad_(f)


def uniform_mixture(mix: nn.Module) -> MixtureOfExperts:
    """The mixture without its gate: the plain average of the same expert modules (shared, not copied).

    Building a :class:`MixtureOfExperts` touches its experts' mode and
    ``requires_grad``; both are put back, so ``mix`` is left exactly as it was.
    """
    experts = list(mix.experts)
    with _keep_state(experts):
        uni = MixtureOfExperts(experts, None, routing="uniform")
    uni.training = False
    return uni


def expert_models(mix: nn.Module) -> list[nn.Module]:
    return list(mix.experts)


def transfer_attack(source_model: nn.Module, target_model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                    eps: float = attacks.PGD_EPS, alpha: float = attacks.PGD_ALPHA, steps: int = 20,
                    random_start: bool = True, restarts: int = 1, loss: str | LossFn = "ce",
                    generator: torch.Generator | None = None) -> torch.Tensor:
    """PGD crafted on ``source_model``, evaluated on ``target_model``: per-example correctness.

    A transfer (gray-box) attack never differentiates through the target, so if
    it beats white-box PGD on the target, the target's own gradients are
    misleading the white-box attack (gradient masking).
    """
    attacks.check_inputs(x, eps)
    x_adv = attacks.pgd(source_model, x, y, eps, alpha, steps, random_start, restarts, loss=loss,
                        generator=generator, check=False)
    return correct_mask(target_model, x_adv, y)


def long_pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float = attacks.PGD_EPS,
             alpha: float = attacks.PGD_ALPHA, steps: int = 500, restarts: int = 5,
             loss: str | LossFn = "ce", generator: torch.Generator | None = None) -> torch.Tensor:
    """PGD-``steps`` with ``restarts`` random starts (per-example worst case): per-example correctness.

    A convergence check: if this is much lower than PGD-20, the short attack had
    not converged and the short numbers overstate robustness.
    """
    x_adv = attacks.pgd(model, x, y, eps, alpha, steps, True, restarts, loss=loss, generator=generator)
    return correct_mask(model, x_adv, y)


def worst_case(correct: dict[str, torch.Tensor], keys: Sequence[str] | None = None) -> torch.Tensor:
    """Per example: correct under every listed metric (default: every attack in the eps = 8/255
    threat model, see :func:`dwf_lab.evaluate.worst_case_keys`; FGSM at larger eps is left out)."""
    keys = [k for k in (keys if keys is not None else worst_case_keys(correct)) if k not in DERIVED]
    if not keys:
        raise ValueError("no metrics to take a worst case over")
    return torch.stack([correct[k].bool().cpu() for k in keys]).all(0)


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
        from dwf_lab import autoattack as aa
        if "autoattack" in want:
            def autoattack():
                ok, details = aa.autoattack(model, xb, yb, s.eps, version=s.aa_version, n_iter=s.aa_iter,
                                            n_queries=s.aa_queries, n_target_classes=s.aa_targets,
                                            batch_size=s.batch_size, seed=aa_seed, return_details=True)
                for k, v in details.items():
                    if k == "clean" or k.startswith("after "):
                        aa_left[k] = aa_left.get(k, 0) + round(v * details["n"] / 100)
                return ok
            timed("autoattack", autoattack)
        if "square" in want:
            timed("square", lambda: aa.square(model, xb, yb, s.eps, max_iter=s.square_queries,
                                              batch_size=s.batch_size, seed=aa_seed + 1))
    return res


def _evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, s: AdaptiveSettings, seed: int,
              device, progress: bool, skip: Sequence[str], desc: str):
    attacks.check_inputs(x, s.eps)
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
    correct[WORST] = worst_case(correct)
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


# ------------------------------------------------------- run integration --
def merge_into_result(rec: dict, correct: dict[str, torch.Tensor], overwrite: bool = False) -> list[str]:
    """Add per-example results to an evaluation record; recompute ``"worst-case (all)"``.

    New keys go into ``rec["metrics"]`` (percent) and ``rec["per_example"]`` (packed
    bits); keys already there are kept unless ``overwrite``. Then
    ``"worst-case (all)"`` is recomputed from the stored bits as the per-example
    worst case over the paper's attacks AND the adaptive ones. Returns the keys added.
    """
    from dwf_lab.evaluate import pack_bits, unpack_bits
    if rec.get("n_test") is None and not correct:
        return []
    n = int(rec["n_test"] if rec.get("n_test") is not None else len(next(iter(correct.values()))))
    metrics = rec.setdefault("metrics", {})
    bits = rec.setdefault("per_example", {})
    added = []
    for k, v in correct.items():
        if k in DERIVED or (k in bits and not overwrite):
            continue
        v = v.bool().cpu()
        if len(v) != n:
            raise ValueError(f"metric {k!r} covers {len(v)} examples, the result has {n}")
        bits[k] = pack_bits(v)
        metrics[k] = 100.0 * v.float().mean().item()
        added.append(k)
    stored = {k: unpack_bits(h, n) for k, h in bits.items() if k not in DERIVED}
    if stored:
        wc = worst_case(stored)
        bits[WORST] = pack_bits(wc)
        metrics[WORST] = 100.0 * wc.float().mean().item()
    return added


def _surrogate_stage(name: str, done: list) -> str | None:
    """A different finished single model of the run, as a transfer source for the checklist."""
    for other in ("benign", "pgd-at", "fgsm-at"):
        if other != name and other in done:
            return other
    others = [n for n in done if n != name and n not in ("mixture", "gate")]
    return others[0] if others else None


@dataclass
class _Target:
    """One model of a run that the adaptive evaluation covers."""
    name: str                       # stage name / eval file stem
    row: str
    load: Callable[[], nn.Module]
    mixture: bool                   # gets the gate-aware attacks (known before loading)


def _targets(run, seed: int, data, which: str | None, dev) -> list[_Target]:
    """Finished training stages (as ``which`` selects) and, for ``which`` None/"all"/"baselines"
    or their names, the evaluated baselines of ``python -m dwf_lab baselines`` (SoE, ADVMoE,
    uniform ensemble)."""
    from dwf_lab.baselines import BASELINE_ROWS, uniform_ensemble
    from dwf_lab.checkpoints import load_model
    from dwf_lab.pipeline import select_stages
    p = run.profile
    tokens = [t.strip() for t in (which or "all").split(",") if t.strip()]
    stage_tokens = [t for t in tokens if t not in BASELINE_ROWS]
    out = []
    for st in select_stages(p, ",".join(stage_tokens)) if stage_tokens else []:
        if st.kind != "gate" and run.is_done(seed, st.name):
            out.append(_Target(st.name, st.row, lambda n=st.name: load_model(run.model_path(seed, n),
                                                                            map_location=dev),
                               st.kind in ("mixture", "gate")))
    for name, row in BASELINE_ROWS.items():
        if {"all", "baselines", name} & set(tokens):
            if not run.eval_path(seed, name).exists():
                continue    # not run yet: python -m dwf_lab baselines
            if name == "uniform-ensemble":
                out.append(_Target(name, row, lambda: uniform_ensemble(run, seed, data).to(dev), True))
            elif run.is_done(seed, name):
                out.append(_Target(name, row, lambda n=name: load_model(run.model_path(seed, n),
                                                                         map_location=dev), False))
    if not out and tokens and not stage_tokens:
        raise FileNotFoundError(f"no evaluated baseline among {', '.join(tokens)}: "
                                "run python -m dwf_lab baselines first")
    return out


def _evaluate_any(model: nn.Module, x, y, s: AdaptiveSettings, seed: int, dev, progress: bool,
                  skip: Sequence[str], desc: str):
    """:func:`_evaluate`, and for models with a hard selection (SoE) once per gradient mode --
    its own gradient and the BPDA relaxation's -- keeping, per example, the worse outcome."""
    from dwf_lab.evaluate import over_gradient_modes
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
    combined[WORST] = worst_case({k: v for k, v in combined.items() if k != WORST})
    return {k: 100.0 * v.float().mean().item() for k, v in combined.items()}, combined, info


def evaluate_adaptive_run(run, seed: int, data, settings: AdaptiveSettings | None = None,
                          progress: bool = True, which: str | None = None, checklist: bool = True,
                          checklist_settings=None, device: str | None = None,
                          redo: Sequence[str] = ()) -> list[dict]:
    """Adaptive attacks for every finished model of one seed, merged into its eval JSON.

    Models: each finished stage (``which`` as in :func:`dwf_lab.pipeline.select_stages`)
    and, unless ``which`` picks stages, the baselines already evaluated by
    :func:`dwf_lab.baselines.train_and_evaluate_baselines` (SoE is attacked with
    both of its gradient modes, per example the worse one counts). Makes sure the
    paper-protocol evaluation exists (runs it if not), computes the adaptive
    metrics that are not stored yet, adds them and their per-example bits to
    ``eval/<name>_seed<k>.json``, recomputes ``"worst-case (all)"`` over every
    stored attack, and writes the file atomically. With ``checklist`` it also
    writes the gradient-masking checklist to ``report/checklist_<name>_seed<k>.md``
    and ``.json``; its checks read off the stored results are refreshed on every call.
    Idempotent: no attack already stored is rerun, except the attack keys in ``redo``
    (e.g. ``("autoattack",)`` after a library upgrade), which replace the stored ones.
    The robust accuracy after each stage of AutoAttack goes to
    ``rec["adaptive"]["autoattack_stages"]``. Returns the records.
    """
    from dwf_lab.checkpoints import atomic_write_text
    from dwf_lab.evaluate import unpack_bits
    from dwf_lab.pipeline import evaluate_run
    from dwf_lab.train import Runtime

    p = run.profile
    s = settings or AdaptiveSettings.from_profile(p)
    dev = torch.device(device) if device else Runtime.from_profile(p).device
    known = set(s.attack_names(True))
    if set(redo) - known:
        raise ValueError(f"cannot redo {sorted(set(redo) - known)}: the attacks are {sorted(known)}")
    done = [st.name for st in plan_stages_done(run, seed)]
    out = []
    for target in _targets(run, seed, data, which, dev):
        path = run.eval_path(seed, target.name)
        if not path.exists():
            evaluate_run(run, seed, data, which=target.name, progress=progress,
                         device=str(dev) if device else None)
        rec = json.loads(path.read_text())
        n = int(rec.get("n_test") or 0)
        if n != len(data.x_test):
            raise ValueError(f"{path} covers {n} test images but the data has {len(data.x_test)}: "
                             "evaluate with the same data (profile) the run was evaluated with")
        model = None
        stored = set(rec.get("per_example", {})) - set(redo)
        missing = [k for k in s.attack_names(target.mixture) if k not in stored]
        if missing:
            model = target.load().eval()
            mixture = is_mixture(model)
            skip = [k for k in s.attack_names(mixture) if k in stored]
            t0 = time.time()
            _, correct, found = _evaluate_any(model, data.x_test, data.y_test, s, seed, dev, progress,
                                              skip, f"adaptive {target.name}")
            sa_stored = rec.get("per_example", {}).get("SA")
            if sa_stored is not None:
                differ = (unpack_bits(sa_stored, n) != correct["SA"].cpu()).float().mean().item()
                if differ > 0.01:   # a few borderline flips are float noise (e.g. GPU kernels)
                    raise ValueError(f"{path}: the stored clean predictions differ from this model's "
                                     f"on {100 * differ:.1f}% of the images (another model or other "
                                     "data?); re-evaluate the run")
            merge_into_result(rec, {k: v for k, v in correct.items() if k in redo}, overwrite=True)
            merge_into_result(rec, correct)
            info = rec.setdefault("adaptive", {})
            info["settings"] = s.to_dict()
            info.setdefault("elapsed_s", {}).update(found["elapsed_s"])
            if "autoattack_stages" in found:
                info["autoattack_stages"] = found["autoattack_stages"]
            info["elapsed_s_total"] = round(info.get("elapsed_s_total", 0.0) + time.time() - t0, 2)
            info["note"] = ("attacks beyond the paper (dwf_lab.adaptive); 'worst-case (all)' is the "
                            "per-example worst case over every stored attack, the paper's included")
        else:
            merge_into_result(rec, {})   # keeps worst-case (all) in step with what is stored
        atomic_write_text(path, json.dumps(rec, indent=1))
        out.append(rec)

        if checklist:
            _write_checklist(run, seed, target, rec, model, data, dev, done, checklist_settings)
    return out


def _write_checklist(run, seed: int, target: _Target, rec: dict, model: nn.Module | None, data, dev,
                     done: list, settings=None) -> None:
    """``report/checklist_<name>_seed<k>.md`` and ``.json``: the checks that run attacks (once; a
    saved checklist is kept) and the checks read off the evaluation record ``rec`` (recomputed
    every time, so they follow the attacks stored since)."""
    from dwf_lab.checklist import (CheckItem, ChecklistSettings, checklist_markdown, items_to_json,
                                   load_checklist, run_checklist, with_stored_checks)
    from dwf_lab.checkpoints import atomic_write_text, load_model
    md = run.report_dir / f"checklist_{target.name}_seed{seed}.md"
    js = md.with_suffix(".json")
    if md.exists() and js.exists():
        try:
            saved = load_checklist(js)
            known = set(ChecklistSettings.__dataclass_fields__)
            cs = ChecklistSettings(**{k: v for k, v in saved["settings"].items() if k in known})
            items = [CheckItem.from_dict(d) for d in saved["items"]]
            m = int(saved["n_examples"])
        except (ValueError, KeyError, TypeError) as err:
            raise ValueError(f"{js} is not a readable checklist ({err}); delete it and its .md "
                             "to recompute it") from err
    else:
        if model is None:
            model = target.load().eval()
        cs = settings or ChecklistSettings.from_profile(run.profile)
        surrogate = None
        if not is_mixture(model):
            other = _surrogate_stage(target.name, done)
            if other is not None:
                surrogate = load_model(run.model_path(seed, other), map_location=dev)
        m = min(len(data.x_test), cs.n_examples or len(data.x_test))
        items = run_checklist(model, data.x_test[:m].to(dev), data.y_test[:m].to(dev), cs,
                              surrogate=surrogate, seed=seed)
    items = with_stored_checks(items, rec, cs)
    title = f"Gradient-masking checklist: {target.row} ({target.name}), seed {seed}"
    atomic_write_text(md, checklist_markdown(items, title=title))
    atomic_write_text(js, json.dumps({"model": target.name, "row": target.row, "seed": seed,
                                      "n_examples": m, "settings": cs.to_dict(),
                                      "items": items_to_json(items)}, indent=1))


def plan_stages_done(run, seed: int) -> list:
    from dwf_lab.train import plan_stages
    return [st for st in plan_stages(run.profile) if st.kind != "gate" and run.is_done(seed, st.name)]


# ------------------------------------------------------------ reading --
def _adaptive_keys(keys: Sequence[str]) -> list[str]:
    """The adaptive attack keys among ``keys``, in a fixed reading order."""
    import re
    short = sorted((k for k in keys if re.fullmatch(r"pgd-\d+", k)), key=lambda k: int(k[4:]))
    long = sorted((k for k in keys if re.fullmatch(r"pgd-\d+x\d+", k)),
                  key=lambda k: tuple(int(v) for v in k[4:].split("x")))
    return short + [k for k in ("pgd-dlr", "routing", "transfer-best") if k in keys] + long + \
        [k for k in ("autoattack", "square") if k in keys]


def comparison_rows(records: Sequence[dict], dataset: str | None = None) -> tuple[list[dict], list[str]]:
    """One row per evaluated model: the paper's protocol, the adaptive attacks, both worst cases,
    and the paper's Table 3 numbers for that row (PGD-20 and "100 (MS)").

    ``records``: evaluation records (``eval/<stage>_seed<k>.json`` contents), e.g. what
    :func:`evaluate_adaptive_run` returns. Returns ``(rows, columns)``; accuracies in percent,
    None where not measured. The "paper" columns are the published numbers for the row's
    label (CIFAR-10's for synthetic data: see :func:`dwf_lab.reference.comparability_note`).
    """
    import re

    from dwf_lab.reference import paper_value
    keys: list[str] = []
    for r in records:
        keys += [k for k in r.get("metrics", {}) if k not in keys]
    pgd_k = sorted(int(k[4:]) for k in keys if re.fullmatch(r"pgd:\d+", k))
    short = [f"pgd:{20 if 20 in pgd_k else pgd_k[-1]}"] if pgd_k else []
    ms = sorted((k for k in keys if re.fullmatch(r"pgd:\d+-ms", k)), key=lambda k: int(k[4:-3]))[-1:]
    cols = ["SA"] + short + ms + ["worst-case"] + _adaptive_keys(keys) + [WORST]
    cols = [c for c in cols if c in keys]
    ds = dataset or (records[0].get("dataset") if records else None)
    rows = []
    for r in records:
        row = {"model": r.get("row") or r.get("model"), "seed": r.get("seed")}
        row.update({c: r["metrics"].get(c) for c in cols})
        for col, label in (("20", "paper PGD-20"), ("100 (MS)", "paper 100 (MS)")):
            v = paper_value("table3", ds, row["model"], col) if ds else None
            row[label] = None if v is None else v[0]
        rows.append(row)
    return rows, ["model", "seed"] + cols + ["paper PGD-20", "paper 100 (MS)"]


AA_STAGES = ("clean", "after APGD-CE", "after APGD-T", "after FAB-T", "after Square")


def autoattack_stage_rows(records: Sequence[dict]) -> list[dict]:
    """Robust accuracy (%) after each stage of the AutoAttack cascade, one row per model (and per
    gradient mode for a model attacked under several, e.g. SoE): which part of AutoAttack broke it.
    Models whose stages were not recorded are left out."""
    rows = []
    for r in records:
        stages = r.get("adaptive", {}).get("autoattack_stages")
        if not stages:
            continue
        per_mode = stages if all(isinstance(v, dict) for v in stages.values()) else {None: stages}
        for mode, st in per_mode.items():
            name = r.get("row") or r.get("model")
            rows.append({"model": name if mode is None else f"{name} ({mode} gradient)",
                         "seed": r.get("seed"), **{k: st.get(k) for k in AA_STAGES}})
    return rows


def autoattack_section(eval_dir) -> dict | None:
    """:func:`autoattack_stage_rows` of a run's evaluation files as a report section (None: none)."""
    from dwf_lab.report import _row_order, load_results
    records = load_results(eval_dir)
    names = list(dict.fromkeys(r.get("row") or r.get("model") for r in records))
    order = _row_order(names, records[0].get("dataset") if records else None)
    records.sort(key=lambda r: (order.index(r.get("row") or r.get("model")), str(r.get("seed"))))
    rows = autoattack_stage_rows(records)
    if not rows:
        return None
    fmt = lambda v: "-" if v is None else f"{v:.1f}"   # noqa: E731
    return {"title": "AutoAttack stage by stage (%)",
            "notes": ["Robust accuracy after each attack of the cascade, which only attacks the images "
                      "still classified correctly: a large drop at APGD-T or FAB-T (margin losses, "
                      "targeted) and none at APGD-CE means cross-entropy is a poor objective for the "
                      "model; a drop at Square (no gradients) after the white-box stages means its "
                      "gradients hide adversarial examples."],
            "columns": ["model", "seed", *AA_STAGES],
            "rows": [[r["model"], r["seed"], *(fmt(r[k]) for k in AA_STAGES)] for r in rows]}


@torch.no_grad()
def _gate_stats(model, x):
    from dwf_lab.moe import gate_entropy
    w = model.gate_weights(x).float()
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
    attacks.check_inputs(x, s.eps)
    dev = next(mix.parameters()).device
    x, y = x.to(dev), y.to(dev)
    rows = []
    with attacks.attack_mode(mix):
        w, h = _gate_stats(mix, x)
        rows.append({"inputs": "clean", "accuracy": 100.0 * correct_mask(mix, x, y).float().mean().item(),
                     "weight on target": w[:, target_expert].mean().item(), "gate entropy": h.mean().item()})
        for lam in lams:
            g = torch.Generator(dev).manual_seed(seed_from(seed, 77))
            xa, ok = _routing_pgd(mix, x, y, target_expert, lam, s.eps, s.alpha, s.pgd_steps,
                                  s.random_start, g)
            w, h = _gate_stats(mix, xa)
            rows.append({"inputs": f"PGD-{s.pgd_steps}" + ("" if lam == 0 else f", routing lam={lam:g}"),
                         "accuracy": 100.0 * ok.float().mean().item(),
                         "weight on target": w[:, target_expert].mean().item(),
                         "gate entropy": h.mean().item()})
    return rows


def reading(rows: Sequence[dict]) -> str:
    """A few sentences per model, computed from :func:`comparison_rows` (markdown bullets)."""
    skip = {"model", "seed", "SA", "worst-case", WORST, "paper PGD-20", "paper 100 (MS)"}
    lines = []
    for r in rows:
        att = {k: v for k, v in r.items() if k not in skip and v is not None}
        if not att:
            continue
        strongest = min(att, key=att.get)
        text = f"- **{r['model']}**: the strongest single attack is `{strongest}` ({att[strongest]:.1f}%)"
        ours, wc = r.get("worst-case"), r.get(WORST)
        if wc is not None:
            if ours is not None:
                drop = ours - wc
                text += (f"; per image, the paper's attacks together leave {ours:.1f}% and all attacks "
                         f"{wc:.1f}%" + (f", **{drop:.1f} points lower**" if drop >= 0.05 else
                                          ", no lower: the adaptive attacks found nothing new"))
            else:
                text += f"; the worst case over all attacks leaves {wc:.1f}%"
        gate = {k: att[k] for k in ("routing", "transfer-best") if k in att}
        plain = [v for k, v in att.items() if k.startswith("pgd-") and k[4:].isdigit()]
        if gate and plain:
            best_gate = min(gate, key=gate.get)
            if gate[best_gate] < min(plain) - 0.05:
                text += (f". The gate-aware `{best_gate}` attack beats plain PGD "
                         f"({gate[best_gate]:.1f}% vs {min(plain):.1f}%): the mixture's PGD numbers "
                         "overstate its robustness")
            else:
                text += (f". The gate-aware attacks do not beat plain PGD here ({gate[best_gate]:.1f}% "
                         f"vs {min(plain):.1f}%)")
        paper = r.get("paper PGD-20")
        if paper is not None and wc is not None:
            text += f". The paper reports {paper:.1f}% under PGD-20 for this row"
        lines.append(text + ".")
    return "\n".join(lines) if lines else "- No adaptive results yet."
