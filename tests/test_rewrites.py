"""Graph rewrites never change the answer: BatchNorm folding only where provably equivalent,
shared Parameters never written, every rewrite checked on the example input and undone (with a
warning) when it changes the output."""

import warnings

import pytest
import torch
from torch import nn

from _sparsify_fakes import registered
from sparsecnn import nn as snn
from sparsecnn.nn import fusion

TOL = {"rtol": 1e-4, "atol": 1e-5}


@pytest.fixture(autouse=True)
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("SPARSECNN_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture
def ref_kernel():
    with registered("test_ref"):
        yield


def _bn(n, seed):
    g = torch.Generator().manual_seed(seed)
    bn = nn.BatchNorm1d(n) if seed % 2 else nn.BatchNorm2d(n)
    bn.running_mean.copy_(torch.randn(n, generator=g))
    bn.running_var.copy_(torch.rand(n, generator=g) + 0.3)
    bn.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
    bn.bias.data.copy_(torch.randn(n, generator=g))
    return bn


class LinearBnOnSequence(nn.Module):
    """Linear over the last axis of (N, C, L), then BatchNorm1d over C: C == out_features, so
    a shape-blind fold passes the size check but scales the wrong axis."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(6, 5)
        self.bn = _bn(5, 1)
        self.relu = nn.ReLU()
        self.head = nn.Linear(5, 3)

    def forward(self, x):                          # x: (N, 5, 6)
        return self.head(self.relu(self.bn(self.fc(x))))


def test_linear_bn1d_on_nc_l_input_is_not_folded(ref_kernel):
    model = LinearBnOnSequence().eval()
    x = torch.randn(4, 5, 6)
    ref = model(x)
    for example in (None, x):                      # without shapes, and with shape propagation
        m = LinearBnOnSequence().eval()
        m.load_state_dict(model.state_dict())
        assert snn.fold_batchnorm(m, example_input=example) == []
        torch.testing.assert_close(m(x), ref)
    snn.sparsify_(model, example_input=x, min_sparsity=0.0)
    torch.testing.assert_close(model(x), ref, **TOL)


def test_linear_bn1d_on_2d_input_is_folded():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc, self.bn = nn.Linear(6, 5), _bn(5, 3)

        def forward(self, x):
            return self.bn(self.fc(x))
    model = M().eval()
    x = torch.randn(4, 6)
    ref = model(x)
    assert snn.fold_batchnorm(model, example_input=x) == [("fc", "bn")]   # shapes prove (N, F)
    torch.testing.assert_close(model(x), ref, **TOL)


class TiedConvs(nn.Module):
    """Two convs sharing one weight Parameter; only the first is followed by a BatchNorm."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(4, 4, 3, padding=1, bias=False)
        self.bn = _bn(4, 2)
        self.b = nn.Conv2d(4, 4, 3, padding=1, bias=False)
        self.b.weight = self.a.weight

    def forward(self, x):
        return self.bn(self.a(x)) + self.b(x)


@pytest.mark.parametrize("example", [False, True])
def test_fold_never_writes_a_shared_parameter(example):
    torch.manual_seed(0)
    model = TiedConvs().eval()
    x = torch.randn(2, 4, 6, 6)
    ref = model(x)
    shared = model.b.weight
    before = shared.detach().clone()
    assert snn.fold_batchnorm(model, example_input=x if example else None) == [("a", "bn")]
    assert model.b.weight is shared and torch.equal(shared, before)   # b's weight untouched
    assert model.a.weight is not shared
    torch.testing.assert_close(model(x), ref, **TOL)


def test_sparsify_tied_weights(ref_kernel):
    torch.manual_seed(0)
    model = TiedConvs().eval()
    with torch.no_grad():
        model.a.weight.mul_(torch.rand_like(model.a.weight) > 0.7)
    x = torch.randn(2, 4, 6, 6)
    ref = model(x)
    snn.sparsify_(model, example_input=x, min_sparsity=0.5)
    torch.testing.assert_close(model(x), ref, **TOL)


def test_fold_that_changes_the_output_is_undone(monkeypatch):
    """The check is not vacuous: a fold that computes a wrong weight is caught on the example
    input and undone, with a warning; the model keeps its original modules and Parameters."""
    real = fusion._fold

    def wrong(layer, bn, log):
        real(layer, bn, log)
        if layer is model.conv2:
            layer.weight.data.mul_(1.5)
    monkeypatch.setattr(fusion, "_fold", wrong)

    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1, self.bn1 = nn.Conv2d(3, 4, 3), _bn(4, 4)
            self.conv2, self.bn2 = nn.Conv2d(4, 4, 3), _bn(4, 6)

        def forward(self, x):
            return self.bn2(self.conv2(self.bn1(self.conv1(x))))
    torch.manual_seed(0)
    model = M().eval()
    w2, bn2 = model.conv2.weight, model.bn2
    x = torch.randn(2, 3, 9, 9)
    ref = model(x)
    with pytest.warns(snn.RewriteWarning, match=r"BatchNorm folding changed the output.*"
                                                 r"folded only 1 of 2.*skipped: bn2"):
        assert snn.fold_batchnorm(model, example_input=x) == [("conv1", "bn1")]
    assert model.conv2.weight is w2 and model.bn2 is bn2
    torch.testing.assert_close(model(x), ref, **TOL)


def test_sparsify_falls_back_when_relu_fusion_changes_the_answer(ref_kernel, monkeypatch):
    """A fusion the graph analysis got wrong (here: forced) is caught by sparsify_'s final
    check and undone, with a warning."""
    from sparsecnn.nn import convert

    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1, self.relu1 = nn.Conv2d(3, 4, 3, padding=1), nn.ReLU()
            self.conv2 = nn.Conv2d(4, 4, 3, padding=1)

        def forward(self, x):
            return self.conv2(self.relu1(self.conv1(x)))          # conv2's output: no ReLU
    monkeypatch.setattr(convert, "find_relu_fusions", lambda m, graph=None: {"conv2": "relu1"})
    torch.manual_seed(0)
    model = M().eval()
    x = torch.randn(2, 3, 6, 6)
    ref = model(x)
    with pytest.warns(snn.RewriteWarning, match="sparsify_ changed the output.*undoing the ReLU"):
        snn.sparsify_(model, example_input=x, min_sparsity=0.0)
    assert not model.conv2.relu and type(model.relu1) is nn.ReLU
    torch.testing.assert_close(model(x), ref, **TOL)


def test_compact_checked_on_the_example_input(ref_kernel):
    import operator

    def broken(graph, modules):                    # an in-place rewrite gone wrong: + -> -
        for node in graph.nodes:
            if node.op == "call_function" and node.target is operator.add:
                node.target = operator.sub
        return 1

    class Res(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(4, 4, 3, padding=1)

        def forward(self, x):
            return self.a(x) + x
    model = Res().eval()
    x = torch.randn(1, 4, 5, 5)
    ref = model(x)
    snn.sparsify_(model, tune=False, min_sparsity=0.0)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(fusion, "_inplace_residuals", broken)
        with pytest.warns(snn.RewriteWarning, match="compact changed the output"):
            c = snn.compact(model, example_input=x)
    torch.testing.assert_close(c(x), ref, **TOL)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        c = snn.compact(model, example_input=x)   # the real rewrite passes its check silently
    torch.testing.assert_close(c(x), ref, **TOL)
