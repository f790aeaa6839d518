"""Correctness of every registered ``conv2d_pool`` kernel (convolution + ReLU + max-pooling)
against ``max_pool2d(relu(conv2d(...)))`` of ``torch.nn.functional``.

Driven by the registry, like ``test_kernels_conv.py``: the unfused kernels (each conv2d kernel
then max_pool2d) and the fused ones run the whole grid with every weight format they accept.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import sparsecnn
from sparsecnn.functional import conv2d_pool, conv2d_pool_problem
from sparsecnn.kernels import registry
from sparsecnn.problem import pool_output_size

from _kernel_cases import (ACT_PATTERNS, SPARSITIES, activation_input, build_weight,
                           kernel_formats, sparse_weight, tolerances)

KERNEL_FORMATS = kernel_formats("conv2d_pool")

# (id, N, C, H, W, K, (R, S), stride, padding, dilation, groups, pool kwargs)
CASES = [
    ("alexnet5-like", 1, 16, 13, 13, 24, (3, 3), 1, 1, 1, 1, dict(pool_kernel=3, pool_stride=2)),
    ("vgg-block-end", 2, 8, 14, 14, 16, (3, 3), 1, 1, 1, 1, dict(pool_kernel=2, pool_stride=2)),
    ("alexnet1-like", 1, 3, 63, 63, 8, (11, 11), 4, 2, 1, 1, dict(pool_kernel=3, pool_stride=2)),
    ("5x5-odd-ceil", 2, 6, 15, 13, 8, (5, 5), 1, 2, 1, 1,
     dict(pool_kernel=3, pool_stride=2, ceil_mode=True)),
    ("pool-pad-dil", 1, 6, 16, 16, 8, (3, 3), 1, 1, 1, 1,
     dict(pool_kernel=3, pool_stride=2, pool_padding=1, pool_dilation=2)),
    ("groups2-s2", 2, 8, 17, 17, 12, (3, 3), 2, 1, 1, 2, dict(pool_kernel=2)),
    ("depthwise", 1, 8, 12, 12, 8, (3, 3), 1, 1, 1, 8, dict(pool_kernel=(2, 3), pool_stride=(2, 1))),
]
IDS = [c[0] for c in CASES]


def _ref(x, w, b, case, relu):
    _, n, c, h, ww, k, rs, stride, padding, dilation, groups, pk = case
    y = F.conv2d(x, w, b, stride, padding, dilation, groups)
    if relu:
        y = F.relu(y)
    return F.max_pool2d(y, pk["pool_kernel"], pk.get("pool_stride"), pk.get("pool_padding", 0),
                        pk.get("pool_dilation", 1), pk.get("ceil_mode", False))


def _run(name, fmt, case, sparsity=0.9, *, bias=True, relu=True, weight=None, x=None, seed=0):
    _, n, c, h, w, k, (r, s), stride, padding, dilation, groups, pk = case
    gen = torch.Generator().manual_seed(seed)
    if x is None:
        x = torch.randn(n, c, h, w, generator=gen)
    if weight is None:
        weight = sparse_weight((k, c // groups, r, s), sparsity, gen)
    b = torch.randn(k, generator=gen) if bias else None
    wk, wref = build_weight(weight, fmt)
    _, problem, _, _ = conv2d_pool_problem(x, wk, b, stride, padding, dilation, groups, relu, **pk)
    why = registry.get("conv2d_pool", name).why_not(problem, wk)
    if why is not None:
        pytest.skip(why)
    y = conv2d_pool(x, wk, b, stride, padding, dilation, groups, relu=relu, algo=name, **pk)
    ref = _ref(x, wref, b, case, relu)
    assert y.dtype == torch.float32 and y.shape == ref.shape
    torch.testing.assert_close(y, ref, **tolerances(c // groups * r * s))
    return y


@pytest.mark.parametrize("sparsity", SPARSITIES)
@pytest.mark.parametrize("case", CASES, ids=IDS)
@pytest.mark.parametrize("name, fmt", KERNEL_FORMATS)
def test_conv_pool_grid(name, fmt, case, sparsity):
    _run(name, fmt, case, sparsity)


@pytest.mark.parametrize("bias, relu", [(False, False), (True, False), (False, True)])
@pytest.mark.parametrize("name, fmt", KERNEL_FORMATS)
def test_conv_pool_bias_relu(name, fmt, bias, relu):
    _run(name, fmt, CASES[0], 0.5, bias=bias, relu=relu)


@pytest.mark.parametrize("pattern", ACT_PATTERNS)
@pytest.mark.parametrize("name, fmt", KERNEL_FORMATS)
def test_conv_pool_activation_patterns(name, fmt, pattern):
    case = CASES[1]
    _, n, c, h, w, *_ = case
    _run(name, fmt, case, 0.9, x=activation_input((n, c, h, w), pattern,
                                                  torch.Generator().manual_seed(3)))


@pytest.mark.parametrize("kind", ["zero", "dense"])
@pytest.mark.parametrize("name, fmt", KERNEL_FORMATS)
def test_conv_pool_edge_weights(name, fmt, kind):
    case = CASES[0]
    _, n, c, h, w, k, (r, s), *_ = case
    weight = torch.zeros(k, c, r, s) if kind == "zero" else torch.randn(k, c, r, s)
    _run(name, fmt, case, weight=weight)


@pytest.mark.parametrize("size, k, s, p, d, ceil", [
    (13, 3, 2, 0, 1, False), (13, 3, 2, 0, 1, True), (14, 3, 2, 1, 1, True), (6, 2, 2, 0, 1, True),
    (5, 2, 3, 1, 1, True), (16, 3, 2, 1, 2, False), (7, 7, 1, 3, 1, True)])
def test_pool_output_size_matches_torch(size, k, s, p, d, ceil):
    y = F.max_pool2d(torch.zeros(1, 1, size, size), k, s, p, d, ceil)
    assert pool_output_size(size, k, s, p, d, ceil) == y.shape[-1]


def test_unbatched_and_auto():
    case = CASES[0]
    _, n, c, h, w, k, (r, s), *_, pk = case
    gen = torch.Generator().manual_seed(4)
    wt = sparse_weight((k, c, r, s), 0.9, gen)
    x = torch.randn(c, h, w, generator=gen)
    y = conv2d_pool(x, sparsecnn.to_sparse(wt, "csr"), None, 1, 1, relu=True, **pk)
    ref = F.max_pool2d(F.relu(F.conv2d(x[None], wt, None, 1, 1)), 3, 2)[0]
    assert y.shape == ref.shape
    torch.testing.assert_close(y, ref, **tolerances(c * 9))


def test_bad_pool_arguments_raise():
    w = sparsecnn.to_sparse(sparse_weight((4, 3, 3, 3), 0.5, torch.Generator().manual_seed(5)),
                            "csr")
    x = torch.randn(1, 3, 8, 8)
    with pytest.raises(ValueError, match="pool_kernel must be >= 1"):
        conv2d_pool(x, w, pool_kernel=0)
    with pytest.raises(ValueError, match="at most half"):
        conv2d_pool(x, w, pool_kernel=2, pool_padding=2)
    with pytest.raises(ValueError, match="smaller than the dilated pool window"):
        conv2d_pool(x, w, pool_kernel=7)
    with pytest.raises(TypeError, match="pool_stride must be an int"):
        conv2d_pool(x, w, pool_kernel=2, pool_stride="2")
    with pytest.raises(TypeError, match="ceil_mode must be a bool"):
        conv2d_pool(x, w, pool_kernel=2, ceil_mode=1)
    with pytest.raises(ValueError, match=r"3 input channels.*C=5"):
        conv2d_pool(torch.randn(1, 5, 8, 8), w, pool_kernel=2)
    with pytest.raises(ValueError, match="unknown conv2d_pool kernel 'nope'"):
        conv2d_pool(x, w, pool_kernel=2, algo="nope")


def test_every_conv_kernel_has_an_unfused_conv_pool_kernel():
    conv = set(registry.names("conv2d"))
    assert conv <= set(registry.names("conv2d_pool"))
    assert "fused_ref" in registry.names("conv2d_pool")
    assert "fused_direct" in registry.names("conv2d_pool")


# ---------------------------------------------------------------------------------------------
# fused_direct: the bands (the grid above runs it with the default band size: one band on
# these small maps; here with tiny bands, so every case is cut into many)
# ---------------------------------------------------------------------------------------------
def _problem(case, x, w, b, relu=True):
    _, n, c, h, ww, k, rs, stride, padding, dilation, groups, pk = case
    return conv2d_pool_problem(x, w, b, stride, padding, dilation, groups, relu, **pk)[1]


@pytest.mark.parametrize("band_bytes", [1, 700, 5000])
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_fused_direct_many_bands(case, band_bytes):
    from sparsecnn.kernels.cpu import fused_band
    from sparsecnn.kernels.prepared import Prepared

    _, n, c, h, w, k, (r, s), stride, padding, dilation, groups, pk = case
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(n, c, h, w, generator=gen)
    wt = sparse_weight((k, c // groups, r, s), 0.8, gen)
    b = torch.randn(k, generator=gen)
    ws = sparsecnn.to_sparse(wt, "csr")
    problem = _problem(case, x, ws, b)
    bands = fused_band.band_rows(problem, band_bytes)
    # the bands partition the pooled rows (the output check below covers the rows each reads)
    assert bands[0][0] == 0 and bands[-1][1] == problem.PH
    assert all(a[1] == bb[0] for a, bb in zip(bands, bands[1:]))
    if band_bytes == 1:
        assert len(bands) == problem.PH
    kern = registry.get("conv2d_pool", "fused_direct")
    op = fused_band.prepare_fused_direct(ws, problem, band_bytes)
    y = kern.run(Prepared(kern, problem, ws, op, 0), x, b)
    torch.testing.assert_close(y, _ref(x, wt, b, case, True), **tolerances(c // groups * r * s))


def test_fused_direct_nan_and_bad_band_bytes():
    from sparsecnn.kernels.cpu import fused_band

    case = CASES[0]
    _, n, c, h, w, k, (r, s), *_ = case
    gen = torch.Generator().manual_seed(8)
    x = torch.randn(n, c, h, w, generator=gen)
    x[0, :, 5, 6] = float("nan")
    wt = torch.randn(k, c, r, s, generator=gen)  # dense: every window reads the NaN pixel's row
    ws = sparsecnn.to_sparse(wt, "csr")
    y = conv2d_pool(x, ws, None, 1, 1, relu=False, pool_kernel=3, pool_stride=2,
                    algo="fused_direct")
    ref = F.max_pool2d(F.conv2d(x, wt, None, 1, 1), 3, 2)
    assert torch.equal(torch.isnan(y), torch.isnan(ref)) and bool(torch.isnan(ref).any())
    torch.testing.assert_close(y, ref, equal_nan=True, **tolerances(c * 9))
    for bad in (0, -5, 2.5, True):
        with pytest.raises(ValueError, match="band_bytes must be a positive int"):
            fused_band.band_rows(_problem(case, x, ws, None), bad)


# ---------------------------------------------------------------------------------------------
# the pooling of the fused kernels (kernels/cpu/_pool.py) against max_pool2d itself
# ---------------------------------------------------------------------------------------------
@st.composite
def _poolings(draw):
    pk = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    pd = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    span = [(k - 1) * d + 1 for k, d in zip(pk, pd)]
    pp = tuple(draw(st.integers(0, k // 2)) for k in pk)  # max_pool2d's limit
    ps = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    h = draw(st.integers(max(1, span[0] - 2 * pp[0]), 19))
    w = draw(st.integers(max(1, span[1] - 2 * pp[1]), 19))
    return pk, ps, pp, pd, draw(st.booleans()), h, w


@settings(max_examples=150, deadline=None)
@given(geom=_poolings(), nk=st.tuples(st.integers(1, 2), st.integers(1, 5)),
       specials=st.integers(0, 3), band_rows=st.integers(1, 4), seed=st.integers(0, 2**16))
def test_pool_band_matches_max_pool2d(geom, nk, specials, band_rows, seed):
    """``_pool_band`` (the fused kernels' pooling: row maxima, interior columns without bounds
    tests) equals ``max_pool2d`` bitwise, NaN where it is NaN, on any window, stride, padding,
    dilation and ``ceil_mode``, with NaN / +-inf planted, the pooled rows split into bands that
    hold only the conv rows they read."""
    from sparsecnn.kernels.cpu.fused_band import _pool_band

    pk, ps, pp, pd, ceil, h, w = geom
    n, k = nk
    gen = torch.Generator().manual_seed(seed)
    y = torch.randn(n, k, h, w, generator=gen)
    for v in (float("nan"), float("inf"), float("-inf"))[:specials]:
        idx = torch.randint(0, y.numel(), (2,), generator=gen)
        y.view(-1)[idx] = v
    ref = F.max_pool2d(y, pk, ps, pp, pd, ceil)
    out = np.full(tuple(ref.shape), 7.0, dtype=np.float32)
    ph = ref.shape[2]
    span = (pk[0] - 1) * pd[0] + 1
    for py0 in range(0, ph, band_rows):
        py1 = min(ph, py0 + band_rows)
        row0 = max(0, py0 * ps[0] - pp[0])
        row1 = min(h, (py1 - 1) * ps[0] - pp[0] + span)
        band = np.ascontiguousarray(y[:, :, row0:max(row1, row0 + 1)].numpy())
        _pool_band(band, row0, py0, py1, pk[0], pk[1], ps[0], ps[1], pp[0], pp[1], pd[0], pd[1],
                   h, w, out, np.empty((n * k, w), dtype=np.float32))
    got = torch.from_numpy(out)
    assert torch.equal(torch.isnan(got), torch.isnan(ref))
    assert torch.equal(torch.nan_to_num(got), torch.nan_to_num(ref))
