"""Block compressed sparse row (BSR) weights."""

from __future__ import annotations

import numpy as np

from .base import SparseWeight, as_index_array, as_numpy_weight, as_value_array, check_shape
from .csr import check_compressed

DEFAULT_BLOCK_SHAPE = (4, 4)


def check_block_shape(block_shape) -> tuple[int, int]:
    """Validate a block shape: an int ``b`` (square ``b x b``) or a pair ``(bh, bw)`` of ints >= 1.

    Raises
    ------
    ValueError
        If it is not one or two positive integers.
    """
    if isinstance(block_shape, (int, np.integer)) and not isinstance(block_shape, bool):
        block_shape = (block_shape, block_shape)
    try:
        bh, bw = block_shape
    except (TypeError, ValueError):
        raise ValueError(f"block_shape must be a pair (bh, bw) of positive ints, got {block_shape!r}") from None
    if not all(isinstance(b, (int, np.integer)) and not isinstance(b, bool) and b >= 1 for b in (bh, bw)):
        raise ValueError(f"block_shape must be a pair (bh, bw) of positive ints, got {block_shape!r}")
    return int(bh), int(bw)


class BSRWeight(SparseWeight):
    """A weight in block sparse row form: dense ``bh x bw`` blocks over the matrix view.

    The matrix view ``nrows x ncols`` (K x C/groups*R*S) is tiled by ``bh x bw`` blocks; every
    block holding at least one nonzero is stored dense (zeros inside it included), indexed CSR
    style by block row. Shapes like ``(1, 4)`` or ``(4, 1)`` give the short vectors SIMD kernels
    load at once; ``(16, 1)`` groups 16 output channels sharing one input position (Elsen et al.
    2020, "Fast sparse ConvNets"; Gray et al. 2017, "GPU kernels for block-sparse weights").
    Layout as ``scipy.sparse.bsr_array`` (``indptr``/``indices``/``data``).

    Parameters
    ----------
    rowptr : numpy.ndarray (nblockrows + 1,) int32
        Block row ``i``'s blocks are ``values[rowptr[i]:rowptr[i+1]]``; starts at 0, monotone,
        ends at ``nblocks``. ``nblockrows = ceil(nrows / bh)``.
    colidx : numpy.ndarray (nblocks,) int32
        Block column of each block, ``0 <= colidx < nblockcols = ceil(ncols / bw)``, strictly
        increasing within a block row.
    values : numpy.ndarray (nblocks, bh, bw) float16/float32/float64
        The blocks, dense. Block ``b`` in block row ``i`` covers matrix rows
        ``i*bh .. i*bh+bh-1`` and columns ``colidx[b]*bw .. colidx[b]*bw+bw-1``.
    shape : tuple of int
        The dense weight shape, ``(K, C/groups, R, S)`` or ``(out, in)``.
    block_shape : tuple of int, optional
        ``(bh, bw)``; taken from ``values.shape[1:]`` if omitted, must match it if given.

    Raises
    ------
    ValueError
        If an invariant fails: block shape, values dimensionality/dtype, rowptr length, start,
        monotonicity or end, colidx range or order, colidx/values lengths, or a nonzero stored in
        the padding beyond the matrix edge.

    Notes
    -----
    Padding: when ``nrows`` or ``ncols`` is not a multiple of ``bh``/``bw``, the matrix is
    conceptually padded with zero rows/columns to ``padded_shape = (nblockrows*bh,
    nblockcols*bw)``; edge blocks are stored full size and their part beyond the matrix must be
    zero (checked). ``to_dense`` crops the padding, so the round trip is exact. ``nnz`` counts
    nonzero entries, ``nstored = nblocks * bh * bw`` counts every stored slot;
    ``nbytes = 4 (nblockrows + 1) + 4 nblocks + itemsize nstored``.

    See Also
    --------
    sparsecnn.formats.CSRWeight, scipy.sparse.bsr_array
    """

    format_name = "bsr"

    def __init__(self, rowptr, colidx, values, shape, block_shape=None):
        self.shape = check_shape(shape)
        values = as_value_array(values, ndim=3)
        if block_shape is None:
            block_shape = values.shape[1:]
        self.block_shape = check_block_shape(block_shape)
        if values.shape[1:] != self.block_shape:
            raise ValueError(
                f"values must have shape (nblocks, {self.block_shape[0]}, {self.block_shape[1]}) "
                f"for block_shape {self.block_shape}, got {values.shape}"
            )
        self.values = values
        self.rowptr = as_index_array(rowptr, "rowptr")
        self.colidx = as_index_array(colidx, "colidx")
        check_compressed(self.rowptr, self.colidx, self.values, self.nblockrows, self.nblockcols,
                         "block row")
        self._check_padding_zero()

    # -- geometry ----------------------------------------------------------------------------
    @property
    def nblockrows(self) -> int:
        """``ceil(nrows / bh)``."""
        return -(-self.nrows // self.block_shape[0])

    @property
    def nblockcols(self) -> int:
        """``ceil(ncols / bw)``."""
        return -(-self.ncols // self.block_shape[1])

    @property
    def padded_shape(self) -> tuple[int, int]:
        """``(nblockrows * bh, nblockcols * bw)``: the matrix view padded to whole blocks."""
        return self.nblockrows * self.block_shape[0], self.nblockcols * self.block_shape[1]

    @property
    def nblocks(self) -> int:
        """Number of stored blocks."""
        return int(self.values.shape[0])

    @property
    def blocks(self) -> np.ndarray:
        """Alias of ``values``: ``numpy.ndarray (nblocks, bh, bw)``."""
        return self.values

    @property
    def block_density(self) -> float:
        """Stored blocks / all ``nblockrows * nblockcols`` blocks."""
        return self.nblocks / (self.nblockrows * self.nblockcols)

    @property
    def fill(self) -> float:
        """nnz / nstored: the share of stored slots that hold a nonzero (1.0 if none stored)."""
        return self.nnz / self.nstored if self.nstored else 1.0

    def arrays(self) -> dict[str, np.ndarray]:
        return {"rowptr": self.rowptr, "colidx": self.colidx, "values": self.values}

    def _check_padding_zero(self) -> None:
        bh, bw = self.block_shape
        row_extra = self.nblockrows * bh - self.nrows
        col_extra = self.nblockcols * bw - self.ncols
        if not self.nblocks or (row_extra == 0 and col_extra == 0):
            return
        brow = np.repeat(np.arange(self.nblockrows), np.diff(self.rowptr))
        bad = np.zeros(self.nblocks, dtype=bool)
        if row_extra:
            last = brow == self.nblockrows - 1
            bad |= last & (self.values[:, bh - row_extra:, :] != 0).any(axis=(1, 2))
        if col_extra:
            last = self.colidx == self.nblockcols - 1
            bad |= last & (self.values[:, :, bw - col_extra:] != 0).any(axis=(1, 2))
        if bad.any():
            b = int(np.argmax(bad))
            raise ValueError(
                f"block {b} (block row {brow[b]}, block column {self.colidx[b]}) holds a nonzero in "
                f"the padding beyond the {self.nrows}x{self.ncols} matrix; padding must be zero"
            )

    # -- conversion --------------------------------------------------------------------------
    @classmethod
    def from_dense(cls, weight, block_shape=DEFAULT_BLOCK_SHAPE) -> "BSRWeight":
        """Build from a dense weight, storing every ``bh x bw`` block that holds a nonzero.

        Parameters
        ----------
        weight : torch.Tensor or numpy.ndarray, (K, C/groups, R, S) or (out, in)
        block_shape : int or tuple of int, default (4, 4)
            ``(bh, bw)`` block size over the matrix view (an int means square).

        Raises
        ------
        TypeError, ValueError
            Bad weight (see :func:`~sparsecnn.formats.base.as_numpy_weight`) or block shape.
        """
        bh, bw = check_block_shape(block_shape)
        arr = as_numpy_weight(weight)
        mat = arr.reshape(arr.shape[0], -1)
        nbr, nbc = -(-mat.shape[0] // bh), -(-mat.shape[1] // bw)
        padded = np.zeros((nbr * bh, nbc * bw), dtype=mat.dtype)
        padded[: mat.shape[0], : mat.shape[1]] = mat
        tiles = padded.reshape(nbr, bh, nbc, bw).transpose(0, 2, 1, 3)  # (nbr, nbc, bh, bw)
        brow, bcol = np.nonzero((tiles != 0).any(axis=(2, 3)))
        rowptr = np.zeros(nbr + 1, dtype=np.int64)
        np.cumsum(np.bincount(brow, minlength=nbr), out=rowptr[1:])
        return cls(rowptr, bcol, np.ascontiguousarray(tiles[brow, bcol]), arr.shape, (bh, bw))

    def to_numpy(self) -> np.ndarray:
        bh, bw = self.block_shape
        tiles = np.zeros((self.nblockrows, self.nblockcols, bh, bw), dtype=self.values.dtype)
        brow = np.repeat(np.arange(self.nblockrows), np.diff(self.rowptr))
        tiles[brow, self.colidx] = self.values
        mat = tiles.transpose(0, 2, 1, 3).reshape(self.padded_shape)
        return np.ascontiguousarray(mat[: self.nrows, : self.ncols]).reshape(self.shape)

    def to_scipy(self, padded: bool = False):
        """The matrix view as ``scipy.sparse.bsr_array`` with ``blocksize = block_shape``.

        Parameters
        ----------
        padded : bool, default False
            SciPy's BSR needs a shape divisible by the block size. If the matrix view is not,
            ``padded=True`` returns the ``padded_shape`` matrix (zero padding at the bottom/right);
            ``padded=False`` raises.

        Raises
        ------
        ValueError
            If the matrix view is not a multiple of the block shape and ``padded`` is False.
        """
        from .convert import to_scipy

        return to_scipy(self, padded=padded)

    def __repr__(self) -> str:
        return super().__repr__()[:-1] + f", block_shape={self.block_shape}, nblocks={self.nblocks})"
