"""Sparse weight formats (data only; kernels live in :mod:`sparsecnn.kernels`).

Formats (``format_name``: class, ``from_dense`` options):

- ``"csr"``: :class:`CSRWeight` (Park et al. 2017).
- ``"csc"``: :class:`CSCWeight`.
- ``"bsr"``: :class:`BSRWeight`, ``block_shape=(4, 4)``.
- ``"unified_csr"``: :class:`UnifiedCSRWeight` (rows padded to equal length; the GPU paper,
  section 7), ``row_nnz=None``.
- ``"nm"``: :class:`NMWeight` (N:M structured, NVIDIA 2:4), ``n=2, m=4``.

Conversions: :func:`convert` (and ``SparseWeight.to_format``), :func:`to_scipy`,
:func:`from_scipy`.
"""

from .base import SparseWeight
from .bsr import BSRWeight
from .convert import convert, from_scipy, to_scipy
from .csc import CSCWeight
from .csr import CSRWeight
from .nm import NMWeight, check_nm, first_violation
from .unified import UnifiedCSRWeight

__all__ = [
    "SparseWeight", "CSRWeight", "CSCWeight", "BSRWeight", "UnifiedCSRWeight", "NMWeight",
    "FORMATS", "to_sparse", "convert", "to_scipy", "from_scipy", "check_nm",
    "first_violation",
]

FORMATS: dict[str, type[SparseWeight]] = {
    cls.format_name: cls for cls in (CSRWeight, CSCWeight, BSRWeight, UnifiedCSRWeight, NMWeight)
}


def to_sparse(weight, format: str = "csr", **options) -> SparseWeight:
    """Build a sparse weight object from a dense (pruned) weight.

    Parameters
    ----------
    weight : torch.Tensor or numpy.ndarray, (K, C/groups, R, S) or (out, in)
        Zeros are dropped (a format that pads stores explicit zeros where it must).
    format : str
        One of :data:`FORMATS`: ``"csr"``, ``"csc"``, ``"bsr"``, ``"unified_csr"``, ``"nm"``.
    **options
        Passed to the format's ``from_dense``: ``block_shape`` (bsr), ``row_nnz``
        (unified_csr), ``n``/``m`` (nm).

    Raises
    ------
    ValueError
        If ``format`` is unknown (the message lists the known ones), an option is unknown for
        it, or the weight is unfit (e.g. not N:M sparse).
    TypeError
        If ``weight`` is not a tensor/array of floats.
    """
    try:
        cls = FORMATS[format]
    except KeyError:
        raise ValueError(f"unknown format {format!r}; expected one of {sorted(FORMATS)}") from None
    try:
        return cls.from_dense(weight, **options)
    except TypeError as exc:
        if "unexpected keyword argument" in str(exc):
            raise ValueError(f"format {format!r} got an unknown option: {exc}") from None
        raise
