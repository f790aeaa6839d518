"""Direct sparse convolution on the CPU, AVX-512 (Numba + explicit AVX-512 register blocking).

Kernel ``direct_avx512``, offered only where the compilation target has AVX-512F; the portable
kernel ``direct`` (:mod:`sparsecnn.kernels.cpu.direct`) runs the same algorithm everywhere.
Planning, load balance and operands are shared (:mod:`sparsecnn.kernels.cpu._direct_common`).

Algorithm (Park et al. 2017, "Faster CNNs with direct sparse convolutions and guided pruning",
ICLR; the same data layout as Escoin, Chen 2018):

1. The weight's CSR column indices are rewritten once per input geometry into offsets into the
   prepared input (:class:`~sparsecnn.kernels.cpu.direct_csr.DirectConvCSR`, built by the
   kernel's prepare step and cached with the weight by :mod:`sparsecnn.kernels.prepared`).
2. Per call, the input is copied once into a flat, 64-byte aligned float32 buffer (reused per
   Python thread): padded (stride 1: one ``vexpandps`` + store per 16 floats of a padded plane,
   lane masks precomputed per plan), and for stride > 1 split into ``sh * sw`` phase planes
   (space-to-depth; stride 2 with AVX-512 even/odd shuffles), so that every tap of every stride
   is a stride-1 read.
3. Each output channel's plane is computed over the padded row width ``Wph`` as one contiguous
   range ``[0, OH * Wph)``, cut into tiles of ``NV`` vectors of 16 floats. For a tile, the loop
   over the channel's nonzeros keeps the ``NV`` accumulators in zmm registers
   (:mod:`sparsecnn.kernels.cpu._simd`): one broadcast, ``NV + 1`` aligned loads realigned by
   ``NV`` permutes, and ``NV`` FMAs per nonzero. Bias initialises the accumulators; ReLU is
   applied when the tile is stored into the ``(N, K, OH, OW)`` output, the ``Wph - OW`` junk
   columns packed out with ``vcompressps`` and a masked store.
4. Threads (``prange``, one parallel region per call: the input preparation is split into
   channel slices claimed atomically by the items sharing an image, see :func:`_run_parallel`)
   take work items ``(image, chunk of output channels, group of tiles)``;
   output-channel chunks are balanced by nnz with :func:`partition_rows`. Inside an item tiles
   are the outer loop and channels the inner one, so a tile's input window is reused from cache
   across channels. Input channels may be blocked (``cblock``) so the slice of input a block's
   nonzeros read stays in L1; partial sums then live in a small scratch buffer.

Tiny problems (a few microseconds of work) run single-threaded: waking threads would cost more.
"""

from __future__ import annotations

import numba
import numpy as np
from numba import njit, prange

from ..registry import Kernel, register
from ._direct_common import (BUF as _BUF, HPH as _HPH, IMG as _IMG, K as _K, NB as _NB,
                             NKC as _NKC, NPHASE as _NPHASE, NSL as _NSL, NTG as _NTG, NV as _NV,
                             OH as _OH, OW as _OW, PH as _PH, PLANE as _PLANE, PW as _PW,
                             SCI as _SCI, SH as _SH, SW as _SW, TL as _TL, WPH as _WPH,
                             DirectOperand, TilePlan, choose_cblock, partition_rows)
from ._direct_common import layout as _layout
from ._simd import (NV_MAX, VEC, deinterleave2, expand16, expand16_full, fma_tile, is_ready, publish,
                    try_claim, vfill)
from .direct_csr import DirectConvCSR

__all__ = ["conv2d_direct", "prepare_direct", "layout", "partition_rows"]

# Work (in 16-wide FMAs) below which a call runs on one thread.
SERIAL_WORK = 40_000


# --------------------------------------------------------------------------------------------
# jitted bodies (compute only)
# --------------------------------------------------------------------------------------------
@njit(cache=True, nogil=True)
def _prepare_input(i, x, xbuf, prm, C, H, W):
    """Copy channel ``i = n * C + c`` of ``x`` (flat NCHW) into its padded phase planes
    (stride > 1; stride 1 is :func:`_prepare_slice`)."""
    sh, sw, ph, pw = prm[_SH], prm[_SW], prm[_PH], prm[_PW]
    hph, wph, plane, nphase = prm[_HPH], prm[_WPH], prm[_PLANE], prm[_NPHASE]
    src0 = i * H * W
    n = i // C
    c = i - n * C
    dst0 = n * prm[_IMG] + c * nphase * plane
    vfill(xbuf, dst0, nphase * plane, 0.0)
    if sh == 2 and sw == 2:
        # each input row goes to one phase-row pair; evens / odds split with AVX-512 shuffles
        pe, po = pw & 1, (1 + pw) & 1
        xe, xo = pw // 2, (1 + pw) // 2
        ne, no = min((W + 1) // 2, wph - xe), min(W // 2, wph - xo)
        for iy in range(H):
            yy = (iy + ph) >> 1
            if yy >= hph:
                continue
            py = (iy + ph) & 1
            row = dst0 + yy * wph
            deinterleave2(xbuf, row + (py * 2 + pe) * plane + xe, ne,
                          row + (py * 2 + po) * plane + xo, no, x, src0 + iy * W, W)
        return
    for py in range(sh):
        for px in range(sw):
            d = dst0 + (py * sw + px) * plane
            # columns xx whose input column ix = xx*sw + px - pw lies in [0, W)
            lo = -((px - pw) // sw)
            if lo < 0:
                lo = 0
            hi = (W - 1 + pw - px) // sw + 1 if W - 1 + pw - px >= 0 else 0
            if hi > wph:
                hi = wph
            if hi <= lo:
                continue
            for yy in range(hph):
                iy = yy * sh + py - ph
                if iy < 0 or iy >= H:
                    continue
                row = d + yy * wph
                s = src0 + iy * W + lo * sw + px - pw
                for t in range(hi - lo):
                    xbuf[row + lo + t] = x[s + t * sw]


@njit(cache=True, nogil=True)
def _compute_item(it, xbuf, prm, offs, vals, blkptr, bias, out, kb, tb, sc, masks, opos, relu):
    """Work item ``it`` = (image, output-channel chunk, tile group)."""
    nkc, ntg = prm[_NKC], prm[_NTG]
    n = it // (nkc * ntg)
    rem = it - n * nkc * ntg
    kc = rem // ntg
    tg = rem - kc * ntg
    k0, k1 = kb[kc], kb[kc + 1]
    nv, tl, nb = prm[_NV], prm[_TL], prm[_NB]
    plane_out = prm[_OH] * prm[_OW]
    obase = n * prm[_K] * plane_out
    store = 6 if relu else 2
    scb = it * prm[_SCI]
    xb = n * prm[_IMG]
    nb1 = nb + 1
    for t in range(tb[tg], tb[tg + 1]):
        xt = xb + t * tl
        mb = t * nv
        # one call site of the (inlined) register-tile intrinsics keeps compile time down;
        # with one block the scratch buffer is never touched
        for blk in range(nb):
            fl = 0 if blk == 0 else 1
            if blk == nb - 1:
                fl |= store
            for k in range(k0, k1):
                fma_tile(nv, xbuf, xt, offs, vals, blkptr[k * nb1 + blk],
                         blkptr[k * nb1 + blk + 1], sc, scb + (k - k0) * tl, bias[k], out,
                         obase + k * plane_out, masks, opos, mb, fl)


@njit(cache=True, nogil=True)
def _prepare_slice(n, sl, nsl, x, xbuf, prm, C, H, W, emask, epos):
    """Prepare input channels ``[sl * C // nsl, (sl + 1) * C // nsl)`` of image ``n``.

    Stride 1: one expand (``vexpandps``) + store per 16 floats of the padded plane
    (``emask[v]``: which lanes of vector ``v`` are input pixels; ``epos[v]``: the index in the
    channel of the first of them), so padding and copy are one pass with no per-row work.
    """
    c0, c1 = sl * C // nsl, (sl + 1) * C // nsl
    plane = prm[_PLANE]
    if c1 == C:  # the alignment gap at the end of the image
        g0 = n * prm[_IMG] + C * prm[_NPHASE] * plane
        vfill(xbuf, g0, prm[_IMG] - C * prm[_NPHASE] * plane, 0.0)
    if prm[_SH] != 1 or prm[_SW] != 1:
        for c in range(c0, c1):
            _prepare_input(n * C + c, x, xbuf, prm, C, H, W)
        return
    nvp = emask.size
    last = plane - (nvp - 1) * VEC
    hw = H * W
    for c in range(c0, c1):
        src0 = (n * C + c) * hw
        dst0 = n * prm[_IMG] + c * plane
        if src0 + hw + VEC <= x.size:  # full 16-float loads may run into the next channel
            for v in range(nvp - 1):
                expand16_full(xbuf, dst0 + v * VEC, x, src0 + epos[v], emask[v])
        else:
            for v in range(nvp - 1):
                expand16(xbuf, dst0 + v * VEC, VEC, x, src0 + epos[v], emask[v])
        expand16(xbuf, dst0 + (nvp - 1) * VEC, last, x, src0 + epos[nvp - 1], emask[nvp - 1])


@njit(cache=True, nogil=True, parallel=True)
def _run_parallel(x4, xbuf, prm, offs, vals, blkptr, bias, out4, kb, tb, sc, state, masks, opos,
                  emask, epos, nitems, relu):
    """Input preparation and compute in one parallel region (one fork/join per call).

    Items of the same image share its prepared input: it is cut into ``nsl`` channel slices,
    each claimed atomically by the first item to reach it (items start at different slices, so
    they split the work), then every item waits until all its image's slices are published.
    A slice is only waited on while the thread that claimed it is preparing it, so this cannot
    deadlock however the items are scheduled on threads.
    """
    N, C, H, W = x4.shape
    x = x4.reshape(x4.size)
    out = out4.reshape(out4.size)
    nsl = prm[_NSL]
    m = prm[_NKC] * prm[_NTG]
    # zero the slack after the last image (read only by discarded junk columns)
    vfill(xbuf, N * prm[_IMG], prm[_BUF] - N * prm[_IMG], 0.0)
    for i in range(N * nsl):  # (a plain loop: an array expression would be a parallel region)
        state[i] = 0
    for it in prange(nitems):
        n = it // m
        if m == 1:
            _prepare_slice(n, 0, 1, x, xbuf, prm, C, H, W, emask, epos)
        else:
            s0 = (it - n * m) * nsl // m
            for q in range(nsl):
                sl = s0 + q
                if sl >= nsl:
                    sl -= nsl
                if try_claim(state, n * nsl + sl):
                    _prepare_slice(n, sl, nsl, x, xbuf, prm, C, H, W, emask, epos)
                    publish(state, n * nsl + sl)
            for sl in range(nsl):
                while not is_ready(state, n * nsl + sl):
                    pass
        _compute_item(it, xbuf, prm, offs, vals, blkptr, bias, out, kb, tb, sc, masks, opos,
                      relu)


@njit(cache=True, nogil=True)
def _run_serial(x4, xbuf, prm, offs, vals, blkptr, bias, out4, kb, tb, sc, state, masks, opos,
                emask, epos, nitems, relu):
    N, C, H, W = x4.shape
    x = x4.reshape(x4.size)
    out = out4.reshape(out4.size)
    vfill(xbuf, N * prm[_IMG], prm[_BUF] - N * prm[_IMG], 0.0)
    for n in range(N):
        _prepare_slice(n, 0, 1, x, xbuf, prm, C, H, W, emask, epos)
    for it in range(nitems):
        _compute_item(it, xbuf, prm, offs, vals, blkptr, bias, out, kb, tb, sc, masks, opos,
                      relu)


# --------------------------------------------------------------------------------------------
# preparation (cached) and planning
# --------------------------------------------------------------------------------------------
def _choose_cblock(cg: int, nphase: int, plane: int, nnz: int, k: int, **geometry) -> int:
    """Input channels per cache block (:func:`~._direct_common.choose_cblock`)."""
    return choose_cblock(cg, nphase, plane, nnz, k)


def layout(weight, problem, cblock=None) -> DirectConvCSR:
    """The :class:`DirectConvCSR` of a CSR-like ``weight`` for ``problem``'s input geometry
    (input channels blocked by :func:`_choose_cblock` unless ``cblock`` is given)."""
    return _layout(weight, problem, cblock, _choose_cblock)


class _Plan(TilePlan):
    """:class:`TilePlan` with 16-float vectors plus the AVX-512 store and padding tables."""

    def __init__(self, d: DirectConvCSR, n: int, nthreads: int):
        super().__init__(d, n, nthreads, VEC, NV_MAX, SERIAL_WORK * VEC)
        oh, ow = d.out_hw
        hph, wph = d.phase_hw
        L = oh * wph
        ntiles, tl = self.ntiles, self.tl
        # the last tile of the last image reads up to max_offset + ntiles * tl + 16 floats
        # past its base (one aligned vector beyond the tile, see _simd.fma_tile)
        self.set_buf_len(max(n * d.image_stride, (n - 1) * d.image_stride + d.max_offset
                             + ntiles * tl) + 2 * VEC)
        # per 16-lane vector of the padded-width plane: which lanes are real outputs (bit mask)
        # and where the first of them goes in the (OH, OW) output plane
        lane = np.arange(ntiles * tl, dtype=np.int64)
        valid = (lane < L) & (lane % wph < ow)
        bits = (valid.reshape(-1, VEC).astype(np.int64) << np.arange(VEC)).sum(axis=1)
        self.masks = bits.astype(np.int32)
        before = np.concatenate(([0], np.cumsum(valid)))[::VEC][:-1]
        self.opos = before.astype(np.int32)
        # stride 1: per 16-lane vector of a padded input plane, which lanes hold input pixels
        # and the index in the (H, W) channel of the first of them (see _prepare_slice)
        if d.nphase == 1:
            _, h, w = d.in_shape
            ph, pw = d.padding
            pos = np.arange(-(-d.plane // VEC) * VEC, dtype=np.int64)
            row, col = pos // wph, pos % wph
            inside = ((pos < d.plane) & (row >= ph) & (row < ph + h) & (col >= pw)
                      & (col < pw + w))
            ebits = (inside.reshape(-1, VEC).astype(np.int64) << np.arange(VEC)).sum(axis=1)
            self.emask = ebits.astype(np.int32)
            self.epos = np.concatenate(([0], np.cumsum(inside)))[::VEC][:-1].astype(np.int32)
        else:
            self.emask = self.epos = np.zeros(1, dtype=np.int32)


def prepare_direct(weight, problem, cblock=None, nthreads=None) -> DirectOperand:
    """The ``prepare`` step of ``direct_avx512``: offsets (:func:`layout`) and a plan for
    ``problem.N`` images on ``nthreads`` (default: the current Numba thread count)."""
    d = layout(weight, problem, cblock)
    p = _Plan(d, problem.N, numba.get_num_threads() if nthreads is None else int(nthreads))
    return DirectOperand(d, p, _run_parallel if p.parallel else _run_serial,
                         (p.masks, p.opos, p.emask, p.epos), problem.out_shape)


# --------------------------------------------------------------------------------------------
# kernel entry point
# --------------------------------------------------------------------------------------------
def conv2d_direct(prep, x, bias):
    """Direct sparse convolution of ``x`` with a CSR weight (kernel ``"direct_avx512"``).

    Parameters
    ----------
    prep : Prepared
        ``prep.operand`` the :class:`DirectOperand` built by :func:`prepare_direct` for
        ``prep.problem`` (a :class:`~sparsecnn.problem.ConvProblem`: geometry, batch, fused
        ReLU) from a CSR-like weight ``(K, C/groups, R, S)`` (explicit zeros of a padded CSR
        included).
    x : torch.Tensor (N, C, H, W) float32, contiguous, CPU
    bias : torch.Tensor (K,) float32 or None

    Returns
    -------
    torch.Tensor (N, K, OH, OW) float32

    Notes
    -----
    Arguments are validated by :func:`sparsecnn.conv2d`; this function trusts them. The per-call
    buffers (padded input, scratch, slice states) are reused per Python thread.
    """
    return prep.operand.run(x, bias, prep.problem.relu)


register(Kernel(
    "direct_avx512", "conv2d", conv2d_direct, formats=("csr",), prepare=prepare_direct,
    requires=("avx512f",),
    sources=("sparsecnn.kernels.cpu._simd", "sparsecnn.kernels.cpu._direct_common",
             "sparsecnn.kernels.cpu.direct_csr"),
    description="direct sparse convolution (Park et al. 2017): CSR offsets into the padded / "
                "phase-split input, AVX-512 register-blocked FMAs, threads balanced by nnz",
))
