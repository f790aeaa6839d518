"""The sparse modules as PyTorch modules (issue 9): state_dict / load_state_dict, torch.save with
weights_only=True, deepcopy, .to(dtype / device), choices keyed by the input signature, the
bytes a layer really holds, and model files that cannot run code."""

from __future__ import annotations

import copy
import json
import pickle

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from _sparsify_fakes import registered
from sparsecnn import nn as snn
from sparsecnn import to_sparse
from sparsecnn.kernels import prepared, registry
from test_nn import ConvBnRelu, _prune, _randomise_bn, _resnet20, _sparse_w

TOL = {"rtol": 1e-4, "atol": 1e-5}


@pytest.fixture(autouse=True)
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("SPARSECNN_CACHE_DIR", str(tmp_path / "cache"))


def _model(sparsity=0.9, seed=3, tune_x=None, **kw):
    torch.manual_seed(seed)
    model = _prune(_randomise_bn(ConvBnRelu()), sparsity=sparsity, seed=seed).eval()
    ref = copy.deepcopy(model)
    if tune_x is None:
        snn.sparsify_(model, tune=False, min_sparsity=0.0, **kw)
    else:
        snn.sparsify_(model, example_input=tune_x, min_sparsity=0.0, **kw)
    return model, ref


# ---------------------------------------------------------------------------------------------
# state_dict / load_state_dict
# ---------------------------------------------------------------------------------------------
def test_state_dict_holds_the_sparse_weights():
    model, _ = _model()
    sd = model.state_dict()
    for name, m in snn.sparse_modules(model):
        for arr in ("rowptr", "colidx", "values"):
            t = sd[f"{name}.weight_{arr}"]
            np.testing.assert_array_equal(t.numpy(), getattr(m.weight, arr))
        meta = sd[f"{name}._extra_state"]
        assert meta["weight"]["format"] == "csr" and meta["relu"] == m.relu
        assert meta["weight"]["shape"] == list(m.weight.shape)
    # the state dict holds copies: writing into it cannot reach a kernel
    sd["conv1.weight_colidx"].fill_(10 ** 6)
    assert model.conv1.weight.colidx.max() < model.conv1.weight.ncols


def test_load_state_dict_into_a_model_with_another_nnz_and_format():
    x = torch.randn(2, 3, 8, 8)
    src, ref = _model(sparsity=0.9, seed=3)
    y = src(x)
    torch.testing.assert_close(y, ref(x), **TOL)
    dst, _ = _model(sparsity=0.5, seed=4, format="bsr")  # other weights, nnz and format
    assert dst.conv2.weight.nnz != src.conv2.weight.nnz
    dst(x)  # plans for the old weights exist
    dst.load_state_dict(src.state_dict())
    for name, m in snn.sparse_modules(dst):
        s = src.get_submodule(name)
        assert m.weight.format_name == "csr" and m.weight.nnz == s.weight.nnz, name
        assert not m.weight.colidx.flags.writeable  # rebuilt through the validating constructor
        assert m.weight is not s.weight
    torch.testing.assert_close(dst(x), y, rtol=0, atol=0)


def _replan(model):
    for _, m in snn.sparse_modules(model):
        m.reset_plans()
    return model


def test_state_dict_through_torch_save_weights_only(tmp_path):
    x = torch.randn(4, 3, 8, 8)
    with registered("test_fast"):  # tuning picks it: choices and tuning results to carry
        src, ref = _model(tune_x=x)
        f = tmp_path / "sd.pt"
        torch.save(src.state_dict(), f)
        sd = torch.load(f, weights_only=True)  # plain tensors + plain data: no pickle of code
        dst, _ = _model(sparsity=0.3, seed=9)
        dst.load_state_dict(sd)
        assert dst.conv1.choices == src.conv1.choices and dst.conv1.choices
        assert dst.conv1.tuning == src.conv1.tuning
    # (test_fast memoises by input address: outputs are compared with real kernels, the
    # choices of a kernel no longer registered fall back to dispatch)
    y = _replan(src)(x)
    torch.testing.assert_close(y, ref(x), **TOL)
    torch.testing.assert_close(dst(x), y, rtol=0, atol=0)


def test_load_state_dict_refuses_bad_arrays_and_other_architectures():
    src, _ = _model()
    dst, _ = _model(seed=5)
    x = torch.randn(1, 3, 8, 8)
    before = dst(x)
    cases = {  # message: (the layer corrupted, how)
        "colidx must lie in": ("conv1", lambda sd: sd["conv1.weight_colidx"].fill_(10 ** 6)),
        "rowptr must be non-decreasing": (
            "conv2", lambda sd: sd["conv2.weight_rowptr"].__setitem__(1, 10 ** 6)),
        "shape": ("conv1", lambda sd: sd["conv1._extra_state"]["weight"].update(shape=[8, 3, 5, 5])),
        "geometry": ("conv2", lambda sd: sd["conv2._extra_state"]["geometry"].update(stride=[1, 1])),
        "fused ReLU": ("conv3", lambda sd: sd["conv3._extra_state"].update(relu=True)),
        "state is of a 'SparseLinear'": (
            "conv1", lambda sd: sd["conv1._extra_state"].update(kind="SparseLinear")),
        "unknown sparse format": (
            "fc", lambda sd: sd["fc._extra_state"]["weight"].update(format="zip")),
        "newer": ("fc", lambda sd: sd["fc._extra_state"].update(version=99)),
        "unknown linear kernel": ("out", lambda sd: sd["out._extra_state"].update(algo="nope")),
        "bias must be": ("conv2", lambda sd: sd.__setitem__("conv2.bias", torch.ones(3))),
    }
    for msg, (layer, corrupt) in cases.items():
        sd = copy.deepcopy(src.state_dict())
        corrupt(sd)
        fresh, _ = _model(seed=5)
        kept = fresh.get_submodule(layer).weight
        with pytest.raises(RuntimeError, match=msg):
            fresh.load_state_dict(sd)
        assert fresh.get_submodule(layer).weight is kept, msg  # the refused layer is unchanged
        # (load_state_dict is not transactional: the other layers took their valid state)
        assert fresh.conv1.weight.colidx.max() < fresh.conv1.weight.ncols
    torch.testing.assert_close(dst(x), before, rtol=0, atol=0)
    sd = src.state_dict()
    del sd["conv1.weight_values"]
    with pytest.raises(RuntimeError, match="weight_values"):
        dst.load_state_dict(sd)
    sd = src.state_dict()
    del sd["conv1._extra_state"], sd["conv1.weight_rowptr"], sd["conv1.weight_colidx"], \
        sd["conv1.weight_values"]
    with pytest.raises(RuntimeError, match="Missing key.*conv1._extra_state"):
        dst.load_state_dict(sd)
    res = dst.load_state_dict(sd, strict=False)  # the rest loads, conv1 keeps its weight
    assert "conv1._extra_state" in res.missing_keys


def test_loaded_choices_for_kernels_this_machine_lacks_fall_back():
    src, _ = _model()
    x = torch.randn(1, 3, 8, 8)
    key = src.conv2.problem((1, 16, 8, 8)).key()
    sd = src.state_dict()
    sd["conv2._extra_state"]["choices"] = {key: "direct_avx512_from_the_future"}
    sd["conv1._extra_state"]["choices"] = {"k": 3}
    sd["conv1._extra_state"]["tuning"] = {"k": {"choice": "dense", "dense_ms": -1}}
    dst, _ = _model(seed=6)
    with pytest.warns(UserWarning, match="malformed tuning"):
        dst.load_state_dict(sd)
    assert dst.conv1.choices == {} and dst.conv1.tuning == {}
    assert dst.conv2.kernel_for(dst.conv2.problem((1, 16, 8, 8))) != "direct_avx512_from_the_future"
    torch.testing.assert_close(dst(x), src(x), **TOL)


# ---------------------------------------------------------------------------------------------
# deepcopy, .to()
# ---------------------------------------------------------------------------------------------
def test_deepcopy():
    model, ref = _model()
    x = torch.randn(2, 3, 8, 8)
    y = model(x)
    dup = copy.deepcopy(model)
    assert not dup.conv1._plans
    assert dup.conv1.weight is model.conv1.weight  # immutable: shared, still read-only
    assert not dup.conv1.weight.values.flags.writeable
    torch.testing.assert_close(dup(x), y, rtol=0, atol=0)
    with torch.no_grad():
        dup.conv1.bias.add_(1.0)  # the copy's bias is its own
    torch.testing.assert_close(model(x), y, rtol=0, atol=0)
    assert not torch.equal(dup(x), y)
    w = model.conv1.weight
    assert copy.copy(w) is w and copy.deepcopy(w) is w


def test_to_dtype_and_device():
    model, ref = _model()
    x = torch.randn(2, 3, 8, 8)
    model(x)
    model.double()
    assert model.conv1.bias.dtype == torch.float64
    assert model.conv1.weight.dtype == np.float32  # the sparse weight keeps its values
    y = model(x.double())
    assert y.dtype == torch.float64
    torch.testing.assert_close(y, ref.double()(x.double()), rtol=1e-5, atol=1e-5)
    model.float()
    torch.testing.assert_close(model(x), ref.float()(x), **TOL)
    # a module fixed to a float32-only kernel refuses float16 and another device, unchanged
    lin = snn.SparseLinear(to_sparse(_sparse_w((4, 6), 0.5)), torch.randn(4), algo="spmm")
    with pytest.raises(TypeError, match=r"'spmm'.*float32.*float16"):
        lin.half()
    with pytest.raises(TypeError, match="bfloat16"):
        lin.to(torch.bfloat16)
    with pytest.raises(ValueError, match="cannot move it to meta"):
        lin.to("meta")
    assert lin.bias.dtype == torch.float32 and lin.bias.device.type == "cpu"
    # algo="auto" converts: another dtype runs on a kernel that takes it (dense)
    auto = snn.SparseLinear(to_sparse(_sparse_w((4, 6), 0.5)), torch.randn(4)).eval().half()
    xh = torch.randn(3, 6)
    torch.testing.assert_close(auto(xh.half()).float(),
                               F.linear(xh, auto.dense_weight(), auto.bias.float()),
                               rtol=1e-2, atol=1e-2)
    assert auto.kernel_for(auto.problem((3, 6), "float16")) == "dense"


# ---------------------------------------------------------------------------------------------
# kernel choices keyed by the full input signature
# ---------------------------------------------------------------------------------------------
def test_choice_tuned_at_32x32_is_not_reused_at_64x64():
    """A kernel that is fast and right at 32x32 and wrong at any other size: tuned at 32x32
    it is chosen there, and never run at 64x64 (same batch)."""
    calls = []

    def only_32(prep, x, bias):
        p = prep.problem
        y = F.conv2d(x, prep.weight.to_dense(), bias, p.stride, p.padding, p.dilation, p.groups)
        calls.append(tuple(x.shape))
        return y if x.shape[-1] == 32 else y + 1.0

    registry.register(registry.Kernel("test_only32", "conv2d", only_32, formats=("csr",),
                                      description="test: right at 32x32 only"))
    try:
        conv = nn.Conv2d(3, 8, 3, padding=1)
        with torch.no_grad():
            conv.weight.mul_(torch.rand_like(conv.weight) < 0.1)
        m = snn.SparseConv2d.from_dense(conv).eval()
        key32 = m.problem((2, 3, 32, 32)).key()
        m.set_choice((2, 3, 32, 32), "test_only32")
        assert m.choices == {key32: "test_only32"}
        x32, x64 = torch.randn(2, 3, 32, 32), torch.randn(2, 3, 64, 64)
        with torch.no_grad():
            torch.testing.assert_close(m(x32), conv(x32), **TOL)
            torch.testing.assert_close(m(x64), conv(x64), **TOL)
            torch.testing.assert_close(m(x64.double()).float(), conv(x64), **TOL)
        assert all(s[-1] == 32 for s in calls) and calls
        assert m.kernel_for(m.problem((2, 3, 64, 64))) != "test_only32"
        # and through tuning (sparsify_ with an example input of 32x32)
        model = nn.Sequential(copy.deepcopy(conv))
        with registered("test_fast"):
            snn.sparsify_(model, example_input=x32, min_sparsity=0.0)
            (key,) = model[0].choices
            assert "H=32,W=32" in key
            assert model[0].kernel_for(model[0].problem((2, 3, 64, 64))) != model[0].choices[key] \
                or model[0].choices[key] == "dense"
    finally:
        registry.unregister("conv2d", "test_only32")


# ---------------------------------------------------------------------------------------------
# what a layer really holds
# ---------------------------------------------------------------------------------------------
def test_held_bytes_after_tuning_count_what_the_chosen_kernels_keep():
    x = torch.randn(2, 3, 8, 8)
    with registered("test_fast"):
        torch.manual_seed(0)
        model = _prune(_randomise_bn(ConvBnRelu()), sparsity=0.9, skip=("conv1",)).eval()
        snn.sparsify_(model, example_input=x, min_sparsity=0.5)
        assert model.conv1.algo == "dense"  # too dense: runs PyTorch on a densified copy
        with torch.no_grad():
            model(x)
        sizes = snn.model_nbytes(model)
        held = 0
        for name, m in snn.sparse_modules(model):
            extra = prepared.CACHE.held_nbytes(m.weight)
            if name == "conv1":  # CSR arrays + bias + the dense copy
                assert extra == m.weight.nrows * m.weight.ncols * 4
                assert m.held_nbytes == m.nbytes + extra
            else:  # tuned: the fake kernel won; dense's copy from tuning is not kept
                (key,) = m.choices
                assert m.choices[key] == "test_fast", name
                assert extra == 0, name
                assert m.held_nbytes == m.nbytes
            held += m.held_nbytes
        dense_rest = sum(p.numel() * p.element_size() for n, mod in model.named_modules()
                         if not isinstance(mod, (snn.SparseConv2d, snn.SparseLinear))
                         for p in list(mod.parameters(recurse=False)) + list(mod.buffers(recurse=False)))
        assert sizes["held_nbytes"] == held + dense_rest
        assert sizes["held_nbytes"] > sizes["nbytes"]


# ---------------------------------------------------------------------------------------------
# model files
# ---------------------------------------------------------------------------------------------
def test_save_load_zoo_model_without_skeleton(tmp_path):
    torch.manual_seed(0)
    model = _prune(_randomise_bn(_resnet20()), sparsity=0.9).eval()
    x = torch.randn(2, 3, 32, 32)
    ref = copy.deepcopy(model)
    with registered("test_fast"):
        snn.sparsify_(model, example_input=x, min_sparsity=0.5)
        path = snn.save(model, tmp_path / "r20.safetensors", arch="resnet20")
        header = snn.read_header(path)
        assert header["version"] == 2 and header["arch"] == {"name": "resnet20", "kwargs": {}}
        loaded = snn.load(path)
        assert type(loaded).__name__ == type(model).__name__ and not loaded.training
        for name, m in snn.sparse_modules(model):
            lm = loaded.get_submodule(name)
            assert lm.choices == m.choices and lm.relu == m.relu and lm.algo == m.algo
            assert lm.weight.nnz == m.weight.nnz
        assert any(m.choices for _, m in snn.sparse_modules(loaded))
    y = _replan(model)(x)  # real kernels (test_fast memoises by input address)
    torch.testing.assert_close(y, ref(x), **TOL)
    torch.testing.assert_close(loaded(x), y, rtol=0, atol=0)
    # plain tensors + JSON: safetensors reads it without sparsecnn
    from safetensors.torch import load_file
    assert "layer1.0.conv1.weight_colidx" in load_file(str(path))


def test_save_load_with_a_skeleton(tmp_path):
    x = torch.randn(2, 3, 8, 8)
    model, ref = _model(filter_fn=lambda m, fqn: fqn != "conv3")  # conv3 stays nn.Conv2d
    y = model(x)
    path = snn.save(model, tmp_path / "out" / "m.safetensors")
    assert [p.name for p in path.parent.iterdir()] == ["m.safetensors"]  # no temp file left
    with pytest.raises(ValueError, match="pass the model skeleton"):
        snn.load(path)
    loaded = snn.load(path, model=ConvBnRelu())  # a fresh dense instance
    assert isinstance(loaded.conv1, snn.SparseConv2d) and type(loaded.conv3) is nn.Conv2d
    assert isinstance(loaded.bn1, nn.Identity) and isinstance(loaded.relu1, nn.Identity)
    torch.testing.assert_close(loaded(x), y, rtol=0, atol=0)
    other, _ = _model(sparsity=0.5, seed=8, filter_fn=lambda m, fqn: fqn != "conv3")
    torch.testing.assert_close(snn.load(path, model=other)(x), y, rtol=0, atol=0)
    with pytest.raises(ValueError, match="SparseConv2d at 'conv1', the model has no module"):
        snn.load(path, model=nn.Sequential(nn.Linear(2, 2)))
    wider = ConvBnRelu()
    wider.extra = nn.Linear(2, 2)  # same layers plus one the file does not have
    with pytest.raises(ValueError, match=r"(?s)does not match the model.*extra\.weight"):
        snn.load(path, model=wider)


class _Marker:
    """Unpickling this creates the file ``path``: a stand-in for any code a pickle can run."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_crafted_pickle_model_file_is_refused_without_running(tmp_path):
    marker = tmp_path / "pwned"
    bomb = tmp_path / "model.pt"  # the version-1 layout, with a payload
    torch.save({"magic": "sparsecnn-model", "version": 1, "model": _Marker(marker)}, bomb)
    raw = tmp_path / "raw.pkl"
    raw.write_bytes(pickle.dumps({"model": _Marker(marker)}))
    for path in (bomb, raw):
        with pytest.raises(ValueError, match="pickle"):
            snn.load(path)
        with pytest.raises(ValueError, match="pickle"):
            snn.load(path, model=ConvBnRelu())
    assert not marker.exists()
    pickle.loads(raw.read_bytes())  # the payload is real: unpickling does create it
    assert marker.exists()


def _rewrite(path, dst, change):
    """Copy a model file with its sparsecnn header changed by ``change(header)``."""
    from safetensors.torch import load_file, save_file
    header = snn.read_header(path)
    change(header)
    save_file(load_file(str(path)), str(dst), metadata={"sparsecnn": json.dumps(header)})
    return dst


def test_load_errors(tmp_path):
    model, _ = _model()
    path = snn.save(model, tmp_path / "m.safetensors", arch=None)
    with pytest.raises(FileNotFoundError, match="no sparsecnn model file"):
        snn.load(tmp_path / "missing.safetensors")
    bad = tmp_path / "bad.bin"
    bad.write_bytes(b"\x00garbage")
    with pytest.raises(ValueError, match="not a readable sparsecnn model file"):
        snn.load(bad)
    cut = tmp_path / "cut.safetensors"
    data = path.read_bytes()
    for n in (len(data) // 2, len(data) - 1, 20):
        cut.write_bytes(data[:n])
        with pytest.raises(ValueError, match="not a readable sparsecnn model file"):
            snn.load(cut, model=ConvBnRelu())
    from safetensors.torch import save_file
    foreign = tmp_path / "foreign.safetensors"
    save_file({"weight": torch.ones(2)}, str(foreign))
    with pytest.raises(ValueError, match="without sparsecnn metadata"):
        snn.load(foreign)
    future = _rewrite(path, tmp_path / "future.safetensors", lambda h: h.update(version=3))
    with pytest.raises(ValueError, match="version 3.*newer sparsecnn"):
        snn.load(future, model=ConvBnRelu())
    evil_arch = _rewrite(path, tmp_path / "arch.safetensors",
                         lambda h: h.update(arch={"name": "os.system", "kwargs": {}}))
    with pytest.raises(ValueError, match="unknown model 'os.system'"):
        snn.load(evil_arch)
    oob = tmp_path / "oob.safetensors"
    from safetensors.torch import load_file
    tensors = load_file(str(path))
    tensors["conv2.weight_colidx"][0] = 10 ** 6
    save_file(tensors, str(oob), metadata={"sparsecnn": json.dumps(snn.read_header(path))})
    with pytest.raises(ValueError, match="colidx must lie in"):
        snn.load(oob, model=ConvBnRelu())
    ident = _rewrite(path, tmp_path / "ident.safetensors", lambda h: h["identity"].append("conv3"))
    with pytest.raises(ValueError, match="nn.Identity at 'conv3'"):
        snn.load(ident, model=ConvBnRelu())
    with pytest.raises(ValueError, match="unknown model"):
        snn.save(model, tmp_path / "x.safetensors", arch="resnet7")
    with pytest.raises(TypeError, match="nn.Module"):
        snn.load(path, model="ConvBnRelu")


def test_held_bytes_count_operands_the_plans_keep_after_eviction():
    """A dense-running layer holds its CSR arrays *and* a dense copy; the copy stays alive in
    the module's plan after the bounded cache evicted it, and is still counted (once)."""
    conv = nn.Conv2d(4, 8, 3, padding=1)
    m = snn.SparseConv2d.from_dense(conv, algo="dense").eval()
    assert m.held_nbytes == m.nbytes  # nothing prepared yet
    x = torch.randn(1, 4, 6, 6)
    with torch.no_grad():
        m(x)
    copy_bytes = 8 * 4 * 3 * 3 * 4
    assert m.held_nbytes == m.nbytes + copy_bytes
    prepared.CACHE.clear()  # evicted from the cache; the plan still references it
    assert m.held_nbytes == m.nbytes + copy_bytes
    m.reset_plans()
    assert m.held_nbytes == m.nbytes


_DEADLOCK_SCENARIO = """
import gc
import torch
from sparsecnn import to_sparse
from sparsecnn.kernels import registry
from sparsecnn.kernels.prepared import PreparedCache
from sparsecnn.problem import LinearProblem

dense = registry.get("linear", "dense")

def entry(cache):
    w = to_sparse(torch.eye(4, 6))
    cache.get(dense, w, LinearProblem(1, 6, 4, False, format="csr", density=float(w.density)))
    # w's only reference is now the cache entry

cache = PreparedCache(max_entries=1)
entry(cache)  # the cache refers to w weakly: w dies as entry() returns, and its entry with it
assert len(cache) == 0 and not cache._by_weight
keep = to_sparse(torch.eye(4, 6))
cache.get(dense, keep, LinearProblem(1, 6, 4, False, format="csr", density=float(keep.density)))
entry(cache)  # evicts keep's entry (inside get()'s lock); keep lives on
assert len(cache) == 0
cache.clear()
del keep
gc.collect()  # keep's finalizer takes the (free) lock
entry(cache)
assert len(cache) == 0 and not cache._by_weight
print("ok")
"""


def test_prepared_cache_never_deadlocks_when_an_entry_held_the_last_reference():
    """A weight's finalizer takes the cache's lock; it must never run inside a locked region
    (before: an entry held its weight, evicting it ran the finalizer under the non-reentrant
    lock and the process hung -- it hung the held-bytes test above).
    Run in a subprocess so that a regression fails (timeout) instead of hanging the suite."""
    import os
    import subprocess
    import sys

    try:
        res = subprocess.run([sys.executable, "-c", _DEADLOCK_SCENARIO], capture_output=True,
                             text=True, timeout=240, env={**os.environ})
    except subprocess.TimeoutExpired:
        pytest.fail("PreparedCache deadlocked (a finalizer re-entered its lock)")
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr[-2000:]
