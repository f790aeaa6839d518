"""N:M structured sparse weights (2:4 by default).

Along every row of the matrix view, each group of ``M`` consecutive columns holds at most ``N``
nonzeros. Storage follows NVIDIA's sparse tensor cores and cuSPARSELt (Mishra et al. 2021,
"Accelerating Sparse Deep Neural Networks", arXiv:2104.08378; cuSPARSELt docs,
"Structured sparsity"; PyTorch ``to_sparse_semi_structured``): a compressed value matrix of
``N/M`` of the columns plus, for each kept value, its position inside its group of ``M``
(2 bits for 2:4 in hardware, one ``uint8`` here).
"""

from __future__ import annotations

import math

import numpy as np

from .base import SparseWeight, as_numpy_weight, as_value_array, check_shape, owned


def check_nm_params(n, m) -> tuple[int, int]:
    """Validate ``n`` and ``m``: ints with ``1 <= n <= m <= 256`` (``uint8`` metadata).

    Raises
    ------
    ValueError
        If they are not ints or out of that range.
    """
    for name, v in (("n", n), ("m", m)):
        if not isinstance(v, (int, np.integer)) or isinstance(v, bool):
            raise ValueError(f"{name} must be an int, got {v!r}")
    n, m = int(n), int(m)
    if not 1 <= n <= m <= 256:
        raise ValueError(f"N:M needs 1 <= n <= m <= 256, got n={n}, m={m}")
    return n, m


def _grouped(weight, m: int) -> tuple[np.ndarray, int]:
    """Matrix view zero-padded to whole groups, as (nrows, ngroups, m), and ncols."""
    if isinstance(weight, SparseWeight):
        mat = weight.to_matrix()
    else:
        arr = as_numpy_weight(weight)
        mat = arr.reshape(arr.shape[0], -1)
    nrows, ncols = mat.shape
    ngroups = -(-ncols // m)
    padded = np.zeros((nrows, ngroups * m), dtype=mat.dtype)
    padded[:, :ncols] = mat
    return padded.reshape(nrows, ngroups, m), ncols


def first_violation(weight, n: int = 2, m: int = 4) -> tuple[int, int, int] | None:
    """The first (row-major) group of ``m`` columns holding more than ``n`` nonzeros.

    Parameters
    ----------
    weight : torch.Tensor, numpy.ndarray or SparseWeight, (K, C/groups, R, S) or (out, in)
    n, m : int
        The pattern, at most ``n`` nonzeros in every ``m`` consecutive columns of a row.

    Returns
    -------
    (row, group, count) or None
        Matrix row, group index (columns ``group*m .. group*m+m-1``) and its nonzero count; None
        if the pattern holds everywhere.
    """
    n, m = check_nm_params(n, m)
    groups, _ = _grouped(weight, m)
    counts = np.count_nonzero(groups, axis=2)
    bad = np.argwhere(counts > n)
    if not bad.size:
        return None
    row, group = (int(v) for v in bad[0])
    return row, group, int(counts[row, group])


def check_nm(weight, n: int = 2, m: int = 4) -> bool:
    """True if every group of ``m`` consecutive columns of every row has at most ``n`` nonzeros.

    See :func:`first_violation` for the parameters.
    """
    return first_violation(weight, n, m) is None


class NMWeight(SparseWeight):
    """An N:M structured sparse weight in compressed values + metadata form.

    The ``nrows x ncols`` matrix view is cut, along each row, into ``ngroups = ceil(ncols / m)``
    groups of ``m`` consecutive columns; each group keeps exactly ``n`` value slots (nonzeros,
    then explicit zeros when a group has fewer than ``n`` nonzeros, as cuSPARSELt does).

    Parameters
    ----------
    values : numpy.ndarray (nrows, ngroups * n) float16/float32/float64
        Slot ``t`` of group ``g`` is ``values[:, g * n + t]``.
    indices : numpy.ndarray (nrows, ngroups * n) uint8 (any integer type accepted)
        Position of each slot inside its group, ``0 <= indices < m``, strictly increasing within
        each group; the slot's column is ``g * m + indices[:, g * n + t]``.
    shape : tuple of int
        The dense weight shape, ``(K, C/groups, R, S)`` or ``(out, in)``.
    n, m : int, default 2, 4
        At most ``n`` nonzeros per ``m`` columns, ``1 <= n <= m <= 256``.

    Raises
    ------
    ValueError
        If an invariant fails: n/m range, values/indices shapes or dtypes, metadata out of
        ``[0, m)`` or not strictly increasing within a group, or a nonzero placed in the column
        padding beyond ``ncols``.

    Notes
    -----
    Padding: if ``ncols`` is not a multiple of ``m`` the last group is padded with zero columns
    ``ncols .. ngroups*m - 1``; slots may point there only with a zero value (checked), and
    ``to_dense`` crops them. ``nnz`` counts the nonzero slots, ``nstored = nrows * ngroups * n``.
    ``nbytes = nstored * (itemsize + 1)`` (uint8 metadata); :attr:`packed_nbytes` is the size
    with the metadata packed to ``ceil(log2 m)`` bits as sparse tensor cores store it (2 bits
    per kept value for 2:4; fp32/TF32 tensor cores use 1:2 instead, fp16/bf16 2:4).

    See Also
    --------
    check_nm, first_violation
    """

    format_name = "nm"

    def __init__(self, values, indices, shape, n: int = 2, m: int = 4):
        self.shape = check_shape(shape)
        self.n, self.m = check_nm_params(n, m)
        self.values = as_value_array(values, ndim=2)
        want = (self.nrows, self.ngroups * self.n)
        if self.values.shape != want:
            raise ValueError(f"values must have shape (nrows, ngroups * n) = {want}, got {self.values.shape}")
        idx = np.asarray(indices)
        if idx.shape != want:
            raise ValueError(f"indices must have shape (nrows, ngroups * n) = {want}, got {idx.shape}")
        if not np.issubdtype(idx.dtype, np.integer):
            raise ValueError(f"indices must hold integers, got dtype {idx.dtype}")
        if idx.size and (idx.min() < 0 or idx.max() >= self.m):
            raise ValueError(
                f"indices (N:M metadata) must lie in [0, {self.m}), got values in [{idx.min()}, {idx.max()}]"
            )
        self.indices = owned(idx, np.uint8)
        g = self.indices.reshape(self.nrows, self.ngroups, self.n).astype(np.int16)
        dec = np.argwhere(np.diff(g, axis=2) <= 0)
        if dec.size:
            row, group = (int(v) for v in dec[0][:2])
            raise ValueError(
                f"indices must be strictly increasing within each group of {self.n} slots; "
                f"violated at row {row}, group {group}: {g[row, group].tolist()}"
            )
        cols = self._columns()
        beyond = (cols >= self.ncols) & (self.values != 0)
        if beyond.any():
            row, slot = (int(v) for v in np.argwhere(beyond)[0])
            raise ValueError(
                f"row {row}, slot {slot} places a nonzero at column {cols[row, slot]} beyond "
                f"ncols={self.ncols} (last-group padding must be zero)"
            )

    @property
    def ngroups(self) -> int:
        """``ceil(ncols / m)`` groups per row."""
        return -(-self.ncols // self.m)

    @property
    def metadata_bits(self) -> int:
        """Bits a packed index needs: ``ceil(log2 m)``."""
        return math.ceil(math.log2(self.m)) if self.m > 1 else 0

    @property
    def packed_nbytes(self) -> int:
        """Bytes with the metadata bit-packed (``metadata_bits`` per slot), as in hardware."""
        return int(self.values.nbytes + -(-self.values.size * self.metadata_bits // 8))

    def arrays(self) -> dict[str, np.ndarray]:
        return {"values": self.values, "indices": self.indices}

    def _columns(self) -> np.ndarray:
        """Matrix column of every slot, ``numpy.ndarray (nrows, ngroups * n) int64``."""
        base = np.repeat(np.arange(self.ngroups, dtype=np.int64) * self.m, self.n)
        return base[None, :] + self.indices

    @classmethod
    def from_dense(cls, weight, n: int = 2, m: int = 4) -> "NMWeight":
        """Build from a dense weight that already follows the N:M pattern.

        Parameters
        ----------
        weight : torch.Tensor or numpy.ndarray, (K, C/groups, R, S) or (out, in)
        n, m : int, default 2, 4

        Raises
        ------
        ValueError
            If some group of ``m`` columns holds more than ``n`` nonzeros (the message names
            the first such row and group; prune first, e.g. keeping the ``n`` largest
            magnitudes per group), or bad ``n``/``m``/weight.
        """
        n, m = check_nm_params(n, m)
        arr = as_numpy_weight(weight)
        groups, _ = _grouped(arr, m)
        counts = np.count_nonzero(groups, axis=2)
        bad = np.argwhere(counts > n)
        if bad.size:
            row, g = (int(v) for v in bad[0])
            raise ValueError(
                f"weight is not {n}:{m} sparse: row {row}, group {g} (columns {g * m}..{g * m + m - 1}) "
                f"holds {counts[row, g]} nonzeros, at most {n} allowed"
            )
        # nonzeros first (in position order), then the lowest-position zeros; keep n, re-sort
        pick = np.sort(np.argsort(groups == 0, axis=2, kind="stable")[:, :, :n], axis=2)
        vals = np.take_along_axis(groups, pick, axis=2)
        nrows = arr.shape[0]
        return cls(vals.reshape(nrows, -1), pick.reshape(nrows, -1).astype(np.uint8), arr.shape, n, m)

    def to_numpy(self) -> np.ndarray:
        padded = np.zeros((self.nrows, self.ngroups * self.m), dtype=self.values.dtype)
        np.put_along_axis(padded, self._columns(), self.values, axis=1)
        return np.ascontiguousarray(padded[:, : self.ncols]).reshape(self.shape)

    def __repr__(self) -> str:
        return super().__repr__()[:-1] + f", n={self.n}, m={self.m})"
