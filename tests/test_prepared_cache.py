"""The prepared-operand cache (sparsecnn.kernels.prepared): entries die with their weight, and a
weight dying while the cache's lock is held (the garbage collector runs a finalizer at whatever
allocation triggers it, in a locked section of the cache too) must not deadlock."""

from __future__ import annotations

import gc
import threading

import torch

import sparsecnn
from sparsecnn.functional import conv2d_problem
from sparsecnn.kernels import registry
from sparsecnn.kernels.prepared import PreparedCache


def _weight_and_problem(seed=0):
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(4, 3, 3, 3, generator=gen)
    w[w.abs() < 0.8] = 0
    ws = sparsecnn.to_sparse(w)
    _, problem, _, _ = conv2d_problem(torch.randn(1, 3, 6, 6), ws, padding=1)
    return ws, problem


def _in_thread(fn, timeout=30):
    """Run ``fn`` in a daemon thread; True if it finished (a deadlock fails, not hangs)."""
    done = threading.Event()

    def work():
        fn()
        done.set()

    t = threading.Thread(target=work, daemon=True)
    t.start()
    t.join(timeout=timeout)
    return done.is_set()


def test_eviction_of_a_weights_last_reference_does_not_deadlock():
    """An entry holds its weight (``Prepared.weight``): evicting the entry of a weight nobody
    else holds frees the weight inside ``get``'s locked section, and its finalizer runs there.
    This deadlocked the suite once a worker's cache was full."""
    cache = PreparedCache(max_entries=1)
    kernel = registry.get("conv2d", "im2col_spmm")

    def fill():
        for seed in range(3):
            ws, problem = _weight_and_problem(seed)
            cache.get(kernel, ws, problem)
            del ws  # only the cache holds it now

    assert _in_thread(fill), "evicting a weight's entry deadlocked on the cache's lock"
    assert len(cache) == 1
    (held,) = list(cache._entries.values())
    assert cache.held(held.weight) == [held]


def test_weight_dying_inside_the_lock_does_not_deadlock():
    """The finalizer of a weight collected while this thread holds the cache's lock (what a
    garbage collection inside ``get`` does) only queues the weight; the next access drops its
    bookkeeping. In a thread with a timeout, so the old behaviour (the finalizer taking the
    lock) fails instead of hanging the suite."""
    cache = PreparedCache()
    kernel = registry.get("conv2d", "im2col_spmm")

    def work():
        ws, problem = _weight_and_problem(1)
        prep = cache.get(kernel, ws, problem)
        cycle = [ws, prep]
        cycle.append(cycle)  # only the collector frees it
        del ws, prep
        cache.clear()  # the entry goes: the cycle is the weight's last holder
        with cache._lock:
            del cycle
            gc.collect()  # the weight's finalizer runs here, the lock held

    assert _in_thread(work), "a weight's finalizer deadlocked on the cache's lock"
    assert len(cache) == 0 and not cache._by_weight  # its bookkeeping dropped at this access
    ws2, problem2 = _weight_and_problem(2)
    assert cache.get(kernel, ws2, problem2).weight is ws2
