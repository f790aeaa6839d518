"""Model files that cannot run code: a sparsified model's tensors (safetensors) plus JSON metadata.

A file written by :func:`save` is a `safetensors <https://github.com/huggingface/safetensors>`_
file: a JSON header and raw tensor bytes, nothing that executes when read (unlike a pickle,
which ``torch.load(..., weights_only=False)`` runs: a crafted ``model.pt`` could run any code).
It holds

- every tensor of ``model.state_dict()``: parameters and buffers, and each sparse layer's format
  arrays (``<layer>.weight_rowptr``, ``.weight_colidx``, ``.weight_values`` for CSR, ...);
- under the header's ``__metadata__["sparsecnn"]``, one JSON object: ``magic``
  (``"sparsecnn-model"``), ``version`` (:data:`FILE_VERSION`), the architecture record ``arch``
  (``{"name": <sparsecnn.models name>, "kwargs": {...}}`` or null), the paths of the modules that
  sparsification made ``nn.Identity`` (folded BatchNorm, fused ReLU), and the non-tensor state
  of each sparse layer (its ``_extra_state``: format, shape and parameters of the weight,
  geometry, fused ReLU, ``algo``, tuned ``choices`` and ``tuning``).

The architecture (Python code) is not in the file. :func:`load` rebuilds the model from a
skeleton: the ``model`` the caller passes -- an instance of the same architecture, dense (as
built, before sparsification) or already sparsified (any nnz, any format), as for
``load_state_dict`` -- or, for a model of sparsecnn's own zoo saved with ``arch=``, a fresh
``sparsecnn.models.build(name, **kwargs)``. The skeleton's dense ``nn.Conv2d`` / ``nn.Linear``
become sparse modules where the file has sparse layers (geometry checked), the recorded
BatchNorm / ReLU modules become ``nn.Identity``, and ``load_state_dict(strict=True)`` fills
everything, every sparse weight rebuilt through its format's validating constructor.

Version 1 files (``torch.save`` pickles of the whole module) are refused without being
unpickled.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from .._atomic import atomic_path
from .modules import SparseConv1d, SparseConv2d, SparseLinear
from .pool import SparseConvPool2d

FILE_MAGIC = "sparsecnn-model"
#: Version of the file layout (1: the pickled module, no longer read).
FILE_VERSION = 2
_META_KEY = "sparsecnn"
_SPARSE = {"SparseConv2d": (SparseConv2d, nn.Conv2d), "SparseLinear": (SparseLinear, nn.Linear),
           "SparseConv1d": (SparseConv1d, nn.Conv1d),
           "SparseConvPool2d": (SparseConvPool2d, nn.Conv2d)}
#: Modules sparsification replaces by nn.Identity (folded BatchNorm, fused ReLU, fused pooling).
_REPLACEABLE = (nn.modules.batchnorm._BatchNorm, nn.ReLU, nn.MaxPool2d, nn.Identity)
_EXTRA = "_extra_state"


def _check_arch(arch, what: str = "arch") -> dict | None:
    """``arch`` as ``{"name", "kwargs"}`` (a :data:`sparsecnn.models.NAMES` entry, plain kwargs)."""
    if arch is None:
        return None
    from .. import models

    if isinstance(arch, str):
        arch = {"name": arch, "kwargs": {}}
    if not isinstance(arch, dict) or set(arch) - {"name", "kwargs"}:
        raise ValueError(f"{what} must be a sparsecnn.models name or {{'name', 'kwargs'}}, got {arch!r}")
    name, kwargs = arch.get("name"), arch.get("kwargs", {})
    if not isinstance(name, str) or name.lower() not in models.NAMES:
        raise ValueError(f"{what}: unknown model {name!r}; expected one of {list(models.NAMES)}")
    if not isinstance(kwargs, dict) or not all(
            isinstance(k, str) and (v is None or type(v) in (int, float, bool, str))
            for k, v in kwargs.items()):
        raise ValueError(f"{what}: kwargs must map names to plain numbers / strings, got {kwargs!r}")
    return {"name": name.lower(), "kwargs": dict(kwargs)}


def save(model: nn.Module, path, *, arch=None) -> Path:
    """Save a (sparsified) model to ``path``: tensors + JSON, no code (module docstring).

    Parameters
    ----------
    model : nn.Module
        Any model; its sparse layers are stored with their format arrays, geometry, fused ReLU,
        ``algo`` and tuned choices. Plans and prepared operands are not stored (rebuilt at
        first use).
    path : str or Path
        Written atomically (a temporary file beside it, then renamed); folders are created.
    arch : str, dict or None
        For a model built by :func:`sparsecnn.models.build`: its name (or ``{"name": ...,
        "kwargs": {...}}``), so that :func:`load` can rebuild it without a skeleton. None: the
        caller of :func:`load` passes the skeleton.

    Returns
    -------
    pathlib.Path

    Raises
    ------
    TypeError
        If ``model`` is not an ``nn.Module``.
    ValueError
        If ``arch`` is not a zoo model, or a module's extra state is not plain JSON data.
    """
    import safetensors.torch

    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    arch = _check_arch(arch)
    tensors, extra = {}, {}
    seen: set = set()
    for key, value in model.state_dict().items():
        if key == _EXTRA or key.endswith("." + _EXTRA):
            try:
                extra[key] = json.loads(json.dumps(value))
            except (TypeError, ValueError) as exc:
                raise ValueError(f"{key} is not plain JSON data and cannot be stored safely "
                                 f"({exc})") from None
            continue
        t = value.detach().cpu().contiguous()
        store = t.untyped_storage()
        ptr = store.data_ptr()
        # safetensors stores each tensor on its own: tied or view tensors are copied
        if ptr in seen or store.nbytes() != t.numel() * t.element_size():
            t = t.clone()
        seen.add(ptr)
        tensors[key] = t
    header = {
        "magic": FILE_MAGIC, "version": FILE_VERSION, "arch": arch,
        "class": f"{type(model).__module__}.{type(model).__qualname__}",
        "identity": [n for n, m in model.named_modules() if type(m) is nn.Identity and n],
        "extra_state": extra, "torch": torch.__version__,
    }
    path = Path(path)
    with atomic_path(path) as tmp:
        safetensors.torch.save_file(tensors, str(tmp), metadata={_META_KEY: json.dumps(header)})
    return path


def _sniff(path: Path) -> str:
    with open(path, "rb") as fh:
        head = fh.read(8)
    if head[:4] == b"PK\x03\x04" or head[:1] == b"\x80":
        return ("a PyTorch pickle (torch.save), e.g. a version-1 sparsecnn model file; "
                "pickles can run code when loaded and are not read: save the model again with "
                "this sparsecnn (sparsecnn.nn.save)")
    return "not a safetensors file"


def read_header(path) -> dict:
    """The sparsecnn header of a model file (nothing else is read).

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ValueError
        If the file is truncated or corrupt, not a sparsecnn model file (a pickle, a plain
        safetensors file), or of a newer version.
    """
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no sparsecnn model file at {str(path)!r}")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as exc:  # noqa: BLE001 - SafetensorError, OSError, ...
        raise ValueError(f"{str(path)!r} is not a readable sparsecnn model file: {_sniff(path)} "
                         f"({type(exc).__name__}: {exc})") from None
    raw = meta.get(_META_KEY)
    try:
        header = json.loads(raw) if raw is not None else None
    except ValueError:
        header = None
    if not isinstance(header, dict) or header.get("magic") != FILE_MAGIC:
        raise ValueError(f"{str(path)!r} is not a sparsecnn model file (a safetensors file "
                         "without sparsecnn metadata; plain weights load with "
                         "safetensors.torch.load_file + model.load_state_dict)")
    version = header.get("version")
    if not isinstance(version, int) or version != FILE_VERSION:
        newer = isinstance(version, int) and version > FILE_VERSION
        raise ValueError(f"{str(path)!r} has file version {version!r}; this sparsecnn reads "
                         f"version {FILE_VERSION}" + (" (written by a newer sparsecnn: upgrade)"
                                                      if newer else ""))
    for name, typ in (("identity", list), ("extra_state", dict)):
        if not isinstance(header.get(name), typ):
            raise ValueError(f"{str(path)!r}: corrupt header ({name!r} must be a "
                             f"{typ.__name__})")
    return header


def _submodule(model: nn.Module, name: str):
    try:
        return model.get_submodule(name)
    except AttributeError:
        return None


def _set_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, new)


def _restructure(model: nn.Module, header: dict, tensors: dict, where: str) -> None:
    """Make the skeleton's structure the file's: sparse modules where the file has sparse
    layers, nn.Identity where it has them, a bias where a folded BatchNorm added one."""
    for key, meta in header["extra_state"].items():
        kind = meta.get("kind") if isinstance(meta, dict) else None
        if kind not in _SPARSE:
            continue
        name = key[: -len(_EXTRA)].rstrip(".")
        sparse_cls, dense_cls = _SPARSE[kind]
        cur = _submodule(model, name) if name else model
        if type(cur) is sparse_cls:
            continue  # already sparse: load_state_dict takes any nnz / format
        if type(cur) is not dense_cls:
            raise ValueError(f"{where}: the file has a {kind} at {name!r}, the model has "
                             f"{type(cur).__name__ if cur is not None else 'no module'} there")
        relu = meta.get("relu")
        if not isinstance(relu, bool):
            raise ValueError(f"{where}: {key}: 'relu' must be true or false, got {relu!r}")
        if name:
            _set_module(model, name, sparse_cls._skeleton(cur, relu=relu, meta=meta))
        else:
            raise ValueError(f"{where}: the model itself cannot be a sparse layer")
    for name in header["identity"]:
        if not isinstance(name, str) or not name:
            raise ValueError(f"{where}: corrupt header (identity entry {name!r})")
        cur = _submodule(model, name)
        if not isinstance(cur, _REPLACEABLE):
            raise ValueError(f"{where}: the file has nn.Identity at {name!r} (a folded BatchNorm, "
                             f"fused ReLU or fused pooling), the model has "
                             f"{type(cur).__name__ if cur is not None else 'no module'} there")
        if type(cur) is not nn.Identity:
            _set_module(model, name, nn.Identity())
    for key in tensors:  # BatchNorm folding gives a bias-free layer a bias
        name, _, leaf = key.rpartition(".")
        cur = _submodule(model, name) if name else None
        if leaf == "bias" and type(cur) in (nn.Conv2d, nn.Linear) and cur.bias is None:
            cur.bias = nn.Parameter(torch.zeros(cur.weight.shape[0], dtype=cur.weight.dtype))


def load(path, model: nn.Module | None = None) -> nn.Module:
    """Load a model written by :func:`save` (module docstring), in eval mode. Reads tensors and
    JSON only: no code in the file runs.

    Parameters
    ----------
    path : str or Path
    model : nn.Module or None
        The skeleton: an instance of the saved model's architecture, dense (as built) or
        sparsified; it is changed in place and returned. None: rebuilt from the file's ``arch``
        record (models of :mod:`sparsecnn.models` saved with ``arch=``).

    Returns
    -------
    nn.Module

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ValueError
        A truncated, corrupt, foreign (a pickle, a plain safetensors file) or newer file; no
        ``model`` for a file without an ``arch`` record; a skeleton that does not match the file
        (missing or unexpected tensors, other shapes, geometry or ReLU fusion); sparse arrays
        that violate their format's invariants.
    TypeError
        If ``model`` is not an ``nn.Module``.
    """
    from safetensors import safe_open

    path = Path(path)
    header = read_header(path)
    where = repr(str(path))
    if model is None:
        arch = _check_arch(header.get("arch"), f"{where}: arch")
        if arch is None:
            raise ValueError(f"{where} holds no architecture record (saved from a "
                             f"{header.get('class', 'model')} outside sparsecnn.models, or "
                             "without arch=): pass the model skeleton, load(path, model=...), "
                             "an instance of the same architecture (dense or sparsified), as "
                             "for load_state_dict")
        from .. import models

        model = models.build(arch["name"], **arch["kwargs"])
    elif not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    try:
        with safe_open(str(path), framework="pt") as f:
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:  # noqa: BLE001
        raise ValueError(f"{where} is truncated or corrupt ({type(exc).__name__}: {exc})") from None
    _restructure(model, header, tensors, where)
    try:
        model.load_state_dict({**tensors, **header["extra_state"]}, strict=True)
    except RuntimeError as exc:
        raise ValueError(f"{where} does not match the model ({type(model).__name__}): "
                         f"{exc}") from None
    return model.eval()
