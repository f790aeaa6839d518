"""Shared pieces of the renderers: figure list, labels, number formatting."""

from __future__ import annotations

import numpy as np

# (name, title) of every figure a report can hold, in page order. A renderer returns None for a
# figure whose data is unavailable; the page then shows why.
FIGURES: tuple[tuple[str, str], ...] = (
    ("sparsity_summary", "Sparsity per layer (Distiller's element / kernel / channel / filter)"),
    ("filter_grid", "Filter grid: nnz of every R x S filter (K output x C input channels)"),
    ("local_density", "Local (per-filter) vs global density"),
    ("channel_nnz", "nnz per output channel and per input channel"),
    ("load_balance", "Load balance: nnz per thread, engine partition vs naive split"),
    ("load_balance_layers", "Load imbalance per layer"),
    ("dense_blocks", "Dense sub-blocks (rows and columns reordered by nnz)"),
    ("hybrid", "Hybrid plan: dense blocks + sparse rest"),
    ("memory", "Weight memory: dense vs sparse formats"),
    ("encodings", "Accelerators' view: index encodings of Cambricon-X and EIE vs CSR"),
    ("ineffectual", "Ineffectual work: MACs with a zero operand"),
    ("threshold_sweep", "Pruning-threshold sweep"),
    ("break_even", "Break-even: speedup over dense vs sparsity"),
)

MAX_HOVER_VALUES = 600_000   # filter values carried in hover text, per layer, at most


def short(name: str) -> str:
    """A layer name short enough for an axis tick."""
    return name if len(name) <= 18 else "…" + name[-17:]


def filter_values_text(w: np.ndarray, fnnz: np.ndarray) -> np.ndarray | None:
    """Hover text per filter: its R x S values (rows joined by ``<br>``); "" for zero filters.

    Returns None when the layer holds more than :data:`MAX_HOVER_VALUES` values in nonzero
    filters (the page would get too heavy); the hover then shows nnz only.
    """
    k, c, r, s = w.shape
    live = np.nonzero(fnnz)
    if live[0].size * r * s > MAX_HOVER_VALUES:
        return None
    vals = w[live]                                  # (m, R, S)
    strs = np.char.mod("%.3g", vals.astype(np.float64))
    strs = np.where(vals == 0, "·", strs)
    rows = []
    for i in range(r):
        row = strs[:, i, 0]
        for j in range(1, s):
            row = np.char.add(np.char.add(row, " "), strs[:, i, j])
        rows.append(row)
    text = rows[0]
    for i in range(1, r):
        text = np.char.add(np.char.add(text, "<br>"), rows[i])
    out = np.full((k, c), "", dtype=object)
    out[live] = text
    return out
