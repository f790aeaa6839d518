"""One shared test suite, instantiated once per sparse weight format (scipy.sparse's habit).

``FormatSuite`` holds every generic test; each ``Test<Format>`` subclass sets the format name,
its ``from_dense`` options, flags for what it does not support, the independent size model and
its invalid-constructor cases. A new format gets the whole suite by adding one subclass.
Format-specific behaviour (N:M pattern checks, unified padding, BSR edge padding) is tested at
the end of the file.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sparsecnn import to_sparse
from sparsecnn.formats import (
    FORMATS,
    BSRWeight,
    CSCWeight,
    CSRWeight,
    NMWeight,
    SparseWeight,
    UnifiedCSRWeight,
    check_nm,
    convert,
    first_violation,
    from_scipy,
    to_scipy,
)
from sparsecnn.formats.unified import padding_distance

SHAPES = [(8, 3, 3, 3), (5, 7), (7, 3, 5, 5), (1, 1), (3, 1, 1, 1), (13, 17), (16, 2, 1, 3)]
DENSITIES = ["zero", "one", 0.1, 0.5, "full"]
DTYPES = [np.float32, np.float16, np.float64]


# -- helpers --------------------------------------------------------------------------------

def make_weight(shape, density, dtype=np.float32, seed=0) -> np.ndarray:
    """Random weight with the given density ("zero", "one" nonzero, "full" or a fraction).

    Values are drawn away from zero so that no float16 rounding creates accidental zeros.
    """
    rng = np.random.default_rng(seed)
    w = (rng.uniform(0.5, 2.0, size=shape) * rng.choice([-1.0, 1.0], size=shape)).astype(dtype)
    if density == "zero":
        w[...] = 0
    elif density == "one":
        flat = np.zeros(w.size, dtype=dtype)
        flat[rng.integers(w.size)] = w.flat[0]
        w = flat.reshape(shape)
    elif density != "full":
        w[rng.random(shape) >= density] = 0
    return w


def prune_nm(w: np.ndarray, n: int, m: int) -> np.ndarray:
    """Keep the n largest magnitudes in every group of m columns of the matrix view."""
    mat = w.reshape(w.shape[0], -1)
    nrows, ncols = mat.shape
    g = -(-ncols // m)
    padded = np.zeros((nrows, g * m), dtype=w.dtype)
    padded[:, :ncols] = mat
    groups = padded.reshape(nrows, g, m)
    drop = np.argsort(-np.abs(groups), axis=2, kind="stable")[:, :, n:]
    np.put_along_axis(groups, drop, 0, axis=2)
    return np.ascontiguousarray(groups.reshape(nrows, -1)[:, :ncols]).reshape(w.shape)


def matrix(w: np.ndarray) -> np.ndarray:
    return w.reshape(w.shape[0], -1)


def assert_exact(s: SparseWeight, w: np.ndarray) -> None:
    """Dense round trip is bit-exact, shape/dtype kept, and counts match the dense weight."""
    back = s.to_numpy()
    assert back.shape == w.shape and back.dtype == w.dtype
    np.testing.assert_array_equal(back, w)
    t = s.to_dense()
    assert isinstance(t, torch.Tensor) and t.dtype == torch.from_numpy(w).dtype
    assert torch.equal(t, torch.from_numpy(w))
    assert s.nnz == np.count_nonzero(w)
    assert s.nstored >= s.nnz


# -- the shared suite -----------------------------------------------------------------------

class FormatSuite:
    """Generic tests; subclasses set the attributes below (not collected itself)."""

    format: str
    options: dict = {}
    cls: type
    supports_scipy = True      # has to_scipy()
    n_m: tuple[int, int] | None = None  # the weight must follow an N:M pattern

    # hooks ---------------------------------------------------------------------------------
    def fit(self, w: np.ndarray) -> np.ndarray:
        """Make a random weight representable (prune to N:M for the N:M format)."""
        return prune_nm(w, *self.n_m) if self.n_m else w

    def build(self, w) -> SparseWeight:
        return to_sparse(w, self.format, **self.options)

    def expected_nstored(self, mat: np.ndarray) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    def expected_nbytes(self, mat: np.ndarray) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    def invalid_cases(self):  # pragma: no cover - abstract
        """List of (constructor thunk, regex the ValueError must match)."""
        raise NotImplementedError

    # tests ---------------------------------------------------------------------------------
    @pytest.mark.parametrize("shape", SHAPES)
    @pytest.mark.parametrize("density", DENSITIES)
    @pytest.mark.parametrize("dtype", DTYPES)
    def test_round_trip(self, shape, density, dtype):
        w = self.fit(make_weight(shape, density, dtype, seed=hash((shape, str(density))) % 1000))
        s = self.build(w)
        assert isinstance(s, self.cls) and s.format_name == self.format
        assert s.shape == shape and s.dtype == np.dtype(dtype)
        assert_exact(s, w)
        # same result from a torch tensor
        assert_exact(self.build(torch.from_numpy(w)), w)

    @pytest.mark.parametrize("shape", SHAPES)
    @pytest.mark.parametrize("density", DENSITIES)
    def test_sizes(self, shape, density):
        w = self.fit(make_weight(shape, density, np.float32, seed=3))
        s = self.build(w)
        mat = matrix(w)
        nrows, ncols = mat.shape
        assert (s.nrows, s.ncols) == (nrows, ncols)
        assert s.nnz == np.count_nonzero(mat)
        assert s.nstored == self.expected_nstored(mat)
        assert s.density == pytest.approx(np.count_nonzero(mat) / mat.size)
        assert s.sparsity == pytest.approx(1 - s.density)
        assert s.nbytes == self.expected_nbytes(mat)
        assert s.nbytes == sum(a.nbytes for a in s.arrays().values())
        assert s.dense_nbytes == mat.size * 4
        assert s.memory_saving == pytest.approx(1 - s.nbytes / (mat.size * 4))
        assert s.compression_ratio == pytest.approx(mat.size * 4 / s.nbytes)
        assert "nnz=" in repr(s)

    def test_nbytes_scales_with_dtype(self):
        w = self.fit(make_weight((6, 4, 3, 3), 0.3, np.float32))
        s32, s16 = self.build(w), self.build(w.astype(np.float16))
        assert s32.nbytes - s16.nbytes == 2 * s32.nstored
        assert s16.dense_nbytes == w.size * 2

    def test_invalid_constructor_inputs(self):
        cases = self.invalid_cases()
        assert cases
        for thunk, match in cases:
            with pytest.raises(ValueError, match=match):
                thunk()

    @pytest.mark.parametrize("bad, exc, match", [
        (np.ones((2, 3), dtype=np.int32), TypeError, "dtype"),
        (np.ones((2, 3, 4), dtype=np.float32), ValueError, "2-D"),
        (np.ones((2, 0), dtype=np.float32), ValueError, "empty"),
        ([[1.0, 0.0]], TypeError, "torch.Tensor or numpy.ndarray"),
        (torch.ones(2, 4, dtype=torch.bfloat16), TypeError, "bfloat16"),
        (torch.ones(2, 4, dtype=torch.int64), TypeError, "int64"),
    ])
    def test_bad_dense_input(self, bad, exc, match):
        with pytest.raises(exc, match=match):
            self.build(bad)

    def test_unknown_option(self):
        with pytest.raises(ValueError, match="unknown option"):
            to_sparse(np.ones((2, 4), np.float32), self.format, no_such_option=1)

    @pytest.mark.parametrize("target", sorted(FORMATS))
    def test_convert(self, target):
        # 2:4 and 4:8-pruned weights fit every target format with its default options
        w = prune_nm(make_weight((12, 5, 3, 3), 0.4, np.float32, seed=7), 1, 4)
        w = self.fit(w)
        s = self.build(w)
        t = convert(s, target)
        assert t.format_name == target
        assert_exact(t, w)
        assert_exact(s.to_format(target), w)
        back = convert(t, self.format, **self.options)
        assert_exact(back, w)

    def test_convert_same_format_is_identity(self):
        s = self.build(self.fit(make_weight((4, 8), 0.5)))
        assert convert(s, self.format) is s

    @pytest.mark.parametrize("dtype", [np.float32, np.float16])
    def test_to_scipy(self, dtype):
        w = self.fit(make_weight((8, 2, 2, 2), 0.4, dtype, seed=5))  # 8 x 8: multiple of blocks
        s = self.build(w)
        if not self.supports_scipy:
            with pytest.raises(TypeError, match="SciPy"):
                to_scipy(s)
            return
        want = matrix(w).astype(np.float32 if dtype == np.float16 else dtype)
        if isinstance(s, BSRWeight) and s.padded_shape != (8, 8):  # SciPy BSR needs whole blocks
            m = s.to_scipy(padded=True)
            assert m.shape == s.padded_shape and m.blocksize == s.block_shape
            np.testing.assert_array_equal(m.toarray()[:8, :8], want)
            return
        m = s.to_scipy()
        assert sp.issparse(m) and m.shape == (8, 8)
        np.testing.assert_array_equal(m.toarray(), want)
        back = from_scipy(m, shape=w.shape, dtype=dtype)
        assert type(back) is (CSRWeight if self.format == "unified_csr" else self.cls)
        np.testing.assert_array_equal(back.to_numpy(), w)

    def test_owns_read_only_arrays(self):
        """The object copies what it is given and marks it read-only: the caller changing its
        own arrays afterwards cannot reach the weight (or a kernel reading it)."""
        w = self.fit(make_weight((6, 9), 0.4))
        s = self.build(w)
        mine = {name: a.copy() for name, a in s.arrays().items()}
        extra = {k: getattr(s, k) for k in ("n", "m", "block_shape") if hasattr(s, k)}
        t = type(s)(**mine, shape=s.shape, **extra)
        for a in mine.values():
            a[...] = 0 if a.dtype.kind == "f" else a.max() if a.size else 0
        np.testing.assert_array_equal(t.to_numpy(), s.to_numpy())
        for name, a in t.arrays().items():
            assert not a.flags.writeable, name
            assert not any(np.shares_memory(a, m) for m in mine.values()), name
            if a.size:
                with pytest.raises(ValueError, match="read-only"):
                    a.flat[0] = 1

    def test_index_arrays_are_int32(self):
        s = self.build(self.fit(make_weight((6, 9), 0.4)))
        for name, a in s.arrays().items():
            assert a.flags.c_contiguous, name
            if name == "indices":
                assert a.dtype == np.uint8
            elif name != "values":
                assert a.dtype == np.int32, name

    @settings(max_examples=25, deadline=None,
              suppress_health_check=[HealthCheck.differing_executors])
    @given(
        shape=st.one_of(
            st.tuples(st.integers(1, 20), st.integers(1, 20)),
            st.tuples(st.integers(1, 9), st.integers(1, 4), st.integers(1, 3), st.integers(1, 3)),
        ),
        density=st.floats(0.0, 1.0),
        dtype=st.sampled_from([np.float32, np.float16]),
        seed=st.integers(0, 2**16),
    )
    def test_round_trip_property(self, shape, density, dtype, seed):
        w = self.fit(make_weight(shape, density, dtype, seed))
        s = self.build(w)
        assert_exact(s, w)
        assert s.nstored == self.expected_nstored(matrix(w))
        assert s.nbytes == self.expected_nbytes(matrix(w))
        # rebuilding from the object's own arrays passes validation and gives the same weight
        assert_exact(type(s)(**self.ctor_args(s)), w)
        # conversions to every format the weight fits (N:M only if it is 2:4) are exact
        for target in sorted(FORMATS):
            if target != "nm" or check_nm(w):
                assert_exact(convert(s, target), w)

    def ctor_args(self, s):  # pragma: no cover - abstract
        raise NotImplementedError


# -- per-format instantiations -------------------------------------------------------------

def _csr_cases(cls, ptr, idx, major_name):
    """Invariant cases of a 2 x 4 CSR/CSC (major dim 2, minor 4) built by ``cls``."""
    def mk(p, i, v, shape):
        return lambda: cls(np.array(p), np.array(i), np.asarray(v, dtype=np.float32)
                           if not isinstance(v, np.ndarray) else v, shape)
    shape = (2, 4) if cls is not CSCWeight else (4, 2)
    return [
        (mk([0, 1], [0], [1.0], shape), f"{ptr} must have length 3"),
        (mk([1, 1, 1], [0], [1.0], shape), rf"{ptr}\[0\] must be 0"),
        (mk([0, 2, 1], [0, 1], [1.0, 2.0], shape), "non-decreasing"),
        (mk([0, 1, 3], [0, 1], [1.0, 2.0], shape), rf"{ptr}\[-1\] must equal"),
        (mk([0, 1, 2], [0, 5], [1.0, 2.0], shape), rf"{idx} must lie in \[0, 4\)"),
        (mk([0, 1, 2], [-1, 0], [1.0, 2.0], shape), rf"{idx} must lie in \[0, 4\)"),
        (mk([0, 2, 2], [1, 0], [1.0, 2.0], shape), f"strictly increasing within each {major_name}"),
        (mk([0, 2, 2], [1, 1], [1.0, 2.0], shape), f"strictly increasing within each {major_name}"),
        (mk([0, 1, 2], [0, 1], [1.0], shape), "equal length"),
        (mk([0, 1, 2], [0, 1], np.array([1, 2]), shape), "values must be float16"),
        (mk([0, 1, 2], [0, 1], np.ones((2, 1), np.float32), shape), "values must be 1-D"),
        (mk([0, 1, 2], [0.0, 1.0], [1.0, 2.0], shape), f"{idx} must hold integers"),
        (mk([[0, 1, 2]], [0, 1], [1.0, 2.0], shape), f"{ptr} must be 1-D"),
        (mk([0, 1, 2], [0, 1], [1.0, 2.0], (2, 4, 1)), "shape must be 2-D"),
        (mk([0, 1, 2], [0, 1], [1.0, 2.0], (2.0, 4)), "shape must hold ints"),
        (mk([0, 1, 2], [0, 1], [1.0, 2.0], 8), "shape must be a tuple"),
    ]


class TestCSR(FormatSuite):
    format, cls = "csr", CSRWeight

    def expected_nstored(self, mat):
        return np.count_nonzero(mat)

    def expected_nbytes(self, mat):
        return 4 * (mat.shape[0] + 1) + (4 + mat.itemsize) * np.count_nonzero(mat)

    def invalid_cases(self):
        return _csr_cases(CSRWeight, "rowptr", "colidx", "row")

    def ctor_args(self, s):
        return dict(rowptr=s.rowptr, colidx=s.colidx, values=s.values, shape=s.shape)


class TestCSC(FormatSuite):
    format, cls = "csc", CSCWeight

    def expected_nstored(self, mat):
        return np.count_nonzero(mat)

    def expected_nbytes(self, mat):
        return 4 * (mat.shape[1] + 1) + (4 + mat.itemsize) * np.count_nonzero(mat)

    def invalid_cases(self):
        return _csr_cases(CSCWeight, "colptr", "rowidx", "column")

    def ctor_args(self, s):
        return dict(colptr=s.colptr, rowidx=s.rowidx, values=s.values, shape=s.shape)


class TestUnifiedCSR(FormatSuite):
    format, cls = "unified_csr", UnifiedCSRWeight

    def expected_nstored(self, mat):
        return mat.shape[0] * int(np.count_nonzero(mat, axis=1).max())

    def expected_nbytes(self, mat):
        return 4 * (mat.shape[0] + 1) + (4 + mat.itemsize) * self.expected_nstored(mat)

    def invalid_cases(self):
        v = np.ones(3, np.float32)
        return _csr_cases(UnifiedCSRWeight, "rowptr", "colidx", "row") + [
            (lambda: UnifiedCSRWeight([0, 2, 3], [0, 1, 2], v, (2, 4)),
             "same number of entries: row 0 stores 2, row 1 stores 1"),
        ]

    def ctor_args(self, s):
        return dict(rowptr=s.rowptr, colidx=s.colidx, values=s.values, shape=s.shape)


class _BSRSuite(FormatSuite):
    format, cls = "bsr", BSRWeight
    block = (4, 4)

    @property
    def options(self):
        return {"block_shape": self.block}

    def _nblocks(self, mat):
        """Count nonzero blocks with plain loops over the zero-padded matrix (independent)."""
        bh, bw = self.block
        count = 0
        for i in range(0, mat.shape[0], bh):
            for j in range(0, mat.shape[1], bw):
                count += bool(np.any(mat[i:i + bh, j:j + bw]))
        return count

    def expected_nstored(self, mat):
        return self._nblocks(mat) * self.block[0] * self.block[1]

    def expected_nbytes(self, mat):
        nbr = math.ceil(mat.shape[0] / self.block[0])
        return 4 * (nbr + 1) + 4 * self._nblocks(mat) + mat.itemsize * self.expected_nstored(mat)

    def invalid_cases(self):
        v = np.ones((2, 2, 2), np.float32)
        ok = dict(rowptr=[0, 1, 2], colidx=[0, 3], values=v, shape=(4, 8))

        def mk(**kw):
            args = {**ok, **kw}
            return lambda: BSRWeight(np.array(args.pop("rowptr")), np.array(args.pop("colidx")), **args)

        pad = np.zeros((1, 2, 2), np.float32)
        pad[0, 1, 1] = 1.0  # matrix position (3, 7) in a 3 x 7 matrix padded to 4 x 8
        pad_row = np.zeros((1, 2, 2), np.float32)
        pad_row[0, 1, 0] = 1.0  # matrix row 3 of a 3 x 8 matrix
        return [
            (mk(values=np.ones((2, 4), np.float32)), "values must be 3-D"),
            (mk(block_shape=(2, 4)), r"values must have shape \(nblocks, 2, 4\)"),
            (mk(block_shape=(0, 2), values=np.ones((2, 0, 2), np.float32)), "block_shape must be a pair"),
            (mk(block_shape="2x2"), "block_shape must be a pair"),
            (mk(rowptr=[0, 2]), "rowptr must have length 3"),
            (mk(rowptr=[0, 2, 1]), "non-decreasing"),
            (mk(colidx=[0, 4]), r"colidx must lie in \[0, 4\)"),
            (mk(rowptr=[0, 2, 2], colidx=[3, 1]), "strictly increasing within each block row"),
            (mk(colidx=[0]), "equal length"),
            (mk(values=np.ones((2, 2, 2), np.int64)), "values must be float16"),
            (mk(rowptr=[0, 0, 1], colidx=[3], values=pad, shape=(3, 7)), "padding must be zero"),
            (mk(rowptr=[0, 0, 1], colidx=[0], values=pad_row, shape=(3, 8)), "padding must be zero"),
        ]

    def ctor_args(self, s):
        return dict(rowptr=s.rowptr, colidx=s.colidx, values=s.values, shape=s.shape,
                    block_shape=s.block_shape)


class TestBSR4x4(_BSRSuite):
    block = (4, 4)


class TestBSR1x4(_BSRSuite):
    block = (1, 4)


class TestBSR4x1(_BSRSuite):
    block = (4, 1)


class TestBSR16x1(_BSRSuite):
    block = (16, 1)


class TestBSR3x5(_BSRSuite):
    block = (3, 5)


class _NMSuite(FormatSuite):
    format, cls = "nm", NMWeight
    supports_scipy = False

    @property
    def options(self):
        return {"n": self.n_m[0], "m": self.n_m[1]}

    def expected_nstored(self, mat):
        n, m = self.n_m
        return mat.shape[0] * math.ceil(mat.shape[1] / m) * n

    def expected_nbytes(self, mat):
        return self.expected_nstored(mat) * (mat.itemsize + 1)  # values + uint8 metadata

    def invalid_cases(self):
        n, m = self.n_m
        g = 8 // m  # groups in an 8-column matrix
        vals = np.ones((2, g * n), np.float32)
        idx = np.tile(np.arange(n), (2, g))
        ok = dict(values=vals, indices=idx, shape=(2, 8), n=n, m=m)

        def mk(**kw):
            args = {**ok, **kw}
            return lambda: NMWeight(**args)

        bad_order = idx.copy()
        bad_order[1, :n] = bad_order[1, :n][::-1] if n > 1 else m  # decreasing (or out of range)
        cases = [
            (mk(indices=np.where(idx == 0, m, idx)), rf"must lie in \[0, {m}\)"),
            (mk(indices=idx - 1), rf"must lie in \[0, {m}\)"),
            (mk(values=vals[:, :-1]), r"values must have shape \(nrows, ngroups \* n\)"),
            (mk(indices=idx[:1]), r"indices must have shape"),
            (mk(indices=idx.astype(np.float32)), "indices must hold integers"),
            (mk(values=vals.astype(np.int32)), "values must be float16"),
            (mk(n=m + 1), "1 <= n <= m <= 256"),
            (mk(n=0), "1 <= n <= m <= 256"),
            (mk(m=300, n=1), "1 <= n <= m <= 256"),
            (mk(n=2.0), "n must be an int"),
        ]
        if n > 1:
            cases.append((mk(indices=bad_order), "strictly increasing within each group.*row 1, group 0"))
        # nonzero in the padding of the last group: 2 x (8 - 1) matrix, last slot -> column 7
        beyond = idx.copy()
        beyond[:, -1] = m - 1
        if n > 1:
            beyond[:, -n:] = np.arange(m - n, m)
        cases.append((mk(indices=beyond, shape=(2, 7)), "beyond ncols=7"))
        return cases

    def ctor_args(self, s):
        return dict(values=s.values, indices=s.indices, shape=s.shape, n=s.n, m=s.m)


class TestNM2of4(_NMSuite):
    n_m = (2, 4)


class TestNM1of4(_NMSuite):
    n_m = (1, 4)


class TestNM4of8(_NMSuite):
    n_m = (4, 8)


def test_every_format_has_a_suite():
    covered = {c.format for c in FormatSuite.__subclasses__() if hasattr(c, "format")}
    covered |= {c.format for c in (_BSRSuite, _NMSuite)}
    assert covered == set(FORMATS)


# -- N:M specifics ------------------------------------------------------------------------

def test_nm_valid_2of4_passes_and_stores_compressed():
    w = np.array([[1, 0, 2, 0, 0, 0, 0, 3],
                  [0, 4, 5, 0, 6, 7, 0, 0]], dtype=np.float32)
    assert check_nm(w) and first_violation(w) is None
    s = NMWeight.from_dense(w)
    np.testing.assert_array_equal(s.values, [[1, 2, 0, 3], [4, 5, 6, 7]])
    np.testing.assert_array_equal(s.indices, [[0, 2, 0, 3], [1, 2, 0, 1]])
    assert s.indices.dtype == np.uint8
    assert s.nnz == 7 and s.nstored == 8
    assert s.nbytes == 8 * 4 + 8 * 1
    assert s.metadata_bits == 2 and s.packed_nbytes == 8 * 4 + 2  # 8 slots x 2 bits
    assert s.dense_nbytes == 16 * 4 and s.memory_saving == pytest.approx(1 - 40 / 64)


def test_nm_invalid_raises_naming_row_and_group():
    w = np.zeros((3, 2, 2, 2), dtype=np.float32)  # matrix 3 x 8
    w[2, 1, 0, :] = 1.0
    w[2, 1, 1, 0] = 1.0  # row 2, columns 4, 5, 6 -> group 1 holds 3 nonzeros
    assert not check_nm(w)
    assert first_violation(w) == (2, 1, 3)
    assert check_nm(w, 3, 4) and check_nm(torch.from_numpy(w), 4, 8)
    with pytest.raises(ValueError, match=r"not 2:4 sparse: row 2, group 1 \(columns 4..7\) holds 3"):
        to_sparse(w, "nm")
    assert first_violation(to_sparse(w, "csr")) == (2, 1, 3)  # works on sparse weights too


def test_nm_ragged_last_group_is_padded():
    w = np.zeros((2, 5), dtype=np.float16)  # groups: columns 0..3 and 4 (+ padding 5..7)
    w[0, 4] = 3.0
    w[1, [1, 2]] = [1.0, -1.0]
    s = NMWeight.from_dense(w)
    assert s.ngroups == 2 and s.values.shape == (2, 4)
    np.testing.assert_array_equal(s.indices[0, 2:], [0, 1])  # slot at padding column 5 holds 0
    assert s.values[0, 3] == 0
    np.testing.assert_array_equal(s.to_numpy(), w)


def test_nm_n_equals_m_is_dense():
    w = make_weight((3, 6), "full")
    s = to_sparse(w, "nm", n=3, m=3)
    assert s.nnz == s.nstored == 18 and s.metadata_bits == 2
    np.testing.assert_array_equal(s.to_numpy(), w)


# -- unified CSR specifics -----------------------------------------------------------------

def _stored_rows(s):
    return [s.colidx[s.rowptr[k]:s.rowptr[k + 1]] for k in range(s.nrows)]


@pytest.mark.parametrize("density", [0.01, 0.1, 0.3, 0.7])
def test_unified_padding_is_equal_adjacent_and_harmless(density):
    w = make_weight((32, 8, 3, 3), density, seed=11)
    w[3] = 0  # an all-zero row
    s = to_sparse(w, "unified_csr")
    mat = matrix(w)
    counts = np.count_nonzero(mat, axis=1)
    assert np.all(np.diff(s.rowptr) == counts.max()) and s.stored_per_row == counts.max()
    assert isinstance(s, CSRWeight)
    np.testing.assert_array_equal(s.to_numpy(), w)
    assert s.nnz == counts.sum() and s.padding_entries == s.nstored - s.nnz
    assert s.padding_overhead == pytest.approx((s.nstored - s.nnz) / s.nnz)
    np.testing.assert_array_equal(s.row_nnz(), counts)
    np.testing.assert_array_equal(s.row_nstored(), np.full(32, counts.max()))
    for k, cols in enumerate(_stored_rows(s)):
        nz = np.flatnonzero(mat[k])
        assert set(nz) <= set(cols)
        pad = np.setdiff1d(cols, nz)
        if not nz.size:  # an empty row is padded at its first columns
            np.testing.assert_array_equal(pad, np.arange(pad.size))
            continue
        # every padding column is at least as close to a nonzero as every unused zero column
        dist = np.abs(np.arange(mat.shape[1])[:, None] - nz[None, :]).min(axis=1)
        unused = np.setdiff1d(np.arange(mat.shape[1]), cols)
        if pad.size and unused.size:
            assert dist[pad].max() <= dist[unused].min()


def test_unified_padding_prefers_following_columns():
    w = np.zeros((2, 10), np.float32)
    w[0, [2, 3, 4]] = 1.0
    w[1, 6] = 2.0
    s = UnifiedCSRWeight.from_dense(w)
    rows = _stored_rows(s)
    np.testing.assert_array_equal(rows[0], [2, 3, 4])
    np.testing.assert_array_equal(rows[1], [5, 6, 7])  # next after 6, then just before it
    np.testing.assert_array_equal(s.values[3:], [0, 2, 0])
    s5 = UnifiedCSRWeight.from_dense(w, row_nnz=5)
    np.testing.assert_array_equal(_stored_rows(s5)[0], [1, 2, 3, 4, 5])
    np.testing.assert_array_equal(_stored_rows(s5)[1], [4, 5, 6, 7, 8])
    assert padding_distance(w)[1].tolist() == [13, 11, 9, 7, 5, 3, -1, 2, 4, 6]


def test_unified_row_nnz_option_errors():
    w = make_weight((4, 6), 0.5, seed=2)
    counts = np.count_nonzero(w, axis=1)
    with pytest.raises(ValueError, match=f"below the nnz of row {int(np.argmax(counts))}"):
        to_sparse(w, "unified_csr", row_nnz=int(counts.max()) - 1)
    with pytest.raises(ValueError, match="exceeds ncols=6"):
        to_sparse(w, "unified_csr", row_nnz=7)
    with pytest.raises(TypeError, match="row_nnz must be an int"):
        to_sparse(w, "unified_csr", row_nnz=2.5)
    full = to_sparse(w, "unified_csr", row_nnz=6)
    assert full.nstored == 24 and np.all(full.colidx.reshape(4, 6) == np.arange(6))


def test_unified_all_zero_weight_overhead():
    s = to_sparse(np.zeros((3, 4), np.float32), "unified_csr", row_nnz=2)
    assert s.nnz == 0 and s.nstored == 6 and s.padding_overhead == float("inf")
    assert to_sparse(np.zeros((3, 4), np.float32), "unified_csr").padding_overhead == 0.0


# -- BSR / CSR / CSC specifics -------------------------------------------------------------

def test_bsr_edge_padding_and_scipy():
    w = make_weight((5, 7), "full", seed=4)
    s = to_sparse(w, "bsr", block_shape=(2, 3))
    assert s.padded_shape == (6, 9) and s.nblocks == 9 and s.nstored == 54 and s.nnz == 35
    assert s.fill == pytest.approx(35 / 54) and s.block_density == 1.0
    assert s.blocks is s.values
    np.testing.assert_array_equal(s.values[-1, 1], 0)  # padding row of the corner block
    np.testing.assert_array_equal(s.values[-1, :, 1:], 0)  # padding columns of the corner block
    with pytest.raises(ValueError, match="padded=True"):
        s.to_scipy()
    m = s.to_scipy(padded=True)
    assert m.shape == (6, 9) and m.blocksize == (2, 3)
    np.testing.assert_array_equal(m.toarray()[:5, :7], w)
    assert to_sparse(w, "bsr", block_shape=3).block_shape == (3, 3)


def test_bsr_stores_only_blocks_with_nonzeros():
    w = np.zeros((8, 8), np.float32)
    w[0, 0] = 1.0
    w[5, 6] = 2.0
    s = to_sparse(w, "bsr", block_shape=(4, 4))
    np.testing.assert_array_equal(s.rowptr, [0, 1, 2])
    np.testing.assert_array_equal(s.colidx, [0, 1])
    assert s.nstored == 32 and s.nnz == 2 and s.block_density == 0.5


def test_csr_csc_keep_explicit_zeros_through_conversion():
    s = CSRWeight([0, 2, 3], [0, 2, 1], np.array([0.0, 1.0, 2.0], np.float32), (2, 3))
    assert s.nnz == 2 and s.nstored == 3
    np.testing.assert_array_equal(s.row_nnz(), [1, 1])
    c = convert(s, "csc")
    assert c.nstored == 3 and c.nnz == 2
    np.testing.assert_array_equal(c.col_nnz(), [0, 1, 1])
    np.testing.assert_array_equal(c.to_numpy(), s.to_numpy())
    assert convert(to_sparse(make_weight((2, 3), "full"), "unified_csr"), "csr").nstored == 6


def test_from_scipy():
    m = sp.random_array((6, 12), density=0.3, format="coo", dtype=np.float32, rng=1)
    dense = m.toarray()
    s = from_scipy(m, shape=(6, 3, 2, 2))
    assert isinstance(s, CSRWeight) and s.shape == (6, 3, 2, 2)
    np.testing.assert_array_equal(s.to_numpy(), dense.reshape(6, 3, 2, 2))
    assert isinstance(from_scipy(m.tocsc()), CSCWeight)
    b = from_scipy(sp.bsr_array(m.tocsr(), blocksize=(2, 3)))
    assert isinstance(b, BSRWeight) and b.block_shape == (2, 3)
    np.testing.assert_array_equal(b.to_numpy(), dense)
    with pytest.raises(ValueError, match="does not match"):
        from_scipy(m, shape=(6, 5))
    with pytest.raises(TypeError, match="scipy.sparse"):
        from_scipy(dense)


def test_to_sparse_unknown_format():
    with pytest.raises(ValueError, match="unknown format 'coo'.*'bsr'"):
        to_sparse(np.ones((2, 2), np.float32), "coo")
    with pytest.raises(ValueError, match="unknown format"):
        convert(np.ones((2, 2), np.float32), "coo")
