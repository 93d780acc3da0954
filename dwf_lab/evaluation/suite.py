"""The adaptive attacks, registered once as data: what each runs, costs, is stored and shown as.

Each :class:`AdaptiveAttack` carries everything the kit says about one attack: its result key
(a function of the settings, e.g. ``pgd-20``), its column label and one-line description, the
settings that define its stored result, how it runs on one batch, its work in passes per image
(:mod:`dwf_lab.core.work`), whether it is for mixtures only, whether it enters the per-example
worst case, and which point it scores (the last iterate, any iterate, or the attack's best).
:func:`dwf_lab.evaluation.adaptive.evaluate_adaptive`, the course's cost banner, the tables and
the readings loop over :data:`ATTACKS`. Adding an attack is one file that calls
:func:`register_attack` (see docs/architecture.md).
"""
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn as nn

from dwf_lab import attacks
from dwf_lab.attacks import art_suite
from dwf_lab.attacks import autoattack as official
from dwf_lab.attacks.base import correct_mask
from dwf_lab.attacks.gate import expert_models, long_pgd, routing_attack, transfer_attack, uniform_mixture
from dwf_lab.attacks.mixture_aware import (
    MODEL_KINDS,
    fixed_gate_pgd,
    gated_margin_pgd,
    route_fixed_pgd,
    routing_restarts,
    soe_transfer,
)
from dwf_lab.core.work import ATTACK_STEP, FORWARD
from dwf_lab.evaluation import keys as K

ITERATES = {"last": "the last iterate", "any": "any iterate", "best": "the attack's best point"}
FAMILIES = ("generic", "router-aware", "expert-aware")


@dataclass
class Batch:
    """What an attack gets for one test batch. ``x``, ``y``: the images the model classifies
    correctly (the kit's attacks run on those); ``x_all``, ``y_all``: the whole batch;
    ``gen(tag)``: the batch's seeded generator for a tag; ``s``: the adaptive settings."""
    model: nn.Module
    x: torch.Tensor
    y: torch.Tensor
    x_all: torch.Tensor
    y_all: torch.Tensor
    s: object
    gen: Callable[[int], torch.Generator]
    aa_seed: int
    aa_tally: object = None

    def pgd(self, loss: str, steps: int, tag: int) -> torch.Tensor:
        """Per-example correctness after PGD-``steps`` on ``loss`` (the last iterate)."""
        s = self.s
        xa = attacks.pgd(self.model, self.x, self.y, s.eps, s.alpha, steps, s.random_start, loss=loss,
                         generator=self.gen(tag), check=False)
        return correct_mask(self.model, xa, self.y)

    @property
    def n_experts(self) -> int:
        m = self.model
        return m.n_experts if hasattr(m, "n_experts") else len(m.experts)


@dataclass(frozen=True)
class AdaptiveAttack:
    """One attack of the adaptive battery. ``key(s)``: its metric key under settings ``s``;
    ``settings(s, seed)``: what defines its stored result for a run seed (JSON types; eps,
    seed and precision are added by the engine); ``run(batch)``: per-example correctness on ``batch.x`` (or on
    ``batch.x_all`` when ``all_images``); ``work(s, m, robust)``: passes per attacked image for a
    model of ``m`` networks, ``robust`` the share a cascade still attacks after its first stage;
    ``enabled(s)``: whether the settings ask for it; ``models``: the model kinds it runs on
    (:data:`~dwf_lab.attacks.mixture_aware.MODEL_KINDS`; empty: every kind, or only mixtures when
    ``mixtures_only``); ``family``: what it is built to see (:data:`FAMILIES`); ``mode_free``: its
    result does not depend on the gradient mode a model with a hard selection is attacked in (it sets
    its own), so such a model runs it once, not once per mode (:func:`dwf_lab.evaluation.adaptive.evaluate_any`)."""
    name: str
    label: str
    describe: str
    key: Callable[[object], str]
    settings: Callable[[object, int], dict]
    run: Callable[[Batch], torch.Tensor]
    work: Callable[[object, int, float], float]
    enabled: Callable[[object], bool] = lambda s: True
    mixtures_only: bool = False
    worst_case: bool = True
    all_images: bool = False
    iterate: str = "last"
    family: str = "generic"      # "generic", "router-aware", "expert-aware"
    claims: Callable[[str], bool] | None = field(default=None, compare=False)
    models: tuple[str, ...] = ()
    mode_free: bool = False

    def applies_to(self, kind: str) -> bool:
        """Whether this attack runs on a model of ``kind`` (:func:`kind_of`)."""
        if self.models:
            return kind in self.models
        return kind == "mixture" or not self.mixtures_only

    def owns(self, key: str) -> bool:
        """Whether a stored metric key is this attack's result."""
        return self.claims(key) if self.claims else key == self.name


ATTACKS: dict[str, AdaptiveAttack] = {}


def register_attack(attack: AdaptiveAttack) -> AdaptiveAttack:
    if attack.iterate not in ITERATES:
        raise ValueError(f"attack {attack.name!r}: iterate must be one of {', '.join(ITERATES)}")
    if attack.family not in FAMILIES:
        raise ValueError(f"attack {attack.name!r}: family must be one of {', '.join(FAMILIES)}")
    if set(attack.models) - set(MODEL_KINDS):
        raise ValueError(f"attack {attack.name!r}: models must be among {', '.join(MODEL_KINDS)}")
    ATTACKS[attack.name] = attack
    return attack


def unregister_attack(name: str) -> None:
    ATTACKS.pop(name, None)


def kind_of(mixture: bool | str) -> str:
    """A model kind from what callers know: True (a mixture of the run's experts), False (a single
    network) or a kind name (:data:`~dwf_lab.attacks.mixture_aware.MODEL_KINDS`; any other name is
    a single network's)."""
    if isinstance(mixture, bool):
        return "mixture" if mixture else "plain"
    return mixture if mixture in MODEL_KINDS else "plain"


def planned(s, mixture: bool | str) -> list[AdaptiveAttack]:
    """The attacks settings ``s`` run on a model of kind ``mixture`` (:func:`kind_of`: mixtures get
    the gate-aware ones too, SoE and ADVMoE their own), in order."""
    kind = kind_of(mixture)
    return [a for a in ATTACKS.values() if a.enabled(s) and a.applies_to(kind)]


def attack_for_key(key: str) -> AdaptiveAttack | None:
    """The registered attack whose result a stored metric key is (None for SA, derived or protocol keys)."""
    return next((a for a in ATTACKS.values() if a.owns(key)), None)


def reading_order(keys) -> list[str]:
    """The adaptive attack keys among ``keys``, in registration order (within one attack, by steps)."""
    out = []
    for a in ATTACKS.values():
        mine = [K.parse(k) for k in keys if a.owns(k)]
        out += [k.text for k in sorted(mine, key=lambda k: (k.steps or 0, k.restarts or 0, k.text))]
    return out


def scored_points(keys) -> str:
    """One line saying which point each registered attack among ``keys`` scores (the last iterate,
    any iterate, its best), for every table that lists attacks; "" when none is registered."""
    by: dict[str, list[str]] = {}
    for k in keys:
        a = attack_for_key(k)
        point = a.iterate if a is not None else "last" if K.parse(k).attack in ("fgsm", "pgd") else None
        if point is not None and k not in by.get(point, []):   # the protocol's PGD-k: its k-th iterate
            by.setdefault(point, []).append(k)
    parts = [f"{ITERATES[it]}: {', '.join(ks)}" for it, ks in by.items()]
    return ("Point scored (an image counts as broken at) " + "; ".join(parts) + ".") if parts else ""


def column_label(key: str) -> str:
    a = attack_for_key(key)
    return K.label(key) if a is None or a.claims else a.label


# ------------------------------------------------------- the built-in ones --
def _pgd_settings(s) -> dict:
    return {"steps": s.pgd_steps, "alpha": s.alpha, "random_start": s.random_start}


def _pgd_work(s, m, robust) -> float:
    return (s.pgd_steps * ATTACK_STEP + FORWARD) * m


def _routing(b: Batch) -> torch.Tensor:
    s, n = b.s, b.n_experts
    targets = [*range(n), "weakest"] if s.routing_targets is None else list(s.routing_targets)
    targets = [t for t in targets if t == "weakest" or int(t) < n]
    outs = [routing_attack(b.model, b.x, b.y, t if t == "weakest" else int(t), s.routing_lam, s.eps, s.alpha,
                           s.pgd_steps, s.random_start, generator=b.gen(100 + (n if t == "weakest" else int(t))))
            for t in targets]
    return torch.stack(outs).all(0)


def _transfer(b: Batch) -> torch.Tensor:
    s = b.s
    sources = expert_models(b.model) + [uniform_mixture(b.model)]
    outs = [transfer_attack(src, b.model, b.x, b.y, s.eps, s.alpha, s.pgd_steps, s.random_start,
                            generator=b.gen(200 + i)) for i, src in enumerate(sources)]
    return torch.stack(outs).all(0)


def _autoattack(b: Batch) -> torch.Tensor:
    s = b.s
    r = official.official_autoattack(b.model, b.x_all, b.y_all, eps=s.eps, version=s.aa_version, seed=b.aa_seed,
                                     batch_size=s.batch_size, budget=s.aa_budget())
    b.aa_tally.add(r)
    return r.correct


def _autoattack_work(s, m, robust) -> float:
    later = s.aa_iter * s.aa_targets * ATTACK_STEP * 3 + s.aa_queries * FORWARD   # APGD-T, FAB-T, Square
    return (FORWARD + s.aa_iter * ATTACK_STEP + robust * later) * m


register_attack(AdaptiveAttack(
    "pgd", "PGD-k", "PGD on the cross-entropy, one random start", key=lambda s: K.adaptive_pgd(s.pgd_steps),
    settings=lambda s, seed: {"attack": "PGD, cross-entropy (dwf_lab.attacks.pgd)", **_pgd_settings(s)},
    run=lambda b: b.pgd("ce", b.s.pgd_steps, 11), work=_pgd_work,
    claims=lambda k: K.parse(k).attack == "pgd-adaptive"))
register_attack(AdaptiveAttack(
    "pgd-dlr", "PGD-DLR", "PGD on the scale-free DLR loss (Croce & Hein 2020)", key=lambda s: "pgd-dlr",
    settings=lambda s, seed: {"attack": "PGD, DLR loss (dwf_lab.attacks.pgd)", **_pgd_settings(s)},
    run=lambda b: b.pgd("dlr", b.s.pgd_steps, 12), work=_pgd_work, enabled=lambda s: s.dlr))
register_attack(AdaptiveAttack(
    "routing", "routing", "PGD on CE(mixture) + lam * log w_target(x): pushes the gate's weight onto one "
    "expert (each target tried, per example the worst)", key=lambda s: "routing",
    settings=lambda s, seed: {"attack": "routing PGD (dwf_lab.attacks.gate)", **_pgd_settings(s), "lam": s.routing_lam,
                        "targets": "each expert and the weakest" if s.routing_targets is None
                        else list(s.routing_targets)},
    run=_routing, enabled=lambda s: s.routing, mixtures_only=True, iterate="any", family="router-aware",
    work=lambda s, m, robust: (len(s.routing_targets) if s.routing_targets is not None else m + 1)
    * _pgd_work(s, m, robust)))
register_attack(AdaptiveAttack(
    "transfer-best", "transfer", "PGD on each expert alone and on their uniform average, moved to the mixture "
    "(per example the worst)", key=lambda s: "transfer-best",
    settings=lambda s, seed: {"attack": "transfer PGD from each expert and their uniform average "
                                  "(dwf_lab.attacks.gate)", **_pgd_settings(s)},
    run=_transfer, enabled=lambda s: s.transfer, mixtures_only=True, family="expert-aware",
    work=lambda s, m, robust: 2 * m * s.pgd_steps * ATTACK_STEP + (m + 1) * FORWARD * m))
register_attack(AdaptiveAttack(
    "long", "PGD-L x R", "long PGD with random restarts; per example the worst restart",
    key=lambda s: K.long_pgd(s.long_steps, s.long_restarts),
    settings=lambda s, seed: {"attack": "PGD with restarts (dwf_lab.attacks.gate)", "steps": s.long_steps,
                        "restarts": s.long_restarts, "alpha": s.alpha},
    run=lambda b: long_pgd(b.model, b.x, b.y, b.s.eps, b.s.alpha, b.s.long_steps, b.s.long_restarts,
                           generator=b.gen(13)),
    work=lambda s, m, robust: s.long_restarts * (s.long_steps * ATTACK_STEP + FORWARD) * m,
    enabled=lambda s: s.long_steps > 0 and s.long_restarts > 0, claims=lambda k: K.parse(k).attack == "pgd-long"))
register_attack(AdaptiveAttack(
    "autoattack", "AutoAttack", "the official AutoAttack (Croce & Hein 2020), the authors' code",
    key=lambda s: "autoattack",
    settings=lambda s, seed: official.planned_settings(eps=s.eps, version=s.aa_version, seed=int(seed),
                                                      budget=s.aa_budget()), run=_autoattack, work=_autoattack_work,
    enabled=lambda s: s.autoattack, all_images=True, iterate="best"))
register_attack(AdaptiveAttack(
    "square", "Square", "ART's Square attack on every image (score-based: immune to gradient masking)",
    key=lambda s: "square",
    settings=lambda s, seed: {"attack": "Square (ART)", "queries": s.square_queries, "p_init": 0.8,
                        "adversarial-robustness-toolbox": art_suite.version()},
    run=lambda b: art_suite.square(b.model, b.x, b.y, b.s.eps, max_iter=b.s.square_queries,
                                   batch_size=b.s.batch_size, seed=b.aa_seed + 1),
    work=lambda s, m, robust: (FORWARD + robust * s.square_queries * FORWARD) * m,
    enabled=lambda s: s.square, iterate="any"))


# -------------------------------------------- made for a mixture's parts --
def _any_iterate_work(s, m, restarts: int = 1) -> float:
    """PGD-k scored at every iterate: a step and a forward of the model per step, per restart."""
    return restarts * (s.pgd_steps * (ATTACK_STEP + FORWARD) + FORWARD) * m


register_attack(AdaptiveAttack(
    "fixed-gate", "fixed gate", "PGD through the experts with the gate's weights held fixed in the backward "
    "pass (the forward is the true mixture); any iterate", key=lambda s: "fixed-gate",
    settings=lambda s, seed: {"attack": "PGD, CE, gate weights detached (dwf_lab.attacks.mixture_aware)",
                              **_pgd_settings(s)},
    run=lambda b: fixed_gate_pgd(b.model, b.x, b.y, b.s.eps, b.s.alpha, b.s.pgd_steps, generator=b.gen(400)),
    work=lambda s, m, robust: _any_iterate_work(s, m), enabled=lambda s: s.mixture_aware, mixtures_only=True,
    iterate="any", family="expert-aware"))
register_attack(AdaptiveAttack(
    "gated-margin", "gated margins", "PGD on the gate-weighted sum of the experts' CW margins; any iterate",
    key=lambda s: "gated-margin",
    settings=lambda s, seed: {"attack": "PGD on sum_i w_i(x) margin_i(x) (dwf_lab.attacks.mixture_aware)",
                              **_pgd_settings(s)},
    run=lambda b: gated_margin_pgd(b.model, b.x, b.y, b.s.eps, b.s.alpha, b.s.pgd_steps, generator=b.gen(410)),
    work=lambda s, m, robust: _any_iterate_work(s, m), enabled=lambda s: s.mixture_aware, mixtures_only=True,
    iterate="any", family="expert-aware"))


def _routing_targets(b: Batch) -> list:
    s, n = b.s, b.n_experts
    targets = [*range(n), "weakest"] if s.routing_targets is None else list(s.routing_targets)
    return [t for t in targets if t == "weakest" or int(t) < n]


register_attack(AdaptiveAttack(
    "routing-dlr", "routing (DLR, restarts)", "the routing attack on the DLR loss, lambda decaying to 0 over the "
    "steps, with random restarts (each target, per example the worst); any iterate", key=lambda s: "routing-dlr",
    settings=lambda s, seed: {"attack": "routing PGD, DLR, lambda schedule lam*(1 - t/(k-1)) "
                              "(dwf_lab.attacks.mixture_aware)", **_pgd_settings(s), "lam": s.routing_lam,
                              "restarts": s.routing_restarts,
                              "targets": "each expert and the weakest" if s.routing_targets is None
                              else list(s.routing_targets)},
    run=lambda b: routing_restarts(b.model, b.x, b.y, _routing_targets(b), b.s.routing_lam, b.s.eps, b.s.alpha,
                                   b.s.pgd_steps, b.s.routing_restarts, generator=b.gen(420)),
    work=lambda s, m, robust: (len(s.routing_targets) if s.routing_targets is not None else m + 1)
    * _any_iterate_work(s, m, s.routing_restarts),
    enabled=lambda s: s.mixture_aware and s.routing_restarts > 0, mixtures_only=True, iterate="any",
    family="router-aware"))
register_attack(AdaptiveAttack(
    "soe-transfer", "SoE transfer", "PGD on each SoE expert alone and on its soft selection, judged by SoE "
    "(per example the worst); any iterate", key=lambda s: "soe-transfer",
    settings=lambda s, seed: {"attack": "transfer PGD from each SoE expert and the soft selection "
                              "(dwf_lab.attacks.mixture_aware)", **_pgd_settings(s)},
    run=lambda b: soe_transfer(b.model, b.x, b.y, b.s.eps, b.s.alpha, b.s.pgd_steps, generator=b.gen(430)),
    work=lambda s, m, robust: s.pgd_steps * (2 * m * ATTACK_STEP + (m + 1) * m * FORWARD) + 2 * m * FORWARD,
    enabled=lambda s: s.mixture_aware, models=("soe",), iterate="any", family="expert-aware", mode_free=True))
register_attack(AdaptiveAttack(
    "route-fixed", "route fixed", "PGD on ADVMoE with its route frozen at the clean image's selection, and with "
    "the router detached (per example the worst); any iterate", key=lambda s: "route-fixed",
    settings=lambda s, seed: {"attack": "PGD, CE, route frozen / router detached (dwf_lab.attacks.mixture_aware)",
                              **_pgd_settings(s)},
    run=lambda b: route_fixed_pgd(b.model, b.x, b.y, b.s.eps, b.s.alpha, b.s.pgd_steps, generator=b.gen(440)),
    work=lambda s, m, robust: 2 * _any_iterate_work(s, m), enabled=lambda s: s.mixture_aware,
    models=("advmoe",), iterate="any", family="router-aware"))
