"""Shared helpers of the registry-driven kernel correctness suites (conv2d and linear)."""

from __future__ import annotations

import pytest
import torch

import sparsecnn
from sparsecnn.formats import FORMATS
from sparsecnn.kernels import registry
from sparsecnn.prune.masks import nm_mask

SPARSITIES = (0.0, 0.5, 0.9, 0.99, 0.999)


def kernel_formats(op: str) -> list:
    """``pytest.param(kernel_name, format_name)`` for every registered kernel of ``op`` and every
    format it accepts (``"dense"`` or a key of :data:`sparsecnn.formats.FORMATS`, by family).
    A kernel that cannot run on this target (a missing ISA feature) is skipped, with the reason."""
    out = []
    for kernel in registry.kernels(op):
        why = kernel.unavailable()
        marks = [pytest.mark.skip(reason=why)] if why else []
        for fmt in ("dense", *FORMATS):
            if kernel.accepts(fmt):
                out.append(pytest.param(kernel.name, fmt, id=f"{kernel.name}-{fmt}", marks=marks))
    return out


def sparse_weight(shape, sparsity: float, gen: torch.Generator) -> torch.Tensor:
    """A float32 weight of ``shape`` with exactly ``round(numel * (1 - sparsity))`` nonzeros at
    random positions (at least one when ``sparsity < 1``, so that tiny layers are not all zero)."""
    w = torch.randn(shape, generator=gen)
    numel = w.numel()
    nnz = round(numel * (1.0 - sparsity))
    if sparsity < 1.0:
        nnz = max(nnz, 1)
    keep = torch.randperm(numel, generator=gen)[:nnz]
    mask = torch.zeros(numel, dtype=torch.bool)
    mask[keep] = True
    return (w.flatten() * mask).reshape(shape)


def build_weight(w: torch.Tensor, fmt: str):
    """``(weight to pass, dense reference weight)``: the reference is the format's own dense view,
    so that every format is compared with what it stores. For ``"nm"`` the weight is first pruned
    to the 2:4 pattern (``sparsecnn.prune.masks.nm_mask``), which N:M storage requires."""
    if fmt == "dense":
        return w, w
    if fmt == "nm":  # N:M needs the pattern: keep the 2 largest |w| of every 4 columns
        w = w * nm_mask(w, 2, 4)
    sw = sparsecnn.to_sparse(w, fmt)
    assert tuple(sw.shape) == tuple(w.shape)
    return sw, sw.to_dense().to(torch.float32)


def tolerances(fan_in: int) -> dict:
    """fp32 tolerances for a sum of ``fan_in`` products of N(0, 1) values: rtol 1e-5 and
    atol 1e-6 * fan_in (about 8 ulp of float32 per accumulated term, worst-case growth)."""
    return {"rtol": 1e-5, "atol": 1e-6 * max(1, fan_in)}


#: Zero patterns of conv inputs (activation sparsity) every conv kernel is checked on.
ACT_PATTERNS = ("dense", "zeros-0.5", "zeros-0.95", "dead-channels", "all-zero", "zero-rows",
                "zero-windows", "relu")


def activation_input(shape, pattern: str, gen: torch.Generator) -> torch.Tensor:
    """An N(0, 1) input of ``shape`` (N, C, H, W) with the zero ``pattern`` of
    :data:`ACT_PATTERNS`: random zeros at 50 / 95 %, dead channels (a different half of the
    channels all zero in each image), all zero, whole zero rows (every other row), zero aligned
    16-float windows of each flattened plane (two in three), or ``relu`` (ReLU of N(0, 1): ~50 %
    zeros, non-negative). NaN-free."""
    n, c, h, w = shape
    x = torch.randn(shape, generator=gen)
    if pattern == "dense":
        return x
    if pattern.startswith("zeros-"):
        return x * (torch.rand(shape, generator=gen) >= float(pattern[6:]))
    if pattern == "dead-channels":
        for i in range(n):
            x[i, torch.randperm(c, generator=gen)[:max(1, c // 2)]] = 0
        return x
    if pattern == "all-zero":
        return torch.zeros(shape)
    if pattern == "zero-rows":
        x[:, :, ::2, :] = 0
        return x
    if pattern == "zero-windows":
        flat = x.reshape(n, c, h * w)
        for v in range(0, h * w, 16):
            if (v // 16) % 3:
                flat[:, :, v:v + 16] = 0
        return flat.reshape(shape)
    if pattern == "relu":
        return torch.relu(x)
    raise ValueError(f"unknown pattern {pattern!r}")
