"""Models: shapes, parameter counts, fx-traceability, checkpoint loading (incl. bad inputs)."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from sparsecnn import data, models

SHARED = data.shared_data_dir()
RESNET_DIR = SHARED / "resnet_cifar10" if SHARED is not None else None
needs_shared = pytest.mark.skipif(
    RESNET_DIR is None or not (RESNET_DIR / "resnet20-12fca82f.th").exists(),
    reason="shared data (../shared/data) absent",
)

# name -> (input shape, output classes, parameter count)
SPECS = {
    "resnet20": ((2, 3, 32, 32), 10, 269_722),
    "resnet32": ((2, 3, 32, 32), 10, 464_154),
    "resnet44": ((2, 3, 32, 32), 10, 658_586),
    "resnet56": ((2, 3, 32, 32), 10, 853_018),
    "alexnet": ((1, 3, 224, 224), 1000, 61_100_840),
    "vgg16": ((1, 3, 224, 224), 1000, 138_357_544),
    "smallcnn": ((2, 1, 8, 8), 10, 9_978),
}


def test_names_cover_specs():
    assert set(models.NAMES) == set(SPECS)


@pytest.mark.parametrize("name", sorted(SPECS))
def test_param_count(name):
    with torch.device("meta"):  # no memory for VGG-16's 138 M parameters
        model = models.build(name)
    assert sum(p.numel() for p in model.parameters()) == SPECS[name][2]


@pytest.mark.parametrize("name", ["resnet20", "resnet56", "smallcnn", "alexnet"])
def test_forward_shape_fx_and_determinism(name):
    torch.manual_seed(0)
    shape, classes, _ = SPECS[name]
    model = models.build(name).eval()
    x = torch.randn(shape)
    with torch.no_grad():
        y = model(x)
        traced = torch.fx.symbolic_trace(model)
        torch.testing.assert_close(traced(x), y)
        torch.testing.assert_close(model(x), y, rtol=0, atol=0)
    assert y.shape == (shape[0], classes)
    assert any(isinstance(m, nn.ReLU) for m in model.modules())


def test_vgg16_traceable_and_named():
    with torch.device("meta"):
        model = models.build("vgg16")
    traced = torch.fx.symbolic_trace(model)
    called = [n.target for n in traced.graph.nodes if n.op == "call_module"]
    names = [n for n, _ in models.conv_layers(model)]
    assert names[:3] == ["conv1_1", "conv1_2", "conv2_1"]
    assert names[-4:] == ["conv5_3", "fc6", "fc7", "fc8"] and len(names) == 16
    assert called.index("conv4_3") < called.index("conv5_1")


def test_layer_names_readable():
    alex = [n for n, _ in models.conv_layers(models.build("alexnet"))]
    assert alex == ["conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8"]
    r20 = [n for n, _ in models.conv_layers(models.build("resnet20"))]
    assert r20[0] == "conv1" and r20[-1] == "linear" and len(r20) == 20
    assert r20[1:3] == ["layer1.0.conv1", "layer1.0.conv2"]


def test_build_bad_args():
    with pytest.raises(ValueError, match="unknown model 'resnet18'.*resnet20"):
        models.build("resnet18")
    with pytest.raises(TypeError):
        models.build(20)
    with pytest.raises(ValueError, match="6n \\+ 2"):
        models.resnet_cifar(21)
    with pytest.raises(ValueError, match="num_classes"):
        models.build("smallcnn", num_classes=0)


def test_load_weights_roundtrip_and_prefix(tmp_path):
    torch.manual_seed(0)
    src = models.build("resnet20")
    state = {"module." + k: v for k, v in src.state_dict().items() if "num_batches" not in k}
    path = tmp_path / "ckpt.th"
    torch.save({"state_dict": state, "best_prec1": 90.0}, path)
    dst = models.load_weights(models.build("resnet20"), path)
    for k, v in src.state_dict().items():
        torch.testing.assert_close(dst.state_dict()[k], v)
    bare = tmp_path / "bare.pt"
    torch.save(src.state_dict(), bare)
    models.load_weights(models.build("resnet20"), bare)
    models.load_weights(models.build("resnet20"), src.state_dict())


def test_load_weights_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.th"):
        models.load_weights(models.build("smallcnn"), tmp_path / "nope.th")


def test_load_weights_corrupt_file(tmp_path):
    path = tmp_path / "bad.pt"
    path.write_bytes(b"this is not a checkpoint")
    with pytest.raises(ValueError, match="cannot read checkpoint .*bad.pt") as info:
        models.load_weights(models.build("smallcnn"), path)
    assert "\n" not in str(info.value)  # torch's multi-line text folded to one line


class _Foreign:  # a class weights_only unpickling refuses
    pass


def test_load_weights_untrusted_object_one_line(tmp_path):
    path = tmp_path / "obj.pt"
    torch.save({"state_dict": models.build("smallcnn").state_dict(), "extra": _Foreign()}, path)
    with pytest.raises(ValueError, match="cannot read checkpoint .*obj.pt.*_Foreign.*trusted=True") \
            as info:
        models.load_weights(models.build("smallcnn"), path)
    msg = str(info.value)
    assert "\n" not in msg and "\t" not in msg and "\x1b" not in msg and "  " not in msg
    assert models.load_weights(models.build("smallcnn"), path, trusted=True) is not None


def test_load_weights_not_a_dict(tmp_path):
    path = tmp_path / "list.pt"
    torch.save([torch.zeros(1)], path)
    with pytest.raises(ValueError, match="expected a dict"):
        models.load_weights(models.build("smallcnn"), path)


def test_load_weights_wrong_architecture(tmp_path):
    path = tmp_path / "r20.pt"
    torch.save({"state_dict": models.build("resnet20").state_dict()}, path)
    with pytest.raises(ValueError, match="missing: .*unexpected: .*shape-mismatched: conv1.weight") \
            as info:
        models.load_weights(models.build("smallcnn"), path)
    assert "\n" not in str(info.value) and "(+" in str(info.value)  # one line, first few keys
    with pytest.raises(ValueError, match="missing: layer1.3.conv1.weight"):
        models.load_weights(models.build("resnet32"), path)


def test_load_weights_shape_mismatch():
    state = models.build("smallcnn", num_classes=5).state_dict()
    with pytest.raises(ValueError, match=r"fc.weight \(checkpoint \(5, 512\), model \(10, 512\)\)"):
        models.load_weights(models.build("smallcnn"), state)


def test_load_weights_bad_types():
    with pytest.raises(TypeError):
        models.load_weights(models.build("smallcnn"), 42)
    with pytest.raises(TypeError):
        models.load_weights("resnet20", {})


@needs_shared
@pytest.mark.parametrize("name, file, correct", [
    ("resnet20", "resnet20-12fca82f.th", 776),
    ("resnet56", "resnet56-4bfd9763.th", 789),
])
def test_real_checkpoint_accuracy(name, file, correct):
    torch.set_num_threads(2)
    model = models.load_weights(models.build(name), RESNET_DIR / file).eval()
    _, test = data.cifar10_subsets()
    x, y = test.tensors
    with torch.no_grad():
        pred = torch.cat([model(x[i:i + 256]).argmax(1) for i in range(0, len(x), 256)])
    assert len(y) == 846
    assert int((pred == y).sum()) == correct  # 776/846 = 91.73 %, 789/846 = 93.26 %
