"""Convolution as im2col + CSR SpMM: the "CSRMM" baseline of sparse CNN inference on CPU.

The input is unfolded (im2col) into a column matrix with one row per weight column
``j = (c * R + r) * S + s`` and one column per output pixel ``p = n * OH * OW + oh * OW + ow``;
the groups' matrices are stacked, group ``g`` owning rows ``g * C/groups * R * S`` onwards. The
output is then ``Y_g = W_g @ cols_g`` for each group, with ``W_g`` the group's rows of the CSR
weight (K/groups x C/groups*R*S). This is how Caffe's sparse branch (Wen et al. 2016) and the
seeds' "CSRMM" analysis ran sparse convolutions with MKL/cuSPARSE; it does dense work in the
im2col (``C R S x N OH OW`` copies) whatever the sparsity, which is why direct sparse
convolution (Park et al. 2017, ``kernels/cpu/direct.py``) overtakes it.

SpMM loop nest (threads over weight rows, i.e. output channels):
``k`` (parallel) -> tile of ``TILE`` output columns (kept in L1) -> nonzeros of row ``k``, four at a
time (broadcast each value; each source row read through a slice taken once per nonzero, so LLVM
vectorises the column loop) -> column loop ``dst[i] += v0 s0[i] + v1 s1[i] + v2 s2[i] + v3 s3[i]``.
Bias initialises the tile; ReLU is applied when the tile is done.
"""

from __future__ import annotations

import numpy as np
import torch
from numba import njit, prange

from ..registry import Kernel, register
from ._common import as_array, bias_or_zero, prepare_compressed

#: Output columns per SpMM tile (8 KiB of float32 accumulators: stays in L1).
TILE = 2048
#: Largest im2col buffer (bytes) before the batch is processed in chunks.
MAX_COLS_BYTES = 64 << 20


@njit(cache=True, nogil=True, parallel=True)
def csr_spmm(rowptr, colidx, values, src, bias, relu, rows_per_group, cols_per_group, out):
    """``out = W @ src (+ bias, ReLU)`` for CSR ``W``; grouped: row k reads block k // rows_per_group.

    rowptr (M+1,) int32, colidx (nnz,) int32 (group-local), values (nnz,) float32,
    src (groups * cols_per_group, P) float32, bias (M,) float32, out (M, P) float32.
    """
    m, p_total = out.shape
    ntiles = (p_total + TILE - 1) // TILE
    for k in prange(m):
        base = (k // rows_per_group) * cols_per_group
        b = bias[k]
        p0 = rowptr[k]
        p1 = rowptr[k + 1]
        for t in range(ntiles):
            c0 = t * TILE
            c1 = min(p_total, c0 + TILE)
            w = c1 - c0
            dst = out[k, c0:c1]
            for i in range(w):
                dst[i] = b
            p = p0
            while p + 4 <= p1:
                v0 = values[p]
                v1 = values[p + 1]
                v2 = values[p + 2]
                v3 = values[p + 3]
                s0 = src[base + colidx[p], c0:c1]
                s1 = src[base + colidx[p + 1], c0:c1]
                s2 = src[base + colidx[p + 2], c0:c1]
                s3 = src[base + colidx[p + 3], c0:c1]
                for i in range(w):
                    dst[i] += v0 * s0[i] + v1 * s1[i] + v2 * s2[i] + v3 * s3[i]
                p += 4
            while p < p1:
                v0 = values[p]
                s0 = src[base + colidx[p], c0:c1]
                for i in range(w):
                    dst[i] += v0 * s0[i]
                p += 1
            if relu:
                for i in range(w):
                    if dst[i] < 0.0:
                        dst[i] = 0.0


@njit(cache=True, nogil=True)
def used_columns(rowptr, colidx, rows_per_group, cols_per_group, ngroups):
    """Mask (groups * cols_per_group,) of the im2col rows some nonzero reads (others are skipped)."""
    used = np.zeros(ngroups * cols_per_group, dtype=np.bool_)
    m = rowptr.size - 1
    for k in range(m):
        base = (k // rows_per_group) * cols_per_group
        for p in range(rowptr[k], rowptr[k + 1]):
            used[base + colidx[p]] = True
    return used


@njit(cache=True, nogil=True, parallel=True)
def im2col(x, r_size, s_size, sh, sw, ph, pw, dh, dw, oh_size, ow_size, used, cols):
    """Unfold NCHW ``x`` into ``cols`` (C*R*S, N*OH*OW); rows with ``used[j]`` False are skipped."""
    n_size, c_size, h, w = x.shape
    plane = oh_size * ow_size
    for j in prange(c_size * r_size * s_size):
        if not used[j]:
            continue
        s = j % s_size
        r = (j // s_size) % r_size
        c = j // (r_size * s_size)
        off_w = s * dw - pw
        # output columns whose input column ow * sw + off_w lies in [0, w)
        ow_lo = 0 if off_w >= 0 else (-off_w + sw - 1) // sw
        ow_hi = (w - 1 - off_w) // sw + 1 if w - 1 - off_w >= 0 else 0
        ow_hi = min(ow_hi, ow_size)
        ow_lo = min(ow_lo, ow_hi)
        row = cols[j]
        for n in range(n_size):
            xc = x[n, c]
            for oh in range(oh_size):
                ih = oh * sh - ph + r * dh
                dst = row[n * plane + oh * ow_size:n * plane + (oh + 1) * ow_size]
                if ih < 0 or ih >= h:
                    for ow in range(ow_size):
                        dst[ow] = 0.0
                    continue
                xr = xc[ih]
                for ow in range(ow_lo):
                    dst[ow] = 0.0
                if sw == 1:
                    src = xr[ow_lo + off_w:ow_hi + off_w]
                    for i in range(ow_hi - ow_lo):
                        dst[ow_lo + i] = src[i]
                else:
                    for ow in range(ow_lo, ow_hi):
                        dst[ow] = xr[ow * sw + off_w]
                for ow in range(ow_hi, ow_size):
                    dst[ow] = 0.0


def conv2d_im2col_spmm(prep, x, bias):
    """Sparse 2-D convolution by im2col + CSR SpMM (registered as ``"im2col_spmm"``).

    Parameters
    ----------
    prep : Prepared
        ``prep.operand`` the :class:`~._common.CompressedOperand` of a CSR-like weight
        ``(K, C/groups, R, S)``; ``prep.problem`` the :class:`~sparsecnn.problem.ConvProblem`
        (geometry, fused ReLU).
    x : torch.Tensor (N, C, H, W) float32, contiguous
    bias : torch.Tensor (K,) float32 or None

    Returns
    -------
    torch.Tensor (N, K, OH, OW) float32

    Notes
    -----
    Memory: an im2col buffer of ``C R S x n OH OW`` float32, the batch split into chunks of
    ``n`` images so that it stays under :data:`MAX_COLS_BYTES`. A 1x1, stride-1, unpadded
    convolution at batch 1 skips im2col (the input already is the column matrix).
    """
    p = prep.problem
    n_size, c_size, h, w = x.shape
    k_size, cg, r_size, s_size = p.w_shape
    stride, padding = p.stride, p.padding
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, p.dilation
    groups, relu = p.groups, p.relu
    oh, ow = p.OH, p.OW
    plane = oh * ow
    rowptr, colidx, values, _ = prep.operand
    b = bias_or_zero(bias, prep.operand)
    kg = k_size // groups
    ncols = cg * r_size * s_size
    xa = as_array(x)
    out = torch.empty((n_size, k_size, oh, ow), dtype=torch.float32)
    oa = out.numpy()

    identity = (r_size == 1 and s_size == 1 and stride == (1, 1) and padding == (0, 0))
    if identity and n_size == 1:
        csr_spmm(rowptr, colidx, values, xa.reshape(c_size, h * w), b, relu, kg, ncols,
                 oa.reshape(k_size, plane))
        return out

    used = used_columns(rowptr, colidx, kg, ncols, groups)
    rows = groups * ncols
    chunk = max(1, min(n_size, MAX_COLS_BYTES // max(1, rows * plane * 4)))
    cols = np.empty((rows, chunk * plane), dtype=np.float32)
    tmp = np.empty((k_size, chunk * plane), dtype=np.float32) if n_size > 1 else None
    for n0 in range(0, n_size, chunk):
        n1 = min(n_size, n0 + chunk)
        nb = n1 - n0
        cb = cols[:, :nb * plane] if nb == chunk else np.ascontiguousarray(cols[:, :nb * plane])
        im2col(xa[n0:n1], r_size, s_size, sh, sw, ph, pw, dh, dw, oh, ow, used, cb)
        if nb == 1:
            csr_spmm(rowptr, colidx, values, cb, b, relu, kg, ncols, oa[n0].reshape(k_size, plane))
        else:
            tb = tmp[:, :nb * plane] if nb == chunk else np.empty((k_size, nb * plane), np.float32)
            csr_spmm(rowptr, colidx, values, cb, b, relu, kg, ncols, tb)
            # (K, nb * OH * OW) -> (nb, K, OH * OW)
            oa[n0:n1].reshape(nb, k_size, plane)[:] = tb.reshape(k_size, nb, plane).transpose(1, 0, 2)
    return out


register(Kernel(
    "im2col_spmm", "conv2d", conv2d_im2col_spmm, formats=("csr",), prepare=prepare_compressed,
    description="im2col + CSR SpMM (Numba, threads over output channels): the CSRMM baseline",
))
