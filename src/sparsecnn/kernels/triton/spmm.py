"""CSR SpMM on the GPU (Triton), Sputnik-style: ``triton_spmm`` for linear layers and for 1x1
convolutions.

Algorithm: Gale et al. 2020 ("Sparse GPU kernels for deep learning", SC; the seeds' poster,
seeds/004, lists it): programs take the weight's rows in a row swizzle (sorted by nnz, heaviest
first) and read the dense operand in unit-stride runs (vector loads); the Triton code is in
:mod:`._spmm_jit`.

- linear (``y = x W^T + b``): ``Y^T = W X^T``. The input is transposed once to ``X^T``
  (in_features, B) so that a stored entry's run over the batch is contiguous; the result is
  written straight into ``(B, out_features)``.
- 1x1 convolution: per image ``Y[n] (K, OH*OW) = W (K, C) X[n] (C, OH*OW)`` on the NCHW input
  as it is (a stride or padding is applied first by one strided copy of the input); groups by
  global column indices (row ``k`` of group ``g`` reads channels ``g * C/groups + c``).

Formats: the ``csr`` family; fp32, fp16, bf16 inputs (fp32 accumulation, output in the input's
dtype); bias, fused ReLU. Prepared operands live on the problem's device.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from ..registry import Kernel, register
from ._runtime import (autotuning, emulated_devices, interpreting, kernel_devices,
                       work_bucket)
from .direct import DTYPES, _device_arrays


class SpMMOperand(NamedTuple):
    """A CSR weight on the problem's device: ``values`` float32 and ``cols`` int32 (global input
    channel / feature) per stored entry, ``rowptr`` (M + 1,) and ``perm`` (M,) int32 (the row
    swizzle, rows by nnz descending), ``work_key`` the autotuning bucket."""

    values: torch.Tensor
    cols: torch.Tensor
    rowptr: torch.Tensor
    perm: torch.Tensor
    work_key: int


def _prepare(rowptr, cols, values, nrows, device) -> SpMMOperand:
    counts = np.diff(rowptr)
    perm = np.argsort(-counts, kind="stable")
    mean = float(counts.mean()) if nrows else 0.0
    vals, cl, rp, pm = _device_arrays(device, values, cols, rowptr, perm,
                                      dtypes=(np.float32, np.int32, np.int32, np.int32))
    return SpMMOperand(vals, cl, rp, pm, work_bucket(mean))


def prepare_linear(weight, problem) -> SpMMOperand:
    """The ``prepare`` step of linear ``triton_spmm``."""
    return _prepare(np.asarray(weight.rowptr, np.int64), np.asarray(weight.colidx, np.int64),
                    np.asarray(weight.values, np.float32), problem.out_features, problem.device)


def prepare_conv1x1(weight, problem) -> SpMMOperand:
    """The ``prepare`` step of conv2d ``triton_spmm``: column indices made global over the
    input channels (groups)."""
    k, cg = problem.K, problem.C // problem.groups
    rowptr = np.asarray(weight.rowptr, np.int64)
    rows = np.repeat(np.arange(k, dtype=np.int64), np.diff(rowptr))
    cols = (rows // (k // problem.groups)) * cg + np.asarray(weight.colidx, np.int64)
    return _prepare(rowptr, cols, np.asarray(weight.values, np.float32), k, problem.device)


def supports_conv(problem) -> bool:
    """1x1 kernels only (any stride, padding, groups)."""
    return problem.R == 1 and problem.S == 1


def conv2d_triton_spmm(prep, x, bias):
    """1x1 convolution as CSR SpMM per image (registered as conv2d ``triton_spmm``).

    Parameters
    ----------
    prep : Prepared
        ``prep.operand`` a :class:`SpMMOperand`; ``prep.problem`` a 1x1 ConvProblem.
    x : torch.Tensor (N, C, H, W) float32 / float16 / bfloat16, contiguous, on the operand's device
    bias : torch.Tensor (K,) of x's dtype, or None

    Returns
    -------
    torch.Tensor (N, K, OH, OW) of x's dtype
    """
    from . import _spmm_jit

    p, op = prep.problem, prep.operand
    (sh, sw), (ph, pw) = p.stride, p.padding
    if ph or pw:
        x = F.pad(x, (pw, pw, ph, ph))
    if sh > 1 or sw > 1:
        x = x[:, :, ::sh, ::sw]
    x = x.contiguous()
    n, c, oh, ow = x.shape
    plane = oh * ow
    y = torch.empty((n, p.K, oh, ow), dtype=x.dtype, device=x.device)
    if y.numel() == 0:
        return y
    _spmm_jit.launch(x, op.values, op.cols, op.rowptr, op.perm, bias, y, m=p.K, p=plane, nb=n,
                     x_strides=(c * plane, plane, 1), y_strides=(p.K * plane, plane, 1),
                     work_key=op.work_key, relu=p.relu, autotune=autotuning(),
                     interpreter=interpreting())
    return y


def linear_triton_spmm(prep, x, bias):
    """Sparse linear layer as CSR SpMM on the transposed input (registered as linear
    ``triton_spmm``).

    Parameters
    ----------
    prep : Prepared
        ``prep.operand`` a :class:`SpMMOperand` of a weight (out_features, in_features).
    x : torch.Tensor (B, in_features) float32 / float16 / bfloat16, contiguous
    bias : torch.Tensor (out_features,) of x's dtype, or None

    Returns
    -------
    torch.Tensor (B, out_features) of x's dtype
    """
    from . import _spmm_jit

    p, op = prep.problem, prep.operand
    b, out_f = x.shape[0], p.out_features
    y = torch.empty((b, out_f), dtype=x.dtype, device=x.device)
    if y.numel() == 0:
        return y
    xt = x.t().contiguous()  # (in, B): a stored entry's run over the batch is unit-stride
    _spmm_jit.launch(xt, op.values, op.cols, op.rowptr, op.perm, bias, y, m=out_f, p=b, nb=1,
                     x_strides=(0, b, 1), y_strides=(0, 1, out_f), work_key=op.work_key,
                     relu=p.relu, autotune=autotuning(),
                     interpreter=interpreting())
    return y


_SOURCES = ("sparsecnn.kernels.triton._spmm_jit", "sparsecnn.kernels.triton._runtime",
            "sparsecnn.kernels.triton.direct")

register(Kernel(
    "triton_spmm", "conv2d", conv2d_triton_spmm, formats=("csr",), prepare=prepare_conv1x1,
    devices=kernel_devices(), emulated=emulated_devices(), dtypes=DTYPES, supports=supports_conv,
    sources=_SOURCES,
    description="1x1 convolution as CSR SpMM on the GPU (Triton, Sputnik-style row swizzle and "
                "vector loads), autotuned",
))
register(Kernel(
    "triton_spmm", "linear", linear_triton_spmm, formats=("csr",), prepare=prepare_linear,
    devices=kernel_devices(), emulated=emulated_devices(), dtypes=DTYPES, sources=_SOURCES,
    description="sparse linear as CSR SpMM on the transposed input on the GPU (Triton, "
                "Sputnik-style row swizzle and vector loads), autotuned",
))
