"""Model zoo: CIFAR-10 ResNets, ImageNet-shaped AlexNet / VGG-16 and a small CNN for 8x8 digits.

Every model is ``torch.fx``-traceable (no data-dependent Python control flow), uses ``nn.ReLU``
modules after conv/bn (so conv -> bn -> relu chains can be fused) and is deterministic in eval
mode.

Public API
----------
build(name, **kw) -> nn.Module
    Build a model by name (one of :data:`NAMES`).
load_weights(model, path_or_state) -> nn.Module
    Load a checkpoint (``.th``/``.pt`` file or state dict; ``module.`` prefixes stripped).
conv_layers(model) -> list[(name, module)]
    Conv2d and Linear layers in forward order.
spec(name) -> ModelSpec
    What the jobs know about the model (input shape, classes, default weights and data, pruning
    recipe): :mod:`sparsecnn.models.spec`.
"""

from __future__ import annotations

from typing import Callable

import torch.nn as nn

from .cnn import AlexNet, SmallCNN, VGG16
from .io import conv_layers, load_weights
from .resnet_cifar import BasicBlock, LambdaShortcut, ResNetCIFAR, resnet_cifar
from .spec import SPECS, ModelSpec, published_weights, spec

_BUILDERS: dict[str, Callable[..., nn.Module]] = {
    "resnet20": lambda **kw: resnet_cifar(20, **kw),
    "resnet32": lambda **kw: resnet_cifar(32, **kw),
    "resnet44": lambda **kw: resnet_cifar(44, **kw),
    "resnet56": lambda **kw: resnet_cifar(56, **kw),
    "alexnet": lambda **kw: AlexNet(**kw),
    "vgg16": lambda **kw: VGG16(**kw),
    "smallcnn": lambda **kw: SmallCNN(**kw),
}

#: Names accepted by :func:`build`.
NAMES: tuple[str, ...] = tuple(_BUILDERS)
assert set(SPECS) == set(NAMES), "every model needs a ModelSpec (models/spec.py)"


def build(name: str, **kw) -> nn.Module:
    """Build a model by name.

    Parameters
    ----------
    name : str
        One of :data:`NAMES`: ``"resnet20"``, ``"resnet32"``, ``"resnet44"``, ``"resnet56"``
        (CIFAR-10 ResNets, He et al. 2016, option-A shortcuts, 3x32x32 input, 10 classes),
        ``"alexnet"``, ``"vgg16"`` (ImageNet shapes: 3x224x224 input, 1000 classes) and
        ``"smallcnn"`` (1x8x8 digits, 10 classes).
    **kw
        Passed to the model's constructor (e.g. ``num_classes``).

    Returns
    -------
    torch.nn.Module
        A freshly initialised model in train mode (call ``.eval()`` for inference).

    Raises
    ------
    ValueError
        If ``name`` is unknown (the message lists :data:`NAMES`).
    TypeError
        If ``name`` is not a string or a keyword is not accepted by the model.
    """
    if not isinstance(name, str):
        raise TypeError(f"model name must be a str, got {type(name).__name__}")
    try:
        builder = _BUILDERS[name.lower()]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; expected one of {list(NAMES)}") from None
    return builder(**kw)


__all__ = [
    "NAMES",
    "build",
    "load_weights",
    "conv_layers",
    "spec",
    "SPECS",
    "ModelSpec",
    "published_weights",
    "ResNetCIFAR",
    "BasicBlock",
    "LambdaShortcut",
    "resnet_cifar",
    "AlexNet",
    "VGG16",
    "SmallCNN",
]
