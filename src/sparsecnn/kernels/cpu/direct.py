"""Direct sparse convolution on the CPU, portable: generic LLVM vector IR for any target.

Algorithm (Park et al. 2017, "Faster CNNs with direct sparse convolutions and guided pruning",
ICLR; the same data layout as Escoin, Chen 2018), as in the AVX-512 kernel
(:mod:`sparsecnn.kernels.cpu.direct_avx512`) but with only target-independent vector code
(:mod:`sparsecnn.kernels.cpu._vec`), so it compiles and runs wherever Numba does (x86 from SSE2
to AVX-512, Arm NEON, ...):

1. The weight's CSR column indices are rewritten once per input geometry into offsets into the
   prepared input (:class:`~sparsecnn.kernels.cpu.direct_csr.DirectConvCSR`), in the kernel's
   ``prepare`` step (cached with the weight by :mod:`sparsecnn.kernels.prepared`).
2. Per call, the input is copied once into a flat, 64-byte aligned float32 buffer (reused per
   Python thread), padded: for stride 1 each channel is one pass of row copies and zero fills
   (:func:`~sparsecnn.kernels.cpu._vec.copy_span` / ``fill_span``: unaligned vectors, no masked
   stores); for stride > 1 the input is split into ``sh * sw`` phase planes
   ``xpad[py::sh, px::sw]`` (space-to-depth), so every tap of every stride is a stride-1 read.
3. Each output channel's plane is computed over the padded row width ``Wph`` as one contiguous
   range ``[0, OH * Wph)``, cut into tiles of ``NV`` vectors of ``VW`` floats (``VW`` and
   ``NV <= NV_MAX`` per target: :func:`~sparsecnn.kernels.cpu._vec.vector_shape`). For a tile,
   the loop over the channel's nonzeros keeps the ``NV`` accumulators in registers: one
   broadcast, ``NV`` unaligned loads and ``NV`` multiply-adds (``llvm.fmuladd``) per nonzero.
   Bias initialises the accumulators; ReLU is applied when the tile is stored to a per-item
   scratch buffer, from which each output row segment (the ``OW`` real columns; the ``Wph - OW``
   junk columns are dropped) is copied into the ``(N, K, OH, OW)`` output.
4. Threads (``prange``, one parallel region per call: the input preparation is split into
   channel slices claimed atomically by the items sharing an image, see :func:`_run_parallel`)
   take work items ``(image, chunk of output channels, group of tiles)``; output-channel chunks
   are balanced by nnz (:func:`~sparsecnn.kernels.cpu._direct_common.partition_rows`). Tiles
   are the outer loop and channels the inner one, so a tile's input window is reused from cache
   across channels. Input channels may be blocked (``cblock``) so the slice of input a block's
   nonzeros read stays in L1; partial sums then live in the scratch buffer.

Tiny problems (a few microseconds of work) run single-threaded: waking threads would cost more.
"""

from __future__ import annotations

import os

import numba
import numpy as np
from numba import njit, prange

from ..registry import Kernel, register
from ._direct_common import (BUF, HPH, IMG, K, NB, NKC, NPHASE, NSL, NTG, NV, OH, OW, PH,
                             PLANE, PW, SCI, SH, SW, TL, WPH, DirectOperand, TilePlan,
                             partition_rows)
from ._direct_common import layout as _layout
from ._vec import NV_MAX, VW, copy_span, fill_span, fma_tile, is_ready, publish, try_claim
from .direct_csr import DirectConvCSR

__all__ = ["conv2d_direct", "prepare_direct", "layout", "partition_rows", "VW", "NV_MAX"]

#: Multiply-adds (floats) below which a call runs on one thread (the AVX-512 kernel's 40 000
#: 16-wide FMAs).
SERIAL_WORK = 640_000


# --------------------------------------------------------------------------------------------
# jitted bodies
# --------------------------------------------------------------------------------------------
@njit(cache=True, nogil=True)
def _prepare_strided(i, x, xbuf, prm, C, H, W):
    """Copy channel ``i = n * C + c`` of ``x`` (flat NCHW) into its padded phase planes
    (stride > 1)."""
    sh, sw, ph, pw = prm[SH], prm[SW], prm[PH], prm[PW]
    hph, wph, plane, nphase = prm[HPH], prm[WPH], prm[PLANE], prm[NPHASE]
    src0 = i * H * W
    n = i // C
    c = i - n * C
    dst0 = n * prm[IMG] + c * nphase * plane
    fill_span(xbuf, dst0, nphase * plane, 0.0)
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
def _prepare_slice(n, sl, nsl, x, xbuf, prm, C, H, W):
    """Prepare input channels ``[sl * C // nsl, (sl + 1) * C // nsl)`` of image ``n``.

    Stride 1: per channel, the top padding and the first left padding are one zero fill, then
    each input row is one copy followed by one fill of the right and next left padding, and the
    last fill runs to the end of the plane: every float written once, no per-element work.
    """
    c0, c1 = sl * C // nsl, (sl + 1) * C // nsl
    plane = prm[PLANE]
    if c1 == C:  # the alignment gap at the end of the image
        g0 = n * prm[IMG] + C * prm[NPHASE] * plane
        fill_span(xbuf, g0, prm[IMG] - C * prm[NPHASE] * plane, 0.0)
    if prm[SH] != 1 or prm[SW] != 1:
        for c in range(c0, c1):
            _prepare_strided(n * C + c, x, xbuf, prm, C, H, W)
        return
    ph, pw, wph = prm[PH], prm[PW], prm[WPH]
    hw = H * W
    for c in range(c0, c1):
        src0 = (n * C + c) * hw
        d0 = n * prm[IMG] + c * plane
        fill_span(xbuf, d0, ph * wph + pw, 0.0)
        r = d0 + ph * wph + pw
        for y in range(H):
            copy_span(xbuf, r, x, src0 + y * W, W)
            if y < H - 1:
                fill_span(xbuf, r + W, 2 * pw, 0.0)
            r += wph
        r -= wph - W
        fill_span(xbuf, r, d0 + plane - r, 0.0)


@njit(cache=True, nogil=True)
def _compute_item(it, xbuf, prm, offs, vals, blkptr, bias, out, kb, tb, sc, segptr, segsrc,
                  segdst, seglen, relu):
    """Work item ``it`` = (image, output-channel chunk, tile group)."""
    nkc, ntg = prm[NKC], prm[NTG]
    n = it // (nkc * ntg)
    rem = it - n * nkc * ntg
    kc = rem // ntg
    tg = rem - kc * ntg
    k0, k1 = kb[kc], kb[kc + 1]
    nv, tl, nb = prm[NV], prm[TL], prm[NB]
    plane_out = prm[OH] * prm[OW]
    obase = n * prm[K] * plane_out
    scb = it * prm[SCI]
    step = tl if nb > 1 else 0  # one scratch tile per channel only when blocking
    xb = n * prm[IMG]
    nb1 = nb + 1
    fl_relu = 4 if relu else 0
    for t in range(tb[tg], tb[tg + 1]):
        xt = xb + t * tl
        s0, s1 = segptr[t], segptr[t + 1]
        # one call site of the (inlined) register-tile intrinsic keeps compile time down
        for blk in range(nb):
            last = blk == nb - 1
            fl = 0 if blk == 0 else 1
            if last:
                fl |= fl_relu
            for k in range(k0, k1):
                sb = scb + (k - k0) * step
                fma_tile(nv, xbuf, xt, offs, vals, blkptr[k * nb1 + blk],
                         blkptr[k * nb1 + blk + 1], sc, sb, bias[k], fl)
                if last:
                    ob = obase + k * plane_out
                    for q in range(s0, s1):
                        copy_span(out, ob + segdst[q], sc, sb + segsrc[q], seglen[q])


@njit(cache=True, nogil=True, parallel=True)
def _run_parallel(x4, xbuf, prm, offs, vals, blkptr, bias, out4, kb, tb, sc, state, segptr,
                  segsrc, segdst, seglen, nitems, relu):
    """Input preparation and compute in one parallel region (one fork/join per call).

    Items of the same image share its prepared input: it is cut into ``nsl`` channel slices,
    each claimed atomically by the first item to reach it (items start at different slices, so
    they split the work), then every item waits until all its image's slices are published.
    A slice is only waited on while the thread that claimed it is preparing it, so this cannot
    deadlock however the items are scheduled on threads.

    ``offs``, ``vals`` and ``blkptr`` are 2-D: one row for every image (the weight as prepared),
    or one row per image (``direct_live``: each image's nonzeros on its live input channels).
    """
    N, C, H, W = x4.shape
    x = x4.reshape(x4.size)
    out = out4.reshape(out4.size)
    nsl = prm[NSL]
    m = prm[NKC] * prm[NTG]
    # zero the slack after the last image (read only by discarded junk columns)
    fill_span(xbuf, N * prm[IMG], prm[BUF] - N * prm[IMG], 0.0)
    for i in range(N * nsl):  # (a plain loop: an array expression would be a parallel region)
        state[i] = 0
    for it in prange(nitems):
        n = it // m
        if m == 1:
            _prepare_slice(n, 0, 1, x, xbuf, prm, C, H, W)
        else:
            s0 = (it - n * m) * nsl // m
            for q in range(nsl):
                sl = s0 + q
                if sl >= nsl:
                    sl -= nsl
                if try_claim(state, n * nsl + sl):
                    _prepare_slice(n, sl, nsl, x, xbuf, prm, C, H, W)
                    publish(state, n * nsl + sl)
            for sl in range(nsl):
                while not is_ready(state, n * nsl + sl):
                    pass
        r = n if offs.shape[0] > 1 else 0
        _compute_item(it, xbuf, prm, offs[r], vals[r], blkptr[r], bias, out, kb, tb, sc, segptr,
                      segsrc, segdst, seglen, relu)


@njit(cache=True, nogil=True)
def _run_serial(x4, xbuf, prm, offs, vals, blkptr, bias, out4, kb, tb, sc, state, segptr,
                segsrc, segdst, seglen, nitems, relu):
    N, C, H, W = x4.shape
    x = x4.reshape(x4.size)
    out = out4.reshape(out4.size)
    fill_span(xbuf, N * prm[IMG], prm[BUF] - N * prm[IMG], 0.0)
    for n in range(N):
        _prepare_slice(n, 0, 1, x, xbuf, prm, C, H, W)
    m = prm[NKC] * prm[NTG]
    for it in range(nitems):
        r = it // m if offs.shape[0] > 1 else 0
        _compute_item(it, xbuf, prm, offs[r], vals[r], blkptr[r], bias, out, kb, tb, sc, segptr,
                      segsrc, segdst, seglen, relu)


# --------------------------------------------------------------------------------------------
# preparation (cached) and planning
# --------------------------------------------------------------------------------------------
def _l1d_bytes() -> int:
    try:
        size = int(os.sysconf("SC_LEVEL1_DCACHE_SIZE"))
    except (AttributeError, ValueError, OSError):
        size = 0
    return size if size > 0 else 32 * 1024


#: Bytes of input per channel block: the L1 data cache of this machine (32 KiB if unknown).
BLOCK_BYTES = _l1d_bytes()
#: Fewest nonzeros per (output channel, block) for blocking to pay.
MIN_BLOCK_NNZ = 16


def _choose_cblock(cg, nphase, plane, nnz, k, out_hw=None, phase_hw=None):
    """Input channels per cache block: as many as keep the input one register tile reads (its
    lanes plus the taps' reach, per channel and phase) within :data:`BLOCK_BYTES`, when each
    (output channel, block) keeps at least :data:`MIN_BLOCK_NNZ` nonzeros."""
    window = plane
    if out_hw is not None:
        (oh, ow), (hph, wph) = out_hw, phase_hw
        ntiles = -(-(oh * wph) // (VW * NV_MAX))
        tl = VW * -(-(oh * wph) // (VW * ntiles))
        window = min(plane, tl + (hph - oh) * wph + (wph - ow))
    cblock = int(max(1, BLOCK_BYTES // (nphase * window * 4)))
    if cblock >= cg or nnz / max(k, 1) * cblock / cg < MIN_BLOCK_NNZ:
        return cg
    return cblock


class _Plan(TilePlan):
    """:class:`TilePlan` at the target's vector width plus the store segments of each tile:
    tile ``t``'s output row pieces are ``q in [segptr[t], segptr[t+1])``, copied from lane
    ``segsrc[q]`` of the tile to ``segdst[q]`` of the ``(OH, OW)`` plane, ``seglen[q]`` floats
    (adjacent rows merged when there are no junk columns)."""

    def __init__(self, d: DirectConvCSR, n: int, nthreads: int):
        super().__init__(d, n, nthreads, VW, NV_MAX, SERIAL_WORK)
        oh, ow = d.out_hw
        wph = d.phase_hw[1]
        tl, ntiles = self.tl, self.ntiles
        L_ = oh * wph
        ptr, src, dst, ln = [0], [], [], []
        for t in range(ntiles):
            a0, a1 = t * tl, min((t + 1) * tl, L_)
            for r in range(a0 // wph, (a1 - 1) // wph + 1):
                lo, hi = max(a0, r * wph), min(a1, r * wph + ow)
                if hi <= lo:
                    continue
                s, o = lo - a0, r * ow + lo - r * wph
                if len(ln) > ptr[-1] and src[-1] + ln[-1] == s and dst[-1] + ln[-1] == o:
                    ln[-1] += hi - lo  # contiguous with the previous piece (Wph == OW)
                else:
                    src.append(s)
                    dst.append(o)
                    ln.append(hi - lo)
            ptr.append(len(ln))
        self.segptr = np.array(ptr, dtype=np.int64)
        self.segsrc = np.array(src + [0], dtype=np.int64)
        self.segdst = np.array(dst + [0], dtype=np.int64)
        self.seglen = np.array(ln + [0], dtype=np.int64)
        # the last tile of the last image reads up to max_offset + ntiles * tl floats past the
        # image's base
        self.set_buf_len(max(n * d.image_stride, (n - 1) * d.image_stride + d.max_offset
                             + ntiles * tl) + VW)


def layout(weight, problem, cblock=None) -> DirectConvCSR:
    """The :class:`DirectConvCSR` of a CSR-like ``weight`` for ``problem``'s input geometry
    (input channels blocked by :func:`_choose_cblock` unless ``cblock`` is given)."""
    return _layout(weight, problem, cblock, _choose_cblock)


def prepare_direct(weight, problem, cblock=None, nthreads=None) -> DirectOperand:
    """The ``prepare`` step of ``direct``: offsets (:func:`layout`) and a plan for
    ``problem.N`` images on ``nthreads`` (default: the current Numba thread count)."""
    d = layout(weight, problem, cblock)
    p = _Plan(d, problem.N, numba.get_num_threads() if nthreads is None else int(nthreads))
    return DirectOperand(d, p, _run_parallel if p.parallel else _run_serial,
                         (p.segptr, p.segsrc, p.segdst, p.seglen), problem.out_shape,
                         per_image=True)


# --------------------------------------------------------------------------------------------
# kernel entry point
# --------------------------------------------------------------------------------------------
def conv2d_direct(prep, x, bias):
    """Direct sparse convolution of ``x`` with a CSR weight (registered as kernel ``"direct"``).

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
    "direct", "conv2d", conv2d_direct, formats=("csr",), prepare=prepare_direct,
    sources=("sparsecnn.kernels.cpu._vec", "sparsecnn.kernels.cpu._direct_common",
             "sparsecnn.kernels.cpu.direct_csr", "sparsecnn.kernels.capabilities"),
    description="direct sparse convolution (Park et al. 2017), portable: CSR offsets into the "
                "padded / phase-split input, register-tiled generic vector code at the "
                "target's width, threads balanced by nnz",
))
