"""CIFAR-style ResNet (He et al. 2016, section 4.2) with torchvision's module names.

``depth = 6n + 2``: a 3x3 stem (``conv1``, ``bn1``, ``relu``), three stages ``layer1``..``layer3``
of ``n`` :class:`BasicBlock` each with widths ``(w, 2w, 4w)`` and stride 2 at the start of
``layer2`` and ``layer3``, then ``avgpool`` and ``fc``. Shortcuts whose shape changes use
torchvision's projection ``downsample = Sequential(1x1 conv, BN)`` (the paper's option B), so
``resnet(20)`` has 272,474 parameters.
"""

from __future__ import annotations

import torch
from torch import nn

from exitnet.backbones._checks import check_int, check_num_classes
from exitnet.backbones._registry import register


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers plus a shortcut, named exactly as torchvision's ``BasicBlock``.

    The ReLUs and the residual add are out of place so that an exit head reading a block's
    output (or a tensor inside it) never sees it modified by a later layer.

    Args:
        in_planes: Input channels.
        planes: Output channels.
        stride: Stride of ``conv1`` and of the projection shortcut.

    Example:
        >>> block = BasicBlock(16, 32, stride=2)
        >>> block(torch.randn(2, 16, 8, 8)).shape
        torch.Size([2, 32, 4, 4])
    """

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_planes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes)
            )
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.downsample is not None:  # fixed at build time, so fx tracing is unaffected
            identity = self.downsample(x)
        return self.relu(out + identity)


class ResNet(nn.Module):
    """CIFAR ResNet: stem, three stages of ``blocks_per_stage`` BasicBlocks, global pool, ``fc``.

    Args:
        blocks_per_stage: ``n`` in ``depth = 6n + 2``.
        in_chans: Input channels.
        num_classes: Output logits.
        width: Channels of ``layer1``; ``layer2``/``layer3`` use ``2 * width``/``4 * width``.

    Example:
        >>> net = ResNet(blocks_per_stage=1, in_chans=1, num_classes=10, width=8)
        >>> net(torch.randn(2, 1, 28, 28)).shape
        torch.Size([2, 10])
    """

    def __init__(self, blocks_per_stage: int, in_chans: int, num_classes: int, width: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_chans, width, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU()
        self.layer1 = self._make_layer(width, width, blocks_per_stage, stride=1)
        self.layer2 = self._make_layer(width, 2 * width, blocks_per_stage, stride=2)
        self.layer3 = self._make_layer(2 * width, 4 * width, blocks_per_stage, stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4 * width, num_classes)

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    @staticmethod
    def _make_layer(in_planes: int, planes: int, blocks: int, stride: int) -> nn.Sequential:
        layers = [BasicBlock(in_planes, planes, stride)]
        layers += [BasicBlock(planes, planes, 1) for _ in range(blocks - 1)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        x = self.avgpool(x)
        x = torch.flatten(x, 1)  # [B, 4w, 1, 1] -> [B, 4w]
        return self.fc(x)


@register("resnet")
def resnet(depth: int = 20, in_chans: int = 3, num_classes: int = 10, *, width: int = 16) -> nn.Module:
    """Build a CIFAR-style :class:`ResNet` of ``depth = 6n + 2`` layers.

    Works for any input of at least 4x4 pixels (8x8 digits, 28x28 Fashion-MNIST, 32x32 CIFAR).
    Exit points follow torchvision: ``"layer1"``, ``"layer1.0"``, ``"layer2.2"``, ``"layer3"``, ...

    Args:
        depth: 8, 14, 20, 32, 44, 56, 110, ... (``6n + 2`` with ``n >= 1``).
        in_chans: Input channels.
        num_classes: Output logits, at least 2.
        width: Channels of the first stage (16 in the paper).

    Returns:
        The model, with ``model.config`` for :func:`exitnet.backbones.build`.

    Raises:
        ValueError: ``depth`` is not ``6n + 2``, a size is not a positive int or ``num_classes < 2``.

    Example:
        >>> net = resnet(20, in_chans=3, num_classes=10)
        >>> net(torch.randn(2, 3, 32, 32)).shape
        torch.Size([2, 10])
        >>> sum(p.numel() for p in net.parameters())
        272474
    """
    depth = check_int("resnet", "depth", depth)
    if depth < 8 or (depth - 2) % 6 != 0:
        raise ValueError(f"resnet depth must be 6n+2 (8, 14, 20, 32, 44, 56, 110, ...), got {depth}")
    return ResNet(
        blocks_per_stage=(depth - 2) // 6,
        in_chans=check_int("resnet", "in_chans", in_chans),
        num_classes=check_num_classes("resnet", num_classes),
        width=check_int("resnet", "width", width),
    )
