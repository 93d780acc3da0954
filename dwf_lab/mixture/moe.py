"""The gate and the soft-gated mixture of experts (paper Eq. 1-2), and its straight-through variant.

    w(x) = softmax(g(x))            g: a small MLP on the input image  (Eq. 2)
    y(x) = sum_i w_i(x) * f_i(x)    f_i: expert logits                  (Eq. 1)

"Soft, flat, fractional": every expert always contributes. Ablation and baseline variants
are switches on the same module: ``routing="topk"`` (hard top-k, weights renormalised over
the kept experts), ``routing="uniform"`` (plain average, no gate) and ``freeze_experts``
(experts neither trained nor updating their BatchNorm statistics). ``routing="topk", k=1``
gives the gate *no* gradient (the one kept weight is the constant 1), so the ablations use
``dwf_mixture_st`` (:class:`StraightThroughMixture`): forward the renormalised top-k
weights, backward the soft-max weights' gradient.

``expert_batching="loop"`` (default) runs the experts one after another; ``"vmap"`` stacks
their weights (``torch.func``) and runs them as ONE batched call, every conv a grouped conv
over the experts. BatchNorm in training mode updates running statistics in place, which
``vmap`` cannot, so ``"vmap"`` is used only while every expert is in eval mode (attacks,
evaluation, the frozen-expert gate phase) and falls back to the loop otherwise. Both give
the same logits and input gradients (up to float rounding).
"""
import copy
import math
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn as nn
from torch.func import functional_call, vmap

from dwf_lab.models.common import Normalize, normalization_for
from dwf_lab.models.registry import build_model, register
from dwf_lab.models.resnet import resnet18

ROUTINGS = ("soft", "topk", "uniform")
EXPERT_BATCHINGS = ("loop", "vmap")


class Gate(nn.Module):
    """flatten -> Linear -> ReLU -> Linear -> n scores. Softmax is applied by the mixture.

    The paper does not give the MLP's size (docs/paper-notes.md, gap 5): ``hidden``
    is a parameter. The gate sees the normalized image, like the experts.
    """

    def __init__(self, n_experts: int, in_shape: Sequence[int] = (3, 32, 32),
                 hidden: int = 256, dataset: str = "cifar10"):
        super().__init__()
        if n_experts < 1:
            raise ValueError(f"n_experts must be >= 1, got {n_experts}")
        mean, std = normalization_for(dataset)
        self.normalize = Normalize(mean, std)
        n_in = 1
        for s in in_shape:
            n_in *= int(s)
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(n_in, hidden), nn.ReLU(inplace=True),
                                 nn.Linear(hidden, n_experts))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.normalize(x))


@dataclass
class MixtureOutput:
    logits: torch.Tensor          # (B, C)   the mixture's output, Eq. 1
    weights: torch.Tensor         # (B, n)   gate weights, rows sum to 1
    expert_logits: torch.Tensor   # (B, n, C) every expert's own logits


class MixtureOfExperts(nn.Module):
    """y(x) = sum_i w_i(x) f_i(x) over expert logits. Returns logits, like any classifier."""

    def __init__(self, experts: Sequence[nn.Module], gate: nn.Module | None,
                 routing: str = "soft", k: int = 1, freeze_experts: bool = False,
                 expert_batching: str = "loop"):
        super().__init__()
        if routing not in ROUTINGS:
            raise ValueError(f"routing must be one of {ROUTINGS}, got {routing!r}")
        if len(experts) == 0:
            raise ValueError("a mixture needs at least one expert")
        if routing != "uniform" and gate is None:
            raise ValueError(f"routing={routing!r} needs a gate; use routing='uniform' for none")
        if routing == "topk" and not 1 <= k <= len(experts):
            raise ValueError(f"k must be in [1, {len(experts)}], got {k}")
        self.experts = nn.ModuleList(experts)
        self.gate = gate
        self.routing = routing
        self.k = k
        self.freeze_experts = False
        self.set_frozen(freeze_experts)
        self.expert_batching = expert_batching

    @property
    def n_experts(self) -> int:
        return len(self.experts)

    def set_frozen(self, frozen: bool) -> "MixtureOfExperts":
        """Freeze (or unfreeze) the experts: no gradient, BatchNorm kept in eval mode."""
        self.freeze_experts = bool(frozen)
        for p in self.experts.parameters():
            p.requires_grad_(not frozen)
        self.train(self.training)
        return self

    def train(self, mode: bool = True):
        super().train(mode)
        if self.freeze_experts:
            self.experts.eval()
        return self

    def log_weights(self, x: torch.Tensor) -> torch.Tensor:
        """log w(x), (B, n), differentiable: the soft routing forward uses (:meth:`gate_weights`;
        top-k keeps the k largest of these). A variant that routes otherwise (a temperature, ...)
        overrides this one method: forward and the gate-aware attacks (:mod:`dwf_lab.attacks.gate`) follow."""
        if self.routing == "uniform":
            return x.new_full((x.shape[0], self.n_experts), -math.log(self.n_experts))
        with torch.autocast(x.device.type, enabled=False):   # the gate in fp32, under bf16 autocast too
            return torch.log_softmax(self.gate(x.float()).float(), dim=1)

    def gate_weights(self, x: torch.Tensor) -> torch.Tensor:
        w = self.log_weights(x).exp()
        if self.routing == "topk":
            top = w.topk(self.k, dim=1).indices
            mask = torch.zeros_like(w).scatter_(1, top, 1.0)
            kept = w * mask
            # forward: weights renormalised over the kept experts; backward: the gradient
            # of the kept softmax weights (straight-through), so the gate still learns even
            # with k = 1, where the renormalised weight is the constant 1
            w = kept + (kept / kept.sum(dim=1, keepdim=True) - kept).detach()
        return w

    # ------------------------------------------------ evaluating the experts --
    @property
    def expert_batching(self) -> str:
        return self._expert_batching

    @expert_batching.setter
    def expert_batching(self, mode: str) -> None:
        if mode not in EXPERT_BATCHINGS:
            raise ValueError(f"expert_batching must be one of {EXPERT_BATCHINGS}, got {mode!r}")
        if mode == "vmap":
            _check_homogeneous(self.experts)
        self.__dict__["_expert_batching"] = mode
        self.__dict__["_stack_cache"] = None

    def vmap_active(self) -> bool:
        """True when a forward pass now would evaluate the experts with one vmapped call."""
        return self.expert_batching == "vmap" and not any(m.training for m in self.experts.modules())

    def expert_outputs(self, x: torch.Tensor) -> torch.Tensor:
        """(B, n, C): every expert's logits, by a loop or one vmapped call (module doc)."""
        if self.vmap_active():
            return self._expert_outputs_vmap(x)
        return torch.stack([f(x) for f in self.experts], dim=1)

    def _stacked_state(self) -> tuple[dict, dict]:
        """The experts' parameters and buffers, stacked along a new dim 0.

        When parameter gradients may be needed (grad mode on and an expert
        parameter requires grad) the stack is rebuilt on every call, so
        gradients flow back to each expert. Otherwise (attacks run with
        requires_grad off; evaluation; frozen experts) it is cached and rebuilt
        only when some tensor changed (storage, dtype, device or in-place
        version counter: optimizer steps and state-dict loads bump it).
        """
        named_p = [dict(e.named_parameters()) for e in self.experts]
        named_b = [dict(e.named_buffers()) for e in self.experts]

        def stack():  # contiguous: vmap has no batching rule for some channels_last paths
            return ({k: torch.stack([d[k] for d in named_p]).contiguous() for k in named_p[0]},
                    {k: torch.stack([d[k] for d in named_b]).contiguous() for k in named_b[0]})

        if torch.is_grad_enabled() and any(t.requires_grad for d in named_p for t in d.values()):
            self.__dict__["_stack_cache"] = None
            return stack()
        key = tuple((t.data_ptr(), t._version, t.dtype, t.device)
                    for d in named_p + named_b for t in d.values())
        cache = self.__dict__.get("_stack_cache")
        if cache is None or cache[0] != key:
            with torch.no_grad():
                cache = (key, *stack())
            self.__dict__["_stack_cache"] = cache
        return cache[1], cache[2]

    def _expert_outputs_vmap(self, x: torch.Tensor) -> torch.Tensor:
        base = self.__dict__.get("_vmap_base")
        if base is None:  # a stateless template on the meta device, not a submodule
            base = copy.deepcopy(self.experts[0]).to("meta").eval()
            # a forward set on the instance (bf16 evaluation patches one in for its duration:
            # dwf_lab.attacks.precision) would call experts[0] itself, not the stacked weights
            base.__dict__.pop("forward", None)
            self.__dict__["_vmap_base"] = base
        params, buffers = self._stacked_state()

        def one(p, b, xx):
            return functional_call(base, (p, b), (xx,))
        return vmap(one, in_dims=(0, 0, None))(params, buffers, x).transpose(0, 1)  # (B, n, C)

    def forward_details(self, x: torch.Tensor) -> MixtureOutput:
        w = self.gate_weights(x)
        z = self.expert_outputs(x)
        with torch.autocast(x.device.type, enabled=False):   # the combination in fp32 (bf16 autocast too)
            y = torch.einsum("bn,bnc->bc", w.float(), z.float())
        return MixtureOutput(y, w, z)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_details(x).logits


def _check_homogeneous(experts) -> None:
    def sig(e):
        return type(e), {k: (tuple(v.shape), v.dtype) for k, v in e.state_dict().items()}
    first = sig(experts[0])
    for i, e in enumerate(experts):
        if sig(e) != first:
            raise ValueError(f"expert_batching='vmap' needs experts of one architecture and size; "
                             f"expert {i} differs from expert 0 (use 'loop')")


@register("dwf_mixture")
def dwf_mixture(n_experts: int = 9, num_classes: int = 10, width: float = 1.0,
                in_channels: int = 3, image_size: int = 32, dataset: str = "cifar10",
                gate_hidden: int = 256, routing: str = "soft", k: int = 1,
                freeze_experts: bool = False, expert_arch: str = "resnet18") -> MixtureOfExperts:
    """The DWF model: n ResNet-18 experts and an MLP gate (experts untrained here)."""
    if expert_arch != "resnet18":
        experts = [build_model(expert_arch, num_classes=num_classes, width=width,
                               in_channels=in_channels, dataset=dataset) for _ in range(n_experts)]
    else:
        experts = [resnet18(num_classes, width, in_channels, dataset) for _ in range(n_experts)]
    gate = None
    if routing != "uniform":
        gate = Gate(n_experts, (in_channels, image_size, image_size), gate_hidden, dataset)
    return MixtureOfExperts(experts, gate, routing=routing, k=k, freeze_experts=freeze_experts)


def gate_entropy(weights: torch.Tensor) -> torch.Tensor:
    """Per-example entropy (nats) of gate weights; log(n) means uniform, 0 means one expert."""
    w = weights.clamp_min(1e-12)
    return -(w * w.log()).sum(dim=1)


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
        w = self.log_weights(x).exp()
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
