"""Compressed sparse row (CSR) weights.

The format of sparse direct convolution (Park et al. 2017, "Faster CNNs with direct sparse
convolutions and guided pruning", ICLR) and of the seeds' GPU paper (section 7): one row per
output channel, ``rowptr``/``colidx``/``values`` as in ``scipy.sparse.csr_array``.
"""

from __future__ import annotations

import numpy as np

from .base import SparseWeight, as_index_array, as_numpy_weight, as_value_array, check_shape


class CSRWeight(SparseWeight):
    """A weight in compressed sparse row form over its ``nrows x ncols`` matrix view.

    Parameters
    ----------
    rowptr : numpy.ndarray (nrows + 1,) int32
        Row ``k``'s entries are ``values[rowptr[k]:rowptr[k+1]]``; ``rowptr[0] == 0``, monotone,
        ``rowptr[-1] == nstored``.
    colidx : numpy.ndarray (nstored,) int32
        Column of each entry, ``0 <= colidx < ncols``, strictly increasing within a row.
    values : numpy.ndarray (nstored,) float16/float32/float64
        The entry values. Explicit zeros are allowed (``from_dense`` stores none); they count in
        ``nstored`` but not in ``nnz``.
    shape : tuple of int
        The dense weight shape, ``(K, C/groups, R, S)`` or ``(out, in)``; ``nrows = K``,
        ``ncols = C/groups * R * S``, column ``j = (c * R + r) * S + s``.

    Raises
    ------
    ValueError
        If an invariant fails: rowptr length, start, monotonicity or end; colidx/values lengths;
        column indices out of range or not strictly increasing within a row; value dtype or
        dimensionality.

    Notes
    -----
    ``nbytes = 4 (nrows + 1) + (4 + itemsize) nstored``.

    See Also
    --------
    sparsecnn.formats.CSCWeight, sparsecnn.formats.BSRWeight, sparsecnn.formats.UnifiedCSRWeight
    """

    format_name = "csr"

    def __init__(self, rowptr, colidx, values, shape):
        self.shape = check_shape(shape)
        self.rowptr = as_index_array(rowptr, "rowptr")
        self.colidx = as_index_array(colidx, "colidx")
        self.values = as_value_array(values)
        check_compressed(self.rowptr, self.colidx, self.values, self.nrows, self.ncols, "row")

    def arrays(self) -> dict[str, np.ndarray]:
        return {"rowptr": self.rowptr, "colidx": self.colidx, "values": self.values}

    def row_nstored(self) -> np.ndarray:
        """Stored entries of each row (output channel), ``numpy.ndarray (nrows,) int64``."""
        return np.diff(self.rowptr).astype(np.int64)

    def row_nnz(self) -> np.ndarray:
        """True nonzeros of each row (output channel), ``numpy.ndarray (nrows,) int64``.

        Equals :meth:`row_nstored` unless the weight stores explicit zeros.
        """
        rows = np.repeat(np.arange(self.nrows), np.diff(self.rowptr))
        return np.bincount(rows[self.values != 0], minlength=self.nrows).astype(np.int64)

    @classmethod
    def from_dense(cls, weight) -> "CSRWeight":
        """Build from a dense weight (torch.Tensor or ndarray, 2-D or 4-D); zeros are dropped.

        Raises
        ------
        TypeError, ValueError
            See :func:`sparsecnn.formats.base.as_numpy_weight`.
        """
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

    def to_scipy(self):
        """The matrix view as ``scipy.sparse.csr_array`` (nrows, ncols); arrays are shared."""
        from .convert import to_scipy

        return to_scipy(self)


def check_compressed(ptr, idx, values, nmajor, nminor, major: str) -> None:
    """Validate compressed (CSR/CSC) invariants; ``major`` is "row" or "column" for messages.

    Also used by BSR with ``major="block row"`` (pointer over block rows, block column indices).
    """
    ptr_name, idx_name = {"row": ("rowptr", "colidx"), "column": ("colptr", "rowidx"),
                          "block row": ("rowptr", "colidx")}[major]
    if ptr.size != nmajor + 1:
        raise ValueError(f"{ptr_name} must have length {nmajor + 1} ({major}s + 1), got {ptr.size}")
    if ptr[0] != 0:
        raise ValueError(f"{ptr_name}[0] must be 0, got {ptr[0]}")
    steps = np.diff(ptr)
    if (steps < 0).any():
        bad = int(np.argmax(steps < 0))
        raise ValueError(f"{ptr_name} must be non-decreasing; it decreases at {major} {bad}")
    nvals = values.shape[0] if values.ndim else values.size
    if idx.size != nvals:
        raise ValueError(f"{idx_name} ({idx.size}) and values ({nvals}) must have equal length")
    if ptr[-1] != idx.size:
        raise ValueError(f"{ptr_name}[-1] must equal the number of entries {idx.size}, got {ptr[-1]}")
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
