"""Test-only kernels registered for the sparse formats (tests of nn/dispatch/optimize).

- ``test_ref``: a correct sparse-format kernel (densifies, then PyTorch) -- lets module and
  conversion tests exercise the sparse path before/independently of the Numba kernels.
- ``test_slow``: correct but slow (sleeps): tuning must never choose it over dense.
- ``test_wrong``: a wrong result (+1): tuning must reject it.
- ``test_fast``: returns a precomputed correct output instantly: tuning must choose it.
"""

from __future__ import annotations

import contextlib
import time

import torch
import torch.nn.functional as F

from sparsecnn.kernels import registry

FORMATS = ("csr",)


def _conv_ref(x, weight, bias, stride, padding, dilation, groups, relu):
    y = F.conv2d(x, weight.to_dense().float(), bias, stride, padding, dilation, groups)
    return torch.relu_(y) if relu else y


def _linear_ref(x, weight, bias, relu):
    y = F.linear(x, weight.to_dense().float(), bias)
    return torch.relu_(y) if relu else y


def _slow(fn, seconds):
    def run(*args):
        time.sleep(seconds)
        return fn(*args)
    return run


def _wrong(fn):
    def run(*args):
        return fn(*args) + 1.0
    return run


def _fast(fn):
    memo = {}

    def run(x, *args):
        key = (x.data_ptr(), tuple(x.shape))
        if key not in memo:
            memo[key] = fn(x, *args)
        return memo[key]
    return run


@contextlib.contextmanager
def registered(*names: str):
    """Register the named fake kernels (conv2d and linear) for the block's duration."""
    makers = {
        "test_ref": lambda f: f,
        "test_slow": lambda f: _slow(f, 0.02),
        "test_wrong": _wrong,
        "test_fast": _fast,
    }
    added = []
    try:
        for name in names:
            for op, base in (("conv2d", _conv_ref), ("linear", _linear_ref)):
                registry.register(registry.Kernel(name, op, makers[name](base), formats=FORMATS,
                                                  description=f"test-only {name}"))
                added.append((op, name))
        yield
    finally:
        with registry._LOCK:
            for key in added:
                registry._KERNELS.pop(key, None)
