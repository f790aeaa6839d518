"""Gradients through sparse ops (issue 9): input and bias gradients of every kernel.

- ``torch.autograd.gradcheck`` (float64, finite differences) through the dense path, which runs
  the same ``autograd.Function`` (``sparsecnn.functional.run_kernel``) as every sparse kernel:
  it checks the backward formulas (transposed convolution / product, bias sum, fused-ReLU mask).
- every registered kernel x format (registry-driven, ``_kernel_cases.kernel_formats``), float32,
  against PyTorch's own gradients of ``F.conv2d`` / ``F.linear`` on the dense weight, tolerances
  ``_kernel_cases.tolerances(fan_in)`` (rtol 1e-5, atol 1e-6 * fan-in: the kernels' forward
  differs from oneDNN by float32 summation order only; the backward is the same dense op).
- the residual-net case: a sparsified ResNet-20's input gradient (saliency map) equals the
  pruned dense model's (before: the kernels detached their input, the residual shortcuts
  carried the only gradient and ~15 % of it was silently lost).
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import sparsecnn
from sparsecnn import nn as snn
from sparsecnn import to_sparse
from sparsecnn.kernels import registry

from _kernel_cases import build_weight, kernel_formats, sparse_weight, tolerances
from test_nn import ConvBnRelu, _prune, _randomise_bn, _resnet20

TOL = {"rtol": 1e-4, "atol": 1e-5}


@pytest.fixture(autouse=True)
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("SPARSECNN_CACHE_DIR", str(tmp_path / "cache"))


CONV_GEOMETRIES = [  # (C, K, R, S, stride, padding, dilation, groups, H, W)
    (4, 6, 3, 3, 1, 1, 1, 1, 6, 5),
    (4, 6, 3, 3, 2, 1, 1, 1, 7, 7),
    (4, 4, 3, 3, 1, 2, 2, 2, 6, 6),
    (4, 4, 3, 3, 1, 1, 1, 4, 5, 5),   # depthwise
    (3, 5, 1, 1, 1, 0, 1, 1, 4, 4),   # 1x1
    (3, 4, 5, 3, (2, 1), (2, 0), 1, 1, 9, 6),
]


# ---------------------------------------------------------------------------------------------
# gradcheck (float64) of the backward formulas
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("geom", CONV_GEOMETRIES, ids=lambda g: "x".join(map(str, g[:4])))
def test_conv2d_gradcheck_float64(geom, relu):
    c, k, r, s, stride, padding, dilation, groups, h, w = geom
    g = torch.Generator().manual_seed(0)
    sw = to_sparse(sparse_weight((k, c // groups, r, s), 0.6, g).double())
    x = torch.randn(2, c, h, w, dtype=torch.float64, generator=g, requires_grad=True)
    b = torch.randn(k, dtype=torch.float64, generator=g, requires_grad=True)

    def f(x, b):
        return sparsecnn.conv2d(x, sw, b, stride, padding, dilation, groups, relu=relu)

    y = f(x, b)
    assert type(y.grad_fn).__name__ == "_SparseOpBackward"  # our Function, not F.conv2d's
    assert torch.autograd.gradcheck(f, (x, b))
    if not relu:
        assert torch.autograd.gradgradcheck(f, (x, b))


@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("fmt", ["csr", "bsr", "nm"])
def test_linear_gradcheck_float64(fmt, relu):
    g = torch.Generator().manual_seed(1)
    w, _ = build_weight(sparse_weight((7, 12), 0.5, g).double(), fmt)
    x = torch.randn(3, 12, dtype=torch.float64, generator=g, requires_grad=True)
    b = torch.randn(7, dtype=torch.float64, generator=g, requires_grad=True)

    def f(x, b):
        return sparsecnn.linear(x, w, b, relu=relu)

    assert torch.autograd.gradcheck(f, (x, b))
    x3 = torch.randn(2, 2, 12, dtype=torch.float64, generator=g, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: sparsecnn.linear(x, w, b, relu=relu), (x3,))


def test_module_gradcheck_float64():
    """The modules' planned fast path takes the same Function (a module converted to float64
    runs the dense kernel in float64)."""
    g = torch.Generator().manual_seed(2)
    conv = snn.SparseConv2d(to_sparse(sparse_weight((6, 4, 3, 3), 0.7, g)), torch.randn(6),
                            padding=1, relu=True).eval().double()
    lin = snn.SparseLinear(to_sparse(sparse_weight((5, 6 * 16), 0.7, g)), torch.randn(5)).double()
    net = nn.Sequential(conv, nn.Flatten(), lin).eval()
    x = torch.randn(2, 4, 4, 4, dtype=torch.float64, generator=g, requires_grad=True)
    for _ in range(2):  # first call plans, second takes the plan
        assert torch.autograd.gradcheck(net, (x,))
    with torch.no_grad():
        conv.bias.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda b: conv(x.detach()), (conv.bias,))


# ---------------------------------------------------------------------------------------------
# every kernel x format, float32, against PyTorch's gradients
# ---------------------------------------------------------------------------------------------
def _ref_grads(fn, x, b, gy):
    xr = x.detach().clone().requires_grad_(True)
    br = b.detach().clone().requires_grad_(True)
    y = fn(xr, br)
    y.backward(gy)
    return y.detach(), xr.grad, br.grad


@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("geom", CONV_GEOMETRIES[:4], ids=lambda g: "x".join(map(str, g[:4])))
@pytest.mark.parametrize("name, fmt", kernel_formats("conv2d"))
def test_conv2d_kernel_gradients(name, fmt, geom, relu):
    c, k, r, s, stride, padding, dilation, groups, h, w = geom
    g = torch.Generator().manual_seed(3)
    wk, wref = build_weight(sparse_weight((k, c // groups, r, s), 0.8, g), fmt)
    x = torch.randn(2, c, h, w, generator=g, requires_grad=True)
    b = torch.randn(k, generator=g, requires_grad=True)
    _, problem, _, _ = sparsecnn.functional.conv2d_problem(x, wk, b, stride, padding, dilation,
                                                            groups, relu)
    why = registry.get("conv2d", name).why_not(problem, wk)  # hybrid: a weight without a dense block
    if why is not None:
        pytest.skip(why)
    y = sparsecnn.conv2d(x, wk, b, stride, padding, dilation, groups, algo=name, relu=relu)
    gy = torch.randn(y.shape, generator=g)
    y.backward(gy)

    def ref(x, b):
        out = F.conv2d(x, wref, b, stride, padding, dilation, groups)
        return F.relu(out) if relu else out

    yr, gxr, gbr = _ref_grads(ref, x, b, gy)
    tol = tolerances((c // groups) * r * s)
    torch.testing.assert_close(y.detach(), yr, **tol)
    torch.testing.assert_close(x.grad, gxr, **tolerances(k * r * s))
    torch.testing.assert_close(b.grad, gbr, **tolerances(2 * h * w))


@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("batch", [1, 5])
@pytest.mark.parametrize("name, fmt", kernel_formats("linear"))
def test_linear_kernel_gradients(name, fmt, batch, relu):
    g = torch.Generator().manual_seed(4)
    wk, wref = build_weight(sparse_weight((9, 40), 0.8, g), fmt)
    x = torch.randn(batch, 40, generator=g, requires_grad=True)
    b = torch.randn(9, generator=g, requires_grad=True)
    _, problem, _, _ = sparsecnn.functional.linear_problem(x, wk, b, relu)
    why = registry.get("linear", name).why_not(problem)
    if why is not None:
        pytest.skip(why)
    y = sparsecnn.linear(x, wk, b, algo=name, relu=relu)
    gy = torch.randn(y.shape, generator=g)
    y.backward(gy)

    def ref(x, b):
        out = F.linear(x, wref, b)
        return F.relu(out) if relu else out

    yr, gxr, gbr = _ref_grads(ref, x, b, gy)
    torch.testing.assert_close(y.detach(), yr, **tolerances(40))
    torch.testing.assert_close(x.grad, gxr, **tolerances(9))
    torch.testing.assert_close(b.grad, gbr, **tolerances(batch))


def test_dense_tensor_weight_keeps_its_gradient():
    """A dense torch.Tensor weight is PyTorch's own op: the weight gradient is not lost."""
    w = torch.randn(4, 3, 3, 3, requires_grad=True)
    x = torch.randn(1, 3, 5, 5, requires_grad=True)
    sparsecnn.conv2d(x, w, padding=1).sum().backward()
    wr = w.detach().clone().requires_grad_(True)
    F.conv2d(x.detach(), wr, padding=1).sum().backward()
    torch.testing.assert_close(w.grad, wr.grad)
    lw = torch.randn(3, 5, requires_grad=True)
    sparsecnn.linear(torch.randn(2, 5), lw).sum().backward()
    assert lw.grad is not None


# ---------------------------------------------------------------------------------------------
# models: saliency maps in eval mode, residual nets, compact, training refused
# ---------------------------------------------------------------------------------------------
def _saliency(model, x):
    x = x.clone().requires_grad_(True)
    out = model(x)
    out.gather(1, out.argmax(1, keepdim=True)).sum().backward()
    return out.detach(), x.grad


def test_resnet20_saliency_matches_dense():
    """The issue's case: a residual net lost ~15 % of its input gradient through the sparse
    layers (the shortcuts carried the rest, so nothing raised)."""
    torch.manual_seed(0)
    dense = _prune(_randomise_bn(_resnet20()), sparsity=0.9).eval()
    model = copy.deepcopy(dense)
    snn.sparsify_(model, tune=False, min_sparsity=0.5)
    assert any(m.algo == "auto" for _, m in snn.sparse_modules(model))
    x = torch.randn(2, 3, 32, 32)
    y_ref, g_ref = _saliency(dense, x)
    for net in (model, snn.compact(model)):  # compact: in-place residual adds on layer outputs
        y, grad = _saliency(net, x)
        torch.testing.assert_close(y, y_ref, **TOL)
        torch.testing.assert_close(grad, g_ref, rtol=1e-4, atol=1e-6)


def test_bias_gradient_through_modules():
    torch.manual_seed(1)
    dense = _prune(_randomise_bn(ConvBnRelu()), sparsity=0.8).eval()
    model = copy.deepcopy(dense)
    snn.sparsify_(model, tune=False, min_sparsity=0.0)
    ref_model = copy.deepcopy(dense)
    snn.fold_batchnorm(ref_model)  # the same biases, as Parameters
    x = torch.randn(3, 3, 8, 8)
    with torch.no_grad():
        model(x)  # plans made without grad must not hide the bias gradient later
    for _, m in snn.sparse_modules(model):
        m.bias.requires_grad_(True)
    model(x).square().sum().backward()
    ref_model(x).square().sum().backward()
    for name, m in snn.sparse_modules(model):
        torch.testing.assert_close(m.bias.grad, ref_model.get_submodule(name).bias.grad,
                                   rtol=1e-4, atol=1e-4, msg=name)


def test_inference_path_builds_no_graph():
    m = snn.SparseConv2d(to_sparse(sparse_weight((4, 3, 3, 3), 0.7, torch.Generator())),
                         torch.randn(4)).eval()
    x = torch.randn(1, 3, 5, 5)
    for _ in range(2):
        assert m(x).grad_fn is None  # grad enabled, nothing requires grad: the plain kernel call
    assert m(x.requires_grad_(True)).grad_fn is not None
    with torch.no_grad():
        assert m(x).grad_fn is None


def test_training_mode_refuses_weight_training():
    m = snn.SparseLinear(to_sparse(torch.eye(3)))
    with pytest.raises(RuntimeError, match="cannot be trained"):
        m.train()(torch.randn(2, 3, requires_grad=True))
    m.eval()
    x = torch.randn(2, 3, requires_grad=True)
    m(x).sum().backward()
    torch.testing.assert_close(x.grad, torch.ones(2, 3))
