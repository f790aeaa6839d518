"""Helpers shared by the Numba CPU kernels: argument marshalling and the input-padding copy.

Kernels follow one split (as in pydata/sparse): the Python wrapper converts tensors to NumPy
views, allocates the output and launches; the ``@njit`` body only computes. The helpers here
are that marshalling plus the one compute helper more than one kernel needs (padding the input).

- :func:`csr_arrays` -- ``(rowptr, colidx, values)`` of a CSR-like weight, values as float32.
- :func:`bias_array` -- the bias as a float32 ndarray (zeros when there is none).
- :func:`as_array` -- a float32 CPU tensor as a C-contiguous ndarray sharing its memory.
- :func:`pad_input` -- zero-padded copy of an NCHW input (parallel over planes).
"""

from __future__ import annotations

import numpy as np
import torch
from numba import njit, prange


def csr_arrays(weight) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The CSR arrays of ``weight`` for a kernel: int32 rowptr/colidx, float32 values.

    Works for every format storing ``rowptr``/``colidx``/``values`` over the matrix view
    (``csr``, ``unified_csr``); explicit zeros a format stores are harmless.

    Parameters
    ----------
    weight : SparseWeight with ``rowptr`` (nrows + 1,), ``colidx`` (nnz,), ``values`` (nnz,)

    Returns
    -------
    rowptr, colidx : numpy.ndarray int32
    values : numpy.ndarray float32 (a copy only when stored in another dtype)
    """
    return (np.ascontiguousarray(weight.rowptr, dtype=np.int32),
            np.ascontiguousarray(weight.colidx, dtype=np.int32),
            np.ascontiguousarray(weight.values, dtype=np.float32))


def bias_array(bias, nout: int) -> np.ndarray:
    """``bias`` (a float32 tensor (nout,) or None) as a float32 ndarray (nout,); zeros if None."""
    if bias is None:
        return np.zeros(nout, dtype=np.float32)
    return as_array(bias)


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
