"""1-D convolution: :func:`sparsecnn.conv1d`, :class:`sparsecnn.nn.SparseConv1d` and ``nn.Conv1d``
in :func:`sparsecnn.nn.sparsify_`, against ``torch.nn.functional.conv1d``.

Every registered conv2d kernel runs the grid (1-D convolution is the conv2d kernels on the
``H = R = 1`` view) with each format it accepts; a kernel the target cannot run, or whose
``supports`` rejects the problem, is skipped with the reason. Tolerances as the conv2d suite
(``_kernel_cases.tolerances``).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import sparsecnn
from sparsecnn import conv1d, to_sparse
from sparsecnn.functional import conv1d_problem
from sparsecnn.kernels import registry
from sparsecnn.nn import SparseConv1d, sparsify_

from _kernel_cases import SPARSITIES, build_weight, kernel_formats, sparse_weight, tolerances

KERNEL_FORMATS = kernel_formats("conv2d")

# (id, N, C, L, K, S, stride, padding, dilation, groups)
CASES = [
    ("k1", 1, 16, 20, 8, 1, 1, 0, 1, 1),
    ("k2-text", 2, 30, 56, 10, 2, 1, 0, 1, 1),      # the text CNN's shape, small
    ("k3-text-b8", 8, 24, 57, 12, 3, 1, 0, 1, 1),
    ("k3-pad1", 1, 8, 33, 16, 3, 1, 1, 1, 1),
    ("k5-s2-pad2", 2, 6, 41, 8, 5, 2, 2, 1, 1),
    ("k3-dil2", 1, 8, 30, 8, 3, 1, 2, 2, 1),
    ("k3-s3-dil2", 1, 6, 31, 7, 3, 3, 1, 2, 1),
    ("groups2", 2, 8, 25, 12, 3, 1, 1, 1, 2),
    ("depthwise", 1, 16, 19, 16, 3, 1, 1, 1, 16),
    ("full-length", 3, 5, 4, 7, 4, 1, 0, 1, 1),     # L == S: one output
    ("long", 1, 4, 700, 6, 3, 1, 1, 1, 1),         # many register tiles
]
CASE_IDS = [c[0] for c in CASES]


def _run(name, fmt, case, sparsity=0.9, *, bias=True, relu=False, weight=None, x=None, seed=0,
         unbatched=False):
    _, n, c, length, k, s, stride, padding, dilation, groups = case
    gen = torch.Generator().manual_seed(seed)
    if x is None:
        x = torch.randn(n, c, length, generator=gen)
    if weight is None:
        weight = sparse_weight((k, c // groups, s), sparsity, gen)
    b = torch.randn(k, generator=gen) if bias else None
    wk, wref = build_weight(weight.unsqueeze(2), fmt)
    if fmt == "dense":
        wk = weight
    _, _, problem, _, _ = conv1d_problem(x, wk, b, stride, padding, dilation, groups, relu)
    kernel = registry.get("conv2d", name)
    if kernel.supports is not None and not kernel.supports(problem):
        pytest.skip(f"{name} does not support {problem.key()}")
    why = kernel.why_not(problem, wk if fmt != "dense" else wk.unsqueeze(2))
    if why is not None:  # e.g. hybrid: a weight without a dense block
        pytest.skip(why)
    xin = x[0] if unbatched else x
    y = conv1d(xin, wk, b, stride, padding, dilation, groups, algo=name, relu=relu)
    ref = F.conv1d(xin, wref.squeeze(2), b, stride, padding, dilation, groups)
    if relu:
        ref = torch.relu(ref)
    assert y.shape == ref.shape and y.dtype == torch.float32
    torch.testing.assert_close(y, ref, **tolerances(c // groups * s))
    return y


@pytest.mark.parametrize("sparsity", SPARSITIES)
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
@pytest.mark.parametrize("name, fmt", KERNEL_FORMATS)
def test_matches_torch(name, fmt, case, sparsity):
    _run(name, fmt, case, sparsity)


@pytest.mark.parametrize("name, fmt", KERNEL_FORMATS)
@pytest.mark.parametrize("relu", [False, True])
def test_bias_relu_unbatched(name, fmt, relu):
    _run(name, fmt, CASES[3], 0.8, relu=relu)
    _run(name, fmt, CASES[3], 0.8, bias=False, relu=relu, unbatched=True)


@pytest.mark.parametrize("name, fmt", KERNEL_FORMATS)
def test_all_zero_and_single_nonzero(name, fmt):
    case = CASES[1]
    _, n, c, length, k, s = case[:6]
    w = torch.zeros(k, c, s)
    if fmt != "nm":  # an N:M format keeps at least its pattern's structure; zero is zero
        _run(name, fmt, case, weight=w)
    w[3, 7, 1] = 2.5
    _run(name, fmt, case, weight=w, bias=False)


def test_auto_and_tuple_arguments():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, 12, 40, generator=gen)
    w = sparse_weight((8, 12, 3), 0.9, gen)
    ref = F.conv1d(x, w, None, (2,), (1,), (1,))
    y = conv1d(x, to_sparse(w.unsqueeze(2)), None, (2,), [1], (1,))
    torch.testing.assert_close(y, ref, **tolerances(36))
    torch.testing.assert_close(sparsecnn.conv1d(x, w, None, 2, 1), ref)  # dense tensor weight


@pytest.mark.parametrize("padding, s, dil", [("same", 3, 1), ("same", 3, 2), ("valid", 4, 1)])
def test_padding_strings(padding, s, dil):
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(1, 6, 25, generator=gen)
    w = sparse_weight((5, 6, s), 0.7, gen)
    y = conv1d(x, to_sparse(w.unsqueeze(2)), padding=padding, dilation=dil, algo="direct")
    torch.testing.assert_close(y, F.conv1d(x, w, padding=padding, dilation=dil),
                               **tolerances(6 * s))


def test_bad_arguments():
    x = torch.randn(1, 4, 10)
    w = torch.randn(3, 4, 3)
    with pytest.raises(ValueError, match="3-D"):
        conv1d(x.unsqueeze(2), w)
    with pytest.raises(ValueError, match="3-D"):
        conv1d(x, w.unsqueeze(2))
    with pytest.raises(ValueError, match=r"\(K, C/groups, 1, S\)"):
        conv1d(x, to_sparse(torch.randn(3, 4, 2, 3)))
    with pytest.raises(TypeError, match="stride"):
        conv1d(x, w, stride=(1, 1))
    with pytest.raises(ValueError, match="padding"):
        conv1d(x, w, padding=-1)
    with pytest.raises(ValueError, match="stride 1"):
        conv1d(x, w, padding="same", stride=2)
    with pytest.raises(ValueError, match="smaller"):
        conv1d(torch.randn(1, 4, 2), w)
    with pytest.raises(ValueError, match="channels"):
        conv1d(torch.randn(1, 5, 10), w)
    with pytest.raises(TypeError, match="weight"):
        conv1d(x, [1, 2, 3])


# ---------------------------------------------------------------------------------------------
# the module and sparsify_
# ---------------------------------------------------------------------------------------------
def _pruned_conv1d(c, k, s, sparsity, seed=0, **kw):
    torch.manual_seed(seed)
    conv = nn.Conv1d(c, k, s, **kw)
    with torch.no_grad():
        conv.weight.mul_((torch.rand_like(conv.weight) >= sparsity).float())
    return conv.eval()


@pytest.mark.parametrize("kw", [dict(), dict(stride=2, padding=1), dict(padding="same", dilation=2),
                                dict(groups=2, padding=1)])
@pytest.mark.parametrize("algo", ["auto", "direct", "im2col_spmm", "dense"])
def test_module_matches_conv1d(kw, algo):
    why = None if algo == "auto" else registry.get("conv2d", algo).unavailable()
    if why:
        pytest.skip(why)
    conv = _pruned_conv1d(8, 6, 3, 0.8, **kw)
    m = SparseConv1d.from_dense(conv, algo=algo, relu=True)
    x = torch.randn(3, 8, 29)
    with torch.no_grad():
        ref = torch.relu(conv(x))
        torch.testing.assert_close(m(x), ref, **tolerances(24))
        torch.testing.assert_close(m(x), ref, **tolerances(24))  # the remembered plan
        torch.testing.assert_close(m(x[1]), ref[1], **tolerances(24))  # unbatched
        torch.testing.assert_close(m.run(x, "direct"), ref, **tolerances(24))
    assert m.kernel_size == (3,) and "kernel_size=(3,)" in repr(m)


def test_module_rejects_bad_input_and_weight():
    m = SparseConv1d.from_dense(_pruned_conv1d(4, 3, 3, 0.5)).eval()
    with pytest.raises(ValueError, match="3-D"):
        m(torch.randn(1, 4, 5, 5))
    with pytest.raises(TypeError):
        m("x")
    with pytest.raises(ValueError, match=r"\(K, C/groups, 1, S\)"):
        SparseConv1d(to_sparse(torch.randn(3, 4, 3, 3)))
    with pytest.raises(TypeError, match="Conv1d"):
        SparseConv1d.from_dense(nn.Conv2d(4, 3, 3))
    with pytest.raises(ValueError, match="padding_mode"):
        SparseConv1d.from_dense(nn.Conv1d(4, 3, 3, padding=1, padding_mode="reflect"))


class TextCNN(nn.Module):
    """Kim (2014)'s CNN for sentence classification, small: parallel 1-D convolutions of two
    widths over the word embeddings (channels), ReLU, max over time, a linear classifier."""

    def __init__(self, emb=24, filters=10, widths=(2, 3), classes=2):
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv1d(emb, filters, w) for w in widths)
        self.bns = nn.ModuleList(nn.BatchNorm1d(filters) for _ in widths)
        self.relus = nn.ModuleList(nn.ReLU() for _ in widths)
        self.fc = nn.Linear(filters * len(widths), classes)

    def forward(self, x):
        feats = [r(b(c(x))).amax(dim=2) for c, b, r in zip(self.convs, self.bns, self.relus)]
        return self.fc(torch.cat(feats, dim=1))


@pytest.mark.parametrize("tune", [False, True])
def test_sparsify_converts_conv1d(tune):
    torch.manual_seed(0)
    model = TextCNN().eval()
    with torch.no_grad():
        for c in model.convs:
            c.weight.mul_((torch.rand_like(c.weight) >= 0.9).float())
        for b in model.bns:
            b.running_mean.normal_()
            b.running_var.uniform_(0.5, 2.0)
    x = torch.randn(4, 24, 50)
    with torch.no_grad():
        ref = model(x)
    sparsify_(model, tune=tune, example_input=x if tune else None, use_cache=False)
    assert all(type(c) is SparseConv1d for c in model.convs)
    assert all(c.relu for c in model.convs)  # BatchNorm1d folded, then the ReLU fused
    assert all(type(b) is nn.Identity for b in model.bns)
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(model(x[:1]), ref[:1], rtol=1e-4, atol=1e-4)
    if tune:
        assert all(c.choices for c in model.convs)


def test_sparsify_filter_and_dense_layers_keep_semantics():
    model = nn.Sequential(_pruned_conv1d(6, 4, 3, 0.2), nn.ReLU(), _pruned_conv1d(4, 4, 1, 0.9))
    x = torch.randn(2, 6, 17)
    with torch.no_grad():
        ref = model(x)
    sparsify_(model, tune=False, filter_fn=lambda m, name: name != "2")
    assert type(model[0]) is SparseConv1d and type(model[2]) is nn.Conv1d
    assert model[0].algo == "dense"  # 20 % sparse: below min_sparsity, runs dense
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# the memo of resolved calls (functional._CALLS): repeated calls skip validation and dispatch
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("op", ["conv1d", "conv2d"])
def test_call_memo_repeats_validation_of_what_changes(op):
    from sparsecnn import functional as Fs
    from sparsecnn.kernels import prepared

    gen = torch.Generator().manual_seed(5)
    if op == "conv1d":
        x, w = torch.randn(2, 6, 21, generator=gen), sparse_weight((5, 6, 3), 0.7, gen)
        fn, ref_fn, ws = conv1d, F.conv1d, to_sparse(w.unsqueeze(2))
    else:
        x, w = torch.randn(2, 6, 9, 8, generator=gen), sparse_weight((5, 6, 3, 3), 0.7, gen)
        fn, ref_fn, ws = sparsecnn.conv2d, F.conv2d, to_sparse(w)
    b = torch.randn(5, generator=gen)
    tol = tolerances(54)
    for algo in ("direct", "auto"):
        for _ in range(2):  # the second call is served by the memo
            torch.testing.assert_close(fn(x, ws, b, 1, 1, algo=algo), ref_fn(x, w, b, 1, 1), **tol)
        assert Fs._call_key(x, ws, algo, *((op,) if op == "conv1d" else ()), 1, 1, 1, 1,
                            False) in Fs._CALLS
        torch.testing.assert_close(fn(x[0], ws, None, 1, 1, algo=algo),
                                   ref_fn(x[0], w, None, 1, 1), **tol)  # unbatched
    with pytest.raises(ValueError, match="bias"):  # the bias is checked on every call
        fn(x, ws, torch.randn(3), 1, 1, algo="direct")
    torch.testing.assert_close(fn(x, ws, None, 2, 0, algo="direct"),
                               ref_fn(x, w, None, 2, 0), **tol)  # other geometry: own entry
    prepared.CACHE.clear()  # the memo holds weak references only: a dropped operand is rebuilt
    torch.testing.assert_close(fn(x, ws, b, 1, 1, algo="direct"), ref_fn(x, w, b, 1, 1), **tol)
    with pytest.raises(ValueError, match="channels"):  # a new input shape is validated
        fn(x[:, :4], ws, b, 1, 1, algo="direct")
