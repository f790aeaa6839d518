"""Analyses of sparsecnn.analysis on small synthetic weights with known answers."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from sparsecnn import analysis as A


def _weight(k=8, c=6, r=3, s=3, density=0.3, seed=0):
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((k, c, r, s)).astype(np.float32)
    w[rng.random(w.shape) >= density] = 0.0
    return w


# -- sparsity summary ------------------------------------------------------------------------
def test_layer_sparsity_known_structure():
    w = np.ones((5, 4, 3, 3), dtype=np.float32)
    w[1] = 0                      # output channel 1 (a filter) all zero
    w[3] = 0                      # and output channel 3
    w[:, 2] = 0                   # input channel 2 zero in every filter
    w[0, 0, 1, 1] = 0             # one element more
    w[4, 1] = 0                   # one more R x S kernel
    row = A.layer_sparsity(w, "conv", formats=("csr",))
    nnz = int(np.count_nonzero(w))
    assert row["nnz"] == nnz and row["numel"] == w.size
    assert row["filter_sparsity"] == pytest.approx(2 / 5)
    assert row["channel_sparsity"] == pytest.approx(1 / 4)
    # zero kernels: rows 1 and 3 (8), column 2 in rows 0, 2, 4 (3), (4, 1) (1)
    assert row["zero_filters"] == 12 and row["kernel_sparsity"] == pytest.approx(12 / 20)
    assert row["element_sparsity"] == pytest.approx(1 - nnz / w.size)
    # CSR: rowptr (K+1) int32 + colidx, values (nnz) int32 / float32
    assert row["bytes"]["csr"] == 4 * (5 + 1) + 8 * nnz
    assert row["dense_bytes"] == 4 * w.size


def test_format_bytes_every_format_and_unknown():
    from sparsecnn.formats import FORMATS

    sizes, errors = A.format_bytes(_weight())
    assert set(sizes) == set(FORMATS)
    assert all(v is None or v > 0 for v in sizes.values())
    assert set(errors) == {f for f, v in sizes.items() if v is None}
    with pytest.raises(ValueError, match="unknown format"):
        A.format_bytes(_weight(), ("nope",))


def test_model_sparsity_total_and_empty():
    rows = A.model_sparsity({"a": _weight(seed=1), "b": _weight(k=4, c=8, seed=2)})
    assert [r["name"] for r in rows] == ["a", "b", "total"]
    assert rows[2]["nnz"] == rows[0]["nnz"] + rows[1]["nnz"]
    assert rows[2]["numel"] == rows[0]["numel"] + rows[1]["numel"]
    with pytest.raises(ValueError, match="no Conv2d"):
        A.model_sparsity({})


def test_density_profile():
    w = np.zeros((3, 2, 3, 3), dtype=np.float32)
    w[0, 0] = 1.0                  # a full filter: local density 1
    w[2, 1, 0, :2] = -2.0          # 2 of 9
    p = A.density_profile(w)
    np.testing.assert_array_equal(p["filter_nnz"], [[9, 0], [0, 0], [0, 2]])
    np.testing.assert_allclose(p["local_density"][0, 0], 1.0)
    assert p["global_density"] == pytest.approx(11 / w.size)
    np.testing.assert_array_equal(p["out_channel_nnz"], [9, 0, 2])
    np.testing.assert_array_equal(p["in_channel_nnz"], [9, 2])
    assert p["filter_nnz_hist"][0] == 4 and p["filter_nnz_hist"][9] == 1 and p["filter_nnz_hist"][2] == 1
    assert p["nonzero_filter_density"] == pytest.approx((1 + 2 / 9) / 2)


def test_bad_weight_inputs():
    with pytest.raises(ValueError, match="4-D"):
        A.layer_sparsity(np.zeros((4, 4), np.float32))
    with pytest.raises(TypeError, match="torch.Tensor"):
        A.layer_sparsity([[1.0]])


# -- load balance ----------------------------------------------------------------------------
def _nnz_partition(rowptr, nparts):
    """Test-local nnz-balanced partition (rows split where the prefix nnz crosses i/T)."""
    rowptr = np.asarray(rowptr, dtype=np.int64)
    targets = rowptr[-1] * np.arange(1, nparts) / nparts
    inner = np.searchsorted(rowptr, targets, side="left")
    return np.concatenate([[0], inner, [rowptr.size - 1]])


def test_load_balance_known_imbalance():
    w = np.zeros((4, 2, 3, 3), dtype=np.float32)
    w[0, 0, :2, :] = 1.0          # row 0: 6 nonzeros; rows 1..3: 2 each
    for k in (1, 2, 3):
        w[k, 1, 0, :2] = 1.0
    lb = A.load_balance(w, 2, partition=_nnz_partition)
    np.testing.assert_array_equal(lb["naive"]["nnz_per_thread"], [8, 4])
    assert lb["naive"]["imbalance"] == pytest.approx(8 / 6)
    np.testing.assert_array_equal(lb["engine"]["nnz_per_thread"], [6, 6])
    assert lb["engine"]["imbalance"] == pytest.approx(1.0)
    assert lb["gain"] == pytest.approx(8 / 6)


def test_load_balance_engine_partition_if_installed():
    part = A.balance.engine_partition()
    if part is None:
        pytest.skip("sparsecnn.kernels.cpu.direct.partition_rows not installed")
    w = _weight(k=64, c=16, density=0.2, seed=3)
    w[:8] *= 0  # front rows empty: a naive split is unbalanced
    lb = A.load_balance(w, 4)
    assert lb["engine"]["nnz_per_thread"].sum() == lb["nnz"]
    assert lb["engine"]["imbalance"] <= lb["naive"]["imbalance"] + 1e-9


def test_load_balance_bad_input():
    with pytest.raises(ValueError, match="threads"):
        A.load_balance(_weight(), 0)
    with pytest.raises(ValueError, match="boundaries"):
        A.load_balance(_weight(), 2, partition=lambda rp, t: np.array([0, 9, 3]))


# -- dense blocks and the hybrid plan --------------------------------------------------------
def _planted(seed=0):
    rng = np.random.default_rng(seed)
    k, c = 64, 96
    w = rng.standard_normal((k, c, 3, 3)).astype(np.float32)
    w[rng.random(w.shape) >= 0.02] = 0.0            # 2 % background
    rows = np.sort(rng.choice(k, 16, replace=False))
    cols = np.sort(rng.choice(c, 16, replace=False))
    w[np.ix_(rows, cols)] = rng.uniform(0.5, 1.0, (16, 16, 3, 3)).astype(np.float32)  # fully dense
    return w, rows, cols


def test_dense_blocks_finds_planted_block():
    w, rows, cols = _planted()
    res = A.dense_blocks(w, threshold=0.5, tile=(16, 16), reorder=True)
    assert len(res["blocks"]) == 1
    b = res["blocks"][0]
    np.testing.assert_array_equal(b["rows"], rows)
    np.testing.assert_array_equal(b["cols"], cols)
    assert b["nnz"] == 16 * 16 * 9 and b["density"] == 1.0
    assert res["share"] == pytest.approx(16 * 16 * 9 / np.count_nonzero(w))


def test_dense_blocks_without_reorder_misses_scattered_block():
    w, _, _ = _planted()
    res = A.dense_blocks(w, threshold=0.5, tile=(16, 16), reorder=False)
    assert res["blocks"] == [] and res["share"] == 0.0
    with pytest.raises(ValueError, match="threshold"):
        A.dense_blocks(w, threshold=0.0)
    with pytest.raises(ValueError, match="tile"):
        A.dense_blocks(w, tile=(0, 4))


def test_split_weight_adds_up():
    w, _, _ = _planted(1)
    res = A.dense_blocks(w, threshold=0.5, tile=(16, 16))
    rest, subs = A.split_weight(w, res["blocks"])
    back = rest.copy()
    for b, sub in zip(res["blocks"], subs):
        back[np.ix_(b["rows"], b["cols"])] += sub
    np.testing.assert_array_equal(back, w)


def test_hybrid_estimate_cost_model():
    blocks = {"block_elements": 1000, "nnz": 600, "block_nnz": 500}
    rates = {"output_pixels": 100, "dense_gflops": 100.0, "sparse_useful_gflops": 10.0,
             "dense_ms": 1.0, "sparse_ms": 0.5}
    est = A.hybrid_estimate(blocks, rates)
    assert est["hybrid_dense_part_ms"] == pytest.approx(2 * 1000 * 100 / 100e6)
    assert est["hybrid_sparse_part_ms"] == pytest.approx(2 * 100 * 100 / 10e6)
    assert est["hybrid_ms"] == pytest.approx(est["hybrid_dense_part_ms"] + est["hybrid_sparse_part_ms"])


def test_measure_hybrid_matches_full_conv():
    w, _, _ = _planted(2)
    res = A.dense_blocks(w, threshold=0.5, tile=(16, 16))
    x = torch.randn(1, w.shape[1], 9, 9)
    out = A.measure_hybrid(w, res, x, (1, 1), (1, 1), (1, 1), repeats=2)
    assert out["matches"] and out["nblocks"] == 1 and out["hybrid_ms"] > 0
    rates = A.measure_rates(w, x, (1, 1), (1, 1), (1, 1), repeats=2)
    assert rates["dense_gflops"] > 0 and rates["sparse_useful_gflops"] > 0


# -- threshold sweep -------------------------------------------------------------------------
def test_threshold_sweep_density_follows_target():
    w = np.arange(1, 101, dtype=np.float32).reshape(4, 25, 1, 1)   # |w| = 1..100, distinct
    rows = A.threshold_sweep({"l": w}, fractions=(0.0, 0.5, 0.9))
    assert [r["density"] for r in rows] == pytest.approx([1.0, 0.5, 0.1])
    assert rows[1]["threshold"] == 50.0 and rows[2]["threshold"] == 90.0
    assert rows[0]["accuracy"] is None
    with pytest.raises(ValueError, match="fractions"):
        A.threshold_sweep({"l": w}, fractions=(1.0,))


def test_threshold_sweep_accuracy_with_model():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(2, 3, 3), torch.nn.Flatten())
    x = torch.randn(20, 2, 3, 3)
    labels = model(x).argmax(1).detach()           # the unpruned model is 100 % right
    ev = A.accuracy_evaluator(model, x, labels)
    before = model[0].weight.detach().clone()
    rows = A.threshold_sweep({"0": model[0].weight}, fractions=(0.0, 0.99), evaluate=ev)
    assert rows[0]["accuracy"] == 1.0
    assert 0.0 <= rows[1]["accuracy"] <= 1.0
    torch.testing.assert_close(model[0].weight.detach(), before)   # restored


# -- ineffectual work ------------------------------------------------------------------------
def _brute_force(w, x, stride, padding):
    """Count MAC classes by explicit loops over im2col columns (the reference)."""
    cols = F.unfold(x, w.shape[2:], padding=padding, stride=stride)   # (N, C R S, L)
    a = (cols != 0).numpy()                                            # (N, CRS, L)
    wn = (w.reshape(w.shape[0], -1) != 0).numpy()                      # (K, CRS)
    n, crs, l = a.shape
    k = wn.shape[0]
    both = eff = 0
    for kk in range(k):
        aw = a & wn[kk][None, :, None]
        eff += int(aw.sum())
        both += int((~a & ~wn[kk][None, :, None]).sum())
    total = n * l * k * crs
    return total, eff, both


@pytest.mark.parametrize("stride,padding", [(1, 1), (2, 0)])
def test_ineffectual_work_matches_brute_force(stride, padding):
    torch.manual_seed(1)
    w = _weight(k=5, c=3, density=0.4, seed=4)
    x = torch.relu(torch.randn(2, 3, 7, 7))
    act = A.activation_nonzero_counts(x, (3, 3), (stride, stride), (padding, padding), (1, 1))
    res = A.ineffectual_work(w, act)
    total, eff, both = _brute_force(torch.from_numpy(w), x, stride, padding)
    assert res["macs_total"] == total
    assert res["macs_effectual"] == eff
    assert res["macs_both_zero"] == both
    assert res["macs_either_zero"] == total - eff
    assert res["macs_weight_zero"] == (total // w.size) * int((w == 0).sum())
    assert 0 < res["skip_act"] < 1 and res["skip_either"] >= max(res["skip_act"], res["skip_weight"])


def test_capture_activation_counts_hooks():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(),
                                torch.nn.Conv2d(4, 2, 3, padding=1))
    x = torch.randn(5, 3, 6, 6)
    acts = A.capture_activation_counts(model, x, ["0", "2"], batch=2)
    assert acts["2"]["images"] == 5 and acts["2"]["positions"] == 5 * 36
    h = torch.relu(model[0](x))
    ref = A.activation_nonzero_counts(h.detach(), (3, 3), (1, 1), (1, 1), (1, 1))
    np.testing.assert_array_equal(acts["2"]["counts"], ref["counts"])
    assert acts["2"]["input_zero_share"] == pytest.approx(float((h == 0).float().mean()), abs=1e-6)
    with pytest.raises(ValueError, match="Conv2d layers"):
        A.capture_activation_counts(model, x, ["1"])


def test_threshold_sweep_on_pruned_weights_spreads_over_nonzeros():
    w = np.arange(1, 101, dtype=np.float32).reshape(4, 25, 1, 1)
    w[w <= 50] = 0                                   # already 50 % sparse
    rows = A.threshold_sweep({"l": w}, fractions=(0.0, 0.5))
    assert [r["density"] for r in rows] == pytest.approx([0.5, 0.25])
    with pytest.raises(ValueError, match="zero"):
        A.threshold_sweep({"l": np.zeros((2, 2, 1, 1), np.float32)})


def test_measure_hybrid_rates_feed_the_cost_model():
    w, _, _ = _planted(3)
    res = A.dense_blocks(w, threshold=0.5, tile=(16, 16))
    x = torch.randn(1, w.shape[1], 7, 7)
    m = A.measure_hybrid(w, res, x, (1, 1), (1, 1), (1, 1), repeats=2)
    assert m["output_pixels"] == 49
    assert m["dense_gflops"] == pytest.approx(2 * w.size * 49 / (m["dense_ms"] * 1e6))
    est = A.hybrid_estimate(res, m)
    assert est["hybrid_ms"] > 0 and est["dense_ms"] == m["dense_ms"]
