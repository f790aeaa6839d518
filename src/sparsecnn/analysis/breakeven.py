"""Break-even curves: speedup of each sparse kernel over dense vs sparsity, on one layer's shape.

The timings come from :func:`sparsecnn.bench.time_layer` (dense ``F.conv2d`` and each sparse
kernel timed in one process, interleaved, warm-up apart, medians; its weights are random,
magnitude-pruned to each sparsity, on the layer's shape); this module only builds the layer
spec, collects the rows and finds the crossings with :func:`sparsecnn.bench.break_even`. It is
the slow part of a report, run only on request (``sparsecnn report --bench``).
"""

from __future__ import annotations

import math


def break_even_curves(name: str, geometry: dict, weight_shape, sparsities, *, batch: int = 1,
                      kernels=None, threads: int = 1, seed: int = 0, progress=None) -> dict:
    """Time each kernel on the layer's shape at each sparsity; find where it beats dense.

    Parameters
    ----------
    name : str
        Layer name (used as the spec's name).
    geometry : dict
        ``input_shape`` (N, C, H, W), ``stride``, ``padding``, ``dilation``, ``groups`` (as in
        :func:`sparsecnn.analysis.analyse_model`'s ``geometry``).
    weight_shape : (K, C, R, S)
    sparsities : sequence of float in [0, 1)
    batch, threads, seed : int
    kernels : sequence of str or None
        Sparse kernels (None: every registered conv2d kernel accepting CSR).
    progress : callable or None
        Called after each sparsity.

    Returns
    -------
    dict
        ``available`` (False with ``reason`` when the benchmark is not installed or the layer's
        geometry is outside what it times: square stride and padding, dilation 1, groups 1),
        ``rows`` (the benchmark's rows, keys :data:`sparsecnn.bench.ROW_KEYS`), ``break_even``
        (kernel -> lowest sparsity where it beats dense, None if no crossing in range),
        ``break_even_label`` (kernel -> ``"0.874"``, ``"<0.5"``, ``">0.99"`` or ``"n/a"``).
    """
    empty = {"rows": [], "break_even": {}, "break_even_label": {}}
    try:
        from ..bench import LayerSpec, break_even, break_even_labels, time_layer
    except ImportError as exc:
        return {"available": False, "reason": f"sparsecnn.bench is not available ({exc})", **empty}
    g = geometry
    if g.get("input_shape") is None:
        return {"available": False, "reason": "the layer's input shape is unknown", **empty}
    st, pad = tuple(g["stride"]), tuple(g["padding"])
    if st[0] != st[1] or pad[0] != pad[1] or tuple(g["dilation"]) != (1, 1) or g["groups"] != 1:
        return {"available": False, "reason": (f"the benchmark times square stride/padding, dilation 1, "
                                               f"groups 1; this layer has stride {st}, padding {pad}, "
                                               f"dilation {g['dilation']}, groups {g['groups']}"), **empty}
    k, c, r, s = weight_shape
    _, _, h, w = g["input_shape"]
    spec = LayerSpec(name=name, model="report", C=int(c), H=int(h), W=int(w), K=int(k), R=int(r),
                     S=int(s), stride=int(st[0]), pad=int(pad[0]))
    rows = []
    for sp in sparsities:
        rows.extend(time_layer(spec, float(sp), batch, kernels, threads, seed))
        if progress is not None:
            progress()
    be = {key[1]: v for key, v in break_even(rows).items()}
    labels = {key[1]: v for key, v in break_even_labels(rows).items()}
    return {"available": True, "reason": None, "rows": rows, "break_even": be, "break_even_label": labels}


def speedup_series(rows: list[dict]) -> dict:
    """kernel -> sorted [(sparsity, speedup over dense)] from benchmark rows with status "ok"."""
    out: dict = {}
    for r in rows:
        sp = r.get("speedup")
        if r.get("kernel") == "dense" or r.get("status") != "ok" or sp is None or not math.isfinite(sp):
            continue
        out.setdefault(r["kernel"], []).append((r["sparsity"], sp))
    return {k: sorted(v) for k, v in out.items()}
