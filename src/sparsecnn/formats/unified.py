"""Unified-row CSR: every output channel stores the same number of entries.

From the seeds' GPU paper ("When deep learning models on GPU can be accelerated by taking
advantage of unstructured sparsity", section 7, "Building CSR weight format"): the sparsity of
every output channel is unified to that of the densest channel by marking some zeros as
"non-zero", so that every GPU warp (here: every thread / SIMD row loop) runs the same, known
number of iterations. The chosen zeros sit next to existing nonzeros ("zeros with side-by-side
indices") so that memory access stays contiguous.
"""

from __future__ import annotations

import numpy as np

from .base import as_numpy_weight
from .csr import CSRWeight

_CHUNK_ELEMS = 1 << 20  # rows of the padding search are processed in chunks of ~1M entries


def padding_distance(mat: np.ndarray) -> np.ndarray:
    """Rank of each zero of ``mat`` as a padding slot; nonzeros get -1.

    For entry ``(k, j)`` let ``dl`` be the distance to the nearest nonzero at or left of ``j`` in
    row ``k`` and ``dr`` the distance to the nearest one at or right of it (``2 ncols + 1`` when
    there is none). The rank is ``2 min(dl, dr) + (dl > dr)``: nearer zeros first, and at equal
    distance the one *following* a nonzero first (sequential access continues forward).

    Parameters
    ----------
    mat : numpy.ndarray (nrows, ncols)

    Returns
    -------
    numpy.ndarray (nrows, ncols) int64
    """
    nrows, ncols = mat.shape
    big = 2 * ncols + 1
    nz = mat != 0
    j = np.arange(ncols, dtype=np.int64)
    left = np.maximum.accumulate(np.where(nz, j, -big), axis=1)
    right = np.minimum.accumulate(np.where(nz, j, 2 * big)[:, ::-1], axis=1)[:, ::-1]
    dl = np.minimum(j - left, big)
    dr = np.minimum(right - j, big)
    rank = 2 * np.minimum(dl, dr) + (dl > dr)
    rank[nz] = -1
    return rank


def unified_mask(mat: np.ndarray, row_nnz: int) -> np.ndarray:
    """Boolean mask of the entries unified CSR stores: all nonzeros plus the padding zeros.

    Each row gets ``row_nnz`` entries: its nonzeros, then the zeros of lowest
    :func:`padding_distance` (ties: lower column). A row without nonzeros is padded at columns
    ``0 .. row_nnz - 1``.

    Parameters
    ----------
    mat : numpy.ndarray (nrows, ncols)
    row_nnz : int
        Entries per row, ``max row nnz <= row_nnz <= ncols`` (not checked here).

    Returns
    -------
    numpy.ndarray (nrows, ncols) bool
    """
    nrows, ncols = mat.shape
    mask = np.zeros((nrows, ncols), dtype=bool)
    if row_nnz == 0:
        return mask
    step = max(1, _CHUNK_ELEMS // ncols)
    for r0 in range(0, nrows, step):
        rank = padding_distance(mat[r0:r0 + step])
        pick = np.argsort(rank, axis=1, kind="stable")[:, :row_nnz]
        np.put_along_axis(mask[r0:r0 + step], pick, True, axis=1)
    return mask


class UnifiedCSRWeight(CSRWeight):
    """CSR in which every row (output channel) stores the same number of entries.

    Exactly CSR semantics (``rowptr``/``colidx``/``values``, strictly increasing ``colidx`` per
    row, explicit zeros allowed), so every CSR kernel runs it unchanged; additionally
    ``rowptr[k] = k * stored_per_row``. Source: the seeds' GPU paper, section 7 (unified
    per-output-channel sparsity level, padding zeros chosen at side-by-side indices).

    Parameters
    ----------
    rowptr : numpy.ndarray (nrows + 1,) int32
        ``rowptr[k] = k * stored_per_row``.
    colidx : numpy.ndarray (nrows * stored_per_row,) int32
        Strictly increasing within each row, ``0 <= colidx < ncols``.
    values : numpy.ndarray (nrows * stored_per_row,) float16/float32/float64
        Nonzeros and explicit padding zeros.
    shape : tuple of int
        The dense weight shape, ``(K, C/groups, R, S)`` or ``(out, in)``.

    Raises
    ------
    ValueError
        Any CSR invariant (see :class:`CSRWeight`), or rows storing different numbers of entries.

    Notes
    -----
    ``nnz`` counts the true nonzeros, ``nstored = nrows * stored_per_row`` the stored entries,
    padding included; ``nbytes = 4 (nrows + 1) + (4 + itemsize) nstored``.
    """

    format_name = "unified_csr"

    def __init__(self, rowptr, colidx, values, shape):
        super().__init__(rowptr, colidx, values, shape)
        counts = np.diff(self.rowptr)
        if counts.size and (counts != counts[0]).any():
            bad = int(np.argmax(counts != counts[0]))
            raise ValueError(
                f"unified CSR rows must all store the same number of entries: row 0 stores "
                f"{counts[0]}, row {bad} stores {counts[bad]}"
            )

    @property
    def stored_per_row(self) -> int:
        """Entries stored in each row (the unified row length)."""
        return int(self.rowptr[1] - self.rowptr[0])

    @property
    def padding_entries(self) -> int:
        """Explicit zeros stored: ``nstored - nnz``."""
        return self.nstored - self.nnz

    @property
    def padding_overhead(self) -> float:
        """``(nstored - nnz) / nnz``: extra stored entries per true nonzero (0.0 when no padding,
        ``inf`` when a weight without nonzeros is padded)."""
        pad = self.padding_entries
        if pad == 0:
            return 0.0
        return pad / self.nnz if self.nnz else float("inf")

    @classmethod
    def from_dense(cls, weight, row_nnz: int | None = None) -> "UnifiedCSRWeight":
        """Build from a dense weight, padding every row to ``row_nnz`` stored entries.

        Parameters
        ----------
        weight : torch.Tensor or numpy.ndarray, (K, C/groups, R, S) or (out, in)
        row_nnz : int, optional
            Entries per row; default the largest row nnz. Must lie in
            ``[max row nnz, ncols]``.

        Raises
        ------
        ValueError
            If ``row_nnz`` is below the largest row nnz (naming that row) or above ``ncols``.
        TypeError
            If ``row_nnz`` is not an int; bad weight (see
            :func:`~sparsecnn.formats.base.as_numpy_weight`).
        """
        arr = as_numpy_weight(weight)
        mat = arr.reshape(arr.shape[0], -1)
        counts = np.count_nonzero(mat, axis=1)
        densest = int(np.argmax(counts))
        if row_nnz is None:
            row_nnz = int(counts[densest])
        if not isinstance(row_nnz, (int, np.integer)) or isinstance(row_nnz, bool):
            raise TypeError(f"row_nnz must be an int, got {type(row_nnz).__name__}")
        row_nnz = int(row_nnz)
        if row_nnz < counts[densest]:
            raise ValueError(
                f"row_nnz={row_nnz} is below the nnz of row {densest} ({counts[densest]}); "
                f"it must be >= the largest row nnz"
            )
        if row_nnz > mat.shape[1]:
            raise ValueError(f"row_nnz={row_nnz} exceeds ncols={mat.shape[1]}")
        rows, cols = np.nonzero(unified_mask(mat, row_nnz))
        rowptr = np.arange(mat.shape[0] + 1, dtype=np.int64) * row_nnz
        return cls(rowptr, cols, mat[rows, cols], arr.shape)
