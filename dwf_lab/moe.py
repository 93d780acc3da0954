"""The gate and the soft-gated mixture of experts (paper Eq. 1-2).

    w(x) = softmax(g(x))            g: a small MLP on the input image  (Eq. 2)
    y(x) = sum_i w_i(x) * f_i(x)    f_i: expert logits                  (Eq. 1)

"Soft, flat, fractional": every expert always contributes. Variants for the
ablations and baselines are switches on the same module: ``routing="topk"``
(hard top-k, weights renormalised over the kept experts), ``routing="uniform"``
(plain average, no gate) and ``freeze_experts`` (experts neither trained nor
updating their BatchNorm statistics).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn as nn

from dwf_lab.models import Normalize, normalization_for, register, resnet18

ROUTINGS = ("soft", "topk", "uniform")


class Gate(nn.Module):
    """flatten -> Linear -> ReLU -> Linear -> n scores. Softmax is applied by the mixture.

    The paper does not give the MLP's size (PAPER-NOTES.md, gap 5): ``hidden``
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
                 routing: str = "soft", k: int = 1, freeze_experts: bool = False):
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

    def gate_weights(self, x: torch.Tensor) -> torch.Tensor:
        n = self.n_experts
        if self.routing == "uniform":
            return x.new_full((x.shape[0], n), 1.0 / n)
        scores = self.gate(x).float()
        w = torch.softmax(scores, dim=1)
        if self.routing == "topk":
            top = w.topk(self.k, dim=1).indices
            mask = torch.zeros_like(w).scatter_(1, top, 1.0)
            w = w * mask
            w = w / w.sum(dim=1, keepdim=True)
        return w

    def expert_outputs(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([f(x) for f in self.experts], dim=1)

    def forward_details(self, x: torch.Tensor) -> MixtureOutput:
        w = self.gate_weights(x)
        z = self.expert_outputs(x)
        y = torch.einsum("bn,bnc->bc", w.to(z.dtype), z)
        return MixtureOutput(y, w, z)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_details(x).logits


@register("dwf_mixture")
def dwf_mixture(n_experts: int = 9, num_classes: int = 10, width: float = 1.0,
                in_channels: int = 3, image_size: int = 32, dataset: str = "cifar10",
                gate_hidden: int = 256, routing: str = "soft", k: int = 1,
                freeze_experts: bool = False, expert_arch: str = "resnet18") -> MixtureOfExperts:
    """The DWF model: n ResNet-18 experts and an MLP gate (experts untrained here)."""
    if expert_arch != "resnet18":
        from dwf_lab.models import build_model
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
