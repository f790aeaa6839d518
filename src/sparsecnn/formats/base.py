"""Common base of every sparse weight format.

A sparse weight stores a dense weight tensor of shape ``(K, C/groups, R, S)`` (convolution) or
``(out_features, in_features)`` (linear) as a 2-D matrix of ``nrows x ncols`` with
``nrows = K`` and ``ncols = C/groups * R * S`` (column ``j = (c * R + r) * S + s``), the layout
used by im2col-based and direct sparse convolution (Park et al. 2017, "Faster CNNs with direct
sparse convolutions and guided pruning", ICLR). Formats hold data only: no kernel code.
"""

from __future__ import annotations

import functools
import math
from typing import ClassVar

import numpy as np
import torch

INDEX_DTYPE = np.int32
VALUE_DTYPES = (np.dtype(np.float32), np.dtype(np.float16), np.dtype(np.float64))


def as_numpy_weight(weight) -> np.ndarray:
    """Return ``weight`` (torch.Tensor or numpy.ndarray, 2-D or 4-D) as a C-contiguous ndarray.

    Raises
    ------
    TypeError
        If ``weight`` is neither a tensor nor an array, or has a non-floating dtype.
    ValueError
        If ``weight`` is not 2-D (linear) or 4-D (convolution), or has a zero-sized dimension.
    """
    if isinstance(weight, torch.Tensor):
        if weight.dtype not in (torch.float16, torch.float32, torch.float64):
            raise TypeError(f"weight dtype must be one of float16/float32/float64, got {weight.dtype}")
        if weight.device.type != "cpu":
            weight = weight.cpu()
        arr = weight.detach().numpy()
    elif isinstance(weight, np.ndarray):
        arr = weight
    else:
        raise TypeError(f"weight must be a torch.Tensor or numpy.ndarray, got {type(weight).__name__}")
    if arr.dtype not in VALUE_DTYPES:
        raise TypeError(f"weight dtype must be one of float16/float32/float64, got {arr.dtype}")
    if arr.ndim not in (2, 4):
        raise ValueError(
            f"weight must be 2-D (out, in) or 4-D (K, C/groups, R, S), got shape {tuple(arr.shape)}"
        )
    if 0 in arr.shape:
        raise ValueError(f"weight has an empty dimension: shape {tuple(arr.shape)}")
    return np.ascontiguousarray(arr)


def owned(a, dtype=None) -> np.ndarray:
    """A C-contiguous, read-only copy of ``a`` (in ``dtype`` if given): what a format object
    stores, so that nothing the caller does to its own arrays afterwards can reach a kernel."""
    out = np.array(a, dtype=dtype, order="C", copy=True)
    out.flags.writeable = False
    return out


def as_index_array(a, name: str) -> np.ndarray:
    """Convert ``a`` to an owned (copied, read-only) 1-D int32 array, raising ValueError naming
    ``name`` if it cannot."""
    arr = np.asarray(a)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{name} must hold integers, got dtype {arr.dtype}")
    if arr.size and (arr.min() < np.iinfo(INDEX_DTYPE).min or arr.max() > np.iinfo(INDEX_DTYPE).max):
        raise ValueError(f"{name} does not fit in int32")
    return owned(arr, INDEX_DTYPE)


def as_value_array(a, name: str = "values", ndim: int | None = 1) -> np.ndarray:
    """Convert ``a`` to an owned (copied, read-only) contiguous floating array (float16/32/64
    kept, other types rejected).

    Raises
    ------
    ValueError
        If the dtype is not float16/float32/float64, or ``ndim`` is given and differs.
    """
    arr = np.asarray(a)
    if arr.dtype not in VALUE_DTYPES:
        raise ValueError(f"{name} must be float16, float32 or float64, got dtype {arr.dtype}")
    if ndim is not None and arr.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {arr.shape}")
    return owned(arr)


def check_shape(shape) -> tuple[int, ...]:
    """Validate a weight shape: 2-D or 4-D, all dimensions positive integers.

    Raises
    ------
    ValueError
        If ``shape`` is not a sequence of 2 or 4 positive integers.
    """
    try:
        dims = tuple(shape)
    except TypeError:
        raise ValueError(f"shape must be a tuple of ints, got {shape!r}") from None
    if not all(isinstance(d, (int, np.integer)) and not isinstance(d, bool) for d in dims):
        raise ValueError(f"shape must hold ints, got {shape!r}")
    shape = tuple(int(d) for d in dims)
    if len(shape) not in (2, 4) or any(d <= 0 for d in shape):
        raise ValueError(
            f"shape must be 2-D (out, in) or 4-D (K, C/groups, R, S) with positive sizes, got {shape}"
        )
    return shape


class SparseWeight:
    """Base class of sparse weight formats.

    Attributes
    ----------
    shape : tuple of int
        The dense weight's shape, ``(K, C/groups, R, S)`` or ``(out_features, in_features)``.

    Subclasses implement ``from_dense``, ``to_numpy``, ``nnz``, ``nstored`` (if they store
    explicit zeros) and ``arrays`` (the name -> ndarray mapping whose sizes make up ``nbytes``;
    the value array is always under the key ``"values"``).

    Counting convention, the same for every format: ``nnz`` counts the true nonzero entries of
    the weight; ``nstored`` counts the stored value slots, explicit zeros included (padding of
    unified CSR, zeros inside BSR blocks, zero slots of N:M groups). ``density = nnz / (nrows *
    ncols)``; ``nbytes`` is what the stored arrays occupy.

    A format object is immutable and owns its arrays: the constructor copies what it is given
    (then validates the copy) and marks it read-only, so changing the caller's ``rowptr`` or
    ``colidx`` afterwards cannot reach a kernel, and kernels may cache what they derive from
    it (:mod:`sparsecnn.kernels.prepared`).

    ``families`` lists the format families an object belongs to, its own ``format_name`` first
    and those of the formats it specialises after it (``UnifiedCSRWeight``: ``("unified_csr",
    "csr")``): kernels declare families, so a CSR kernel takes padded CSR without listing it.
    """

    format_name: ClassVar[str] = "base"
    families: ClassVar[tuple[str, ...]] = ()
    shape: tuple[int, ...]

    def __init_subclass__(cls, **kw):
        super().__init_subclass__(**kw)
        inherited = [f for base in cls.__mro__[1:] for f in getattr(base, "families", ())]
        cls.families = tuple(dict.fromkeys([cls.format_name, *inherited]))

    # -- matrix view -------------------------------------------------------------------------
    @property
    def nrows(self) -> int:
        """Rows of the matrix view: K (conv) or out_features (linear)."""
        return self.shape[0]

    @property
    def ncols(self) -> int:
        """Columns of the matrix view: C/groups * R * S (conv) or in_features (linear)."""
        return math.prod(self.shape[1:])

    @property
    def is_conv(self) -> bool:
        """True for a 4-D convolution weight."""
        return len(self.shape) == 4

    # -- sizes -------------------------------------------------------------------------------
    @functools.cached_property
    def nnz(self) -> int:
        """Number of nonzero entries of the weight (explicit stored zeros excluded).

        Counted once and cached: a format object is immutable once built."""
        return int(np.count_nonzero(self.arrays()["values"]))

    @property
    def nstored(self) -> int:
        """Number of stored value slots, explicit zeros included (= nnz unless a format pads)."""
        return int(self.arrays()["values"].size)

    @property
    def dtype(self) -> np.dtype:
        """Value dtype (numpy)."""
        return self.arrays()["values"].dtype

    @property
    def density(self) -> float:
        """nnz / (nrows * ncols), in [0, 1]."""
        return self.nnz / (self.nrows * self.ncols)

    @property
    def sparsity(self) -> float:
        """1 - density."""
        return 1.0 - self.density

    def arrays(self) -> dict[str, np.ndarray]:  # pragma: no cover - abstract
        """The arrays the format stores (name -> ndarray); their sizes make ``nbytes``."""
        raise NotImplementedError

    @property
    def nbytes(self) -> int:
        """Bytes of every stored array (indices, metadata and values)."""
        return int(sum(a.nbytes for a in self.arrays().values()))

    @property
    def dense_nbytes(self) -> int:
        """Bytes of the dense weight in the same value dtype."""
        return self.nrows * self.ncols * self.dtype.itemsize

    @property
    def memory_saving(self) -> float:
        """1 - nbytes / dense_nbytes: the share of dense memory saved (negative if larger)."""
        return 1.0 - self.nbytes / self.dense_nbytes

    @property
    def compression_ratio(self) -> float:
        """dense_nbytes / nbytes."""
        return self.dense_nbytes / max(self.nbytes, 1)

    # -- conversion --------------------------------------------------------------------------
    @classmethod
    def from_dense(cls, weight, **options) -> "SparseWeight":  # pragma: no cover - abstract
        """Build from a dense weight (torch.Tensor or ndarray, 2-D or 4-D); zeros are dropped."""
        raise NotImplementedError

    def to_numpy(self) -> np.ndarray:  # pragma: no cover - abstract
        """The dense weight as an ndarray of ``shape`` and the value dtype."""
        raise NotImplementedError

    def to_dense(self) -> torch.Tensor:
        """The dense weight as a torch.Tensor of ``shape`` and the value dtype."""
        return torch.from_numpy(self.to_numpy())

    def to_matrix(self) -> np.ndarray:
        """The dense ``nrows x ncols`` matrix view as an ndarray (value dtype)."""
        return self.to_numpy().reshape(self.nrows, self.ncols)

    def to_format(self, format: str, **options) -> "SparseWeight":
        """Convert to another format (see :func:`sparsecnn.formats.convert.convert`)."""
        from .convert import convert

        return convert(self, format, **options)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(shape={self.shape}, nnz={self.nnz}, nstored={self.nstored}, "
            f"density={self.density:.4f}, dtype={self.dtype}, nbytes={self.nbytes})"
        )
