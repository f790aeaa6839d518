"""Quantization: error bounds, codebook size, zeros preserved, byte counts, model fake-quant."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sparsecnn import models, prune, quant


def _pruned_weight(shape=(32, 16, 3, 3), sparsity=0.8, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(shape, generator=g) * torch.linspace(0.1, 3.0, shape[0]).view(-1, *[1] * (len(shape) - 1))
    if sparsity == 0:
        return w
    thr = w.abs().flatten().kthvalue(int(sparsity * w.numel())).values
    return torch.where(w.abs() > thr, w, torch.zeros(()))


def test_fp16_exact_cast_and_bytes():
    w = _pruned_weight()
    q = quant.quantize_fp16(w)
    assert torch.equal(q.dequantize(), w.half().float())
    nnz = int((w != 0).sum())
    assert q.nnz == nnz
    assert q.nbytes == 2 * nnz + 4 * (nnz + 32 + 1)
    assert q.fp32_nbytes == 4 * nnz + 4 * (nnz + 32 + 1)
    dense = quant.quantize_fp16(w, storage="dense")
    assert dense.nbytes == 2 * w.numel()


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("shape", [(32, 16, 3, 3), (10, 64), (3, 1, 1, 1)])
def test_int8_error_bound_and_zeros(symmetric, shape):
    w = _pruned_weight(shape, 0.5)
    w[0] = 0.0  # an all-zero channel
    if not symmetric:
        w[-1] = w[-1].abs()  # an all-positive channel (zero-point at the range's end)
    q = quant.quantize_int8(w, symmetric=symmetric)
    d = q.dequantize()
    view = (-1,) + (1,) * (len(shape) - 1)
    bound = q.scale.view(view) / 2 + 1e-6 * w.abs().amax()
    assert torch.all((d - w).abs() <= bound)
    assert torch.all(d[w == 0] == 0)
    assert torch.all(d[0] == 0)
    if symmetric:
        assert q.q.dtype == torch.int8 and int(q.q.abs().max()) <= 127
        assert torch.all(q.zero_point == 0)
    else:
        assert q.q.dtype == torch.uint8
        assert int(q.zero_point.min()) >= 0 and int(q.zero_point.max()) <= 255
    k = shape[0]
    nnz = int((w != 0).sum())
    meta = 4 * k + (0 if symmetric else k)
    assert q.nbytes == nnz + meta + 4 * (nnz + k + 1)
    assert q.method == ("int8_sym" if symmetric else "int8_asym")


def test_int8_per_channel_scales():
    w = _pruned_weight((8, 4, 3, 3), 0.0)
    q = quant.quantize_int8(w)
    expected = w.reshape(8, -1).abs().amax(1) / 127
    torch.testing.assert_close(q.scale, expected)


@pytest.mark.parametrize("bits", [1, 2, 4, 5])
def test_kmeans_codebook(bits):
    w = _pruned_weight((64, 32, 3, 3), 0.9)
    q = quant.quantize_kmeans(w, bits)
    d = q.dequantize()
    nz = d[w != 0]
    assert torch.all(d[w == 0] == 0)
    assert torch.unique(nz).numel() <= 2 ** bits and q.codebook.numel() <= 2 ** bits
    # every nonzero maps to its nearest centroid
    cb = q.codebook.float()
    nearest = cb[(w[w != 0][:, None] - cb[None]).abs().argmin(1)]
    torch.testing.assert_close(nz, nearest)
    nnz = int((w != 0).sum())
    assert q.nbytes == math.ceil(nnz * bits / 8) + 4 * q.codebook.numel() + 4 * (nnz + 64 + 1)
    if bits == 4:  # 16 centroids on a bimodal pruned distribution: all used, small error
        assert torch.unique(nz).numel() == 16
        assert float((d - w).abs().max()) < 0.25 * float(w.abs().max())


def test_kmeans_few_values_exact_and_fp16_codebook():
    w = torch.tensor([[0.0, 1.0, -2.0, 1.0], [0.5, 0.0, 0.0, -2.0]])
    q = quant.quantize_kmeans(w, 2)
    assert torch.equal(q.dequantize(), w)
    q16 = quant.quantize_kmeans(_pruned_weight(), 4, codebook_dtype=torch.float16)
    assert q16.codebook.dtype == torch.float16 and q16.meta_nbytes == 2 * q16.codebook.numel()
    assert torch.equal(quant.quantize_kmeans(torch.zeros(4, 4)).dequantize(), torch.zeros(4, 4))


def test_kmeans_deterministic_and_subsample():
    w = _pruned_weight((64, 64, 3, 3), 0.5)
    a = quant.quantize_kmeans(w, 4, max_samples=5000)
    b = quant.quantize_kmeans(w, 4, max_samples=5000)
    assert torch.equal(a.dequantize(), b.dequantize())


@pytest.mark.parametrize("call, match", [
    (lambda w: quant.quantize_kmeans(w, 0), "bits"),
    (lambda w: quant.quantize_kmeans(w, 17), "bits"),
    (lambda w: quant.quantize_kmeans(w, 4, iters=0), "iters"),
    (lambda w: quant.quantize_kmeans(w, 4, codebook_dtype=torch.int8), "codebook_dtype"),
    (lambda w: quant.quantize(w, "int4"), "unknown quantization method 'int4'"),
    (lambda w: quant.quantize(w, "fp16", bits=3), "fp16"),
    (lambda w: quant.quantize_int8(w, storage="coo"), "storage"),
    (lambda w: quant.quantize_fp16(w * float("nan")), "NaN"),
    (lambda w: quant.quantize_fp16(torch.zeros(0, 3)), "shape"),
])
def test_bad_args(call, match):
    with pytest.raises(ValueError, match=match):
        call(_pruned_weight((4, 4)))


def test_bad_types():
    with pytest.raises(TypeError):
        quant.quantize_fp16(np.zeros((2, 2), np.float32))
    with pytest.raises(TypeError):
        quant.quantize_int8(torch.zeros(2, 2, dtype=torch.int32))


@pytest.mark.parametrize("method, kw", [("fp16", {}), ("int8_sym", {}), ("int8_asym", {}),
                                        ("kmeans", {"bits": 4})])
def test_quantize_model_fake_quant(method, kw):
    torch.manual_seed(0)
    model = models.build("smallcnn")
    prune.magnitude_prune_(model, 0.75)  # masks stay attached
    before = {n: m.weight.detach().clone() for n, m in models.conv_layers(model)}
    x = torch.randn(8, 1, 8, 8)
    model.eval()
    ref = model(x)
    rows = quant.quantize_model_(model, method, **kw)
    assert [r["layer"] for r in rows] == ["conv1", "conv2", "fc"]
    for r in rows:
        w = dict(models.conv_layers(model))[r["layer"]].weight.detach()
        assert torch.all(w[before[r["layer"]] == 0] == 0)
        assert r["nnz"] == int((before[r["layer"]] != 0).sum())
        assert r["nbytes"] < r["fp32_nbytes"]
        assert r["nbytes"] == r["value_nbytes"] + r["meta_nbytes"] + r["index_nbytes"]
        if method == "kmeans":
            assert r["distinct_nonzeros"] <= 16
    assert (model(x) - ref).abs().max() < 0.2 * ref.abs().max()
    with pytest.raises(ValueError, match="unknown quantization method"):
        quant.quantize_model_(model, "bf8")


def test_finetune_kmeans_keeps_codebook_and_zeros():
    from sparsecnn import data

    torch.manual_seed(0)
    model = models.build("smallcnn")
    train, _ = data.load_digits()
    loader = prune.make_loader(torch.utils.data.Subset(train, range(256)), 64)
    prune.train(model, loader, 1, 0.05, progress=False)
    prune.magnitude_prune_(model, 0.6)
    zeros = {n: (m.weight == 0).clone() for n, m in models.conv_layers(model)}
    q0 = quant.quantize_kmeans(dict(models.conv_layers(model))["conv2"].weight.detach(), 3)
    out = quant.finetune_kmeans_(model, loader, 1, 0.05, bits=3, progress=False)
    assert not prune.masks_of(model) and not any("parametrizations" in k for k in model.state_dict())
    for name, module in models.conv_layers(model):
        w = module.weight.detach()
        assert torch.all(w[zeros[name]] == 0)
        assert torch.unique(w[w != 0]).numel() <= 8
        assert module.weight.requires_grad
    assert not torch.equal(out["codebooks"]["conv2"], q0.codebook.float())  # centroids moved
    assert len(out["history"]) == 1
