"""The prepared-operand cache never deadlocks on its own finalizers: evicting or clearing the
entry that holds the last reference to a weight runs the weight's finalizer (which takes the
cache's lock) after the lock is released, and a finalizer run by the garbage collector inside a
locked block (a reference cycle freed by an allocation there) re-enters it."""

import gc
import threading

import torch

from sparsecnn import to_sparse
from sparsecnn.functional import conv2d_problem
from sparsecnn.kernels import prepared, registry


def _case(seed):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(8, 4, 3, 3, generator=g)
    w[torch.rand(w.shape, generator=g) > 0.3] = 0
    sw = to_sparse(w)
    _, problem, _, _ = conv2d_problem(torch.zeros(1, 4, 6, 6), sw, padding=1)
    return sw, problem


def _within(fn, seconds=30.0):
    """Run ``fn`` in a thread; fail (instead of hanging the suite) if it has not returned."""
    err = []

    def body():
        try:
            fn()
        except BaseException as e:  # noqa: BLE001 - re-raised below
            err.append(e)
    t = threading.Thread(target=body, daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), "prepared-operand cache deadlocked"
    if err:
        raise err[0]


def test_evicting_the_last_reference_to_a_weight_does_not_deadlock():
    kernel = registry.get("conv2d", "im2col_spmm")
    cache = prepared.PreparedCache(max_entries=1)

    def body():
        for seed in range(4):
            sw, problem = _case(seed)
            cache.get(kernel, sw, problem)
            del sw          # now only the cache entry holds it: the next get evicts it
        assert len(cache) == 1
        cache.clear()       # drops the last reference to the remaining weight
        assert len(cache) == 0 and cache.nbytes == 0
    _within(body)


def test_finalizer_run_by_the_garbage_collector_inside_the_lock_reenters():
    kernel = registry.get("conv2d", "im2col_spmm")
    cache = prepared.PreparedCache()
    sw, problem = _case(0)
    cache.get(kernel, sw, problem)
    forgotten = []
    real_forget = cache._forget_weight

    def body():
        with cache._lock:   # what an allocation inside a locked block can lead to
            real_forget(id(sw))
            forgotten.append(True)
    _within(body)
    assert forgotten and cache.held(sw) == [] and len(cache) == 0
    gc.collect()
