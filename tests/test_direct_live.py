"""``direct_live``: the dead-channel scan, the per-image compaction, exact results against dense.

The kernel x format x geometry x activation-pattern grid runs in tests/test_kernels_conv.py
(every registered conv2d kernel); here what is particular to skipping dead channels.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import sparsecnn
from sparsecnn.kernels import registry
from sparsecnn.kernels.cpu import direct_live as DL

TOL = {"rtol": 1e-4, "atol": 1e-4}


def _weight(shape, sparsity, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(shape, generator=g)
    return w * (torch.rand(shape, generator=g) >= sparsity)


def test_live_channels_nan_is_live_negative_zero_is_dead():
    x = np.zeros((2, 4, 3, 5), dtype=np.float32)
    x[0, 1, 2, 4] = np.nan
    x[0, 2] = -0.0
    x[1, 3, 0, 0] = -1e-30
    x[1, 0, 1, 1] = 2.0
    live = np.empty((2, 4), dtype=np.bool_)
    dead = DL.live_channels(x, live)
    assert live.tolist() == [[False, True, False, False], [True, False, False, True]]
    assert dead == 5


def test_compact_keeps_exactly_the_live_nonzeros_in_order():
    rng = np.random.default_rng(0)
    nnz, P = 40, 7
    chan = rng.integers(0, 5, nnz).astype(np.int32)
    offs = np.arange(nnz, dtype=np.int32) * 3
    vals = rng.standard_normal(nnz).astype(np.float32)
    blkptr = np.array([0, 3, 3, 10, 22, 31, 40], dtype=np.int32)
    live = rng.random((3, 5)) < 0.5
    o2 = np.full((3, nnz), -1, np.int32)
    v2 = np.zeros((3, nnz), np.float32)
    b2 = np.full((3, P), -1, np.int32)
    DL._compact(live, chan, offs, vals, blkptr, o2, v2, b2, np.empty(nnz, np.uint8))
    for n in range(3):
        keep = live[n][chan]
        j = int(keep.sum())
        np.testing.assert_array_equal(o2[n, :j], offs[keep])
        np.testing.assert_array_equal(v2[n, :j], vals[keep])
        np.testing.assert_array_equal(b2[n], [int(keep[:b].sum()) for b in blkptr])


@pytest.mark.parametrize("groups", [1, 2])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("dead_share", [0.0, 0.3, 0.9, 1.0])
@pytest.mark.parametrize("n", [1, 3])
def test_matches_dense_with_dead_channels(groups, stride, dead_share, n):
    c, k = 12, 8
    w = _weight((k, c // groups, 3, 3), 0.7, seed=1)
    g = torch.Generator().manual_seed(2)
    x = torch.relu(torch.randn(n, c, 11, 9, generator=g))
    for i in range(n):  # a different set of dead channels in each image
        x[i, torch.randperm(c, generator=g)[:round(dead_share * c)]] = 0
    bias = torch.randn(k, generator=g)
    ws = sparsecnn.to_sparse(w, "csr")
    y = sparsecnn.conv2d(x, ws, bias, stride=stride, padding=1, groups=groups,
                         algo="direct_live")
    torch.testing.assert_close(y, F.conv2d(x, w, bias, stride, 1, 1, groups), **TOL)
    # the same numbers as weight-only direct (same order of the surviving products)
    yd = sparsecnn.conv2d(x, ws, bias, stride=stride, padding=1, groups=groups, algo="direct")
    torch.testing.assert_close(y, yd, rtol=1e-6, atol=1e-6)


def test_all_live_runs_the_prepared_weight_unchanged():
    w = _weight((6, 4, 3, 3), 0.5)
    x = torch.randn(2, 4, 7, 7) + 10.0  # no zero anywhere
    ws = sparsecnn.to_sparse(w, "csr")
    y = sparsecnn.conv2d(x, ws, padding=1, algo="direct_live", relu=True)
    yd = sparsecnn.conv2d(x, ws, padding=1, algo="direct", relu=True)
    assert torch.equal(y, yd)


def test_nan_in_a_channel_propagates_like_dense():
    w = _weight((4, 3, 3, 3), 0.0)
    x = torch.zeros(1, 3, 6, 6)
    x[0, 1, 2, 2] = float("nan")
    y = sparsecnn.conv2d(x, sparsecnn.to_sparse(w, "csr"), padding=1, algo="direct_live")
    ref = F.conv2d(x, w, None, 1, 1)
    assert torch.equal(torch.isnan(y), torch.isnan(ref)) and torch.isnan(y).any()


def test_never_chosen_without_a_measurement():
    from sparsecnn.dispatch.heuristic import heuristic

    ws = sparsecnn.to_sparse(_weight((16, 8, 3, 3), 0.9), "csr")
    x = torch.zeros(1, 8, 10, 10)  # every channel dead: still not the heuristic's pick
    _, problem, _, _ = sparsecnn.functional.conv2d_problem(x, ws, None, 1, 1, 1, 1, False)
    assert registry.get("conv2d", "direct_live").why_not(problem, ws) is None
    assert heuristic(problem) in ("direct", "direct_avx512")
