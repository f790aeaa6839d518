"""sparsecnn.spatial: sparse (submanifold / regular / inverse) convolution and pooling on voxels,
against dense torch conv2d / conv3d / conv_transpose3d / max_pool3d at the active sites."""

from __future__ import annotations

import importlib

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sparsecnn import dispatch
from sparsecnn import spatial as sp
from sparsecnn.kernels import registry
from sparsecnn.problem import problem_for
from sparsecnn.spatial import meshes
from sparsecnn.spatial.hashing import build_table, lookup, unique_sorted

ATOL = 1e-4
heuristic = importlib.import_module("sparsecnn.dispatch.heuristic")  # the module, not the function


def random_sparse(batch, channels, shape, density, seed=0):
    """Dense (batch, C, *shape) tensor that is zero outside a random mask, and that mask."""
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand((batch, *shape), generator=g) < density
    x = torch.randn((batch, channels, *shape), generator=g) * mask[:, None]
    return x, mask


def active(dense, mask):
    """Rows of ``dense`` (N, C, *spatial) at the True sites of ``mask``, in lexicographic order."""
    idx = torch.nonzero(mask)
    return dense.movedim(1, -1)[tuple(idx.T)]


def dense_conv(x, w, b, nd, **kw):
    return (F.conv2d if nd == 2 else F.conv3d)(x, w, b, **kw)


def close(a, b, scale=None):
    a, b = a.detach(), b.detach()
    scale = max(1.0, float(b.abs().max())) if scale is None and b.numel() else 1.0
    assert a.shape == b.shape, (a.shape, b.shape)
    if a.numel():
        err = float((a - b).abs().max())
        assert err <= ATOL * scale, f"max |err| {err} > {ATOL * scale}"


# ---------------------------------------------------------------------------------------------
# hash table
def test_hash_table_lookup_and_duplicates():
    rng = np.random.default_rng(0)
    keys = rng.choice(10**9, size=5000, replace=False).astype(np.int64)
    t, dup = build_table(keys)
    assert dup == 0
    for i in rng.integers(0, len(keys), 200):
        assert lookup(t.table, t.shift, t.mask, keys[i]) == i
    absent = np.setdiff1d(rng.integers(0, 10**9, 500), keys)
    assert all(lookup(t.table, t.shift, t.mask, k) == -1 for k in absent)
    _, dup = build_table(np.concatenate([keys, keys[:7]]))
    assert dup == 7


def test_unique_sorted_grows_a_low_estimate():
    keys = np.array([5, -1, 3, 5, 9, 3, -1, 100, 7], dtype=np.int64)
    out, t = unique_sorted(keys, n_hint=1)        # far too small: must rebuild larger
    assert out.tolist() == [3, 5, 7, 9, 100]
    assert [lookup(t.table, t.shift, t.mask, k) for k in out] == [0, 1, 2, 3, 4]


# ---------------------------------------------------------------------------------------------
# SparseTensor: validation and conversions
def test_dense_round_trip():
    x, mask = random_sparse(2, 3, (5, 6, 7), 0.2)
    s = sp.SparseTensor.from_dense(x)
    assert s.n == int(mask.sum()) and s.channels == 3 and s.batch_size == 2
    assert torch.equal(s.to_dense(), x)
    assert torch.equal(sp.SparseTensor(s.features, s.coords, s.spatial_shape).to_dense(), x)


def test_from_points_averages_features():
    xyz = np.array([[0.1, 0.1, 0.1], [0.4, 0.2, 0.3], [1.5, 0.2, 0.0], [0.2, 0.2, 0.2]])
    f = np.array([[1.0], [3.0], [5.0], [2.0]], dtype=np.float32)
    s = sp.SparseTensor.from_points(xyz, 1.0, feats=f, batch=[0, 0, 0, 1], origin=(0, 0, 0))
    assert s.coords.tolist() == [[0, 0, 0, 0], [0, 1, 0, 0], [1, 0, 0, 0]]
    assert s.features[:, 0].tolist() == [2.0, 5.0, 2.0]
    assert s.spatial_shape == (2, 1, 1) and s.batch_size == 2
    occ = sp.SparseTensor.from_points(xyz, 0.5)     # default: occupancy, origin at the minimum
    assert occ.channels == 1 and bool((occ.features == 1).all())
    with pytest.raises(ValueError, match="voxel_size"):
        sp.SparseTensor.from_points(xyz, 0.0)


@pytest.mark.parametrize("feats, coords, shape, kw, exc, match", [
    (torch.ones(2, 1, dtype=torch.float64), [[0, 0, 0], [0, 1, 1]], (4, 4), {}, TypeError, "float32"),
    (torch.ones(2, 1), [[0.0, 0, 0], [0, 1, 1]], (4, 4), {}, TypeError, "integer"),
    (torch.ones(3, 1), [[0, 0, 0], [0, 1, 1]], (4, 4), {}, ValueError, "3 rows"),
    (torch.ones(2), [[0, 0, 0], [0, 1, 1]], (4, 4), {}, ValueError, "2-D"),
    (torch.ones(2, 1), [[0, 0, 0], [0, 1, 1]], (4, 4, 4), {}, ValueError, "dims"),
    (torch.ones(2, 1), [[0, 0, 0], [0, 1, 4]], (4, 4), {}, ValueError, "outside"),
    (torch.ones(2, 1), [[0, 0, 0], [0, -1, 1]], (4, 4), {}, ValueError, "outside"),
    (torch.ones(2, 1), [[0, 0, 0], [2, 1, 1]], (4, 4), {"batch_size": 2}, ValueError, "batch index"),
    (torch.ones(2, 1), [[0, 1, 1], [0, 1, 1]], (4, 4), {}, ValueError, "duplicate"),
    (torch.ones(2, 1), [[0, 0, 0], [0, 1, 1]], (4, 0), {}, ValueError, "positive"),
    (torch.ones(2, 1), [[0, 0, 0], [0, 1, 1]], (4, 4), {"batch_size": 1.0}, TypeError, "int"),
])
def test_sparse_tensor_rejects_bad_input(feats, coords, shape, kw, exc, match):
    with pytest.raises(exc, match=match):
        sp.SparseTensor(feats, torch.tensor(coords), shape, **kw)


def test_conv_rejects_bad_arguments():
    x, _ = random_sparse(1, 4, (6, 6, 6), 0.3)
    s = sp.SparseTensor.from_dense(x)
    with pytest.raises(ValueError, match="C_in = 5"):
        sp.sparse_conv(s, torch.randn(8, 5, 3, 3, 3))
    with pytest.raises(ValueError, match="odd"):
        sp.sparse_conv(s, torch.randn(8, 4, 2, 2, 2))
    with pytest.raises(ValueError, match=r"\(C_out, C_in"):
        sp.sparse_conv(s, torch.randn(8, 4, 3, 3))
    with pytest.raises(TypeError, match="float32"):
        sp.sparse_conv(s, torch.randn(8, 4, 3, 3, 3).double())
    with pytest.raises(ValueError, match="algo"):
        sp.sparse_conv(s, torch.randn(8, 4, 3, 3, 3), algo="magic")
    with pytest.raises(ValueError, match="multiple of 8"):
        sp.sparse_conv(s, torch.randn(6, 4, 3, 3, 3), algo="fused")
    with pytest.raises(KeyError, match="indice_key"):
        sp.sparse_conv(s, torch.randn(4, 4, 3, 3, 3), kind="inverse", indice_key="nope")
    with pytest.raises(ValueError, match="stride"):
        sp.SubMConv3d(4, 4, 3, stride=2)
    with pytest.raises(TypeError, match="SparseTensor"):
        sp.sparse_conv(x, torch.randn(8, 4, 3, 3, 3))


# ---------------------------------------------------------------------------------------------
# submanifold convolution == dense conv at the active sites
@pytest.mark.parametrize("algo", ["fused", "gemm"])
@pytest.mark.parametrize("nd, k, dil, cin, cout, batch, density", [
    (3, 3, 1, 16, 16, 1, 0.1),
    (3, 3, 1, 5, 24, 2, 0.3),      # odd C_in, C_out with an 8-wide remainder panel
    (3, 5, 1, 8, 16, 1, 0.15),
    (3, 3, 2, 4, 8, 2, 0.2),       # dilation
    (3, 1, 1, 7, 16, 1, 0.3),
    (2, 3, 1, 16, 32, 3, 0.2),
    (2, 5, 1, 3, 8, 1, 0.5),
    (3, 3, 1, 16, 16, 1, 1.0),     # every site active (dense)
])
def test_subm_matches_dense(algo, nd, k, dil, cin, cout, batch, density):
    shape = (9, 8, 7) if nd == 3 else (13, 11)
    x, mask = random_sparse(batch, cin, shape, density, seed=k * 7 + cin)
    s = sp.SparseTensor.from_dense(x, mask)
    w = torch.randn(cout, cin, *(k,) * nd) * 0.2
    b = torch.randn(cout)
    y = sp.sparse_conv(s, w, b, kind="subm", dilation=dil, algo=algo)
    ref = dense_conv(x, w, b, nd, padding=dil * (k - 1) // 2, dilation=dil)
    assert y.coord_set is s.coord_set
    close(y.features, active(ref, mask))


def test_subm_gemm_handles_channels_not_multiple_of_8():
    x, mask = random_sparse(1, 3, (6, 6, 6), 0.3)
    s = sp.SparseTensor.from_dense(x, mask)
    w = torch.randn(5, 3, 3, 3, 3)
    p = sp.SparseConvProblem("subm", 3, (3, 3, 3), 1, 1, 3, 5)
    assert dispatch.choose(p) == "gemm"
    close(sp.sparse_conv(s, w).features, active(F.conv3d(x, w, padding=1), mask))


def test_problem_is_a_registered_op_with_registry_kernels():
    assert problem_for("sparse_conv") is sp.SparseConvProblem
    p = sp.SparseConvProblem("subm", 3, (3, 3, 3), 100, 100, 16, 16, batch_size=2)
    assert p.volume == 27 and p.batch == 2 and hash(p) == hash(p.replace())
    assert p.key().startswith("sparse_conv|kind=subm,ndim=3,kernel_size=3x3x3,n_in=100")
    assert p.dense_flops == 2 * 100 * 27 * 16 * 16 and p.pair_flops(10) == 2 * 10 * 16 * 16
    assert set(sp.ALGORITHMS) == {"fused", "gemm"} == set(registry.names("sparse_conv"))
    assert [k.name for k in registry.candidates(p)] == ["fused", "gemm"]
    assert dispatch.choose(p) == "fused"
    odd = p.replace(c_out=12)
    assert [k.name for k in registry.candidates(odd)] == ["gemm"]
    assert "does not support" in registry.get("sparse_conv", "fused").why_not(odd)
    with pytest.raises(TypeError, match="float32"):
        registry.resolve(p.replace(dtype="float64"), "gemm")
    with pytest.raises(ValueError, match="runs on"):
        registry.resolve(p.replace(device="cuda"), "fused")
    with pytest.raises(ValueError, match="no sparse_conv kernel"):
        dispatch.heuristic(p.replace(device="cuda"))


def test_sparse_conv_dispatches_through_the_registry(monkeypatch):
    x, mask = random_sparse(1, 4, (5, 6, 7), 0.3)
    s = sp.SparseTensor.from_dense(x, mask)
    w = torch.randn(8, 4, 3, 3, 3)
    seen = []
    real = registry.get("sparse_conv", "gemm")

    def spy(prepared, feats, bias, rulebook):
        seen.append((prepared.problem, tuple(prepared.operand.shape), rulebook.n_out))
        return real.run(prepared, feats, bias, rulebook)

    fake = registry.Kernel(name="spy", op="sparse_conv", run=spy, formats=("dense",))
    registry.register(fake)
    monkeypatch.setitem(heuristic.PREFERENCE, "sparse_conv", ("spy", "fused", "gemm"))
    try:
        y = sp.sparse_conv(s, w)
        ((p, shape, n_out),) = seen
        assert p == sp.problem_of(s.features, torch.zeros(27, 4, 8), sp.get_rulebook(
            s, sp.make_geometry("subm", 3, 3))[0])
        assert (p.n_in, p.c_in, p.c_out, shape, n_out) == (s.n, 4, 8, (27, 4, 8), s.n)
        close(y.features, active(F.conv3d(x, w, padding=1), mask))
        with pytest.raises(ValueError, match="algo 'fused' cannot run.*multiple of 8"):
            sp.sparse_conv(s, torch.randn(6, 4, 3, 3, 3), algo="fused")
    finally:
        registry.unregister("sparse_conv", "spy")
    assert dispatch.choose(p) == "fused"


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10**6), n=st.integers(0, 60), batch=st.integers(1, 3),
       side=st.integers(1, 7), cin=st.integers(1, 9), cout=st.sampled_from([8, 16, 24]))
def test_subm_random_sites(seed, n, batch, side, cin, cout):
    rng = np.random.default_rng(seed)
    shape = (side, side + 1, 3)
    total = batch * int(np.prod(shape))
    lin = rng.choice(total, size=min(n, total), replace=False)
    coords = np.stack(np.unravel_index(lin, (batch, *shape)), axis=1).astype(np.int32)
    feats = torch.from_numpy(rng.standard_normal((len(lin), cin)).astype(np.float32))
    s = sp.SparseTensor(feats, coords, shape, batch_size=batch)   # unsorted coords
    w = torch.from_numpy(rng.standard_normal((cout, cin, 3, 3, 3)).astype(np.float32))
    y = sp.sparse_conv(s, w)
    ref = F.conv3d(s.to_dense(), w, padding=1)
    close(y.features, ref.movedim(1, -1)[tuple(torch.from_numpy(coords).long().T)])


def test_batches_do_not_mix():
    # the same site in two batch entries, neighbours only in batch 0
    coords = torch.tensor([[0, 2, 2, 2], [0, 2, 2, 3], [1, 2, 2, 2], [1, 0, 0, 0]])
    feats = torch.tensor([[1.0], [10.0], [100.0], [1000.0]])
    s = sp.SparseTensor(feats, coords, (4, 4, 4))
    w = torch.ones(8, 1, 3, 3, 3)
    y = sp.sparse_conv(s, w).features[:, 0]
    assert y.tolist() == [11.0, 11.0, 100.0, 1000.0]


def test_empty_and_single_site():
    w = torch.randn(8, 2, 3, 3, 3)
    b = torch.randn(8)
    e = sp.SparseTensor(torch.zeros(0, 2), torch.zeros(0, 4, dtype=torch.int32), (5, 5, 5))
    for kind in ("subm", "conv"):
        y = sp.sparse_conv(e, w, b, kind=kind, stride=2 if kind == "conv" else 1, padding=1)
        assert y.features.shape == (0, 8) and y.n == 0
    one = sp.SparseTensor(torch.tensor([[1.0, 2.0]]), torch.tensor([[0, 4, 4, 4]]), (5, 5, 5))
    y = sp.sparse_conv(one, w, b)
    close(y.features, (w[:, :, 1, 1, 1] @ torch.tensor([1.0, 2.0]) + b)[None])
    y = sp.sparse_conv(one, w, b, kind="conv", padding=1)          # grows to 3 x 3 x 3 clipped
    assert y.n == 8                                                # the corner: 2 x 2 x 2 in range


# ---------------------------------------------------------------------------------------------
# regular and inverse convolution, pooling
@pytest.mark.parametrize("algo", ["fused", "gemm"])
@pytest.mark.parametrize("nd, k, stride, pad, dil, batch", [
    (3, 3, 1, 1, 1, 1),
    (3, 3, 2, 1, 1, 2),
    (3, 2, 2, 0, 1, 1),
    (3, 5, 2, 2, 1, 1),
    (3, 3, 2, 0, 2, 1),
    (2, 3, 2, 1, 1, 2),
    (2, 3, 1, 0, 1, 1),
])
def test_regular_conv_matches_dense(algo, nd, k, stride, pad, dil, batch):
    shape = (11, 10, 9) if nd == 3 else (15, 12)
    x, mask = random_sparse(batch, 5, shape, 0.08, seed=stride * 10 + k)
    s = sp.SparseTensor.from_dense(x, mask)
    w = torch.randn(16, 5, *(k,) * nd) * 0.3
    y = sp.sparse_conv(s, w, None, kind="conv", stride=stride, padding=pad, dilation=dil, algo=algo)
    ref = dense_conv(x, w, None, nd, stride=stride, padding=pad, dilation=dil)
    assert y.spatial_shape == tuple(ref.shape[2:])
    # the output sites: every site whose window holds an active input
    reach = dense_conv(mask[:, None].float(), torch.ones(1, 1, *(k,) * nd), None, nd,
                       stride=stride, padding=pad, dilation=dil)[:, 0] > 0
    assert torch.equal(y.to_dense().abs().sum(1) > 0, (ref.abs().sum(1) > 0) & reach)
    assert y.n == int(reach.sum())
    close(y.to_dense(), ref)
    coords = y.coords.long()
    assert torch.equal(coords, torch.nonzero(reach))   # lexicographic order


@pytest.mark.parametrize("nd", [2, 3])
def test_down_up_round_trip(nd):
    shape = (12, 10, 8) if nd == 3 else (16, 14)
    x, mask = random_sparse(2, 8, shape, 0.15, seed=3)
    s = sp.SparseTensor.from_dense(x, mask)
    Conv = sp.SparseConv3d if nd == 3 else sp.SparseConv2d
    Inv = sp.SparseInverseConv3d if nd == 3 else sp.SparseInverseConv2d
    down = Conv(8, 16, 3, stride=2, padding=1, indice_key="d1")
    up = Inv(16, 8, 3, indice_key="d1")
    with torch.no_grad():
        z = down(s)
        u = up(z)
    assert u.coord_set is s.coord_set
    zd = dense_conv(x, down.weight, down.bias, nd, stride=2, padding=1)
    close(z.features, zd.movedim(1, -1)[tuple(z.coords.long().T)])
    tconv = F.conv_transpose3d if nd == 3 else F.conv_transpose2d
    # the dense transposed conv of the *sparse* coarse tensor (zero off its sites)
    ref = tconv(z.to_dense(), up.weight.transpose(0, 1), up.bias, stride=2, padding=1,
                output_padding=tuple((n + 1) % 2 for n in shape))
    assert ref.shape[2:] == x.shape[2:]
    close(u.features, active(ref, mask))


def test_inverse_rulebook_is_the_forward_one_transposed():
    x, mask = random_sparse(1, 4, (10, 10, 10), 0.1)
    s = sp.SparseTensor.from_dense(x, mask)
    z = sp.sparse_conv(s, torch.randn(8, 4, 3, 3, 3), kind="conv", stride=2, padding=1,
                       indice_key="k")
    fwd = s.indice_dict["k"]
    inv, _ = sp.get_rulebook(z, sp.make_geometry("inverse", 3, 3, 2, 1), "k")
    assert inv is fwd.transposed() and inv.transposed() is fwd
    si, so = fwd.pairs()[1:], inv.pairs()[1:]
    assert sorted(zip(*si)) == sorted(zip(so[1], so[0]))


def test_rulebook_cache_reused_and_keyed():
    x, mask = random_sparse(1, 8, (8, 8, 8), 0.2)
    s = sp.SparseTensor.from_dense(x, mask)
    c1, c2, c5 = sp.SubMConv3d(8, 8, 3), sp.SubMConv3d(8, 8, 3), sp.SubMConv3d(8, 8, 5)
    with torch.no_grad():
        y = c2(c1(s))
        assert len(s.indice_dict) == 1            # one rulebook for both 3^3 layers
        c5(y)
        assert len(s.indice_dict) == 2
        z = sp.SparseConv3d(8, 8, 3, stride=2, padding=1)(y)
        sp.SubMConv3d(8, 8, 3)(z)                 # new coordinate set: new key
        assert len(s.indice_dict) == 4 and z.indice_dict is s.indice_dict
    keys = [k for k in s.indice_dict if not isinstance(k, str)]
    assert {k[1].kind for k in keys} == {"subm", "conv"}


def test_max_pool_matches_dense():
    x, mask = random_sparse(2, 6, (9, 8, 10), 0.2, seed=5)
    s = sp.SparseTensor.from_dense(x, mask)
    y = sp.SparseMaxPool3d(3, stride=2, padding=1)(s)
    xi = x.masked_fill(~mask[:, None], float("-inf"))
    ref = F.max_pool3d(xi, 3, stride=2, padding=1)
    close(y.features, ref.movedim(1, -1)[tuple(y.coords.long().T)])
    assert y.n == int(torch.isfinite(ref[:, 0]).sum())


# ---------------------------------------------------------------------------------------------
# gradients
def test_gradients_match_dense():
    x, mask = random_sparse(2, 8, (7, 6, 5), 0.3, seed=9)
    s = sp.SparseTensor.from_dense(x, mask)
    feats = s.features.clone().requires_grad_(True)
    s2 = s.replace_feature(feats)
    conv = sp.SubMConv3d(8, 16, 3)
    down = sp.SparseConv3d(16, 8, 3, stride=2, padding=1)
    out = down(conv(s2))
    g = torch.randn_like(out.features)
    (out.features * g).sum().backward()
    # dense reference of the same network: subm = conv masked to the input sites
    xd = x.clone().requires_grad_(True)
    w1 = conv.weight.detach().clone().requires_grad_(True)
    w2 = down.weight.detach().clone().requires_grad_(True)
    h = F.conv3d(xd, w1, conv.bias.detach(), padding=1) * mask[:, None]
    r = F.conv3d(h, w2, down.bias.detach(), stride=2, padding=1)
    gd = torch.zeros_like(r).movedim(1, -1)
    gd[tuple(out.coords.long().T)] = g
    (r * gd.movedim(-1, 1)).sum().backward()
    close(feats.grad, active(xd.grad, mask))
    close(conv.weight.grad, w1.grad)
    close(down.weight.grad, w2.grad)


# ---------------------------------------------------------------------------------------------
# real scans
@pytest.fixture(scope="module", params=["bunny", "armadillo"])
def scan(request):
    pytest.importorskip("trimesh")
    if meshes.mesh_path(request.param) is None:
        pytest.skip("shared mesh data (../shared/data/meshes) absent")
    return request.param


@pytest.mark.parametrize("res", [32, 64])
def test_scans_subm_and_down_match_dense(scan, res):
    s = meshes.voxelize(scan, res, channels=16, seed=1)
    assert 0.005 < s.n / res**3 < 0.2
    x = s.to_dense()
    mask = x.abs().sum(1) > 0
    net = sp.SparseSequential(sp.SubMConv3d(16, 16, 3), sp.SparseReLU(),
                              sp.SparseConv3d(16, 32, 3, stride=2, padding=1))
    net.eval()
    with torch.no_grad():
        h = net[1](net[0](s))
        close(h.features, active(F.relu(F.conv3d(x, net[0].weight, net[0].bias, padding=1)), mask))
        y = net[2](h)
        ref = F.conv3d(h.to_dense(), net[2].weight, net[2].bias, stride=2, padding=1)
        close(y.features, ref.movedim(1, -1)[tuple(y.coords.long().T)])


def test_voxelize_batch_has_distinct_rotated_copies(scan):
    s = meshes.voxelize(scan, 32, batch=2)
    c = s.coords
    assert s.batch_size == 2 and 0 < int((c[:, 0] == 1).sum())
    a = {tuple(r[1:]) for r in c[c[:, 0] == 0].tolist()}
    b = {tuple(r[1:]) for r in c[c[:, 0] == 1].tolist()}
    assert a != b


# ---------------------------------------------------------------------------------------------
# the benchmark command (tiny, on a home-made OFF mesh so it runs without the shared data)
OCTAHEDRON = """OFF
6 8 0
1 0 0
-1 0 0
0 1 0
0 -1 0
0 0 1
0 0 -1
3 0 2 4
3 2 1 4
3 1 3 4
3 3 0 4
3 2 0 5
3 1 2 5
3 3 1 5
3 0 3 5
"""


def test_bench_spatial_command(tmp_path):
    pytest.importorskip("trimesh")
    import json

    from sparsecnn.cli.main import main

    off = tmp_path / "octa.off"
    off.write_text(OCTAHEDRON)
    out = tmp_path / "res"
    rc = main(["bench-spatial", "--scans", str(off), "--res", "24", "--channels", "8",
               "--batch", "1", "2", "--min-time", "0", "--max-reps", "3", "--network",
               "--network-res", "24", "--scan-network", str(off), "--out", str(out),
               "--dense-limit-gb", "0.001", "--no-progress"])     # dense: batch 1 only
    assert rc == 0
    doc = json.loads((out / "spatial.json").read_text())
    ours = [r for r in doc["rows"] if r["provider"] == "sparsecnn"]
    assert len(ours) == 2 and all(r["fresh_ms"] > 0 and r["reused_ms"] > 0 for r in ours)
    dense = [r for r in doc["rows"] if r["provider"] == "dense conv3d"]
    assert [r["fresh_ms"] is not None for r in dense] == [True, False]
    assert dense[0]["max_abs_err"] < 1e-3 and "skipped" in dense[1]["note"]
    if doc["meta"]["spconv"]:   # spconv's CPU path races at > 1 thread: sites only
        assert doc["network"]["same_sites"]
    assert (out / "spatial.csv").read_text().startswith("scan,res,batch")
    assert main(["bench-spatial", "--scans", "no-such-mesh", "--out", str(tmp_path / "x")]) == 2


@pytest.mark.parametrize("k, shape, density", [(3, (9, 8, 7), 0.3), (5, (9, 8, 7), 0.2),
                                               (3, (6, 50), 0.4), (1, (5, 5, 5), 0.5),
                                               (3, (4, 4, 4), 1.0)])
def test_sorted_subm_builder_equals_the_plain_one(monkeypatch, k, shape, density):
    from sparsecnn.spatial import rulebook as R

    x, mask = random_sparse(3, 1, shape, density, seed=k)
    s = sp.SparseTensor.from_dense(x, mask)
    assert s.coord_set.is_sorted()
    g = sp.make_geometry("subm", len(shape), k)
    fast = R.build_subm(s.coord_set, g).nbr
    monkeypatch.setattr(R, "SORTED_FAST_PATH", False)
    plain = R.build_subm(s.coord_set, g).nbr
    assert np.array_equal(fast, plain)


def test_peak_rss_sees_a_large_temporary():
    from sparsecnn.spatial import bench as B

    B.pin_mmap_threshold()

    def alloc():
        a = np.ones(64 * 2**20 // 8)          # 64 MiB, touched, freed on return
        return float(a[::4096].sum())

    _, mb = B.peak_rss_mb(alloc)
    if mb is None:
        pytest.skip("/proc/self/clear_refs not writable here")
    assert 56 <= mb <= 200
    _, small = B.peak_rss_mb(lambda: np.ones(1000).sum())
    assert small < 8
