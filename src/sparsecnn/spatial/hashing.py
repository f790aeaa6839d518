"""Coordinate hash tables for sparse convolution (Numba, open addressing, lock-free parallel build).

A voxel coordinate ``(b, x_1, ..., x_D)`` is packed into one int64 *key*, its linear index in the
grid ``(batch_size, *spatial_shape)``::

    key = ((b * S_1 + x_1) * S_2 + x_2) ... * S_D + x_D

so a neighbour at offset ``d`` (inside the grid) has key ``key + sum_i d_i * stride_i``: one add.
The table maps keys to row numbers (the ``H_in`` / ``H_out`` tables of the submanifold
convolution lecture): a power-of-two array of ``(key, value)`` int64 pairs, so a probe reads a
single cache line; empty slots hold key ``-1``. Slots are found by Fibonacci hashing (the key
times 2^64 / phi, top bits) of groups of four consecutive keys (one cache line per group, see
:func:`slot_of`) and linear probing.

The build is parallel over the keys and takes no lock: a thread claims an empty slot with one
atomic compare-and-swap on the key (``cmpxchg``, emitted as LLVM IR by :func:`_cas_i64`), then
writes the value to its own slot, so it scales with the thread count (nothing is shared but the
table itself). Lookups run after the build has finished (a ``prange`` is a barrier).

Functions here are ``@njit`` helpers for the rulebook builders (:mod:`sparsecnn.spatial.rulebook`);
the Python-facing entry point is :func:`build_table`.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange, types
from numba.extending import intrinsic

EMPTY = -1
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


@intrinsic
def _cas_i64(typingctx, arr, idx, expected, new):
    """Atomically ``old = arr[idx]; if old == expected: arr[idx] = new``; returns ``old``
    (``arr`` a C-contiguous int64 array; acq_rel / acquire ordering; unchecked bounds)."""
    sig = types.int64(arr, idx, expected, new)

    def codegen(context, builder, signature, args):
        aty = signature.args[0]
        a = context.make_array(aty)(context, builder, args[0])
        i = context.cast(builder, args[1], signature.args[1], types.int64)
        ptr = builder.gep(a.data, [i])
        e = context.cast(builder, args[2], signature.args[2], types.int64)
        n = context.cast(builder, args[3], signature.args[3], types.int64)
        res = builder.cmpxchg(ptr, e, n, "acq_rel", "acquire")
        return builder.extract_value(res, 0)

    return sig, codegen


def table_bits(n: int) -> int:
    """log2 of the table capacity for ``n`` keys: the smallest power of two >= 2 n (load <= 0.5),
    at least 2^4."""
    return max(4, int(2 * max(n, 1) - 1).bit_length())


GROUP_BITS = 2   # 2^GROUP_BITS consecutive keys share one cache line of slots


@njit(cache=True, nogil=True, inline="always")
def slot_of(key, shift):
    """Home slot of ``key``: Fibonacci hashing of ``key >> GROUP_BITS`` (the top bits of the
    product with 2^64/phi) for the group, plus ``key``'s position in its group -- so the
    ``2^GROUP_BITS`` keys of a run along the last axis (x neighbours) share one 64-byte line of
    four 16-byte slots, and one lookup's miss serves its x neighbours' lookups too."""
    g = np.uint64(key) >> np.uint64(GROUP_BITS)
    h = (g * _GOLDEN) >> np.uint64(shift + GROUP_BITS)
    return np.int64(h << np.uint64(GROUP_BITS)) | (key & ((1 << GROUP_BITS) - 1))


@njit(cache=True, nogil=True, inline="always")
def lookup(table, shift, mask, key):
    """Value stored for ``key`` in ``table`` ((cap, 2) int64), or -1 if it is absent."""
    h = slot_of(key, shift)
    while True:
        k = table[h, 0]
        if k == key:
            return table[h, 1]
        if k == EMPTY:
            return -1
        h = (h + 1) & mask


@njit(cache=True, nogil=True, parallel=True)
def _insert_unique(table, flat, shift, mask, keys):
    """Insert ``keys[i] -> i`` for every i (parallel, lock-free). Returns the number of keys found
    already present (duplicates: the first writer keeps its slot, later ones are counted)."""
    n = keys.shape[0]
    dup = 0
    for i in prange(n):
        key = keys[i]
        h = slot_of(key, shift)
        while True:
            old = _cas_i64(flat, 2 * h, EMPTY, key)
            if old == EMPTY:
                table[h, 1] = i
                break
            if old == key:
                dup += 1
                break
            h = (h + 1) & mask
    return dup


@njit(cache=True, nogil=True, parallel=True)
def _insert_keys(table, flat, shift, mask, keys):
    """Insert every ``keys[i] >= 0`` (parallel, lock-free, duplicates merged; values left -1).

    Returns ``(inserted, overflow)``: the number of distinct keys this call added, and how many
    insertions gave up after probing the whole table (a full table: the caller retries larger).
    """
    n = keys.shape[0]
    cap = mask + 1
    inserted = 0
    overflow = 0
    for i in prange(n):
        key = keys[i]
        if key >= 0:
            h = slot_of(key, shift)
            placed = False
            for _ in range(cap):
                old = _cas_i64(flat, 2 * h, EMPTY, key)
                if old == EMPTY:
                    inserted += 1
                    placed = True
                    break
                if old == key:
                    placed = True
                    break
                h = (h + 1) & mask
            if not placed:
                overflow += 1
    return inserted, overflow


@njit(cache=True, nogil=True, parallel=True)
def _fill_empty(table):
    for h in prange(table.shape[0]):
        table[h, 0] = EMPTY
        table[h, 1] = -1


@njit(cache=True, nogil=True, parallel=True)
def pack_keys(coords, strides):
    """int64 keys of ``coords`` ((P, 1 + D) int32, batch first) for the row-major ``strides``
    ((1 + D,) int64) of the grid ``(batch, *spatial_shape)``."""
    n, m = coords.shape
    out = np.empty(n, dtype=np.int64)
    for i in prange(n):
        k = np.int64(0)
        for d in range(m):
            k += np.int64(coords[i, d]) * strides[d]
        out[i] = k
    return out


@njit(cache=True, nogil=True, parallel=True)
def _collect(table, counts_per_block, block):
    """Occupied keys of ``table`` in slot order (parallel two-pass compaction)."""
    cap = table.shape[0]
    nb = counts_per_block.shape[0]
    for b in prange(nb):
        c = 0
        for h in range(b * block, min(cap, (b + 1) * block)):
            if table[h, 0] != EMPTY:
                c += 1
        counts_per_block[b] = c
    starts = np.zeros(nb + 1, dtype=np.int64)
    for b in range(nb):
        starts[b + 1] = starts[b] + counts_per_block[b]
    out = np.empty(starts[nb], dtype=np.int64)
    for b in prange(nb):
        p = starts[b]
        for h in range(b * block, min(cap, (b + 1) * block)):
            if table[h, 0] != EMPTY:
                out[p] = table[h, 0]
                p += 1
    return out


@njit(cache=True, nogil=True, parallel=True)
def _assign(table, shift, mask, keys):
    """Set the value of each ``keys[i]`` (present in ``table``) to ``i``."""
    for i in prange(keys.shape[0]):
        key = keys[i]
        h = slot_of(key, shift)
        while table[h, 0] != key:
            h = (h + 1) & mask
        table[h, 1] = i


class HashTable:
    """An open-addressing hash table from packed coordinate keys to row numbers.

    Attributes
    ----------
    table : numpy.ndarray (cap, 2) int64
        ``[key, value]`` per slot; key -1 marks an empty slot. ``cap`` is a power of two.
    shift, mask : int
        ``64 - log2(cap)`` (for :func:`slot_of`) and ``cap - 1``.
    """

    __slots__ = ("table", "shift", "mask")

    def __init__(self, n_keys: int):
        bits = table_bits(n_keys)
        self.table = np.empty((1 << bits, 2), dtype=np.int64)
        _fill_empty(self.table)
        self.shift = 64 - bits
        self.mask = (1 << bits) - 1

    @property
    def capacity(self) -> int:
        return self.table.shape[0]

    @property
    def nbytes(self) -> int:
        return self.table.nbytes


def build_table(keys: np.ndarray) -> tuple[HashTable, int]:
    """The table ``keys[i] -> i`` (``H_in``), built in parallel.

    Parameters
    ----------
    keys : numpy.ndarray (P,) int64, each >= 0

    Returns
    -------
    (HashTable, n_duplicates) : a key seen more than once keeps its first-claimed row; the count of
    the others is returned so that the caller can reject duplicate coordinates.
    """
    t = HashTable(keys.shape[0])
    dup = _insert_unique(t.table, t.table.reshape(-1), t.shift, t.mask, keys)
    return t, int(dup)


def unique_sorted(keys: np.ndarray, n_hint: int) -> tuple[np.ndarray, HashTable]:
    """The distinct non-negative values of ``keys`` in ascending order and a table mapping each to
    its position (``H_out`` of a regular sparse convolution: its sites in lexicographic order).

    Parameters
    ----------
    keys : numpy.ndarray (N,) int64; negative entries are ignored
    n_hint : int
        Expected number of distinct keys (sizes the table). An estimate: if more keys turn up
        than half the capacity, the table is rebuilt larger (the load stays <= 0.5).
    """
    while True:
        t = HashTable(n_hint)
        inserted, overflow = _insert_keys(t.table, t.table.reshape(-1), t.shift, t.mask, keys)
        if overflow == 0 and 2 * inserted <= t.capacity:
            break
        n_hint = max(2 * n_hint, inserted)   # the estimate was low: rebuild, larger
    block = 4096
    nb = (t.capacity + block - 1) // block
    out = _collect(t.table, np.empty(nb, dtype=np.int64), block)
    out.sort()
    _assign(t.table, t.shift, t.mask, out)
    return out, t
