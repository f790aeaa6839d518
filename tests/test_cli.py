"""The command line never loses work: output paths and values checked before any work, one
thread count for torch and Numba, Ctrl-C = one line, exit 130, nothing partial left."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from sparsecnn import models, pipeline
from sparsecnn.cli.main import main

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def fast(tmp_path, monkeypatch):
    monkeypatch.setenv("SPARSECNN_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setitem(models.SPECS, "smallcnn", models.SPECS["smallcnn"].replace(
        dense_train={"epochs": 2, "lr": 0.05, "batch_size": 64}))


def _run(capsys, *args):
    code = main(["optimize", "--epochs", "0", "--batch-sizes", "1", "--time", "0.01",
                 "--quantize", "none", *args])
    return code, capsys.readouterr().err


def _one_line_error(err, expect):
    assert err.startswith("sparsecnn optimize: error: ") and expect in err, err
    assert len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize("case", ["out_is_file", "out_under_file", "export_is_dir",
                                  "export_under_file"])
def test_output_paths_checked_before_any_work(case, tmp_path, capsys):
    (tmp_path / "f").write_text("mine")
    args, expect = {
        "out_is_file": (["--out", str(tmp_path / "f")], "exists and is not a folder"),
        "out_under_file": (["--out", str(tmp_path / "f" / "sub")], "cannot create results there"),
        "export_is_dir": (["--out", str(tmp_path / "o"), "--export-onnx", str(tmp_path)],
                          "is a folder; expected a file path"),
        "export_under_file": (["--out", str(tmp_path / "o"), "--export-onnx",
                               str(tmp_path / "f" / "m.onnx")], "cannot write there"),
    }[case]
    t0 = time.perf_counter()
    code, err = _run(capsys, *args)
    assert code == 2
    _one_line_error(err, expect)
    assert time.perf_counter() - t0 < 5                    # refused at once ...
    assert not (tmp_path / "cache").exists()              # ... before training anything
    assert (tmp_path / "f").read_text() == "mine" and not (tmp_path / "o").exists()


@pytest.mark.parametrize("value, expect", [("0", "threads must be a positive int"),
                                           ("-3", "threads must be a positive int"),
                                           ("10000", "usable cores")])
def test_threads_validated(value, expect, tmp_path, capsys):
    code, err = _run(capsys, "--threads", value, "--out", str(tmp_path / "o"))
    assert code == 2
    _one_line_error(err, expect)
    assert not (tmp_path / "cache").exists()


def test_threads_applied_to_torch_and_numba(tmp_path):
    import numba
    res = pipeline.optimize("smallcnn", epochs=0, batch_sizes=[1], time_s=0.01, threads=1,
                            quantize=(), tune=False, out_dir=tmp_path / "o", progress=False)
    assert res["threads"] == {"torch": 1, "numba": 1}
    assert torch.get_num_threads() == 1 and numba.get_num_threads() == 1


@pytest.mark.parametrize("value", ["nan", "-1", "0", "inf"])
def test_time_rejects_nan_and_negative(value, tmp_path, capsys):
    code, err = _run(capsys, "--time", value, "--out", str(tmp_path / "o"))
    assert code == 2
    _one_line_error(err, "time (seconds of timed runs per batch size) must be a finite number > 0")
    assert not (tmp_path / "cache").exists()


def test_data_npy_gets_a_clear_message(tmp_path, capsys):
    np.save(tmp_path / "x.npy", np.zeros((4, 3, 8, 8), dtype=np.uint8))
    code, err = _run(capsys, "--data", str(tmp_path / "x.npy"), "--out", str(tmp_path / "o"))
    assert code == 2
    _one_line_error(err, "is a single .npy array, expected an .npz archive holding 'images'")


def test_ctrl_c_one_line_exit_130_nothing_written(tmp_path, capsys, monkeypatch):
    def interrupt(*a, **k):
        raise KeyboardInterrupt
    monkeypatch.setattr(pipeline, "time_models", interrupt)   # deep in the run, after tuning
    out, onnx = tmp_path / "o", tmp_path / "m.onnx"
    code, err = _run(capsys, "--out", str(out), "--export-onnx", str(onnx))
    assert code == 130
    assert err.strip().splitlines()[-1] == "sparsecnn optimize: interrupted; nothing was written"
    assert not out.exists() and not onnx.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]   # no temp file


def test_ctrl_c_real_signal(tmp_path):
    """A real SIGINT to a running ``sparsecnn optimize``: one line on stderr, status 130, and no
    results folder, ONNX file or temporary file left."""
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"), SPARSECNN_CACHE_DIR=str(tmp_path / "c"),
               COLUMNS="200")
    out, onnx = tmp_path / "o", tmp_path / "m.onnx"
    proc = subprocess.Popen(
        [sys.executable, "-c", "import sys; from sparsecnn.cli.main import main; "
         "sys.exit(main(sys.argv[1:]))", "optimize", "--epochs", "200", "--batch-sizes", "1",
         "--time", "0.01", "--quantize", "none", "--threads", "1", "--out", str(out),
         "--export-onnx", str(onnx)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    seen = []
    try:
        for line in proc.stderr:                       # wait until it is busy pruning
            seen.append(line)
            if "dense top-1" in line:
                break
        time.sleep(1.0)
        proc.send_signal(signal.SIGINT)
        _, rest = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    lines = [ln for ln in rest.splitlines() if ln.strip()]
    assert proc.returncode == 130, (proc.returncode, seen[-5:], lines[-5:])
    assert lines[-1] == "sparsecnn optimize: interrupted; nothing was written"
    assert not any("Traceback" in ln for ln in lines)
    assert not out.exists() and not onnx.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c"]


def test_retune_measures_again_and_replaces_the_cache(tmp_path, capsys, monkeypatch):
    """A tuning cache filled on a busy machine is kept for good unless asked: --retune measures
    every layer again (never reading the cache) and writes the new decisions."""
    from sparsecnn.dispatch import tuning

    seen = []
    real = tuning.tune

    def spy(problem, run, **kw):
        res = real(problem, run, **kw)
        seen.append((kw.get("retune", False), res.cached))
        return res

    monkeypatch.setattr("sparsecnn.nn.convert.tune", spy)
    for args, retune, cached in (((), False, False),            # measured, cached
                                 ((), False, True),             # read from the cache
                                 (("--retune",), True, False)):  # measured again
        seen.clear()
        code, err = _run(capsys, "--out", str(tmp_path / "a"), *args)
        assert code == 0, err
        assert seen and set(seen) == {(retune, cached)}, seen
    code, err = _run(capsys, "--out", str(tmp_path / "c"), "--retune", "--no-tune")
    assert code == 2
    _one_line_error(err, "--retune")
    assert not (tmp_path / "c").exists()
