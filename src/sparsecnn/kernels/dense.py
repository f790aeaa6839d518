"""Dense PyTorch kernels (oneDNN on CPU, cuDNN / cuBLAS on CUDA): the reference every sparse
kernel is compared with, and the fallback every layer can take.

They accept a weight of any format: a torch tensor is used as it is; a sparse weight is
densified once in ``prepare`` (in the problem's dtype, on its device) and the dense copy is held
by the prepared-operand cache (:mod:`sparsecnn.kernels.prepared`) for as long as the weight
lives, so a layer that runs dense pays the densification once.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .registry import ANY_FORMAT, Kernel, register

_DTYPES = ("float16", "bfloat16", "float32", "float64")


def prepare_dense(weight, problem) -> torch.Tensor:
    """The weight as a contiguous dense tensor of the problem's dtype and device."""
    if isinstance(weight, torch.Tensor):
        return weight
    dtype = getattr(torch, problem.dtype)
    return weight.to_dense().to(device=problem.device, dtype=dtype).contiguous()


def conv2d_dense(prep, x, bias):
    """``torch.nn.functional.conv2d`` with the prepared dense weight (ReLU if the problem has it)."""
    p = prep.problem
    y = F.conv2d(x, prep.operand, bias, p.stride, p.padding, p.dilation, p.groups)
    return torch.relu_(y) if p.relu else y


def linear_dense(prep, x, bias):
    """``torch.nn.functional.linear`` with the prepared dense weight (ReLU if the problem has it)."""
    y = F.linear(x, prep.operand, bias)
    return torch.relu_(y) if prep.problem.relu else y


register(Kernel("dense", "conv2d", conv2d_dense, formats=(ANY_FORMAT,), prepare=prepare_dense,
                devices=("cpu", "cuda"), dtypes=_DTYPES,
                description="torch.nn.functional.conv2d (oneDNN / cuDNN)"))
register(Kernel("dense", "linear", linear_dense, formats=(ANY_FORMAT,), prepare=prepare_dense,
                devices=("cpu", "cuda"), dtypes=_DTYPES,
                description="torch.nn.functional.linear (oneDNN / cuBLAS)"))
