"""Dense PyTorch kernels (oneDNN on CPU): the reference every sparse kernel is compared with."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .registry import Kernel, register


def conv2d_dense(x, weight, bias, stride, padding, dilation, groups, relu):
    """``torch.nn.functional.conv2d`` on a dense weight (a sparse one is densified first)."""
    w = weight if isinstance(weight, torch.Tensor) else weight.to_dense().to(x.dtype)
    y = F.conv2d(x, w, bias, stride, padding, dilation, groups)
    return torch.relu_(y) if relu else y


def linear_dense(x, weight, bias, relu):
    """``torch.nn.functional.linear`` on a dense weight (a sparse one is densified first)."""
    w = weight if isinstance(weight, torch.Tensor) else weight.to_dense().to(x.dtype)
    y = F.linear(x, w, bias)
    return torch.relu_(y) if relu else y


register(Kernel("dense", "conv2d", conv2d_dense, formats=("dense",),
                description="torch.nn.functional.conv2d (oneDNN)"))
register(Kernel("dense", "linear", linear_dense, formats=("dense",),
                description="torch.nn.functional.linear (oneDNN)"))
