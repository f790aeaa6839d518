"""Direct sparse convolution on the GPU (Triton): ``triton_direct`` (CSR) and
``triton_direct_unified`` (unified-row CSR).

Algorithm: direct sparse convolution (Park et al. 2017; on the GPU, Escoin, Chen 2018, and the
seeds' GPU paper, seeds/003 sections 7-8). The weight's column indices ``(c, r, s)`` are
rewritten once per problem (``prepare``) into an offset into one zero-padded input image,
``c_global * Hp * Wp + r dh * Wp + s dw`` (``c_global`` the input channel of the row's group,
so groups and depthwise need nothing else). A call is one kernel launch, no im2col (plus one
zero-padding copy of the input for padded layers: the price of a loop without bounds tests):
each program computes (a block of output channels) x (a sub-batch of images) x (a tile of
output pixels) with one fp32 FMA per stored entry and output element; the Triton code and its
tiling are in :mod:`._direct_jit`.

- ``triton_direct_unified`` (format ``unified_csr``): every output channel stores the same
  number of entries (the paper's unified per-channel sparsity, padding zeros multiplied as
  values), so all lanes of a program run the same steps: the paper's section 7 layout.
- ``triton_direct`` (the ``csr`` family, unified included): plain CSR; output channels are
  processed in a row swizzle (sorted by nnz, heaviest first, Sputnik's load balancing) and each
  block of channels runs as long as its longest one, masked.

Both: any stride, padding, dilation and groups, bias, fused ReLU; fp32, fp16 and bf16 inputs
(fp32 values and accumulation, output in the input's dtype). The prepared operand lives on the
problem's device (one copy per weight, problem and device, held by
:mod:`sparsecnn.kernels.prepared`). On a GPU, tile sizes and the sub-batch are chosen by
``triton.autotune`` (cached on disk); under ``TRITON_INTERPRET=1`` the kernels run on CPU
tensors in Triton's interpreter (tests only: emulated, never offered by dispatch).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from ..registry import Kernel, register
from ._runtime import (autotuning, emulated_devices, interpreting, kernel_devices,
                       work_bucket)

DTYPES = ("float32", "float16", "bfloat16")

#: Offsets are int32 into one (padded) image.
_MAX_IMAGE_ELEMS = 2**31 - 1


class DirectOperand(NamedTuple):
    """A CSR weight prepared for one convolution problem, on the problem's device.

    ``values`` (float32) and ``offsets`` (int32, into one zero-padded image): per stored entry;
    entry-major ``(L, K)`` for the unified layout, row-major ``(nstored,)`` for CSR. ``rowptr`` (K + 1,) and
    ``perm`` (K,) int32 (CSR: the row swizzle, rows by nnz descending; unified: ``arange``).
    ``row_len``: entries per row (unified) or the longest row (CSR). ``work_key``: the
    autotuning bucket of the mean row length.
    """

    values: torch.Tensor
    offsets: torch.Tensor
    rowptr: torch.Tensor
    perm: torch.Tensor
    row_len: int
    work_key: int
    unified: bool


def padded_hw(problem) -> tuple[int, int]:
    """``(H + 2 ph, W + 2 pw)``: the zero-padded input the kernel reads."""
    return problem.H + 2 * problem.padding[0], problem.W + 2 * problem.padding[1]


def supports(problem) -> bool:
    """One padded image fits the int32 offsets."""
    hp, wp = padded_hw(problem)
    return problem.C * hp * wp <= _MAX_IMAGE_ELEMS


def _entry_arrays(weight, problem):
    """Per stored entry of a CSR-like weight: (rowptr, offset, value) as NumPy arrays."""
    k, cg, r, s = problem.w_shape
    h, w = padded_hw(problem)
    dh, dw = problem.dilation
    rowptr = np.asarray(weight.rowptr, dtype=np.int64)
    col = np.asarray(weight.colidx, dtype=np.int64)
    rows = np.repeat(np.arange(k, dtype=np.int64), np.diff(rowptr))
    c_local, rs = np.divmod(col, r * s)
    tap_r, tap_s = np.divmod(rs, s)
    c_glob = (rows // (k // problem.groups)) * cg + c_local
    dy, dx = tap_r * dh, tap_s * dw
    offsets = c_glob * (h * w) + dy * w + dx
    return rowptr, offsets, np.asarray(weight.values, dtype=np.float32)


def _device_arrays(device, *arrays, dtypes):
    """Each array as a contiguous tensor on ``device`` (at least one element: kernels get a
    valid pointer for an all-zero weight)."""
    out = []
    for a, dt in zip(arrays, dtypes):
        a = np.array(a, dtype=dt, order="C")  # a writable copy (format arrays are read-only)
        if a.size == 0:
            a = np.zeros(1, dtype=dt)
        out.append(torch.from_numpy(a).to(device))
    return out


def prepare_direct(weight, problem) -> DirectOperand:
    """The ``prepare`` step of ``triton_direct``: offsets and values of every stored entry, the
    row swizzle, all on ``problem.device``."""
    rowptr, offsets, values = _entry_arrays(weight, problem)
    counts = np.diff(rowptr)
    perm = np.argsort(-counts, kind="stable")
    k = problem.K
    mean = float(counts.mean()) if k else 0.0
    vals, offs, rp, pm = _device_arrays(problem.device, values, offsets, rowptr, perm,
                                        dtypes=(np.float32, np.int32, np.int32, np.int32))
    return DirectOperand(vals, offs, rp, pm, int(counts.max()) if k else 0, work_bucket(mean),
                         False)


def prepare_direct_unified(weight, problem) -> DirectOperand:
    """The ``prepare`` step of ``triton_direct_unified``: as :func:`prepare_direct`, laid out
    entry-major ``(L, K)`` so that a step's loads over a block of channels are contiguous."""
    rowptr, offsets, values = _entry_arrays(weight, problem)
    k = problem.K
    length = int(rowptr[1] - rowptr[0]) if k else 0

    def entry_major(a):
        return a.reshape(k, length).T

    vals, offs, rp, pm = _device_arrays(
        problem.device, entry_major(values), entry_major(offsets), rowptr, np.arange(k),
        dtypes=(np.float32, np.int32, np.int32, np.int32))
    return DirectOperand(vals, offs, rp, pm, length, work_bucket(length), True)


def conv2d_triton_direct(prep, x, bias):
    """Direct sparse convolution with the prepared operand (``triton_direct`` and
    ``triton_direct_unified``).

    Parameters
    ----------
    prep : Prepared
        ``prep.operand`` a :class:`DirectOperand`; ``prep.problem`` the ConvProblem.
    x : torch.Tensor (N, C, H, W) float32 / float16 / bfloat16, contiguous, on the operand's
        device (``"cuda"``, or ``"cpu"`` under ``TRITON_INTERPRET=1``)
    bias : torch.Tensor (K,) of x's dtype, or None

    Returns
    -------
    torch.Tensor (N, K, OH, OW) of x's dtype
    """
    from . import _direct_jit

    p, op = prep.problem, prep.operand
    y = torch.empty(p.out_shape, dtype=x.dtype, device=x.device)
    if y.numel() == 0:
        return y
    ph, pw = p.padding
    if ph or pw:
        x = F.pad(x, (pw, pw, ph, ph))
    _direct_jit.launch(x, op.values, op.offsets, op.rowptr, op.perm, bias, y,
                       stride=p.stride, row_len=op.row_len,
                       work_key=op.work_key, unified=op.unified, relu=p.relu,
                       autotune=autotuning(), interpreter=interpreting())
    return y


_SOURCES = ("sparsecnn.kernels.triton._direct_jit", "sparsecnn.kernels.triton._runtime")

register(Kernel(
    "triton_direct", "conv2d", conv2d_triton_direct, formats=("csr",), prepare=prepare_direct,
    devices=kernel_devices(), emulated=emulated_devices(), dtypes=DTYPES, supports=supports,
    sources=_SOURCES,
    description="direct sparse convolution on the GPU (Triton): CSR offsets, one program per "
                "(channel block, sub-batch, pixel tile), rows swizzled by nnz, autotuned",
))
register(Kernel(
    "triton_direct_unified", "conv2d", conv2d_triton_direct, formats=("unified_csr",),
    prepare=prepare_direct_unified, devices=kernel_devices(), emulated=emulated_devices(),
    dtypes=DTYPES, supports=supports, sources=_SOURCES,
    description="direct sparse convolution on the GPU (Triton) over unified-row CSR (every "
                "channel the same nnz: the GPU paper's section 7), autotuned sub-batch",
))
