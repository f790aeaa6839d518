"""ONNX in and out: import a model through ``onnx2torch``, export a (pruned) model through
``torch.onnx.export``.

Import (:func:`load_onnx`) runs an ONNX pre-pass first (``onnxoptimizer``:
``extract_constant_to_initializer``, ``eliminate_identity``), so models as exporters write them
convert: weights stored as ``Constant`` nodes (Paddle2ONNX and others) or reached through
``Identity`` nodes (PyTorch's exporter de-duplicating a shared bias) become initializers, which
is what onnx2torch reads. The imported model is an ``fx.GraphModule`` of ``torch.nn`` modules
(``nn.Conv2d``, ``nn.Linear``, ``nn.ReLU``, ...) and onnx2torch's own operator modules; module
names keep the ONNX node names, ``/`` included (``"layer1/conv/Conv"``). sparsecnn's fx rewrites
treat onnx2torch's modules as leaves, so the graph traces and folds/fuses like any model.

Export (:func:`export_onnx`) writes the *dense equivalent* of a model: sparse modules
(:class:`~sparsecnn.nn.SparseConv2d` / :class:`~sparsecnn.nn.SparseLinear`, whose Numba kernels
the exporter cannot trace) are replaced by ``nn.Conv2d`` / ``nn.Linear`` holding their densified
weight (and an ``nn.ReLU`` for a fused ReLU) first (:func:`dense_equivalent`). Batch, height and
width are dynamic axes; the written file is read back and checked against the model.
"""

from __future__ import annotations

import copy
import sys
import types
import warnings
from pathlib import Path

import torch
from torch import nn

from ._atomic import atomic_path

#: onnxoptimizer passes run before conversion (semantics-preserving clean-ups only).
PREPASS = ("extract_constant_to_initializer", "eliminate_identity")


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


def prepass(proto):
    """The import pre-pass on an ``onnx.ModelProto``: ``Constant`` nodes become initializers and
    ``Identity`` nodes are removed (:data:`PREPASS`, ``onnxoptimizer``). Returns a new proto."""
    try:
        import onnxoptimizer
    except ImportError as exc:
        raise ImportError("ONNX import needs onnxoptimizer: pip install 'sparsecnn[onnx]'") from exc
    return onnxoptimizer.optimize(proto, list(PREPASS))


def _read(path):
    import onnx
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"ONNX file not found: {path}")
    try:
        return onnx.load(str(path))
    except Exception as exc:
        raise ValueError(f"{path} is not a readable ONNX model ({type(exc).__name__}: {exc})") from None


def input_shape(path) -> tuple:
    """The first graph input's shape as the file declares it: ints, or None for a dynamic
    (named or unknown) dimension. Graph inputs that are initializers are skipped."""
    proto = _read(path)
    inits = {i.name for i in proto.graph.initializer}
    for inp in proto.graph.input:
        if inp.name in inits:
            continue
        dims = inp.type.tensor_type.shape.dim
        return tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None
                     for d in dims)
    raise ValueError(f"{path} declares no graph input")


def load_onnx(path) -> nn.Module:
    """Convert an ONNX file to a PyTorch module (:func:`prepass`, then ``onnx2torch.convert``),
    in eval mode.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ValueError
        If the file is not a valid ONNX model or holds an operator onnx2torch cannot convert.
    """
    o2t = _onnx2torch()
    proto = _read(path)
    try:
        proto = prepass(proto)
    except ImportError:
        raise
    except Exception as exc:
        raise ValueError(f"cannot prepare ONNX model {path} for import: {type(exc).__name__}: "
                         f"{exc}") from None
    try:
        model = o2t.convert(proto)
    except Exception as exc:
        raise ValueError(f"cannot convert ONNX model {path}: {type(exc).__name__}: {exc}") from None
    return model.eval()


def is_onnx2torch_module(m: nn.Module) -> bool:
    """Whether ``m`` is one of onnx2torch's operator modules (a leaf for sparsecnn's fx)."""
    return any(c.__module__.startswith("onnx2torch.") for c in type(m).__mro__[:-1])


def dense_equivalent(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` with every sparse module replaced by the dense ``torch.nn``
    layer computing the same function: ``SparseConv2d`` -> ``nn.Conv2d`` (densified weight,
    bias, stride, padding, dilation, groups), ``SparseLinear`` -> ``nn.Linear``, each followed by
    an ``nn.ReLU`` (an ``nn.Sequential``) when the ReLU was fused. ``model`` is not changed."""
    from .nn import SparseConv2d, SparseLinear
    sparse = [m for m in model.modules() if isinstance(m, (SparseConv2d, SparseLinear))]
    out = copy.deepcopy(model, {id(m): m for m in sparse})   # sparse modules shared, then swapped
    for name, m in list(out.named_modules()):
        if not isinstance(m, (SparseConv2d, SparseLinear)):
            continue
        w = m.weight.to_dense().float()
        if isinstance(m, SparseConv2d):
            k, cg, r, s = w.shape
            dense = nn.Conv2d(cg * m.groups, k, (r, s), stride=m.stride, padding=m.padding,
                              dilation=m.dilation, groups=m.groups, bias=m.bias is not None)
        else:
            dense = nn.Linear(w.shape[1], w.shape[0], bias=m.bias is not None)
        with torch.no_grad():
            dense.weight.copy_(w)
            if m.bias is not None:
                dense.bias.copy_(m.bias)
        new = nn.Sequential(dense, nn.ReLU()) if m.relu else dense
        parent, _, child = name.rpartition(".")
        setattr(out.get_submodule(parent) if parent else out, child, new.eval())
    return out.eval()


def _names(y, prefix: str) -> list[str]:
    if isinstance(y, torch.Tensor):
        return [prefix]
    if isinstance(y, (list, tuple)):
        return [n for i, v in enumerate(y) for n in _names(v, f"{prefix}{i}")]
    raise TypeError(f"ONNX export needs tensor outputs (or tuples of them), got {type(y).__name__}")


def export_onnx(model: nn.Module, example_input: torch.Tensor, path, *, opset: int = 17,
                check: bool = True) -> Path:
    """Write the dense equivalent of ``model`` (eval mode) to ONNX at ``path`` (atomic).

    Uses the TorchScript-based exporter (``dynamo=False``; needs no onnxscript). Input
    ``"input"``; output ``"logits"`` for one 2-D output, else ``"output"`` / ``"output0"``,
    ``"output1"``, ... Dynamic axes: the batch (dim 0) of input and outputs, and for a 4-D input
    its height and width (dims 2, 3) and those of every 4-D output, so the file runs at any
    N, H, W the model itself accepts. Sparse modules are exported as their dense equivalent
    (:func:`dense_equivalent`).

    Parameters
    ----------
    check : bool
        Read the written file back (:func:`load_onnx`) and compare it with ``model`` on
        ``example_input`` (:func:`sparsecnn.checks.compare_outputs`) before it is put in place.

    Raises
    ------
    ValueError
        If the export fails, or the file read back differs from the model (nothing is written).
    TypeError
        If ``model`` returns something other than tensors.
    """
    from .checks import compare_outputs
    path = Path(path)
    dense = dense_equivalent(model)
    with torch.no_grad():
        y = dense(example_input)
    outs = _names(y, "output")
    if len(outs) == 1:
        outs = ["logits" if y.ndim == 2 else "output"]
    flat = [y] if isinstance(y, torch.Tensor) else [t for t in _flatten(y)]
    axes = {"input": {0: "N", **({2: "H", 3: "W"} if example_input.ndim == 4 else {})}}
    for i, (name, t) in enumerate(zip(outs, flat)):
        axes[name] = {0: "N", **({2: f"H{i}", 3: f"W{i}"} if t.ndim == 4 and example_input.ndim == 4
                                 else {})}
    with atomic_path(path) as tmp:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch.onnx.export(dense, (example_input,), str(tmp), dynamo=False,
                                  opset_version=opset, input_names=["input"], output_names=outs,
                                  dynamic_axes=axes)
        except Exception as exc:
            raise ValueError(f"ONNX export of {type(model).__name__} failed: "
                             f"{type(exc).__name__}: {' '.join(str(exc).split())[:400]}") from None
        if check:
            back = load_onnx(tmp)
            with torch.no_grad():
                chk = compare_outputs(back(example_input), y)
            if not chk.ok:
                raise ValueError(f"the exported ONNX file differs from the model when read back "
                                 f"({chk.message}); not written")
    return path


def _flatten(y):
    if isinstance(y, torch.Tensor):
        yield y
    else:
        for v in y:
            yield from _flatten(v)
