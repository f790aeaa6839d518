"""Activation sparsity analysis, accelerator index encodings, the hybrid kernel, the fused
conv + pool rewrite, and activation density in tuning (issue 11)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import sparsecnn
import sparsecnn.nn as snn
from sparsecnn import dispatch, models
from sparsecnn.analysis import activations, encodings
from sparsecnn.functional import conv2d_problem
from sparsecnn.kernels import hybrid, registry

from _kernel_cases import sparse_weight, tolerances


# ---------------------------------------------------------------------------------------------
# zero structure of activations
# ---------------------------------------------------------------------------------------------
def test_zero_structure_known_answers():
    x = torch.ones(2, 3, 4, 8)           # 2 images, 3 channels, 4 rows of 8
    x[0, 1] = 0                           # a dead channel in image 0
    x[1, 2, 1] = 0                        # a zero row in image 1
    x[1, 0, 2, :4] = 0                    # half a row: no zero row, no zero 8-window
    r = activations.zero_structure(x, widths=(4, 8))
    assert r["values"] == 192 and r["zeros"] == 32 + 8 + 4
    assert r["dead_planes"] == 1 and r["dead_channel_share"] == pytest.approx(1 / 6)
    assert list(r["dead_per_image"]) == [1, 0] and list(r["dead_per_channel"]) == [0, 1, 0]
    assert r["channels_dead_in_every_image"] == 0 and r["channels_never_dead"] == 2
    assert r["zero_rows"] == 4 + 1 and r["rows"] == 24
    # 8-wide windows = rows here: 4 (dead channel) + 1 (zero row); 4-wide: 8 + 2 + 1
    assert r["zero_windows"] == {4: 11, 8: 5} and r["windows"] == {4: 48, 8: 24}
    assert r["nonnegative"] and r["zero_share"] == pytest.approx(44 / 192)


def test_zero_structure_partial_last_window_and_errors():
    x = torch.zeros(1, 1, 3, 3)           # 9 values: windows of 8 -> [0, 8) and [8, 9)
    x[0, 0, 0, 0] = 1
    r = activations.zero_structure(x, widths=(8,))
    assert r["windows"] == {8: 2} and r["zero_windows"] == {8: 1}
    with pytest.raises(ValueError, match="4-D"):
        activations.zero_structure(torch.zeros(3, 3))


def test_activation_structure_matches_per_layer_hooks():
    torch.manual_seed(0)
    model = models.build("resnet20").eval()
    x = torch.randn(6, 3, 32, 32)
    got = activations.activation_structure(model, x, ["layer1.0.conv1", "layer3.2.conv2"],
                                           batch=4)  # two batches, summed
    seen = {}
    mods = dict(model.named_modules())
    hs = [mods[n].register_forward_pre_hook(lambda m, a, n=n: seen.__setitem__(n, a[0].clone()))
          for n in got]
    with torch.no_grad():
        model(x)
    for h in hs:
        h.remove()
    for n, r in got.items():
        ref = activations.zero_structure(seen[n])
        for key in ("zeros", "dead_planes", "zero_rows", "zero_windows", "images"):
            assert r[key] == ref[key], (n, key)
        assert r["nonnegative"]  # inputs of these convs follow a ReLU
    with pytest.raises(ValueError, match="not Conv2d layers"):
        activations.activation_structure(model, x, ["linear"])


def test_dead_channel_work():
    w = torch.zeros(4, 3, 3, 3)
    w[:, 0, 1, 1] = 1.0   # 4 nonzeros read channel 0
    w[0, 2] = 1.0         # 9 read channel 2
    r = activations.dead_channel_work(w, [2, 0, 1], images=2)
    assert r["nnz"] == 13 and r["skipped_share"] == pytest.approx((4 * 2 + 9 * 1) / (13 * 2))
    with pytest.raises(ValueError, match="input channels"):
        activations.dead_channel_work(w, [1, 1], images=2)


@pytest.fixture(scope="module")
def resnet20_real():
    from sparsecnn.data import load_npz, shared_data_dir

    root = shared_data_dir()
    if root is None or not (root / "resnet_cifar10" / "resnet20-12fca82f.th").is_file():
        pytest.skip("shared real data (resnet20 weights, CIFAR-10) not present")
    model = models.build("resnet20")
    models.load_weights(model, root / "resnet_cifar10" / "resnet20-12fca82f.th")
    ds = load_npz(root / "cifar10" / "cifar10_test_subset.npz")
    return model.eval(), ds.tensors[0][:32]


def test_real_resnet20_activations_are_sparse(resnet20_real):
    model, x = resnet20_real
    r = activations.activation_structure(model, x)
    assert not r["conv1"]["nonnegative"]             # the image itself
    inner = [v for k, v in r.items() if k != "conv1"]
    assert all(v["nonnegative"] for v in inner)      # every other conv input follows a ReLU
    shares = [v["zero_share"] for v in inner]
    assert 0.2 < float(np.mean(shares)) < 0.9         # post-ReLU feature maps are largely zero


# ---------------------------------------------------------------------------------------------
# accelerator index encodings
# ---------------------------------------------------------------------------------------------
def _slow_encodings(w, step_bits, eie_bits, n_pe):
    """Straightforward per-row / per-column loops (the reference for the vectorised code)."""
    k = w.shape[0]
    m = (w.reshape(k, -1) != 0)
    step_fill = 0
    for i in range(k):
        prev = None
        for j in np.nonzero(m[i])[0]:
            s = j if prev is None else j - prev
            while s > (1 << step_bits) - 1:
                step_fill += 1
                s -= (1 << step_bits) - 1
            prev = j
    eie_fill = 0
    for q in range(n_pe):
        rows = np.arange(q, k, n_pe)
        for j in range(m.shape[1]):
            run = 0
            for i in rows:
                if m[i, j]:
                    while run > (1 << eie_bits) - 1:
                        eie_fill += 1
                        run -= 1 << eie_bits
                    run = 0
                else:
                    run += 1
    return step_fill, eie_fill


@pytest.mark.parametrize("sparsity, n_pe, step_bits", [(0.9, 1, 4), (0.99, 1, 8), (0.7, 4, 3),
                                                       (0.999, 2, 8)])
def test_index_encodings_against_slow_reference(sparsity, n_pe, step_bits):
    w = sparse_weight((40, 12, 3, 3), sparsity, torch.Generator().manual_seed(1)).numpy()
    r = encodings.index_encodings(w, step_bits=step_bits, n_pe=n_pe)
    step_fill, eie_fill = _slow_encodings(w, step_bits, 4, n_pe)
    nnz = int((w != 0).sum())
    assert r["nnz"] == nnz
    assert r["step"]["fillers"] == step_fill and r["eie"]["fillers"] == eie_fill
    assert r["csr"]["bytes"] == 41 * 4 + nnz * 8
    assert r["bitmap"]["bytes"] == 40 * -(-108 // 8) + nnz * 4
    e = nnz + eie_fill
    assert r["eie"]["bytes"] == -(-e * 4 // 8) * 2 + n_pe * 109 * 4 + 64


def test_index_encodings_hand_example():
    w = np.zeros((2, 20, 1, 1), np.float32)
    w[0, 0] = w[0, 19] = 1.0
    r = encodings.index_encodings(w, step_bits=4)
    assert r["csr"]["bytes"] == 12 + 8 + 8
    assert r["bitmap"]["bytes"] == 2 * 3 + 8
    assert r["step"]["fillers"] == 1 and r["step"]["bytes"] == 2 + 12 + 12  # steps 0, 15 + 4
    w = np.zeros((40, 1, 1, 1), np.float32)
    w[0] = w[35] = 1.0                      # 34 zeros between them in the column
    r = encodings.index_encodings(w)
    assert r["eie"]["fillers"] == 2          # 34 = 16 + 16 + 2
    rows = encodings.model_index_encodings({"a": w, "b": w})
    assert rows[-1]["name"] == "(total)" and rows[-1]["csr"]["bytes"] == 2 * rows[0]["csr"]["bytes"]
    with pytest.raises(ValueError, match="step_bits"):
        encodings.index_encodings(w, step_bits=0)
    with pytest.raises(ValueError, match="n_pe"):
        encodings.index_encodings(w, n_pe=0)


# ---------------------------------------------------------------------------------------------
# hybrid dense / sparse kernel
# ---------------------------------------------------------------------------------------------
def planted(k=64, c=48, sparsity=0.95, rows=slice(8, 40), cols=slice(16, 32), seed=0):
    """A sparse weight with one fully dense block of output x input channels."""
    gen = torch.Generator().manual_seed(seed)
    w = sparse_weight((k, c, 3, 3), sparsity, gen)
    w[rows, cols] = torch.randn(w[rows, cols].shape, generator=gen)
    return w


@pytest.mark.parametrize("relu, bias, n, stride", [(False, True, 1, 1), (True, False, 3, 1),
                                                   (True, True, 2, 2)])
def test_hybrid_planted_block_matches_dense(relu, bias, n, stride):
    w = planted()
    ws = sparsecnn.to_sparse(w, "csr")
    blocks = hybrid.weight_blocks(ws)
    assert blocks["blocks"] and blocks["share"] > 0.5
    covered = set()
    for b in blocks["blocks"]:
        covered |= {(int(r), int(c)) for r in b["rows"] for c in b["cols"]}
    assert {(r, c) for r in range(8, 40) for c in range(16, 32)} <= covered
    gen = torch.Generator().manual_seed(1)
    x = torch.relu(torch.randn(n, 48, 15, 15, generator=gen))
    b = torch.randn(64, generator=gen) if bias else None
    y = sparsecnn.conv2d(x, ws, b, stride, 1, algo="hybrid", relu=relu)
    ref = F.conv2d(x, w, b, stride, 1)
    torch.testing.assert_close(y, F.relu(ref) if relu else ref, **tolerances(48 * 9))


def test_hybrid_is_a_candidate_only_for_weights_with_a_dense_block():
    x = torch.randn(1, 48, 13, 13)
    with_block = sparsecnn.to_sparse(planted(), "csr")
    without = sparsecnn.to_sparse(sparse_weight((64, 48, 3, 3), 0.9,
                                                torch.Generator().manual_seed(2)), "csr")
    for ws, expect in ((with_block, True), (without, False)):
        _, p, _, _ = conv2d_problem(x, ws, None, 1, 1)
        assert ("hybrid" in [k.name for k in registry.candidates(p, ws)]) is expect
        assert "hybrid" not in [k.name for k in registry.candidates(p)]  # never without weight
        assert dispatch.heuristic(p, dense_above=1.0) != "hybrid"
    with pytest.raises(ValueError, match="refuses this weight: no dense block"):
        sparsecnn.conv2d(x, without, None, 1, 1, algo="hybrid")
    _, p, _, _ = conv2d_problem(torch.randn(1, 96, 9, 9), with_block, None, 1, 1, 1, 2)
    with pytest.raises(ValueError, match="does not support"):  # groups = 2 would need splitting
        registry.resolve(p, "hybrid", with_block)


def test_hybrid_auto_falls_back_when_a_cached_choice_refuses_the_weight(monkeypatch):
    without = sparsecnn.to_sparse(sparse_weight((16, 8, 3, 3), 0.9,
                                                torch.Generator().manual_seed(3)), "csr")
    monkeypatch.setattr(dispatch, "choose", lambda problem, **kw: "hybrid")
    x = torch.randn(1, 8, 9, 9)
    y = sparsecnn.conv2d(x, without, None, 1, 1, algo="auto")
    torch.testing.assert_close(y, F.conv2d(x, without.to_dense(), None, 1, 1), **tolerances(72))


def test_tuning_measures_hybrid_on_a_planted_block(tmp_path):
    from sparsecnn.dispatch import TuningCache, tune

    ws = sparsecnn.to_sparse(planted(k=32, c=32, rows=slice(0, 32), cols=slice(0, 16)), "csr")
    x = torch.randn(1, 32, 12, 12)
    _, p, _, _ = conv2d_problem(x, ws, None, 1, 1)
    res = tune(p, lambda name: sparsecnn.conv2d(x, ws, None, 1, 1, algo=name), weight=ws,
               cache=TuningCache(tmp_path / "t.json"), min_time_s=0.01, max_time_s=0.05)
    m = {mm.name: mm for mm in res.measurements}
    assert m["hybrid"].status == "ok" and m["hybrid"].median_ms is not None
    res2 = tune(p, lambda name: sparsecnn.conv2d(x, ws, None, 1, 1, algo=name),
                cache=TuningCache(tmp_path / "t2.json"), min_time_s=0.01, max_time_s=0.05)
    assert "hybrid" not in {mm.name for mm in res2.measurements}


def test_hybrid_on_pruned_real_weights_finds_no_block(resnet20_real):
    from sparsecnn import prune

    model, _ = resnet20_real
    import copy
    m = copy.deepcopy(model)
    prune.magnitude_prune_(m, 0.9, skip_first_conv=True)
    prune.finalize_(m)
    convs = [mod for n, mod in m.named_modules() if isinstance(mod, nn.Conv2d) and n != "conv1"]
    refused = [hybrid._weight_check(sparsecnn.to_sparse(c.weight.detach(), "csr"), None)
               for c in convs]
    assert all(refused)  # the honest answer at 90 %: no 16x16 tile reaches density 0.5


# ---------------------------------------------------------------------------------------------
# fx rewrite: conv -> [ReLU] -> MaxPool2d
# ---------------------------------------------------------------------------------------------
def test_find_pool_fusions_alexnet_and_vgg16():
    a = snn.find_pool_fusions(models.build("alexnet"))
    assert a == {"conv1": ("relu1", "pool1"), "conv2": ("relu2", "pool2"),
                 "conv5": ("relu5", "pool5")}
    v = snn.find_pool_fusions(models.build("vgg16"))
    assert sorted(v) == ["conv1_2", "conv2_2", "conv3_3", "conv4_3", "conv5_3"]
    assert v["conv3_3"] == ("relu3_3", "pool3")
    # an unfolded BatchNorm between conv and ReLU breaks the chain (sparsify_ folds it first)
    assert snn.find_pool_fusions(models.build("vgg16", batch_norm=True)) == {}


class _Shared(nn.Module):
    """A pool module called twice, a conv whose output has two readers, a pool with indices."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.c2 = nn.Conv2d(8, 8, 3, padding=1)
        self.c3 = nn.Conv2d(8, 8, 3, padding=1)
        self.c4 = nn.Conv2d(8, 8, 3, padding=1)
        self.relu = nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.ipool = nn.MaxPool2d(2, return_indices=True)
        self.ok_relu = nn.ReLU()
        self.ok_pool = nn.MaxPool2d(2, ceil_mode=True)

    def forward(self, x):
        x = self.pool(self.c1(x))          # pool shared with the next line: not fused
        y = self.c2(x)
        x = self.pool(y) + y[:, :, ::2, ::2]  # c2's output read twice: not fused
        x, _ = self.ipool(self.c3(x))     # indices: not fused
        return self.ok_pool(self.ok_relu(self.c4(x)))


def test_find_pool_fusions_only_where_equivalent():
    assert snn.find_pool_fusions(_Shared()) == {"c4": ("ok_relu", "ok_pool")}


def _prune_(model, sparsity=0.9):
    from sparsecnn import prune
    convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    prune.magnitude_prune_(model, sparsity, layers=convs[1:])
    prune.finalize_(model)
    return model


class _TinyVGG(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.relu2 = nn.ReLU()
        self.pool2 = nn.MaxPool2d(2, 2)
        self.conv3 = nn.Conv2d(32, 32, 3, padding=1)
        self.relu3 = nn.ReLU()
        self.pool3 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.fc = nn.Linear(32 * 4 * 4, 10)

    def forward(self, x):
        x = self.relu1(self.bn1(self.conv1(x)))
        x = self.pool2(self.relu2(self.conv2(x)))
        x = self.pool3(self.relu3(self.conv3(x)))
        return self.fc(torch.flatten(x, 1))


def test_sparsify_fuses_pooling_and_stays_exact(tmp_path, monkeypatch):
    monkeypatch.setenv("SPARSECNN_CACHE_DIR", str(tmp_path))
    torch.manual_seed(0)
    model = _TinyVGG()
    for bn in [model.bn1]:
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2)
    model.eval()
    _prune_(model)
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        ref = model(x)
    snn.sparsify_(model, example_input=x, min_sparsity=0.5)
    assert isinstance(model.conv2, snn.SparseConvPool2d) and model.conv2.relu
    assert isinstance(model.conv3, snn.SparseConvPool2d) and model.conv3.ceil_mode
    assert type(model.pool2) is nn.Identity and type(model.relu3) is nn.Identity
    assert not isinstance(model.conv1, snn.SparseConvPool2d)   # no pool after conv1
    rows = {r["name"]: r for r in snn.layer_table(model)}
    cands = rows["conv3"]["candidates"]
    assert {"dense", "im2col_spmm", "fused_ref"} <= set(cands)  # unfused paths vs fused
    assert model.conv3.tuning and all("act_density" in t for t in model.conv3.tuning.values())
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(snn.compact(model)(x), ref, rtol=1e-4, atol=1e-4)
    path = snn.save(model, tmp_path / "m.safetensors")
    with torch.no_grad():  # into a fresh dense skeleton: the fused layers come back fused
        loaded = snn.load(path, model=_TinyVGG())
        assert isinstance(loaded.conv3, snn.SparseConvPool2d) and loaded.conv3.ceil_mode
        assert type(loaded.pool2) is nn.Identity
        torch.testing.assert_close(loaded(x), ref, rtol=1e-4, atol=1e-4)


class _DenseFirst(nn.Module):
    """An unpruned first conv + ReLU + max-pool (AlexNet's conv1 / pool1), then a pruned one."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 5, stride=2, padding=2)
        self.relu1 = nn.ReLU()
        self.pool1 = nn.MaxPool2d(3, 2)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1)

    def forward(self, x):
        return self.conv2(self.pool1(self.relu1(self.conv1(x))))


def test_dense_conv_fused_with_pool_is_tuned(tmp_path, monkeypatch):
    """A conv left dense (under min_sparsity) that is followed by a pool is fused and tuned:
    ``fused_dense`` (dense conv, then the fused kernels' pooling) is among its candidates and
    the result stays exact; untuned, the heuristic runs it dense."""
    monkeypatch.setenv("SPARSECNN_CACHE_DIR", str(tmp_path))
    torch.manual_seed(3)
    model = _prune_(_DenseFirst().eval())  # conv2 at 90 %, conv1 dense
    x = torch.randn(2, 3, 31, 31)
    with torch.no_grad():
        ref = model(x)
    untuned = snn.sparsify_(copy.deepcopy(model), tune=False, min_sparsity=0.5)
    assert isinstance(untuned.conv1, snn.SparseConvPool2d) and untuned.conv1.algo == "auto"
    assert type(untuned.pool1) is nn.Identity
    assert dispatch.choose(untuned.conv1.problem(tuple(x.shape)), use_cache=False) == "dense"
    snn.sparsify_(model, example_input=x, min_sparsity=0.5)
    rows = {r["name"]: r for r in snn.layer_table(model)}
    assert {"dense", "fused_dense"} <= set(rows["conv1"]["candidates"])
    assert rows["conv1"]["kernel"] in rows["conv1"]["candidates"]
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(untuned(x), ref, rtol=1e-4, atol=1e-4)


def test_sparsify_without_pool_fusion_keeps_pools():
    model = _TinyVGG().eval()
    _prune_(model)
    snn.sparsify_(model, tune=False, fuse_pool=False)
    assert type(model.pool2) is nn.MaxPool2d and not isinstance(model.conv2, snn.SparseConvPool2d)


def test_sparse_conv_pool_module_errors():
    conv = snn.SparseConv2d(sparsecnn.to_sparse(torch.randn(4, 3, 3, 3), "csr"), padding=1)
    with pytest.raises(TypeError, match="nn.MaxPool2d"):
        snn.SparseConvPool2d.from_conv(conv, nn.AvgPool2d(2))
    with pytest.raises(ValueError, match="return_indices"):
        snn.SparseConvPool2d.from_conv(conv, nn.MaxPool2d(2, return_indices=True))
    with pytest.raises(ValueError, match="unknown conv2d_pool kernel"):
        snn.SparseConvPool2d(conv.weight, pool_kernel=2, algo="nope")
    m = snn.SparseConvPool2d.from_conv(conv, nn.MaxPool2d(2)).eval()
    with pytest.raises(ValueError, match="smaller than the dilated pool window"):
        m(torch.randn(1, 3, 1, 1))
    with pytest.raises(ValueError, match="3 input channels"):
        m(torch.randn(1, 4, 8, 8))
