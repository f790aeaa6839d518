"""Hybrid dense / sparse convolution: dense sub-blocks of the filter grid on dense PyTorch, the
sparse remainder on a sparse kernel (registered as conv2d kernel ``"hybrid"``).

The seed's heterogeneous idea (``seeds/000``: run a denser region of the weights on a dense path)
as an executable kernel. ``prepare`` finds dense sub-blocks of the ``K x C`` grid of ``R x S``
filters with the report's block finder (:func:`sparsecnn.analysis.dense_blocks`: rows and
columns reordered by nnz, tiles of density >= :data:`THRESHOLD` kept, one block per row band: a
set of output channels x a set of input channels), splits the weight into those blocks and the
remainder (:func:`sparsecnn.analysis.split_weight`, exact: the parts add up to the weight), and
prepares

- each block as a dense ``(rows, cols, R, S)`` tensor: ``y[:, rows] += conv2d(x[:, cols], block)``
  (oneDNN on the gathered input channels);
- the remainder as a CSR weight run by the sparse kernel dispatch prefers for it
  (:func:`sparsecnn.dispatch.heuristic`; weight-dependent kernels excluded), with the bias.

``run`` adds the blocks' outputs into the sparse kernel's output and applies the fused ReLU.
The kernel refuses a weight with no dense block (``weight_check``), so it is only a candidate
where it is a different computation from the pure sparse path, and dispatch never picks it
without a measurement: tuning chooses it only when it beats dense and every sparse kernel
(``docs/activation.md`` records where that happens: on magnitude-pruned real weights the block
finder finds no block at 90 % sparsity).
"""

from __future__ import annotations

import threading
import weakref

import numpy as np
import torch
import torch.nn.functional as F

from .registry import Kernel, register

#: Smallest density of a kept tile (the block finder's ``threshold``).
THRESHOLD = 0.5
#: Tile of the block finder, in filters (output channels, input channels).
TILE = (16, 16)

_LOCK = threading.Lock()
_BLOCKS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def weight_blocks(weight) -> dict:
    """:func:`sparsecnn.analysis.dense_blocks` of ``weight`` at :data:`THRESHOLD` and
    :data:`TILE`, computed once per weight object (format objects are immutable)."""
    from ..analysis.blocks import dense_blocks

    if isinstance(weight, torch.Tensor):  # mutable: never cached
        return dense_blocks(weight, THRESHOLD, TILE)
    with _LOCK:
        hit = _BLOCKS.get(weight)
    if hit is None:
        hit = dense_blocks(weight, THRESHOLD, TILE)
        with _LOCK:
            _BLOCKS[weight] = hit
    return hit


def _weight_check(weight, problem) -> str | None:
    if len(getattr(weight, "shape", ())) != 4:
        return "not a conv weight"
    if not weight_blocks(weight)["blocks"]:
        return (f"no dense block (no {TILE[0]}x{TILE[1]} tile of the filter grid with density "
                f">= {THRESHOLD}): the hybrid would be the sparse kernel alone")
    return None


class HybridOperand:
    """The prepared operand of ``hybrid``: the blocks (rows, cols as int64 tensors, dense
    sub-weights) and the remainder's kernel and prepared operand."""

    __slots__ = ("parts", "rest_kernel", "rest_prep", "rest_weight", "block_share")

    def __init__(self, parts, rest_kernel, rest_prep, rest_weight, block_share):
        self.parts, self.rest_kernel, self.rest_prep = parts, rest_kernel, rest_prep
        self.rest_weight, self.block_share = rest_weight, float(block_share)


def prepare_hybrid(weight, problem) -> HybridOperand:
    """Split ``weight`` into dense blocks and a CSR remainder and prepare both for ``problem``.

    Raises
    ------
    ValueError
        If the weight has no dense block (``weight_check`` says so first, through the registry).
    """
    from .. import dispatch
    from ..analysis.blocks import split_weight
    from ..formats import CSRWeight
    from . import prepared, registry

    blocks = weight_blocks(weight)
    if not blocks["blocks"]:
        raise ValueError(_weight_check(weight, problem))
    rest, subs = split_weight(weight, blocks["blocks"])
    rest_w = CSRWeight.from_dense(torch.from_numpy(rest))
    rest_problem = problem.replace(relu=False, format=rest_w.format_name,
                                   density=float(rest_w.density))
    name = dispatch.heuristic(rest_problem, dense_above=1.0)
    rest_kernel = registry.resolve(rest_problem, name)
    rest_prep = prepared.build(rest_kernel, rest_w, rest_problem)
    dtype = getattr(torch, problem.dtype)
    parts = []
    for b, sub in zip(blocks["blocks"], subs):
        rows = torch.from_numpy(np.asarray(b["rows"], dtype=np.int64))
        cols = torch.from_numpy(np.asarray(b["cols"], dtype=np.int64))
        all_cols = cols.numel() == problem.C
        parts.append((rows, None if all_cols else cols, torch.from_numpy(sub).to(dtype)))
    return HybridOperand(parts, rest_kernel, rest_prep, rest_w, blocks["share"])


def conv2d_hybrid(prep, x, bias):
    """Hybrid convolution (registered as ``"hybrid"``): the sparse remainder's kernel on the
    whole input (with the bias), plus ``conv2d`` of each dense block on its gathered input
    channels added into its output channels, then the fused ReLU.

    Parameters
    ----------
    prep : Prepared
        ``prep.operand`` a :class:`HybridOperand` (:func:`prepare_hybrid`), ``prep.problem`` a
        ConvProblem with ``groups == 1``.
    x : torch.Tensor (N, C, H, W) float32, contiguous
    bias : torch.Tensor (K,) float32 or None

    Returns
    -------
    torch.Tensor (N, K, OH, OW) float32
    """
    op = prep.operand
    p = prep.problem
    y = op.rest_kernel.run(op.rest_prep, x, bias)
    for rows, cols, sub in op.parts:
        xs = x if cols is None else x.index_select(1, cols)
        part = F.conv2d(xs, sub, None, p.stride, p.padding, p.dilation)
        if rows.numel() == p.K:  # every output channel, in order (rows are sorted)
            y.add_(part)
        else:
            y.index_add_(1, rows, part)
    return y.relu_() if p.relu else y


register(Kernel(
    "hybrid", "conv2d", conv2d_hybrid, formats=("csr",), prepare=prepare_hybrid,
    supports=lambda p: p.groups == 1, weight_check=_weight_check,
    sources=("sparsecnn.analysis.blocks",),
    description="hybrid: dense sub-blocks of the filter grid on dense conv2d (gathered input "
                "channels) + the sparse remainder on the preferred sparse kernel",
))

__all__ = ["conv2d_hybrid", "prepare_hybrid", "weight_blocks", "HybridOperand", "THRESHOLD",
           "TILE"]
