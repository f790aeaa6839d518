"""Plain CNNs: AlexNet and VGG-16 with ImageNet shapes, and a small CNN for 8x8 digits.

Layers have readable names (``conv1`` .. ``conv5``, ``fc6`` .. ``fc8`` for AlexNet;
``conv1_1`` .. ``conv5_3``, ``fc6`` .. ``fc8`` for VGG-16) so reports can refer to them.
"""

from __future__ import annotations

import torch
import torch.nn as nn


def _check_classes(num_classes) -> int:
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    return num_classes


class AlexNet(nn.Module):
    """AlexNet (Krizhevsky et al. 2012), the single-tower variant of torchvision.

    Input float32 ``(N, 3, 224, 224)``; output ``(N, num_classes)`` logits. 61.1 M parameters at
    1000 classes. conv1 64@11x11/4, conv2 192@5x5, conv3 384@3x3, conv4 256@3x3, conv5 256@3x3,
    3x3/2 max-pools after conv1, conv2 and conv5, fc6 9216 -> 4096, fc7 4096 -> 4096, fc8.
    """

    def __init__(self, num_classes: int = 1000, dropout: float = 0.5):
        super().__init__()
        num_classes = _check_classes(num_classes)
        self.conv1 = nn.Conv2d(3, 64, 11, stride=4, padding=2)
        self.relu1 = nn.ReLU()
        self.pool1 = nn.MaxPool2d(3, 2)
        self.conv2 = nn.Conv2d(64, 192, 5, padding=2)
        self.relu2 = nn.ReLU()
        self.pool2 = nn.MaxPool2d(3, 2)
        self.conv3 = nn.Conv2d(192, 384, 3, padding=1)
        self.relu3 = nn.ReLU()
        self.conv4 = nn.Conv2d(384, 256, 3, padding=1)
        self.relu4 = nn.ReLU()
        self.conv5 = nn.Conv2d(256, 256, 3, padding=1)
        self.relu5 = nn.ReLU()
        self.pool5 = nn.MaxPool2d(3, 2)
        self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
        self.flatten = nn.Flatten(1)
        self.drop6 = nn.Dropout(dropout)
        self.fc6 = nn.Linear(256 * 6 * 6, 4096)
        self.relu6 = nn.ReLU()
        self.drop7 = nn.Dropout(dropout)
        self.fc7 = nn.Linear(4096, 4096)
        self.relu7 = nn.ReLU()
        self.fc8 = nn.Linear(4096, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool1(self.relu1(self.conv1(x)))
        x = self.pool2(self.relu2(self.conv2(x)))
        x = self.relu3(self.conv3(x))
        x = self.relu4(self.conv4(x))
        x = self.pool5(self.relu5(self.conv5(x)))
        x = self.flatten(self.avgpool(x))
        x = self.relu6(self.fc6(self.drop6(x)))
        x = self.relu7(self.fc7(self.drop7(x)))
        return self.fc8(x)


_VGG16_CFG = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))


class VGG16(nn.Module):
    """VGG-16, configuration D (Simonyan & Zisserman 2015), without batch norm by default.

    Input float32 ``(N, 3, 224, 224)``; output ``(N, num_classes)``. 138.4 M parameters at 1000
    classes. Convolutions ``conv{stage}_{i}`` (3x3, pad 1) each followed by ``relu{stage}_{i}``
    (and ``bn{stage}_{i}`` between them when ``batch_norm=True``), ``pool{stage}`` 2x2/2 max-pools,
    then ``fc6`` 25088 -> 4096, ``fc7`` 4096 -> 4096, ``fc8``.
    """

    def __init__(self, num_classes: int = 1000, dropout: float = 0.5, batch_norm: bool = False):
        super().__init__()
        num_classes = _check_classes(num_classes)
        layers: list[tuple[str, nn.Module]] = []
        cin = 3
        for stage, widths in enumerate(_VGG16_CFG, start=1):
            for i, cout in enumerate(widths, start=1):
                layers.append((f"conv{stage}_{i}", nn.Conv2d(cin, cout, 3, padding=1)))
                if batch_norm:
                    layers.append((f"bn{stage}_{i}", nn.BatchNorm2d(cout)))
                layers.append((f"relu{stage}_{i}", nn.ReLU()))
                cin = cout
            layers.append((f"pool{stage}", nn.MaxPool2d(2, 2)))
        for name, module in layers:
            self.add_module(name, module)
        self._feature_names = tuple(name for name, _ in layers)
        self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
        self.flatten = nn.Flatten(1)
        self.fc6 = nn.Linear(512 * 7 * 7, 4096)
        self.relu6 = nn.ReLU()
        self.drop6 = nn.Dropout(dropout)
        self.fc7 = nn.Linear(4096, 4096)
        self.relu7 = nn.ReLU()
        self.drop7 = nn.Dropout(dropout)
        self.fc8 = nn.Linear(4096, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for name in self._feature_names:  # fixed sequence: fx unrolls it
            x = getattr(self, name)(x)
        x = self.flatten(self.avgpool(x))
        x = self.drop6(self.relu6(self.fc6(x)))
        x = self.drop7(self.relu7(self.fc7(x)))
        return self.fc8(x)


class SmallCNN(nn.Module):
    """Small CNN for 1x8x8 digits (scikit-learn's ``load_digits``): 10 classes, 9,978 parameters.

    ``conv1`` 1 -> 16 (3x3, pad 1) -> ``bn1`` -> ``relu1`` -> ``conv2`` 16 -> 32 (3x3, pad 1) ->
    ``bn2`` -> ``relu2`` -> ``pool`` 2x2 -> ``fc`` 512 -> num_classes.
    Input float32 ``(N, 1, 8, 8)``; output ``(N, num_classes)`` logits.
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 1, width: int = 16):
        super().__init__()
        num_classes = _check_classes(num_classes)
        self.conv1 = nn.Conv2d(in_channels, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(width, 2 * width, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(2 * width)
        self.relu2 = nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.flatten = nn.Flatten(1)
        self.fc = nn.Linear(2 * width * 4 * 4, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu1(self.bn1(self.conv1(x)))
        x = self.pool(self.relu2(self.bn2(self.conv2(x))))
        return self.fc(self.flatten(x))
