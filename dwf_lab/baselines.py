"""The two MoE peers of Tables 2-3 (SoE, ADVMoE) and the gate-less uniform ensemble.

Every model here takes images in [0, 1] and normalizes inside, like the rest
of the kit, and is registered by name so a checkpoint rebuilds it:

``soe`` -- Synergy-of-Experts (Cui et al., NeurIPS 2022; ``cuis15/synergy-of-experts``)
    ``n_experts`` (default 3) CIFAR ResNet-18s, each with an auxiliary head
    (one linear unit on the pooled features, the public code's "simple" PPD)
    that predicts a *rectified confidence*. Per input, the expert with the
    largest ``max softmax(z_i) * sigmoid(a_i)`` answers alone (hard argmax).
    ``selection`` picks how the argmax looks to an attacker:
    ``"hard"`` (the published model: index detached, the gradient is the
    chosen expert's), ``"soft"`` (a softmax over the selection scores at
    ``temperature``, a *different* model) and ``"bpda"`` (forward value of the
    hard model, backward of the soft one -- the relaxed model's gradient
    transferred to the hard one). :func:`evaluate_soe` attacks with both
    ``"hard"`` and ``"bpda"`` gradients and keeps the per-example worst case.
    Recipe ``"soe"``: PGD against the hard model, loss on clean + adversarial
    halves (see :func:`soe_loss`).

``advmoe`` -- ADVMoE / robust MoE-CNN (Zhang et al., ICCV 2023; ``OPTML-Group/Robust-MoE-CNN``)
    A CIFAR ResNet-18 whose block convolutions are :class:`MoEConv2d`: one
    wide convolution with ``n_experts`` groups of output channels, one group
    kept per input by a hard top-1 mask with a straight-through gradient. One
    small ResNet-20-like router on the normalized image scores the experts;
    its scores are shared by every MoE layer. Recipe ``"advmoe"``: TRADES
    (2-step PGD on the KL, beta 6), alternating expert and router updates (see
    :func:`advmoe_loss`).

``dwf_mixture_st`` -- the DWF mixture with *straight-through* hard top-k routing
    (forward: the renormalised top-k weights of ``routing="topk"``; backward:
    the soft-max weights' gradient). ``routing="topk", k=1`` in
    :mod:`dwf_lab.moe` gives the gate *no* gradient at all (the single kept
    weight is renormalised to the constant 1), so the ablations use this one.

:func:`uniform_ensemble` averages a run's trained experts without a gate.
Every choice where the papers or their code are ambiguous is listed in
``docs/baselines.md``.
"""
from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from dwf_lab import attacks
from dwf_lab.models import Normalize, normalization_for, register, resnet18
from dwf_lab.moe import Gate, MixtureOfExperts
from dwf_lab.train import register_recipe

# ======================================================================= SoE ==
SOE_SELECTIONS = ("hard", "soft", "bpda")


class SoEExpert(nn.Module):
    """A CIFAR ResNet-18 plus a one-unit auxiliary head on its pooled features.

    The backbone's state dict is a plain ``resnet18``'s under ``net.``, so a
    trained kit expert can be loaded into it.
    """

    def __init__(self, num_classes: int = 10, width: float = 1.0, in_channels: int = 3,
                 dataset: str = "cifar10"):
        super().__init__()
        self.net = resnet18(num_classes, width, in_channels, dataset)
        self.aux = nn.Linear(self.net.linear.in_features, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n = self.net
        out = F.relu(n.bn1(n.conv1(n.normalize(x))))
        out = n.layer4(n.layer3(n.layer2(n.layer1(out))))
        feat = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return n.linear(feat), self.aux(feat).squeeze(1)


@dataclass
class SoEOutput:
    logits: torch.Tensor         # (B, C) the selected (or relaxed) output
    expert_logits: torch.Tensor  # (B, n, C)
    aux: torch.Tensor            # (B, n) auxiliary head outputs (pre-sigmoid)
    scores: torch.Tensor         # (B, n) max softmax(temp_c * z) * sigmoid(aux)
    selected: torch.Tensor       # (B,) index of the expert that answers (hard argmax)


class SoE(nn.Module):
    """Synergy-of-Experts: one expert answers per input, picked by its rectified confidence."""

    # the gradients an evaluation must try: its own (blind to the selection) and BPDA's
    gradient_modes = ("hard", "bpda")

    def __init__(self, experts, selection: str = "hard", temperature: float = 0.1,
                 temp_c: float = 1.0, true_temp: float = 1.0, aux_weight: float = 1.0):
        super().__init__()
        if selection not in SOE_SELECTIONS:
            raise ValueError(f"selection must be one of {SOE_SELECTIONS}, got {selection!r}")
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.experts = nn.ModuleList(experts)
        self.selection = selection
        self.temperature = float(temperature)   # of the soft / BPDA relaxation
        self.temp_c = float(temp_c)             # tempC of the public code (confidence temperature)
        self.true_temp = float(true_temp)       # tempC_trueonly (the aux head's target)
        self.aux_weight = float(aux_weight)     # adaptivetrainlambda

    @property
    def n_experts(self) -> int:
        return len(self.experts)

    def expert_outputs(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        outs = [e(x) for e in self.experts]
        return torch.stack([o[0] for o in outs], 1), torch.stack([o[1] for o in outs], 1)

    def scores(self, z: torch.Tensor, aux: torch.Tensor) -> torch.Tensor:
        conf = torch.softmax(z.float() * self.temp_c, dim=-1).amax(-1)
        return conf * torch.sigmoid(aux.float())

    def combine(self, z: torch.Tensor, scores: torch.Tensor, selection: str | None = None):
        selection = selection or self.selection
        idx = scores.argmax(1)                     # an index: no gradient through the choice
        hard = z[torch.arange(len(z), device=z.device), idx]
        if selection == "hard":
            return hard, idx
        w = torch.softmax(scores / self.temperature, dim=1)
        soft = torch.einsum("bn,bnc->bc", w.to(z.dtype), z)
        if selection == "soft":
            return soft, idx
        return hard + (soft - soft.detach()), idx  # BPDA: hard forward, soft backward

    def forward_details(self, x: torch.Tensor) -> SoEOutput:
        z, a = self.expert_outputs(x)
        s = self.scores(z, a)
        y, idx = self.combine(z, s)
        return SoEOutput(y, z, a, s, idx)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_details(x).logits

    @contextlib.contextmanager
    def selection_mode(self, selection: str):
        if selection not in SOE_SELECTIONS:
            raise ValueError(f"selection must be one of {SOE_SELECTIONS}, got {selection!r}")
        old, self.selection = self.selection, selection
        try:
            yield self
        finally:
            self.selection = old


@register("soe")
def soe(n_experts: int = 3, num_classes: int = 10, width: float = 1.0, in_channels: int = 3,
        dataset: str = "cifar10", selection: str = "hard", temperature: float = 0.1,
        temp_c: float = 1.0, true_temp: float = 1.0, aux_weight: float = 1.0) -> SoE:
    if n_experts < 1:
        raise ValueError(f"n_experts must be >= 1, got {n_experts}")
    experts = [SoEExpert(num_classes, width, in_channels, dataset) for _ in range(n_experts)]
    return SoE(experts, selection, temperature, temp_c, true_temp, aux_weight)


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


register_recipe("soe", soe_batch, soe_loss)


# ==================================================================== ADVMoE ==
def straight_through_top1(scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(index, mask): the mask's value is one-hot(argmax); its gradient passes to ``scores`` unchanged.

    This is the public code's ``GetMask`` (backward returns the incoming gradient).
    """
    idx = scores.argmax(1)
    hard = F.one_hot(idx, scores.shape[1]).to(scores.dtype)
    return idx, hard + scores - scores.detach()


class MoEConv2d(nn.Conv2d):
    """One conv with ``n_experts * out_channels`` outputs; per input, one group of ``out_channels`` is kept.

    ``forward(x, route)`` with ``route = (idx, mask)`` from :func:`straight_through_top1`:
    the kept group is multiplied by its mask entry (value 1), so the router
    receives ``<dL/dy, y>`` for the chosen expert, as in the public code.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 padding: int = 0, n_experts: int = 2):
        super().__init__(in_channels, out_channels * n_experts, kernel_size, stride, padding, bias=False)
        self.n_experts = n_experts
        self.expert_width = out_channels

    def forward(self, x: torch.Tensor, route=None) -> torch.Tensor:
        out = super().forward(x)
        if self.n_experts == 1:
            return out
        idx, mask = route
        out = out.unflatten(1, (self.n_experts, self.expert_width))
        sel = out[torch.arange(len(out), device=out.device), idx]
        gate = mask.gather(1, idx[:, None]).to(sel.dtype)
        return sel * gate[:, :, None, None]


class MoEBasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int, n_experts: int):
        super().__init__()
        self.conv1 = MoEConv2d(in_planes, planes, 3, stride, 1, n_experts)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = MoEConv2d(planes, planes, 3, 1, 1, n_experts)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride, bias=False),
                                          nn.BatchNorm2d(planes))

    def forward(self, x, route):
        out = F.relu(self.bn1(self.conv1(x, route)))
        out = self.bn2(self.conv2(out, route))
        return F.relu(out + self.shortcut(x))


class _RouterBlock(nn.Module):
    """ResNet-20 basic block with the parameter-free "option A" shortcut (as the public router)."""

    def __init__(self, in_planes: int, planes: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.stride, self.pad = stride, planes - in_planes

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        sc = x
        if self.stride != 1 or self.pad:
            sc = F.pad(x[:, :, ::self.stride, ::self.stride],
                       (0, 0, 0, 0, self.pad // 2, self.pad - self.pad // 2))
        return F.relu(out + sc)


class Router(nn.Module):
    """ResNet-(6n+2)-like CNN (n = ``blocks``; 3 = ResNet-20) with a linear head to ``n_experts`` scores.

    Takes the *normalized* image (the MoE model normalizes first).
    """

    def __init__(self, n_experts: int, in_channels: int = 3, width: float = 1.0, blocks: int = 3):
        super().__init__()
        planes = [max(2, int(round(c * width))) for c in (16, 32, 64)]
        self.conv1 = nn.Conv2d(in_channels, planes[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes[0])
        layers, inp = [], planes[0]
        for i, pl in enumerate(planes):
            for j in range(blocks):
                layers.append(_RouterBlock(inp, pl, 2 if (i > 0 and j == 0) else 1))
                inp = pl
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(inp, n_experts)

    def forward(self, x):
        out = self.layers(F.relu(self.bn1(self.conv1(x))))
        return self.fc(F.adaptive_avg_pool2d(out, 1).flatten(1))


ALTERNATIONS = ("alternate", "simultaneous")
ROUTER_LOSSES = ("trades", "code")


class ADVMoE(nn.Module):
    """ResNet-18 with MoE convolutions in the blocks of ``moe_layers`` and one shared router."""

    def __init__(self, n_experts: int = 2, num_classes: int = 10, width: float = 1.0,
                 ratio: float = 1.0, in_channels: int = 3, dataset: str = "cifar10",
                 router_width: float | None = None, router_blocks: int = 3,
                 moe_layers=(1, 2, 3, 4), beta: float = 6.0, attack_steps: int = 2,
                 attack_alpha: float = 5 / 255, router_loss: str = "trades", router_alpha: float = 6.0,
                 alternation: str = "alternate"):
        super().__init__()
        if n_experts < 1:
            raise ValueError(f"n_experts must be >= 1, got {n_experts}")
        if router_loss not in ROUTER_LOSSES:
            raise ValueError(f"router_loss must be one of {ROUTER_LOSSES}, got {router_loss!r}")
        if alternation not in ALTERNATIONS:
            raise ValueError(f"alternation must be one of {ALTERNATIONS}, got {alternation!r}")
        mean, std = normalization_for(dataset)
        if len(mean) != in_channels:
            raise ValueError(f"dataset {dataset!r} has {len(mean)} channel(s), but in_channels={in_channels}")
        self.n_experts = n_experts
        self.beta, self.attack_steps, self.attack_alpha = float(beta), int(attack_steps), float(attack_alpha)
        self.router_loss, self.router_alpha, self.alternation = router_loss, float(router_alpha), alternation
        self.moe_layers = tuple(int(i) for i in moe_layers)
        self.normalize = Normalize(mean, std)
        self.router = Router(n_experts, in_channels, width if router_width is None else router_width,
                             router_blocks)
        stem = max(1, int(round(64 * width)))
        self.conv1 = nn.Conv2d(in_channels, stem, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(stem)
        blocks, inp = [], stem
        for i, p in enumerate((64, 128, 256, 512)):
            pl = max(1, int(round(p * width * ratio)))
            n = n_experts if (i + 1) in self.moe_layers else 1
            for j in range(2):
                blocks.append(MoEBasicBlock(inp, pl, 2 if (i > 0 and j == 0) else 1, n))
                inp = pl
        self.blocks = nn.ModuleList(blocks)
        self.linear = nn.Linear(inp, num_classes)
        # global training-step counter: its parity picks the expert or the router update
        self.register_buffer("train_steps", torch.zeros((), dtype=torch.long))
        self._detach_router = False
        self.last_selection: torch.Tensor | None = None

    def router_scores(self, x: torch.Tensor) -> torch.Tensor:
        return self.router(self.normalize(x)).float()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xn = self.normalize(x)
        scores = self.router(xn).float()
        if self._detach_router:
            scores = scores.detach()
        route = straight_through_top1(scores)
        self.last_selection = route[0].detach()
        out = F.relu(self.bn1(self.conv1(xn)))
        for b in self.blocks:
            out = b(out, route)
        return self.linear(F.adaptive_avg_pool2d(out, 1).flatten(1))

    def selection(self, x: torch.Tensor) -> torch.Tensor:
        """Which expert group each input is routed to (the same for every MoE layer)."""
        with torch.no_grad():
            return self.router_scores(x).argmax(1)

    @contextlib.contextmanager
    def router_detached(self):
        old, self._detach_router = self._detach_router, True
        try:
            yield self
        finally:
            self._detach_router = old

    def next_phase(self) -> str:
        """'experts', 'router' (alternating on the global step) or 'both'; advances the counter."""
        s = int(self.train_steps)
        self.train_steps += 1
        if self.alternation == "simultaneous":
            return "both"
        return "experts" if s % 2 == 0 else "router"


@register("advmoe")
def advmoe(n_experts: int = 2, num_classes: int = 10, width: float = 1.0, in_channels: int = 3,
           dataset: str = "cifar10", **kw) -> ADVMoE:
    return ADVMoE(n_experts, num_classes, width, in_channels=in_channels, dataset=dataset, **kw)


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
        for _ in range(steps):
            xg = x_adv.detach().requires_grad_(True)
            with torch.enable_grad():
                loss = kl_rows(nat, model(xg)).sum()
                if router_kl:
                    loss = loss + kl_rows(s_nat, model.router_scores(xg)).sum()
                (g,) = torch.autograd.grad(loss, xg)
            x_adv = attacks.project(x_adv + alpha * g.sign(), x, eps)
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


register_recipe("advmoe", advmoe_batch, advmoe_loss)


# ============================================ straight-through top-k mixture ==
class StraightThroughMixture(MixtureOfExperts):
    """``routing="topk"`` whose forward keeps k experts and whose backward is the soft gate's.

    Forward: the renormalised top-k weights (identical to :class:`MixtureOfExperts`).
    Backward: the gradient of the full softmax weights (straight-through), so
    the gate still learns (and an attacker still sees it) with k = 1.
    """

    def gate_weights(self, x: torch.Tensor) -> torch.Tensor:
        if self.routing != "topk":
            return super().gate_weights(x)
        w = torch.softmax(self.gate(x).float(), dim=1)
        top = w.topk(self.k, dim=1).indices
        hard = (w * torch.zeros_like(w).scatter_(1, top, 1.0)).detach()
        hard = hard / hard.sum(dim=1, keepdim=True)
        return hard + w - w.detach()


@register("dwf_mixture_st")
def dwf_mixture_st(n_experts: int = 9, num_classes: int = 10, width: float = 1.0,
                   in_channels: int = 3, image_size: int = 32, dataset: str = "cifar10",
                   gate_hidden: int = 256, k: int = 1, freeze_experts: bool = False) -> MixtureOfExperts:
    experts = [resnet18(num_classes, width, in_channels, dataset) for _ in range(n_experts)]
    gate = Gate(n_experts, (in_channels, image_size, image_size), gate_hidden, dataset)
    return StraightThroughMixture(experts, gate, routing="topk", k=k, freeze_experts=freeze_experts)


# ========================================================= uniform ensemble ==
def uniform_ensemble(run, seed: int, data) -> MixtureOfExperts:
    """The run's trained experts averaged with equal weights, no gate: y = mean_i f_i(x).

    Isolates what the gate (and end-to-end training) add on top of the experts.
    """
    from dwf_lab.pipeline import assemble_mixture
    return assemble_mixture(run, seed, data, routing="uniform").eval()


# ============================================================== evaluation ==
def evaluate_soe(model: SoE, x, y, s, *, seed: int = 0, device=None, progress: bool = True,
                 modes=SoE.gradient_modes):
    """Every attack with each gradient mode; per example, correct only if correct under all.

    ``"hard"``: the deployed model's own gradient (through the selected expert;
    blind to the selection). ``"bpda"``: the soft relaxation's gradient with
    the hard model's forward value, i.e. attacks made on the relaxed model and
    judged on the hard one. Clean accuracy is the same in every mode.
    Returns (metrics, per-example correct, {mode: metrics}).
    """
    from dwf_lab.evaluate import evaluate_model, over_gradient_modes

    def one(mode):
        m, c = evaluate_model(model, x, y, s, seed=seed, device=device, progress=progress,
                              desc=f"eval soe ({mode})")
        return c, m
    combined, per_mode = over_gradient_modes(model, one, modes)
    metrics = {k: 100.0 * v.float().mean().item() for k, v in combined.items()}
    return metrics, combined, per_mode


# ================================================================ pipeline ==
BASELINE_ROWS = {"soe": "SoE", "advmoe": "ADVMoE", "uniform-ensemble": "Uniform ensemble"}


def baseline_stages(p):
    from dwf_lab.train import Stage
    return [Stage("soe", "soe", p.baseline_epochs, p.expert_batch, "SoE"),
            Stage("advmoe", "advmoe", p.baseline_epochs, p.expert_batch, "ADVMoE")]


def build_baseline(kind: str, p, data) -> nn.Module:
    from dwf_lab.models import build_model
    from dwf_lab.pipeline import _model_kwargs
    kw = _model_kwargs(p, data)
    if kind == "soe":
        return build_model("soe", n_experts=3, **kw)
    if kind == "advmoe":
        return build_model("advmoe", n_experts=2, **kw)
    raise ValueError(f"unknown baseline {kind!r}")


def train_and_evaluate_baselines(run, seed: int, data, progress: bool = True,
                                 which=("soe", "advmoe", "uniform-ensemble"),
                                 device: str | None = None) -> list[dict]:
    """Train SoE and ADVMoE as stages of the run, evaluate them and the uniform ensemble.

    Models go to ``run.model_path(seed, "soe" | "advmoe")``, results to
    ``run.eval_path(seed, name)`` in the format of every other row (rows
    "SoE", "ADVMoE", "Uniform ensemble"), so the report picks them up.
    Idempotent: finished trainings and existing results are reused.
    """
    import time
    from dwf_lab.checkpoints import load_model
    from dwf_lab.data import seed_from
    from dwf_lab.evaluate import EvalSettings, evaluate_and_write, write_result
    from dwf_lab.train import Runtime, train_stage
    unknown = set(which) - set(BASELINE_ROWS)
    if unknown:
        raise ValueError(f"unknown baselines {sorted(unknown)}; choose from {sorted(BASELINE_ROWS)}")
    p = run.profile
    rt = Runtime.from_profile(p)
    dev = torch.device(device) if device else rt.device
    log = run.logger(seed)
    for stage in baseline_stages(p):
        if stage.name not in which or run.is_done(seed, stage.name):
            continue
        torch.manual_seed(seed_from(seed, stage.sid))
        model = build_baseline(stage.kind, p, data)
        t0 = time.time()
        train_stage(model, data, stage, p, seed=seed, ckpt_dir=run.ckpt_dir(seed, stage.name),
                    final_path=run.model_path(seed, stage.name), runtime=rt, log=log, progress=progress)
        log({"event": "stage_time", "stage": stage.name, "seconds": time.time() - t0})
    results = []
    for name in which:
        path = run.eval_path(seed, name)
        if path.exists():
            results.append(json.loads(path.read_text()))
            continue
        row = BASELINE_ROWS[name]
        if name == "uniform-ensemble":
            model = uniform_ensemble(run, seed, data).to(dev)
            s = EvalSettings.from_profile(p, long=p.eval_long_for == "all")
            results.append(evaluate_and_write(
                model, data.x_test, data.y_test, s, path, name=name, row=row, seed=seed,
                dataset=data.name, device=dev, progress=progress,
                extra={"stage_kind": "uniform_ensemble",
                       "note": "the run's trained experts averaged with equal weights, no gate, "
                               "no end-to-end training"}))
            continue
        if not run.is_done(seed, name):
            raise FileNotFoundError(f"{name} is not trained for seed {seed}")
        model = load_model(run.model_path(seed, name), map_location=dev)
        s = EvalSettings.from_profile(p, long=True)
        if name == "soe":
            t0 = time.time()
            metrics, correct, per_mode = evaluate_soe(model, data.x_test, data.y_test, s, seed=seed,
                                                      device=dev, progress=progress)
            results.append(write_result(
                path, model=name, row=row, seed=seed, dataset=data.name, metrics=metrics,
                correct=correct, settings=s, elapsed_s=time.time() - t0,
                extra={"stage_kind": "soe", "gradient_modes": per_mode,
                       "note": "hard-argmax selection: every attack is run with the hard model's "
                               "gradient and with the soft relaxation's (BPDA); per example the "
                               "worse outcome counts"}))
        else:
            results.append(evaluate_and_write(
                model, data.x_test, data.y_test, s, path, name=name, row=row, seed=seed,
                dataset=data.name, device=dev, progress=progress,
                extra={"stage_kind": "advmoe",
                       "note": "attacked through the straight-through top-1 routing"}))
    return results
