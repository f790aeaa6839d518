"""Break-even curves: speedup of each sparse kernel over dense vs sparsity, on one layer's shape.

The timings come from :mod:`sparsecnn.bench` (dense and sparse timed in one process, warm-up,
medians); this module only selects and reshapes them for plotting. It is the slow part of a
report, run only on request (``sparsecnn report --bench``).
"""

from __future__ import annotations


def break_even_curves(spec: dict, sparsities, *, batch: int = 1, kernels=None, threads: int = 1,
                      seed: int = 0, progress=None) -> dict:
    """Time each kernel on the layer's shape at each sparsity; find where it beats dense.

    Parameters
    ----------
    spec : dict
        The layer's shape for :func:`sparsecnn.bench.time_layer` (``C``, ``K``, ``H``, ``W``,
        ``R``, ``S``, ``stride``, ``padding``, ...).
    sparsities : sequence of float
    batch, threads, seed : int
    kernels : sequence of str or None
        Kernel names (None: every registered conv2d kernel).
    progress : callable or None
        Called after each sparsity.

    Returns
    -------
    dict
        ``rows`` (the benchmark's rows), ``break_even`` (its :func:`sparsecnn.bench.break_even`
        result: the lowest sparsity where each kernel beats dense), ``available`` (False with
        ``reason`` when :mod:`sparsecnn.bench` is not installed).
    """
    try:
        from ..bench import break_even, time_layer
    except ImportError as exc:
        return {"available": False, "reason": f"sparsecnn.bench is not available ({exc})",
                "rows": [], "break_even": {}}
    rows = []
    for s in sparsities:
        rows.extend(time_layer(spec, s, batch, kernels, threads, seed))
        if progress is not None:
            progress()
    return {"available": True, "reason": None, "rows": rows, "break_even": break_even(rows)}
