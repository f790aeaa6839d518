"""Cheap default choice of kernel when nothing measured is known."""

from __future__ import annotations

from ..kernels import registry

# Preference order per op among the kernels that accept the weight's format.
PREFERENCE = {
    "conv2d": ("direct_avx512", "direct", "im2col_spmm", "dense"),
    "linear": ("spmv", "spmm", "dense"),
}


def choose(op: str, weight, problem: dict) -> str:
    """Name of the kernel to run ``problem`` with ``weight`` when no measurement is cached.

    Dense weights run dense. For sparse weights, the first kernel of :data:`PREFERENCE` that
    accepts the format and supports the problem (SpMV is preferred for linear at batch 1 only).

    Raises
    ------
    ValueError
        If no registered kernel accepts the weight's format.
    """
    fmt = problem["format"]
    if fmt == "dense":
        return "dense"
    ok = {k.name for k in registry.candidates(op, fmt, problem)}
    order = PREFERENCE[op]
    if op == "linear" and problem.get("B", 1) > 1:
        order = ("spmm", "spmv", "dense")
    for name in order:
        if name in ok:
            return name
    if ok:
        return sorted(ok)[0]
    raise ValueError(f"no {op} kernel accepts weight format {fmt!r}")
