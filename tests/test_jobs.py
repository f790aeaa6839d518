"""The upper layers: one model spec per model, jobs as library entry points, one output check,
one results-folder policy, one thread count."""

import math

import pytest
import torch

from sparsecnn import checks, models, results
from sparsecnn.cli.main import main


@pytest.mark.parametrize("name", models.NAMES)
def test_model_spec_describes_the_model(name):
    spec = models.spec(name)
    assert spec.name == name and models.spec(name.upper()) is spec
    model = models.build(name).eval()
    with torch.no_grad():
        y = model(torch.zeros(1, *spec.input_shape))
    assert tuple(y.shape) == (1, spec.num_classes)
    if spec.recipe is not None:
        from sparsecnn.prune import recipes
        assert spec.recipe in recipes.RECIPES
    if spec.weights is not None and spec.default_weights() is not None:
        models.load_weights(models.build(name), spec.default_weights())


def test_model_spec_errors():
    with pytest.raises(ValueError, match=r"unknown model 'lenet'; expected one of \[.*'resnet20'"):
        models.spec("lenet")
    with pytest.raises(TypeError, match="must be a str"):
        models.spec(3)
    with pytest.raises(ValueError, match="no default data set"):
        models.spec("alexnet").default_data()


def test_pipeline_reads_the_spec(monkeypatch):
    """optimize's per-model defaults come from the spec, not from tables of its own."""
    from sparsecnn import pipeline
    from sparsecnn.prune import recipes
    assert not hasattr(pipeline, "DENSE_TRAIN") and not hasattr(pipeline, "PRUNE_LINEAR")
    monkeypatch.setitem(models.SPECS, "alexnet", models.SPECS["alexnet"].replace(
        recipe="smallcnn_digits"))
    r = pipeline.pruning_recipe("alexnet", "magnitude", 0.5, 3)
    assert r == recipes.smallcnn_digits(model="alexnet", final_sparsity=0.5, epochs=3)


def test_one_output_check():
    from sparsecnn import pipeline
    from sparsecnn.bench import core
    assert pipeline.VERIFY_TOL == core.RTOL == checks.TOLERANCE
    ref = torch.full((2, 3), 10.0)
    assert checks.compare_outputs(ref + 5e-4, ref).ok            # 5e-4 <= 1e-4 x 10
    bad = checks.compare_outputs(ref + 2e-3, ref)
    assert not bad.ok and "max|err|" in bad.message and bad.max_abs_err == pytest.approx(2e-3, rel=1e-3)
    assert not checks.compare_outputs(ref[:1], ref).ok            # shape
    nan = ref.clone()
    nan[0, 0] = math.nan
    assert not checks.compare_outputs(nan, ref).ok                 # not finite
    assert checks.compare_outputs((ref, {"a": ref}), (ref, {"a": ref})).ok   # nests
    assert not checks.compare_outputs((ref,), (ref, ref)).ok
    with pytest.raises(TypeError, match="outputs must be tensors"):
        checks.compare_outputs("x", ref)


def test_results_folder_policy(tmp_path):
    parent = tmp_path / "a" / "b"
    with results.results_folder(parent, "job", "my/model") as (tmp, final):
        (tmp / "x.txt").write_text("1")
        assert not final.exists()
    assert final.parent == parent and final.name.startswith("job-my_model-")
    assert (final / "x.txt").read_text() == "1"
    with results.results_folder(parent, "job", "my/model") as (tmp, second):
        pass
    assert second != final and (final / "x.txt").read_text() == "1"
    # an interrupted write leaves nothing, not even the parent folders it created
    fresh = tmp_path / "c" / "d"
    with pytest.raises(KeyboardInterrupt):
        with results.results_folder(fresh, "job", "m") as (tmp, _):
            (tmp / "half").write_text("x")
            raise KeyboardInterrupt
    assert not (tmp_path / "c").exists()
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="exists and is not a folder"):
        results.check_parent(tmp_path / "file")
    with pytest.raises(ValueError, match="cannot create results there"):
        results.check_parent(tmp_path / "file" / "sub")
    with pytest.raises(ValueError, match="is a folder; expected a file path"):
        results.check_output_file(tmp_path, "--export-onnx")
    with pytest.raises(ValueError, match="cannot write there"):
        results.check_output_file(tmp_path / "file" / "m.onnx", "--export-onnx")


def test_thread_count_checked_and_shared():
    from sparsecnn import threads
    cap = threads.max_threads()
    assert threads.set_threads(1) == {"torch": 1, "numba": 1}
    assert threads.set_threads(cap) == {"torch": cap, "numba": cap}
    for bad in (0, -1, cap + 1, 10_000, 1.5, True, "2", math.nan):
        with pytest.raises(ValueError, match="threads"):
            threads.check_threads(bad)


def test_report_cli_only_parses(monkeypatch, capsys, tmp_path):
    """``sparsecnn report`` hands its parsed arguments to the library job and prints its lines."""
    from sparsecnn.report import job
    seen = {}

    def fake(arch, **kw):
        seen.update(kw, arch=arch)
        return {"fake": True}
    monkeypatch.setattr(job, "report", fake)
    monkeypatch.setattr(job, "summary_lines", lambda res: ["line one", "line two"])
    assert main(["report", "--arch", "resnet20", "--layer", "conv1", "--sparsity", "0.5",
                 "--threads", "1", "--out", str(tmp_path)]) == 0
    assert capsys.readouterr().out == "line one\nline two\n"
    assert seen["arch"] == "resnet20" and seen["layers"] == ["conv1"] and seen["sparsity"] == 0.5
    assert seen["threads"] == 1 and seen["out"] == str(tmp_path)


def test_bench_cli_only_parses(monkeypatch, capsys, tmp_path):
    from sparsecnn.bench import job
    seen = {}
    folder = tmp_path / "bench-x"
    folder.mkdir()

    def fake(**kw):
        seen.update(kw)
        return {"rows": [], "meta": {"run": {"elapsed_s": 1.0}}, "path": folder, "failed": []}
    monkeypatch.setattr(job, "bench", fake)
    assert main(["bench", "--layers", "alexnet-conv4", "--sparsity", "0.9", "--batch", "1",
                 "--threads", "1", "--out", str(tmp_path), "--no-plot"]) == 0
    assert seen["layers"] == ["alexnet-conv4"] and seen["sparsities"] == [0.9]
    assert seen["batches"] == [1] and seen["plot"] is False and seen["out"] == str(tmp_path)
    assert f"results: {folder}/" in capsys.readouterr().out
