"""The paper's plain-network baselines, sized for 32x32 images.

*Divided We Fall* compares its mixture of ResNet-18 experts with single
networks: VGG-19, ResNet-18/34/50, DenseNet-121/169, GoogLeNet, Inception-V3,
Xception and MobileNet-V2. This module implements CIFAR-sized versions in the
style of kuangliu/pytorch-cifar: one short class per family, every model built
by ``fn(num_classes=10, width=1.0, in_channels=3, dataset="cifar10")``.

Shared conventions (the same as :mod:`dwf_lab.models`):

* inputs are images in [0, 1]; the first op of every ``forward`` is
  ``self.normalize``, a :class:`~dwf_lab.models.common.Normalize` holding the
  dataset's constants from :func:`~dwf_lab.models.common.normalization_for`;
* every channel count ``c`` becomes ``max(1, round(c * width))``; quantities
  that must stay consistent (DenseNet growth rate, concatenated Inception
  branches, depthwise groups) are derived from the scaled counts, so any
  ``width > 0`` builds a valid network;
* the head is a global average pool and one linear layer, so 32x32 inputs
  (CIFAR-10, SVHN) and 28x28 single-channel inputs (MNIST, ``in_channels=1,
  dataset="mnist"``) both work;
* no auxiliary classifiers, no dropout: the forward pass is a plain
  ``image -> logits`` map, as the attacks expect.

Architectures and how each differs from its ImageNet original:

``vgg19`` (VGG-19)
    kuangliu's VGG: 16 3x3 convs with BatchNorm (the original has none) and
    five max-pools, ``ceil_mode=True`` so 28x28 inputs reach 1x1; the three
    4096-wide fully connected layers are replaced by one linear layer.
``resnet18`` (ResNet-18)
    :func:`dwf_lab.models.resnet.resnet18`, re-listed here only in :data:`ZOO`.
``resnet34`` / ``resnet50`` (ResNet-34/50)
    kuangliu's ResNet: 3x3 stride-1 stem and no max-pool (ImageNet: 7x7
    stride-2 stem plus a max-pool), stages at 32/16/8/4 pixels. ResNet-34 uses
    :class:`dwf_lab.models.resnet.BasicBlock` (3, 4, 6, 3), ResNet-50 the
    :class:`Bottleneck` (1x1 - 3x3 - 1x1, expansion 4) (3, 4, 6, 3).
``densenet121`` / ``densenet169`` (DenseNet-121/169)
    kuangliu's DenseNet-BC: growth rate 32 (scaled by ``width``), compression
    0.5, blocks (6, 12, 24, 16) / (6, 12, 32, 32); the 7x7 stride-2 stem and
    max-pool become one 3x3 conv with ``2 * growth`` channels.
``googlenet`` (GoogLeNet)
    kuangliu's GoogLeNet (Inception-v1): the stem is one 3x3 conv to 192
    channels at full resolution (ImageNet: 7x7/2 conv, pools and 3x3 convs),
    the nine Inception modules keep their channel table, two max-pools between
    the groups (3a-3b | 4a-4e | 5a-5b), no auxiliary heads. As in kuangliu the
    "5x5" branch is two stacked 3x3 convs.
``inception_v3`` (Inception-V3)
    Block types and channel tables of torchvision's Inception-v3 (Mixed_5b..
    Mixed_7c): 3 x InceptionA (the paper's Fig. 5 module, 5x5 factorised),
    ReductionA (torchvision's InceptionB), 4 x InceptionB (Fig. 6, 7x7
    factorised into 1x7/7x1; torchvision's InceptionC), ReductionB
    (torchvision's InceptionD), 2 x InceptionC (Fig. 7, expanded 1x3/3x1
    outputs; torchvision's InceptionE). Simplifications: the stem is five
    stride-1 padded convs (3x3 32, 3x3 32, 3x3 64, 1x1 80, 3x3 192) with no
    max-pools (ImageNet: stride-2 convs and two max-pools, 299 -> 35 pixels);
    the reductions are padded so the grids are 32 -> 16 -> 8 (28 -> 14 -> 7);
    no auxiliary classifier, no dropout, no label smoothing.
``xception`` (Xception)
    Depthwise-separable entry / middle / exit flows with the original channel
    table (64 -> 128 -> 256 -> 728, middle 728 x ``middle_repeats`` (default
    8), exit 728 -> 1024 -> 1536 -> 2048). Sized for 32x32: the two stem convs
    are stride 1 and the first entry block (128) does not downsample, so the
    middle flow runs at 8x8 and the exit flow ends at 4x4 (ImageNet: 299 ->
    19 -> 10 pixels).
``mobilenet_v2`` (MobileNet-V2)
    kuangliu's CIFAR variant: stem stride 1 (ImageNet 2) and the second stage
    (24 channels) stride 1 (ImageNet 2), so the net downsamples 8x instead of
    32x; the inverted-residual table (t, c, n, s) is otherwise the original.
    As in kuangliu, stride-1 blocks whose channel count changes get a 1x1
    projection shortcut (the original has no shortcut there); all channel
    counts, including the final 1280, are scaled by ``width`` (no rounding to
    multiples of 8).
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from dwf_lab.models.common import Normalize, normalization_for
from dwf_lab.models.registry import register
from dwf_lab.models.resnet import BasicBlock, ResNet

# arch name -> the row label the paper's tables use
ZOO: dict[str, str] = {
    "vgg19": "VGG-19",
    "resnet18": "ResNet-18",
    "resnet34": "ResNet-34",
    "resnet50": "ResNet-50",
    "densenet121": "DenseNet-121",
    "densenet169": "DenseNet-169",
    "googlenet": "GoogLeNet",
    "inception_v3": "Inception-V3",
    "xception": "Xception",
    "mobilenet_v2": "MobileNet-V2",
}


# ----------------------------------------------------------------- helpers --
def _scale(c: int, width: float) -> int:
    return max(1, int(round(c * width)))


def _make_normalize(width: float, in_channels: int, dataset: str) -> Normalize:
    """Validate the common arguments and return the model's Normalize."""
    if width <= 0:
        raise ValueError(f"width must be > 0, got {width}")
    mean, std = normalization_for(dataset)
    if len(mean) != in_channels:
        raise ValueError(f"dataset {dataset!r} has {len(mean)} channel(s), "
                         f"but in_channels={in_channels}")
    return Normalize(mean, std)


def _head(x: torch.Tensor, linear: nn.Linear) -> torch.Tensor:
    return linear(F.adaptive_avg_pool2d(x, 1).flatten(1))


class ConvBNReLU(nn.Sequential):
    def __init__(self, cin: int, cout: int, kernel=3, stride=1, padding=None, groups=1,
                 eps: float = 1e-5):
        if padding is None:
            padding = (kernel // 2) if isinstance(kernel, int) else tuple(k // 2 for k in kernel)
        super().__init__(nn.Conv2d(cin, cout, kernel, stride, padding, groups=groups, bias=False),
                         nn.BatchNorm2d(cout, eps=eps), nn.ReLU(inplace=True))


# -------------------------------------------------------------------- VGG --
class VGG(nn.Module):
    CFG = {"vgg19": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M",
                     512, 512, 512, 512, "M", 512, 512, 512, 512, "M"]}

    def __init__(self, cfg="vgg19", num_classes=10, width=1.0, in_channels=3, dataset="cifar10"):
        super().__init__()
        self.normalize = _make_normalize(width, in_channels, dataset)
        layers, c = [], in_channels
        for v in self.CFG[cfg]:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2, ceil_mode=True))
            else:
                layers.append(ConvBNReLU(c, _scale(v, width)))
                c = _scale(v, width)
        self.features = nn.Sequential(*layers)
        self.linear = nn.Linear(c, num_classes)

    def forward(self, x):
        return _head(self.features(self.normalize(x)), self.linear)


@register("vgg19")
def vgg19(num_classes=10, width=1.0, in_channels=3, dataset="cifar10") -> VGG:
    return VGG("vgg19", num_classes, width, in_channels, dataset)


# ----------------------------------------------------------------- ResNet --
class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        out = self.expansion * planes
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != out:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, out, 1, stride, bias=False),
                                          nn.BatchNorm2d(out))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + self.shortcut(x))


class BlockResNet(ResNet):
    """:class:`dwf_lab.models.resnet.ResNet` with a choice of residual block.

    Same module names (``normalize, conv1, bn1, layer1..4, linear``) and the
    same forward as the ResNet-18 experts; only the stages are rebuilt.
    """

    def __init__(self, block, num_blocks, num_classes=10, width=1.0, in_channels=3,
                 dataset="cifar10"):
        # the parent validates the arguments and builds normalize/conv1/bn1;
        # zero blocks per stage there, the stages are built here with `block`
        super().__init__((0, 0, 0, 0), num_classes, width, in_channels, dataset)
        planes = [_scale(p, width) for p in (64, 128, 256, 512)]
        layers, in_planes = [], planes[0]
        for i, (p, n) in enumerate(zip(planes, num_blocks)):
            blocks = []
            for j in range(n):
                blocks.append(block(in_planes, p, 2 if (i > 0 and j == 0) else 1))
                in_planes = p * block.expansion
            layers.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.linear = nn.Linear(in_planes, num_classes)


@register("resnet34")
def resnet34(num_classes=10, width=1.0, in_channels=3, dataset="cifar10") -> BlockResNet:
    return BlockResNet(BasicBlock, (3, 4, 6, 3), num_classes, width, in_channels, dataset)


@register("resnet50")
def resnet50(num_classes=10, width=1.0, in_channels=3, dataset="cifar10") -> BlockResNet:
    return BlockResNet(Bottleneck, (3, 4, 6, 3), num_classes, width, in_channels, dataset)


# --------------------------------------------------------------- DenseNet --
class DenseLayer(nn.Module):
    """BN-ReLU-1x1 (4k) - BN-ReLU-3x3 (k), output concatenated to the input."""

    def __init__(self, in_planes: int, growth: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, 4 * growth, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(4 * growth)
        self.conv2 = nn.Conv2d(4 * growth, growth, 3, 1, 1, bias=False)

    def forward(self, x):
        out = self.conv1(F.relu(self.bn1(x)))
        out = self.conv2(F.relu(self.bn2(out)))
        return torch.cat([out, x], 1)


class Transition(nn.Sequential):
    def __init__(self, in_planes: int, out_planes: int):
        super().__init__(nn.BatchNorm2d(in_planes), nn.ReLU(inplace=True),
                         nn.Conv2d(in_planes, out_planes, 1, bias=False), nn.AvgPool2d(2))


class DenseNet(nn.Module):
    def __init__(self, num_blocks, growth_rate=32, reduction=0.5, num_classes=10, width=1.0,
                 in_channels=3, dataset="cifar10"):
        super().__init__()
        self.normalize = _make_normalize(width, in_channels, dataset)
        growth = _scale(growth_rate, width)  # every other count derives from it
        planes = 2 * growth
        self.conv1 = nn.Conv2d(in_channels, planes, 3, 1, 1, bias=False)
        stages = []
        for i, n in enumerate(num_blocks):
            layers = []
            for _ in range(n):
                layers.append(DenseLayer(planes, growth))
                planes += growth
            if i < len(num_blocks) - 1:
                out = max(1, int(planes * reduction))
                layers.append(Transition(planes, out))
                planes = out
            stages.append(nn.Sequential(*layers))
        self.dense = nn.Sequential(*stages)
        self.bn = nn.BatchNorm2d(planes)
        self.linear = nn.Linear(planes, num_classes)

    def forward(self, x):
        out = self.dense(self.conv1(self.normalize(x)))
        return _head(F.relu(self.bn(out)), self.linear)


@register("densenet121")
def densenet121(num_classes=10, width=1.0, in_channels=3, dataset="cifar10") -> DenseNet:
    return DenseNet((6, 12, 24, 16), 32, 0.5, num_classes, width, in_channels, dataset)


@register("densenet169")
def densenet169(num_classes=10, width=1.0, in_channels=3, dataset="cifar10") -> DenseNet:
    return DenseNet((6, 12, 32, 32), 32, 0.5, num_classes, width, in_channels, dataset)


# -------------------------------------------------------------- GoogLeNet --
class InceptionV1(nn.Module):
    """1x1 | 1x1-3x3 | 1x1-3x3-3x3 ("5x5") | maxpool-1x1, concatenated."""

    def __init__(self, cin, n1, n3red, n3, n5red, n5, pool_planes):
        super().__init__()
        self.b1 = ConvBNReLU(cin, n1, 1)
        self.b2 = nn.Sequential(ConvBNReLU(cin, n3red, 1), ConvBNReLU(n3red, n3))
        self.b3 = nn.Sequential(ConvBNReLU(cin, n5red, 1), ConvBNReLU(n5red, n5),
                                ConvBNReLU(n5, n5))
        self.b4 = nn.Sequential(nn.MaxPool2d(3, 1, 1), ConvBNReLU(cin, pool_planes, 1))
        self.out_channels = n1 + n3 + n5 + pool_planes

    def forward(self, x):
        return torch.cat([self.b1(x), self.b2(x), self.b3(x), self.b4(x)], 1)


class GoogLeNet(nn.Module):
    # (n1, n3red, n3, n5red, n5, pool_planes) per module; "M" = 3x3/2 max-pool
    CFG = [(64, 96, 128, 16, 32, 32), (128, 128, 192, 32, 96, 64), "M",
           (192, 96, 208, 16, 48, 64), (160, 112, 224, 24, 64, 64),
           (128, 128, 256, 24, 64, 64), (112, 144, 288, 32, 64, 64),
           (256, 160, 320, 32, 128, 128), "M",
           (256, 160, 320, 32, 128, 128), (384, 192, 384, 48, 128, 128)]

    def __init__(self, num_classes=10, width=1.0, in_channels=3, dataset="cifar10"):
        super().__init__()
        self.normalize = _make_normalize(width, in_channels, dataset)
        c = _scale(192, width)
        self.pre_layers = ConvBNReLU(in_channels, c)
        layers = []
        for spec in self.CFG:
            if spec == "M":
                layers.append(nn.MaxPool2d(3, 2, 1))
            else:
                layers.append(InceptionV1(c, *(_scale(v, width) for v in spec)))
                c = layers[-1].out_channels
        self.inceptions = nn.Sequential(*layers)
        self.linear = nn.Linear(c, num_classes)

    def forward(self, x):
        return _head(self.inceptions(self.pre_layers(self.normalize(x))), self.linear)


@register("googlenet")
def googlenet(num_classes=10, width=1.0, in_channels=3, dataset="cifar10") -> GoogLeNet:
    return GoogLeNet(num_classes, width, in_channels, dataset)


# ----------------------------------------------------------- Inception-v3 --
def _bc(cin, cout, kernel=1, stride=1, padding=None):
    """Inception-v3's BasicConv2d (conv, BN with eps 1e-3, ReLU)."""
    return ConvBNReLU(cin, cout, kernel, stride, padding, eps=1e-3)


class InceptionA(nn.Module):
    """Fig. 5: 1x1 | 1x1-5x5 | 1x1-3x3-3x3 | avgpool-1x1 (torchvision InceptionA)."""

    def __init__(self, cin, pool_features, s):
        super().__init__()
        self.b1 = _bc(cin, s(64))
        self.b5 = nn.Sequential(_bc(cin, s(48)), _bc(s(48), s(64), 5))
        self.b3 = nn.Sequential(_bc(cin, s(64)), _bc(s(64), s(96), 3), _bc(s(96), s(96), 3))
        self.bp = nn.Sequential(nn.AvgPool2d(3, 1, 1), _bc(cin, s(pool_features)))
        self.out_channels = s(64) + s(64) + s(96) + s(pool_features)

    def forward(self, x):
        return torch.cat([self.b1(x), self.b5(x), self.b3(x), self.bp(x)], 1)


class ReductionA(nn.Module):
    """Grid reduction: 3x3/2 | 1x1-3x3-3x3/2 | maxpool/2 (torchvision InceptionB)."""

    def __init__(self, cin, s):
        super().__init__()
        self.b3 = _bc(cin, s(384), 3, 2, 1)
        self.b3d = nn.Sequential(_bc(cin, s(64)), _bc(s(64), s(96), 3),
                                 _bc(s(96), s(96), 3, 2, 1))
        self.pool = nn.MaxPool2d(3, 2, 1)
        self.out_channels = s(384) + s(96) + cin

    def forward(self, x):
        return torch.cat([self.b3(x), self.b3d(x), self.pool(x)], 1)


class InceptionB(nn.Module):
    """Fig. 6: 7x7 factorised into 1x7 and 7x1 (torchvision InceptionC)."""

    def __init__(self, cin, c7, s):
        super().__init__()
        c7 = s(c7)
        self.b1 = _bc(cin, s(192))
        self.b7 = nn.Sequential(_bc(cin, c7), _bc(c7, c7, (1, 7)), _bc(c7, s(192), (7, 1)))
        self.b7d = nn.Sequential(_bc(cin, c7), _bc(c7, c7, (7, 1)), _bc(c7, c7, (1, 7)),
                                 _bc(c7, c7, (7, 1)), _bc(c7, s(192), (1, 7)))
        self.bp = nn.Sequential(nn.AvgPool2d(3, 1, 1), _bc(cin, s(192)))
        self.out_channels = 4 * s(192)

    def forward(self, x):
        return torch.cat([self.b1(x), self.b7(x), self.b7d(x), self.bp(x)], 1)


class ReductionB(nn.Module):
    """Grid reduction: 1x1-3x3/2 | 1x1-1x7-7x1-3x3/2 | maxpool/2 (torchvision InceptionD)."""

    def __init__(self, cin, s):
        super().__init__()
        self.b3 = nn.Sequential(_bc(cin, s(192)), _bc(s(192), s(320), 3, 2, 1))
        self.b7 = nn.Sequential(_bc(cin, s(192)), _bc(s(192), s(192), (1, 7)),
                                _bc(s(192), s(192), (7, 1)), _bc(s(192), s(192), 3, 2, 1))
        self.pool = nn.MaxPool2d(3, 2, 1)
        self.out_channels = s(320) + s(192) + cin

    def forward(self, x):
        return torch.cat([self.b3(x), self.b7(x), self.pool(x)], 1)


class InceptionC(nn.Module):
    """Fig. 7: expanded filter bank, 1x3 and 3x1 side by side (torchvision InceptionE)."""

    def __init__(self, cin, s):
        super().__init__()
        self.b1 = _bc(cin, s(320))
        self.b3 = _bc(cin, s(384))
        self.b3a, self.b3b = _bc(s(384), s(384), (1, 3)), _bc(s(384), s(384), (3, 1))
        self.b3d = nn.Sequential(_bc(cin, s(448)), _bc(s(448), s(384), 3))
        self.b3da, self.b3db = _bc(s(384), s(384), (1, 3)), _bc(s(384), s(384), (3, 1))
        self.bp = nn.Sequential(nn.AvgPool2d(3, 1, 1), _bc(cin, s(192)))
        self.out_channels = s(320) + 4 * s(384) + s(192)

    def forward(self, x):
        b3, b3d = self.b3(x), self.b3d(x)
        return torch.cat([self.b1(x), self.b3a(b3), self.b3b(b3),
                          self.b3da(b3d), self.b3db(b3d), self.bp(x)], 1)


class InceptionV3(nn.Module):
    def __init__(self, num_classes=10, width=1.0, in_channels=3, dataset="cifar10"):
        super().__init__()
        self.normalize = _make_normalize(width, in_channels, dataset)

        def s(c):
            return _scale(c, width)

        self.stem = nn.Sequential(_bc(in_channels, s(32), 3), _bc(s(32), s(32), 3),
                                  _bc(s(32), s(64), 3), _bc(s(64), s(80), 1),
                                  _bc(s(80), s(192), 3))
        blocks, c = [], s(192)

        def add(block):
            nonlocal c
            blocks.append(block)
            c = block.out_channels

        for pool_features in (32, 64, 64):       # Mixed_5b, 5c, 5d  (32x32)
            add(InceptionA(c, pool_features, s))
        add(ReductionA(c, s))                    # Mixed_6a          (-> 16x16)
        for c7 in (128, 160, 160, 192):          # Mixed_6b .. 6e
            add(InceptionB(c, c7, s))
        add(ReductionB(c, s))                    # Mixed_7a          (-> 8x8)
        for _ in range(2):                       # Mixed_7b, 7c
            add(InceptionC(c, s))
        self.blocks = nn.Sequential(*blocks)
        self.linear = nn.Linear(c, num_classes)

    def forward(self, x):
        return _head(self.blocks(self.stem(self.normalize(x))), self.linear)


@register("inception_v3")
def inception_v3(num_classes=10, width=1.0, in_channels=3, dataset="cifar10") -> InceptionV3:
    return InceptionV3(num_classes, width, in_channels, dataset)


# --------------------------------------------------------------- Xception --
class SeparableConv(nn.Sequential):
    """Depthwise 3x3 (groups = channels) then pointwise 1x1, no BN in between."""

    def __init__(self, cin: int, cout: int):
        super().__init__(nn.Conv2d(cin, cin, 3, 1, 1, groups=cin, bias=False),
                         nn.Conv2d(cin, cout, 1, bias=False))


class XceptionBlock(nn.Module):
    """``reps`` x (ReLU, SeparableConv, BN) [+ 3x3/2 max-pool] plus a residual."""

    def __init__(self, cin, cout, reps, stride=1, start_with_relu=True, grow_first=True):
        super().__init__()
        layers, c = [], cin
        for i in range(reps):
            nxt = cout if (grow_first and i == 0) or (not grow_first and i == reps - 1) else c
            if i > 0 or start_with_relu:
                layers.append(nn.ReLU(inplace=False))
            layers += [SeparableConv(c, nxt), nn.BatchNorm2d(nxt)]
            c = nxt
        if stride != 1:
            layers.append(nn.MaxPool2d(3, stride, 1))
        self.body = nn.Sequential(*layers)
        self.skip = nn.Sequential()
        if stride != 1 or cin != cout:
            self.skip = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                      nn.BatchNorm2d(cout))

    def forward(self, x):
        return self.body(x) + self.skip(x)


class Xception(nn.Module):
    def __init__(self, num_classes=10, width=1.0, in_channels=3, dataset="cifar10",
                 middle_repeats: int = 8):
        super().__init__()
        self.normalize = _make_normalize(width, in_channels, dataset)
        if middle_repeats < 0:
            raise ValueError(f"middle_repeats must be >= 0, got {middle_repeats}")
        s = [_scale(c, width) for c in (32, 64, 128, 256, 728, 1024, 1536, 2048)]
        c32, c64, c128, c256, c728, c1024, c1536, c2048 = s
        self.entry = nn.Sequential(
            ConvBNReLU(in_channels, c32), ConvBNReLU(c32, c64),        # stride 1 (ImageNet: 2)
            XceptionBlock(c64, c128, 2, 1, start_with_relu=False),     # 32x32 (ImageNet: /2)
            XceptionBlock(c128, c256, 2, 2),                           # -> 16x16
            XceptionBlock(c256, c728, 2, 2))                           # -> 8x8
        self.middle = nn.Sequential(*(XceptionBlock(c728, c728, 3) for _ in range(middle_repeats)))
        self.exit = nn.Sequential(
            XceptionBlock(c728, c1024, 2, 2, grow_first=False),        # -> 4x4
            SeparableConv(c1024, c1536), nn.BatchNorm2d(c1536), nn.ReLU(inplace=True),
            SeparableConv(c1536, c2048), nn.BatchNorm2d(c2048), nn.ReLU(inplace=True))
        self.linear = nn.Linear(c2048, num_classes)

    def forward(self, x):
        return _head(self.exit(self.middle(self.entry(self.normalize(x)))), self.linear)


@register("xception")
def xception(num_classes=10, width=1.0, in_channels=3, dataset="cifar10",
             middle_repeats: int = 8) -> Xception:
    return Xception(num_classes, width, in_channels, dataset, middle_repeats)


# ----------------------------------------------------------- MobileNet-V2 --
class InvertedResidual(nn.Module):
    """1x1 expand (t) - 3x3 depthwise (stride) - 1x1 linear project."""

    def __init__(self, cin: int, cout: int, expansion: int, stride: int):
        super().__init__()
        self.stride = stride
        hidden = expansion * cin
        self.conv = nn.Sequential(
            ConvBNReLU(cin, hidden, 1),
            ConvBNReLU(hidden, hidden, 3, stride, groups=hidden),  # groups == channels
            nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout))
        self.shortcut = nn.Sequential()
        if stride == 1 and cin != cout:  # kuangliu's projection shortcut
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, bias=False),
                                          nn.BatchNorm2d(cout))

    def forward(self, x):
        out = self.conv(x)
        return out + self.shortcut(x) if self.stride == 1 else out


class MobileNetV2(nn.Module):
    # (expansion t, out channels c, blocks n, first stride s)
    CFG = [(1, 16, 1, 1), (6, 24, 2, 1),  # CIFAR: stride 1 (ImageNet: 2)
           (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]

    def __init__(self, num_classes=10, width=1.0, in_channels=3, dataset="cifar10"):
        super().__init__()
        self.normalize = _make_normalize(width, in_channels, dataset)
        c = _scale(32, width)
        self.stem = ConvBNReLU(in_channels, c, 3, 1)  # CIFAR: stride 1 (ImageNet: 2)
        layers = []
        for t, out, n, stride in self.CFG:
            for i in range(n):
                layers.append(InvertedResidual(c, _scale(out, width), t, stride if i == 0 else 1))
                c = _scale(out, width)
        self.layers = nn.Sequential(*layers)
        self.last = ConvBNReLU(c, _scale(1280, width), 1)
        self.linear = nn.Linear(_scale(1280, width), num_classes)

    def forward(self, x):
        out = self.last(self.layers(self.stem(self.normalize(x))))
        return _head(out, self.linear)


@register("mobilenet_v2")
def mobilenet_v2(num_classes=10, width=1.0, in_channels=3, dataset="cifar10") -> MobileNetV2:
    return MobileNetV2(num_classes, width, in_channels, dataset)
