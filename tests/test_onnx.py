"""ONNX models as people have them: Constant-node weights, Identity-shared initializers, layer
names with '/', graphs fx cannot trace through, detection-style outputs without labels, the
project's own export coming back in (dynamic N, H, W; sparse models exported dense)."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

onnx = pytest.importorskip("onnx")
try:
    from sparsecnn.onnx import _onnx2torch
    _onnx2torch()          # onnx2torch with the torchvision work-around of sparsecnn.onnx
except ImportError:
    pytest.skip("onnx2torch is not installed", allow_module_level=True)

from _sparsify_fakes import registered  # noqa: E402
from sparsecnn import models, pipeline  # noqa: E402
from sparsecnn import nn as snn  # noqa: E402
from sparsecnn.cli.main import main  # noqa: E402
from sparsecnn.onnx import export_onnx, load_onnx  # noqa: E402

TOL = {"rtol": 1e-4, "atol": 1e-4}


@pytest.fixture(autouse=True)
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("SPARSECNN_CACHE_DIR", str(tmp_path / "cache"))


class TinyDetector(nn.Module):
    """Depthwise / pointwise backbone, an upsample + concat neck, two map outputs (a tuple):
    the operators of a detector (Resize, Concat, Reshape) that fx cannot trace through when
    onnx2torch's modules are not leaves."""

    def __init__(self):
        super().__init__()
        self.stem, self.r0 = nn.Conv2d(3, 8, 3, 2, 1), nn.ReLU()
        self.dw, self.r1 = nn.Conv2d(8, 8, 3, 1, 1, groups=8), nn.ReLU()
        self.pw, self.r2 = nn.Conv2d(8, 16, 1), nn.ReLU()
        self.down, self.r3 = nn.Conv2d(16, 16, 3, 2, 1), nn.ReLU()
        self.head1 = nn.Conv2d(32, 6, 1)
        self.head2 = nn.Conv2d(16, 6, 1)

    def forward(self, x):
        a = self.r2(self.pw(self.r1(self.dw(self.r0(self.stem(x))))))
        b = self.r3(self.down(a))
        u = F.interpolate(b, scale_factor=2.0, mode="nearest")
        return self.head1(torch.cat([a, u], 1)), self.head2(b).flatten(2)


def _detector(tmp_path, seed=0):
    torch.manual_seed(seed)
    m = TinyDetector().eval()
    path = tmp_path / "det.onnx"
    export_onnx(m, torch.randn(1, 3, 32, 32), path)
    return m, path


def _to_constant_nodes(src, dst):
    """Rewrite an ONNX file so every initializer is a Constant node instead (as Paddle2ONNX and
    other exporters write weights)."""
    proto = onnx.load(str(src))
    g = proto.graph
    consts = [onnx.helper.make_node("Constant", [], [init.name], value=init) for init in g.initializer]
    names = {init.name for init in g.initializer}
    keep_inputs = [i for i in g.input if i.name not in names]
    del g.initializer[:]
    del g.input[:]
    g.input.extend(keep_inputs)
    nodes = list(g.node)
    del g.node[:]
    g.node.extend(consts + nodes)
    onnx.checker.check_model(proto)
    onnx.save(proto, str(dst))
    return proto


def test_constant_node_weights_import(tmp_path):
    model, path = _detector(tmp_path)
    proto = _to_constant_nodes(path, tmp_path / "const.onnx")
    assert not proto.graph.initializer and any(n.op_type == "Constant" for n in proto.graph.node)
    conv = next(n for n in proto.graph.node if n.op_type == "Conv")
    assert any(n.op_type == "Constant" and n.output[0] == conv.input[1] for n in proto.graph.node)
    back = load_onnx(tmp_path / "const.onnx")
    x = torch.randn(2, 3, 32, 32)
    for a, b in zip(back(x), model(x)):
        torch.testing.assert_close(a, b, **TOL)


def test_resnet20_export_imports_and_matches(tmp_path):
    """PyTorch's exporter shares an initializer through an Identity node (resnet20's biases):
    onnx2torch alone fails with a bare KeyError on it."""
    torch.manual_seed(0)
    model = models.build("resnet20").eval()
    export_onnx(model, torch.randn(1, 3, 32, 32), tmp_path / "r20.onnx")
    back = load_onnx(tmp_path / "r20.onnx")
    x = torch.randn(3, 3, 32, 32)
    torch.testing.assert_close(back(x), model(x), **TOL)
    assert "layer1/layer1/0/conv1/Conv" in dict(back.named_modules())   # names keep their '/'


def test_export_has_dynamic_batch_height_width(tmp_path):
    torch.manual_seed(0)
    model = models.build("resnet20").eval()
    export_onnx(model, torch.randn(1, 3, 32, 32), tmp_path / "r20.onnx")
    dims = onnx.load(str(tmp_path / "r20.onnx")).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param or d.dim_value for d in dims] == ["N", 3, "H", "W"]
    back = load_onnx(tmp_path / "r20.onnx")
    x = torch.randn(2, 3, 40, 48)                          # another N, H and W
    torch.testing.assert_close(back(x), model(x), **TOL)


def test_export_of_a_sparse_model_writes_its_dense_equivalent(tmp_path):
    with registered("test_ref"):
        torch.manual_seed(0)
        model = models.build("resnet20").eval()
        from sparsecnn import prune
        prune.magnitude_prune_(model, 0.8)
        prune.finalize_(model)
        x = torch.randn(1, 3, 32, 32)
        ref = model(x)
        snn.sparsify_(model, example_input=x, min_sparsity=0.5)
        path = export_onnx(model, x, tmp_path / "sparse.onnx")          # no Numba TypingError
    back = load_onnx(path)
    torch.testing.assert_close(back(x), ref, **TOL)


def test_imported_graph_traces_and_fuses(tmp_path):
    """onnx2torch's modules are leaves for sparsecnn's fx, so an imported detector (Resize,
    Concat, Reshape) traces: ReLUs are fused instead of 'fusion skipped'."""
    import warnings
    _, path = _detector(tmp_path)
    net = load_onnx(path)
    snn.trace(net)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.Conv2d) and m.groups == 1 and m.in_channels > 3:
                m.weight.mul_(torch.rand_like(m.weight) > 0.8)
    x = torch.randn(1, 3, 32, 32)
    ref = net(x)
    with registered("test_ref"), warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        snn.sparsify_(net, example_input=x, min_sparsity=0.0)
        got = snn.compact(net, example_input=x)(x)
    ours = [str(w.message) for w in seen if "traceable" in str(w.message)
            or issubclass(w.category, snn.RewriteWarning)]
    assert not ours                                        # no "fusion skipped", no fall-back
    assert sum(m.relu for _, m in snn.sparse_modules(net)) == 4
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b, **TOL)


def test_optimize_label_free_on_an_onnx_detector(tmp_path, capsys):
    _, path = _detector(tmp_path)
    out, exported = tmp_path / "out", tmp_path / "pruned.onnx"
    code = main(["optimize", "--onnx", str(path), "--input-shape", "1,3,32,32", "--sparsity",
                 "0.8", "--time", "0.05", "--out", str(out), "--export-onnx", str(exported)])
    assert code == 0, capsys.readouterr().err
    [folder] = list(out.iterdir())
    res = json.loads((folder / "results.json").read_text())
    assert res["labelled"] is False and res["accuracy"] is None and res["batch_sizes"] == [1]
    assert res["verify"]["within_tolerance"] and res["verify"]["n"] >= 4
    assert res["latency"]["1"]["sparse"]["median_ms"] > 0
    assert any("accuracy was NOT measured" in n for n in res["notes"])
    summary = (folder / "summary.md").read_text()
    assert "Accuracy was not measured" in summary
    assert "accuracy NOT measured" in capsys.readouterr().out
    # the export is the pruned dense model, with dynamic axes: it runs at another size
    back = load_onnx(exported)
    y = back(torch.randn(2, 3, 64, 48))
    assert tuple(y[0].shape) == (2, 6, 32, 24)


def test_optimize_label_free_npz_of_images(tmp_path):
    _, path = _detector(tmp_path)
    rng = np.random.default_rng(0)
    npz = tmp_path / "frames.npz"
    np.savez(npz, images=rng.integers(0, 255, (3, 3, 32, 32), dtype=np.uint8))   # no labels
    res = pipeline.optimize(onnx=path, data=npz, sparsity=0.5, epochs=0, time_s=0.02,
                            tune=False, out_dir=tmp_path / "out", progress=False)
    assert res["accuracy"] is None and res["verify"]["n"] == 3 and res["verify"]["within_tolerance"]
    assert "3 unlabelled images" in res["data"]
    with pytest.raises(ValueError, match="fine-tuning .* needs labelled training data"):
        pipeline.optimize(onnx=path, data=npz, epochs=2, out_dir=tmp_path / "out", progress=False)


def test_optimize_onnx_static_shape_and_bad_shapes(tmp_path):
    _, path = _detector(tmp_path)     # our export is dynamic: N, H and W are not declared
    with pytest.raises(ValueError, match=r"declares input shape \('\?', 3, '\?', '\?'\); pass "
                                         r"--input-shape"):
        pipeline.optimize(onnx=path, out_dir=tmp_path / "o", progress=False)
    for bad in ("1,3,32", "1,3,0,32", "a,b,c,d"):
        with pytest.raises(ValueError, match="input shape must be N,C,H,W"):
            pipeline.optimize(onnx=path, input_shape=bad, out_dir=tmp_path / "o", progress=False)
    assert not (tmp_path / "o").exists()


def test_optimize_export_comes_back_in_through_onnx(tmp_path):
    """The project's own --export-onnx output runs through optimize --onnx (labelled data)."""
    rng = np.random.default_rng(0)
    npz = tmp_path / "test.npz"
    np.savez(npz, images=rng.integers(0, 255, (6, 3, 32, 32), dtype=np.uint8),
             labels=rng.integers(0, 10, 6))
    torch.manual_seed(0)
    weights = tmp_path / "r20.th"
    torch.save({"state_dict": models.build("resnet20").state_dict()}, weights)
    exported = tmp_path / "r20.onnx"
    kw = dict(data=npz, sparsity=0.5, epochs=0, batch_sizes=[1], tune=False, time_s=0.02,
              quantize=(), out_dir=tmp_path / "out", progress=False)
    first = pipeline.optimize("resnet20", weights=weights, export_onnx=exported, **kw)
    second = pipeline.optimize(onnx=exported, **kw)
    assert second["weights"]["source"] == "onnx" and second["verify"]["within_tolerance"]
    assert second["accuracy"]["dense_top1"] == pytest.approx(first["accuracy"]["pruned_top1"])


def test_report_takes_onnx_and_layer_names_with_slash(tmp_path, capsys):
    _, path = _detector(tmp_path)
    out = tmp_path / "rep"
    assert main(["report", "--onnx", str(path), "--input-shape", "1,3,32,32", "--sparsity",
                 "0.8", "--layer", "pw/Conv", "--threads", "1", "--images", "2",
                 "--eval-images", "2", "--out", str(out), "--no-static"]) == 0, \
        capsys.readouterr().err
    [folder] = list(out.iterdir())
    assert folder.name.startswith("report-det-pw_Conv-")
    payload = json.loads((folder / "report.json").read_text())
    assert payload["layers"] == ["pw/Conv"]
    assert (folder / "filter_nnz_pw_Conv.csv").is_file()
    assert "index.html" in {p.name for p in folder.iterdir()}
    text = capsys.readouterr().out
    assert "top-1 of these weights: not measured (no labelled data)" in text
