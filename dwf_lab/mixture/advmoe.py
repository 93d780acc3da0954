"""ADVMoE / robust MoE-CNN (Zhang et al., ICCV 2023; ``OPTML-Group/Robust-MoE-CNN``), a MoE peer of Tables 2-3.

A CIFAR ResNet-18 whose block convolutions are :class:`MoEConv2d`: one wide convolution
with ``n_experts`` groups of output channels, one group kept per input by a hard top-1
mask with a straight-through gradient (:func:`straight_through_top1`). One small
ResNet-20-like :class:`Router` on the normalized image scores the experts; its scores are
shared by every MoE layer. Images in [0, 1], normalized inside; registered as ``advmoe``.
Training: recipe ``"advmoe"``, TRADES (2-step PGD on the KL, beta 6) with alternating
expert and router updates (:func:`dwf_lab.training.recipes.advmoe_loss`). Every choice
where the paper or its code is ambiguous is listed in ``docs/baselines.md``.
"""
import contextlib

import torch
import torch.nn as nn
import torch.nn.functional as F

from dwf_lab.models.common import Normalize, normalization_for
from dwf_lab.models.registry import register


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
