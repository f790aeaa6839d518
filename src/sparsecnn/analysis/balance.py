"""Load balance of the sparse kernels' work across threads.

The direct sparse convolution gives each thread a contiguous range of output channels (rows of
the K x (C R S) CSR matrix); its work is proportional to the nnz in the range (each nonzero costs
OH x OW multiply-adds). The engine partitions rows by nnz
(:func:`sparsecnn.kernels.cpu.direct.partition_rows`); the naive split gives each thread the same
number of channels, which is what ``#pragma omp parallel for schedule(static)`` over K does.
Imbalance is max / mean nnz per thread: the parallel time is set by the slowest thread.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from ._common import conv_weight, filter_nnz, imbalance


def engine_partition() -> Callable | None:
    """The direct kernel's ``partition_rows(rowptr, nparts) -> boundaries``, or None if absent."""
    try:
        from ..kernels.cpu.direct import partition_rows
    except ImportError:
        return None
    return partition_rows


def naive_boundaries(nrows: int, nparts: int) -> np.ndarray:
    """Row boundaries (nparts + 1,) of an equal split by row count (sizes differ by at most 1)."""
    return np.array([nrows * i // nparts for i in range(nparts + 1)], dtype=np.int64)


def _loads(rowptr: np.ndarray, bounds) -> np.ndarray:
    b = np.asarray(bounds, dtype=np.int64)
    return (rowptr[b[1:]] - rowptr[b[:-1]]).astype(np.int64)


def load_balance(weight, threads: int, partition: Callable | None = None) -> dict:
    """nnz per thread and imbalance, for the engine's partition and for a naive split.

    Parameters
    ----------
    weight : torch.Tensor, numpy.ndarray or SparseWeight, (K, C/groups, R, S)
    threads : int
        Number of threads T (>= 1).
    partition : callable or None
        ``partition(rowptr int64 (K+1,), T) -> boundaries (T+1,)``; None uses the engine's
        :func:`sparsecnn.kernels.cpu.direct.partition_rows` when it is installed.

    Returns
    -------
    dict
        ``threads``; ``nnz``; ``naive``: {``bounds``, ``nnz_per_thread``, ``imbalance``};
        ``engine``: the same for the engine's partition, or None when it is unavailable (then
        ``engine_unavailable`` says why); ``gain``: naive imbalance / engine imbalance.
        Imbalance is max/mean nnz per thread (1.0 = perfect; NaN with no nonzeros).

    Raises
    ------
    ValueError
        If ``threads`` < 1, or the partition's boundaries are not T+1 monotone row indices
        from 0 to K.
    """
    if isinstance(threads, bool) or not isinstance(threads, (int, np.integer)) or threads < 1:
        raise ValueError(f"threads must be a positive int, got {threads!r}")
    w = conv_weight(weight)
    row_nnz = filter_nnz(w).sum(axis=1)
    rowptr = np.zeros(w.shape[0] + 1, dtype=np.int64)
    np.cumsum(row_nnz, out=rowptr[1:])
    naive_b = naive_boundaries(w.shape[0], int(threads))
    naive_l = _loads(rowptr, naive_b)
    out = {
        "threads": int(threads),
        "nnz": int(rowptr[-1]),
        "naive": {"bounds": naive_b, "nnz_per_thread": naive_l, "imbalance": imbalance(naive_l)},
        "engine": None,
        "engine_unavailable": None,
        "gain": float("nan"),
    }
    part = partition if partition is not None else engine_partition()
    if part is None:
        out["engine_unavailable"] = "sparsecnn.kernels.cpu.direct.partition_rows is not installed"
        return out
    b = np.asarray(part(rowptr.astype(np.int32), int(threads)), dtype=np.int64)
    if b.ndim != 1 or b.size != threads + 1 or b[0] != 0 or b[-1] != w.shape[0] or (np.diff(b) < 0).any():
        raise ValueError(
            f"partition returned boundaries {b.tolist()}; expected {threads + 1} non-decreasing "
            f"row indices from 0 to {w.shape[0]}"
        )
    eng_l = _loads(rowptr, b)
    out["engine"] = {"bounds": b, "nnz_per_thread": eng_l, "imbalance": imbalance(eng_l)}
    out["gain"] = out["naive"]["imbalance"] / out["engine"]["imbalance"] if rowptr[-1] else float("nan")
    return out
