"""ONNX in and out: import a model through ``onnx2torch``, export a (pruned) model through
``torch.onnx.export``.

The imported model is an ``fx.GraphModule`` of ordinary ``torch.nn`` modules (``nn.Conv2d``,
``nn.Linear``, ``nn.ReLU``, ...), so :func:`sparsecnn.nn.sparsify_` converts it like any model.
"""

from __future__ import annotations

import sys
import types
import warnings
from pathlib import Path

import torch
from torch import nn

from ._atomic import atomic_path


def _onnx2torch():
    """Import ``onnx2torch``. It imports torchvision only for its NMS / RoIAlign converters; when
    the installed torchvision does not match torch (its C extension fails to register), a stub
    ``torchvision.ops`` whose functions raise ``NotImplementedError`` is put in its place so every
    other operator still converts."""
    try:
        import onnx2torch
        return onnx2torch
    except ImportError as exc:
        if "onnx2torch" in str(exc) or "onnx" == getattr(exc, "name", ""):
            raise ImportError("ONNX import needs onnx and onnx2torch: "
                              "pip install 'sparsecnn[onnx]'") from exc
        broken = exc
    except RuntimeError as exc:  # torchvision built for another torch
        broken = exc
    for name in list(sys.modules):
        if name.startswith(("torchvision", "onnx2torch")):
            del sys.modules[name]

    def unavailable(*args, **kwargs):
        raise NotImplementedError(f"torchvision is unusable here ({broken}); "
                                  "NMS/RoIAlign ONNX operators cannot be converted")

    tv = types.ModuleType("torchvision")
    ops = types.ModuleType("torchvision.ops")
    ops.nms = ops.batched_nms = ops.roi_align = ops.roi_pool = unavailable
    tv.ops, tv.__version__ = ops, "0+stub"
    sys.modules["torchvision"], sys.modules["torchvision.ops"] = tv, ops
    import onnx2torch
    return onnx2torch


def load_onnx(path) -> nn.Module:
    """Convert an ONNX file to a PyTorch module (``onnx2torch.convert``), in eval mode.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ValueError
        If the file is not a valid ONNX model or holds an operator onnx2torch cannot convert.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"ONNX file not found: {path}")
    o2t = _onnx2torch()
    import onnx
    try:
        proto = onnx.load(str(path))
    except Exception as exc:
        raise ValueError(f"{path} is not a readable ONNX model ({type(exc).__name__}: {exc})") from None
    try:
        model = o2t.convert(proto)
    except Exception as exc:
        raise ValueError(f"cannot convert ONNX model {path}: {type(exc).__name__}: {exc}") from None
    return model.eval()


def export_onnx(model: nn.Module, example_input: torch.Tensor, path, *, opset: int = 17) -> Path:
    """Write ``model`` (eval mode) to ONNX at ``path`` (atomic: temp file, then ``os.replace``).

    Uses the TorchScript-based exporter (``dynamo=False``; needs no onnxscript), batch dimension
    dynamic, input ``"input"``, output ``"logits"``.
    """
    path = Path(path)
    was_training = model.training
    model.eval()
    try:
        with atomic_path(path) as tmp, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (example_input,), str(tmp), dynamo=False, opset_version=opset,
                              input_names=["input"], output_names=["logits"],
                              dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}})
    finally:
        model.train(was_training)
    return path
