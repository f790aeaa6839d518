"""Helpers shared by the Numba CPU kernels: argument marshalling and the input-padding copy.

Kernels follow one split (as in pydata/sparse): the Python wrapper converts tensors to NumPy
views, allocates the output and launches; the ``@njit`` body only computes. The helpers here
are that marshalling plus the one compute helper more than one kernel needs (padding the input).

- :func:`prepare_compressed` -- the ``prepare`` step of CSR / BSR kernels: a
  :class:`CompressedOperand` (int32 ``rowptr``/``colidx``, float32 ``values``, a zero bias).
- :func:`prepare_compressed_narrow` -- the same with 16-bit column indices where the columns
  fit (the sparse linear kernels: memory-bound, 6 instead of 8 bytes per nonzero).
- :func:`bias_or_zero` -- the bias as a float32 ndarray (the operand's zeros when there is none).
- :func:`as_array` -- a float32 CPU tensor as a C-contiguous ndarray sharing its memory.
- :func:`pad_input` -- zero-padded copy of an NCHW input (parallel over planes).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
from numba import njit, prange


class CompressedOperand(NamedTuple):
    """Kernel-ready arrays of a CSR-like or BSR weight (the prepared operand of its kernels)."""

    rowptr: np.ndarray      # (nrows + 1,) or (nblockrows + 1,) int32
    colidx: np.ndarray      # (nstored,) or (nblocks,) int32 (uint16: prepare_compressed_narrow)
    values: np.ndarray      # (nstored,) or (nblocks, bh, bw) float32
    zero_bias: np.ndarray   # (nrows,) float32 zeros: the bias when there is none


def prepare_compressed(weight, problem) -> CompressedOperand:
    """The ``prepare`` step of the CSR and BSR kernels: index arrays as int32 and values as
    float32 (the weight's own read-only arrays when they already are), plus a zero bias."""
    return CompressedOperand(np.ascontiguousarray(weight.rowptr, dtype=np.int32),
                             np.ascontiguousarray(weight.colidx, dtype=np.int32),
                             np.ascontiguousarray(weight.values, dtype=np.float32),
                             np.zeros(weight.shape[0], dtype=np.float32))


#: Most columns whose indices :func:`prepare_compressed_narrow` stores in 16 bits.
NARROW_MAX_COLS = 1 << 16


def prepare_compressed_narrow(weight, problem) -> CompressedOperand:
    """As :func:`prepare_compressed`, but ``colidx`` as uint16 when the weight has at most
    :data:`NARROW_MAX_COLS` columns (the product of ``weight.shape[1:]``; int32 otherwise).

    For kernels whose time is the weight's bytes (CSR SpMV at batch 1: ``nnz * (4 + 4)`` bytes
    with int32 indices, ``nnz * (4 + 2)`` with uint16, as EIE's short relative indices cut its
    storage, Han et al. 2016): AlexNet's fc6 (9216 columns) and fc7 (4096) read 25 % fewer
    bytes. The kernels index with the uint16 values unchanged (Numba widens them exactly)."""
    op = prepare_compressed(weight, problem)
    if int(np.prod(weight.shape[1:])) > NARROW_MAX_COLS:
        return op
    return op._replace(colidx=np.ascontiguousarray(op.colidx, dtype=np.uint16))


def bias_or_zero(bias, operand) -> np.ndarray:
    """``bias`` as a float32 ndarray, or the operand's zero bias when it is None."""
    return operand.zero_bias if bias is None else as_array(bias)


def as_array(t: torch.Tensor) -> np.ndarray:
    """A CPU float32 tensor as a C-contiguous float32 ndarray (no copy when it already is one)."""
    return np.ascontiguousarray(t.detach().numpy(), dtype=np.float32)


@njit(cache=True, nogil=True, parallel=True)
def _pad_into(x, ph, pw, out):
    n, c, h, w = x.shape
    hp, wp = out.shape[2], out.shape[3]
    for q in prange(n * c):
        src = x[q // c, q % c]
        dst = out[q // c, q % c]
        for i in range(ph):
            dst[i, :] = 0.0
        for i in range(ph + h, hp):
            dst[i, :] = 0.0
        for i in range(h):
            row = dst[ph + i]
            srow = src[i]
            for j in range(pw):
                row[j] = 0.0
            for j in range(w):
                row[pw + j] = srow[j]
            for j in range(pw + w, wp):
                row[j] = 0.0


def pad_input(x: np.ndarray, ph: int, pw: int, extra_w: int = 0) -> np.ndarray:
    """Zero-padded copy of an NCHW input.

    Parameters
    ----------
    x : numpy.ndarray (N, C, H, W) float32, C-contiguous
    ph, pw : int
        Zeros added above and below (``ph``), left and right (``pw``).
    extra_w : int
        Further zero columns on the right (e.g. so that a kernel may read whole vectors past the
        last column of a row); default 0.

    Returns
    -------
    numpy.ndarray (N, C, H + 2 ph, W + 2 pw + extra_w) float32, C-contiguous (``x`` itself when
    no padding is asked for).
    """
    if ph == 0 and pw == 0 and extra_w == 0:
        return x
    n, c, h, w = x.shape
    out = np.empty((n, c, h + 2 * ph, w + 2 * pw + extra_w), dtype=np.float32)
    _pad_into(x, ph, pw, out)
    return out
