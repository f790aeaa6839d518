"""Sparse x sparse convolution: compressed input windows (ECR) times a CSC weight (kernel
``"sparse_sparse"``).

Both operands compressed, as in the seeds' sparse x sparse experiment (``seeds/001``: CUSP SpGEMM
of the input feature map and the weights, 4x over GEMM on small layers) and the ECR format of
Xu et al. 2019 ("Accelerating convolutional neural networks by exploiting sparsity on GPUs",
``seeds/004``): for each output pixel, the ``C/groups x R x S`` input window it reads is compressed
on the fly into its nonzeros and their indices ``j = (c R + r) S + s`` (the ECR of that window;
zero padding is never stored), and multiplied by the weight stored by columns (CSC, built once in
``prepare``), Gustavson's SpGEMM column by column:

    for (j, a) in ECR(window(p)):            # nonzero inputs only
        for (k, w) in column j of W:         # nonzero weights only
            acc[p][k] += a * w

so the multiply-adds done are exactly the effectual ones (weight and activation both nonzero,
:func:`sparsecnn.analysis.ineffectual_work`'s ``macs_effectual``). The price is irregularity: a
scalar scatter per product into a ``K``-long accumulator, and a scan of every input window (the
im2col reads) to compress it. Kept for comparison in the benchmark, where it loses to the
vectorised weight-sparse kernels (``docs/activation.md``); dispatch never prefers it.

Threads over ``(image, output row)``: each item keeps an ``(OW, K)`` accumulator and writes its
output row of every channel at the end (bias, ReLU).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
from numba import njit, prange

from ..registry import Kernel, register
from ._common import as_array


class CSCOperand(NamedTuple):
    """The weight by columns: column ``j`` of group ``g`` (global column ``g * ncols + j``) holds
    ``rowidx[colptr[gj]:colptr[gj+1]]`` (output channels, ascending) and ``values``; explicit
    zeros dropped."""

    colptr: np.ndarray     # (groups * ncols + 1,) int64
    rowidx: np.ndarray     # (nnz,) int32
    values: np.ndarray     # (nnz,) float32
    zero_bias: np.ndarray  # (K,) float32


def prepare_csc(weight, problem) -> CSCOperand:
    """CSC of a CSR-like conv weight ``(K, C/groups, R, S)`` per group (``prepare`` step)."""
    k = int(weight.shape[0])
    ncols = int(np.prod(weight.shape[1:]))
    groups = problem.groups
    kg = k // groups
    rowptr = np.asarray(weight.rowptr, dtype=np.int64)
    colidx = np.asarray(weight.colidx, dtype=np.int64)
    values = np.asarray(weight.values, dtype=np.float32)
    rows = np.repeat(np.arange(k, dtype=np.int64), np.diff(rowptr))
    keep = values != 0
    rows, colidx, values = rows[keep], colidx[keep], values[keep]
    gcol = (rows // kg) * ncols + colidx
    order = np.lexsort((rows, gcol))
    counts = np.bincount(gcol, minlength=groups * ncols)
    colptr = np.concatenate(([0], np.cumsum(counts))).astype(np.int64)
    return CSCOperand(colptr, rows[order].astype(np.int32),
                      np.ascontiguousarray(values[order]), np.zeros(k, dtype=np.float32))


@njit(cache=True, nogil=True, parallel=True)
def _sparse_sparse(x, colptr, rowidx, wval, bias, relu, groups, r_size, s_size, sh, sw, ph, pw,
                   dh, dw, out):
    n_size, c_size, h, w = x.shape
    k_size, oh_size, ow_size = out.shape[1], out.shape[2], out.shape[3]
    cg = c_size // groups
    ncols = cg * r_size * s_size
    for item in prange(n_size * oh_size):
        n = item // oh_size
        oh = item - n * oh_size
        acc = np.zeros((ow_size, k_size), dtype=np.float32)
        eidx = np.empty(ncols, dtype=np.int64)   # ECR of one window: indices ...
        eval_ = np.empty(ncols, dtype=np.float32)  # ... and values of its nonzeros
        for ow in range(ow_size):
            a = acc[ow]
            for g in range(groups):
                # compress the window (ECR): its nonzero inputs and their weight columns
                cnt = 0
                for cl in range(cg):
                    xc = x[n, g * cg + cl]
                    for r in range(r_size):
                        ih = oh * sh - ph + r * dh
                        if ih < 0 or ih >= h:
                            continue
                        xr = xc[ih]
                        base = (cl * r_size + r) * s_size
                        for s in range(s_size):
                            iw = ow * sw - pw + s * dw
                            if iw < 0 or iw >= w:
                                continue
                            v = xr[iw]
                            if v != 0.0:
                                eidx[cnt] = base + s
                                eval_[cnt] = v
                                cnt += 1
                # multiply by the weight's columns (CSC)
                g0 = g * ncols
                for e in range(cnt):
                    j = g0 + eidx[e]
                    v = eval_[e]
                    for q in range(colptr[j], colptr[j + 1]):
                        a[rowidx[q]] += v * wval[q]
        for k in range(k_size):
            b = bias[k]
            row = out[n, k, oh]
            for ow in range(ow_size):
                y = acc[ow, k] + b
                if relu and y < 0.0:
                    y = 0.0
                row[ow] = y


def conv2d_sparse_sparse(prep, x, bias):
    """Sparse x sparse convolution (registered as ``"sparse_sparse"``): ECR-compressed input
    windows times the CSC weight.

    Parameters
    ----------
    prep : Prepared
        ``prep.operand`` the :class:`CSCOperand` of a CSR-like weight ``(K, C/groups, R, S)``;
        ``prep.problem`` its ConvProblem (any geometry, groups, fused ReLU).
    x : torch.Tensor (N, C, H, W) float32, contiguous
    bias : torch.Tensor (K,) float32 or None

    Returns
    -------
    torch.Tensor (N, K, OH, OW) float32
    """
    p = prep.problem
    op = prep.operand
    b = op.zero_bias if bias is None else as_array(bias)
    out = torch.empty(p.out_shape, dtype=torch.float32)
    _sparse_sparse(as_array(x), op.colptr, op.rowidx, op.values, b, bool(p.relu), p.groups,
                   p.R, p.S, p.stride[0], p.stride[1], p.padding[0], p.padding[1],
                   p.dilation[0], p.dilation[1], out.numpy())
    return out


register(Kernel(
    "sparse_sparse", "conv2d", conv2d_sparse_sparse, formats=("csr",), prepare=prepare_csc,
    description="sparse x sparse: each output pixel's input window compressed (ECR, Xu et al. "
                "2019) times the CSC weight, effectual multiply-adds only (scalar, for "
                "comparison)",
))

__all__ = ["conv2d_sparse_sparse", "prepare_csc", "CSCOperand"]
