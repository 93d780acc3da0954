"""The CIFAR ResNet-18 of the experts: 3x3 stem, no max-pool, four stages, global average pool.

Follows kuangliu/pytorch-cifar, with a ``width`` multiplier so CPU-sized versions are
the same code. Inputs are images in [0, 1], normalized inside
(:mod:`dwf_lab.models.common`).
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from dwf_lab.models.common import Normalize, normalization_for


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """CIFAR-style ResNet: 3x3 stem, no max-pool, four stages, global average pool."""

    def __init__(self, num_blocks=(2, 2, 2, 2), num_classes: int = 10, width: float = 1.0,
                 in_channels: int = 3, dataset: str = "cifar10"):
        super().__init__()
        mean, std = normalization_for(dataset)
        if len(mean) != in_channels:
            raise ValueError(f"dataset {dataset!r} has {len(mean)} channel(s), "
                             f"but in_channels={in_channels}")
        if width <= 0:
            raise ValueError(f"width must be > 0, got {width}")
        planes = [max(1, int(round(p * width))) for p in (64, 128, 256, 512)]
        self.normalize = Normalize(mean, std)
        self.conv1 = nn.Conv2d(in_channels, planes[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes[0])
        layers, in_planes = [], planes[0]
        for i, (p, n) in enumerate(zip(planes, num_blocks)):
            blocks = []
            for j in range(n):
                stride = 2 if (i > 0 and j == 0) else 1
                blocks.append(BasicBlock(in_planes, p, stride))
                in_planes = p
            layers.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.linear = nn.Linear(in_planes, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(self.normalize(x))))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        with torch.autocast(out.device.type, enabled=False):   # the head in fp32, under bf16 autocast too
            return self.linear(out.float())


def resnet18(num_classes: int = 10, width: float = 1.0, in_channels: int = 3,
             dataset: str = "cifar10") -> ResNet:
    return ResNet((2, 2, 2, 2), num_classes, width, in_channels, dataset)
