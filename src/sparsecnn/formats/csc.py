"""Compressed sparse column (CSC) weights."""

from __future__ import annotations

import numpy as np

from .base import SparseWeight, as_index_array, as_numpy_weight, as_value_array, check_shape
from .csr import check_compressed


class CSCWeight(SparseWeight):
    """A weight in compressed sparse column form over its ``nrows x ncols`` matrix view.

    The column-major twin of :class:`CSRWeight`: column ``j`` of the matrix view (one input
    position ``(c, r, s)``, ``j = (c * R + r) * S + s``) lists the output channels it feeds, the
    layout of outer-product / input-stationary sparse kernels and of EIE-style accelerators
    (Han et al. 2016; see the CMSC 5743 "Sparse Conv" seed).

    Parameters
    ----------
    colptr : numpy.ndarray (ncols + 1,) int32
        Column ``j``'s entries are ``values[colptr[j]:colptr[j+1]]``; ``colptr[0] == 0``, monotone,
        ``colptr[-1] == nstored``.
    rowidx : numpy.ndarray (nstored,) int32
        Row (output channel) of each entry, ``0 <= rowidx < nrows``, strictly increasing within a
        column.
    values : numpy.ndarray (nstored,) float16/float32/float64
        The entry values (explicit zeros allowed; ``from_dense`` stores none).
    shape : tuple of int
        The dense weight shape, ``(K, C/groups, R, S)`` or ``(out, in)``.

    Raises
    ------
    ValueError
        If an invariant fails: colptr length, start, monotonicity or end; rowidx/values lengths;
        row indices out of range or not strictly increasing within a column; value dtype.

    Notes
    -----
    ``nbytes = 4 (ncols + 1) + (4 + itemsize) nstored``.

    See Also
    --------
    sparsecnn.formats.CSRWeight, scipy.sparse.csc_array
    """

    format_name = "csc"

    def __init__(self, colptr, rowidx, values, shape):
        self.shape = check_shape(shape)
        self.colptr = as_index_array(colptr, "colptr")
        self.rowidx = as_index_array(rowidx, "rowidx")
        self.values = as_value_array(values)
        check_compressed(self.colptr, self.rowidx, self.values, self.ncols, self.nrows, "column")

    def arrays(self) -> dict[str, np.ndarray]:
        return {"colptr": self.colptr, "rowidx": self.rowidx, "values": self.values}

    def col_nnz(self) -> np.ndarray:
        """True nonzeros of each column, ``numpy.ndarray (ncols,) int64``."""
        cols = np.repeat(np.arange(self.ncols), np.diff(self.colptr))
        return np.bincount(cols[self.values != 0], minlength=self.ncols).astype(np.int64)

    @classmethod
    def from_dense(cls, weight) -> "CSCWeight":
        """Build from a dense weight (torch.Tensor or ndarray, 2-D or 4-D); zeros are dropped.

        Raises
        ------
        TypeError, ValueError
            See :func:`sparsecnn.formats.base.as_numpy_weight`.
        """
        arr = as_numpy_weight(weight)
        mat_t = arr.reshape(arr.shape[0], -1).T  # (ncols, nrows): row-major scan = column-major
        cols, rows = np.nonzero(mat_t)
        colptr = np.zeros(mat_t.shape[0] + 1, dtype=np.int64)
        np.cumsum(np.bincount(cols, minlength=mat_t.shape[0]), out=colptr[1:])
        return cls(colptr, rows, mat_t[cols, rows], arr.shape)

    def to_numpy(self) -> np.ndarray:
        mat = np.zeros((self.nrows, self.ncols), dtype=self.values.dtype)
        cols = np.repeat(np.arange(self.ncols), np.diff(self.colptr))
        mat[self.rowidx, cols] = self.values
        return mat.reshape(self.shape)

    def to_scipy(self):
        """The matrix view as ``scipy.sparse.csc_array`` (nrows, ncols); arrays are shared."""
        from .convert import to_scipy

        return to_scipy(self)
