"""Tests of the layer benchmark (sparsecnn.bench, ``sparsecnn bench``): fast, trivial sizes."""

import csv
import json
import math

import pytest
import torch
import torch.nn.functional as F

from sparsecnn import bench
from sparsecnn.bench import LAYERS, SUITES, LayerSpec
from sparsecnn.cli.main import main
from sparsecnn.kernels import registry

TINY = LayerSpec("tiny", "test", C=4, H=7, W=7, K=6, R=3, S=3, stride=1, pad=1)
FAST = {"min_time": 0.002, "max_time": 0.01}


def _densify(prep, x, bias):
    p = prep.problem
    y = F.conv2d(x, prep.weight.to_dense().to(x.dtype), bias, p.stride, p.padding, p.dilation,
                 p.groups)
    return torch.relu_(y) if p.relu else y


def _wrong(prep, x, bias):
    return _densify(prep, x, bias) + 1.0


def _boom(prep, x, bias):
    raise RuntimeError("kernel exploded")


@pytest.fixture
def test_kernels(monkeypatch):
    """Throwaway conv2d kernels on CSR (registered for this test only, removed afterwards)."""
    made = {
        "t_densify": registry.Kernel("t_densify", "conv2d", _densify, formats=("csr",)),
        "t_wrong": registry.Kernel("t_wrong", "conv2d", _wrong, formats=("csr",)),
        "t_boom": registry.Kernel("t_boom", "conv2d", _boom, formats=("csr",)),
        "t_strideless": registry.Kernel("t_strideless", "conv2d", _densify, formats=("csr",),
                                        supports=lambda p: p.stride == (1, 1)),
    }
    for name, k in made.items():
        monkeypatch.setitem(registry._KERNELS, ("conv2d", name), k)
    return made


# --- the layer table ---------------------------------------------------------------------------
def test_layer_table_well_formed():
    assert len(LAYERS) == len(set(LAYERS))
    for name, spec in LAYERS.items():
        assert spec.name == name and name.startswith(spec.model)
        assert spec.OH >= 1 and spec.OW >= 1
        # the output size is what torch computes for that geometry
        y = torch.empty(1, spec.K, spec.OH, spec.OW)
        assert F.conv2d(torch.empty(1, spec.C, spec.H, spec.W, device="meta"),
                        torch.empty(spec.weight_shape, device="meta"), stride=spec.stride,
                        padding=spec.pad).shape == y.shape
    for suite, names in SUITES.items():
        assert names and all(n in LAYERS for n in names), suite
    assert SUITES["alexnet-conv4"] == ("alexnet-conv4",)
    assert set(SUITES["all"]) == set(LAYERS)


def test_layer_table_known_shapes():
    c4 = LAYERS["alexnet-conv4"]
    assert (c4.C, c4.H, c4.K, c4.R, c4.pad, c4.OH) == (384, 13, 256, 3, 1, 13)
    c1 = LAYERS["alexnet-conv1"]
    assert (c1.C, c1.H, c1.K, c1.R, c1.stride, c1.pad, c1.OH) == (3, 224, 64, 11, 4, 2, 55)
    # the GPU paper's (seeds/003) VGG-16 shapes, written CxHxWxK
    vgg = {f"{s.C}x{s.H}x{s.W}x{s.K}" for s in (LAYERS[n] for n in SUITES["vgg16"])}
    assert vgg == {"64x224x224x64", "64x112x112x128", "128x112x112x128", "128x56x56x256",
                   "256x56x56x256", "256x28x28x512", "512x28x28x512", "512x14x14x512"}
    r50 = [LAYERS[n] for n in SUITES["resnet50-1x1"]]
    assert all(s.R == s.S == 1 and s.pad == 0 for s in r50)
    assert any(s.stride == 2 for s in r50)
    r20 = [LAYERS[n] for n in SUITES["resnet20"]]
    assert {(s.C, s.K, s.stride) for s in r20} >= {(16, 16, 1), (32, 32, 1), (64, 64, 1),
                                                   (16, 32, 2), (32, 64, 2)}


@pytest.mark.parametrize("kwargs", [{"C": 0}, {"stride": 0}, {"pad": -1}, {"H": 2, "pad": 0}])
def test_layer_spec_rejects_bad_geometry(kwargs):
    args = dict(name="x", model="m", C=4, H=7, W=7, K=6, R=3, S=3, stride=1, pad=1)
    args.update(kwargs)
    with pytest.raises(ValueError, match="layer 'x'"):
        LayerSpec(**args)


def test_select_layers():
    assert [s.name for s in bench.select_layers()] == ["alexnet-conv4"]
    assert [s.name for s in bench.select_layers("alexnet", ["resnet20-64@8"])] == ["resnet20-64@8"]
    with pytest.raises(ValueError, match="known suites: alexnet-conv4"):
        bench.select_layers("nope")
    with pytest.raises(ValueError, match="known layers:.*alexnet-conv4"):
        bench.select_layers(None, ["nope"])


# --- weights ---------------------------------------------------------------------------------
def test_pruned_weight_exact_sparsity_and_nested():
    w9 = bench.pruned_weight(TINY, 0.9, seed=3)
    w5 = bench.pruned_weight(TINY, 0.5, seed=3)
    n = w9.numel()
    assert int((w9 == 0).sum()) == round(0.9 * n) and int((w5 == 0).sum()) == round(0.5 * n)
    assert torch.all(w5[w9 != 0] == w9[w9 != 0])      # same dense weight, superset pruned
    assert w9[w9 != 0].abs().min() >= w5[w5 != 0].abs().min()  # magnitude pruning
    assert torch.equal(bench.pruned_weight(TINY, 0.9, seed=3), w9)  # seeded
    assert not torch.equal(bench.pruned_weight(TINY, 0.9, seed=4), w9)


# --- break-even --------------------------------------------------------------------------------
def _rows(speedups, kernel="k", layer="L", n=1, status="ok"):
    return [{"layer": layer, "kernel": kernel, "N": n, "sparsity": s, "speedup": v,
             "status": status} for s, v in speedups]


def test_break_even_interpolates_crossing():
    # straight line in (log density, log speedup) between (0.8, 0.5) and (0.9, 2.0):
    # log 0.5 = -log 2, so 1x is halfway: density = sqrt(0.2 * 0.1)
    rows = _rows([(0.5, 0.2), (0.8, 0.5), (0.9, 2.0), (0.95, 4.0)])
    be = bench.break_even(rows)
    assert be[("L", "k", 1)] == pytest.approx(1 - math.sqrt(0.2 * 0.1))
    assert bench.break_even_labels(rows)[("L", "k", 1)] == "0.859"
    # exactly 1x at a measured point: break-even is that point
    assert bench.break_even(_rows([(0.5, 0.5), (0.9, 1.0), (0.95, 3.0)]))[("L", "k", 1)] == \
        pytest.approx(0.9)


def test_break_even_uses_last_crossing_when_noisy():
    rows = _rows([(0.5, 1.2), (0.7, 0.8), (0.9, 0.5), (0.95, 2.0)])
    assert bench.break_even(rows)[("L", "k", 1)] == pytest.approx(1 - math.sqrt(0.1 * 0.05))


def test_break_even_none_and_below_range():
    rows = (_rows([(0.5, 0.1), (0.9, 0.5), (0.993, 0.9)], kernel="slow")
            + _rows([(0.5, 1.1), (0.9, 3.0)], kernel="fast")
            + _rows([(0.5, 0.5), (0.9, 3.0)], kernel="wrong", status="MISMATCH")
            + _rows([(0.5, 1.0)], kernel="dense"))
    be, labels = bench.break_even(rows), bench.break_even_labels(rows)
    assert be == {("L", "slow", 1): None, ("L", "fast", 1): None, ("L", "wrong", 1): None}
    assert labels == {("L", "slow", 1): ">0.993", ("L", "fast", 1): "<0.5",
                      ("L", "wrong", 1): "n/a (no valid rows)"}


def test_break_even_per_layer_kernel_batch():
    rows = _rows([(0.5, 0.5), (0.9, 2.0)], n=1) + _rows([(0.5, 0.5), (0.9, 0.8)], n=8)
    be = bench.break_even(rows)
    assert be[("L", "k", 1)] == pytest.approx(1 - math.sqrt(0.5 * 0.1)) and be[("L", "k", 8)] is None


# --- timing end to end -------------------------------------------------------------------------
def test_time_layer_rows(test_kernels):
    rows = bench.time_layer(TINY, 0.75, 2, ["t_densify", "t_wrong", "t_boom"], 1, 0, **FAST)
    by = {r["kernel"]: r for r in rows}
    assert list(by) == ["dense", "t_densify", "t_wrong", "t_boom"]
    assert all(tuple(r) == bench.ROW_KEYS for r in rows)
    d, s = by["dense"], by["t_densify"]
    numel = 6 * 4 * 3 * 3
    assert d["nnz"] == s["nnz"] == numel - round(0.75 * numel)
    assert d["speedup"] == 1.0 and d["format"] == "dense" and s["format"] == "csr"
    assert s["status"] == "ok" and s["max_abs_err"] < 1e-5
    assert s["ms"] > 0 and s["iqr_ms"] >= 0 and s["first_call_ms"] > 0
    assert s["speedup"] == pytest.approx(d["ms"] / s["ms"])
    t = s["ms"] / 1e3
    assert s["useful_gflops"] == pytest.approx(2 * s["nnz"] * 7 * 7 * 2 / t / 1e9)
    assert s["dense_equiv_gflops"] == pytest.approx(2 * numel * 7 * 7 * 2 / t / 1e9)
    assert d["bytes_weight"] == d["bytes_dense"] == numel * 4
    assert s["bytes_weight"] == (6 + 1) * 4 + s["nnz"] * 8   # CSR: rowptr + colidx + values
    # a wrong kernel is flagged, a crashing one reported in its row
    assert by["t_wrong"]["status"] == "MISMATCH" and by["t_wrong"]["max_abs_err"] == pytest.approx(1.0)
    assert by["t_boom"]["status"].startswith("error: RuntimeError: kernel exploded")
    assert math.isnan(by["t_boom"]["ms"])


def test_time_layer_unsupported(test_kernels):
    spec = LayerSpec("tiny-s2", "test", C=4, H=8, W=8, K=4, R=3, S=3, stride=2, pad=1)
    rows = bench.time_layer(spec, 0.5, 1, ["t_strideless"], 1, 0, **FAST)
    assert rows[1]["status"] == "unsupported" and math.isnan(rows[1]["speedup"])


def test_sweep_end_to_end(test_kernels):
    rows = bench.sweep([TINY], [0.9, 0.5], [1, 3], ["t_densify"], 1, progress=False, **FAST)
    assert [(r["N"], r["sparsity"], r["kernel"]) for r in rows] == [
        (1, 0.5, "dense"), (1, 0.5, "t_densify"), (1, 0.9, "dense"), (1, 0.9, "t_densify"),
        (3, 0.5, "dense"), (3, 0.5, "t_densify"), (3, 0.9, "dense"), (3, 0.9, "t_densify")]
    assert all(r["status"] == "ok" for r in rows)
    assert set(bench.break_even(rows)) == {("tiny", "t_densify", 1), ("tiny", "t_densify", 3)}
    comp = bench.compile_times(rows)
    assert set(comp) == {"dense", "t_densify"} and comp["t_densify"]["compile_ms"] >= 0


def test_default_kernels_are_the_csr_ones(test_kernels):
    names = bench.resolve_kernels(None)
    assert names[0] == "dense"
    assert set(names[1:]) == {k.name for k in registry.kernels("conv2d") if k.accepts("csr")
                              and k.unavailable() is None} - {"dense"}
    assert {"t_densify", "t_wrong"} <= set(names)


@pytest.mark.parametrize("call, match", [
    (lambda: bench.time_layer(TINY, 1.0, 1, [], 1), r"sparsity must be a number in \[0, 1\)"),
    (lambda: bench.time_layer(TINY, -0.1, 1, [], 1), "sparsity"),
    (lambda: bench.time_layer(TINY, 0.5, 0, [], 1), "batch must be an int >= 1"),
    (lambda: bench.time_layer(TINY, 0.5, 1, [], 0), "threads must be an int >= 1"),
    (lambda: bench.time_layer(TINY, 0.5, 1, [], 10_000), "NUMBA_NUM_THREADS"),
    (lambda: bench.time_layer(TINY, 0.5, 1, ["nope"], 1), "registered: dense"),
    (lambda: bench.time_layer("nope", 0.5, 1, [], 1), "known layers"),
])
def test_library_bad_args(call, match):
    with pytest.raises(ValueError, match=match):
        call()


# --- CLI ------------------------------------------------------------------------------------------
def _cli(tmp_path, *extra):
    return main(["bench", "--layers", "resnet20-64@8", "--sparsity", "0.5", "0.9", "--batch", "1",
                 "--threads", "1", "--min-time", "0.002", "--max-time", "0.01", "--no-progress",
                 *extra])


def test_cli_writes_results_folder(tmp_path, test_kernels, capsys):
    parent = tmp_path / "res"
    assert _cli(tmp_path, "--kernels", "t_densify", "--out", str(parent)) == 0
    [out] = list(parent.iterdir())                          # one folder, no temporary one left
    assert out.name.startswith("bench-layers-")
    assert sorted(p.name for p in out.iterdir()) == ["bench.csv", "bench.json", "speedup.png",
                                                     "speedup.svg"]
    with open(out / "bench.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["sparsity"], r["kernel"]) for r in rows] == [
        ("0.5", "dense"), ("0.5", "t_densify"), ("0.9", "dense"), ("0.9", "t_densify")]
    doc = json.loads((out / "bench.json").read_text())
    assert doc["machine"]["cpu_model"] and doc["machine"]["torch"] == torch.__version__
    assert doc["machine"]["threads"] == 1 and "numba" in doc["machine"] and doc["machine"]["date"]
    assert "magnitude" in doc["benchmark"]["weights"]
    assert [p["name"] for p in doc["benchmark"]["providers"]] == ["dense", "t_densify"]
    assert len(doc["rows"]) == 4 and doc["break_even"][0]["kernel"] == "t_densify"
    assert (out / "speedup.png").read_bytes()[:4] == b"\x89PNG"
    text = capsys.readouterr().out
    assert "resnet20-64@8" in text and "break-even" in text and "t_densify" in text


def test_cli_mismatch_exit_code(tmp_path, test_kernels, capsys):
    assert _cli(tmp_path, "--kernels", "t_wrong", "--out", str(tmp_path / "r"), "--no-plot") == 1
    assert "MISMATCH" in capsys.readouterr().out


def test_cli_existing_out_gets_a_new_folder_and_keeps_the_rest(tmp_path, test_kernels):
    out = tmp_path / "exists"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert _cli(tmp_path, "--kernels", "t_densify", "--out", str(out), "--no-plot") == 0
    assert _cli(tmp_path, "--kernels", "t_densify", "--out", str(out), "--no-plot") == 0
    names = sorted(p.name for p in out.iterdir())
    assert len(names) == 3 and names[-1] == "keep.txt" and (out / "keep.txt").read_text() == "mine"
    assert all(n.startswith("bench-layers-") for n in names[:2])


def test_cli_out_that_is_a_file_fails_before_timing(tmp_path, capsys, monkeypatch):
    def never(*a, **k):
        raise AssertionError("timed although --out is unusable")
    monkeypatch.setattr("sparsecnn.bench.benchmark.sweep", never)
    (tmp_path / "f").write_text("x")
    assert _cli(tmp_path, "--out", str(tmp_path / "f")) == 2
    assert "exists and is not a folder" in capsys.readouterr().err
    assert (tmp_path / "f").read_text() == "x"


def test_cli_failure_while_writing_leaves_nothing(tmp_path, monkeypatch, test_kernels):
    def fail(*a, **k):
        raise RuntimeError("disk full")
    monkeypatch.setattr("sparsecnn.bench.output.plot_speedup", fail)
    with pytest.raises(RuntimeError, match="disk full"):
        _cli(tmp_path, "--kernels", "t_densify", "--out", str(tmp_path / "r"))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("args, match", [
    (["--suite", "nope"], "known suites: alexnet-conv4, alexnet, vgg16"),
    (["--layers", "nope"], "known layers: alexnet-conv1"),
    (["--kernels", "nope"], "registered: dense"),
    (["--sparsity", "1.0"], r"sparsity must be a number in \[0, 1\), got 1.0"),
    (["--sparsity", "-0.5"], "sparsity"),
    (["--threads", "0"], "threads must be an int >= 1, got 0"),
    (["--batch", "0"], "batch must be an int >= 1"),
])
def test_cli_bad_args_exit_2(args, match, capsys, tmp_path):
    assert main(["bench", "--out", str(tmp_path / "r"), *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("sparsecnn bench: error:")
    assert __import__("re").search(match, err), err
    assert not (tmp_path / "r").exists()


def test_cli_list(capsys):
    assert main(["bench", "--list"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in ("alexnet-conv4", "vgg16-512x14x14x512", "dense"))


def test_sweep_progress_bar(test_kernels):
    import io

    from rich.console import Console

    buf = io.StringIO()
    rows = bench.sweep([TINY], [0.5], [1], ["t_densify"], 1, progress=True,
                       console=Console(file=buf, force_terminal=False), **FAST)
    assert len(rows) == 2 and "tiny N=1 sparsity=0.5" in buf.getvalue()


# --- compilation target -------------------------------------------------------------------------
def test_rows_say_which_isa_they_ran(test_kernels):
    from sparsecnn.kernels.capabilities import target

    rows = bench.time_layer(TINY, 0.5, 1, ["t_densify"], 1, 0, **FAST)
    by = {r["kernel"]: r for r in rows}
    assert by["t_densify"]["isa"] == target().isa
    assert by["dense"]["isa"].startswith("torch:")


def test_target_environment():
    from sparsecnn.cli.bench import TARGET_ENV, target_environment
    from sparsecnn.cli.main import UsageError

    env = target_environment("haswell", {"PATH": "/bin", "NUMBA_CPU_FEATURES": "+avx512f"})
    assert env == {"PATH": "/bin", "NUMBA_CPU_NAME": "haswell", "NUMBA_CPU_FEATURES": "",
                   TARGET_ENV: "haswell"}
    env = target_environment("host", {"NUMBA_CPU_NAME": "x86-64", "NUMBA_CPU_FEATURES": ""})
    assert env == {TARGET_ENV: "host"}
    with pytest.raises(UsageError, match="LLVM CPU name"):
        target_environment("haswell; rm -rf /", {})


def test_cli_target_reruns_itself_with_the_same_arguments(tmp_path, monkeypatch):
    import subprocess

    seen = {}

    def fake_run(cmd, env):
        seen["cmd"], seen["env"] = cmd, env
        return subprocess.CompletedProcess(cmd, 0)

    monkeypatch.setattr(subprocess, "run", fake_run)
    monkeypatch.delenv("SPARSECNN_BENCH_TARGET", raising=False)
    out = tmp_path / "r"
    assert _cli(tmp_path, "--kernels", "direct", "--target", "x86-64", "--out", str(out)) == 0
    cmd, env = seen["cmd"], seen["env"]
    assert cmd[1:4] == ["-m", "sparsecnn", "bench"] and "--target" not in cmd
    assert env["NUMBA_CPU_NAME"] == "x86-64" and env["NUMBA_CPU_FEATURES"] == ""
    # the child's arguments parse back to the same options
    from sparsecnn.cli.main import build_parser

    a = build_parser().parse_args(cmd[3:])
    assert (a.layers, a.sparsities, a.batch, a.threads, a.kernels, a.out, a.no_progress,
            a.min_time, a.max_time) == (["resnet20-64@8"], [0.5, 0.9], [1], 1, ["direct"],
                                        str(out), True, 0.002, 0.01)
    assert not out.exists()


def test_cli_target_subprocess_compiles_for_that_cpu():
    """``--list --target x86-64`` runs in a child whose Numba targets the SSE2 baseline."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k not in ("NUMBA_CPU_NAME", "NUMBA_CPU_FEATURES")}
    out = subprocess.run([sys.executable, "-m", "sparsecnn", "bench", "--list", "--target",
                          "x86-64"], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "x86-64 (x86_64, sse2; forced" in " ".join(out.stdout.split())
