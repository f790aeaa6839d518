"""Direct sparse convolution on the CPU (Numba + explicit AVX-512 register blocking).

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

import threading

import numba
import numpy as np
import torch
from numba import njit, prange

from .direct_csr import DirectConvCSR
from ..registry import Kernel, register
from ._simd import (NV_MAX, VEC, deinterleave2, expand16, expand16_full, fma_tile, is_ready, publish,
                    try_claim, vfill)

__all__ = ["conv2d_direct", "partition_rows", "prepare_direct", "layout", "DirectOperand"]

# Work (in 16-wide FMAs) below which a call runs on one thread.
SERIAL_WORK = 40_000
# Input-channel blocking: bytes of input per channel block (L1d is 48 KiB; 64 KiB measured best
# on AlexNet conv4, the tail of a block being read while the next starts), and the fewest
# nonzeros per (row, block) for blocking to pay.
L1_BLOCK_BYTES = 64 * 1024
MIN_BLOCK_NNZ = 16

# prm indices (int64 geometry/plan vector passed to the jitted functions)
(_SH, _SW, _PH, _PW, _HPH, _WPH, _PLANE, _NPHASE, _IMG, _OH, _OW, _K, _NV, _TL, _NT, _NB,
 _NKC, _NTG, _SCI, _L, _BUF, _NSL) = range(22)
_NPRM = 22


# --------------------------------------------------------------------------------------------
# load balance
# --------------------------------------------------------------------------------------------
def partition_rows(rowptr, nparts: int, row_cost: float = 1.0) -> np.ndarray:
    """Split rows (output channels) into ``nparts`` contiguous chunks of balanced work.

    The work of row ``k`` is its nnz plus ``row_cost`` (the fixed cost of initialising and
    storing a row, in units of one nonzero), so even an all-zero weight is split evenly. Chunk
    ``p`` is rows ``[b[p], b[p+1])`` of the returned boundaries ``b``; each boundary is placed
    where the cumulative work first reaches ``p / nparts`` of the total (chunks may be empty
    when ``nparts`` exceeds the rows).

    Parameters
    ----------
    rowptr : array_like (nrows + 1,) int
        CSR row pointer.
    nparts : int
        Number of chunks, >= 1 (usually the thread count).
    row_cost : float
        Work of a row besides its nonzeros, >= 0.

    Returns
    -------
    numpy.ndarray (nparts + 1,) int64
        Non-decreasing boundaries with ``b[0] == 0`` and ``b[-1] == nrows``.

    Raises
    ------
    ValueError
        If ``nparts < 1``, ``row_cost < 0`` or ``rowptr`` is not a 1-D non-decreasing array.
    """
    if isinstance(nparts, bool) or int(nparts) != nparts or nparts < 1:
        raise ValueError(f"nparts must be a positive int, got {nparts!r}")
    if row_cost < 0:
        raise ValueError(f"row_cost must be >= 0, got {row_cost}")
    rp = np.asarray(rowptr, dtype=np.int64)
    if rp.ndim != 1 or rp.size < 1 or (np.diff(rp) < 0).any():
        raise ValueError("rowptr must be a 1-D non-decreasing array of length nrows + 1")
    nrows = rp.size - 1
    cum = (rp - rp[0]).astype(np.float64) + row_cost * np.arange(nrows + 1)
    total = cum[-1]
    if total <= 0:
        return np.linspace(0, nrows, int(nparts) + 1).round().astype(np.int64)
    targets = total * np.arange(1, int(nparts)) / nparts
    # boundary after the row whose cumulative work is nearest the target
    idx = np.searchsorted(cum, targets, side="left")
    lo = np.clip(idx - 1, 0, nrows)
    hi = np.clip(idx, 0, nrows)
    pick = np.where(np.abs(cum[lo] - targets) <= np.abs(cum[hi] - targets), lo, hi)
    b = np.concatenate(([0], np.maximum.accumulate(pick), [nrows])).astype(np.int64)
    return b


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
def _run_parallel(x4, xbuf, prm, offs, vals, blkptr, bias, out4, kb, tb, sc, masks, opos, state,
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
def _run_serial(x4, xbuf, prm, offs, vals, blkptr, bias, out4, kb, tb, sc, masks, opos, state,
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
# preparation and planning (the kernel's prepare step; cached by kernels.prepared)
# --------------------------------------------------------------------------------------------
_TLS = threading.local()


def _choose_cblock(cg: int, nphase: int, plane: int, nnz: int, k: int) -> int:
    """Input channels per cache block.

    Blocking pays when the input does not fit in L1 *and* each (row, block) still holds enough
    nonzeros to amortise loading and storing its accumulators (measured on AlexNet conv4: 10 %
    faster at 90-95 % sparsity with 64-channel blocks, 15 % slower at 99 %).
    """
    per_ch = nphase * plane * 4
    cblock = int(max(1, L1_BLOCK_BYTES // per_ch))
    if cblock >= cg or nnz / max(k, 1) * cblock / cg < MIN_BLOCK_NNZ:
        return cg
    return cblock


def layout(weight, problem, cblock=None) -> DirectConvCSR:
    """The :class:`DirectConvCSR` of a CSR-like ``weight`` for ``problem``'s input geometry
    (input channels blocked by :func:`_choose_cblock` unless ``cblock`` is given)."""
    p = problem
    if cblock is None:
        hph = p.OH + (p.R - 1) * p.dilation[0] // p.stride[0]
        wph = p.OW + (p.S - 1) * p.dilation[1] // p.stride[1]
        cblock = _choose_cblock(p.C // p.groups, p.stride[0] * p.stride[1], hph * wph,
                                int(weight.values.size), p.K)
    return DirectConvCSR.from_csr(weight, (p.C, p.H, p.W), p.stride, p.padding, p.dilation,
                                  p.groups, cblock)


class _Plan:
    """Tiles, work items and buffers sizes for one (prepared weight, batch, threads)."""

    __slots__ = ("prm", "kb", "tb", "nitems", "buf_len", "sc_len", "parallel", "nv", "ntiles",
                 "masks", "opos", "nsl", "emask", "epos")

    def __init__(self, d: DirectConvCSR, n: int, nthreads: int):
        k = d.shape[0]
        oh, ow = d.out_hw
        hph, wph = d.phase_hw
        L = oh * wph
        ntiles = -(-L // (VEC * NV_MAX))
        nv = -(-L // (VEC * ntiles))
        tl = VEC * nv
        nnz = d.nnz
        work = n * (nnz + k) * ntiles * nv + n * d.image_stride // VEC
        parallel = nthreads > 1 and work >= SERIAL_WORK
        t = nthreads if parallel else 1
        if n >= t:
            nkc, ntg = 1, 1
        elif ntiles >= 2 * t:
            nkc, ntg = 1, t
        else:
            nkc, ntg = t, 1
        kb = partition_rows(d.rowptr, nkc, row_cost=max(1.0, d.nblocks))
        tb = np.linspace(0, ntiles, ntg + 1).round().astype(np.int64)
        chunk = int(np.diff(kb).max()) if k else 1
        sci = tl if d.nblocks == 1 else tl * max(chunk, 1)
        nitems = n * nkc * ntg
        prm = np.zeros(_NPRM, dtype=np.int64)
        prm[_SH], prm[_SW] = d.stride
        prm[_PH], prm[_PW] = d.padding
        prm[_HPH], prm[_WPH] = d.phase_hw
        prm[_PLANE], prm[_NPHASE], prm[_IMG] = d.plane, d.nphase, d.image_stride
        prm[_OH], prm[_OW], prm[_K] = oh, ow, k
        prm[_NV], prm[_TL], prm[_NT], prm[_NB] = nv, tl, ntiles, d.nblocks
        prm[_NKC], prm[_NTG], prm[_SCI], prm[_L] = nkc, ntg, sci, L
        # input slices per image, claimed by the items sharing the image (see _run_parallel)
        c = d.in_shape[0]
        self.nsl = min(c, 2 * nkc * ntg) if nkc * ntg > 1 else 1
        prm[_NSL] = self.nsl
        self.prm, self.kb, self.tb, self.nitems = prm, kb, tb, nitems
        # the last tile of the last image reads up to max_offset + ntiles * tl + 16 floats
        # past its base (one aligned vector beyond the tile, see _simd.fma_tile)
        self.buf_len = max(n * d.image_stride, (n - 1) * d.image_stride + d.max_offset
                           + ntiles * tl) + 2 * VEC
        prm[_BUF] = self.buf_len
        self.sc_len = nitems * sci
        self.parallel, self.nv, self.ntiles = parallel, nv, ntiles
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


def _workspace(name: str, size: int) -> np.ndarray:
    """A reusable per-thread float32 buffer of at least ``size`` elements, 64-byte aligned."""
    ws = getattr(_TLS, "ws", None)
    if ws is None:
        ws = _TLS.ws = {}
    a = ws.get(name)
    if a is None or a.size < size:
        raw = np.empty(max(size, 1) + VEC, dtype=np.float32)
        start = (-(raw.ctypes.data // 4)) % VEC
        a = raw[start:start + max(size, 1)]
        ws[name] = a
    return a


def _state(size: int) -> np.ndarray:
    """A reusable per-thread int32 array of ``size`` slice states (zeroed by the kernel)."""
    st = getattr(_TLS, "state", None)
    if st is None or st.size < size:
        st = _TLS.state = np.zeros(max(size, 1), dtype=np.int32)
    return st[:size] if st.size != size else st


class DirectOperand:
    """The ``direct`` kernel's prepared operand: the weight's offsets for one input geometry,
    the execution plan for one batch size and thread count, and the jitted entry to call."""

    __slots__ = ("d", "plan", "entry", "out_shape", "zero_bias")

    def __init__(self, d: DirectConvCSR, plan: _Plan, out_shape):
        self.d, self.plan, self.out_shape = d, plan, tuple(out_shape)
        self.entry = _run_parallel if plan.parallel else _run_serial
        self.zero_bias = np.zeros(d.shape[0], dtype=np.float32)


def prepare_direct(weight, problem, cblock=None) -> DirectOperand:
    """The ``prepare`` step of ``direct``: offsets (:func:`layout`) and a plan for
    ``problem.N`` images on the current Numba thread count."""
    d = layout(weight, problem, cblock)
    return DirectOperand(d, _Plan(d, problem.N, numba.get_num_threads()), problem.out_shape)


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
    op = prep.operand
    p = op.plan
    ws = getattr(_TLS, "call", None)
    if ws is None or ws[0] is not p:
        ws = _TLS.call = (p, _workspace("x", p.buf_len), _workspace("sc", p.sc_len),
                          _state(op.out_shape[0] * p.nsl))
    d = op.d
    out = np.empty(op.out_shape, dtype=np.float32)
    b = op.zero_bias if bias is None else (bias.detach() if bias.requires_grad else bias).numpy()
    op.entry((x.detach() if x.requires_grad else x).numpy(), ws[1], p.prm, d.offsets, d.values,
             d.blkptr, b, out, p.kb, p.tb, ws[2], p.masks, p.opos, ws[3], p.emask, p.epos,
             p.nitems, bool(prep.problem.relu))
    return torch.from_numpy(out)


register(Kernel(
    "direct", "conv2d", conv2d_direct, formats=("csr",), prepare=prepare_direct,
    requires=("avx512f",),
    sources=("sparsecnn.kernels.cpu._simd", "sparsecnn.kernels.cpu.direct_csr"),
    description="direct sparse convolution (Park et al. 2017): CSR offsets into the padded / "
                "phase-split input, AVX-512 register-blocked FMAs, threads balanced by nnz",
))
