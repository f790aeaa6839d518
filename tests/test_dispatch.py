"""Kernel choice: one policy (cache, else heuristic), measured tuning (never slower than dense,
wrong kernels rejected, disturbed measurements not cached), capabilities, and the on-disk cache
(hit on second call, atomic file, key fields, safe to share: read-only, bad entries, orphans)."""

import json
import os
import stat
import threading
import time

import pytest
import torch

from _sparsify_fakes import registered
from sparsecnn import conv2d, dispatch, to_sparse
from sparsecnn.dispatch import tuning
from sparsecnn.functional import conv2d_problem
from sparsecnn.kernels import registry
from sparsecnn.kernels.capabilities import KernelUnavailableError, target
from sparsecnn.nn import SparseConv2d
from sparsecnn.timing import Timing


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


def _fake_measure(times: dict, contended=False, log=None):
    def measure(fns, **kw):
        if log is not None:
            log.append(sorted(fns))
        return {k: Timing(times[k], 0.0, 7, 1, 0, None, 1 if contended else 0, 0, contended)
                for k in fns}
    return measure


def test_slow_kernel_never_chosen_and_wrong_kernel_rejected():
    mod, x, problem = _layer()
    with registered("test_slow", "test_wrong"):
        res = dispatch.tune(problem, _run(mod, x), candidates=["test_slow", "test_wrong"],
                            use_cache=False)
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
        res = dispatch.tune(problem, _run(mod, x), candidates=None, use_cache=False)
    assert res.choice == "test_fast"
    assert res.chosen_ms <= (1 - res.margin) * res.dense_ms
    assert res.speedup > 1


def test_close_call_goes_to_dense(monkeypatch):
    """A kernel within the margin of dense is not chosen (dense wins close calls)."""
    mod, x, problem = _layer()
    monkeypatch.setattr(tuning, "measure", _fake_measure({"dense": 1.0, "test_ref": 0.97}))
    with registered("test_ref"):
        res = dispatch.tune(problem, _run(mod, x), candidates=["test_ref"], use_cache=False,
                            margin=0.05)
        assert res.choice == "dense"
        res = dispatch.tune(problem, _run(mod, x), candidates=["test_ref"], use_cache=False,
                            margin=0.01)
        assert res.choice == "test_ref"


def test_raising_kernel_reported_not_chosen():
    mod, x, problem = _layer()

    def run(name):
        if name == "test_ref":
            raise RuntimeError("boom")
        return mod.run(x, name)

    with registered("test_ref"):
        res = dispatch.tune(problem, run, candidates=["test_ref"], use_cache=False)
    assert res.choice == "dense"
    (bad,) = res.rejected
    assert bad.name == "test_ref" and bad.status == "error" and "boom" in bad.message


def test_cache_hit_on_second_call_and_file_is_valid_json(cache_dir):
    mod, x, problem = _layer()
    calls = []
    with registered("test_slow"):
        first = dispatch.tune(problem, _run(mod, x, calls), candidates=["test_slow"])
        n_first = len(calls)
        second = dispatch.tune(problem, _run(mod, x, calls), candidates=["test_slow"])
        n_second = len(calls)
        third = dispatch.tune(problem, _run(mod, x, calls), candidates=["test_slow"],
                              retune=True)
    assert not first.cached and n_first > 0
    assert second.cached and n_second == n_first  # nothing ran again
    assert second.choice == first.choice == "dense"
    assert not third.cached and len(calls) > n_second  # retune measures again
    path = cache_dir / "tuning.json"
    data = json.loads(path.read_text())
    assert data["version"] == tuning.CACHE_VERSION
    (key, entry), = data["entries"].items()
    assert key == first.key == third.key
    assert entry["choice"] == third.choice and entry["dense_ms"] > 0  # retune replaced it
    assert not list(cache_dir.glob(".tuning.json.*.tmp"))  # no temp left


def test_key_fields():
    _, x, problem = _layer(density=0.1, n=3)
    kernels = dispatch.candidate_kernels(problem)
    key = dispatch.cache_key(problem, kernels)
    tt, nt = dispatch.thread_counts()
    t = target()
    for part in ("conv2d|", "N=3,", "K=32", "stride=1x1", "relu=1", "format=csr",
                 "dtype=float32", "device=cpu", f"threads={tt},{nt}", f"isa={t.isa}",
                 f"cpu_name={t.cpu_name}", f"cpu={dispatch.cpu_model()}",
                 registry.get("conv2d", "dense").fingerprint):
        assert part in key, part
    assert f"density={round(problem.density, 2):.2f}" in key
    # another batch, density or kernel set is another key
    assert dispatch.cache_key(problem.replace(N=4), kernels) != key
    assert dispatch.cache_key(problem.replace(density=problem.density + 0.05), kernels) != key
    assert dispatch.cache_key(problem, kernels[:1]) != key


def test_changed_kernel_version_is_another_key():
    _, _, problem = _layer()
    k = registry.get("conv2d", "dense")
    from dataclasses import replace
    k2 = replace(k, version="2")
    assert k.fingerprint != k2.fingerprint
    assert dispatch.cache_key(problem, [k]) != dispatch.cache_key(problem, [k2])


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


@pytest.mark.parametrize("bad", ["a string", {"choice": 3}, {"choice": "dense", "dense_ms": -1},
                                 {"choice": "dense", "dense_ms": float("nan")},
                                 {"choice": "dense", "measurements": "x"},
                                 {"choice": "dense", "measurements": [{"nope": 1}]}])
def test_bad_entries_are_ignored_with_a_warning(cache_dir, bad):
    mod, x, problem = _layer(density=0.05)
    key = dispatch.cache_key(problem, dispatch.candidate_kernels(problem))
    cache_dir.mkdir(parents=True)
    (cache_dir / "tuning.json").write_text(json.dumps(
        {"version": tuning.CACHE_VERSION, "entries": {key: bad, "other": {"choice": "dense"}}}))
    cache = dispatch.TuningCache()
    with pytest.warns(RuntimeWarning, match="ignoring entry"):
        entries = cache.load()
    assert key not in entries and "other" in entries
    assert dispatch.lookup(problem, cache) is None
    with pytest.raises(ValueError, match="not a valid tuning decision"):
        cache.put("k", bad if isinstance(bad, dict) else {"choice": None})


def test_unknown_kernel_in_cache_is_not_used(cache_dir):
    mod, x, problem = _layer(density=0.05)
    key = dispatch.cache_key(problem, dispatch.candidate_kernels(problem))
    dispatch.default_cache().put(key, {"choice": "no_such_kernel"})
    assert dispatch.lookup(problem) is None
    assert dispatch.choose(problem) == dispatch.heuristic(problem)
    y = mod(x)  # inference is unaffected
    assert y.shape == (2, 32, 16, 16)


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores file permissions")
def test_read_only_cache_never_breaks_inference(cache_dir):
    mod, x, problem = _layer(density=0.05)
    cache_dir.mkdir(parents=True)
    cache = dispatch.TuningCache()
    cache.put("seed", {"choice": "dense"})
    os.chmod(cache_dir, stat.S_IRUSR | stat.S_IXUSR)
    try:
        assert mod(x).shape == (2, 32, 16, 16)          # reads need no write access
        with pytest.warns(RuntimeWarning, match="not writable"):
            res = dispatch.tune(problem, _run(mod, x))
        assert res.choice in {k.name for k in dispatch.candidate_kernels(problem)}
        assert dispatch.lookup(problem) == res.choice    # kept in memory for this process
    finally:
        os.chmod(cache_dir, stat.S_IRWXU)


def test_unwritable_cache_location_is_a_warning_not_an_error(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    monkeypatch.setenv("SPARSECNN_CACHE_DIR", str(blocker / "sub"))  # cannot be created
    mod, x, problem = _layer(density=0.05)
    assert mod(x).shape == (2, 32, 16, 16)
    with pytest.warns(RuntimeWarning, match="not writable"):
        dispatch.tune(problem, _run(mod, x))


def test_unopenable_lock_file_is_a_warning_not_an_error(cache_dir):
    """(Also checkable as root, who ignores permissions.) The lock cannot be opened: decisions
    stay in memory, reads of the file still work."""
    mod, x, problem = _layer(density=0.05)
    cache_dir.mkdir(parents=True)
    (cache_dir / "tuning.json").write_text(json.dumps(
        {"version": tuning.CACHE_VERSION, "entries": {"old": {"choice": "dense"}}}))
    (cache_dir / "tuning.json.lock").mkdir()
    assert mod(x).shape == (2, 32, 16, 16)
    with pytest.warns(RuntimeWarning, match="not writable"):
        res = dispatch.tune(problem, _run(mod, x))
    assert dispatch.lookup(problem) == res.choice
    assert "old" in dispatch.default_cache().load()


def test_use_cache_false_touches_no_file(cache_dir):
    mod, x, problem = _layer(density=0.05)
    dispatch.tune(problem, _run(mod, x), use_cache=False)
    dispatch.choose(problem, use_cache=False)
    assert not cache_dir.exists()


def test_orphan_temp_files_are_removed(cache_dir):
    cache_dir.mkdir(parents=True)
    old = cache_dir / ".tuning.json.abc123.tmp"
    old.write_bytes(b"x" * 1000)
    past = time.time() - 3600
    os.utime(old, (past, past))
    young = cache_dir / ".tuning.json.def456.tmp"  # a live writer's: left alone
    young.write_bytes(b"y")
    dispatch.TuningCache().put("a", {"choice": "dense"})
    assert not old.exists() and young.exists()


def test_contended_measurement_is_retried_and_not_cached(cache_dir, monkeypatch):
    monkeypatch.delenv(tuning.CONTENDED_ENV, raising=False)
    mod, x, problem = _layer()
    log = []
    monkeypatch.setattr(tuning, "measure",
                        _fake_measure({"dense": 1.0, "test_ref": 0.5}, True, log))
    with registered("test_ref"), pytest.warns(RuntimeWarning, match="not cached"):
        res = dispatch.tune(problem, _run(mod, x), candidates=["test_ref"], retries=2)
    assert res.contended and res.attempts == 3 and len(log) == 3
    assert res.choice == "test_ref"  # used for this run ...
    assert dispatch.TuningCache().load() == {}  # ... but not cached
    # an undisturbed measurement is cached at once
    monkeypatch.setattr(tuning, "measure", _fake_measure({"dense": 1.0, "test_ref": 0.5}))
    with registered("test_ref"):
        res = dispatch.tune(problem, _run(mod, x), candidates=["test_ref"])
    assert not res.contended and res.attempts == 1 and len(dispatch.TuningCache().load()) == 1


def test_contended_cached_when_asked(cache_dir, monkeypatch):
    monkeypatch.setenv(tuning.CONTENDED_ENV, "cache")
    mod, x, problem = _layer()
    monkeypatch.setattr(tuning, "measure", _fake_measure({"dense": 1.0}, True))
    res = dispatch.tune(problem, _run(mod, x), candidates=[])
    assert res.contended and len(dispatch.TuningCache().load()) == 1


def test_one_policy_for_functional_and_modules(cache_dir):
    mod, x, problem = _layer(density=0.6)
    assert dispatch.choose(problem) == "dense"  # dense above 30 %
    mod, x, problem = _layer(density=0.05)
    with registered("test_fast"):
        # no measurement: the heuristic picks a sparse kernel for a 95 % sparse weight
        assert dispatch.choose(problem) not in ("dense", "test_fast")
        res = dispatch.tune(problem, _run(mod, x))
        assert res.choice == "test_fast"
        # after tuning, the cached decision is what both the module and conv2d(algo="auto") run
        assert dispatch.choose(problem) == "test_fast" == mod.kernel_for(problem)
        _, fp, _, _ = conv2d_problem(x, mod.weight, mod.bias, 1, 1, relu=True)
        assert fp == problem
        y = conv2d(x, mod.weight, mod.bias, 1, 1, relu=True)
        torch.testing.assert_close(y, mod(x))


def test_capabilities_gate_kernels():
    mod, x, problem = _layer(density=0.05)
    base = registry.get("conv2d", "dense")
    from dataclasses import replace
    k = replace(base, name="test_needs_isa", requires=("made-up-isa",), formats=("csr",))
    registry.register(k)
    try:
        assert "test_needs_isa" not in {c.name for c in registry.candidates(problem)}
        assert "made-up-isa" in k.unavailable()
        with pytest.raises(KernelUnavailableError, match="made-up-isa"):
            conv2d(x, mod.weight, None, 1, 1, algo="test_needs_isa")
        with pytest.raises(KernelUnavailableError):
            dispatch.tune(problem, _run(mod, x), candidates=["test_needs_isa"])
    finally:
        registry.unregister("conv2d", "test_needs_isa")


def test_tune_rejects_bad_arguments():
    mod, x, problem = _layer()
    with pytest.raises(ValueError, match="margin"):
        dispatch.tune(problem, _run(mod, x), margin=1.5)
    with pytest.raises(ValueError, match="unknown conv2d kernel"):
        dispatch.tune(problem, _run(mod, x), candidates=["nope"])
