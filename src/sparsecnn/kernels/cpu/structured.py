"""Kernels for structured sparse formats: BSR convolution (im2col + BSR SpMM) and N:M linear.

- ``"im2col_bsr"`` (conv2d, format ``bsr``): the im2col of :mod:`.im2col_spmm`, then a block
  SpMM. Threads over block rows; for each stored ``bh x bw`` block, each of its ``bw`` source
  rows (im2col rows) is read once through a slice and multiplied into the ``bh`` output rows of
  the block, so a source row is reused ``bh`` times from L1 (the point of blocks, Elsen et al.
  2020, "Fast sparse ConvNets"; Gray et al. 2017). Zero entries inside stored blocks are skipped.
- ``"nm"`` (linear, format ``nm``): N:M structured weights (Mishra et al. 2021). Every row stores
  ``ngroups * n`` slots; slot ``q`` sits at column ``(q // n) * m + indices[row, q]``. Batch 1:
  a dot product per output row (threads over rows); batch > 1: ``Y^T = W X^T`` with the inner
  loop over the batch, as the CSR ``"spmm"`` kernel.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
from numba import njit, prange

from ..registry import Kernel, register
from ._common import as_array, bias_or_zero, prepare_compressed
from .im2col_spmm import TILE, im2col


@njit(cache=True, nogil=True, parallel=True)
def bsr_spmm(rowptr, colidx, values, src, bias, relu, rows_per_group, cols_per_group, out):
    """``out = W @ src (+ bias, ReLU)`` for BSR ``W`` (blocks ``values`` (nblocks, bh, bw)).

    Row ``k`` reads source rows ``(k // rows_per_group) * cols_per_group + column``; matrix
    columns at or past ``cols_per_group`` (edge padding of the block grid) are skipped, as are
    rows at or past ``out.shape[0]``.
    """
    m, p_total = out.shape
    bh = values.shape[1]
    bw = values.shape[2]
    ntiles = (p_total + TILE - 1) // TILE
    for i in prange(rowptr.size - 1):
        k0 = i * bh
        k1 = min(m, k0 + bh)
        for t in range(ntiles):
            c0 = t * TILE
            c1 = min(p_total, c0 + TILE)
            w = c1 - c0
            for k in range(k0, k1):
                dst = out[k, c0:c1]
                b = bias[k]
                for q in range(w):
                    dst[q] = b
            for blk in range(rowptr[i], rowptr[i + 1]):
                vb = values[blk]
                for c in range(bw):
                    col = colidx[blk] * bw + c
                    if col >= cols_per_group:
                        break
                    for r in range(k1 - k0):
                        v = vb[r, c]
                        if v == 0.0:
                            continue
                        k = k0 + r
                        s = src[(k // rows_per_group) * cols_per_group + col, c0:c1]
                        dst = out[k, c0:c1]
                        for q in range(w):
                            dst[q] += v * s[q]
            if relu:
                for k in range(k0, k1):
                    dst = out[k, c0:c1]
                    for q in range(w):
                        if dst[q] < 0.0:
                            dst[q] = 0.0


def conv2d_im2col_bsr(prep, x, bias):
    """Sparse 2-D convolution by im2col + BSR SpMM (registered as ``"im2col_bsr"``).

    Parameters
    ----------
    prep : Prepared
        ``prep.operand`` the :class:`~._common.CompressedOperand` of a BSR weight
        ``(K, C/groups, R, S)`` (any ``block_shape``); ``prep.problem`` its ConvProblem.
    x : torch.Tensor (N, C, H, W) float32, contiguous
    bias : torch.Tensor (K,) float32 or None

    Returns
    -------
    torch.Tensor (N, K, OH, OW) float32
    """
    p = prep.problem
    n_size, c_size, h, w = x.shape
    k_size, cg, r_size, s_size = p.w_shape
    (sh, sw), (ph, pw), (dh, dw) = p.stride, p.padding, p.dilation
    groups, relu = p.groups, p.relu
    oh, ow = p.OH, p.OW
    plane = oh * ow
    rowptr, colidx, values, _ = prep.operand
    b = bias_or_zero(bias, prep.operand)
    kg = k_size // groups
    ncols = cg * r_size * s_size
    xa = as_array(x)
    cols = np.empty((groups * ncols, n_size * plane), dtype=np.float32)
    im2col(xa, r_size, s_size, sh, sw, ph, pw, dh, dw, oh, ow,
           np.ones(groups * ncols, dtype=np.bool_), cols)
    out = torch.empty((n_size, k_size, oh, ow), dtype=torch.float32)
    if n_size == 1:
        bsr_spmm(rowptr, colidx, values, cols, b, relu, kg, ncols, out.numpy().reshape(k_size, plane))
        return out
    tmp = np.empty((k_size, n_size * plane), dtype=np.float32)
    bsr_spmm(rowptr, colidx, values, cols, b, relu, kg, ncols, tmp)
    out.numpy().reshape(n_size, k_size, plane)[:] = tmp.reshape(k_size, n_size, plane).transpose(1, 0, 2)
    return out


@njit(cache=True, nogil=True, parallel=True)
def nm_spmv(values, indices, n, m, ncols, x, bias, relu, out):
    """``out[b, o] = sum_q values[o, q] * x[b, (q // n) * m + indices[o, q]] + bias[o]``."""
    nb = x.shape[0]
    rows, slots = values.shape
    for o in prange(rows):
        vals = values[o]
        idx = indices[o]
        for b in range(nb):
            xb = x[b]
            acc = np.float32(0.0)
            for q in range(slots):
                col = (q // n) * m + idx[q]
                if col < ncols:
                    acc += vals[q] * xb[col]
            acc += bias[o]
            if relu and acc < 0.0:
                acc = 0.0
            out[b, o] = acc


@njit(cache=True, nogil=True, parallel=True)
def nm_spmm_t(values, indices, n, m, ncols, xt, bias, relu, yt):
    """``yt = W @ xt (+ bias, ReLU)``: xt (in, B), yt (out, B); inner loop over the batch."""
    rows, slots = values.shape
    p_total = xt.shape[1]
    ntiles = (p_total + TILE - 1) // TILE
    for o in prange(rows):
        vals = values[o]
        idx = indices[o]
        for t in range(ntiles):
            c0 = t * TILE
            c1 = min(p_total, c0 + TILE)
            w = c1 - c0
            dst = yt[o, c0:c1]
            for i in range(w):
                dst[i] = bias[o]
            for q in range(slots):
                v = vals[q]
                col = (q // n) * m + idx[q]
                if v == 0.0 or col >= ncols:
                    continue
                s = xt[col, c0:c1]
                for i in range(w):
                    dst[i] += v * s[i]
            if relu:
                for i in range(w):
                    if dst[i] < 0.0:
                        dst[i] = 0.0


class NMOperand(NamedTuple):
    """Kernel-ready arrays of an N:M weight (the prepared operand of ``"nm"``)."""

    values: np.ndarray      # (out, ngroups * n) float32
    indices: np.ndarray     # (out, ngroups * n) uint8
    n: int
    m: int
    zero_bias: np.ndarray   # (out,) float32


def prepare_nm(weight, problem) -> NMOperand:
    """The ``prepare`` step of ``"nm"``: float32 values, uint8 metadata, a zero bias."""
    return NMOperand(np.ascontiguousarray(weight.values, dtype=np.float32),
                     np.ascontiguousarray(weight.indices, dtype=np.uint8), weight.n, weight.m,
                     np.zeros(weight.shape[0], dtype=np.float32))


def linear_nm(prep, x, bias):
    """Sparse linear layer with an N:M weight (registered as ``"nm"``).

    Parameters
    ----------
    prep : Prepared
        ``prep.operand`` the :class:`NMOperand` of an NMWeight ``(out_features, in_features)``;
        ``prep.problem.relu`` fuses a ReLU.
    x : torch.Tensor (B, in_features) float32, contiguous
    bias : torch.Tensor (out_features,) float32 or None

    Returns
    -------
    torch.Tensor (B, out_features) float32
    """
    p = prep.problem
    out_f, in_f, relu = p.out_features, p.in_features, p.relu
    values, indices, n, m, _ = prep.operand
    b = bias_or_zero(bias, prep.operand)
    if x.shape[0] == 1:
        out = torch.empty((1, out_f), dtype=torch.float32)
        nm_spmv(values, indices, n, m, in_f, as_array(x), b, relu, out.numpy())
        return out
    xt = as_array(x.t().contiguous())
    yt = torch.empty((out_f, x.shape[0]), dtype=torch.float32)
    nm_spmm_t(values, indices, n, m, in_f, xt, b, relu, yt.numpy())
    return yt.t().contiguous()


register(Kernel("im2col_bsr", "conv2d", conv2d_im2col_bsr, formats=("bsr",),
                prepare=prepare_compressed,
                description="im2col + BSR SpMM (Numba, threads over block rows)"))
register(Kernel("nm", "linear", linear_nm, formats=("nm",), prepare=prepare_nm,
                description="N:M structured linear (Numba): dot per row at batch 1, X^T SpMM above"))
