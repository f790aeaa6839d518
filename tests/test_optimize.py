"""The optimize job: end to end on a tiny configuration, and the CLI's bad-input handling."""

import json

import numpy as np
import pytest
import torch

from sparsecnn import nn as snn
from sparsecnn import pipeline
from sparsecnn.cli.main import main

prune = pytest.importorskip("sparsecnn.prune")
if not hasattr(prune, "GradualPruner"):  # the pruning package lands from another branch
    pytest.skip("sparsecnn.prune not available yet", allow_module_level=True)


@pytest.fixture(autouse=True)
def fast(tmp_path, monkeypatch):
    monkeypatch.setenv("SPARSECNN_CACHE_DIR", str(tmp_path / "cache"))
    # a tiny dense training run (the default is 15 epochs)
    monkeypatch.setitem(pipeline.DENSE_TRAIN, "smallcnn", {"epochs": 3, "lr": 0.05, "batch_size": 64})


def _tiny(out, **kw):
    args = dict(epochs=3, batch_sizes=[1, 8], time_s=0.05, out_dir=out, progress=False)
    args.update(kw)
    return pipeline.optimize("smallcnn", **args)


def test_optimize_end_to_end_tiny(tmp_path):
    out = tmp_path / "results"
    res = _tiny(out, sparsity=0.8, export_onnx=tmp_path / "pruned.onnx")
    folder = out / res["results_dir"].rsplit("/", 1)[-1]
    assert folder.is_dir() and folder.name.startswith("optimize-smallcnn-")
    assert sorted(p.name for p in folder.iterdir()) == ["model.pt", "results.json", "summary.md"]
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temp folder left
    data = json.loads((folder / "results.json").read_text())
    assert data["verify"]["within_tolerance"] and data["verify"]["same_predictions"]
    assert data["accuracy"]["sparse_top1"] == data["accuracy"]["pruned_top1"]
    assert data["accuracy"]["dense_top1"] > 0.5  # 3 epochs on digits is enough for this
    for layer, s in data["pruning"]["layer_sparsity"].items():
        assert s == pytest.approx(0.8, abs=0.01), layer
    for b in ("1", "8"):
        t = data["latency"][b]
        assert t["dense"]["median_ms"] > 0 and t["sparse"]["median_ms"] > 0
        assert t["speedup"] == pytest.approx(t["dense"]["median_ms"] / t["sparse"]["median_ms"])
        rows = data["layers"][b]
        assert [r["name"] for r in rows] == ["conv1", "conv2", "fc"]
        for r in rows:  # never slower than dense by the tuner's own measurement
            assert r["chosen_ms"] <= r["dense_ms"]
    assert data["model_bytes"]["sparse"] < data["model_bytes"]["dense"]
    summary = (folder / "summary.md").read_text()
    assert "| batch |" in summary and "conv2" in summary and "BN not folded" in summary
    # the saved sparse model reloads and runs
    model = snn.load(folder / "model.pt")
    x = torch.randn(2, 1, 8, 8)
    assert model(x).shape == (2, 10)
    # ONNX export of the pruned model, and import back through onnx2torch
    from sparsecnn.onnx import load_onnx
    onnx_model = load_onnx(tmp_path / "pruned.onnx")
    assert onnx_model(x).shape == (2, 10)
    # second run: the dense weights come from the cache, a new folder, the first one intact
    before = (folder / "results.json").read_bytes()
    res2 = _tiny(out, sparsity=0.8, batch_sizes=[1])
    assert res2["weights"]["source"] == "cache"
    assert res2["results_dir"] != res["results_dir"]
    assert (folder / "results.json").read_bytes() == before


def _earlier(out):
    folder = out / "optimize-smallcnn-earlier"
    folder.mkdir(parents=True)
    (folder / "results.json").write_text('{"earlier": true}')
    return folder


def _npz(path, images, labels):
    np.savez(path, images=images, labels=labels)
    return str(path)


@pytest.mark.parametrize("case", ["missing_weights", "corrupt_weights", "unfit_state",
                                  "wrong_shape", "wrong_dtype", "unfit_images",
                                  "sparsity_high", "sparsity_negative"])
def test_cli_bad_input(case, tmp_path, capsys):
    out = tmp_path / "results"
    earlier = _earlier(out)
    args = ["optimize", "--out", str(out), "--epochs", "0", "--batch-sizes", "1", "--time", "0.01"]
    expect = {
        "missing_weights": "checkpoint not found",
        "corrupt_weights": "cannot read checkpoint",
        "unfit_state": "does not fit",
        "wrong_shape": "expected (N, 3, H, W)",
        "wrong_dtype": "expected uint8",
        "unfit_images": "do not fit the model",
        "sparsity_high": "sparsity must be a number in [0, 1)",
        "sparsity_negative": "sparsity must be a number in [0, 1)",
    }[case]
    rng = np.random.default_rng(0)
    if case == "missing_weights":
        args += ["--weights", str(tmp_path / "nope.pt")]
    elif case == "corrupt_weights":
        (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
        args += ["--weights", str(tmp_path / "bad.pt")]
    elif case == "unfit_state":
        from sparsecnn import models
        torch.save({"state_dict": models.build("resnet20").state_dict()}, tmp_path / "r20.pt")
        args += ["--weights", str(tmp_path / "r20.pt")]
    elif case == "wrong_shape":
        args += ["--data", _npz(tmp_path / "d.npz", rng.integers(0, 255, (4, 1, 8, 8), dtype=np.uint8),
                                np.zeros(4, dtype=np.int64))]
    elif case == "wrong_dtype":
        args += ["--data", _npz(tmp_path / "d.npz", rng.random((4, 3, 8, 8), dtype=np.float32),
                                np.zeros(4, dtype=np.int64))]
    elif case == "unfit_images":  # CIFAR-shaped images for the 1-channel 8x8 SmallCNN
        args += ["--data", _npz(tmp_path / "d.npz", rng.integers(0, 255, (4, 3, 32, 32), dtype=np.uint8),
                                np.zeros(4, dtype=np.int64))]
    elif case == "sparsity_high":
        args += ["--sparsity", "1.0"]
    else:
        args += ["--sparsity", "-0.1"]
    code = main(args)
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("sparsecnn optimize: error: ") and expect in err
    assert len(err.strip().splitlines()) == 1
    assert sorted(p.name for p in out.iterdir()) == [earlier.name]  # nothing new, nothing lost
    assert (earlier / "results.json").read_text() == '{"earlier": true}'
