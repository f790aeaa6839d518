"""What the two direct sparse convolution kernels share: load balance, planning, operands.

``direct`` (portable, :mod:`~sparsecnn.kernels.cpu.direct`) and ``direct_avx512``
(:mod:`~sparsecnn.kernels.cpu.direct_avx512`) run the same algorithm (Park et al. 2017) with
different vector code. Everything around the vector code is here, once:

- :func:`partition_rows`: output channels split into chunks of balanced nnz (threads);
- :func:`choose_cblock`: input-channel blocking so a block's input stays in L1;
- :func:`layout`: the weight's column indices rewritten into input offsets
  (:class:`~sparsecnn.kernels.cpu.direct_csr.DirectConvCSR`) for one problem's geometry;
- :class:`TilePlan`: register tiles, work items (image, channel chunk, tile group), input
  slices and the ``prm`` geometry vector the jitted code reads, for one (weight, batch, threads)
  and vector width; each kernel subclasses it with its own store / padding tables;
- :class:`DirectOperand`: what each kernel's ``prepare`` step returns (cached with the weight by
  :mod:`sparsecnn.kernels.prepared`): everything one call needs -- prepared weight, plan, jitted
  entry, output shape -- and :meth:`DirectOperand.run` (per-thread buffers reused across calls).
"""

from __future__ import annotations

import threading

import numpy as np
import torch

from .direct_csr import DirectConvCSR

# Input-channel blocking: bytes of input per channel block (64 KiB measured best on AlexNet
# conv4 with AVX-512 on Zen 4/5, the tail of a block being read while the next starts), and the
# fewest nonzeros per (row, block) for blocking to pay.
L1_BLOCK_BYTES = 64 * 1024
MIN_BLOCK_NNZ = 16

# prm indices (int64 geometry/plan vector passed to the jitted functions)
(SH, SW, PH, PW, HPH, WPH, PLANE, NPHASE, IMG, OH, OW, K, NV, TL, NT, NB,
 NKC, NTG, SCI, L, BUF, NSL) = range(22)
NPRM = 22


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


def choose_cblock(cg: int, nphase: int, plane: int, nnz: int, k: int,
                  block_bytes: int = L1_BLOCK_BYTES) -> int:
    """Input channels per cache block.

    Blocking pays when the input does not fit in L1 *and* each (row, block) still holds enough
    nonzeros to amortise loading and storing its accumulators (measured on AlexNet conv4: 10 %
    faster at 90-95 % sparsity with 64-channel blocks, 15 % slower at 99 %).
    """
    per_ch = nphase * plane * 4
    cblock = int(max(1, block_bytes // per_ch))
    if cblock >= cg or nnz / max(k, 1) * cblock / cg < MIN_BLOCK_NNZ:
        return cg
    return cblock


def layout(weight, problem, cblock=None, choose=choose_cblock) -> DirectConvCSR:
    """The :class:`DirectConvCSR` of a CSR-like ``weight`` for ``problem``'s input geometry
    (a :class:`~sparsecnn.problem.ConvProblem`).

    ``cblock=None`` chooses the input-channel block with ``choose(cg, nphase, plane, nnz, k,
    out_hw=(OH, OW), phase_hw=(Hph, Wph))``.

    Raises
    ------
    TypeError, ValueError
        As :meth:`DirectConvCSR.from_csr` (not a CSR-like weight, mismatched channels, empty
        output, offsets beyond int32).
    """
    p = problem
    if cblock is None:
        hph = p.OH + (p.R - 1) * p.dilation[0] // p.stride[0]
        wph = p.OW + (p.S - 1) * p.dilation[1] // p.stride[1]
        cblock = choose(p.C // p.groups, p.stride[0] * p.stride[1], max(hph * wph, 1),
                        int(weight.values.size), p.K, out_hw=(p.OH, p.OW), phase_hw=(hph, wph))
    return DirectConvCSR.from_csr(weight, (p.C, p.H, p.W), p.stride, p.padding, p.dilation,
                                  p.groups, cblock)


# --------------------------------------------------------------------------------------------
# planning
# --------------------------------------------------------------------------------------------
class TilePlan:
    """Register tiles, work items and buffer sizes for one (prepared weight, batch, threads).

    Each output plane is computed over the padded row width as the range ``[0, L)``,
    ``L = OH * Wph``, cut into ``ntiles`` tiles of ``nv`` vectors of ``vec`` floats
    (``nv <= nv_max``, the tiles as equal as the vector granularity allows). Work items are
    ``(image, output-channel chunk, tile group)``: one per image when the batch covers the
    threads, else the channels (balanced by nnz, :func:`partition_rows`) or the tiles are split.
    Problems under ``serial_work`` floats of multiply-adds run on one thread. ``prm`` is the
    int64 geometry vector the jitted code reads (indices in this module).

    Subclasses add their kernel's tables and set ``buf_len`` (the prepared input's floats).
    """

    def __init__(self, d: DirectConvCSR, n: int, nthreads: int, vec: int, nv_max: int,
                 serial_work: float):
        k = d.shape[0]
        oh, ow = d.out_hw
        hph, wph = d.phase_hw
        L_ = oh * wph
        ntiles = -(-L_ // (vec * nv_max))
        nv = -(-L_ // (vec * ntiles))
        tl = vec * nv
        work = n * (d.nnz + k) * ntiles * tl + n * d.image_stride
        parallel = nthreads > 1 and work >= serial_work
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
        prm = np.zeros(NPRM, dtype=np.int64)
        prm[SH], prm[SW] = d.stride
        prm[PH], prm[PW] = d.padding
        prm[HPH], prm[WPH] = d.phase_hw
        prm[PLANE], prm[NPHASE], prm[IMG] = d.plane, d.nphase, d.image_stride
        prm[OH], prm[OW], prm[K] = oh, ow, k
        prm[NV], prm[TL], prm[NT], prm[NB] = nv, tl, ntiles, d.nblocks
        prm[NKC], prm[NTG], prm[SCI], prm[L] = nkc, ntg, sci, L_
        # input slices per image, claimed by the items sharing the image (see the kernels'
        # _run_parallel)
        c = d.in_shape[0]
        self.nsl = min(c, 2 * nkc * ntg) if nkc * ntg > 1 else 1
        prm[NSL] = self.nsl
        self.prm, self.kb, self.tb, self.nitems = prm, kb, tb, nitems
        self.sc_len = nitems * sci
        self.parallel, self.nv, self.ntiles, self.tl, self.vec = parallel, nv, ntiles, tl, vec
        self.buf_len = n * d.image_stride

    def set_buf_len(self, n_floats: int) -> None:
        self.buf_len = int(n_floats)
        self.prm[BUF] = self.buf_len


# --------------------------------------------------------------------------------------------
# per-thread buffers
# --------------------------------------------------------------------------------------------
_TLS = threading.local()


def workspace(name: str, size: int, align_floats: int = 16) -> np.ndarray:
    """A reusable per-thread float32 buffer of at least ``size`` elements, 64-byte aligned."""
    ws = getattr(_TLS, "ws", None)
    if ws is None:
        ws = _TLS.ws = {}
    a = ws.get(name)
    if a is None or a.size < size:
        raw = np.empty(max(size, 1) + align_floats, dtype=np.float32)
        start = (-(raw.ctypes.data // 4)) % align_floats
        a = raw[start:start + max(size, 1)]
        ws[name] = a
    return a


def state_array(size: int) -> np.ndarray:
    """A reusable per-thread int32 array of ``size`` slice states (zeroed by the kernel)."""
    st = getattr(_TLS, "state", None)
    if st is None or st.size < size:
        st = _TLS.state = np.zeros(max(size, 1), dtype=np.int32)
    return st[:size] if st.size != size else st


# --------------------------------------------------------------------------------------------
# the prepared operand of one call
# --------------------------------------------------------------------------------------------
class DirectOperand:
    """A direct kernel's prepared operand for one (weight, problem, thread count): the prepared
    weight ``d``, the ``plan``, the jitted ``entry`` (serial or parallel), the output shape, and
    the kernel's own tables that ``entry`` takes after the common arguments (``tables``).

    :meth:`run` allocates the output and calls the entry with per-thread buffers (input buffer,
    scratch, slice states) reused across calls.

    ``per_image=True``: the entry takes the weight's ``offsets`` / ``values`` / ``blkptr`` as
    2-D arrays, one row shared by every image or one row per image (:meth:`call_args`'
    ``arrays``).
    """

    __slots__ = ("d", "plan", "entry", "out_shape", "tables", "zero_bias", "_args")

    def __init__(self, d: DirectConvCSR, plan: TilePlan, entry, tables: tuple, out_shape,
                 per_image: bool = False):
        self.d, self.plan, self.entry, self.tables = d, plan, entry, tuple(tables)
        self.out_shape = tuple(int(v) for v in out_shape)
        self.zero_bias = np.zeros(d.shape[0], dtype=np.float32)
        arrays = (d.offsets, d.values, d.blkptr)
        self._args = (plan.prm, *(a[None] if per_image else a for a in arrays))

    def _buffers(self):
        p = self.plan
        ws = getattr(_TLS, "call", None)
        if ws is None or ws[0] is not p:
            ws = _TLS.call = (p, workspace("x", p.buf_len), workspace("sc", p.sc_len),
                              state_array(self.out_shape[0] * p.nsl))
        return ws

    def call_args(self, x: torch.Tensor, bias, relu: bool, arrays=None) -> tuple:
        """The arguments of ``entry`` for one call (the output array is ``args[7]``);
        ``arrays``: other ``(offsets, values, blkptr)`` than the prepared weight's (``per_image``
        operands: 2-D, one row per image)."""
        _, xbuf, sc, state = self._buffers()
        prm, offs, vals, blkptr = self._args
        if arrays is not None:
            offs, vals, blkptr = arrays
        p = self.plan
        b = self.zero_bias if bias is None else (bias.detach() if bias.requires_grad
                                                 else bias).numpy()
        return ((x.detach() if x.requires_grad else x).numpy(), xbuf, prm, offs, vals, blkptr,
                b, np.empty(self.out_shape, dtype=np.float32), p.kb, p.tb, sc, state,
                *self.tables, p.nitems, bool(relu))

    def run(self, x: torch.Tensor, bias, relu: bool, arrays=None) -> torch.Tensor:
        """``(N, K, OH, OW)`` float32 output of the convolution of ``x`` (validated by the
        caller: contiguous float32 CPU, the shape it was planned for); ``arrays`` as in
        :meth:`call_args`."""
        args = self.call_args(x, bias, relu, arrays)
        self.entry(*args)
        return torch.from_numpy(args[7])
