"""Max-pooling of conv rows, for the fused conv + ReLU + max-pool kernels (op ``conv2d_pool``).

One pooled plane at a time, in two passes per pooled row: the window's conv rows are reduced
into one row buffer (``m[x] = max(m[x], row[x])`` over contiguous floats, branch-free, so LLVM
vectorises it), then each pooled column takes the max of its window's columns in that buffer,
with no bounds tests on the columns whose window lies inside the conv output. A pooled value
costs ``pk0 / PW``-vectorised row reads plus ``pk1`` scalar reads, instead of ``pk0 * pk1``
bounds-tested reads.

Semantics are those of ``torch.nn.functional.max_pool2d``: windows ``pool_kernel`` with
``pool_stride``, ``pool_dilation`` and ``-inf`` ``pool_padding`` (clipped to the conv output),
NaN sticky (a window holding a NaN pools to NaN).
"""

from __future__ import annotations

import numpy as np
from numba import njit

__all__ = ["pool_plane", "interior_columns"]


@njit(cache=True, nogil=True)
def _pick(v, mv):
    """``max(v, mv)`` with NaN sticky: ``v`` wins when greater or NaN; a NaN ``mv`` stays."""
    return v if (v > mv) | (v != v) else mv


# The hot loops index with uint64: a signed index makes Numba wrap negative values around,
# which LLVM vectorises only as gathers / scatters.
@njit(cache=True, nogil=True)
def _row_copy(m, mb, y, yr, n):
    """``m[mb:mb + n] = y[yr:yr + n]`` (``mb, yr >= 0``)."""
    d, s = np.uint64(mb), np.uint64(yr)
    for x in range(np.uint64(n)):
        m[d + x] = y[s + x]


@njit(cache=True, nogil=True)
def _row_max(m, mb, y, yr, n):
    """``m[mb:mb + n] = max(m[mb:mb + n], y[yr:yr + n])``, NaN sticky (``mb, yr >= 0``)."""
    d, s = np.uint64(mb), np.uint64(yr)
    for x in range(np.uint64(n)):
        m[d + x] = _pick(y[s + x], m[d + x])


@njit(cache=True, nogil=True)
def _pool_cols(m, mb, out, ob, px0, px1, pk1, ps1, pp1, pd1):
    """Pooled columns ``[px0, px1)`` of one row, every tap inside the row maxima
    ``m[mb:]`` (no bounds tests)."""
    for px in range(px0, px1):
        base = np.uint64(mb + px * ps1 - pp1)
        mv = m[base]
        for b in range(1, pk1):
            mv = _pick(m[base + np.uint64(b * pd1)], mv)
        out[np.uint64(ob + px)] = mv


@njit(cache=True, nogil=True)
def _pool_cols_clipped(m, mb, out, ob, px0, px1, pk1, ps1, pp1, pd1, ow_size):
    """Pooled columns ``[px0, px1)`` of one row (``out[ob + px]``) from the row maxima
    ``m[mb:mb + ow_size]``, taps clipped to ``[0, ow_size)``."""
    for px in range(px0, px1):
        mv = np.float32(-np.inf)
        for b in range(pk1):
            xx = px * ps1 - pp1 + b * pd1
            if 0 <= xx < ow_size:
                mv = _pick(m[mb + xx], mv)
        out[ob + px] = mv


@njit(cache=True, nogil=True)
def interior_columns(pw_size, pk1, ps1, pp1, pd1, ow_size):
    """``(px_lo, px_hi)``: the pooled columns whose whole window lies in ``[0, ow_size)`` (pooled
    there without bounds tests; an empty range ``px_lo == px_hi`` when there are none)."""
    px_lo = (pp1 + ps1 - 1) // ps1
    reach = ow_size - 1 + pp1 - (pk1 - 1) * pd1
    px_hi = reach // ps1 + 1 if reach >= 0 else 0
    if px_hi > pw_size:
        px_hi = pw_size
    if px_lo > px_hi:
        px_lo = px_hi
    return px_lo, px_hi


@njit(cache=True, nogil=True)
def pool_plane(y, yb, row0, py0, py1, pk0, pk1, ps0, ps1, pp0, pp1, pd0, pd1, oh_size, ow_size,
               out, ob, pw_size, px_lo, px_hi, m, mb):
    """Max-pool one plane of conv rows into pooled rows ``[py0, py1)``, on flat float32 arrays
    (indices, not views: a view per row would cost more than the row's pooling).

    Conv row ``row0 + i`` is ``y[yb + i * ow_size:][:ow_size]``; pooled row ``py`` is
    ``out[ob + py * pw_size:][:pw_size]``. Pooled row ``py`` reads conv rows
    ``py * ps0 - pp0 + a * pd0`` (``a < pk0``) and columns ``px * ps1 - pp1 + b * pd1``
    (``b < pk1``) that lie in ``[0, oh_size) x [0, ow_size)``; the caller guarantees those rows
    are in ``y``. ``[px_lo, px_hi)`` are the pooled columns whose whole window lies in
    ``[0, ow_size)`` (:func:`interior_columns`). ``m[mb:mb + ow_size]`` is scratch. A window
    with no conv value in range pools to ``-inf``.
    """
    for py in range(py0, py1):
        orow = ob + py * pw_size
        nrows = 0
        for a in range(pk0):
            yy = py * ps0 - pp0 + a * pd0
            if yy < 0 or yy >= oh_size:
                continue
            yr = yb + (yy - row0) * ow_size
            if nrows == 0:
                _row_copy(m, mb, y, yr, ow_size)
            else:
                _row_max(m, mb, y, yr, ow_size)
            nrows += 1
        if nrows == 0:
            for px in range(pw_size):
                out[orow + px] = -np.inf
            continue
        _pool_cols(m, mb, out, orow, px_lo, px_hi, pk1, ps1, pp1, pd1)
        _pool_cols_clipped(m, mb, out, orow, 0, px_lo, pk1, ps1, pp1, pd1, ow_size)
        _pool_cols_clipped(m, mb, out, orow, px_hi, pw_size, pk1, ps1, pp1, pd1, ow_size)
