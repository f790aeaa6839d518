"""A sparse weight as state-dict entries, and back through its validating constructor.

A format object (:class:`~sparsecnn.formats.SparseWeight`) is described by plain data -- its
``format_name``, dense ``shape`` and constructor parameters (BSR ``block_shape``, N:M ``n`` and
``m``) -- plus its arrays (``arrays()``: ``rowptr`` / ``colidx`` / ``values`` for CSR, ...).
:func:`weight_state` gives both (the arrays as *copies*, never views of the object's read-only
memory); :func:`weight_from_state` rebuilds the object from them with the format's own
constructor, which copies, validates every invariant (index ranges, monotone pointers, shapes,
dtypes) and marks the arrays read-only. Nothing read from a state dict or a file reaches a
kernel without passing that constructor.
"""

from __future__ import annotations

import inspect
import json
import math

import numpy as np
import torch

from ..formats import FORMATS, SparseWeight

#: Version of a sparse module's state (its ``_extra_state`` entry); bumped on a change that an
#: older reader would misread.
STATE_VERSION = 1


def _init_signature(cls) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(array argument names, parameter names) of a format constructor: every argument of
    ``__init__`` but ``shape`` is an array unless it has a default (a parameter)."""
    arrays, params = [], []
    for name, p in inspect.signature(cls.__init__).parameters.items():
        if name in ("self", "shape"):
            continue
        (arrays if p.default is inspect.Parameter.empty else params).append(name)
    return tuple(arrays), tuple(params)


def array_names(meta) -> tuple[str, ...] | None:
    """The array names a weight described by ``meta`` (:func:`weight_state`) has, or None if
    ``meta`` names no known format (:func:`weight_from_state` then says why)."""
    fmt = meta.get("format") if isinstance(meta, dict) else None
    cls = FORMATS.get(fmt) if isinstance(fmt, str) else None
    return None if cls is None else _init_signature(cls)[0]


def _jsonable(v):
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (tuple, list)):
        return [_jsonable(e) for e in v]
    return v


def weight_state(weight: SparseWeight) -> tuple[dict, dict[str, torch.Tensor]]:
    """``(meta, arrays)`` of a sparse weight.

    Returns
    -------
    meta : dict
        ``{"format": str, "shape": [int, ...], "params": {name: int or [int, ...]}}`` (JSON).
    arrays : dict of str -> torch.Tensor
        A CPU tensor copy of each stored array (int32 indices, uint8 N:M metadata, float values).
    """
    cls = type(weight)
    _, params = _init_signature(cls)
    meta = {"format": weight.format_name, "shape": [int(d) for d in weight.shape],
            "params": {p: _jsonable(getattr(weight, p)) for p in params}}
    arrays = {name: torch.from_numpy(np.array(a, copy=True)) for name, a in weight.arrays().items()}
    return meta, arrays


def weight_from_state(meta, arrays: dict, where: str = "weight") -> SparseWeight:
    """Rebuild a sparse weight from :func:`weight_state`'s ``(meta, arrays)``, validated.

    Parameters
    ----------
    meta : dict
        ``format``, ``shape``, ``params``.
    arrays : dict of str -> torch.Tensor or numpy.ndarray
        Exactly the format's arrays.
    where : str
        Named in error messages (a state-dict prefix, a file).

    Raises
    ------
    ValueError
        An unknown format, missing or unexpected arrays or parameters, arrays that are not
        numeric tensors, or any invariant the format's constructor checks (index out of range,
        pointers not monotone, lengths, dtypes...).
    """
    if not isinstance(meta, dict):
        raise ValueError(f"{where}: weight description must be an object, got {type(meta).__name__}")
    fmt = meta.get("format")
    cls = FORMATS.get(fmt) if isinstance(fmt, str) else None
    if cls is None:
        raise ValueError(f"{where}: unknown sparse format {fmt!r}; expected one of {sorted(FORMATS)}")
    names, params = _init_signature(cls)
    if set(arrays) != set(names):
        raise ValueError(f"{where}: a {fmt!r} weight has the arrays {sorted(names)}, got "
                         f"{sorted(arrays)}")
    given = meta.get("params", {})
    if not isinstance(given, dict) or not set(given) <= set(params):
        raise ValueError(f"{where}: {fmt!r} parameters must be among {list(params)}, got {given!r}")
    shape = meta.get("shape")
    if (not isinstance(shape, (list, tuple)) or len(shape) not in (2, 4)
            or not all(type(d) is int and d > 0 for d in shape)):
        raise ValueError(f"{where}: shape must be 2 or 4 positive ints, got {shape!r}")
    if math.prod(shape) > 1 << 40:
        raise ValueError(f"{where}: shape {shape} is implausibly large")
    np_arrays = {}
    for name, a in arrays.items():
        if isinstance(a, torch.Tensor):
            if a.is_complex() or a.dtype == torch.bool or a.dtype == torch.bfloat16:
                raise ValueError(f"{where}: array {name!r} has dtype {a.dtype}")
            a = a.detach().cpu().numpy()
        if not isinstance(a, np.ndarray):
            raise ValueError(f"{where}: array {name!r} must be a tensor, got {type(a).__name__}")
        np_arrays[name] = a
    kw = {k: (tuple(v) if isinstance(v, list) else v) for k, v in given.items()}
    try:
        return cls(**np_arrays, shape=tuple(shape), **kw)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{where}: invalid {fmt!r} weight: {exc}") from None


def json_copy(obj, where: str):
    """``obj`` as plain JSON data (a deep copy); ValueError naming ``where`` if it is not JSON."""
    try:
        return json.loads(json.dumps(obj, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{where} is not plain JSON data: {exc}") from None
