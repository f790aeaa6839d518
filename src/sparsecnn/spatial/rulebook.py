"""Rulebooks (kernel maps) of sparse convolution: which input row feeds which output row through
which kernel offset.

For a convolution with kernel volume ``K`` (``k^D``), a rulebook over ``P_out`` output sites is the
*neighbour map* ``nbr`` ((P_out, K) int32): ``nbr[j, k]`` is the input row that reaches output
row ``j`` through kernel offset ``k`` (``-1`` if that input site is inactive). Column ``k`` is the
rulebook's group for offset ``k`` -- the (offset, input row, output row) lists of the submanifold
convolution lecture (Graham & van der Maaten 2017, "Submanifold Sparse Convolutional Networks";
spconv's ``indice_pairs``; MinkowskiEngine's kernel map, Choy et al. 2019) stored as one column
per offset instead of a compacted list. The compacted per-offset lists (``pairs``) are derived
on demand for the gather-GEMM-scatter path and for weight gradients.

Offsets are numbered row-major over the kernel window ``(k_1, ..., k_D)``, the order of torch's
weight ``(C_out, C_in, k_1, ..., k_D)``; convolution is cross-correlation as in
:func:`torch.nn.functional.conv3d`: ``y[o] = sum_k W[:, :, k] x[o * s - p + k * d]``.

Builders (all parallel over sites, lock-free, each output row written by one thread):

- :func:`build_subm` -- submanifold convolution (output sites = input sites, odd kernel, stride
  1, "same" padding). Uses the kernel's symmetry: when ``j`` finds ``i`` at offset ``k``, ``i``
  finds ``j`` at the mirrored offset ``K - 1 - k``, so only half of the offsets are looked up.
- :func:`build_conv` -- regular sparse convolution (an output site is active if any input site is
  in its window): the candidate output keys of every input go through a parallel hash set
  (:func:`sparsecnn.spatial.hashing.unique_sorted`), which gives the output sites in lexicographic
  order (``H_out``); then each input scatters itself into the map.
- :meth:`RuleBook.transposed` -- the map of the transposed convolution (``SparseInverseConv``, and
  the input gradient): ``nbrT[i, k] = j`` where ``nbr[j, k] = i``.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import numpy as np
from numba import njit, prange

from .hashing import lookup, unique_sorted

#: Use :func:`_subm_map_sorted` when the coordinates are in lexicographic order (tests switch it
#: off to check both builders).
SORTED_FAST_PATH = True


@dataclass(frozen=True)
class Geometry:
    """Kernel geometry of one sparse convolution / pooling: the rulebook's cache key (with the
    coordinate set).

    Attributes
    ----------
    kind : {"subm", "conv", "inverse"}
    kernel_size, stride, padding, dilation : tuple of int, one per spatial dimension
    """

    kind: str
    kernel_size: tuple[int, ...]
    stride: tuple[int, ...]
    padding: tuple[int, ...]
    dilation: tuple[int, ...]

    @property
    def ndim(self) -> int:
        return len(self.kernel_size)

    @property
    def volume(self) -> int:
        return int(np.prod(self.kernel_size))

    def out_shape(self, in_shape: tuple[int, ...]) -> tuple[int, ...]:
        """Spatial output shape of a regular convolution (as torch's conv): ``floor((S + 2p -
        d (k - 1) - 1) / s) + 1`` per dimension; ``in_shape`` for submanifold convolution."""
        if self.kind == "subm":
            return tuple(in_shape)
        return tuple((n + 2 * p - d * (k - 1) - 1) // s + 1 for n, k, s, p, d in
                     zip(in_shape, self.kernel_size, self.stride, self.padding, self.dilation))

    def offsets(self) -> np.ndarray:
        """(K, D) int64: ``k_i * d_i - p_i`` per offset, row-major over the window."""
        grid = itertools.product(*(range(k) for k in self.kernel_size))
        return np.array([[a * d - p for a, d, p in zip(idx, self.dilation, self.padding)]
                         for idx in grid], dtype=np.int64).reshape(-1, self.ndim)


@dataclass(eq=False)
class RuleBook:
    """The kernel map of one convolution between two coordinate sets.

    Attributes
    ----------
    geometry : Geometry
    nbr : numpy.ndarray (n_out, K) int32
        Input row feeding output row ``j`` through offset ``k``, or -1.
    n_in : int
        Rows of the input.
    coords_in, coords_out : CoordSet
        The input and output coordinate sets (the same object for submanifold convolution).
    """

    geometry: Geometry
    nbr: np.ndarray
    n_in: int
    coords_in: object
    coords_out: object
    _pairs: tuple | None = field(default=None, repr=False)
    _transposed: RuleBook | None = field(default=None, repr=False)

    @property
    def n_out(self) -> int:
        return self.nbr.shape[0]

    @property
    def volume(self) -> int:
        return self.nbr.shape[1]

    @property
    def n_pairs(self) -> int:
        """Entries of the rulebook (active (input, output, offset) triples): each is one row of
        ``C_in x C_out`` multiply-adds."""
        return int(self.counts().sum())

    def counts(self) -> np.ndarray:
        """(K,) int64: rulebook entries per offset."""
        return np.diff(self.pairs()[0])

    def pairs(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The rulebook as compacted lists grouped by offset: ``(starts, in_idx, out_idx)`` with
        ``starts`` (K + 1,) int64 and ``in_idx[starts[k]:starts[k+1]]`` / ``out_idx[...]`` (int64)
        the rows paired through offset ``k`` (output rows ascending). Computed once, cached."""
        if self._pairs is None:
            self._pairs = _compact(self.nbr)
        return self._pairs

    def transposed(self) -> RuleBook:
        """The rulebook of the transposed convolution (inputs and outputs swapped, same offsets):
        ``nbrT[i, k] = j`` where ``nbr[j, k] = i``. Cached."""
        if self._transposed is None:
            g = self.geometry
            if g.kind == "subm":
                # submanifold (odd, centred window): j reaches i through k  <=>  i reaches j
                # through the mirrored offset K-1-k, so the transposed map is the map mirrored
                nbr_t = np.ascontiguousarray(self.nbr[:, ::-1])
            else:
                nbr_t = _transpose_map(self.nbr, self.n_in)
            kind = {"conv": "inverse", "inverse": "conv", "subm": "subm"}[g.kind]
            t = RuleBook(Geometry(kind, g.kernel_size, g.stride, g.padding, g.dilation), nbr_t,
                         self.n_out, self.coords_out, self.coords_in)
            t._transposed = self
            self._transposed = t
        return self._transposed

    @property
    def nbytes(self) -> int:
        n = self.nbr.nbytes
        if self._pairs is not None:
            n += sum(a.nbytes for a in self._pairs)
        return n


# ---------------------------------------------------------------------------------------------
# builders
@njit(cache=True, nogil=True, parallel=True)
def _fill_i32(a, v):
    flat = a.reshape(-1)
    n = flat.shape[0]
    step = 1 << 16
    for b in prange((n + step - 1) // step):
        for t in range(b * step, min(n, (b + 1) * step)):
            flat[t] = v


@njit(cache=True, nogil=True, parallel=True)
def _subm_map(coords, keys, table, shift, mask, offs, deltas, shape, nbr):
    p, kvol = nbr.shape
    nd = offs.shape[1]
    c = kvol // 2
    for j in prange(p):
        nbr[j, c] = j
        kj = keys[j]
        for k in range(c):
            ok = True
            for d in range(nd):
                x = coords[j, 1 + d] + offs[k, d]
                if x < 0 or x >= shape[d]:
                    ok = False
                    break
            if ok:
                i = lookup(table, shift, mask, kj + deltas[k])
                if i >= 0:
                    nbr[j, k] = i
                    nbr[i, kvol - 1 - k] = j


@njit(cache=True, nogil=True, inline="always")
def _record(nbr, kvol, j, k, i):
    nbr[j, k] = i
    nbr[i, kvol - 1 - k] = j


@njit(cache=True, nogil=True, parallel=True)
def _subm_map_sorted(coords, keys, table, shift, mask, row_offs, row_deltas, kx, shape, chunk,
                     nbr):
    """:func:`_subm_map` for strictly ascending ``keys`` and dilation 1, with few lookups.

    Offsets are rows (over the first D - 1 dims, ``row_offs`` / ``row_deltas``) of ``kx`` taps
    along x. Sites of one x-run are consecutive keys, so after one hit in a row window the other
    neighbours of that window are the next rows of ``keys`` (a scan, no hashing); and when site
    ``j - 1`` is the x-neighbour of ``j``, ``j``'s windows are ``j - 1``'s shifted by one tap:
    only the new rightmost tap is checked (the row after the window's last hit, or one lookup if
    the window was empty). The centre row needs no lookup at all (the x-neighbours below ``j`` are
    rows ``j - 1, j - 2, ...``). Tasks are chunks of ``chunk`` sites (their first site scans).
    """
    p, kvol = nbr.shape
    nrows = row_offs.shape[0]
    nd1 = row_offs.shape[1]
    hx = kx // 2
    rc = nrows // 2
    c = rc * kx + hx
    wx = shape[nd1]
    nchunks = (p + chunk - 1) // chunk
    for q in prange(nchunks):
        for j in range(q * chunk, min(p, (q + 1) * chunk)):
            nbr[j, c] = j
            kj = keys[j]
            x = coords[j, 1 + nd1]
            # centre row, taps left of the centre: rows j-1, j-2, ... of the same x-run
            lo = kj - min(hx, x)
            i = j - 1
            while i >= 0 and keys[i] >= lo:
                _record(nbr, kvol, j, c - (kj - keys[i]), i)
                i -= 1
            t0 = max(0, hx - x)
            t1 = min(kx, wx - x + hx)
            slide = j > q * chunk and x > 0 and keys[j - 1] == kj - 1
            for r in range(rc):
                ok = True
                for d in range(nd1):
                    v = coords[j, 1 + d] + row_offs[r, d]
                    if v < 0 or v >= shape[d]:
                        ok = False
                        break
                if not ok:
                    continue
                base = kj + row_deltas[r] - hx          # key of tap t is base + t
                k0 = r * kx
                if slide:
                    last = -1
                    for t in range(t0, kx - 1):
                        i = nbr[j - 1, k0 + t + 1]
                        if i >= 0:
                            _record(nbr, kvol, j, k0 + t, i)
                            last = i
                    if t1 == kx:                          # the new rightmost tap
                        want = base + kx - 1
                        if last >= 0:
                            if last + 1 < p and keys[last + 1] == want:
                                _record(nbr, kvol, j, k0 + kx - 1, last + 1)
                        else:
                            i = lookup(table, shift, mask, want)
                            if i >= 0:
                                _record(nbr, kvol, j, k0 + kx - 1, i)
                else:
                    for t in range(t0, t1):
                        i = lookup(table, shift, mask, base + t)
                        if i >= 0:
                            _record(nbr, kvol, j, k0 + t, i)
                            hi = base + t1
                            i += 1
                            while i < p and keys[i] < hi:
                                _record(nbr, kvol, j, k0 + keys[i] - base, i)
                                i += 1
                            break


@njit(cache=True, nogil=True, parallel=True)
def _strictly_ascending(keys):
    n = keys.shape[0]
    bad = 0
    for i in prange(1, n):
        if keys[i] <= keys[i - 1]:
            bad += 1
    return bad == 0


def _row_strides(batch: int, shape: tuple[int, ...]) -> np.ndarray:
    """Row-major strides (int64) of the grid ``(batch, *shape)``."""
    dims = (batch, *shape)
    st = np.ones(len(dims), dtype=np.int64)
    for i in range(len(dims) - 2, -1, -1):
        st[i] = st[i + 1] * dims[i + 1]
    return st


def build_subm(cs, geometry: Geometry) -> RuleBook:
    """Rulebook of a submanifold convolution on coordinate set ``cs`` (a
    :class:`~sparsecnn.spatial.tensor.CoordSet`); the output sites are ``cs`` itself.

    ``geometry`` must have odd kernel sizes, stride 1 and padding ``d (k - 1) / 2`` (checked by the
    caller), so the window is centred on the output site.
    """
    table = cs.table()
    offs = geometry.offsets()                      # (K, D): k*d - p, centred
    strides = _row_strides(cs.batch_size, cs.spatial_shape)[1:]
    deltas = offs @ strides
    nbr = np.empty((cs.n, geometry.volume), dtype=np.int32)
    _fill_i32(nbr, -1)
    shape = np.asarray(cs.spatial_shape, dtype=np.int64)
    if cs.n and SORTED_FAST_PATH and cs.is_sorted() and all(d == 1 for d in geometry.dilation):
        kx = geometry.kernel_size[-1]
        row_offs = np.ascontiguousarray(offs[::kx, :-1])         # (rows, D - 1)
        row_deltas = row_offs @ strides[:-1]
        _subm_map_sorted(cs.coords, cs.keys(), table.table, table.shift, table.mask, row_offs,
                         row_deltas, kx, shape, 256, nbr)
    elif cs.n:
        _subm_map(cs.coords, cs.keys(), table.table, table.shift, table.mask, offs, deltas,
                  shape, nbr)
    return RuleBook(geometry, nbr, cs.n, cs, cs)


@njit(cache=True, nogil=True, parallel=True)
def _conv_candidates(coords, offs, stride, oshape, ostrides, per, ncand, out):
    """Candidate output keys of each input: ``o = (x - off) / s`` for each offset where it is an
    integer inside the output grid; ``out`` ((P * per,) int64) gets them, -1 elsewhere."""
    p = coords.shape[0]
    kvol, nd = offs.shape
    for i in prange(p):
        n = 0
        base = i * per
        for k in range(kvol):
            key = np.int64(coords[i, 0]) * ostrides[0]
            ok = True
            for d in range(nd):
                v = coords[i, 1 + d] - offs[k, d]
                if v < 0 or v % stride[d] != 0:
                    ok = False
                    break
                o = v // stride[d]
                if o >= oshape[d]:
                    ok = False
                    break
                key += o * ostrides[1 + d]
            if ok:
                out[base + n] = key
                n += 1
        for t in range(n, per):
            out[base + t] = -1
        ncand[i] = n


@njit(cache=True, nogil=True, parallel=True)
def _conv_scatter(cand, per, ncand, coords, offs, stride, oshape, table, shift, mask, nbr):
    """``nbr[j, k] = i`` for each input ``i`` and offset ``k`` reaching output ``j`` (each slot
    has one writer: the input at ``o * s + off_k``)."""
    p = coords.shape[0]
    kvol, nd = offs.shape
    for i in prange(p):
        t = 0
        for k in range(kvol):
            ok = True
            for d in range(nd):
                v = coords[i, 1 + d] - offs[k, d]
                if v < 0 or v % stride[d] != 0 or v // stride[d] >= oshape[d]:
                    ok = False
                    break
            if ok:
                j = lookup(table, shift, mask, cand[i * per + t])
                nbr[j, k] = i
                t += 1


@njit(cache=True, nogil=True, parallel=True)
def _unpack(keys, strides, out):
    n, m = out.shape
    for i in prange(n):
        r = keys[i]
        for d in range(m):
            out[i, d] = np.int32(r // strides[d])
            r = r % strides[d]


def build_conv(cs, geometry: Geometry):
    """Rulebook and output coordinates of a regular sparse convolution on ``cs``.

    An output site is active when its window holds at least one active input site (spconv's
    ``SparseConv``); the output grid is :meth:`Geometry.out_shape` of ``cs.spatial_shape``.

    Returns
    -------
    (RuleBook, out_coords, out_shape) : ``out_coords`` (P_out, 1 + D) int32, lexicographic order;
    the RuleBook's ``coords_out`` is left None for the caller to fill with the CoordSet it makes.
    """
    offs = geometry.offsets()
    stride = np.asarray(geometry.stride, dtype=np.int64)
    oshape = geometry.out_shape(cs.spatial_shape)
    if min(oshape) < 1:
        raise ValueError(f"spatial shape {cs.spatial_shape} is too small for kernel "
                         f"{geometry.kernel_size}, stride {geometry.stride}, padding "
                         f"{geometry.padding}, dilation {geometry.dilation}: output {oshape}")
    ostrides = _row_strides(cs.batch_size, oshape)
    # offsets of the window that can reach one input: per dimension, the most kernel taps a
    # with the same a * d mod s (ceil(k / s) without dilation)
    per = 1
    for k, s, d in zip(geometry.kernel_size, geometry.stride, geometry.dilation):
        per *= max(np.bincount([(a * d) % s for a in range(k)]))
    cand = np.empty(cs.n * per, dtype=np.int64)
    ncand = np.empty(cs.n, dtype=np.int64)
    oshape_a = np.asarray(oshape, dtype=np.int64)
    if cs.n:
        _conv_candidates(cs.coords, offs, stride, oshape_a, ostrides, per, ncand, cand)
    # distinct outputs: about n * (candidates per input) / (inputs per output); the table grows
    # itself if the estimate is low
    est = max(16, int(cs.n * per / max(1, int(np.prod(geometry.stride))) * 1.5))
    okeys, table = unique_sorted(cand, est)
    out_coords = np.empty((okeys.shape[0], 1 + geometry.ndim), dtype=np.int32)
    _unpack(okeys, ostrides, out_coords)
    nbr = np.empty((okeys.shape[0], geometry.volume), dtype=np.int32)
    _fill_i32(nbr, -1)
    if cs.n:
        _conv_scatter(cand, per, ncand, cs.coords, offs, stride, oshape_a, table.table,
                      table.shift, table.mask, nbr)
    rb = RuleBook(geometry, nbr, cs.n, cs, None)
    return rb, out_coords, oshape, okeys, table


@njit(cache=True, nogil=True, parallel=True)
def _transpose_into(nbr, out):
    p, kvol = nbr.shape
    for j in prange(p):
        for k in range(kvol):
            i = nbr[j, k]
            if i >= 0:
                out[i, k] = j


def _transpose_map(nbr: np.ndarray, n_in: int) -> np.ndarray:
    out = np.empty((n_in, nbr.shape[1]), dtype=np.int32)
    _fill_i32(out, -1)
    if nbr.shape[0]:
        _transpose_into(nbr, out)
    return out


@njit(cache=True, nogil=True, parallel=True)
def _count_cols(nbr, block, counts):
    p, kvol = nbr.shape
    nb = counts.shape[0]
    for b in prange(nb):
        for k in range(kvol):
            counts[b, k] = 0
        for j in range(b * block, min(p, (b + 1) * block)):
            for k in range(kvol):
                if nbr[j, k] >= 0:
                    counts[b, k] += 1


@njit(cache=True, nogil=True, parallel=True)
def _fill_pairs(nbr, block, pos, in_idx, out_idx):
    p, kvol = nbr.shape
    nb = pos.shape[0]
    for b in prange(nb):
        for j in range(b * block, min(p, (b + 1) * block)):
            for k in range(kvol):
                i = nbr[j, k]
                if i >= 0:
                    t = pos[b, k]
                    in_idx[t] = i
                    out_idx[t] = j
                    pos[b, k] = t + 1


def _compact(nbr: np.ndarray):
    """Per-offset compacted (in, out) lists of a map (parallel two-pass: count per block of
    rows and offset, prefix sums, fill)."""
    p, kvol = nbr.shape
    block = 2048
    nb = max(1, (p + block - 1) // block)
    counts = np.empty((nb, kvol), dtype=np.int64)
    _count_cols(nbr, block, counts)
    per_k = counts.sum(axis=0)
    starts = np.zeros(kvol + 1, dtype=np.int64)
    np.cumsum(per_k, out=starts[1:])
    # position of block b's first entry for offset k: starts[k] + entries of blocks < b
    pos = starts[:-1][None, :] + np.cumsum(counts, axis=0) - counts
    total = int(starts[-1])
    in_idx = np.empty(total, dtype=np.int64)
    out_idx = np.empty(total, dtype=np.int64)
    if total:
        _fill_pairs(nbr, block, np.ascontiguousarray(pos), in_idx, out_idx)
    return starts, in_idx, out_idx
