"""Correctness of every registered conv2d kernel against ``torch.nn.functional.conv2d``.

Driven by the registry: each kernel registered for ``conv2d`` (dense, direct, im2col_spmm, ...)
runs the whole grid with each weight format it accepts that exists in
:data:`sparsecnn.formats.FORMATS`. A kernel is skipped only for a problem its ``supports`` rejects
(with the reason shown). Tolerances: rtol 1e-5, atol 1e-6 * fan-in (``_kernel_cases.tolerances``).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import sparsecnn
from sparsecnn.functional import conv2d_problem
from sparsecnn.kernels import registry
from sparsecnn.kernels.cpu import _common, im2col_spmm

from _kernel_cases import (ACT_PATTERNS, SPARSITIES, activation_input, build_weight,
                           kernel_formats, sparse_weight, tolerances)

KERNEL_FORMATS = kernel_formats("conv2d")

# (id, N, C, H, W, K, (R, S), stride, padding, dilation, groups)
CASES = [
    ("1x1", 1, 16, 9, 9, 8, (1, 1), 1, 0, 1, 1),
    ("1x1-b8-s2", 8, 12, 7, 9, 10, (1, 1), 2, 0, 1, 1),
    ("1x1-pad1", 2, 6, 5, 5, 4, (1, 1), 1, 1, 1, 1),
    ("3x3", 1, 8, 13, 13, 16, (3, 3), 1, 1, 1, 1),
    ("3x3-b8-odd", 8, 6, 11, 9, 10, (3, 3), 1, 1, 1, 1),
    ("3x3-nopad-full", 3, 5, 3, 3, 7, (3, 3), 1, 0, 1, 1),
    ("5x5", 2, 4, 15, 15, 8, (5, 5), 1, 2, 1, 1),
    ("7x7-s2", 1, 3, 23, 21, 8, (7, 7), 2, 3, 1, 1),
    ("11x11-s4-alexnet1", 1, 3, 63, 63, 16, (11, 11), 4, 2, 1, 1),
    ("3x3-dil2", 1, 8, 17, 15, 8, (3, 3), 1, 2, 2, 1),
    ("3x3-groups2", 2, 8, 10, 10, 12, (3, 3), 1, 1, 1, 2),
    ("depthwise", 1, 16, 12, 12, 16, (3, 3), 1, 1, 1, 16),
    ("depthwise-b8-s2", 8, 8, 11, 11, 8, (3, 3), 2, 1, 1, 8),
    ("asym-3x1", 2, 4, 12, 10, 6, (3, 1), (2, 1), (1, 0), (1, 2), 1),
    ("3x3-large-plane", 1, 3, 50, 50, 4, (3, 3), 1, 1, 1, 1),  # OH*OW > one SpMM tile
]
CASE_IDS = [c[0] for c in CASES]
REPRESENTATIVE = [CASES[3], CASES[4], CASES[10], CASES[11]]  # 3x3, batch 8, groups, depthwise


def _run(name, fmt, case, sparsity=0.9, *, bias=True, relu=False, weight=None, x=None, seed=0):
    """Run kernel ``name`` on ``case`` through :func:`sparsecnn.conv2d` and compare with torch."""
    _, n, c, h, w, k, (r, s), stride, padding, dilation, groups = case
    gen = torch.Generator().manual_seed(seed)
    if x is None:
        x = torch.randn(n, c, h, w, generator=gen)
    if weight is None:
        weight = sparse_weight((k, c // groups, r, s), sparsity, gen)
    b = torch.randn(k, generator=gen) if bias else None
    wk, wref = build_weight(weight, fmt)
    _, problem, _, _ = conv2d_problem(x, wk, b, stride, padding, dilation, groups, relu)
    kernel = registry.get("conv2d", name)
    if kernel.supports is not None and not kernel.supports(problem):
        pytest.skip(f"{name} does not support {problem.key()}")
    why = kernel.why_not(problem, wk)  # e.g. hybrid: a weight without a dense block
    if why is not None:
        pytest.skip(why)
    y = sparsecnn.conv2d(x, wk, b, stride, padding, dilation, groups, algo=name, relu=relu)
    ref = F.conv2d(x, wref, b, stride, padding, dilation, groups)
    if relu:
        ref = F.relu(ref)
    assert y.dtype == torch.float32 and y.shape == ref.shape
    torch.testing.assert_close(y, ref, **tolerances(c // groups * r * s))
    return y


@pytest.mark.parametrize("sparsity", SPARSITIES)
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
@pytest.mark.parametrize("name, fmt", KERNEL_FORMATS)
def test_conv_grid(name, fmt, case, sparsity):
    _run(name, fmt, case, sparsity, bias=True, relu=False)


@pytest.mark.parametrize("bias, relu", [(False, False), (False, True), (True, True)])
@pytest.mark.parametrize("case", REPRESENTATIVE, ids=[c[0] for c in REPRESENTATIVE])
@pytest.mark.parametrize("name, fmt", KERNEL_FORMATS)
def test_conv_bias_relu(name, fmt, case, bias, relu):
    y = _run(name, fmt, case, 0.5, bias=bias, relu=relu)
    if relu:
        assert (y >= 0).all()


@pytest.mark.parametrize("kind", ["zero", "one-nonzero", "dense"])
@pytest.mark.parametrize("case", REPRESENTATIVE, ids=[c[0] for c in REPRESENTATIVE])
@pytest.mark.parametrize("name, fmt", KERNEL_FORMATS)
def test_conv_edge_weights(name, fmt, case, kind):
    _, n, c, h, w, k, (r, s), *_, groups = case
    shape = (k, c // groups, r, s)
    gen = torch.Generator().manual_seed(1)
    if kind == "zero":
        weight = torch.zeros(shape)
    elif kind == "one-nonzero":
        weight = torch.zeros(shape)
        weight[k // 2, (c // groups) // 2, r - 1, 0] = 1.5  # off-centre tap
    else:
        weight = torch.randn(shape, generator=gen)
    y = _run(name, fmt, case, weight=weight, bias=True, relu=False)
    if kind == "zero":  # the output is the bias broadcast over each plane, exactly
        assert (y == y[:, :, :1, :1]).all()


ACT_CASES = [CASES[4], CASES[7], ("3x3-b2-c24", 2, 24, 14, 14, 32, (3, 3), 1, 1, 1, 1)]


@pytest.mark.parametrize("pattern", ACT_PATTERNS)
@pytest.mark.parametrize("case", ACT_CASES, ids=[c[0] for c in ACT_CASES])
@pytest.mark.parametrize("name, fmt", KERNEL_FORMATS)
def test_conv_activation_patterns(name, fmt, case, pattern):
    """Inputs with 0-95 % zeros, dead channels, zero rows / vector windows, all zero: exact
    results whatever a kernel skips."""
    _, n, c, h, w, *_ = case
    x = activation_input((n, c, h, w), pattern, torch.Generator().manual_seed(7))
    y = _run(name, fmt, case, 0.9, x=x, relu=True)
    if pattern == "all-zero":  # the output is relu(bias) broadcast over each plane
        assert (y == y[:, :, :1, :1]).all()


@pytest.mark.parametrize("layout", ["channels_last", "sliced", "unbatched"])
@pytest.mark.parametrize("name, fmt", KERNEL_FORMATS)
def test_conv_input_layouts(name, fmt, layout):
    case = ("3x3", 2, 6, 11, 13, 8, (3, 3), 1, 1, 1, 1)
    gen = torch.Generator().manual_seed(2)
    if layout == "channels_last":
        x = torch.randn(2, 6, 11, 13, generator=gen).to(memory_format=torch.channels_last)
    elif layout == "sliced":
        x = torch.randn(2, 12, 11, 26, generator=gen)[:, ::2, :, ::2]
    else:
        x = torch.randn(6, 11, 13, generator=gen)
    assert layout == "unbatched" or not x.is_contiguous()
    y = _run(name, fmt, case, 0.9, x=x, relu=True)
    assert y.ndim == x.ndim


@pytest.mark.parametrize("name, fmt", [p for p in KERNEL_FORMATS if p.values[1] != "dense"])
def test_conv_wrong_input_shape_raises(name, fmt):
    w, _ = build_weight(sparse_weight((6, 4, 3, 3), 0.5, torch.Generator().manual_seed(3)), fmt)
    with pytest.raises(ValueError, match=r"4 input channels.*C=5"):
        sparsecnn.conv2d(torch.randn(1, 5, 9, 9), w, algo=name)
    with pytest.raises(ValueError, match=r"4 input channels.*C=1"):
        sparsecnn.conv2d(torch.randn(1, 4, 9), w, algo=name)  # 3-D is unbatched (C, H, W): C=1
    with pytest.raises(ValueError, match=r"4-D.*shape \(1, 1, 4, 9, 9\)"):
        sparsecnn.conv2d(torch.randn(1, 1, 4, 9, 9), w, algo=name)
    with pytest.raises(ValueError, match=r"4-D.*shape \(4, 9\)"):
        sparsecnn.conv2d(torch.randn(4, 9), w, algo=name)


def test_auto_dispatch_on_csr_is_correct():
    case = CASES[3]
    _, n, c, h, w, k, (r, s), stride, padding, dilation, groups = case
    gen = torch.Generator().manual_seed(4)
    weight = sparse_weight((k, c, r, s), 0.9, gen)
    x = torch.randn(n, c, h, w, generator=gen)
    y = sparsecnn.conv2d(x, sparsecnn.to_sparse(weight, "csr"), None, stride, padding, algo="auto")
    torch.testing.assert_close(y, F.conv2d(x, weight, None, stride, padding), **tolerances(c * 9))


def test_im2col_spmm_batch_chunks(monkeypatch):
    """A batch larger than the im2col buffer runs in chunks (3 + 3 + 2 images here)."""
    case = ("chunked", 8, 4, 9, 9, 6, (3, 3), 1, 1, 1, 2)
    rows, plane = 4 * 9, 81
    monkeypatch.setattr(im2col_spmm, "MAX_COLS_BYTES", 3 * rows * plane * 4)
    _run("im2col_spmm", "csr", case, 0.5, relu=True)


def test_im2col_matches_unfold():
    """The im2col matrix equals ``torch.nn.functional.unfold`` (same row order c*R*S + r*S + s)."""
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(2, 3, 10, 9, generator=gen)
    r, s, st, pd, dl = 3, 2, (2, 1), (1, 2), (2, 1)
    oh = (10 + 2 * pd[0] - dl[0] * (r - 1) - 1) // st[0] + 1
    ow = (9 + 2 * pd[1] - dl[1] * (s - 1) - 1) // st[1] + 1
    cols = np.empty((3 * r * s, 2 * oh * ow), dtype=np.float32)
    used = np.ones(3 * r * s, dtype=np.bool_)
    im2col_spmm.im2col(x.numpy(), r, s, *st, *pd, *dl, oh, ow, used, cols)
    ref = F.unfold(x, (r, s), dilation=dl, padding=pd, stride=st)  # (N, C*R*S, L)
    np.testing.assert_array_equal(cols, ref.permute(1, 0, 2).reshape(3 * r * s, -1).numpy())


@pytest.mark.parametrize("ph, pw, extra", [(0, 0, 0), (1, 2, 0), (3, 0, 5)])
def test_pad_input(ph, pw, extra):
    x = np.random.default_rng(6).standard_normal((2, 3, 5, 7)).astype(np.float32)
    got = _common.pad_input(x, ph, pw, extra)
    ref = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw + extra)))
    np.testing.assert_array_equal(got, ref)
