"""Attacks beyond the paper, run as one evaluation with the per-example worst case over all of them.

The paper's strongest attack is PGD-100 on the mixture's cross-entropy (its "adaptive" row is the
same attack with EoT = 1: docs/paper-notes.md, error 4). A gated mixture can look robust to it for
reasons that have nothing to do with robustness: the gate can route perturbed inputs to experts
with uninformative gradients, the soft weighting can flatten the loss, and one loss can be a poor
objective (Carlini et al. 2019; Tramer et al. 2020; the gate attack of Bai et al., "Adaptive
Smoothing"). :func:`evaluate_adaptive` runs, at :class:`AdaptiveSettings` budgets, PGD with CE
and DLR losses, the gate-aware routing and transfer attacks (:mod:`dwf_lab.attacks.gate`; mixtures
only), long PGD with restarts, the official AutoAttack (:mod:`dwf_lab.attacks.autoattack`, the
authors' code) and, on request, ART's Square on every image, and the per-example worst case: an
attacker may pick, for each image, whichever attack works.

Metric keys (accuracy in percent, :meth:`AdaptiveSettings.metric_names`): ``"SA"``, ``"pgd-<k>"``
(PGD-k, CE), ``"pgd-dlr"``, ``"routing"`` and ``"transfer-best"`` (mixtures only),
``"pgd-<L>x<R>"`` (L steps, R restarts), ``"autoattack"`` (the official suite: standard, rand, or a
reduced budget that its settings and every label say is not the standard suite), ``"square"``
(off by default: the suite's own Square stage attacks every image the white-box stages left),
``"worst-case (all)"``.

Every attack key has its own settings (:meth:`AdaptiveSettings.attack_settings`: budget, eps,
restarts, library versions), stored beside its result so that a result is never relabelled
with settings it was not computed with (:func:`dwf_lab.evaluation.records.settings_difference`).
"""
import dataclasses
import json
import time
from dataclasses import dataclass, field
from typing import Callable, ClassVar, Sequence

import torch
import torch.nn as nn

from dwf_lab import attacks
from dwf_lab.attacks import autoattack as official
from dwf_lab.attacks.base import check_batch_size, correct_mask
from dwf_lab.attacks.gate import routing_pgd
from dwf_lab.attacks.mixture_aware import model_kind
from dwf_lab.attacks.precision import check_precision, compute_precision
from dwf_lab.core.config import SizedSettings
from dwf_lab.core.runtime import seed_from
from dwf_lab.evaluation.diagnostics import gate_weights
from dwf_lab.evaluation.metrics import WORST, over_gradient_modes, per_example, worst_case
from dwf_lab.evaluation.suite import ATTACKS, AdaptiveAttack, Batch, planned
from dwf_lab.mixture.moe import MixtureOfExperts, gate_entropy

AA_SEED_TAG = 99    # the official suite's seed for test batch b: seed_from(seed, b, AA_SEED_TAG) % 2**31


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
    mixture_aware: bool = True           # fixed gate, gated margins, routing-dlr; SoE's and ADVMoE's own
    routing_restarts: int = 2            # "routing-dlr": restarts per target (0: off)
    long_steps: int = 500
    long_restarts: int = 5
    autoattack: bool = True              # "autoattack": the official suite (pyautoattack)
    aa_version: str = "standard"         # "standard"; "rand" for a model with a random forward pass (EoT)
    aa_iter: int = 100                   # the library's standard budget: APGD / FAB iterations,
    aa_targets: int = 9                  # APGD-T / FAB-T target classes, Square queries, EoT draws (rand);
    aa_queries: int = 5000               # any other value is a reduced budget, stored and labelled
    aa_eot: int = 20                     # "reduced budget: NOT the standard suite"
    square: bool = False                 # ART's Square on every image (the suite's Square stage covers it)
    square_queries: int = 5000
    batch_size: int = 500
    n_examples: int | None = None        # attack the first N test images (None: all); stored with each result
    precision: str = "fp32"              # the attacks' arithmetic (dwf_lab.attacks.precision); stored with each result
    name: str = "paper"
    SIZES: ClassVar[dict[str, dict]] = {
        "paper": {},   # PGD-20, PGD-500 x 5, the standard AutoAttack
        # laptop: no long PGD of its own (the protocol's PGD-100 x 3 ran on every test image), and the
        # first 100 test images, to keep notebook 06 within minutes on a 2-core CPU
        "laptop": dict(long_steps=0, aa_iter=50, aa_queries=500, aa_targets=3,
                       square_queries=500, n_examples=100, name="laptop"),
        "smoke": dict(pgd_steps=5, routing_restarts=1, long_steps=6, long_restarts=2, aa_iter=5, aa_queries=10, aa_targets=1,
                      aa_eot=2, square_queries=10, batch_size=256, name="smoke")}
    # "twice the budget" (dwf_lab.evaluation.convergence): each budget field of each attack doubled --
    # iterations, restarts, target classes, queries, EoT draws; eps, step size and images unchanged.
    # Target classes stop at the classes other than the true one (9 on CIFAR-10). The official
    # AutoAttack's restarts are the library's own (one per stage) at either budget.
    TWICE: ClassVar[dict[str, str]] = {
        "pgd_steps": "PGD-k, PGD-DLR, routing, transfer and the mixture-aware attacks: steps x2",
        "routing_restarts": "routing (DLR, restarts): restarts x2",
        "long_steps": "PGD-L x R: steps x2", "long_restarts": "PGD-L x R: restarts x2",
        "aa_iter": "AutoAttack: APGD and FAB iterations x2",
        "aa_targets": "AutoAttack: APGD-T and FAB-T target classes x2 (at most the classes but one)",
        "aa_queries": "AutoAttack: Square's queries x2", "aa_eot": "AutoAttack (rand): EoT draws x2",
        "square_queries": "Square (ART): queries x2"}

    def __post_init__(self):
        if self.n_examples is not None and (isinstance(self.n_examples, bool) or int(self.n_examples) < 1):
            raise ValueError(f"n_examples must be a number of test images >= 1 (or None: all), got {self.n_examples!r}")
        check_precision(self.precision)
        if self.aa_version not in official.VERSIONS:
            raise ValueError(f"aa_version must be one of {', '.join(official.VERSIONS)}, got {self.aa_version!r}")

    def twice(self, n_classes: int = 10) -> "AdaptiveSettings":
        """These settings at twice the budget (:attr:`TWICE`), on the same images and threat model."""
        doubled = {k: 2 * getattr(self, k) for k in self.TWICE}
        doubled["aa_targets"] = max(self.aa_targets, min(doubled["aa_targets"], n_classes - 1))
        return dataclasses.replace(self, **doubled, name=f"{self.name} x2")

    def images(self, n_test: int) -> int:
        """How many of ``n_test`` test images the attacks run on (the first ones)."""
        return n_test if self.n_examples is None else min(int(self.n_examples), n_test)

    # ---- metric keys (each attack's own, from the registry: dwf_lab.evaluation.suite)
    @property
    def pgd_key(self) -> str:
        return ATTACKS["pgd"].key(self)

    @property
    def long_key(self) -> str:
        return ATTACKS["long"].key(self)

    def attack_names(self, mixture: bool | str) -> list[str]:
        """The attack metric keys for a model (mixtures get the gate-aware ones too; a kind name
        such as ``"soe"``: that kind's, :func:`dwf_lab.evaluation.suite.kind_of`)."""
        return [a.key(self) for a in planned(self, mixture)]

    def every_attack_name(self) -> list[str]:
        """The metric keys of every attack these settings run on some kind of model (plain
        networks, DWF's mixture, SoE, ADVMoE): what ``--redo`` and the banner's timing accept."""
        return list(dict.fromkeys(a.key(self) for a in ATTACKS.values() if a.enabled(self)))

    def metric_names(self, mixture: bool | str) -> list[str]:
        return ["SA"] + self.attack_names(mixture) + [WORST]

    def standard_autoattack(self) -> "AdaptiveSettings":
        """These settings with the official AutoAttack at its standard budget (the defaults: the library's own)."""
        fields = type(self).__dataclass_fields__
        return dataclasses.replace(self, **{k: fields[k].default for k in ("aa_iter", "aa_targets", "aa_queries",
                                                                           "aa_eot")})

    # ---- what each key means
    def aa_budget(self) -> official.Budget:
        return official.Budget(n_iter=self.aa_iter, n_target_classes=self.aa_targets, n_queries=self.aa_queries,
                               eot_iter=self.aa_eot)

    def attack(self, key: str) -> AdaptiveAttack:
        """The registered attack whose result ``key`` is under these settings."""
        found = next((a for a in ATTACKS.values() if a.key(self) == key), None)
        if found is None:
            raise ValueError(f"no attack {key!r} in these settings; the attacks are {self.attack_names(True)}")
        return found

    def attack_settings(self, key: str, seed: int) -> dict:
        """What defines the result stored under attack key ``key`` for a run seed: the attack, its
        budget, eps, restarts and the library that ran it (JSON types). A stored result whose
        settings differ from these is not the result these settings ask for."""
        d = self.attack(key).settings(self, int(seed))
        return json.loads(json.dumps({**d, "eps": self.eps, "seed": int(seed), "precision": self.precision}))


# -------------------------------------------------------------- evaluation --
@dataclass
class _AutoAttackTally:
    """The official suite over all test batches: images left after each stage, and what ran."""
    left: dict = field(default_factory=dict)
    n: int = 0
    rechecked: int = 0
    seconds: dict = field(default_factory=dict)
    warnings: list = field(default_factory=list)
    settings: dict | None = None

    def add(self, r: official.AutoAttackResult) -> None:
        n = len(r.correct)
        for k, v in r.stages.items():
            self.left[k] = self.left.get(k, 0) + round(v * n / 100)
        self.n += n
        self.rechecked += r.rechecked
        for k, v in r.seconds.items():
            self.seconds[k] = round(self.seconds.get(k, 0.0) + v, 2)
        self.warnings += [w for w in r.settings.get("library_warnings", []) if w not in self.warnings]
        self.settings = self.settings or r.settings

    def stages(self) -> dict:
        return {k: round(100.0 * v / max(1, self.n), 2) for k, v in self.left.items()}

    def record(self, seed: int, batch_size: int) -> dict:
        """The settings to store: the first batch's, for all of them (the library's seed per batch noted)."""
        return {**(self.settings or {}), "seed": int(seed), "n": self.n, "batch_size": batch_size,
                "seed_per_batch": f"seed_from(seed, batch, {AA_SEED_TAG}) % 2**31 (dwf_lab.core.runtime)",
                "library_warnings": self.warnings, "rechecked": self.rechecked, "seconds": self.seconds}


def _run_batch(model: nn.Module, xb: torch.Tensor, yb: torch.Tensor, s: AdaptiveSettings,
               want: list[AdaptiveAttack], gen: Callable[[int], torch.Generator], aa_seed: int, timings: dict,
               aa_tally: _AutoAttackTally) -> dict:
    """One batch of every attack in ``want``: per-example correctness per key. Adds each attack's
    seconds to ``timings`` and the official AutoAttack's result for the batch to ``aa_tally``."""
    # the kit's attacks run on the images the model classifies correctly: a misclassified image is
    # not robust by definition (as in the protocol); an attack on all images skips them by itself
    t0 = time.time()
    clean = correct_mask(model, xb, yb)
    res: dict[str, torch.Tensor] = {"SA": clean.cpu()}
    timings["SA"] = timings.get("SA", 0.0) + time.time() - t0
    keep = clean.nonzero().squeeze(1)
    batch = Batch(model, xb[keep], yb[keep], xb, yb, s, gen, aa_seed, aa_tally)
    for a in want:
        key, t0 = a.key(s), time.time()
        if a.all_images:
            res[key] = a.run(batch).cpu()
        else:
            out = torch.zeros_like(clean)
            if len(keep):
                out[keep] = a.run(batch).to(out.device)
            res[key] = out.cpu()
        timings[key] = timings.get(key, 0.0) + time.time() - t0
    return res


def _evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, s: AdaptiveSettings, seed: int,
              device, progress: bool, skip: Sequence[str], desc: str):
    x = attacks.check_inputs(x, s.eps, model, alpha=s.alpha)   # once, on the whole data
    check_batch_size(s.batch_size)
    mixture = model_kind(model)
    want = [a for a in planned(s, mixture) if a.key(s) not in set(skip)]
    settings = {a.key(s): s.attack_settings(a.key(s), seed) for a in want}  # bad settings: now
    timings: dict[str, float] = {}
    tally = _AutoAttackTally()
    with compute_precision(model, s.precision):
        correct = per_example(model, x, y, s.batch_size, device, seed,
                              lambda b, xb, yb, gen: _run_batch(model, xb, yb, s, want, gen,
                                                                seed_from(seed, b, AA_SEED_TAG) % (2 ** 31),
                                                                timings, tally),
                              desc, progress)
    order = [k for k in s.metric_names(mixture) if k in correct]
    correct = {k: correct[k] for k in order}
    correct[WORST] = worst_case(correct, s.eps)
    metrics = {k: 100.0 * v.float().mean().item() for k, v in correct.items()}
    versions = {"torch": torch.__version__, "n": len(x)}
    info: dict = {"elapsed_s": {k: round(v, 2) for k, v in timings.items()},
                  "attack_settings": {k: {**v, **versions} for k, v in settings.items()}}
    if tally.n:
        info["autoattack_stages"] = tally.stages()
        info["attack_settings"]["autoattack"] = {**settings["autoattack"], **versions,
                                                 **tally.record(seed, s.batch_size)}
    return metrics, correct, info


def evaluate_adaptive(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                      settings: AdaptiveSettings | None = None, *, seed: int = 0, device=None,
                      progress: bool = True, skip: Sequence[str] = (),
                      desc: str = "adaptive attacks", return_info: bool = False):
    """Run every adaptive attack; returns (metrics in percent, per-example correctness per metric).

    ``"worst-case (all)"`` is the per-example worst case over clean accuracy and
    every attack that ran. ``skip`` leaves out attack keys (e.g. ones already
    stored). Accuracies are over the same images, in the settings' precision, model in eval mode.
    With ``return_info=True`` a third item: ``{"attack_settings": {key: settings},
    "autoattack_stages": {stage: %}, "elapsed_s": {key: s}}`` (what to store with the results).
    """
    metrics, correct, info = evaluate_any(model, x, y, settings or AdaptiveSettings(), seed, device,
                                          progress, skip, desc)
    return (metrics, correct, info) if return_info else (metrics, correct)


def evaluate_any(model: nn.Module, x, y, s: AdaptiveSettings, seed: int, dev, progress: bool,
                  skip: Sequence[str], desc: str):
    """:func:`_evaluate`, and for models with a hard selection (SoE) once per gradient mode --
    its own gradient and the BPDA relaxation's -- keeping, per example, the worse outcome. An attack
    whose result does not depend on the mode (``AdaptiveAttack.mode_free``) runs in the first mode
    only; the others take its result."""
    if not getattr(model, "gradient_modes", None):
        return _evaluate(model, x, y, s, seed, dev, progress, skip, desc)
    free = [a.key(s) for a in planned(s, model_kind(model)) if a.mode_free]
    first: dict[str, torch.Tensor] = {}   # the mode-free attacks' results, from the first mode

    def one(mode):
        later = mode != model.gradient_modes[0]
        _, c, info = _evaluate(model, x, y, s, seed, dev, progress, [*skip, *free] if later else skip,
                               f"{desc} ({mode})")
        if not later:
            first.update({k: c[k] for k in free if k in c})
        return {**c, **first}, info
    combined, per_mode = over_gradient_modes(model, one)
    info: dict = {"elapsed_s": {f"{k} ({mode})": v for mode, i in per_mode.items()
                                for k, v in i["elapsed_s"].items()}}
    first = next(iter(per_mode.values()))
    info["attack_settings"] = {k: {**v, "gradient_modes": list(per_mode)} for k, v in first["attack_settings"].items()}
    stages = {mode: i["autoattack_stages"] for mode, i in per_mode.items() if "autoattack_stages" in i}
    if stages:
        info["autoattack_stages"] = stages
    combined[WORST] = worst_case(combined, s.eps)
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
    with attacks.attack_mode(mix), compute_precision(mix, s.precision):
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
