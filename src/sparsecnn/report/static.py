"""Static matplotlib figures (PNG / SVG, for papers) of an :func:`analyse_model` result.

Each function mirrors the plotly figure of the same name in :mod:`.interactive`.
"""

from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.cm import ScalarMappable  # noqa: E402
from matplotlib.colors import BoundaryNorm, ListedColormap  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

from ._common import (FIGURES, NNZ_CMAP, NNZ_CMAP_START, grid_view, nnz_max,  # noqa: E402
                      nnz_ticks, short)

MAX_PANELS = 64
#: Legends sit outside the axes (below them), never on the data.
LEGEND_BELOW = dict(loc="upper left", bbox_to_anchor=(0.0, -0.18), frameon=False)
LEGEND_RIGHT = dict(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)


def _legend(ax, n_x: int, ncol: int = 4, below=(0.0, -0.22), **kw):
    """Legend outside the axes: below them when the x labels are few (horizontal), on the right
    when they are rotated (they would run into a legend below)."""
    if n_x > 4:
        return ax.legend(fontsize=8, **LEGEND_RIGHT, **kw)
    return ax.legend(fontsize=8, ncol=ncol, **dict(LEGEND_BELOW, bbox_to_anchor=below), **kw)


def nnz_cmap(vmax: int):
    """(colormap, norm) for integer nnz 0..vmax: 0 white, one colour per value (as the plotly
    figures), so 1, 2 and 3 differ when the densest filter holds 3. NaN (padding) light grey."""
    pos = np.linspace(NNZ_CMAP_START, 1.0, vmax) if vmax > 1 else np.array([1.0])
    colors = [(1.0, 1.0, 1.0, 1.0)] + [tuple(c) for c in matplotlib.colormaps[NNZ_CMAP](pos)]
    cmap = ListedColormap(colors).with_extremes(bad="#f0f0f0")
    return cmap, BoundaryNorm(np.arange(-0.5, vmax + 1.0), cmap.N)


def _bars_x(ax, names):
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels([short(n) for n in names], rotation=60 if len(names) > 4 else 0,
                       ha="right" if len(names) > 4 else "center", fontsize=7 if len(names) > 12 else 9)


def _grid(ax, fig, fnnz, vmax, title):
    """Draw a layer's nnz grid (wrapped when it is narrow, see :func:`grid_view`)."""
    grid, cols = grid_view(fnnz)
    cmap, norm = nnz_cmap(vmax)
    im = ax.imshow(np.ma.masked_invalid(grid), cmap=cmap, norm=norm, interpolation="nearest",
                   aspect="equal")
    ax.set_title(title, fontsize=9)
    return im, cols


def _colorbar(fig, im_or_mappable, ax, vmax, label, **kw):
    cb = fig.colorbar(im_or_mappable, ax=ax, ticks=nnz_ticks(vmax), **kw)
    cb.set_label(label)
    return cb


def sparsity_summary(d):
    rows = [r for r in d["summary"] if r["name"] != "total"]
    fig, ax = plt.subplots(figsize=(max(6, 0.25 * len(rows) + 4), 4))
    keys = (("element_sparsity", "element"), ("kernel_sparsity", "kernel (R x S filter)"),
            ("channel_sparsity", "channel (input)"), ("filter_sparsity", "filter (output)"))
    wdt = 0.8 / len(keys)
    for i, (k, label) in enumerate(keys):
        ax.bar(np.arange(len(rows)) + (i - 1.5) * wdt, [100 * r[k] for r in rows], wdt, label=label)
    _bars_x(ax, [r["name"] for r in rows])
    ax.set_ylabel("sparsity (%)")
    ax.set_ylim(0, 112)                      # room for a label on a 99.3 % bar
    ax.set_yticks(range(0, 101, 20))
    ax.set_title("Sparsity per layer", loc="left")
    if len(rows) <= 4:
        for cont in ax.containers:
            ax.bar_label(cont, fmt="%.2f", fontsize=8, clip_on=False)
    _legend(ax, len(rows))
    return fig


def filter_grid(d):
    layers = d["layers"][:MAX_PANELS]
    if len(layers) == 1:
        n = layers[0]
        w = d["weights"][n]
        k, c, r, s = w.shape
        fnnz = d["profiles"][n]["filter_nnz"]
        vmax = nnz_max(fnnz)
        grid, cols = grid_view(fnnz)
        gr, gc = grid.shape
        fig, ax = plt.subplots(figsize=(9, 9 * gr / gc + 1.2) if gc >= gr else (7, 7))
        im, cols = _grid(ax, fig, fnnz, vmax,
                         f"{n}: K={k} x C/groups={c} filters of {r}x{s}, global density "
                         f"{100 * d['profiles'][n]['global_density']:.2f} %, densest filter "
                         f"{int(fnnz.max())} of {r * s}"
                         + (f"\n(depthwise: the {k * c} filters wrapped, {cols} per row)"
                            if cols is not None else ""))
        ax.set_xlabel("input channel c" if cols is None else f"filter index mod {cols}")
        ax.set_ylabel("output channel k" if cols is None else f"filter index // {cols}")
        _colorbar(fig, im, ax, vmax, f"nnz per {r}x{s} filter (white: 0)", shrink=0.8)
        return fig
    ncol = min(8, math.ceil(math.sqrt(len(layers))))
    nrow = math.ceil(len(layers) / ncol)
    # one colour scale per kernel size R x S, topped by the densest filter of those layers
    by_size: dict[tuple[int, int], list[str]] = {}
    for n in layers:
        by_size.setdefault(tuple(d["weights"][n].shape[2:]), []).append(n)
    vmax = {rs: max(nnz_max(d["profiles"][n]["filter_nnz"]) for n in names)
            for rs, names in by_size.items()}
    bar_w = 0.9 / (2.2 * ncol + 1.2 * len(vmax))        # share of the width per colour bar
    right = 1.0 - 1.3 * len(vmax) * bar_w * 2.2
    fig, axes = plt.subplots(nrow, ncol, figsize=(2.2 * ncol + 1.2 * len(vmax), 2.4 * nrow + 0.9),
                             squeeze=False,
                             gridspec_kw=dict(left=0.02, right=right, bottom=0.02,
                                              top=1 - 1.2 / (2.4 * nrow + 0.9),
                                              hspace=0.55, wspace=0.25))
    for ax, n in zip(axes.flat, layers):
        w = d["weights"][n]
        rs = tuple(w.shape[2:])
        wrapped = grid_view(d["profiles"][n]["filter_nnz"])[1] is not None
        _grid(ax, fig, d["profiles"][n]["filter_nnz"], vmax[rs],
              f"{short(n)}\n{w.shape[0]}x{w.shape[1]} ({rs[0]}x{rs[1]}), "
              f"{100 * d['profiles'][n]['global_density']:.1f} %"
              + (", wrapped" if wrapped else ""))
        ax.title.set_fontsize(7)
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in axes.flat[len(layers):]:
        ax.axis("off")
    fig.suptitle("Filter grids (rows: output channel k, columns: input channel c; narrow "
                 "(depthwise) grids wrapped; colour: nnz per filter, one scale per kernel size)",
                 fontsize=10, x=0.02, ha="left")
    for i, ((r, s), top) in enumerate(sorted(vmax.items())):
        cmap, norm = nnz_cmap(top)
        cax = fig.add_axes((right + (0.4 + 2.2 * i) * bar_w * 1.3, 0.3, bar_w * 0.6, 0.4))
        _colorbar(fig, ScalarMappable(norm=norm, cmap=cmap), None, top,
                  f"nnz per {r}x{s} filter", cax=cax)
    return fig


def local_density(d):
    n = d["detail_layers"][0]
    p = d["profiles"][n]
    rs = p["filter_nnz_hist"].size - 1
    fig, ax = plt.subplots(figsize=(6.5, 4))
    hist = np.asarray(p["filter_nnz_hist"])
    bars = ax.bar(range(rs + 1), np.where(hist > 0, hist, np.nan))
    ax.set_yscale("log")
    ax.set_ylim(0.25, max(1, hist.max()) * 3)   # a bin of 1 filter is a visible bar
    if rs <= 25:
        ax.bar_label(bars, labels=[str(v) if v > 0 else "" for v in hist], fontsize=7)
    ax.set_xticks(range(0, rs + 1, max(1, (rs + 1) // 13 + 1)))
    ax.set_xlabel(f"nnz in the R x S filter (of {rs})")
    ax.set_ylabel("filters (count, log)")
    ax.set_title(f"{n}: global density {100 * p['global_density']:.2f} %, mean density of\n"
                 f"non-empty filters {100 * p['nonzero_filter_density']:.1f} %", fontsize=10)
    return fig


def channel_nnz(d):
    n = d["detail_layers"][0]
    p = d["profiles"][n]
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 3.6))
    a.bar(np.arange(p["out_channel_nnz"].size), p["out_channel_nnz"], width=1.0)
    a.set_xlabel("output channel k")
    a.set_ylabel("nnz")
    a.set_title("per output channel")
    b.bar(np.arange(p["in_channel_nnz"].size), p["in_channel_nnz"], width=1.0, color="#ff7f0e")
    b.set_xlabel("input channel c")
    b.set_ylabel("nnz")
    b.set_title("per input channel")
    fig.suptitle(f"{n}: nnz per channel")
    fig.tight_layout()
    return fig


def load_balance(d):
    n = d["detail_layers"][0]
    lb = d["balance"][n]
    t = np.arange(lb["threads"])
    fig, ax = plt.subplots(figsize=(6.5, 4))
    eng = lb["engine"]
    wdt = 0.4 if eng is not None else 0.8
    ax.bar(t - (wdt / 2 if eng is not None else 0), lb["naive"]["nnz_per_thread"], wdt,
           label=f"naive split (imbalance {lb['naive']['imbalance']:.2f})")
    if eng is not None:
        ax.bar(t + wdt / 2, eng["nnz_per_thread"], wdt,
               label=f"engine partition_rows ({eng['imbalance']:.2f})")
    ax.axhline(lb["nnz"] / lb["threads"], ls=":", c="k", label="mean")
    ax.set_xticks(t)
    ax.set_xlabel("thread")
    ax.set_ylabel("nnz (work units)")
    ax.set_title(f"{n}: nnz per thread, T={lb['threads']}"
                 + ("" if eng is not None else " (engine partition unavailable)"), fontsize=10)
    ax.legend(fontsize=8, ncol=3, **LEGEND_BELOW)
    return fig


def load_balance_layers(d):
    if len(d["layers"]) < 2:
        return None
    names = d["layers"]
    fig, ax = plt.subplots(figsize=(max(6, 0.22 * len(names) + 4), 4))
    x = np.arange(len(names))
    both = all(d["balance"][n]["engine"] is not None for n in names)
    wdt = 0.4 if both else 0.8
    ax.bar(x - (wdt / 2 if both else 0), [d["balance"][n]["naive"]["imbalance"] for n in names], wdt,
           label="naive split")
    if both:
        ax.bar(x + wdt / 2, [d["balance"][n]["engine"]["imbalance"] for n in names], wdt,
               label="engine partition")
    ax.axhline(1.0, c="k", lw=0.8)
    _bars_x(ax, names)
    ax.set_ylabel("imbalance (max/mean nnz per thread)")
    ax.set_title(f"Load imbalance per layer, T={d['threads']}")
    _legend(ax, len(names), ncol=2)
    return fig


def dense_blocks(d):
    n = d["detail_layers"][0]
    b = d["blocks"].get(n)
    if b is None:
        return None
    fnnz = d["profiles"][n]["filter_nnz"][np.ix_(b["row_order"], b["col_order"])]
    k, c = fnnz.shape
    vmax = nnz_max(fnnz)
    fig, ax = plt.subplots(figsize=(9, 9 * k / c + 1.2) if c >= k else (7, 7))
    im, _ = _grid(ax, fig, fnnz, vmax,
               f"{n}: rows/cols reordered by nnz; {len(b['blocks'])} block(s) ≥ {100 * b['threshold']:.0f} % "
               f"dense hold {100 * b['share']:.1f} % of nnz\n(tile {b['tile'][0]}x{b['tile'][1]} filters; densest tile {100 * b['tile_density'].max():.1f} %)")
    pos = {int(r): i for i, r in enumerate(b["row_order"])}
    cpos = {int(cc): j for j, cc in enumerate(b["col_order"])}
    for blk in b["blocks"]:
        r0 = min(pos[int(r)] for r in blk["rows"])
        for cc in sorted(cpos[int(x)] for x in blk["cols"]):
            ax.add_patch(Rectangle((cc - 0.5, r0 - 0.5), 1, len(blk["rows"]), fill=False,
                                   ec="#d62728", lw=0.6))
    ax.set_xlabel("input channel, reordered by nnz (desc.)")
    ax.set_ylabel("output channel, reordered by nnz (desc.)")
    _colorbar(fig, im, ax, vmax, "nnz per filter (white: 0)", shrink=0.8)
    return fig


def hybrid(d):
    ok = {n: h for n, h in d["hybrid"].items() if "unavailable" not in h}
    if not ok:
        return None
    names = list(ok)
    same = [n for n in names if ok[n]["measured"].get("same_as_sparse")]
    series = (("dense (torch)", lambda h: h["measured"]["dense_ms"]),
              ("sparse (all nnz)", lambda h: h["measured"]["sparse_ms"]),
              ("hybrid, cost model", lambda h: h["estimate"]["hybrid_ms"]),
              ("hybrid, measured", lambda h: np.nan if h["measured"].get("same_as_sparse")
               else h["measured"]["hybrid_ms"]))
    if len(same) == len(names):     # nothing measured: no legend entry without a bar
        series = series[:3]
    fig, ax = plt.subplots(figsize=(6.5, 4))
    wdt = 0.8 / len(series)
    for i, (label, f) in enumerate(series):
        ax.bar(np.arange(len(names)) + (i - (len(series) - 1) / 2) * wdt, [f(ok[n]) for n in names],
               wdt, label=label)
    _bars_x(ax, names)
    ax.set_ylabel("time (ms, median)")
    ax.set_title("Hybrid plan vs dense and all-sparse (one image; interleaved medians)"
                 + (f"\n{', '.join(short(n) for n in same)}: no dense block, the hybrid plan is "
                    "the sparse run" if same else ""), fontsize=9)
    _legend(ax, len(names), ncol=2, below=(0.0, -0.18))
    return fig


def memory(d):
    from .interactive import memory_formats
    rows = [r for r in d["summary"] if r["name"] != "total"]
    fmts, absent = memory_formats(rows)
    fig, ax = plt.subplots(figsize=(max(6, 0.3 * len(rows) * (1 + len(fmts)) / 3 + 4), 4))
    series = [("dense", [r["dense_bytes"] for r in rows])] + [
        (f, [np.nan if r["bytes"][f] is None else r["bytes"][f] for r in rows]) for f in fmts]
    wdt = 0.8 / len(series)
    for i, (label, ys) in enumerate(series):
        ax.bar(np.arange(len(rows)) + (i - (len(series) - 1) / 2) * wdt, np.array(ys, float) / 1024, wdt,
               label=label)
    ax.set_yscale("log")
    if len(rows) <= 4:
        for cont in ax.containers:
            ax.bar_label(cont, fmt="%.1f", fontsize=8)
    _bars_x(ax, [r["name"] for r in rows])
    ax.set_ylabel("KiB (log)")
    ax.set_title("Weight memory per layer (float32 values)"
                 + (f"\nnot applicable to these weights (no bar): {', '.join(absent)}"
                    if absent else ""), fontsize=10)
    _legend(ax, len(rows), ncol=len(series))
    return fig


def encodings(d):
    enc = d.get("encodings")
    if not enc:
        return None
    from .interactive import ENCODINGS, encodings_note

    rows = [r for r in enc["rows"] if r["name"] != "(total)"]
    fig, ax = plt.subplots(figsize=(max(6, 0.3 * len(rows) * len(ENCODINGS) / 3 + 4), 4.2))
    wdt = 0.8 / len(ENCODINGS)
    for i, (key, label) in enumerate(ENCODINGS):
        ax.bar(np.arange(len(rows)) + (i - (len(ENCODINGS) - 1) / 2) * wdt,
               [r[key]["bytes"] / 1024 for r in rows], wdt, label=label)
    ax.set_yscale("log")
    _bars_x(ax, [r["name"] for r in rows])
    ax.set_ylabel("KiB (log)")
    ax.set_title(f"Weight bytes in sparse accelerators' encodings\n{encodings_note(d)}", fontsize=8)
    ax.legend(fontsize=7, ncol=2, loc="lower center", bbox_to_anchor=(0.5, 1.12))
    return fig


def ineffectual(d):
    ie = d["ineffectual"]
    if "unavailable" in ie:
        return None
    L = ie["layers"]
    names = list(L)
    parts = (("effectual (both nonzero)", lambda e: e["macs_effectual"], "#2ca02c"),
             ("weight zero only", lambda e: e["macs_weight_zero"] - e["macs_both_zero"], "#1f77b4"),
             ("activation zero only", lambda e: e["macs_act_zero"] - e["macs_both_zero"], "#ff7f0e"),
             ("both zero", lambda e: e["macs_both_zero"], "#7f7f7f"))
    fig, ax = plt.subplots(figsize=(max(6, 0.22 * len(names) + 4), 4.2))
    bottom = np.zeros(len(names))
    for label, f, color in parts:
        ys = np.array([100 * f(L[n]) / L[n]["macs_total"] for n in names])
        ax.bar(range(len(names)), ys, 0.8, bottom=bottom, label=label, color=color)
        bottom += ys
    _bars_x(ax, names)
    ax.set_ylim(0, 100)
    ax.set_ylabel("share of dense MACs (%)")
    from .interactive import ineffectual_totals

    ax.set_title(f"{ineffectual_totals(L)}\nactivations measured on {ie['images']} images of: {ie['input_source']}", fontsize=8)
    _legend(ax, len(names))
    return fig


def threshold_sweep(d):
    sw = d["sweep"]
    rows = sw["rows"]
    th = [r["threshold"] for r in rows]
    fig, ax = plt.subplots(figsize=(7, 4.2))
    ax.plot(th, [100 * r["density"] for r in rows], "o-", lw=2.5, label="all layers in scope")
    if len(d["layers"]) <= 12:
        for n in d["layers"]:
            ax.plot(th, [100 * r["layers"][n] for r in rows], lw=0.8, label=short(n))
    ax.axhline(100 * sw["current_density"], ls=":", c="gray")
    ax.set_yscale("log")
    ax.set_xlabel("magnitude threshold t (weight units; keep |w| > t)")
    ax.set_ylabel("density (% kept, log)")
    handles, labels = ax.get_legend_handles_labels()
    if rows[0]["accuracy"] is not None:
        ax2 = ax.twinx()
        h2 = ax2.plot(th, [100 * r["accuracy"] for r in rows], "k--s", label=f"top-1 accuracy ({sw['accuracy_images']} images)")
        ax2.set_ylabel("top-1 accuracy (%)")
        ax2.set_ylim(0, 100)
        handles += h2
        labels += [h2[0].get_label()]
    ax.legend(handles, labels, fontsize=7, ncol=3, **LEGEND_BELOW)
    from .interactive import own_weights_text, sweep_source
    ax.set_title(f"Pruning-threshold sweep of the {sweep_source(d)} weights (what-if, one-shot)\n"
                 f"dotted: this report's own weights: {own_weights_text(d)}", fontsize=9)
    return fig


def break_even(d):
    from matplotlib.ticker import FixedLocator, LogLocator, NullLocator, ScalarFormatter

    from ..analysis.breakeven import speedup_series

    be = d.get("break_even")
    if not be:
        return None
    fig, ax = plt.subplots(figsize=(7, 4.2))
    xs = []
    for n, res in be.items():
        if not res.get("available"):
            continue
        for kern, pts in speedup_series(res["rows"]).items():
            lab = res.get("break_even_label", {}).get(kern, "n/a")
            ax.plot([1 - s for s, _ in pts], [v for _, v in pts], "o-", label=f"{short(n)}: {kern} (break-even {lab})")
            xs += [1 - s for s, _ in pts]
    if not xs:
        plt.close(fig)
        return None
    ax.axhline(1.0, ls=":", c="k", label="dense (1x)")
    for n in be:
        dens = d["profiles"][n]["global_density"]
        if dens > 0:
            ax.axvline(dens, ls="--", c="gray", label=f"{short(n)} in this report: {100 * (1 - dens):.2f} %")
    ax.set_xscale("log")
    ax.invert_xaxis()
    ticks = sorted(set(xs))
    ax.xaxis.set_major_locator(FixedLocator(ticks))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xticklabels([f"{100 * (1 - t):.4g}" for t in ticks])
    ax.set_yscale("log")
    ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_minor_locator(NullLocator())
    ax.yaxis.set_major_formatter(ScalarFormatter())
    ax.set_xlabel("sparsity (%; axis spaced by log density)")
    ax.set_ylabel("speedup over dense (x, log)")
    ax.set_title("Speedup over dense vs sparsity on the layer's shape (batch 1)", fontsize=10)
    ax.legend(fontsize=8, ncol=2, **LEGEND_BELOW)
    return fig


# one renderer per entry of FIGURES, named like it (a missing one fails at import)
RENDERERS = {name: globals()[name] for name, _ in FIGURES}
