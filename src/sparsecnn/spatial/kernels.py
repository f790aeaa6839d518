"""Compute kernels of sparse convolution over a rulebook, registered in the kernel registry.

Two algorithms compute ``Y[j] = bias + sum_k W_k^T X[nbr[j, k]]`` (``W`` as (K, C_in, C_out)):

``"fused"`` (Numba, :func:`_conv_fused`) -- output-stationary implicit GEMM. Output rows are cut
    into blocks of ``block`` rows, one block per task (``prange``: each output row is written by
    one thread, so no atomics and no locks). Within a block, for each offset ``k`` the rows with a
    neighbour are listed (the offset's rulebook group restricted to the block) and multiplied by
    ``W_k`` six at a time with the register-blocked micro-kernel of
    :mod:`sparsecnn.spatial._microkernel`, which gathers the input rows and scatter-adds into the
    output rows itself: no gathered copy, ``W_k`` stays in L1 across the block, the output block
    in L1/L2 across the offsets. Needs ``C_out % 8 == 0``.
``"gemm"`` (PyTorch) -- the textbook gather -> GEMM -> scatter-add per offset
    (``index_select``, ``torch.mm`` on oneDNN/MKL, ``index_add_``) over the compacted rulebook.

:mod:`sparsecnn.kernels.registry` holds both as kernels of the op ``"sparse_conv"``
(:class:`~sparsecnn.spatial.problem.SparseConvProblem`), with their capabilities: CPU, float32,
a dense torch weight, and for ``"fused"`` ``C_out % 8 == 0``. :func:`sparsecnn.dispatch.choose`
picks ``"fused"`` where it can run and ``"gemm"`` otherwise
(:data:`sparsecnn.dispatch.heuristic.PREFERENCE`; measured with ``sparsecnn bench-spatial
--algos``, docs/spatial.md: ``fused`` was faster in every case).

Calling convention of the op (the registry's, plus the rulebook): ``run(prepared, x, bias,
rulebook) -> y`` with ``prepared.operand`` the weight as (K, C_in, C_out) float32 contiguous,
``x`` (P_in, C_in) float32 contiguous, ``bias`` (C_out,) or None, ``rulebook`` a
:class:`~sparsecnn.spatial.rulebook.RuleBook`; ``y`` (P_out, C_out), ReLU applied when
``prepared.problem.relu``.
"""

from __future__ import annotations

import numpy as np
import torch
from numba import njit, prange

from ..kernels import registry
from ._microkernel import MR_MAX, micro
from .problem import SparseConvProblem

DEFAULT_BLOCK = 64


# ---------------------------------------------------------------------------------------------
# fused (Numba)
@njit(cache=True, nogil=True, parallel=True)
def _conv_fused(X, W, Y, nbr, cin, cout, bias, block):
    """``Y[j] = bias + sum_k X[nbr[j, k]] @ W[k]`` with X (P_in * cin,), W (K * cin * cout,),
    Y (P_out * cout,) flat float32, nbr (P_out, K) int32, bias (cout,) float32."""
    p_out, kvol = nbr.shape
    nb = (p_out + block - 1) // block
    for b in prange(nb):
        j0 = b * block
        j1 = min(p_out, j0 + block)
        xo = np.empty(block, dtype=np.int64)
        yo = np.empty(block, dtype=np.int64)
        for j in range(j0, j1):
            row = Y[j * cout:(j + 1) * cout]
            for o in range(cout):
                row[o] = bias[o]
        for k in range(kvol):
            n = 0
            for j in range(j0, j1):
                i = nbr[j, k]
                if i >= 0:
                    xo[n] = np.int64(i) * cin
                    yo[n] = np.int64(j) * cout
                    n += 1
            if n == 0:
                continue
            wk = np.int64(k) * cin * cout
            r = 0
            while r < n:
                m = min(MR_MAX, n - r)
                col = 0
                while col + 16 <= cout:
                    micro(m, 2, X, W, Y, xo, yo, r, wk + col, cout, cin, col)
                    col += 16
                if col < cout:
                    micro(m, 1, X, W, Y, xo, yo, r, wk + col, cout, cin, col)
                r += m


def conv_fused(x: torch.Tensor, w_kio: torch.Tensor, bias: torch.Tensor | None, nbr: np.ndarray,
               block: int = DEFAULT_BLOCK) -> torch.Tensor:
    """Fused implicit-GEMM sparse convolution.

    Parameters
    ----------
    x : torch.Tensor (P_in, C_in) float32
    w_kio : torch.Tensor (K, C_in, C_out) float32, C_out % 8 == 0
    bias : torch.Tensor (C_out,) float32 or None
    nbr : numpy.ndarray (P_out, K) int32 (a rulebook's map)

    Returns
    -------
    torch.Tensor (P_out, C_out) float32
    """
    k, cin, cout = w_kio.shape
    if cout % 8:
        raise ValueError(f"the fused kernel needs C_out % 8 == 0, got C_out = {cout}")
    xa = np.ascontiguousarray(x.detach().numpy()).reshape(-1)
    wa = np.ascontiguousarray(w_kio.detach().numpy()).reshape(-1)
    ba = (np.zeros(cout, dtype=np.float32) if bias is None
          else np.ascontiguousarray(bias.detach().numpy()))
    y = torch.empty((nbr.shape[0], cout), dtype=torch.float32)
    if nbr.shape[0]:
        if cin == 0 or x.shape[0] == 0:
            y.copy_(torch.from_numpy(ba).expand_as(y))
        else:
            _conv_fused(xa, wa, y.numpy().reshape(-1), nbr, cin, cout, ba, block)
    return y


# ---------------------------------------------------------------------------------------------
# gather -> GEMM -> scatter (torch)
def conv_gemm(x: torch.Tensor, w_kio: torch.Tensor, bias: torch.Tensor | None, pairs) -> torch.Tensor:
    """Gather-GEMM-scatter per offset through torch (``pairs`` from :meth:`RuleBook.pairs`);
    shapes as :func:`conv_fused`, ``P_out`` given by ``pairs[3]``. Differentiable in torch."""
    starts, in_idx, out_idx, n_out = pairs
    cout = w_kio.shape[2]
    y = x.new_zeros((n_out, cout))
    if bias is not None:
        y = y + bias
    ii, oo = torch.from_numpy(in_idx), torch.from_numpy(out_idx)
    for k in range(w_kio.shape[0]):
        s, e = int(starts[k]), int(starts[k + 1])
        if e > s:
            y = y.index_add(0, oo[s:e], x.index_select(0, ii[s:e]) @ w_kio[k])
    return y


# ---------------------------------------------------------------------------------------------
# max-pool
@njit(cache=True, nogil=True, parallel=True)
def _maxpool(X, nbr, Y, arg):
    p_out, kvol = nbr.shape
    c = X.shape[1]
    for j in prange(p_out):
        yj = Y[j]
        aj = arg[j]
        for o in range(c):
            yj[o] = -np.inf
            aj[o] = -1
        for k in range(kvol):
            i = nbr[j, k]
            if i >= 0:
                xi = X[i]
                for o in range(c):
                    if xi[o] > yj[o] or aj[o] < 0:
                        yj[o] = xi[o]
                        aj[o] = i


def maxpool(x: torch.Tensor, nbr: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Max over the active input sites of each output window: ``(Y (P_out, C), argmax (P_out, C)
    int64 input row)``. Every output site of a regular rulebook has >= 1 active input."""
    xa = np.ascontiguousarray(x.detach().numpy())
    y = np.empty((nbr.shape[0], xa.shape[1]), dtype=np.float32)
    arg = np.empty((nbr.shape[0], xa.shape[1]), dtype=np.int64)
    if nbr.shape[0] and xa.shape[1]:
        _maxpool(xa, nbr, y, arg)
    return torch.from_numpy(y), torch.from_numpy(arg)


# ---------------------------------------------------------------------------------------------
# registration
def _relu(y: torch.Tensor, problem) -> torch.Tensor:
    return y.clamp_min_(0.0) if problem.relu else y


def run_fused(prepared, x: torch.Tensor, bias, rulebook) -> torch.Tensor:
    """Registry entry of ``"fused"``: :func:`conv_fused` over ``rulebook.nbr``."""
    return _relu(conv_fused(x, prepared.operand, bias, rulebook.nbr), prepared.problem)


def run_gemm(prepared, x: torch.Tensor, bias, rulebook) -> torch.Tensor:
    """Registry entry of ``"gemm"``: :func:`conv_gemm` over ``rulebook.pairs()``."""
    starts, ii, oo = rulebook.pairs()
    return _relu(conv_gemm(x, prepared.operand, bias, (starts, ii, oo, rulebook.n_out)),
                 prepared.problem)


def _fused_supports(p: SparseConvProblem) -> bool:
    return p.c_out % 8 == 0


FUSED = registry.register(registry.Kernel(
    name="fused", op=SparseConvProblem.op, run=run_fused, formats=("dense",),
    devices=("cpu",), dtypes=("float32",), supports=_fused_supports,
    sources=("sparsecnn.spatial._microkernel",),
    description="output-stationary implicit GEMM (Numba, 6x16 register tiles, gather and "
                "scatter in the micro-kernel); needs C_out a multiple of 8"))
GEMM = registry.register(registry.Kernel(
    name="gemm", op=SparseConvProblem.op, run=run_gemm, formats=("dense",),
    devices=("cpu",), dtypes=("float32",),
    description="gather -> GEMM -> scatter-add per kernel offset (torch index_select, mm, "
                "index_add_); any channel count"))

#: The registered sparse-convolution kernels, in the dispatcher's preference order.
ALGORITHMS: tuple[str, ...] = tuple(registry.names(SparseConvProblem.op))
