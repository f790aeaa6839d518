"""Conversions between sparse weight formats, and SciPy interoperability.

All conversions are exact (values and dtype preserved) and go through ``scipy.sparse`` where it
has the operation (CSR <-> CSC, CSR <-> BSR); the pattern-defined formats (unified CSR, N:M) are
built through the dense matrix view, which for a weight (at most a few million entries) costs
milliseconds.

SciPy sparse has no float16 support: float16 values travel as float32 (exact) and are cast back,
and :func:`to_scipy` returns float32 data for a float16 weight.

Examples
--------
>>> import numpy as np
>>> from sparsecnn.formats import convert, to_sparse
>>> w = to_sparse(np.eye(8, dtype=np.float32), "csr")
>>> convert(w, "bsr", block_shape=(1, 4)).nstored
32
>>> convert(w, "unified_csr").padding_overhead
0.0
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from .base import SparseWeight, check_shape
from .bsr import BSRWeight, check_block_shape, DEFAULT_BLOCK_SHAPE
from .csc import CSCWeight
from .csr import CSRWeight
from .unified import UnifiedCSRWeight


def _scipy_values(values: np.ndarray) -> np.ndarray:
    """``values`` in a dtype SciPy sparse supports (float16 -> float32, exact)."""
    return values.astype(np.float32) if values.dtype == np.float16 else values


def to_scipy(weight: SparseWeight, padded: bool = False):
    """The matrix view of ``weight`` as a SciPy sparse array (index arrays shared, not copied).

    Parameters
    ----------
    weight : CSRWeight, UnifiedCSRWeight, CSCWeight or BSRWeight
    padded : bool, default False
        BSR only: return the ``padded_shape`` matrix when the shape is not a multiple of the
        block shape (SciPy requires that), instead of raising.

    Returns
    -------
    scipy.sparse.csr_array, csc_array or bsr_array, shape (nrows, ncols)
        Explicit zeros (unified CSR padding, zeros inside blocks) are kept. float16 values are
        returned as float32.

    Raises
    ------
    TypeError
        For a format without a SciPy counterpart (N:M: convert to "csr" first).
    ValueError
        For a BSR weight whose matrix view is not a multiple of its block shape, unless padded.
    """
    if isinstance(weight, CSRWeight):
        return sp.csr_array((_scipy_values(weight.values), weight.colidx, weight.rowptr),
                            shape=(weight.nrows, weight.ncols))
    if isinstance(weight, CSCWeight):
        return sp.csc_array((_scipy_values(weight.values), weight.rowidx, weight.colptr),
                            shape=(weight.nrows, weight.ncols))
    if isinstance(weight, BSRWeight):
        shape = weight.padded_shape
        if shape != (weight.nrows, weight.ncols) and not padded:
            raise ValueError(
                f"scipy.sparse.bsr_array needs a shape divisible by the block shape "
                f"{weight.block_shape}; the matrix view is {weight.nrows}x{weight.ncols}. Pass "
                f"padded=True for the {shape[0]}x{shape[1]} zero-padded matrix, or convert to csr"
            )
        return sp.bsr_array((_scipy_values(weight.values), weight.colidx, weight.rowptr),
                            shape=shape, blocksize=weight.block_shape)
    if isinstance(weight, SparseWeight):
        raise TypeError(f"format {weight.format_name!r} has no SciPy counterpart; "
                        f"use convert(weight, 'csr').to_scipy()")
    raise TypeError(f"expected a SparseWeight, got {type(weight).__name__}")


def from_scipy(matrix, shape=None, dtype=None) -> SparseWeight:
    """Build a weight from a SciPy sparse matrix/array.

    Parameters
    ----------
    matrix : scipy.sparse array or matrix, (nrows, ncols)
        CSC gives a :class:`CSCWeight`, BSR a :class:`BSRWeight` (same block size), anything
        else a :class:`CSRWeight`. Duplicates are summed and indices sorted; explicit zeros kept.
    shape : tuple of int, optional
        The weight shape, e.g. ``(K, C/groups, R, S)``; default ``matrix.shape``. Must have
        ``shape[0] == nrows`` and ``prod(shape[1:]) == ncols``.
    dtype : numpy dtype, optional
        Value dtype (float16/32/64); default the matrix's.

    Raises
    ------
    TypeError
        If ``matrix`` is not a SciPy sparse matrix.
    ValueError
        If ``shape`` does not match the matrix, or the dtype is not a float type.
    """
    if not sp.issparse(matrix):
        raise TypeError(f"expected a scipy.sparse matrix or array, got {type(matrix).__name__}")
    nrows, ncols = matrix.shape
    shape = check_shape(matrix.shape if shape is None else shape)
    if shape[0] != nrows or int(np.prod(shape[1:])) != ncols:
        raise ValueError(f"shape {shape} does not match the {nrows}x{ncols} matrix")
    fmt = matrix.format
    mat = matrix.copy()
    if fmt not in ("csc", "bsr"):
        mat = sp.csr_array(mat)
    mat.sum_duplicates()  # also sorts indices
    values = mat.data if dtype is None else mat.data.astype(dtype)
    if fmt == "csc":
        return CSCWeight(mat.indptr, mat.indices, values, shape)
    if fmt == "bsr":
        return BSRWeight(mat.indptr, mat.indices, values, shape)
    return CSRWeight(mat.indptr, mat.indices, values, shape)


# -- direct conversions ---------------------------------------------------------------------

def csr_to_csc(weight: CSRWeight) -> CSCWeight:
    """CSR (or unified CSR, padding kept as explicit zeros) -> CSC, via SciPy ``tocsc``."""
    csc = to_scipy(weight).tocsc()
    csc.sort_indices()
    return CSCWeight(csc.indptr, csc.indices, csc.data.astype(weight.dtype), weight.shape)


def csc_to_csr(weight: CSCWeight) -> CSRWeight:
    """CSC -> CSR, via SciPy ``tocsr`` (explicit zeros kept)."""
    csr = to_scipy(weight).tocsr()
    csr.sort_indices()
    return CSRWeight(csr.indptr, csr.indices, csr.data.astype(weight.dtype), weight.shape)


def csr_to_bsr(weight: CSRWeight, block_shape=DEFAULT_BLOCK_SHAPE) -> BSRWeight:
    """CSR -> BSR with ``block_shape``, via SciPy ``tobsr`` on the zero-padded matrix.

    Explicit zeros (e.g. unified CSR padding) are dropped first, so a block is stored exactly
    when it holds a nonzero (the same blocks as :meth:`BSRWeight.from_dense`).
    """
    bh, bw = check_block_shape(block_shape)
    csr = to_scipy(weight).copy()
    csr.eliminate_zeros()
    nbr, nbc = -(-weight.nrows // bh), -(-weight.ncols // bw)
    indptr = np.concatenate([csr.indptr, np.full(nbr * bh - weight.nrows, csr.indptr[-1])])
    padded = sp.csr_array((csr.data, csr.indices, indptr), shape=(nbr * bh, nbc * bw))
    bsr = padded.tobsr(blocksize=(bh, bw))
    bsr.sort_indices()
    return BSRWeight(bsr.indptr, bsr.indices, bsr.data.astype(weight.dtype), weight.shape, (bh, bw))


def bsr_to_csr(weight: BSRWeight) -> CSRWeight:
    """BSR -> CSR of the true nonzeros (zeros inside blocks dropped), via SciPy ``tocsr``."""
    csr = to_scipy(weight, padded=True).tocsr()
    csr.eliminate_zeros()
    csr = sp.csr_array(csr[: weight.nrows, : weight.ncols])
    csr.sort_indices()
    return CSRWeight(csr.indptr, csr.indices, csr.data.astype(weight.dtype), weight.shape)


def drop_explicit_zeros(weight: CSRWeight) -> CSRWeight:
    """CSR (e.g. unified CSR) -> plain CSR without explicit zeros."""
    keep = weight.values != 0
    rows = np.repeat(np.arange(weight.nrows), np.diff(weight.rowptr))[keep]
    rowptr = np.zeros(weight.nrows + 1, dtype=np.int64)
    np.cumsum(np.bincount(rows, minlength=weight.nrows), out=rowptr[1:])
    return CSRWeight(rowptr, weight.colidx[keep], weight.values[keep], weight.shape)


def csr_to_unified(weight: CSRWeight, row_nnz: int | None = None) -> UnifiedCSRWeight:
    """CSR -> unified CSR (see :meth:`UnifiedCSRWeight.from_dense`; built from the dense view)."""
    return UnifiedCSRWeight.from_dense(weight.to_numpy(), row_nnz=row_nnz)


def _via_dense(weight: SparseWeight, format: str, **options) -> SparseWeight:
    from . import FORMATS

    return FORMATS[format].from_dense(weight.to_numpy(), **options)


_DIRECT = {
    ("csr", "csc"): csr_to_csc,
    ("unified_csr", "csc"): lambda w: csr_to_csc(drop_explicit_zeros(w)),
    ("csc", "csr"): csc_to_csr,
    ("csr", "bsr"): csr_to_bsr,
    ("unified_csr", "bsr"): csr_to_bsr,
    ("bsr", "csr"): bsr_to_csr,
    ("unified_csr", "csr"): drop_explicit_zeros,
    ("csr", "unified_csr"): csr_to_unified,
}


def convert(weight, format: str, **options) -> SparseWeight:
    """Convert a weight (dense or any format) to ``format``, exactly.

    Parameters
    ----------
    weight : SparseWeight, torch.Tensor or numpy.ndarray
        A dense weight goes through :func:`sparsecnn.formats.to_sparse`.
    format : str
        A key of :data:`sparsecnn.formats.FORMATS`.
    **options
        The target's ``from_dense`` options (``block_shape``, ``row_nnz``, ``n``/``m``).

    Returns
    -------
    SparseWeight
        ``weight`` itself if it already has the format and no options are given. Conversions to
        CSR/CSC drop explicit zeros (unified padding, zeros inside blocks or N:M slots) except
        CSR <-> CSC, which keeps a CSR's explicit zeros.

    Raises
    ------
    ValueError
        Unknown format, or the weight does not fit it (e.g. not N:M sparse).
    """
    from . import FORMATS, to_sparse

    if format not in FORMATS:
        raise ValueError(f"unknown format {format!r}; expected one of {sorted(FORMATS)}")
    if not isinstance(weight, SparseWeight):
        return to_sparse(weight, format, **options)
    src = weight.format_name
    if src == format and not options:
        return weight
    fn = _DIRECT.get((src, format))
    if fn is not None:
        return fn(weight, **options)
    return _via_dense(weight, format, **options)
