"""Shared helpers of the analyses: weight conversion and conv geometry."""

from __future__ import annotations

import numpy as np
import torch


def conv_weight(weight, name: str = "weight") -> np.ndarray:
    """Return a convolution weight as a float32 ndarray of shape (K, C/groups, R, S).

    Parameters
    ----------
    weight : torch.Tensor, numpy.ndarray or SparseWeight, (K, C/groups, R, S)
        A dense (pruned) conv weight or a sparse one (densified here).
    name : str
        Used in error messages.

    Raises
    ------
    TypeError
        If ``weight`` is not a tensor, array or SparseWeight.
    ValueError
        If it is not 4-D or has an empty dimension.
    """
    from ..formats import SparseWeight

    if isinstance(weight, SparseWeight):
        arr = weight.to_numpy()
    elif isinstance(weight, torch.Tensor):
        arr = weight.detach().cpu().numpy()
    elif isinstance(weight, np.ndarray):
        arr = weight
    else:
        raise TypeError(
            f"{name} must be a torch.Tensor, numpy.ndarray or SparseWeight, got {type(weight).__name__}"
        )
    if arr.ndim != 4:
        raise ValueError(f"{name} must be a 4-D conv weight (K, C/groups, R, S), got shape {arr.shape}")
    if 0 in arr.shape:
        raise ValueError(f"{name} has an empty dimension: shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.floating):
        raise TypeError(f"{name} must hold floats, got dtype {arr.dtype}")
    return np.ascontiguousarray(arr, dtype=np.float32)


def filter_nnz(weight) -> np.ndarray:
    """nnz of every R x S filter: int64 array (K, C/groups); entry [k, c] counts W[k, c] != 0."""
    w = conv_weight(weight)
    return np.count_nonzero(w.reshape(w.shape[0], w.shape[1], -1), axis=2).astype(np.int64)


def imbalance(loads) -> float:
    """max / mean of per-thread loads (1.0 is perfect balance; NaN when there is no work)."""
    loads = np.asarray(loads, dtype=np.float64)
    mean = loads.mean() if loads.size else 0.0
    return float(loads.max() / mean) if mean > 0 else float("nan")
