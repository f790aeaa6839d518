"""Fused sparse convolution + ReLU + max-pooling on ``direct``'s register tiles, band by band
(``"fused_direct"``, op ``"conv2d_pool"``).

The PECR idea (Xu et al. 2019, ``seeds/004``): pool the convolution's output where it is made,
so the whole conv output never goes to memory. This kernel makes it fast by reusing the
``direct`` kernel (:mod:`.direct`: CSR offsets, register tiles, ReLU fused) on *bands* of the
output: the pooled rows are cut into bands whose conv rows (``N x K x rows x OW`` floats) fit
in ``band_bytes`` (default 4 MiB: measured best of 256 KiB - 8 MiB on the AlexNet / VGG-16
pooled layers, Zen 4, 1 MiB L2 per core, 32 MiB L3); for each band the input rows it reads are
copied into a contiguous band (zero rows where the band reaches into the vertical padding), the
prepared ``direct`` operand of that band's geometry (vertical padding 0, the layer's horizontal
padding) computes the band's conv rows, which are still in cache when :func:`_pool_band`
max-pools them into the ``(N, K, PH, PW)`` output (:mod:`._pool`: row maxima vectorised, no
bounds tests inside the conv output). When the whole conv output fits in one band, there is no
band copy: the layer's own convolution runs on the input as it is. A band's conv rows overlap
the next band's only where pooling windows overlap (``pool_kernel > pool_stride``, e.g.
AlexNet's 3 / 2): those rows are computed twice.

Any convolution geometry ``direct`` takes and any pooling (window, stride, ``-inf`` padding,
dilation, ``ceil_mode``); NaN propagates through the pooling as in
``torch.nn.functional.max_pool2d``. Tuning chooses it only where it beats every conv kernel
followed by ``max_pool2d`` (:mod:`sparsecnn.kernels.conv_pool`) and the other fused kernels.
"""

from __future__ import annotations

import numpy as np
import torch
from numba import njit, prange

from ..dense import conv2d_dense, prepare_dense
from ..registry import ANY_FORMAT, Kernel, register
from ._direct_common import workspace
from ._pool import interior_columns, pool_plane
from .direct import prepare_direct

#: Bytes of conv output one band may hold (the conv rows of its pooled rows, all images).
BAND_BYTES = 4 * 1024 * 1024


@njit(cache=True, nogil=True, parallel=True)
def _pool_band(y, row0, py0, py1, pk0, pk1, ps0, ps1, pp0, pp1, pd0, pd1, oh_size, ow_size,
               out, rows):
    """Max-pool the conv rows ``y`` (``(N, K, rows, OW)``: conv row ``row0 + i`` at ``i``) into
    the pooled rows ``[py0, py1)`` of ``out`` (``(N, K, PH, PW)``), one ``(image, channel)``
    plane per parallel item (:func:`._pool.pool_plane`, its scratch row ``rows[item]`` of the
    contiguous ``(N * K, OW)`` float32 ``rows``); windows clipped to the conv output
    ``[0, oh_size) x [0, ow_size)`` (the pooling's ``-inf`` padding)."""
    n_size, k_size, rows_size = y.shape[0], y.shape[1], y.shape[2]
    ph_size, pw_size = out.shape[2], out.shape[3]
    yf = y.reshape(y.size)
    of = out.reshape(out.size)
    mf = rows.reshape(rows.size)
    px_lo, px_hi = interior_columns(pw_size, pk1, ps1, pp1, pd1, ow_size)
    for item in prange(n_size * k_size):
        pool_plane(yf, item * rows_size * ow_size, row0, py0, py1, pk0, pk1, ps0, ps1, pp0, pp1,
                   pd0, pd1, oh_size, ow_size, of, item * ph_size * pw_size, pw_size, px_lo,
                   px_hi, mf, item * ow_size)


class BandOperand:
    """The prepared operand of ``fused_direct``: the bands and one ``direct`` operand per band
    height.

    Attributes
    ----------
    bands : list of (py0, py1, row0, row1, lo, hi)
        Pooled rows ``[py0, py1)``, the conv rows ``[row0, row1)`` they pool, the input rows
        ``[lo, hi)`` those read (may reach outside ``[0, H)``: zero rows).
    ops : dict
        ``hi - lo`` -> the :class:`~._direct_common.DirectOperand` of the band's convolution
        (``H = hi - lo``, vertical padding 0); with a single band, ``None`` -> the operand of
        the layer's own convolution, run on the input as it is (no band copy).
    """

    __slots__ = ("bands", "ops")

    def __init__(self, bands, ops):
        self.bands, self.ops = bands, ops


def band_rows(problem, band_bytes: int = BAND_BYTES) -> list[tuple[int, int, int, int, int, int]]:
    """The bands of a :class:`~sparsecnn.problem.ConvPoolProblem` (see :class:`BandOperand`):
    as many pooled rows per band as keep its conv rows (``N x K x rows x OW`` float32) within
    ``band_bytes``, at least one.

    Raises
    ------
    ValueError
        ``band_bytes`` not a positive int.
    """
    if not isinstance(band_bytes, int) or isinstance(band_bytes, bool) or band_bytes < 1:
        raise ValueError(f"band_bytes must be a positive int, got {band_bytes!r}")
    p = problem
    pk0, ps0, pp0, pd0 = p.pool_kernel[0], p.pool_stride[0], p.pool_padding[0], p.pool_dilation[0]
    span = (pk0 - 1) * pd0 + 1
    row_bytes = p.N * p.K * p.OW * 4
    pb = max(1, (band_bytes // row_bytes - span) // ps0 + 1)
    bands = []
    for py0 in range(0, p.PH, pb):
        py1 = min(p.PH, py0 + pb)
        row0 = max(0, py0 * ps0 - pp0)
        row1 = min(p.OH, (py1 - 1) * ps0 - pp0 + span)
        lo = row0 * p.stride[0] - p.padding[0]
        hi = (row1 - 1) * p.stride[0] - p.padding[0] + (p.R - 1) * p.dilation[0] + 1
        bands.append((py0, py1, row0, row1, lo, hi))
    return bands


def prepare_fused_direct(weight, problem, band_bytes: int = BAND_BYTES,
                         nthreads=None) -> BandOperand:
    """The ``prepare`` step of ``fused_direct``: the bands (:func:`band_rows`) and a ``direct``
    operand (:func:`~.direct.prepare_direct`) for each distinct band height."""
    bands = band_rows(problem, band_bytes)
    conv = problem.conv_problem()
    if len(bands) == 1:  # the whole conv output fits: no band copy, the layer's own padding
        return BandOperand(bands, {None: prepare_direct(weight, conv, nthreads=nthreads)})
    ops = {}
    for _, _, _, _, lo, hi in bands:
        if hi - lo not in ops:
            ops[hi - lo] = prepare_direct(
                weight, conv.replace(H=hi - lo, padding=(0, conv.padding[1])), nthreads=nthreads)
    return BandOperand(bands, ops)


def conv2d_pool_fused_direct(prep, x, bias):
    """Fused convolution + ReLU + max-pooling, band by band on ``direct`` (registered as
    ``"fused_direct"`` for op ``conv2d_pool``; see the module docstring).

    Parameters
    ----------
    prep : Prepared
        ``prep.operand`` the :class:`BandOperand` of :func:`prepare_fused_direct` for
        ``prep.problem`` (a :class:`~sparsecnn.problem.ConvPoolProblem`) from a CSR-like weight
        ``(K, C/groups, R, S)``.
    x : torch.Tensor (N, C, H, W) float32, contiguous, CPU
    bias : torch.Tensor (K,) float32 or None

    Returns
    -------
    torch.Tensor (N, K, PH, PW) float32: ``max_pool2d(relu?(conv2d(x, w, bias)))``.
    """
    p = prep.problem
    op = prep.operand
    n, c, h, w = x.shape
    out = np.empty(p.out_shape, dtype=np.float32)
    rows = _pool_rows(p, n)
    for py0, py1, row0, row1, lo, hi in op.bands:
        if None in op.ops:  # one band: the conv rows [0, OH) of the input as it is
            xb, row0, key = x, 0, None
        elif lo >= 0 and hi <= h:
            xb, key = x[:, :, lo:hi].contiguous(), hi - lo
        else:
            xb, key = x.new_zeros((n, c, hi - lo, w)), hi - lo
            a, b = max(lo, 0), min(hi, h)
            if b > a:
                xb[:, :, a - lo:b - lo] = x[:, :, a:b]
        y = op.ops[key].run(xb, bias, p.relu)
        _pool_into(y, row0, py0, py1, p, out, rows)
    return torch.from_numpy(out)


def _pool_into(y, row0, py0, py1, p, out, rows):
    """Pool conv rows ``y`` (a tensor, ``(N, K, rows, OW)`` from conv row ``row0``) into pooled
    rows ``[py0, py1)`` of ``out`` with the pooling of problem ``p``."""
    _pool_band(y.numpy(), row0, py0, py1, p.pool_kernel[0], p.pool_kernel[1], p.pool_stride[0],
               p.pool_stride[1], p.pool_padding[0], p.pool_padding[1], p.pool_dilation[0],
               p.pool_dilation[1], p.OH, p.OW, out, rows)


def _pool_rows(p, n):
    """The pooling's scratch rows (``(N * K, OW)`` float32, reused per thread)."""
    return workspace("pool_rows", n * p.K * p.OW)[:n * p.K * p.OW].reshape(n * p.K, p.OW)


def conv2d_pool_fused_dense(prep, x, bias):
    """PyTorch's dense convolution, ReLU, then the fused kernels' max-pooling (registered as
    ``"fused_dense"`` for op ``conv2d_pool``).

    For layers whose weight is too dense for a sparse convolution to pay (the first conv of
    AlexNet / VGG, left dense by pruning) but followed by a max-pool: the ``dense`` kernel's
    convolution (:func:`~sparsecnn.kernels.dense.conv2d_dense`: ``F.conv2d``, oneDNN, ReLU) on
    the densified weight, then :func:`_pool_band` on the whole conv output, in place of
    ``max_pool2d``, whose NCHW path is a scalar loop (see :mod:`._pool`). The conv output goes
    to memory (no bands: oneDNN computes it in one call).

    Parameters
    ----------
    prep : Prepared
        ``prep.operand`` the dense float32 weight ``(K, C/groups, R, S)``
        (:func:`~sparsecnn.kernels.dense.prepare_dense`) for ``prep.problem``, a
        :class:`~sparsecnn.problem.ConvPoolProblem`.
    x : torch.Tensor (N, C, H, W) float32, contiguous, CPU
    bias : torch.Tensor (K,) float32 or None

    Returns
    -------
    torch.Tensor (N, K, PH, PW) float32: ``max_pool2d(relu?(conv2d(x, w, bias)))``.
    """
    p = prep.problem
    y = conv2d_dense(prep, x, bias).contiguous()
    out = np.empty(p.out_shape, dtype=np.float32)
    _pool_into(y, 0, 0, p.PH, p, out, _pool_rows(p, x.shape[0]))
    return torch.from_numpy(out)


register(Kernel(
    "fused_direct", "conv2d_pool", conv2d_pool_fused_direct, formats=("csr",),
    prepare=prepare_fused_direct,
    sources=("sparsecnn.kernels.cpu.direct", "sparsecnn.kernels.cpu._pool",
             "sparsecnn.kernels.cpu._vec",
             "sparsecnn.kernels.cpu._direct_common", "sparsecnn.kernels.cpu.direct_csr",
             "sparsecnn.kernels.capabilities"),
    description="fused conv + ReLU + max-pool on direct's register tiles: the output cut into "
                "bands of pooled rows whose conv rows fit in cache, each band convolved by "
                "direct and pooled while in cache (the full conv output is never written)",
))

register(Kernel(
    "fused_dense", "conv2d_pool", conv2d_pool_fused_dense, formats=(ANY_FORMAT,),
    prepare=prepare_dense,
    sources=("sparsecnn.kernels.cpu._pool", "sparsecnn.kernels.dense"),
    description="dense conv (torch.nn.functional.conv2d) + ReLU, then the fused kernels' "
                "max-pool (row maxima vectorised) instead of max_pool2d",
))

__all__ = ["conv2d_pool_fused_direct", "conv2d_pool_fused_dense", "prepare_fused_direct",
           "band_rows", "BandOperand", "BAND_BYTES"]
