"""The one output check: is ``y`` the same answer as the reference ``ref``?

``max |y - ref| <= TOLERANCE * max(1, max |ref|)`` with equal shapes and a finite error. fp32
sparse kernels sum the same products in another order than oneDNN, so outputs differ in the last
bits; 1e-4 of the output scale is far above that and far below any real bug (a dropped nonzero, a
wrong channel). The kernel tuner, the benchmark, the hybrid plan, graph rewrites
(:func:`sparsecnn.nn.fusion.check_rewrite`) and ``optimize``'s verification all use it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch

#: Allowed max |y - ref|, relative to max(1, max |ref|).
TOLERANCE = 1e-4


@dataclass(frozen=True)
class OutputCheck:
    """Result of :func:`compare_outputs`.

    Attributes
    ----------
    max_abs_err : float
        max |y - ref| (inf when the shapes differ or a value is not finite where ref is).
    scale : float
        max |ref|.
    tolerance : float
        The relative tolerance used.
    ok : bool
        ``max_abs_err <= tolerance * max(1, scale)``.
    message : str
        Empty when ok, else one line saying what differs.
    """

    max_abs_err: float
    scale: float
    tolerance: float
    ok: bool
    message: str = ""

    def as_dict(self) -> dict:
        return asdict(self)


def _flat(t) -> list[torch.Tensor]:
    if isinstance(t, torch.Tensor):
        return [t]
    if isinstance(t, (list, tuple)):
        return [x for item in t for x in _flat(item)]
    if isinstance(t, dict):
        return [x for k in sorted(t, key=str) for x in _flat(t[k])]
    raise TypeError(f"outputs must be tensors (or lists / tuples / dicts of them), got "
                    f"{type(t).__name__}")


def compare_outputs(y, ref, tolerance: float = TOLERANCE) -> OutputCheck:
    """Compare an output (a tensor, or a tuple / list / dict of tensors) with its reference.

    Returns
    -------
    OutputCheck

    Raises
    ------
    TypeError
        If either is not a tensor or a nest of tensors.
    """
    ys, refs = _flat(y), _flat(ref)
    if len(ys) != len(refs):
        return OutputCheck(math.inf, math.nan, tolerance, False,
                           f"{len(ys)} output tensors, expected {len(refs)}")
    err, scale = 0.0, 0.0
    for a, b in zip(ys, refs):
        if tuple(a.shape) != tuple(b.shape):
            return OutputCheck(math.inf, math.nan, tolerance, False,
                               f"output shape {tuple(a.shape)}, expected {tuple(b.shape)}")
        if b.numel() == 0:
            continue
        a64, b64 = a.detach().double(), b.detach().double()
        e = float((a64 - b64).abs().max())
        err = max(err, e if math.isfinite(e) else math.inf)
        scale = max(scale, float(b64.abs().max()))
    ok = math.isfinite(err) and err <= tolerance * max(1.0, scale)
    msg = "" if ok else (f"max|err| = {err:.3g} > {tolerance:g} x max(1, max|ref| = {scale:.3g})")
    return OutputCheck(err, scale, tolerance, ok, msg)
