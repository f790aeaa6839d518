"""Checkpoint loading and layer listing shared by every model."""

from __future__ import annotations

import os
import pickle
import re
from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn as nn

_MAX_LISTED = 5
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def _one_line(text: str) -> str:
    """``text`` on one line: terminal escape codes removed, whitespace runs folded to a space."""
    return " ".join(_ANSI.sub("", str(text)).split())


def _strip_module(state: Mapping) -> dict:
    out = {}
    for key, value in state.items():
        if not isinstance(key, str):
            raise ValueError(f"checkpoint keys must be strings, got {type(key).__name__} {key!r}")
        out[key[len("module."):] if key.startswith("module.") else key] = value
    return out


def _read_checkpoint(path: Path, trusted: bool):
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if not path.is_file():
        raise ValueError(f"cannot read checkpoint {path}: not a file")
    try:
        return torch.load(path, map_location="cpu", weights_only=not trusted)
    except pickle.UnpicklingError as exc:  # torch's text spans lines: fold it
        hint = "" if trusted else " (if you trust the file, pass trusted=True to allow full unpickling)"
        raise ValueError(_one_line(f"cannot read checkpoint {path}: {exc}{hint}")) from exc
    except Exception as exc:  # noqa: BLE001 - torch.load raises many types on corrupt input
        raise ValueError(_one_line(f"cannot read checkpoint {path}: {type(exc).__name__}: {exc}")) \
            from exc


def _listing(keys) -> str:
    keys = [_one_line(k) for k in keys]
    more = f" (+{len(keys) - _MAX_LISTED} more)" if len(keys) > _MAX_LISTED else ""
    return ", ".join(keys[:_MAX_LISTED]) + more


def load_weights(model: nn.Module, path_or_state, *, trusted: bool = False) -> nn.Module:
    """Load a checkpoint into ``model`` strictly and return the model.

    Parameters
    ----------
    model : torch.nn.Module
        The architecture (e.g. from :func:`sparsecnn.models.build`).
    path_or_state : str, os.PathLike or Mapping
        A ``.th``/``.pt`` file or an in-memory dict: either a state dict, or a dict holding one
        under ``"state_dict"`` (as saved by the reference CIFAR ResNet training script). Keys
        prefixed with ``module.`` (``nn.DataParallel``) are stripped.
    trusted : bool
        Files are read with ``torch.load(..., map_location="cpu", weights_only=True)``; set
        ``True`` to allow full unpickling (``weights_only=False``) of a file you trust.

    Returns
    -------
    torch.nn.Module
        ``model`` itself, with the weights copied in (float tensors cast to each parameter's dtype).

    Raises
    ------
    FileNotFoundError
        If the file does not exist (the message names it).
    ValueError
        If the file cannot be read ("cannot read checkpoint ..."), holds no state dict, or its
        keys/shapes do not fit the architecture (the message lists the first few missing,
        unexpected and shape-mismatched keys). Messages are one line (whitespace folded).
        BatchNorm ``num_batches_tracked`` buffers are
        optional (older checkpoints lack them).
    TypeError
        If ``model`` is not an ``nn.Module`` or ``path_or_state`` is neither a path nor a mapping.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if isinstance(path_or_state, (str, os.PathLike)):
        path = Path(path_or_state)
        ckpt = _read_checkpoint(path, trusted)
        source = str(path)
    elif isinstance(path_or_state, Mapping):
        ckpt, source = path_or_state, "state dict"
    else:
        raise TypeError(
            f"path_or_state must be a path or a state dict, got {type(path_or_state).__name__}"
        )
    if isinstance(ckpt, nn.Module):
        ckpt = ckpt.state_dict()
    if not isinstance(ckpt, Mapping):
        raise ValueError(f"cannot read checkpoint {source}: expected a dict, got {type(ckpt).__name__}")
    state = ckpt["state_dict"] if "state_dict" in ckpt else ckpt
    if not isinstance(state, Mapping):
        raise ValueError(f"checkpoint {source}: 'state_dict' is a {type(state).__name__}, not a dict")
    state = _strip_module(state)
    bad_values = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if bad_values:
        raise ValueError(f"checkpoint {source}: non-tensor entries {_listing(bad_values)}")

    expected = model.state_dict()
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in expected]
    mismatched = [
        f"{k} (checkpoint {tuple(state[k].shape)}, model {tuple(expected[k].shape)})"
        for k in expected
        if k in state and tuple(state[k].shape) != tuple(expected[k].shape)
    ]
    if missing or unexpected or mismatched:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing: {_listing(missing)}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected: {_listing(unexpected)}")
        if mismatched:
            parts.append(f"{len(mismatched)} shape-mismatched: {_listing(mismatched)}")
        raise ValueError(_one_line(
            f"checkpoint {source} does not fit {type(model).__name__}: " + "; ".join(parts)
        ))
    model.load_state_dict(state, strict=False)
    return model


def conv_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Conv2d and Linear layers of ``model`` as ``(qualified name, module)`` in forward order.

    The order is that of a ``torch.fx`` trace (the order the layers are called); a model fx
    cannot trace falls back to registration order. Layers that the forward pass never calls are
    appended at the end.

    Parameters
    ----------
    model : torch.nn.Module

    Returns
    -------
    list of (str, torch.nn.Module)
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    from torch.nn.utils import parametrize

    registered = [
        (name, m) for name, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))
    ]
    if parametrize.is_parametrized(model) or any(parametrize.is_parametrized(m) for _, m in registered):
        # fx does not trace through parametrizations; registration order of our models is the
        # forward order, so fall back to it.
        return registered
    try:
        graph = torch.fx.symbolic_trace(model).graph
    except Exception:  # noqa: BLE001 - any trace failure means "use registration order"
        return registered
    lookup = dict(registered)
    order: list[str] = []
    for node in graph.nodes:
        if node.op == "call_module" and node.target in lookup and node.target not in order:
            order.append(node.target)
    order += [name for name, _ in registered if name not in order]
    return [(name, lookup[name]) for name in order]
