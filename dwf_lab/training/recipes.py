"""What each kind of stage trains on: the paper's recipes and the baselines', one registry.

What each kind trains on, per batch (x, y):

| kind      | inputs                                                          | paper        |
|-----------|-----------------------------------------------------------------|--------------|
| benign    | x                                                               | benign expert|
| fgsm      | FGSM(x; eps ~ U{0.01..0.09})                                    | Algorithm 1  |
| pgd       | PGD(x; eps 8/255, alpha 2/255, steps ~ U{10..50})                | Algorithm 2  |
| fgsm_at   | half FGSM(eps 0.03), half clean                                 | baseline     |
| pgd_at    | half PGD-10, half clean                                         | baseline     |
| gate      | concat(x, FGSM, PGD) against the mixture, experts frozen        | Table 5 gate |
| mixture   | concat(x, FGSM, PGD) against the whole mixture, all trained     | Algorithm 3  |

``soe`` and ``advmoe`` add their own losses (:func:`soe_loss`; TRADES, :func:`advmoe_loss`),
the ablations ``mixture_adv_only``. Attacks are generated with the model in eval mode
(BatchNorm running statistics; docs/paper-notes.md, gap 6), then the update runs in train mode.
"""
import inspect
import statistics
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from dwf_lab import attacks
from dwf_lab.core.config import Profile, pixel_fraction
from dwf_lab.core.work import ATTACK_STEP, FORWARD
from dwf_lab.mixture.advmoe import ADVMoE
from dwf_lab.mixture.soe import SoE

ADVMOE_ATTACK_STEPS = inspect.signature(ADVMoE.__init__).parameters["attack_steps"].default

# ------------------------------------------------------- what to train on --
BatchFn = Callable[..., tuple[torch.Tensor, torch.Tensor]]
RecipeLoss = Callable[[nn.Module, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]

# what a recipe trains, and how many ResNet-18s that runs per image (its networks)
MODELS: dict[str, Callable[[Profile], int]] = {
    "expert": lambda p: 1,               # one ResNet-18 (dwf_lab.training.builders.expert_arch)
    "mixture": lambda p: p.n_experts,    # DWF's gated mixture of the run's experts
    "soe": lambda p: 3,                  # the SoE baseline's three experts
    "advmoe": lambda p: 2,               # the ADVMoE baseline's two experts
}


@dataclass(frozen=True)
class Recipe:
    """How one kind of stage trains, and everything else the kit says about that kind.

    ``make_batch(model, x, y, p, gen, gen_dev) -> (inputs, labels)`` runs with the model in
    whatever mode; attacks put it in eval mode themselves. ``loss(model, inputs, labels) ->
    (loss, logits)`` runs in train mode; the default is cross-entropy on the model's logits.
    ``model``: what it trains (a key of :data:`MODELS`). ``passes(p)``: training passes per clean
    image and network (:mod:`dwf_lab.core.work`; None: no cost model, the banner says so).
    ``label``: (one, many) for the banner; ``card``: the model card's sentence; ``attacks(p)``:
    its training attacks in words, from the run's settings. ``group``: the selection that names
    it ("experts", "baselines", "mixture"); ``key``: evaluated with the protocol's long PGD
    columns; ``gate_only``: trains the gate of a mixture, never evaluated on its own.
    """
    kind: str
    make_batch: BatchFn
    loss: RecipeLoss | None = None
    gate_only: bool = False
    model: str = "expert"
    passes: Callable[[Profile], float] | None = None
    label: tuple[str, str] | None = None
    card: str = ""
    attacks: Callable[[Profile], str] | None = None
    group: str | None = None
    key: bool = False

    def networks(self, p: Profile) -> int:
        """ResNet-18s this recipe's model runs per image."""
        return MODELS[self.model](p)

    def labels(self, n: int) -> str:
        one, many = self.label or (self.kind, self.kind)
        return one if n == 1 else f"{n} {many}"

    def training_attacks(self, p: Profile) -> str:
        return self.attacks(p) if self.attacks else "see the run's config.json"


RECIPES: dict[str, Recipe] = {}


def register_recipe(kind: str, make_batch: BatchFn, loss: RecipeLoss | None = None,
                    gate_only: bool = False, **about) -> Recipe:
    """Register a training kind (one line per recipe): ``about`` takes :class:`Recipe`'s other fields."""
    if about.get("model", "expert") not in MODELS:
        raise ValueError(f"recipe {kind!r}: model must be one of {', '.join(MODELS)}, got {about['model']!r}")
    RECIPES[kind] = Recipe(kind, make_batch, loss, gate_only, **about)
    return RECIPES[kind]


def kinds(group: str | None = None, *, model: str | None = None) -> tuple[str, ...]:
    """The registered kinds of a selection group and/or a model, in registration order."""
    return tuple(k for k, r in RECIPES.items()
                 if (group is None or r.group == group) and (model is None or r.model == model))


def _choices(values) -> str:
    return "{" + ", ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in values) + "}"


def _pgd_words(p: Profile) -> str:
    return (f"PGD at eps {pixel_fraction(p.pgd_eps)}, step {pixel_fraction(p.pgd_alpha)}, "
            f"{'random start' if p.random_start else 'no random start'}")


def _pgd_passes(p: Profile) -> float:
    """A PGD step of the recipe's iteration draw, on average (Algorithm 2's U{10..50})."""
    return statistics.mean(p.pgd_steps_choices) * ATTACK_STEP


def _fgsm(model, x, y, eps):
    return attacks.fgsm(model, x, y, eps, check=False)


def _pgd(model, x, y, p: Profile, steps, gen_dev):
    return attacks.pgd(model, x, y, p.pgd_eps, p.pgd_alpha, steps, p.random_start,
                       generator=gen_dev, check=False)


def benign_batch(model, x, y, p, gen, gen_dev):
    return x, y


def fgsm_expert_batch(model, x, y, p, gen, gen_dev):              # Algorithm 1
    return _fgsm(model, x, y, attacks.pick(p.fgsm_eps_choices, gen)), y


def pgd_expert_batch(model, x, y, p, gen, gen_dev):               # Algorithm 2
    return _pgd(model, x, y, p, attacks.pick(p.pgd_steps_choices, gen), gen_dev), y


def _half_adversarial(attack):
    def make(model, x, y, p, gen, gen_dev):                  # FGSM-AT / PGD-AT baselines
        h = int(round(len(x) * p.at_adv_fraction))
        return torch.cat([attack(model, x[:h], y[:h], p, gen_dev), x[h:]]), y
    return make


def mixed_batch(model, x, y, p, gen, gen_dev):              # Algorithm 3
    x_f = _fgsm(model, x, y, attacks.pick(p.fgsm_eps_choices, gen))
    x_p = _pgd(model, x, y, p, attacks.pick(p.pgd_steps_choices, gen), gen_dev)
    return torch.cat([x, x_f, x_p]), torch.cat([y, y, y])


register_recipe(
    "benign", benign_batch, passes=lambda p: 1.0, group="experts", key=True,
    label=("the benign expert", "benign experts"),
    card="standard training on clean images (the benign expert; also the plain ResNet-18 row)",
    attacks=lambda p: "none (clean images only)")
register_recipe(
    "fgsm", fgsm_expert_batch, passes=lambda p: ATTACK_STEP + 1, group="experts",
    label=("FGSM expert", "FGSM experts"),
    card="FGSM adversarial training, the FGSM expert of Algorithm 1: each batch is replaced by its FGSM "
         "images at an eps drawn from the choices below",
    attacks=lambda p: f"FGSM eps from {_choices(p.fgsm_eps_choices)}")
register_recipe(
    "pgd", pgd_expert_batch, passes=lambda p: _pgd_passes(p) + 1, group="experts",
    label=("PGD expert", "PGD experts"),
    card="PGD adversarial training, the PGD expert of Algorithm 2: each batch is replaced by its PGD images, "
         "the number of iterations drawn from the choices below",
    attacks=lambda p: f"{_pgd_words(p)}, iterations from {_choices(p.pgd_steps_choices)}")
register_recipe(
    "fgsm_at", _half_adversarial(lambda m, x, y, p, g: _fgsm(m, x, y, p.fgsm_at_eps)),
    passes=lambda p: p.at_adv_fraction * ATTACK_STEP + 1, group="baselines", key=True,
    label=("the FGSM-AT baseline", "FGSM-AT baselines"),
    card="FGSM adversarial training baseline: part of each batch replaced by its FGSM images",
    attacks=lambda p: f"FGSM at eps {p.fgsm_at_eps:g} on {p.at_adv_fraction:.0%} of each batch")
register_recipe(
    "pgd_at", _half_adversarial(lambda m, x, y, p, g: _pgd(m, x, y, p, p.pgd_at_steps, g)),
    passes=lambda p: p.at_adv_fraction * p.pgd_at_steps * ATTACK_STEP + 1, group="baselines", key=True,
    label=("the PGD-AT baseline", "PGD-AT baselines"),
    card="PGD adversarial training baseline (Madry et al.): part of each batch replaced by its PGD images",
    attacks=lambda p: f"{_pgd_words(p)}, {p.pgd_at_steps} iterations, on {p.at_adv_fraction:.0%} of each batch")
_MIXED_ATTACKS = dict(attacks=lambda p: f"FGSM eps from {_choices(p.fgsm_eps_choices)}; {_pgd_words(p)}, "
                                        f"iterations from {_choices(p.pgd_steps_choices)}")
register_recipe(
    "gate", mixed_batch, gate_only=True, model="mixture", group="mixture",
    passes=lambda p: ATTACK_STEP + _pgd_passes(p) + 3 * FORWARD,      # experts frozen: forward only
    label=("the gate-only phase", "gate phases"),
    card="the gate alone on clean + FGSM + PGD batches, the trained experts frozen", **_MIXED_ATTACKS)
register_recipe(
    "mixture", mixed_batch, model="mixture", group="mixture", key=True,
    passes=lambda p: ATTACK_STEP + _pgd_passes(p) + 3,                # FGSM + PGD, trained on 3x
    label=("the mixture (Algorithm 3)", "mixtures"),
    card="end to end on clean + FGSM + PGD batches made against the whole mixture, gate and experts "
         "trained together (Algorithm 3)", **_MIXED_ATTACKS)


def recipe(kind: str) -> Recipe:
    if kind not in RECIPES:
        raise ValueError(f"unknown training kind {kind!r}; known: {sorted(RECIPES)}")
    return RECIPES[kind]


def default_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor):
    logits = model(x)
    return F.cross_entropy(logits.float(), y), logits


def _bce(p: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy on probabilities, fp32 and autocast-safe."""
    p = p.float().clamp(1e-7, 1 - 1e-7)
    t = target.float()
    return -(t * p.log() + (1 - t) * (1 - p).log())


def soe_half_loss(model: SoE, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The public code's "loss_base" objective on one batch; returns (loss, selected logits).

    Per expert i (logits z_i, aux output a_i):

    - conf_i = max softmax(z_i), detached where expert i is right (the
      *rectified* confidence: only wrong experts' confidences are pushed);
    - r_i = conf_i * sigmoid(a_i); target t_i = softmax(true_temp * z_i)[y], detached;
    - aux = mean_i BCE(r_i, t_i);
    - loss = mean_b sum_i softmax_i(temp_c * r).detach() * CE(z_i, y) + aux_weight * aux.
    """
    z, a = model.expert_outputs(x)
    zf = z.float()
    b, n, c = zf.shape
    conf = torch.softmax(zf, -1).amax(-1)
    right = zf.argmax(-1) == y[:, None]
    conf = torch.where(right, conf.detach(), conf)
    r = conf * torch.sigmoid(a.float())
    target = torch.softmax(zf * model.true_temp, -1).gather(
        -1, y[:, None, None].expand(b, n, 1)).squeeze(-1).detach()
    aux = _bce(r, target).mean()
    ce = F.cross_entropy(zf.reshape(b * n, c), y.repeat_interleave(n), reduction="none").view(b, n)
    w = torch.softmax(r.detach() * model.temp_c, dim=1)
    loss = (w * ce).sum(1).mean() + model.aux_weight * aux
    with torch.no_grad():
        sel, _ = model.combine(z.detach(), model.scores(z.detach(), a.detach()), "hard")
    return loss, sel


def soe_loss(model: SoE, inputs: torch.Tensor, labels: torch.Tensor):
    """Clean half + adversarial half, each its own forward pass (own BatchNorm batch), losses summed."""
    h = len(inputs) // 2
    l_clean, s_clean = soe_half_loss(model, inputs[:h], labels[:h])
    l_adv, s_adv = soe_half_loss(model, inputs[h:], labels[h:])
    return l_clean + l_adv, torch.cat([s_clean, s_adv])


def soe_batch(model: SoE, x, y, p, gen, gen_dev):
    """concat(x, PGD(x)): PGD (eps p.pgd_eps, step p.pgd_alpha, p.pgd_at_steps steps) on the hard model."""
    with model.selection_mode("hard"):
        x_adv = attacks.pgd(model, x, y, p.pgd_eps, p.pgd_alpha, p.pgd_at_steps, p.random_start,
                            generator=gen_dev, check=False)
    return torch.cat([x, x_adv]), torch.cat([y, y])


register_recipe(
    "soe", soe_batch, soe_loss, model="soe", key=True,
    passes=lambda p: p.pgd_at_steps * ATTACK_STEP + 2, label=("SoE", "SoE"),
    card="SoE baseline: clean half and PGD half, each its own forward pass, the hard expert selection",
    attacks=lambda p: f"{_pgd_words(p)}, {p.pgd_at_steps} iterations, against the hard model")


def kl_rows(logits_p: torch.Tensor, logits_q: torch.Tensor) -> torch.Tensor:
    """Per-example KL(softmax(p) || softmax(q)), in fp32; exactly 0 where p == q."""
    lp, lq = F.log_softmax(logits_p.float(), 1), F.log_softmax(logits_q.float(), 1)
    return (lp.exp() * (lp - lq)).sum(1)


def trades_loss(logits_nat: torch.Tensor, logits_adv: torch.Tensor, y: torch.Tensor,
                beta: float = 6.0) -> torch.Tensor:
    """TRADES: CE(f(x), y) + beta * mean_b KL(f(x) || f(x_adv)); gradient through both terms."""
    return F.cross_entropy(logits_nat.float(), y) + beta * kl_rows(logits_nat, logits_adv).mean()


def trades_adversary(model: ADVMoE, x: torch.Tensor, eps: float, alpha: float, steps: int,
                     generator: torch.Generator | None = None, router_kl: bool = False) -> torch.Tensor:
    """x_adv maximising KL(f(x) || f(x_adv)) (+ the router's KL if ``router_kl``) by signed steps.

    Starts at x + 0.001 N(0, 1), as TRADES; eval mode, no parameter gradients.
    """
    x = x.detach()
    with attacks.attack_mode(model):
        with torch.no_grad():
            nat = model(x).float()
            s_nat = model.router_scores(x) if router_kl else None
        noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        x_adv = (x + 0.001 * noise).clamp_(0, 1)

        def kl(m, xg, _y):
            loss = kl_rows(nat, m(xg))
            return loss + kl_rows(s_nat, m.router_scores(xg)) if router_kl else loss
        for x_adv in attacks.pgd_iterates(model, x, None, eps, alpha, steps, loss=kl, start=x_adv):
            pass
    return x_adv.detach()


def advmoe_batch(model: ADVMoE, x, y, p, gen, gen_dev):
    """concat(x, x_adv) with the TRADES adversary (eps p.pgd_eps, the model's steps and step size)."""
    x_adv = trades_adversary(model, x, p.pgd_eps, model.attack_alpha, model.attack_steps, gen_dev,
                             router_kl=model.router_loss == "code")
    return torch.cat([x, x_adv]), torch.cat([y, y])


def gradient_only_to(loss: torch.Tensor, params) -> torch.Tensor:
    """A loss with the same value whose backward reaches ``params`` only (others keep grad None).

    SGD skips parameters whose gradient is None (no step, no weight decay, no
    momentum update), so this expresses "update these, keep the rest fixed"
    inside the kit's one-optimizer loop.
    """
    params = [q for q in params if q.requires_grad]
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    sur = [(q * g.detach()).sum() for q, g in zip(params, grads) if g is not None]
    if not sur:
        return loss.detach().requires_grad_(True)
    s = torch.stack(sur).sum()
    return loss.detach() + s - s.detach()


def _router_objective(model: ADVMoE, x, x_adv, y):
    if model.router_loss == "trades":
        nat, adv = model(x).float(), model(x_adv).float()
        return trades_loss(nat, adv, y, model.beta), torch.cat([nat, adv]).detach()
    s, s_adv = model.router_scores(x), model.router_scores(x_adv)
    loss = F.cross_entropy(s, y % model.n_experts) + model.router_alpha * kl_rows(s, s_adv).mean()
    with torch.no_grad():
        logits = torch.cat([model(x), model(x_adv)]).float()
    return loss, logits


def advmoe_loss(model: ADVMoE, inputs: torch.Tensor, labels: torch.Tensor):
    """One ADVMoE update; which parameters it moves alternates with the global step.

    - even steps, "experts": TRADES(f(x), f(x_adv), y) with the router's scores
      detached, so only backbone/expert weights get gradients;
    - odd steps, "router": the router objective with every other gradient
      masked (:func:`gradient_only_to`): ``router_loss="trades"`` is the same
      TRADES loss through the straight-through masks (the paper's bi-level
      reading); ``"code"`` is the public code's CE(router(x), y mod n) +
      router_alpha * KL(router(x) || router(x_adv));
    - ``alternation="simultaneous"``: both in every step, from the same x_adv
      and the same parameters (with ``router_loss="trades"`` that is one joint
      TRADES step through the straight-through routing).
    """
    h = len(inputs) // 2
    x, x_adv, y = inputs[:h], inputs[h:], labels[:h]
    phase = model.next_phase()
    if phase == "both" and model.router_loss == "trades":
        # both parts descend the same loss from the same parameters: one joint backward
        # gives exactly the two masked gradients, at the cost of one
        nat, adv = model(x).float(), model(x_adv).float()
        return trades_loss(nat, adv, y, model.beta), torch.cat([nat, adv]).detach()
    total, logits = None, None
    if phase in ("experts", "both"):
        with model.router_detached():
            nat, adv = model(x).float(), model(x_adv).float()
        total = trades_loss(nat, adv, y, model.beta)
        logits = torch.cat([nat, adv]).detach()
    if phase in ("router", "both"):
        loss_r, logits_r = _router_objective(model, x, x_adv, y)
        loss_r = gradient_only_to(loss_r, model.router.parameters())
        total = loss_r if total is None else total + loss_r
        logits = logits_r if logits is None else logits
    return total, logits


register_recipe(
    "advmoe", advmoe_batch, advmoe_loss, model="advmoe", key=True,
    passes=lambda p: ADVMOE_ATTACK_STEPS * ATTACK_STEP + FORWARD + 2, label=("ADVMoE", "ADVMoE"),
    card="ADVMoE baseline: TRADES with the router and experts updated in turn",
    attacks=lambda p: f"TRADES adversary at eps {pixel_fraction(p.pgd_eps)}")


FIXED_FGSM_EPS = 0.05   # the mean of {0.01, ..., 0.09}


# ------------------------------------------------------------------ recipe --
def _adv_only_batch(model, x, y, p, gen, gen_dev):
    """concat(FGSM, PGD) against the mixture: Algorithm 3 without the clean third.

    Built from the mixed batch itself, so the attack draws are exactly those of
    the reference at every step.
    """
    xin, yin = mixed_batch(model, x, y, p, gen, gen_dev)
    return xin[len(x):], yin[len(x):]


register_recipe(
    "mixture_adv_only", _adv_only_batch, model="mixture",
    passes=lambda p: ATTACK_STEP + _pgd_passes(p) + 2, label=("the mixture without clean images", "mixtures"),
    card="Algorithm 3 without the clean third: FGSM + PGD batches against the whole mixture",
    **_MIXED_ATTACKS)
