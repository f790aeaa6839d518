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
#: Colour map of the nnz-per-filter grids (both renderers): value 1 at ``NNZ_CMAP_START`` of it,
#: the densest filter at its dark end, 0 white.
NNZ_CMAP = "YlGnBu"
NNZ_CMAP_START = 0.3
#: Grids narrower than this many columns (depthwise: 1) are wrapped into a near-square grid.
MIN_GRID_COLS = 4


def nnz_max(fnnz: np.ndarray) -> int:
    """The colour scale's top: the densest filter's real nnz (at least 1)."""
    return max(1, int(fnnz.max()) if fnnz.size else 1)


def grid_view(fnnz: np.ndarray) -> tuple[np.ndarray, int | None]:
    """The K x (C/groups) nnz grid as drawn: as it is, or, when it has fewer than
    :data:`MIN_GRID_COLS` columns (a depthwise layer's is K x 1, a 1-pixel line), its filters in
    row-major order wrapped into a near-square grid of ``cols`` columns (NaN pads the last row).

    Returns
    -------
    (grid float64, cols or None)
        ``cols`` is None when the grid is not wrapped; else filter ``i = k * (C/groups) + c``
        sits at row ``i // cols``, column ``i % cols``.
    """
    k, c = fnnz.shape
    if c >= MIN_GRID_COLS or k * c <= MIN_GRID_COLS:
        return fnnz.astype(np.float64), None
    n = k * c
    cols = int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / cols))
    grid = np.full(rows * cols, np.nan)
    grid[:n] = fnnz.ravel()
    return grid.reshape(rows, cols), cols


def nnz_ticks(vmax: int) -> list[int]:
    """Colour-bar ticks for integer nnz 0..vmax: every value up to 12, else about 8 steps."""
    if vmax <= 12:
        return list(range(vmax + 1))
    step = int(np.ceil(vmax / 8))
    return list(range(0, vmax + 1, step)) + ([vmax] if vmax % step else [])


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
