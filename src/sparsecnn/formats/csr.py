"""Compressed sparse row (CSR) weights."""

from __future__ import annotations

import numpy as np

from .base import SparseWeight, as_index_array, as_numpy_weight, as_value_array, check_shape


class CSRWeight(SparseWeight):
    """A weight in compressed sparse row form over its ``nrows x ncols`` matrix view.

    Parameters
    ----------
    rowptr : numpy.ndarray (nrows + 1,) int32
        Row ``k``'s nonzeros are ``values[rowptr[k]:rowptr[k+1]]``; ``rowptr[0] == 0``, monotone,
        ``rowptr[-1] == nnz``.
    colidx : numpy.ndarray (nnz,) int32
        Column of each nonzero, ``0 <= colidx < ncols``, strictly increasing within a row.
    values : numpy.ndarray (nnz,) float16/float32/float64
        The nonzero values.
    shape : tuple of int
        The dense weight shape, ``(K, C/groups, R, S)`` or ``(out, in)``.

    Raises
    ------
    ValueError
        If an invariant fails: rowptr length, start, monotonicity or end; colidx/values lengths;
        column indices out of range or not strictly increasing within a row; value dtype.

    See Also
    --------
    sparsecnn.formats.CSCWeight, sparsecnn.formats.BSRWeight
    """

    format_name = "csr"

    def __init__(self, rowptr, colidx, values, shape):
        self.shape = check_shape(shape)
        self.rowptr = as_index_array(rowptr, "rowptr")
        self.colidx = as_index_array(colidx, "colidx")
        self.values = as_value_array(values)
        _check_compressed(self.rowptr, self.colidx, self.values, self.nrows, self.ncols, "row")

    @property
    def nnz(self) -> int:
        return int(self.values.size)

    def arrays(self) -> dict[str, np.ndarray]:
        return {"rowptr": self.rowptr, "colidx": self.colidx, "values": self.values}

    def row_nnz(self) -> np.ndarray:
        """nnz of each row (output channel), int64 array of shape (nrows,)."""
        return np.diff(self.rowptr).astype(np.int64)

    @classmethod
    def from_dense(cls, weight) -> "CSRWeight":
        arr = as_numpy_weight(weight)
        mat = arr.reshape(arr.shape[0], -1)
        rows, cols = np.nonzero(mat)
        rowptr = np.zeros(mat.shape[0] + 1, dtype=np.int64)
        np.cumsum(np.bincount(rows, minlength=mat.shape[0]), out=rowptr[1:])
        return cls(rowptr, cols, mat[rows, cols], arr.shape)

    def to_numpy(self) -> np.ndarray:
        mat = np.zeros((self.nrows, self.ncols), dtype=self.values.dtype)
        rows = np.repeat(np.arange(self.nrows), np.diff(self.rowptr))
        mat[rows, self.colidx] = self.values
        return mat.reshape(self.shape)


def _check_compressed(ptr, idx, values, nmajor, nminor, major: str) -> None:
    """Validate compressed (CSR/CSC) invariants; ``major`` is "row" or "column" for messages."""
    ptr_name = "rowptr" if major == "row" else "colptr"
    idx_name = "colidx" if major == "row" else "rowidx"
    if ptr.size != nmajor + 1:
        raise ValueError(f"{ptr_name} must have length {nmajor + 1} ({major}s + 1), got {ptr.size}")
    if ptr[0] != 0:
        raise ValueError(f"{ptr_name}[0] must be 0, got {ptr[0]}")
    steps = np.diff(ptr)
    if (steps < 0).any():
        bad = int(np.argmax(steps < 0))
        raise ValueError(f"{ptr_name} must be non-decreasing; it decreases at {major} {bad}")
    if idx.size != values.size:
        raise ValueError(f"{idx_name} ({idx.size}) and values ({values.size}) must have equal length")
    if ptr[-1] != idx.size:
        raise ValueError(f"{ptr_name}[-1] must equal nnz = {idx.size}, got {ptr[-1]}")
    if idx.size:
        lo, hi = int(idx.min()), int(idx.max())
        if lo < 0 or hi >= nminor:
            raise ValueError(f"{idx_name} must lie in [0, {nminor}), got values in [{lo}, {hi}]")
        # strictly increasing inside each major slice: a decrease is allowed only at slice starts
        dec = np.flatnonzero(np.diff(idx) <= 0) + 1
        starts = np.zeros(idx.size + 1, dtype=bool)
        starts[ptr[:-1]] = True
        if dec.size and not starts[dec].all():
            bad = int(dec[~starts[dec]][0])
            raise ValueError(
                f"{idx_name} must be strictly increasing within each {major}; violated at position {bad}"
            )
