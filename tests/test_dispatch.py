"""Kernel choice: heuristic, measured tuning (never slower than dense, wrong kernels rejected),
and the on-disk cache (hit on second call, atomic file, key fields)."""

import json
import threading

import pytest
import torch

from _sparsify_fakes import registered
from sparsecnn import dispatch, to_sparse
from sparsecnn.dispatch import tuning
from sparsecnn.nn import SparseConv2d


@pytest.fixture(autouse=True)
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("SPARSECNN_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _layer(k=32, c=32, hw=16, density=0.1, n=2, relu=True):
    torch.manual_seed(0)
    w = torch.randn(k, c, 3, 3)
    w[torch.rand_like(w) > density] = 0
    mod = SparseConv2d(to_sparse(w), torch.randn(k), padding=1, relu=relu).eval()
    x = torch.randn(n, c, hw, hw)
    return mod, x, mod.problem(x.shape)


def _run(mod, x, calls=None):
    def run(name):
        if calls is not None:
            calls.append(name)
        return mod.run(x, name)
    return run


def test_slow_kernel_never_chosen_and_wrong_kernel_rejected():
    mod, x, problem = _layer()
    with registered("test_slow", "test_wrong"):
        res = dispatch.tune("conv2d", _run(mod, x), problem,
                            candidates=["test_slow", "test_wrong"], use_cache=False)
    assert res.choice == "dense"
    by = {m.name: m for m in res.measurements}
    assert by["test_slow"].status == "ok"
    assert by["test_slow"].median_ms > by["dense"].median_ms
    assert by["test_wrong"].status == "rejected"
    assert "differs from dense" in by["test_wrong"].message
    assert by["test_wrong"].max_abs_err == pytest.approx(1.0, rel=1e-4)
    assert [m.name for m in res.rejected] == ["test_wrong"]
    assert res.chosen_ms == res.dense_ms


def test_faster_correct_kernel_is_chosen():
    mod, x, problem = _layer(k=64, c=64, hw=32, n=4)  # dense takes >> the fake's ~2 us
    with registered("test_fast", "test_wrong"):
        res = dispatch.tune("conv2d", _run(mod, x), problem, candidates=None, use_cache=False)
    assert res.choice == "test_fast"
    assert res.chosen_ms <= (1 - res.margin) * res.dense_ms
    assert res.speedup > 1


def test_close_call_goes_to_dense(monkeypatch):
    """A kernel within the margin of dense is not chosen (dense wins close calls)."""
    mod, x, problem = _layer()
    fake = {"dense": (1.0, 7, 0, 5.0), "test_ref": (0.97, 7, 0, 5.0)}
    monkeypatch.setattr(tuning, "benchmark", lambda fns, **kw: {k: fake[k] for k in fns})
    with registered("test_ref"):
        res = dispatch.tune("conv2d", _run(mod, x), problem, candidates=["test_ref"],
                            use_cache=False, margin=0.05)
        assert res.choice == "dense"
        res = dispatch.tune("conv2d", _run(mod, x), problem, candidates=["test_ref"],
                            use_cache=False, margin=0.01)
        assert res.choice == "test_ref"


def test_raising_kernel_reported_not_chosen():
    mod, x, problem = _layer()

    def run(name):
        if name == "test_ref":
            raise RuntimeError("boom")
        return mod.run(x, name)

    with registered("test_ref"):
        res = dispatch.tune("conv2d", run, problem, candidates=["test_ref"], use_cache=False)
    assert res.choice == "dense"
    (bad,) = res.rejected
    assert bad.name == "test_ref" and bad.status == "error" and "boom" in bad.message


def test_cache_hit_on_second_call_and_file_is_valid_json(cache_dir):
    mod, x, problem = _layer()
    calls = []
    with registered("test_slow"):
        first = dispatch.tune("conv2d", _run(mod, x, calls), problem, candidates=["test_slow"])
        n_first = len(calls)
        second = dispatch.tune("conv2d", _run(mod, x, calls), problem, candidates=["test_slow"])
    assert not first.cached and n_first > 0
    assert second.cached and len(calls) == n_first  # nothing ran again
    assert second.choice == first.choice == "dense"
    path = cache_dir / "tuning.json"
    data = json.loads(path.read_text())
    assert data["version"] == tuning.CACHE_VERSION
    (key, entry), = data["entries"].items()
    assert key == first.key
    assert entry["choice"] == "dense" and entry["dense_ms"] > 0
    assert not [p for p in cache_dir.iterdir() if p.name.startswith(".tuning-")]  # no temp left


def test_key_fields():
    _, x, problem = _layer(density=0.1, n=3)
    key = dispatch.problem_key(problem, ["dense", "direct"])
    tt, nt = dispatch.thread_counts()
    for part in ("conv2d|", "N=3,", "K=32", "stride=(1, 1)", "relu=1", "format=csr",
                 "dtype=float32", f"torch_threads={tt}", f"numba_threads={nt}",
                 f"cpu={dispatch.cpu_model()}", "kernels=dense,direct"):
        assert part in key, part
    d = problem["density"]
    assert f"density={round(d, 2):.2f}" in key
    # another batch, density or thread count is another key
    other = dict(problem, N=4)
    assert dispatch.problem_key(other, ["dense", "direct"]) != key
    other = dict(problem, density=problem["density"] + 0.05)
    assert dispatch.problem_key(other, ["dense", "direct"]) != key


def test_concurrent_writers_lose_nothing(tmp_path):
    path = tmp_path / "t.json"

    def writer(i):
        cache = dispatch.TuningCache(path)  # separate objects: only the file lock protects
        for j in range(15):
            cache.put(f"k{i}-{j}", {"choice": "dense"})

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    entries = dispatch.TuningCache(path).load()
    assert len(entries) == 60


def test_corrupt_cache_is_treated_as_empty(cache_dir):
    cache_dir.mkdir(parents=True)
    (cache_dir / "tuning.json").write_text("{not json")
    cache = dispatch.TuningCache()
    assert cache.load() == {}
    cache.put("a", {"choice": "dense"})
    assert cache.get("a") == {"choice": "dense"}


def test_filtered_median_drops_outliers():
    med, kept, dropped = tuning._filtered_median([1.0, 1.1, 0.9, 50.0, 1.0, 1.05, 30.0], 2.0)
    assert dropped == 2 and kept == 5
    assert med == pytest.approx(1.0)
    # a cold first sample is dropped by the second pass
    med, kept, dropped = tuning._filtered_median([40.0, 1.0, 1.0, 1.1, 0.9], 2.0)
    assert dropped == 1 and med == pytest.approx(1.0)


def test_choose_layer_heuristic_and_cache(cache_dir):
    mod, x, problem = _layer(density=0.6)
    assert dispatch.choose_layer("conv2d", mod.weight, problem) == "dense"  # dense above 30 %
    mod, x, problem = _layer(density=0.05)
    with registered("test_ref"):
        # no measurement: the heuristic picks a sparse kernel for a 95 % sparse weight
        assert dispatch.choose_layer("conv2d", mod.weight, problem) != "dense"
        dispatch.tune("conv2d", _run(mod, x), problem, candidates=None)
        # after tuning, the cached decision is what the layer gets
        assert dispatch.choose_layer("conv2d", mod.weight, problem) == dispatch.lookup(problem)


def test_tune_rejects_bad_arguments():
    mod, x, problem = _layer()
    with pytest.raises(ValueError, match="margin"):
        dispatch.tune("conv2d", _run(mod, x), problem, margin=1.5)
    with pytest.raises(ValueError, match="unknown conv2d kernel"):
        dispatch.tune("conv2d", _run(mod, x), problem, candidates=["nope"])
