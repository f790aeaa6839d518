"""Sparse fully connected layers ``y = x W^T + b`` with a CSR weight (out_features, in_features).

- ``"spmv"`` (batch 1): threads over output rows; each output is the dot product of a sparse
  weight row with ``x`` (a gather of ``x`` at the row's column indices). Weight bytes dominate, so
  it runs at memory speed on ``nnz * 6`` bytes (uint16 column indices where ``in_features <=
  65536``, :func:`~._common.prepare_compressed_narrow`; ``nnz * 8`` beyond) instead of the dense
  ``out * in * 4``: the source of the ~3x FC speed-up the seeds report (Han et al. 2016, EIE /
  Deep Compression). At batch B > 1 it repeats the dot per batch row (correct, rarely the
  fastest).
- ``"spmm"`` (batch > 1): ``Y^T = W X^T`` with ``X^T`` (in, B) contiguous, so each nonzero
  broadcasts its value over a contiguous batch row (the same CSR SpMM as ``im2col_spmm``), then
  ``Y^T`` is transposed back.

Both fuse the bias and an optional ReLU.
"""

from __future__ import annotations

import numpy as np
import torch
from numba import njit, prange

from ..registry import Kernel, register
from ._common import as_array, bias_or_zero, prepare_compressed_narrow
from .im2col_spmm import csr_spmm


@njit(cache=True, nogil=True, parallel=True)
def csr_spmv(rowptr, colidx, values, x, bias, relu, out):
    """``out[b, o] = sum_p values[p] * x[b, colidx[p]] + bias[o]`` over row ``o``'s nonzeros.

    x (B, in) float32, out (B, out) float32; threads over output rows ``o``; four partial sums
    break the dependency chain of the gather-multiply-add loop.
    """
    nb = x.shape[0]
    m = out.shape[1]
    for o in prange(m):
        p0 = rowptr[o]
        p1 = rowptr[o + 1]
        vals = values[p0:p1]
        cols = colidx[p0:p1]
        cnt = p1 - p0
        for b in range(nb):
            xb = x[b]
            a0 = np.float32(0.0)
            a1 = np.float32(0.0)
            a2 = np.float32(0.0)
            a3 = np.float32(0.0)
            q = 0
            while q + 4 <= cnt:
                a0 += vals[q] * xb[cols[q]]
                a1 += vals[q + 1] * xb[cols[q + 1]]
                a2 += vals[q + 2] * xb[cols[q + 2]]
                a3 += vals[q + 3] * xb[cols[q + 3]]
                q += 4
            while q < cnt:
                a0 += vals[q] * xb[cols[q]]
                q += 1
            acc = bias[o] + ((a0 + a1) + (a2 + a3))
            if relu and acc < 0.0:
                acc = 0.0
            out[b, o] = acc


def linear_spmv(prep, x, bias):
    """Sparse linear layer by CSR SpMV (registered as ``"spmv"``; any batch, best at batch 1).

    Parameters
    ----------
    prep : Prepared
        ``prep.operand`` the :class:`~._common.CompressedOperand` of a CSR-like weight
        ``(out_features, in_features)`` (uint16 or int32 ``colidx``); ``prep.problem.relu``
        fuses a ReLU.
    x : torch.Tensor (B, in_features) float32, contiguous
    bias : torch.Tensor (out_features,) float32 or None

    Returns
    -------
    torch.Tensor (B, out_features) float32
    """
    rowptr, colidx, values, _ = prep.operand
    out = torch.empty((x.shape[0], prep.problem.out_features), dtype=torch.float32)
    csr_spmv(rowptr, colidx, values, as_array(x), bias_or_zero(bias, prep.operand),
             prep.problem.relu, out.numpy())
    return out


def linear_spmm(prep, x, bias):
    """Sparse linear layer by CSR SpMM on the transposed input (registered as ``"spmm"``).

    Computes ``Y^T = W X^T``: ``X^T`` (in, B) is made contiguous so that the inner loop of each
    nonzero runs over the batch; ``Y^T`` (out, B) is transposed into the result.

    Parameters
    ----------
    prep : Prepared
        As :func:`linear_spmv`.
    x : torch.Tensor (B, in_features) float32, contiguous
    bias : torch.Tensor (out_features,) float32 or None

    Returns
    -------
    torch.Tensor (B, out_features) float32
    """
    rowptr, colidx, values, _ = prep.operand
    out_f = prep.problem.out_features
    xt = as_array(x.t().contiguous())  # torch's blocked, threaded transpose (3x NumPy's here)
    yt = torch.empty((out_f, x.shape[0]), dtype=torch.float32)
    csr_spmm(rowptr, colidx, values, xt, bias_or_zero(bias, prep.operand), prep.problem.relu,
             out_f, 0, yt.numpy())
    return yt.t().contiguous()


register(Kernel("spmv", "linear", linear_spmv, formats=("csr",),
                prepare=prepare_compressed_narrow,
                description="CSR SpMV, threads over output rows (Numba); batch rows in turn"))
register(Kernel("spmm", "linear", linear_spmm, formats=("csr",),
                prepare=prepare_compressed_narrow,
                description="CSR SpMM on X^T, inner loop over the batch (Numba)"))
