"""The roofline model of docs/gpu.md (sparsecnn.bench.roofline), checked against hand arithmetic."""

from __future__ import annotations

import pytest

from sparsecnn.bench import LAYERS, SUITES
from sparsecnn.bench.roofline import H200, roofline, roofline_table


def test_h200_rates():
    # 132 SMs x 1.98 GHz x (128 B / 2 B per fp16) loads x 2 FLOP
    assert H200.gather_tflops("float16") == pytest.approx(132 * 1.98e9 * 64 * 2 / 1e12)
    assert H200.gather_tflops("float32") == pytest.approx(H200.gather_tflops("float16") / 2)
    assert H200.fma_tflops == pytest.approx(132 * 128 * 2 * 1.98e9 / 1e12, rel=1e-3)


def test_vgg16_128x56x56x256_by_hand():
    r = roofline("vgg16-128x56x56x256", 128, 0.99, "float16", pad_copy=False)
    flop = 2 * 256 * 128 * 9 * 128 * 56 * 56
    assert r["dense_gflop"] == pytest.approx(flop / 1e9)
    dense_bytes = (128 * 128 * 56 * 56 + 128 * 256 * 56 * 56 + 256 * 128 * 9) * 2
    assert r["dense_mb"] == pytest.approx(dense_bytes / 1e6)
    assert r["dense_bound"] == "compute"
    assert r["dense_ms"] == pytest.approx(flop / 989.5e12 * 1e3)
    nnz = round(0.01 * 256 * 128 * 9)
    useful = 2 * nnz * 128 * 56 * 56
    assert r["useful_gflop"] == pytest.approx(useful / 1e9)
    assert r["sparse_bound"] == "compute"
    assert r["sparse_ms"] == pytest.approx(useful / (H200.gather_tflops("float16") * 1e12) * 1e3)
    # break-even where (1 - s) x flop / gather rate = the dense floor
    want = 1 - r["dense_ms"] / 1e3 * H200.gather_tflops("float16") * 1e12 / flop
    assert r["break_even"] == pytest.approx(want, abs=1e-4)
    assert r["speedup_ceiling"] == pytest.approx(r["dense_ms"] / r["sparse_ms"])


def test_padding_copy_and_memory_bound_first_layer():
    with_copy = roofline("vgg16-3x224x224x64", 128, 0.9)
    without = roofline("vgg16-3x224x224x64", 128, 0.9, pad_copy=False)
    n_in, n_pad = 128 * 3 * 224 * 224, 128 * 3 * 226 * 226
    assert with_copy["sparse_mb"] - without["sparse_mb"] == pytest.approx(2 * n_pad * 2 / 1e6)
    assert with_copy["dense_bound"] == "memory" and with_copy["break_even"] is None
    assert without["speedup_ceiling"] <= 1.001  # output-bound: sparsity cannot help
    assert n_in < n_pad


def test_denser_is_never_faster_and_bad_input():
    floors = [roofline("vgg16-512x14x14x512", 128, s)["sparse_ms"] for s in (0.8, 0.9, 0.99)]
    assert floors == sorted(floors, reverse=True)
    with pytest.raises(ValueError, match="dtype"):
        roofline("vgg16-512x14x14x512", 128, 0.9, "int8")
    with pytest.raises(ValueError):
        roofline("vgg16-512x14x14x512", 0, 0.9)


def test_table_has_a_row_per_layer():
    specs = [LAYERS[n] for n in SUITES["vgg16-full"]]
    table = roofline_table(specs, 128, (0.9, 0.99))
    lines = table.splitlines()
    assert len(lines) == 2 + len(specs) and lines[2].startswith("| vgg16-3x224x224x64 |")
    assert all(line.count("|") == lines[0].count("|") for line in lines)
