"""Synergy-of-Experts (Cui et al., NeurIPS 2022; ``cuis15/synergy-of-experts``), a MoE peer of Tables 2-3.

``n_experts`` (default 3) CIFAR ResNet-18s, each with an auxiliary head (one linear unit
on the pooled features, the public code's "simple" PPD) that predicts a *rectified
confidence*. Per input, the expert with the largest ``max softmax(z_i) * sigmoid(a_i)``
answers alone (hard argmax). ``selection`` picks how the argmax looks to an attacker:
``"hard"`` (the published model: index detached, the gradient is the chosen expert's),
``"soft"`` (a softmax over the selection scores at ``temperature``, a *different* model)
and ``"bpda"`` (forward value of the hard model, backward of the soft one). Images in
[0, 1], normalized inside; registered as ``soe``. Training: recipe ``"soe"``, PGD against
the hard model, loss on clean + adversarial halves (:func:`dwf_lab.training.recipes.soe_loss`);
evaluation with both ``"hard"`` and ``"bpda"`` gradients, per-example worst case
(:func:`dwf_lab.evaluation.protocol.evaluate_soe`). Ambiguities: ``docs/baselines.md``.
"""
import contextlib
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from dwf_lab.models.registry import register
from dwf_lab.models.resnet import resnet18

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
