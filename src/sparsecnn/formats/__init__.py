"""Sparse weight formats (data only; kernels live in :mod:`sparsecnn.kernels`)."""

from .base import SparseWeight
from .csr import CSRWeight
from .direct import DirectConvCSR

__all__ = ["SparseWeight", "CSRWeight", "DirectConvCSR", "FORMATS", "to_sparse"]

FORMATS: dict[str, type[SparseWeight]] = {"csr": CSRWeight}


def to_sparse(weight, format: str = "csr", **options) -> SparseWeight:
    """Build a sparse weight object from a dense (pruned) weight.

    Parameters
    ----------
    weight : torch.Tensor or numpy.ndarray, (K, C/groups, R, S) or (out, in)
        Zeros are dropped (a format that pads stores explicit zeros where it must).
    format : str
        One of :data:`FORMATS` (``"csr"``, ...).
    **options
        Passed to the format's ``from_dense`` (e.g. ``block_shape`` for BSR, ``n``/``m`` for N:M).

    Raises
    ------
    ValueError
        If ``format`` is unknown (the message lists the known ones) or the weight is unfit.
    TypeError
        If ``weight`` is not a tensor/array of floats.
    """
    try:
        cls = FORMATS[format]
    except KeyError:
        raise ValueError(f"unknown format {format!r}; expected one of {sorted(FORMATS)}") from None
    return cls.from_dense(weight, **options)
