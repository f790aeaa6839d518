"""Sparse modules, BatchNorm folding, ReLU fusion (fx), sparsify_, save / load.

Tolerance: sparse execution is compared with the dense (masked) model by
``assert_close(rtol=1e-4, atol=1e-5)`` -- fp32 sums in another order, BatchNorm folded in float64
then rounded to fp32.
"""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from _sparsify_fakes import registered
from sparsecnn import nn as snn
from sparsecnn import to_sparse
from sparsecnn.kernels import registry

TOL = {"rtol": 1e-4, "atol": 1e-5}


@pytest.fixture(autouse=True)
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("SPARSECNN_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture
def ref_kernel():
    with registered("test_ref"):
        yield


def _sparse_w(shape, density, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(*shape, generator=g)
    w[torch.rand(*shape, generator=g) > density] = 0
    return w


def _sparse_algos(op):
    """Every kernel that can run CSR weights on this machine, dense first."""
    return ["dense", *[k.name for k in registry.kernels(op)
                       if k.name != "dense" and k.accepts("csr") and k.unavailable() is None]]


# ---------------------------------------------------------------------------------------------
# modules vs torch.nn.functional
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("groups,stride,padding,dilation", [
    (1, 1, 1, 1), (1, 2, 1, 1), (2, 1, 0, 1), (4, 1, 2, 2), (1, (2, 1), (0, 1), 1)])
def test_sparse_conv2d_matches_dense(ref_kernel, bias, relu, groups, stride, padding, dilation):
    w = _sparse_w((8, 8 // groups, 3, 3), 0.2)
    b = torch.randn(8) if bias else None
    x = torch.randn(2, 8, 11, 10)
    ref = F.conv2d(x, w, b, stride, padding, dilation, groups)
    ref = F.relu(ref) if relu else ref
    for algo in [*_sparse_algos("conv2d"), "test_ref"]:
        m = snn.SparseConv2d(to_sparse(w), b, stride, padding, dilation, groups, relu=relu,
                             algo=algo).eval()
        if registry.get("conv2d", algo).why_not(m.problem(x.shape), m.weight) is not None:
            continue
        for _ in range(2):  # first call: validated slow path; second: the cached plan
            torch.testing.assert_close(m(x), ref, **TOL, msg=f"algo={algo}")
        torch.testing.assert_close(m(x[0]), ref[0], **TOL)  # unbatched (C, H, W)


def test_sparse_conv2d_from_dense_auto_and_plans(ref_kernel):
    conv = nn.Conv2d(6, 12, 3, padding="same", bias=True)
    with torch.no_grad():
        conv.weight.mul_(torch.rand_like(conv.weight) < 0.1)
    m = snn.SparseConv2d.from_dense(conv, relu=True).eval()
    assert m.padding == (1, 1) and m.algo == "auto"
    for n in (1, 3):
        x = torch.randn(n, 6, 7, 7)
        torch.testing.assert_close(m(x), F.relu(conv(x)), **TOL)
    assert len(m._plans) == 2
    m.set_choice((1, 6, 7, 7), "dense")
    assert not m._plans and m.kernel_for(m.problem((1, 6, 7, 7))) == "dense"
    assert m.kernel_for(m.problem((1, 6, 9, 9))) != "dense"  # another signature: its own choice


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("batch", [1, 5])
def test_sparse_linear_matches_dense(ref_kernel, bias, relu, batch):
    w = _sparse_w((10, 33), 0.15)
    b = torch.randn(10) if bias else None
    x = torch.randn(batch, 33)
    ref = F.linear(x, w, b)
    ref = F.relu(ref) if relu else ref
    for algo in [*_sparse_algos("linear"), "test_ref"]:
        m = snn.SparseLinear(to_sparse(w), b, relu=relu, algo=algo).eval()
        for _ in range(2):
            torch.testing.assert_close(m(x), ref, **TOL, msg=f"algo={algo}")
    torch.testing.assert_close(m(x.reshape(batch, 1, 33)), ref.reshape(batch, 1, 10), **TOL)


def test_module_errors(ref_kernel):
    w = to_sparse(_sparse_w((4, 3, 3, 3), 0.5))
    with pytest.raises(TypeError, match="SparseWeight"):
        snn.SparseConv2d(torch.randn(4, 3, 3, 3))
    with pytest.raises(ValueError, match="bias must have shape"):
        snn.SparseConv2d(w, torch.randn(5))
    with pytest.raises(ValueError, match="unknown conv2d kernel"):
        snn.SparseConv2d(w, algo="nope")
    with pytest.raises(ValueError, match="4-D"):
        snn.SparseConv2d(to_sparse(torch.ones(3, 4)))
    m = snn.SparseConv2d(w, padding=1)
    with pytest.raises(RuntimeError, match="inference-only"):
        m.train()(torch.randn(1, 3, 5, 5))
    with torch.no_grad():  # training mode without grad is fine
        m(torch.randn(1, 3, 5, 5))
    m.eval()
    with pytest.raises(ValueError, match="input channels"):
        m(torch.randn(1, 4, 5, 5))
    with pytest.raises(TypeError, match="torch.Tensor"):
        m([1.0])
    lin = snn.SparseLinear(to_sparse(torch.ones(3, 4))).eval()
    with pytest.raises(ValueError, match="features"):
        lin(torch.randn(2, 5))


# ---------------------------------------------------------------------------------------------
# BatchNorm folding and ReLU fusion
# ---------------------------------------------------------------------------------------------
class ConvBnRelu(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.bn2 = nn.BatchNorm2d(16)
        self.relu2 = nn.ReLU()
        self.conv3 = nn.Conv2d(16, 16, 1)  # no BN, no ReLU after it
        self.fc = nn.Linear(16 * 4 * 4, 32)
        self.bnf = nn.BatchNorm1d(32)
        self.relu3 = nn.ReLU()
        self.out = nn.Linear(32, 10)

    def forward(self, x):
        x = self.relu1(self.bn1(self.conv1(x)))
        x = self.relu2(self.bn2(self.conv2(x)))
        x = self.conv3(x) + x
        x = self.relu3(self.bnf(self.fc(torch.flatten(x, 1))))
        return self.out(x)


def _randomise_bn(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g))
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(n, generator=g))
    return model


def _prune(model, sparsity=0.85, seed=0, skip=()):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, m in model.named_modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)) and name not in skip:
                m.weight.mul_(torch.rand(m.weight.shape, generator=g) >= sparsity)
    return model


def test_fold_batchnorm_exact():
    torch.manual_seed(0)
    model = _randomise_bn(ConvBnRelu()).eval()
    x = torch.randn(4, 3, 8, 8)
    ref = model(x)
    folded = snn.fold_batchnorm(model)
    assert folded == [("conv1", "bn1"), ("conv2", "bn2"), ("fc", "bnf")]
    assert all(isinstance(getattr(model, n), nn.Identity) for n in ("bn1", "bn2", "bnf"))
    assert model.conv1.bias is not None
    torch.testing.assert_close(model(x), ref, rtol=1e-5, atol=1e-5)


def test_fold_skips_shared_or_multi_use():
    class Shared(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)
            self.bn = nn.BatchNorm2d(4)

        def forward(self, x):
            y = self.conv(x)
            return self.bn(y) + y  # conv output has two users: folding would change y

    model = _randomise_bn(Shared()).eval()
    x = torch.randn(2, 3, 5, 5)
    ref = model(x)
    assert snn.fold_batchnorm(model) == []
    torch.testing.assert_close(model(x), ref)


def test_relu_fusion_small_net(ref_kernel):
    torch.manual_seed(1)
    model = _prune(_randomise_bn(ConvBnRelu())).eval()
    x = torch.randn(3, 3, 8, 8)
    ref = model(x)
    snn.sparsify_(model, tune=False, min_sparsity=0.0)
    assert model.conv1.relu and model.conv2.relu and model.fc.relu
    assert not model.conv3.relu and not model.out.relu
    for n in ("relu1", "relu2", "relu3", "bn1", "bn2", "bnf"):
        assert isinstance(getattr(model, n), nn.Identity), n
    torch.testing.assert_close(model(x), ref, **TOL)
    compact = snn.compact(model)
    assert "relu1" not in compact.code and "bn1" not in compact.code
    torch.testing.assert_close(compact(x), ref, **TOL)


class _Block(nn.Module):
    """torchvision-style block: one ReLU module called twice (must not be fused)."""

    def __init__(self, c):
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + x)


def test_shared_relu_is_not_fused(ref_kernel):
    model = _prune(_randomise_bn(nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), _Block(8)))).eval()
    x = torch.randn(2, 3, 6, 6)
    ref = model(x)
    snn.sparsify_(model, tune=False, min_sparsity=0.0)
    assert not model[1].conv1.relu and isinstance(model[1].relu, nn.ReLU)
    torch.testing.assert_close(model(x), ref, **TOL)


def _resnet20():
    from sparsecnn import models
    if not hasattr(models, "build"):
        pytest.skip("sparsecnn.models.build not available yet")
    return models.build("resnet20")


def test_fusion_and_sparsify_resnet20_random_weights(ref_kernel):
    torch.manual_seed(0)
    model = _prune(_randomise_bn(_resnet20()), sparsity=0.9).eval()
    x = torch.randn(2, 3, 32, 32)
    ref = model(x)
    ref_model = copy.deepcopy(model)
    folded = snn.fold_batchnorm(ref_model)
    assert len(folded) == 19  # every conv of ResNet-20 is followed by its BN
    torch.testing.assert_close(ref_model(x), ref, **TOL)
    snn.sparsify_(model, tune=False, min_sparsity=0.5)
    convs = [m for _, m in snn.sparse_modules(model) if isinstance(m, snn.SparseConv2d)]
    assert len(convs) == 19
    assert sum(m.relu for m in convs) >= 9  # the first conv + conv1 of every block
    torch.testing.assert_close(model(x), ref, **TOL)
    torch.testing.assert_close(snn.compact(model)(x), ref, **TOL)


def test_compact_inplace_residual_only_when_safe(ref_kernel):
    class Res(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(4, 4, 3, padding=1)
            self.b = nn.Conv2d(4, 4, 3, padding=1)
            self.relu = nn.ReLU()

        def forward(self, x):
            y = self.a(x)
            z = self.b(x)
            return self.relu(y + x) * 2 + (z + x) * z  # z is read twice: no in-place on z

    model = _prune(Res(), sparsity=0.5).eval()
    x = torch.randn(2, 4, 5, 5)
    ref = model(x)
    snn.sparsify_(model, tune=False, min_sparsity=0.0)
    c = snn.compact(model)
    assert c.code.count("_add_relu_(") == 1 and "_add_(" not in c.code
    torch.testing.assert_close(c(x), ref, **TOL)
    torch.testing.assert_close(c(x), ref, **TOL)  # and again: nothing was overwritten


# ---------------------------------------------------------------------------------------------
# sparsify_ vs the masked dense model
# ---------------------------------------------------------------------------------------------
def test_sparsify_matches_masked_dense_and_respects_filter(ref_kernel):
    torch.manual_seed(2)
    model = _prune(_randomise_bn(ConvBnRelu()), sparsity=0.9).eval()
    x = torch.randn(4, 3, 8, 8)
    ref = model(x)
    snn.sparsify_(model, example_input=x, filter_fn=lambda m, fqn: fqn != "conv3",
                  min_sparsity=0.5)
    assert type(model.conv3) is nn.Conv2d  # filtered out: untouched
    assert isinstance(model.conv1, snn.SparseConv2d) and isinstance(model.out, snn.SparseLinear)
    for name, m in snn.sparse_modules(model):
        (key,) = m.choices
        assert m.tuning[key]["batch"] == 4 and key.startswith(f"{m.op}|"), name
    torch.testing.assert_close(model(x), ref, **TOL)
    assert model(x).argmax(1).tolist() == ref.argmax(1).tolist()
    rows = snn.layer_table(model)
    assert [r["name"] for r in rows] == ["conv1", "conv2", "fc", "out"]
    ops = {"SparseConv2d": "conv2d", "SparseLinear": "linear"}
    assert all(r["dense_ms"] > 0 and r["kernel"] in registry.names(ops[r["kind"]]) for r in rows)


def test_min_sparsity_keeps_dense_layers_dense(ref_kernel):
    model = _prune(ConvBnRelu(), sparsity=0.9, skip=("conv1",)).eval()
    snn.sparsify_(model, tune=False, min_sparsity=0.5)
    assert model.conv1.algo == "dense" and model.conv2.algo == "auto"


def test_sparsify_bad_arguments():
    model = ConvBnRelu()
    with pytest.raises(ValueError, match="example_input"):
        snn.sparsify_(model)
    with pytest.raises(ValueError, match="min_sparsity"):
        snn.sparsify_(model, tune=False, min_sparsity=1.5)
    with pytest.raises(ValueError, match="unknown format"):
        snn.sparsify_(model, tune=False, format="zzz")
    with pytest.raises(TypeError, match="nn.Module"):
        snn.sparsify_("model", tune=False)


# ---------------------------------------------------------------------------------------------
# save / load
# ---------------------------------------------------------------------------------------------
def test_save_load_round_trip(ref_kernel, tmp_path):
    torch.manual_seed(3)
    model = _prune(_randomise_bn(ConvBnRelu()), sparsity=0.9).eval()
    x = torch.randn(2, 3, 8, 8)
    snn.sparsify_(model, example_input=x)
    y = model(x)
    path = snn.save(model, tmp_path / "out" / "m.pt")
    assert [p.name for p in path.parent.iterdir()] == ["m.pt"]  # no temp file left
    loaded = snn.load(path)
    assert not loaded.training
    assert loaded.conv1.choices == model.conv1.choices
    assert loaded.conv1.weight.nnz == model.conv1.weight.nnz
    torch.testing.assert_close(loaded(x), y, rtol=0, atol=0)


def test_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no sparsecnn model file"):
        snn.load(tmp_path / "missing.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"\x00garbage")
    with pytest.raises(ValueError, match="not a readable sparsecnn model file"):
        snn.load(bad)
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.ones(2)}, other)
    with pytest.raises(ValueError, match="not a sparsecnn model file"):
        snn.load(other)
