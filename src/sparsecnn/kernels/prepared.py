"""Prepared operands: what a kernel precomputes from a weight for one problem, cached once.

A kernel's ``prepare(weight, problem)`` turns an immutable sparse weight into what its ``run``
needs for that problem (int32/float32 arrays, offsets into the padded input, an execution plan
with per-call buffers sizes, a densified copy, a copy on the GPU...). :func:`prepare` returns the
:class:`Prepared` for ``(weight, kernel, problem, threads)``, building it on first use and
keeping it in one process-wide, bounded, thread-safe LRU cache (:data:`CACHE`):

- keyed by the weight object's identity (format objects are immutable: they own read-only
  arrays), the kernel, the :class:`~sparsecnn.problem.Problem` (geometry, batch, dtype, device)
  and the Numba thread count (plans split work per thread);
- an entry dies with its weight (``weakref.finalize``), and the cache never holds more than
  :data:`MAX_ENTRIES` entries or :data:`MAX_BYTES` bytes of prepared data (least recently used
  first out);
- torch tensors (mutable) are never cached: a dense weight passed as a tensor is prepared on
  every call (its ``prepare`` is cheap or absent).

This replaces per-kernel module-level caches and attributes attached to weight objects.
"""

from __future__ import annotations

import threading
import weakref
from collections import OrderedDict

import numpy as np
import torch

from .capabilities import numba_threads as _threads

#: Most prepared operands kept (across all weights).
MAX_ENTRIES = 1024
#: Most bytes of prepared operands kept (``Prepared.nbytes`` summed); 2 GiB.
MAX_BYTES = 2 << 30




def _root(a: np.ndarray) -> np.ndarray:
    while isinstance(a.base, np.ndarray):
        a = a.base
    return a


def operand_nbytes(obj, exclude=()) -> int:
    """Bytes held by an operand: arrays and tensors counted, containers walked (attributes of
    plain objects and ``__slots__`` too), each buffer once; buffers of the arrays in ``exclude``
    (the weight's own) are not counted."""
    seen: set[int] = {id(_root(a)) for a in exclude if isinstance(a, np.ndarray)}

    def walk(o, depth=0) -> int:
        if depth > 4 or id(o) in seen:
            return 0
        seen.add(id(o))
        if isinstance(o, np.ndarray):
            root = _root(o)
            if root is not o:
                if id(root) in seen:
                    return 0
                seen.add(id(root))
            return o.nbytes
        if isinstance(o, torch.Tensor):
            return o.numel() * o.element_size()
        if isinstance(o, dict):
            return sum(walk(v, depth + 1) for v in o.values())
        if isinstance(o, (list, tuple)):
            return sum(walk(v, depth + 1) for v in o)
        total = 0
        for name in getattr(type(o), "__slots__", ()):
            total += walk(getattr(o, name, None), depth + 1)
        d = getattr(o, "__dict__", None)
        if d:
            total += sum(walk(v, depth + 1) for v in d.values())
        return total

    return walk(obj)


class Prepared:
    """A kernel's prepared operand for one (weight, problem).

    Attributes
    ----------
    kernel : Kernel
    problem : Problem
    weight : object
        The weight it was prepared from (a SparseWeight or a tensor).
    operand : object
        What ``kernel.prepare`` returned (the weight itself when the kernel has no prepare).
    nbytes : int
        Bytes the operand holds beyond the weight's own arrays (what the cache counts).
    """

    __slots__ = ("kernel", "problem", "weight", "operand", "nbytes", "__weakref__")

    def __init__(self, kernel, problem, weight, operand, nbytes: int):
        self.kernel, self.problem, self.weight = kernel, problem, weight
        self.operand, self.nbytes = operand, int(nbytes)

    def __repr__(self) -> str:
        return (f"Prepared(kernel={self.kernel.name!r}, problem={self.problem.key()!r}, "
                f"nbytes={self.nbytes})")


def build(kernel, weight, problem) -> Prepared:
    """Prepare ``weight`` for ``kernel`` and ``problem`` without caching."""
    if kernel.prepare is None:
        return Prepared(kernel, problem, weight, weight, 0)
    operand = kernel.prepare(weight, problem)
    if operand is weight:
        return Prepared(kernel, problem, weight, operand, 0)
    own = tuple(weight.arrays().values()) if hasattr(weight, "arrays") else ()
    return Prepared(kernel, problem, weight, operand, operand_nbytes(operand, own))


class PreparedCache:
    """The bounded LRU cache of :class:`Prepared` operands (see the module docstring).

    Parameters
    ----------
    max_entries : int
    max_bytes : int
    """

    def __init__(self, max_entries: int = MAX_ENTRIES, max_bytes: int = MAX_BYTES):
        self.max_entries, self.max_bytes = int(max_entries), int(max_bytes)
        # Re-entrant: a weight's finalizer (:meth:`_forget_weight`) takes the lock, and can run
        # in a thread that holds it -- when the garbage collector, triggered by an allocation
        # inside a locked block, frees a weight that was in a reference cycle. Evicted or
        # cleared entries (the last reference to their weight: an entry holds it) are dropped
        # after the lock is released, so their finalizers never run inside it.
        self._lock = threading.RLock()
        self._entries: OrderedDict = OrderedDict()
        self._by_weight: dict[int, set] = {}
        self._nbytes = 0
        self.hits = self.misses = 0

    def get(self, kernel, weight, problem) -> Prepared:
        """The prepared operand of ``weight`` for ``kernel`` and ``problem`` (built on a miss)."""
        if isinstance(weight, torch.Tensor):
            return build(kernel, weight, problem)
        key = (id(weight), kernel.op, kernel.name, problem, _threads())
        with self._lock:
            hit = self._entries.get(key)
            if hit is not None:
                self._entries.move_to_end(key)
                self.hits += 1
                return hit
        prep = build(kernel, weight, problem)  # outside the lock: may take milliseconds
        evicted = []  # dropped when this returns, outside the lock
        with self._lock:
            self.misses += 1
            old = self._entries.get(key)
            if old is not None:  # another thread won the race: keep one
                return old
            wid = id(weight)
            if wid not in self._by_weight:
                self._by_weight[wid] = set()
                weakref.finalize(weight, self._forget_weight, wid)
            self._by_weight[wid].add(key)
            self._entries[key] = prep
            self._nbytes += prep.nbytes
            while len(self._entries) > 1 and (len(self._entries) > self.max_entries
                                              or self._nbytes > self.max_bytes):
                evicted.append(self._pop_oldest())
        return prep

    def _pop_oldest(self) -> "Prepared":
        """Remove the least recently used entry and return it (the caller drops it after
        releasing the lock)."""
        key, prep = self._entries.popitem(last=False)
        self._nbytes -= prep.nbytes
        keys = self._by_weight.get(key[0])
        if keys is not None:
            keys.discard(key)
        return prep

    def _forget_weight(self, wid: int) -> None:
        dropped = []
        with self._lock:
            for key in self._by_weight.pop(wid, ()):
                prep = self._entries.pop(key, None)
                if prep is not None:
                    self._nbytes -= prep.nbytes
                    dropped.append(prep)

    def held(self, weight) -> list[Prepared]:
        """The prepared operands currently cached for ``weight``."""
        with self._lock:
            return [self._entries[k] for k in self._by_weight.get(id(weight), ())
                    if k in self._entries]

    def held_nbytes(self, weight) -> int:
        """Bytes of prepared operands cached for ``weight`` (a dense copy, plans, ...)."""
        return sum(p.nbytes for p in self.held(weight))

    def clear(self) -> None:
        """Drop every entry."""
        with self._lock:
            dropped, self._entries = self._entries, OrderedDict()
            for keys in self._by_weight.values():
                keys.clear()
            self._nbytes = 0
        dropped.clear()  # outside the lock: may run the weights' finalizers

    @property
    def nbytes(self) -> int:
        """Bytes of all cached operands."""
        return self._nbytes

    def __len__(self) -> int:
        return len(self._entries)


#: The process-wide cache.
CACHE = PreparedCache()


def prepare(kernel, weight, problem) -> Prepared:
    """``CACHE.get(kernel, weight, problem)``: the cached prepared operand."""
    return CACHE.get(kernel, weight, problem)
