"""Correctness of every registered linear kernel against ``torch.nn.functional.linear``.

Driven by the registry like ``test_kernels_conv.py``: each kernel registered for ``linear``
(dense, spmv, spmm, ...) with each weight format it accepts that exists, on its test device,
emulated kernels (Triton's interpreter) on a reduced grid. Tolerances: rtol 1e-5,
atol 1e-6 * in_features.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import sparsecnn
from sparsecnn.functional import linear_problem
from sparsecnn.kernels import registry

from _kernel_cases import (SPARSITIES, build_weight, kernel_formats, kernel_grid, sparse_weight,
                           device_for, tolerances)

KERNEL_FORMATS = kernel_formats("linear")

# (id, batch, in_features, out_features)
CASES = [
    ("b1", 1, 37, 23),
    ("b3-odd", 3, 101, 57),
    ("b64", 64, 129, 65),
    ("b1-wide", 1, 1000, 7),
    ("b5-1in", 5, 1, 9),
    ("b2100-long-batch", 2100, 16, 8),  # batch longer than one SpMM tile
]
CASE_IDS = [c[0] for c in CASES]


def _run(name, fmt, x_shape, in_f, out_f, sparsity=0.9, *, bias=True, relu=False, weight=None,
         x=None, seed=0):
    gen = torch.Generator().manual_seed(seed)
    if x is None:
        x = torch.randn(*x_shape, generator=gen)
    if weight is None:
        weight = sparse_weight((out_f, in_f), sparsity, gen)
    b = torch.randn(out_f, generator=gen) if bias else None
    wk, wref = build_weight(weight, fmt)
    kernel = registry.get("linear", name)
    _, problem, _, _ = linear_problem(x, wk, b, relu)
    if kernel.supports is not None and not kernel.supports(problem):
        pytest.skip(f"{name} does not support {problem.key()}")
    dev = device_for(kernel)
    wd = wk.to(dev) if isinstance(wk, torch.Tensor) else wk
    y = sparsecnn.linear(x.to(dev), wd, b.to(dev) if b is not None else None, algo=name, relu=relu)
    ref = F.linear(x, wref, b)
    if relu:
        ref = F.relu(ref)
    assert y.dtype == torch.float32 and y.shape == ref.shape and y.device.type == dev
    y = y.cpu()
    torch.testing.assert_close(y, ref, **tolerances(in_f))
    return y


@pytest.mark.parametrize("name, fmt, case, sparsity",
                         kernel_grid("linear", CASES, SPARSITIES, ("b3-odd",)))
def test_linear_grid(name, fmt, case, sparsity):
    _, batch, in_f, out_f = case
    _run(name, fmt, (batch, in_f), in_f, out_f, sparsity)


@pytest.mark.parametrize("bias, relu", [(False, False), (False, True), (True, True)])
@pytest.mark.parametrize("batch", [1, 64])
@pytest.mark.parametrize("name, fmt", KERNEL_FORMATS)
def test_linear_bias_relu(name, fmt, batch, bias, relu):
    y = _run(name, fmt, (batch, 77), 77, 31, 0.5, bias=bias, relu=relu)
    if relu:
        assert (y >= 0).all()


@pytest.mark.parametrize("kind", ["zero", "one-nonzero", "dense"])
@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("name, fmt", KERNEL_FORMATS)
def test_linear_edge_weights(name, fmt, batch, kind):
    in_f, out_f = 45, 19
    if kind == "zero":
        weight = torch.zeros(out_f, in_f)
    elif kind == "one-nonzero":
        weight = torch.zeros(out_f, in_f)
        weight[out_f - 1, 7] = -2.5
    else:
        weight = torch.randn(out_f, in_f, generator=torch.Generator().manual_seed(1))
    y = _run(name, fmt, (batch, in_f), in_f, out_f, weight=weight)
    if kind == "zero":  # every row of the output is the bias, exactly
        assert (y == y[:1]).all()


@pytest.mark.parametrize("shape", [(2, 5, 33), (33,), (4, 1, 3, 33)], ids=["3d", "1d", "4d"])
@pytest.mark.parametrize("name, fmt", KERNEL_FORMATS)
def test_linear_leading_dims(name, fmt, shape):
    y = _run(name, fmt, shape, 33, 12, 0.9, relu=True)
    assert y.shape == (*shape[:-1], 12)


@pytest.mark.parametrize("name, fmt", KERNEL_FORMATS)
def test_linear_non_contiguous_input(name, fmt):
    x = torch.randn(40, 6, generator=torch.Generator().manual_seed(2)).t()  # (6, 40), strided
    assert not x.is_contiguous()
    _run(name, fmt, None, 40, 11, 0.9, x=x)


@pytest.mark.parametrize("name, fmt", [p for p in KERNEL_FORMATS if p.values[1] != "dense"])
def test_linear_wrong_input_shape_raises(name, fmt):
    w, _ = build_weight(sparse_weight((3, 4), 0.5, torch.Generator().manual_seed(3)), fmt)
    with pytest.raises(ValueError, match=r"5 features.*expects 4"):
        sparsecnn.linear(torch.randn(2, 5), w, algo=name)
    with pytest.raises(ValueError, match=r"bias.*\(3,\).*\(4,\)"):
        sparsecnn.linear(torch.randn(2, 4), w, torch.randn(4), algo=name)


@pytest.mark.parametrize("batch, expected", [(1, "spmv"), (8, "spmm")])
def test_auto_dispatch_picks_spmv_or_spmm(batch, expected):
    if expected not in registry.names("linear"):
        pytest.fail(f"{expected!r} is not registered for linear")
    from sparsecnn import dispatch
    w = sparsecnn.to_sparse(sparse_weight((8, 16), 0.9, torch.Generator().manual_seed(4)), "csr")
    _, problem, _, _ = linear_problem(torch.randn(batch, 16), w)
    assert dispatch.choose(problem, use_cache=False) == expected


@pytest.mark.parametrize("name", ["spmv", "spmm"])
@pytest.mark.parametrize("in_f", [65536, 65537])
@pytest.mark.parametrize("batch", [1, 3])
def test_linear_index_width_boundary(name, in_f, batch):
    """spmv / spmm store column indices in 16 bits up to 65536 input features and in 32 bits
    beyond (``prepare_compressed_narrow``); nonzeros on the last columns (index 65535, 65536)
    and the first are read right on both sides of the boundary."""
    import numpy as np

    from sparsecnn.kernels.cpu._common import prepare_compressed_narrow

    gen = torch.Generator().manual_seed(in_f)
    w = torch.zeros(5, in_f)
    cols = torch.tensor([0, 1, in_f - 2, in_f - 1])
    w[:, cols] = torch.randn(5, 4, generator=gen)
    w[2, torch.randint(0, in_f, (300,), generator=gen)] = 1.5
    ws = sparsecnn.to_sparse(w, "csr")
    op = prepare_compressed_narrow(ws, None)
    assert op.colidx.dtype == (np.uint16 if in_f <= 65536 else np.int32)
    assert int(op.colidx.max()) == in_f - 1
    _run(name, "csr", (batch, in_f), in_f, 5, weight=w)
