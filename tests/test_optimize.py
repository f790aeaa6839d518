"""The optimize job: end to end on a tiny configuration, and the CLI's bad-input handling."""

import dataclasses
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
    from sparsecnn import models
    monkeypatch.setitem(models.SPECS, "smallcnn", models.SPECS["smallcnn"].replace(
        dense_train={"epochs": 3, "lr": 0.05, "batch_size": 64}))


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
    # gradual pruning ran the smallcnn_digits recipe (with this run's sparsity and epochs)
    assert data["pruning"]["recipe"] == dataclasses.asdict(prune.recipes.smallcnn_digits(
        final_sparsity=0.8, epochs=3, weights=data["weights"]["path"]))
    assert data["pruning"]["schedule"].startswith("AGP")
    for b in ("1", "8"):
        t = data["latency"][b]
        assert t["dense"]["median_ms"] > 0 and t["sparse"]["median_ms"] > 0
        assert t["speedup"] == pytest.approx(t["dense"]["median_ms"] / t["sparse"]["median_ms"])
        rows = data["layers"][b]
        assert [r["name"] for r in rows] == ["conv1", "conv2", "fc"]
        for r in rows:  # never slower than dense by the tuner's own measurement
            assert r["chosen_ms"] <= r["dense_ms"]
    assert data["model_bytes"]["sparse"] < data["model_bytes"]["dense"]
    # quantization of the pruned weights: every method reported, fewer bytes than fp32 CSR
    quant = {r["method"]: r for r in data["quantization"]}
    assert list(quant) == list(pipeline.QUANT_METHODS)
    for r in quant.values():
        assert 0.0 <= r["top1"] <= 1.0
        assert r["delta_points"] == pytest.approx(100 * (r["top1"] - data["accuracy"]["pruned_top1"]))
        assert r["nbytes"] < r["fp32_nbytes"]
    assert quant["fp16"]["nbytes"] > quant["int8_sym"]["nbytes"] > quant["kmeans"]["nbytes"]
    summary = (folder / "summary.md").read_text()
    assert "## Quantization" in summary and "| kmeans |" in summary
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


def test_pruning_recipe_defaults_per_model(tmp_path):
    """optimize's gradual pruning is the ready-made recipes with --sparsity/--epochs/--seed."""
    from sparsecnn.prune import recipes
    w = tmp_path / "w.th"
    assert pipeline.pruning_recipe("resnet20", "magnitude", 0.9, 40, weights=w) == \
        recipes.resnet20_cifar_90_uniform(weights=str(w))
    assert pipeline.pruning_recipe("resnet20", "global", 0.9, 40, weights=w) == \
        recipes.resnet20_cifar_90(weights=str(w))
    r = pipeline.pruning_recipe("resnet56", "unified", 0.8, 7, seed=3, weights=w)
    assert r == recipes.resnet20_cifar_90(model="resnet56", weights=str(w), scope="layer",
                                          method="unified", final_sparsity=0.8, epochs=7, seed=3)
    assert r.kd_alpha == 0.9 and r.augment and r.lr == 0.02 and r.batch_size == 128
    s = pipeline.pruning_recipe("smallcnn", "magnitude", 0.9, 15, weights=w, prune_linear=True)
    assert s == recipes.smallcnn_digits(final_sparsity=0.9, weights=str(w))
    assert s.kd_alpha == 0.0 and not s.augment and s.prune_linear
    other = pipeline.pruning_recipe(None, "global", 0.5, 2)  # an ONNX import: no KD, no augment
    assert other.kd_alpha == 0.0 and not other.augment and other.scope == "global"
    for method in ("nm", "filter"):
        with pytest.raises(ValueError, match="not a gradual pruning method"):
            pipeline.pruning_recipe("resnet20", method, 0.9, 40)


def test_optimize_gradual_resnet_uses_recipe(tmp_path, monkeypatch):
    """A CIFAR ResNet with weights: the gradual path is run_recipe with distillation from the
    dense model and crop + flip, exactly the resnet20_cifar_90_uniform settings."""
    from sparsecnn import data, models
    from sparsecnn.prune import recipes
    seen = []
    real_train = recipes.train

    def spy(model, loader, epochs, lr, **kw):
        seen.append(dict(kw, epochs=epochs, lr=lr, batch_size=loader.batch_size))
        return real_train(model, loader, epochs, lr, **kw)

    monkeypatch.setattr(recipes, "train", spy)
    rng = np.random.default_rng(0)
    train_npz = _npz(tmp_path / "train.npz", rng.integers(0, 255, (24, 3, 32, 32), dtype=np.uint8),
                     rng.integers(0, 10, 24))
    test_npz = _npz(tmp_path / "test.npz", rng.integers(0, 255, (6, 3, 32, 32), dtype=np.uint8),
                    rng.integers(0, 10, 6))
    torch.manual_seed(0)
    weights = tmp_path / "r20.th"
    torch.save({"state_dict": models.build("resnet20").state_dict()}, weights)
    res = pipeline.optimize("resnet20", weights=weights, data=test_npz, train_data=train_npz,
                            sparsity=0.9, method="magnitude", epochs=2, batch_sizes=[1],
                            tune=False, time_s=0.01, out_dir=tmp_path / "out", progress=False)
    assert len(seen) == 1
    kw = seen[0]
    assert kw["teacher"] is not None and kw["kd_alpha"] == 0.9 and kw["kd_temperature"] == 4.0
    assert kw["augment"] is data.random_crop_flip
    assert (kw["lr"], kw["batch_size"], kw["epochs"]) == (0.02, 128, 2)
    assert kw["pruner"].scope == "layer" and kw["pruner"].final_sparsity == 0.9
    expected = recipes.resnet20_cifar_90_uniform(weights=str(weights), epochs=2)
    assert res["pruning"]["recipe"] == dataclasses.asdict(expected)
    assert "distillation" in res["pruning"]["schedule"] and "crop + flip" in res["pruning"]["schedule"]
    for layer, s in res["pruning"]["layer_sparsity"].items():
        if layer != "linear":  # conv layers only, each exactly 90 %
            assert s == pytest.approx(0.9, abs=0.01), layer
    assert res["pruning"]["layer_sparsity"]["linear"] < 0.5
    assert res["verify"]["within_tolerance"]


def test_unknown_quantization_method_fails_before_any_work(tmp_path):
    out = tmp_path / "results"
    earlier = _earlier(out)
    with pytest.raises(ValueError, match="unknown quantization method.*int3"):
        pipeline.optimize("smallcnn", quantize=["fp16", "int3"], out_dir=out, progress=False)
    assert sorted(p.name for p in out.iterdir()) == [earlier.name]
    assert not (tmp_path / "cache").exists()  # nothing trained or cached
