"""Dense sub-blocks of the K x C filter grid and a hybrid dense + sparse execution plan.

The seed's question: if one sub-matrix of a pruned layer is much denser than the rest, run it on a
dense path (a GEMM / oneDNN convolution, or a GPU) and only the rest on the sparse kernel.
:func:`dense_blocks` finds such regions: it optionally reorders output channels (rows) and input
channels (columns) by decreasing nnz, so dense rows and columns gather in the top-left corner,
cuts the reordered grid into tiles and keeps the tiles whose density is at least ``threshold``.
The kept tiles of one row band form one block (that band's rows x the union of their columns; its
density is at least ``threshold`` since each tile's is). A block is a set of output channels x a
set of input channels, so its dense part is one ``conv2d`` of the block's input channels.

Cost model (:func:`hybrid_estimate`), stated: time = dense MACs of the blocks / dense rate +
nonzeros outside the blocks / sparse useful rate, the rates measured on the whole layer
(:func:`measure_rates`: dense GFLOP/s of ``torch.nn.functional.conv2d`` over all K C R S weights,
sparse useful GFLOP/s = 2 nnz N OH OW / time of the sparse kernel). It ignores the smaller
GEMM's lower efficiency and the gather of input channels; :func:`measure_hybrid` times the real
thing and checks it equals the full convolution.
"""

from __future__ import annotations


import numpy as np
import torch
import torch.nn.functional as F

from ..checks import compare_outputs
from ._common import conv_weight, filter_nnz


def dense_blocks(weight, threshold: float = 0.5, tile=(16, 16), reorder: bool = True) -> dict:
    """Regions of the K x C filter grid whose density is at least ``threshold``.

    Parameters
    ----------
    weight : torch.Tensor, numpy.ndarray or SparseWeight, (K, C, R, S)
    threshold : float in (0, 1]
        Minimum density (nnz / elements, elements = rows x cols x R x S) of a kept tile.
    tile : (int, int)
        Tile size in filters (output channels, input channels); clipped to (K, C).
    reorder : bool
        Sort rows and columns by decreasing nnz first (stable), which gathers dense rows and
        columns in the top-left corner; False keeps the channel order.

    Returns
    -------
    dict
        ``threshold``, ``tile``, ``reorder``; ``row_order`` int64 (K,), ``col_order`` int64 (C,)
        (row i of the reordered grid is output channel ``row_order[i]``); ``tile_density``
        float64 (ceil(K/tk), ceil(C/tc)) over the reordered grid; ``blocks``: list of dicts with
        ``rows`` and ``cols`` (sorted original channel indices), ``nnz``, ``elements`` (MACs
        per output pixel of the dense sub-convolution) and ``density``; ``nnz``, ``block_nnz``,
        ``share`` (block_nnz / nnz: the share of the useful work the dense path takes) and
        ``block_elements``.

    Raises
    ------
    ValueError
        If ``threshold`` is not in (0, 1] or ``tile`` is not two positive ints.
    """
    if not 0.0 < float(threshold) <= 1.0:
        raise ValueError(f"threshold must be in (0, 1], got {threshold!r}")
    if len(tuple(tile)) != 2 or any(int(t) < 1 for t in tile):
        raise ValueError(f"tile must be two positive ints (rows, cols), got {tile!r}")
    w = conv_weight(weight)
    k, c, r, s = w.shape
    fnnz = filter_nnz(w)
    if reorder:
        row_order = np.argsort(-fnnz.sum(axis=1), kind="stable")
        col_order = np.argsort(-fnnz.sum(axis=0), kind="stable")
    else:
        row_order, col_order = np.arange(k), np.arange(c)
    g = fnnz[np.ix_(row_order, col_order)]
    tk, tc = min(int(tile[0]), k), min(int(tile[1]), c)
    nbr, nbc = -(-k // tk), -(-c // tc)
    tile_density = np.zeros((nbr, nbc))
    blocks = []
    for i in range(nbr):
        r0, r1 = i * tk, min((i + 1) * tk, k)
        kept_cols = []
        for j in range(nbc):
            c0, c1 = j * tc, min((j + 1) * tc, c)
            d = g[r0:r1, c0:c1].sum() / ((r1 - r0) * (c1 - c0) * r * s)
            tile_density[i, j] = d
            if d >= threshold:
                kept_cols.append(np.arange(c0, c1))
        if kept_cols:
            cols = np.concatenate(kept_cols)
            bnnz = int(g[r0:r1][:, cols].sum())
            elements = (r1 - r0) * cols.size * r * s
            blocks.append({
                "rows": np.sort(row_order[r0:r1]), "cols": np.sort(col_order[cols]),
                "nnz": bnnz, "elements": int(elements), "density": bnnz / elements,
            })
    nnz = int(fnnz.sum())
    block_nnz = sum(b["nnz"] for b in blocks)
    return {
        "threshold": float(threshold), "tile": (tk, tc), "reorder": bool(reorder),
        "row_order": row_order.astype(np.int64), "col_order": col_order.astype(np.int64),
        "tile_density": tile_density, "blocks": blocks, "nnz": nnz, "block_nnz": block_nnz,
        "share": block_nnz / nnz if nnz else 0.0,
        "block_elements": sum(b["elements"] for b in blocks),
    }


def split_weight(weight, blocks: list[dict]) -> tuple[np.ndarray, list[np.ndarray]]:
    """Split ``weight`` into the rest (blocks zeroed) and each block's dense sub-weight.

    Returns
    -------
    (numpy.ndarray (K, C, R, S), list of numpy.ndarray (len(rows), len(cols), R, S))
        The two parts add up to ``weight`` exactly (blocks must not overlap, as
        :func:`dense_blocks` guarantees).
    """
    w = conv_weight(weight)
    rest = w.copy()
    subs = []
    for b in blocks:
        ix = np.ix_(b["rows"], b["cols"])
        subs.append(np.ascontiguousarray(w[ix]))
        rest[ix] = 0.0
    return rest, subs


def interleaved_ms(fns: dict, repeats: int) -> dict:
    """Median time per call (ms) of each callable, measured against each other with the
    project's harness (:func:`sparsecnn.timing.measure`: first call apart, alternating blocks,
    outliers dropped), at least ``repeats`` blocks each."""
    from ..timing import measure

    res = measure(fns, warmup=1, min_time=0.05, max_time=0.5, min_blocks=max(3, int(repeats)))
    return {k: t.ms for k, t in res.items()}


def _sparse_kernel_name(ws, x, stride, padding, dilation) -> str:
    """The sparse kernel dispatch prefers for ``ws`` on ``x`` (never dense: the hybrid plan
    compares the sparse path with dense)."""
    from .. import dispatch
    from ..problem import ConvProblem

    p = ConvProblem.from_shapes(tuple(x.shape), ws.shape, stride, padding, dilation,
                                format=ws.format_name, density=float(ws.density))
    return dispatch.heuristic(p, dense_above=1.0)


def measure_rates(weight, x: torch.Tensor, stride=(1, 1), padding=(0, 0), dilation=(1, 1), *,
                  format: str = "csr", repeats: int = 10) -> dict:
    """Measure the cost model's rates on the whole layer.

    Parameters
    ----------
    weight : (K, C, R, S) weight, groups = 1
    x : torch.Tensor (N, C, H, W) float32
    stride, padding, dilation : pairs of int
    format : str
        Sparse format for the sparse kernel (a key of :data:`sparsecnn.formats.FORMATS`).
    repeats : int
        Timed runs after 2 warm-up runs; the median is kept.

    Returns
    -------
    dict
        ``dense_ms``, ``sparse_ms`` (median wall times, ms), ``dense_gflops`` (2 K C R S N OH OW
        / dense time, GFLOP/s), ``sparse_useful_gflops`` (2 nnz N OH OW / sparse time),
        ``sparse_kernel`` (the kernel dispatch chose for the sparse weight), ``format``.

    Raises
    ------
    ValueError
        If no registered sparse kernel accepts ``format`` (the message names what is registered).
    """
    from ..formats import to_sparse
    from ..functional import conv2d

    w = conv_weight(weight)
    wt = torch.from_numpy(w)
    ws = to_sparse(w, format=format)
    kname = _sparse_kernel_name(ws, x, stride, padding, dilation)
    with torch.no_grad():
        y = F.conv2d(x, wt, None, stride, padding, dilation)
        n, _, oh, ow = y.shape
        ms = interleaved_ms({
            "dense": lambda: F.conv2d(x, wt, None, stride, padding, dilation),
            "sparse": lambda: conv2d(x, ws, None, stride, padding, dilation, algo=kname)}, repeats)
        dense_ms, sparse_ms = ms["dense"], ms["sparse"]
    pix = n * oh * ow
    return {
        "dense_ms": dense_ms, "sparse_ms": sparse_ms, "format": format, "sparse_kernel": kname,
        "dense_gflops": 2 * w.size * pix / (dense_ms * 1e6),
        "sparse_useful_gflops": 2 * ws.nnz * pix / (sparse_ms * 1e6),
        "output_pixels": pix,
    }


def hybrid_estimate(blocks: dict, rates: dict) -> dict:
    """Estimated times (ms) of all-dense, all-sparse and the hybrid plan, from the cost model.

    Parameters
    ----------
    blocks : dict
        Result of :func:`dense_blocks`.
    rates : dict
        Result of :func:`measure_rates` (``dense_gflops``, ``sparse_useful_gflops``,
        ``output_pixels``, ``dense_ms``, ``sparse_ms``).

    Returns
    -------
    dict
        ``dense_ms`` and ``sparse_ms`` (measured), ``hybrid_dense_part_ms`` = 2 x block elements
        x pixels / dense rate, ``hybrid_sparse_part_ms`` = 2 x (nnz - block nnz) x pixels /
        sparse useful rate, ``hybrid_ms`` their sum, ``speedup_vs_sparse`` and
        ``speedup_vs_dense`` (> 1 means the hybrid is estimated faster).
    """
    pix = rates["output_pixels"]
    if blocks["block_elements"] == 0:  # nothing runs dense: the plan is the sparse kernel alone
        return {"dense_ms": rates["dense_ms"], "sparse_ms": rates["sparse_ms"],
                "hybrid_dense_part_ms": 0.0, "hybrid_sparse_part_ms": rates["sparse_ms"],
                "hybrid_ms": rates["sparse_ms"], "speedup_vs_sparse": 1.0,
                "speedup_vs_dense": rates["dense_ms"] / rates["sparse_ms"]
                if rates["sparse_ms"] else float("inf"), "same_as_sparse": True}
    dpart = 2 * blocks["block_elements"] * pix / (rates["dense_gflops"] * 1e6)
    spart = 2 * (blocks["nnz"] - blocks["block_nnz"]) * pix / (max(rates["sparse_useful_gflops"], 1e-12) * 1e6)
    hyb = dpart + spart
    return {
        "dense_ms": rates["dense_ms"], "sparse_ms": rates["sparse_ms"],
        "hybrid_dense_part_ms": dpart, "hybrid_sparse_part_ms": spart, "hybrid_ms": hyb,
        "speedup_vs_sparse": rates["sparse_ms"] / hyb if hyb else float("inf"),
        "speedup_vs_dense": rates["dense_ms"] / hyb if hyb else float("inf"),
        "same_as_sparse": False,
    }


def measure_hybrid(weight, blocks: dict, x: torch.Tensor, stride=(1, 1), padding=(0, 0),
                   dilation=(1, 1), *, format: str = "csr", repeats: int = 10) -> dict:
    """Run the hybrid plan for real: dense ``conv2d`` per block + the sparse kernel on the rest.

    The output is ``y = sparse(x, W_rest)``, then ``y[:, rows] += conv2d(x[:, cols], W[rows, cols])``
    for each block. It is checked against ``torch.nn.functional.conv2d(x, W)`` before timing.
    Dense (``F.conv2d`` on the whole weight), all-sparse (the same kernel on the whole weight) and
    the hybrid are timed interleaved (:func:`interleaved_ms`), so their ratios are fair.

    Returns
    -------
    dict
        ``hybrid_ms``, ``dense_ms``, ``sparse_ms`` (median wall times, ms; the hybrid's includes
        the gathers and adds; with no dense block the hybrid plan is the sparse run itself, so
        ``hybrid_ms`` is ``sparse_ms`` and ``same_as_sparse`` is True), the rates of :func:`measure_rates` from the same runs
        (``dense_gflops``, ``sparse_useful_gflops``, ``output_pixels``: so the result can be
        given to :func:`hybrid_estimate`), ``max_abs_err`` against the full dense convolution, ``matches``
        (:func:`sparsecnn.checks.compare_outputs`), ``sparse_kernel``, ``nblocks``.

    Raises
    ------
    ValueError
        If the hybrid output does not match the full convolution (a bug, never hidden).
    """
    from ..formats import to_sparse
    from ..functional import conv2d

    w = conv_weight(weight)
    rest, subs = split_weight(w, blocks["blocks"])
    ws = to_sparse(rest, format=format)
    ws_all = to_sparse(w, format=format)
    wt = torch.from_numpy(w)
    kname = _sparse_kernel_name(ws, x, stride, padding, dilation)
    parts = [(torch.from_numpy(b["rows"]), torch.from_numpy(b["cols"]), torch.from_numpy(sub))
             for b, sub in zip(blocks["blocks"], subs)]

    def run():
        y = conv2d(x, ws, None, stride, padding, dilation, algo=kname)
        for rows, cols, sub in parts:
            y.index_add_(1, rows, F.conv2d(x.index_select(1, cols), sub, None, stride, padding, dilation))
        return y

    with torch.no_grad():
        ref = F.conv2d(x, wt, None, stride, padding, dilation)
        y = run()
        chk = compare_outputs(y, ref)
        err, ok = chk.max_abs_err, chk.ok
        if not ok:
            raise ValueError(f"hybrid output differs from the full convolution (max abs error {err:.3g})")
        fns = {"dense": lambda: F.conv2d(x, wt, None, stride, padding, dilation),
               "sparse": lambda: conv2d(x, ws_all, None, stride, padding, dilation, algo=kname)}
        if parts:
            fns["hybrid"] = run
        ms = interleaved_ms(fns, repeats)
    # no dense block: the hybrid plan *is* the sparse run (same kernel, same weight); timing it
    # again would only show noise as a difference
    same = not parts
    if same:
        ms["hybrid"] = ms["sparse"]
    n, _, oh, ow = ref.shape
    pix = n * oh * ow
    return {"hybrid_ms": ms["hybrid"], "dense_ms": ms["dense"], "sparse_ms": ms["sparse"],
            "same_as_sparse": same,
            "dense_gflops": 2 * w.size * pix / (ms["dense"] * 1e6),
            "sparse_useful_gflops": 2 * ws_all.nnz * pix / (ms["sparse"] * 1e6),
            "output_pixels": pix, "max_abs_err": err, "matches": ok, "sparse_kernel": kname,
            "nblocks": len(parts), "format": format}
