"""Direct sparse convolution (kernels "direct" and "direct_avx512") against
torch.nn.functional.conv2d.

Both kernels run every test here; a kernel the compilation target cannot run (``direct_avx512``
without AVX-512F) is skipped with the reason. Tolerance: the kernels accumulate in float32 in a
different order than oneDNN, so results are compared with rtol 1e-4 and atol 1e-5 * sqrt(fan-in)
* max|x| * max|w| scaled (see ``_check``).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import sparsecnn
from sparsecnn import conv2d, to_sparse
from sparsecnn.formats import CSRWeight
from sparsecnn.kernels import capabilities, prepared, registry
from sparsecnn.kernels.cpu import _direct_common, direct, direct_avx512
from sparsecnn.kernels.cpu.direct_csr import DirectConvCSR
from sparsecnn.problem import ConvProblem

MODULES = {"direct": direct, "direct_avx512": direct_avx512}


def _param(name):
    why = registry.get("conv2d", name).unavailable()
    return pytest.param(name, id=name, marks=[pytest.mark.skipif(why is not None, reason=why or "")])


KERNELS = [_param(n) for n in MODULES]


@pytest.fixture(params=KERNELS)
def algo(request):
    """Each direct kernel in turn (skipped where the target lacks what it needs)."""
    return request.param


def _weight(shape, sparsity, seed):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(shape, generator=g)
    if sparsity > 0:
        w[torch.rand(shape, generator=g) < sparsity] = 0
    return w


def _check(algo, x, w, bias=None, stride=1, padding=0, dilation=1, groups=1, relu=False):
    sw = to_sparse(w)
    y = conv2d(x, sw, bias, stride, padding, dilation, groups, algo=algo, relu=relu)
    ref = F.conv2d(x, w, bias, stride, padding, dilation, groups)
    if relu:
        ref = torch.relu(ref)
    assert y.dtype == torch.float32 and y.shape == ref.shape
    fan_in = w.shape[1] * w.shape[2] * w.shape[3]
    atol = 1e-5 * fan_in ** 0.5 * float(x.abs().max()) * max(float(w.abs().max()), 1e-30) + 1e-6
    torch.testing.assert_close(y, ref, rtol=1e-4, atol=atol)
    return y


CASES = [
    # (N, C, H, W, K, R, S, stride, padding, dilation, groups)
    (1, 8, 9, 9, 12, 1, 1, 1, 0, 1, 1),
    (2, 6, 11, 10, 8, 3, 3, 1, 1, 1, 1),
    (1, 5, 13, 12, 7, 5, 5, 1, 2, 1, 1),
    (1, 4, 17, 15, 6, 7, 7, 2, 3, 1, 1),
    (1, 3, 35, 33, 8, 11, 11, 4, 2, 1, 1),   # AlexNet conv1 geometry, small
    (1, 6, 12, 13, 8, 3, 3, 1, 2, 2, 1),      # dilation 2
    (1, 6, 15, 14, 8, 3, 3, 2, 1, 2, 1),      # dilation 2 with stride 2
    (2, 8, 10, 11, 6, 3, 3, 1, 1, 1, 2),      # groups 2
    (1, 8, 9, 10, 8, 3, 3, 1, 1, 1, 8),       # depthwise
    (1, 8, 9, 10, 16, 3, 3, 2, 1, 1, 8),      # depthwise, multiplier 2, stride 2
    (8, 5, 7, 7, 4, 3, 3, 2, 0, 1, 1),        # batch 8, no padding, odd sizes
    (1, 4, 8, 8, 4, 2, 3, (2, 1), (0, 1), 1, 1),  # even / rectangular kernel, uneven stride
    (1, 32, 20, 20, 16, 3, 3, 1, 1, 1, 1),    # multi-tile plane (several register tiles)
]


@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.9, 0.99, 0.999])
@pytest.mark.parametrize("case", CASES, ids=lambda c: "x".join(map(str, c[:7])) + f"-s{c[7]}-d{c[9]}-g{c[10]}")
def test_matches_torch(algo, case, sparsity):
    n, c, h, w, k, r, s, stride, pad, dil, groups = case
    x = torch.randn(n, c, h, w, generator=torch.Generator().manual_seed(1))
    wt = _weight((k, c // groups, r, s), sparsity, seed=2)
    bias = torch.randn(k, generator=torch.Generator().manual_seed(3))
    _check(algo, x, wt, bias, stride, pad, dil, groups, relu=bool(int(sparsity * 10) % 2))


@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("bias", [False, True])
def test_bias_relu(algo, bias, relu):
    x = torch.randn(2, 6, 9, 9)
    wt = _weight((5, 6, 3, 3), 0.6, seed=4)
    b = torch.randn(5) if bias else None
    _check(algo, x, wt, b, 1, 1, relu=relu)


def test_all_zero_weight_gives_bias(algo):
    x = torch.randn(1, 4, 7, 7)
    b = torch.randn(3)
    y = _check(algo, x, torch.zeros(3, 4, 3, 3), b, 1, 1)
    assert torch.equal(y, b.view(1, 3, 1, 1).expand_as(y))


def test_single_nonzero(algo):
    x = torch.randn(1, 4, 7, 9)
    wt = torch.zeros(3, 4, 3, 3)
    wt[1, 2, 0, 2] = 1.5
    y = _check(algo, x, wt, None, 1, 1)
    assert torch.count_nonzero(y[:, [0, 2]]) == 0


def test_fully_dense_conv4_shaped(algo):
    # AlexNet conv4's channel counts at a small plane: blocking, partitions, register tiles
    x = torch.randn(1, 384, 6, 6)
    _check(algo, x, _weight((256, 384, 3, 3), 0.0, seed=5), None, 1, 1)


def test_channel_blocking_matches(algo, monkeypatch):
    """Input-channel blocking (partial sums in scratch) gives the same result as none."""
    mod = MODULES[algo]
    x = torch.randn(2, 40, 9, 9)
    wt = _weight((12, 40, 3, 3), 0.5, seed=6)
    sw = to_sparse(wt)
    ref = conv2d(x, sw, None, 1, 1, algo=algo)
    monkeypatch.setattr(mod, "_choose_cblock", lambda *a, **k: 7)
    sw2 = to_sparse(wt)
    y = conv2d(x, sw2, None, 1, 1, algo=algo, relu=True)
    (prep,) = prepared.CACHE.held(sw2)
    assert prep.operand.d.nblocks == 6
    torch.testing.assert_close(y, torch.relu(ref), rtol=1e-5, atol=1e-5)


def test_serial_and_parallel_agree(algo, monkeypatch):
    mod = MODULES[algo]
    x = torch.randn(3, 16, 12, 12)
    wt = _weight((16, 16, 3, 3), 0.7, seed=7)
    monkeypatch.setattr(mod, "SERIAL_WORK", 0)
    par = conv2d(x, to_sparse(wt), None, 1, 1, algo=algo)
    monkeypatch.setattr(mod, "SERIAL_WORK", 10**15)
    ser = conv2d(x, to_sparse(wt), None, 1, 1, algo=algo)
    torch.testing.assert_close(par, ser, rtol=1e-6, atol=1e-6)


def test_repeated_calls_reuse_preparation(algo):
    x = torch.randn(1, 8, 10, 10)
    sw = to_sparse(_weight((8, 8, 3, 3), 0.8, seed=8))
    y1 = conv2d(x, sw, None, 1, 1, algo=algo)
    (d1,) = prepared.CACHE.held(sw)
    assert isinstance(d1.operand, _direct_common.DirectOperand)
    y2 = conv2d(x, sw, None, 1, 1, algo=algo)
    assert prepared.CACHE.held(sw) == [d1]
    assert torch.equal(y1, y2)
    # a different geometry gets its own preparation and a correct answer
    x2 = torch.randn(2, 8, 7, 12)
    y3 = conv2d(x2, sw, None, 2, 0, algo=algo)
    assert len(prepared.CACHE.held(sw)) == 2
    torch.testing.assert_close(y3, F.conv2d(x2, sw.to_dense(), None, 2, 0), rtol=1e-4, atol=1e-4)


def test_unbatched_input(algo):
    x = torch.randn(4, 8, 8)
    wt = _weight((5, 4, 3, 3), 0.5, seed=9)
    y = conv2d(x, to_sparse(wt), None, 1, 1, algo=algo)
    torch.testing.assert_close(y, F.conv2d(x, wt, None, 1, 1), rtol=1e-4, atol=1e-4)


def test_inputs_requiring_grad(algo):
    x = torch.randn(1, 4, 6, 6, requires_grad=True)
    b = torch.nn.Parameter(torch.randn(3))
    wt = _weight((3, 4, 3, 3), 0.5, seed=12)
    y = conv2d(x, to_sparse(wt), b, 1, 1, algo=algo)
    ref = F.conv2d(x.detach(), wt, b.detach(), 1, 1)
    torch.testing.assert_close(y, ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", list(MODULES))
def test_registered(name):
    k = registry.get("conv2d", name)
    assert k.run is MODULES[name].conv2d_direct and k.prepare is MODULES[name].prepare_direct
    assert k.accepts("csr") and k.accepts("unified_csr") and not k.accepts("bsr")


def test_portable_kernel_runs_everywhere_avx512_needs_it():
    assert registry.get("conv2d", "direct").requires == ()
    assert registry.get("conv2d", "direct").unavailable() is None
    assert registry.get("conv2d", "direct_avx512").requires == ("avx512f",)


def test_auto_dispatch_prefers_the_avx512_kernel_where_it_runs():
    want = "direct_avx512" if "avx512f" in capabilities.target().features else "direct"
    p = ConvProblem(1, 8, 9, 9, 8, 3, 3, format="csr", density=0.1)
    assert sparsecnn.dispatch.heuristic(p) == want


@pytest.mark.parametrize("isa, vw, nv_max", [("avx512", 16, 28), ("avx2", 8, 14), ("avx", 8, 13),
                                             ("sse2", 4, 12), ("neon", 4, 24), ("generic", 4, 12)])
def test_vector_shape_per_target(isa, vw, nv_max):
    from sparsecnn.kernels.cpu import _vec

    assert _vec.vector_shape(isa) == (vw, nv_max)


def test_portable_kernel_uses_the_targets_width():
    from sparsecnn.kernels.cpu import _vec

    assert (direct.VW, direct.NV_MAX) == _vec.vector_shape(capabilities.target().isa)
    sw = to_sparse(_weight((8, 8, 3, 3), 0.5, seed=13))
    op = direct.prepare_direct(sw, ConvProblem(1, 8, 30, 30, 8, 3, 3, padding=(1, 1)), nthreads=1)
    d, p = op.d, op.plan
    assert p.tl == direct.VW * p.nv and 1 <= p.nv <= direct.NV_MAX
    assert p.ntiles * p.tl >= d.out_hw[0] * d.phase_hw[1]


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(1, 3), c=st.integers(1, 6), k=st.integers(1, 6), h=st.integers(1, 12),
    w=st.integers(1, 12), r=st.integers(1, 5), s=st.integers(1, 5), stride=st.integers(1, 3),
    pad=st.integers(0, 2), dil=st.integers(1, 2), gsel=st.integers(0, 2),
    sparsity=st.sampled_from([0.0, 0.5, 0.9, 1.0]), relu=st.booleans(), seed=st.integers(0, 99),
)
def test_property_random_geometry(n, c, k, h, w, r, s, stride, pad, dil, gsel, sparsity, relu,
                                  seed):
    groups = [1, c, np.gcd(c, k)][gsel]
    if k % groups:
        groups = 1
    hp, wp = h + 2 * pad, w + 2 * pad
    if hp < dil * (r - 1) + 1 or wp < dil * (s - 1) + 1:
        return  # empty output: rejected by validation, tested in test_api
    x = torch.randn(n, c, h, w, generator=torch.Generator().manual_seed(seed))
    wt = _weight((k, c // groups, r, s), sparsity, seed + 1)
    for algo in _RUNNABLE:
        _check(algo, x, wt, torch.randn(k), stride, pad, dil, groups, relu=relu)


_RUNNABLE = [n for n in MODULES if registry.get("conv2d", n).unavailable() is None]


# --------------------------------------------------------------------------------------------
# partition_rows
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("nparts", [1, 2, 3, 7, 300])
def test_partition_rows_covers_and_balances(nparts):
    rng = np.random.default_rng(0)
    counts = rng.integers(0, 50, size=256)
    rowptr = np.concatenate(([0], np.cumsum(counts)))
    b = _direct_common.partition_rows(rowptr, nparts)
    assert b.shape == (nparts + 1,) and b[0] == 0 and b[-1] == 256
    assert (np.diff(b) >= 0).all()
    work = np.array([counts[b[p]:b[p + 1]].sum() + (b[p + 1] - b[p]) for p in range(nparts)])
    if nparts <= 7:
        # every chunk within one row's work of the ideal share
        assert np.abs(work - work.sum() / nparts).max() <= counts.max() + 1


def test_partition_rows_all_zero_and_skewed():
    b = _direct_common.partition_rows(np.zeros(9, dtype=np.int32), 2)
    assert list(b) == [0, 4, 8]
    rowptr = np.array([0, 1000, 1001, 1002, 1003])  # one heavy row
    b = _direct_common.partition_rows(rowptr, 2)
    assert b[1] == 1


def test_partition_rows_bad_input():
    with pytest.raises(ValueError, match="nparts"):
        _direct_common.partition_rows(np.array([0, 1]), 0)
    with pytest.raises(ValueError, match="non-decreasing"):
        _direct_common.partition_rows(np.array([0, 3, 1]), 2)


# --------------------------------------------------------------------------------------------
# DirectConvCSR
# --------------------------------------------------------------------------------------------
def test_direct_csr_offsets_stride1():
    w = torch.zeros(2, 3, 3, 3)
    w[0, 1, 2, 0] = 1.0   # c=1, r=2, s=0
    w[1, 2, 0, 2] = 2.0   # c=2, r=0, s=2
    d = DirectConvCSR.from_csr(to_sparse(w), (3, 10, 12), (1, 1), (1, 1), (1, 1), 1)
    assert d.phase_hw == (12, 14) and d.plane == 168 and d.nphase == 1
    assert d.out_hw == (10, 12)
    assert list(d.offsets) == [1 * 168 + 2 * 14 + 0, 2 * 168 + 0 + 2]
    assert d.image_stride % 16 == 0 and d.image_stride >= 3 * 168
    np.testing.assert_array_equal(d.to_numpy(), w.numpy())
    assert d.nnz == 2 and d.max_offset == 2 * 168 + 2


def test_direct_csr_offsets_phase_and_groups():
    # stride 2, dilation 1, groups 2: tap (r, s) reads phase (r % 2, s % 2) at (r // 2, s // 2)
    w = torch.zeros(4, 2, 3, 3)
    w[3, 1, 2, 1] = 1.0   # group 1 -> global channel 2 + 1 = 3; r=2, s=1
    d = DirectConvCSR.from_csr(to_sparse(w), (4, 9, 9), (2, 2), (1, 1), (1, 1), 2)
    hph, wph = d.phase_hw
    assert d.out_hw == (5, 5) and (hph, wph) == (6, 6) and d.nphase == 4
    phase = (2 % 2) * 2 + (1 % 2)
    assert d.offsets[0] == (3 * 4 + phase) * d.plane + (2 // 2) * wph + (1 // 2)


def test_direct_csr_blocks():
    w = _weight((5, 10, 3, 3), 0.5, seed=10)
    csr = to_sparse(w)
    d = DirectConvCSR.from_csr(csr, (10, 6, 6), (1, 1), (1, 1), (1, 1), 1, cblock=4)
    assert d.nblocks == 3
    bp = d.blkptr.reshape(5, 4)
    np.testing.assert_array_equal(bp[:, 0], csr.rowptr[:-1])
    np.testing.assert_array_equal(bp[:, -1], csr.rowptr[1:])
    chan = d.colidx // 9
    for k in range(5):
        for b in range(3):
            assert ((chan[bp[k, b]:bp[k, b + 1]] // 4) == b).all()


def test_direct_csr_accepts_padded_csr_with_explicit_zeros(algo):
    w = _weight((4, 3, 3, 3), 0.7, seed=11)
    csr = to_sparse(w)
    # add an explicit zero in row 0 (as a padded "unified" CSR would)
    cols = set(csr.colidx[csr.rowptr[0]:csr.rowptr[1]].tolist())
    extra = min(set(range(27)) - cols)
    row0 = sorted(cols | {extra})
    vals0 = [0.0 if c == extra else float(w.reshape(4, -1)[0, c]) for c in row0]
    colidx = np.concatenate((row0, csr.colidx[csr.rowptr[1]:]))
    values = np.concatenate((vals0, csr.values[csr.rowptr[1]:])).astype(np.float32)
    rowptr = csr.rowptr.copy()
    rowptr[1:] += 1
    padded = CSRWeight(rowptr, colidx, values, csr.shape)
    x = torch.randn(1, 3, 8, 8)
    y = conv2d(x, padded, None, 1, 1, algo=algo)
    torch.testing.assert_close(y, F.conv2d(x, w, None, 1, 1), rtol=1e-4, atol=1e-4)


def test_direct_csr_rejects_bad_geometry():
    csr = to_sparse(torch.randn(4, 3, 3, 3))
    with pytest.raises(ValueError, match="do not match"):
        DirectConvCSR.from_csr(csr, (5, 8, 8))
    with pytest.raises(ValueError, match="empty output"):
        DirectConvCSR.from_csr(csr, (3, 2, 2))
    with pytest.raises(TypeError, match="rowptr"):
        DirectConvCSR.from_csr(torch.randn(4, 3, 3, 3), (3, 8, 8))


# --------------------------------------------------------------------------------------------
# the portable vector building blocks
# --------------------------------------------------------------------------------------------
def test_copy_and_fill_span_write_exactly_their_range():
    """copy_span / fill_span cover [di, di + n) for every length (full vectors, an overlapping
    tail, narrower vectors below one vector) and never write outside it."""
    from numba import njit

    from sparsecnn.kernels.cpu import _vec

    @njit
    def copy(dst, di, src, si, n):
        _vec.copy_span(dst, di, src, si, n)

    @njit
    def fill(dst, di, n, v):
        _vec.fill_span(dst, di, n, v)

    src = np.arange(200, dtype=np.float32) + 1
    for n in range(0, 3 * _vec.VW + 3):
        for di in (0, 3, 17):
            dst = np.full(200, -1.0, dtype=np.float32)
            copy(dst, di, src, 5, n)
            want = np.full(200, -1.0, dtype=np.float32)
            want[di:di + n] = src[5:5 + n]
            np.testing.assert_array_equal(dst, want, err_msg=f"copy n={n} di={di}")
            dst = np.full(200, -1.0, dtype=np.float32)
            fill(dst, di, n, 7.0)
            want = np.full(200, -1.0, dtype=np.float32)
            want[di:di + n] = 7.0
            np.testing.assert_array_equal(dst, want, err_msg=f"fill n={n} di={di}")


def test_store_segments_cover_each_output_once():
    """The portable plan's store segments write every (OH, OW) output exactly once, and only
    real columns of the padded-width tiles."""
    for (h, w, r, s, pad, stride, k) in [(13, 13, 3, 3, 1, 1, 4), (7, 7, 1, 1, 0, 1, 3),
                                         (30, 5, 3, 3, 1, 1, 2), (9, 40, 5, 5, 2, 2, 2)]:
        sw = to_sparse(_weight((k, 2, r, s), 0.5, seed=14))
        prob = ConvProblem(1, 2, h, w, k, r, s, (stride, stride), (pad, pad))
        op = direct.prepare_direct(sw, prob, nthreads=1)
        d, p = op.d, op.plan
        oh, ow = d.out_hw
        wph = d.phase_hw[1]
        hits = np.zeros(oh * ow, dtype=np.int64)
        for t in range(p.ntiles):
            for q in range(p.segptr[t], p.segptr[t + 1]):
                src = t * p.tl + p.segsrc[q] + np.arange(p.seglen[q])
                assert (src % wph < ow).all() and (src < oh * wph).all()
                dst = p.segdst[q] + np.arange(p.seglen[q])
                np.testing.assert_array_equal(dst, (src // wph) * ow + src % wph)
                hits[dst] += 1
        assert (hits == 1).all()
