"""CIFAR-10 ResNets (He et al. 2016, "Deep Residual Learning for Image Recognition", section 4.2).

The architecture and parameter names follow Yerlan Idelbayev's reference implementation
(github.com/akamaster/pytorch_resnet_cifar10), so its published checkpoints load unchanged once
the ``module.`` prefix is stripped (see :func:`sparsecnn.models.load_weights`):

- ``conv1`` (3 -> 16, 3x3, pad 1, no bias), ``bn1``, ReLU;
- ``layer1``/``layer2``/``layer3``: ``n`` BasicBlocks each (depth = 6n + 2) with 16/32/64 planes,
  first-block strides 1/2/2;
- global average pool over the 8x8 map, ``linear`` (64 -> num_classes).

Shortcuts are "option A": where stride or width changes, the input is subsampled ``x[:, :, ::2,
::2]`` and zero-padded along channels by ``planes // 4`` on each side (no weights).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class LambdaShortcut(nn.Module):
    """Option-A shortcut: ``x[:, :, ::2, ::2]`` zero-padded by ``pad`` channels on each side.

    Parameters
    ----------
    pad : int
        Channels of zeros added before and after the input's channels (``planes // 4``).
    """

    def __init__(self, pad: int):
        super().__init__()
        self.pad = int(pad)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad), "constant", 0.0)

    def extra_repr(self) -> str:
        return f"pad={self.pad}"


class BasicBlock(nn.Module):
    """conv1 (3x3, stride s) -> bn1 -> relu1 -> conv2 (3x3) -> bn2, + shortcut, -> relu2."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1 = nn.ReLU(inplace=False)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        if stride != 1 or in_planes != planes:
            self.shortcut: nn.Module = LambdaShortcut(planes // 4)
        else:
            self.shortcut = nn.Identity()
        self.relu2 = nn.ReLU(inplace=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


class ResNetCIFAR(nn.Module):
    """CIFAR ResNet: three stages of BasicBlocks (depth 6n + 2 for n blocks per stage).

    Parameters
    ----------
    num_blocks : sequence of 3 ints
        BasicBlocks per stage (``(3, 3, 3)`` for ResNet-20, ``(9, 9, 9)`` for ResNet-56).
    num_classes : int
        Output classes (10 for CIFAR-10).

    Input: float32 ``(N, 3, 32, 32)`` normalised RGB; output: ``(N, num_classes)`` logits.
    """

    def __init__(self, num_blocks=(3, 3, 3), num_classes: int = 10):
        super().__init__()
        if len(num_blocks) != 3 or any(int(n) < 1 for n in num_blocks):
            raise ValueError(f"num_blocks must be 3 positive ints, got {tuple(num_blocks)}")
        if int(num_classes) < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.in_planes = 16
        self.conv1 = nn.Conv2d(3, 16, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU(inplace=False)
        self.layer1 = self._make_layer(16, int(num_blocks[0]), 1)
        self.layer2 = self._make_layer(32, int(num_blocks[1]), 2)
        self.layer3 = self._make_layer(64, int(num_blocks[2]), 2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.linear = nn.Linear(64, int(num_classes))
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)

    def _make_layer(self, planes: int, n: int, stride: int) -> nn.Sequential:
        layers = []
        for s in [stride] + [1] * (n - 1):
            layers.append(BasicBlock(self.in_planes, planes, s))
            self.in_planes = planes
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        return self.linear(self.flatten(self.avgpool(out)))


def resnet_cifar(depth: int, num_classes: int = 10) -> ResNetCIFAR:
    """Build a CIFAR ResNet of ``depth`` = 6n + 2 (20, 32, 44, 56, 110, ...).

    Raises
    ------
    ValueError
        If ``depth`` is not of the form 6n + 2 with n >= 1.
    """
    if not isinstance(depth, int) or depth < 8 or (depth - 2) % 6:
        raise ValueError(f"CIFAR ResNet depth must be 6n + 2 (20, 32, 44, 56, ...), got {depth!r}")
    n = (depth - 2) // 6
    return ResNetCIFAR((n, n, n), num_classes=num_classes)
