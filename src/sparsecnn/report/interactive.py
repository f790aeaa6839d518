"""Interactive plotly figures of an :func:`sparsecnn.analysis.analyse_model` result."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from ..analysis.breakeven import speedup_series
from ._common import (FIGURES, NNZ_CMAP, NNZ_CMAP_START, filter_values_text, grid_view, nnz_max,
                      nnz_ticks, short)

#: Every figure: the plotly toolbar stands vertically at the right edge (it no longer sits on
#: titles and menus), titles start at the left, legends go below the plot (never on the data).
LAYOUT = dict(template="plotly_white", margin=dict(l=70, r=60, t=90, b=60), font=dict(size=12),
              modebar=dict(orientation="v"))
TITLE = dict(x=0.0, xanchor="left", y=1.0, yref="container", yanchor="top", pad=dict(t=20),
             font=dict(size=15))
LEGEND_BELOW = dict(orientation="h", x=0.0, xanchor="left", y=0.01, yref="container",
                    yanchor="bottom")


def nnz_colorscale(vmax: int) -> list:
    """A discrete colour scale for integer nnz 0..vmax (use ``zmin=-0.5, zmax=vmax+0.5``):
    0 white, 1 .. vmax one band each from light to dark, so 1, 2 and 3 differ even when the
    densest filter holds 3 nonzeros."""
    from plotly.colors import sample_colorscale
    pos = list(np.linspace(NNZ_CMAP_START, 1.0, vmax)) if vmax > 1 else [1.0]
    colors = ["#ffffff"] + sample_colorscale(NNZ_CMAP, pos)
    n = len(colors)
    scale = []
    for i, col in enumerate(colors):
        scale += [[i / n, col], [(i + 1) / n, col]]
    return scale


def _nnz_colorbar(vmax: int, title: str) -> dict:
    return dict(title=dict(text=title), tickvals=nnz_ticks(vmax), len=0.75, y=0.0,
                yanchor="bottom", outlinewidth=1, outlinecolor="#999")


def _fig(title: str | None = None, legend_below: bool = False, **kw) -> go.Figure:
    fig = go.Figure()
    fig.update_layout(**LAYOUT, **kw)
    if title is not None:
        fig.update_layout(title=dict(TITLE, text=title))
    if legend_below:
        fig.update_layout(legend=LEGEND_BELOW, margin=dict(b=150))
    return fig


def sparsity_summary(d: dict) -> go.Figure:
    rows = [r for r in d["summary"] if r["name"] != "total"]
    names = [short(r["name"]) for r in rows]
    fig = _fig(title="Sparsity per layer", barmode="group", yaxis_title="sparsity (%)",
               xaxis_title="layer", height=460, legend_below=True)
    for key, label in (("element_sparsity", "element"), ("kernel_sparsity", "kernel (R x S filter)"),
                       ("channel_sparsity", "channel (input)"), ("filter_sparsity", "filter (output)")):
        fig.add_bar(x=names, y=[100 * r[key] for r in rows], name=label,
                    customdata=[[r["name"], r["nnz"], r["numel"]] for r in rows],
                    hovertemplate="%{customdata[0]}<br>" + label
                    + " sparsity %{y:.2f} %<br>nnz %{customdata[1]} of %{customdata[2]}<extra></extra>")
    # room above 100 % so a label on a 99.3 % bar is not clipped; ticks stay 0..100
    fig.update_yaxes(range=[0, 112], tickvals=list(range(0, 101, 20)))
    if len(rows) <= 4:
        fig.update_traces(texttemplate="%{y:.2f} %", textposition="outside", cliponaxis=False)
    return fig


def _grid_hover(w, fnnz, cols):
    """(text, customdata, hovertemplate) of one layer's grid."""
    k, c, r, s = w.shape
    if cols is None:
        text = filter_values_text(w, fnnz)
        hover = "output channel k=%{y}<br>input channel c=%{x}<br>nnz=%{z} of " + str(r * s)
        if text is not None:
            hover += "<br>values (R x S):<br>%{text}"
        return text, None, hover
    grid, _ = grid_view(fnnz)
    idx = np.arange(grid.size).reshape(grid.shape)
    custom = np.stack([idx // c, idx % c], axis=-1)
    hover = ("filter k=%{customdata[0]}, c=%{customdata[1]}<br>nnz=%{z} of " + str(r * s))
    return None, custom, hover


def filter_grid(d: dict) -> go.Figure:
    layers = d["layers"]
    first = layers.index(d["detail_layers"][0]) if d["detail_layers"][0] in layers else 0
    fig = _fig(height=720)
    fig.update_layout(margin=dict(t=130))
    buttons = []
    for i, n in enumerate(layers):
        w = d["weights"][n]
        k, c, r, s = w.shape
        fnnz = d["profiles"][n]["filter_nnz"]
        vmax = nnz_max(fnnz)
        grid, cols = grid_view(fnnz)
        text, custom, hover = _grid_hover(w, fnnz, cols)
        fig.add_heatmap(z=grid, zmin=-0.5, zmax=vmax + 0.5, colorscale=nnz_colorscale(vmax),
                        visible=(i == first), text=text, customdata=custom,
                        hovertemplate=hover + f"<extra>{n}</extra>", name=n, xgap=0, ygap=0,
                        colorbar=_nnz_colorbar(vmax, f"nnz per<br>{r}x{s} filter"))
        dens = d["profiles"][n]["global_density"]
        wrap = (f"; depthwise: the {k * c} filters wrapped row-major, {cols} per row"
                if cols is not None else "")
        title = (f"Filter grid of {n}: K={k} x C/groups={c} filters of {r}x{s}<br><sup>global "
                 f"density {100 * dens:.2f} %, densest filter {int(fnnz.max())} of {r * s} "
                 f"nonzeros{wrap}; zoom: drag, reset: double-click</sup>")
        xt, yt = (("filter index mod " + str(cols), "filter index // " + str(cols))
                  if cols is not None else ("input channel c", "output channel k"))
        buttons.append(dict(label=n, method="update",
                            args=[{"visible": [j == i for j in range(len(layers))]},
                                  {"title.text": title, "xaxis.title.text": xt,
                                   "yaxis.title.text": yt}]))
        if i == first:
            fig.update_layout(title=dict(TITLE, text=title))
            fig.update_xaxes(title=xt)
            fig.update_yaxes(title=yt)
    fig.update_xaxes(showgrid=False, constrain="domain")
    fig.update_yaxes(autorange="reversed", showgrid=False, scaleanchor="x", constrain="domain")
    if len(layers) > 1:
        fig.update_layout(updatemenus=[dict(buttons=buttons, direction="down", x=0.0, y=1.01,
                                            xanchor="left", yanchor="bottom", showactive=True,
                                            active=first, pad=dict(t=0, b=4))])
    return fig


def local_density(d: dict) -> go.Figure:
    n = d["detail_layers"][0]
    p = d["profiles"][n]
    rs = p["filter_nnz_hist"].size - 1
    hist = p["filter_nnz_hist"]
    fig = _fig(title=f"{n}: filters by nnz<br><sup>global density {100 * p['global_density']:.2f} %, "
                     f"mean density of non-empty filters {100 * p['nonzero_filter_density']:.1f} %"
                     "</sup>",
               xaxis_title=f"nnz in the R x S filter (of {rs})", yaxis_title="filters (count, log)",
               height=420)
    # a log axis has no 0: bars start at 10^-0.6, so a bin holding 1 filter is a visible bar
    fig.add_bar(x=list(range(rs + 1)), y=[v if v > 0 else None for v in hist], name="filters",
                text=[str(v) if v > 0 else "" for v in hist] if rs <= 25 else None,
                textposition="outside", cliponaxis=False,
                hovertemplate="%{y} filters hold %{x} nonzeros<extra></extra>")
    fig.update_yaxes(type="log", range=[-0.6, np.log10(max(1, hist.max())) + 0.4])
    return fig


def channel_nnz(d: dict) -> go.Figure:
    n = d["detail_layers"][0]
    p = d["profiles"][n]
    fig = make_subplots(rows=1, cols=2, subplot_titles=("per output channel k", "per input channel c"))
    fig.update_layout(**LAYOUT, title=dict(TITLE, text=f"{n}: nnz per channel"), height=420,
                      showlegend=False)
    fig.add_bar(x=np.arange(p["out_channel_nnz"].size), y=p["out_channel_nnz"], row=1, col=1,
                hovertemplate="k=%{x}: nnz %{y}<extra></extra>")
    fig.add_bar(x=np.arange(p["in_channel_nnz"].size), y=p["in_channel_nnz"], row=1, col=2,
                hovertemplate="c=%{x}: nnz %{y}<extra></extra>")
    fig.update_xaxes(title_text="output channel k", row=1, col=1)
    fig.update_xaxes(title_text="input channel c", row=1, col=2)
    fig.update_yaxes(title_text="nnz", row=1, col=1)
    return fig


def load_balance(d: dict) -> go.Figure:
    n = d["detail_layers"][0]
    lb = d["balance"][n]
    t = np.arange(lb["threads"])
    eng = lb["engine"]
    title = f"{n}: nnz per thread, T={lb['threads']} — naive split imbalance {lb['naive']['imbalance']:.2f}"
    if eng is not None:
        title += f", engine partition {eng['imbalance']:.2f} (max/mean)"
    else:
        title += " (engine partition unavailable)"
    fig = _fig(title=title, barmode="group", xaxis_title="thread", yaxis_title="nnz (work units)",
               height=440, legend_below=True)
    fig.add_bar(x=t, y=lb["naive"]["nnz_per_thread"], name="naive: equal channel count",
                hovertemplate="thread %{x}: %{y} nnz<extra>naive</extra>")
    if eng is not None:
        fig.add_bar(x=t, y=eng["nnz_per_thread"], name="engine: partition_rows (by nnz)",
                    hovertemplate="thread %{x}: %{y} nnz<extra>engine</extra>")
    fig.add_hline(y=lb["nnz"] / lb["threads"], line_dash="dot", annotation_text="mean")
    fig.update_xaxes(dtick=1)
    return fig


def load_balance_layers(d: dict) -> go.Figure | None:
    if len(d["layers"]) < 2:
        return None
    names = d["layers"]
    fig = _fig(title=f"Load imbalance per layer (max/mean nnz per thread, T={d['threads']})",
               xaxis_title="layer", yaxis_title="imbalance (1 = perfect)", height=440,
               barmode="group", legend_below=True)
    fig.add_bar(x=[short(n) for n in names], y=[d["balance"][n]["naive"]["imbalance"] for n in names],
                name="naive split", customdata=names, hovertemplate="%{customdata}: %{y:.3f}<extra>naive</extra>")
    if all(d["balance"][n]["engine"] is not None for n in names):
        fig.add_bar(x=[short(n) for n in names], y=[d["balance"][n]["engine"]["imbalance"] for n in names],
                    name="engine partition", customdata=names,
                    hovertemplate="%{customdata}: %{y:.3f}<extra>engine</extra>")
    return fig


def dense_blocks(d: dict) -> go.Figure | None:
    n = d["detail_layers"][0]
    b = d["blocks"].get(n)
    if b is None:
        return None
    fnnz = d["profiles"][n]["filter_nnz"][np.ix_(b["row_order"], b["col_order"])]
    k, c = fnnz.shape
    vmax = nnz_max(fnnz)
    fig = _fig(height=680, title=(f"{n}: reordered grid, {len(b['blocks'])} dense block(s) with density "
                                  f"≥ {100 * b['threshold']:.0f} % hold {100 * b['share']:.1f} % of nnz"
                                  f"<br><sup>tile {b['tile'][0]}x{b['tile'][1]} filters; densest "
                                  f"tile {100 * b['tile_density'].max():.1f} %</sup>"))
    fig.add_heatmap(z=fnnz, zmin=-0.5, zmax=vmax + 0.5, colorscale=nnz_colorscale(vmax),
                    customdata=np.stack(np.meshgrid(b["col_order"], b["row_order"]), axis=-1),
                    hovertemplate=("row %{y} = output channel %{customdata[1]}<br>col %{x} = input "
                                   "channel %{customdata[0]}<br>nnz %{z}<extra></extra>"),
                    colorbar=_nnz_colorbar(vmax, "nnz per filter"))
    tk, tc = b["tile"]
    pos = {int(r): i for i, r in enumerate(b["row_order"])}
    cpos = {int(cc): j for j, cc in enumerate(b["col_order"])}
    for blk in b["blocks"]:
        r0 = min(pos[int(r)] for r in blk["rows"])
        cols = sorted(cpos[int(cc)] for cc in blk["cols"])
        # a block's columns are whole tiles of the reordered grid: draw each tile run
        start = prev = cols[0]
        for cc in cols[1:] + [None]:
            if cc is None or cc != prev + 1:
                fig.add_shape(type="rect", x0=start - 0.5, x1=prev + 0.5, y0=r0 - 0.5,
                              y1=r0 + len(blk["rows"]) - 0.5, line=dict(color="#d62728", width=2))
                if cc is not None:
                    start = cc
            prev = cc if cc is not None else prev
    fig.update_xaxes(title="input channel, reordered by nnz (desc.)", showgrid=False, constrain="domain")
    fig.update_yaxes(title="output channel, reordered by nnz (desc.)", autorange="reversed",
                     showgrid=False, scaleanchor="x", constrain="domain")
    return fig


def hybrid(d: dict) -> go.Figure | None:
    ok = {n: h for n, h in d["hybrid"].items() if "unavailable" not in h}
    if not ok:
        return None
    names = list(ok)
    same = [n for n in names if ok[n]["measured"].get("same_as_sparse")]
    sub = (f"<br><sup>{', '.join(short(n) for n in same)}: no dense block, so the hybrid plan is "
           "the sparse run itself (not timed twice)</sup>" if same else "")
    fig = _fig(title="Hybrid plan vs dense and all-sparse (one image; medians of interleaved "
                     "runs, ms)" + sub,
               barmode="group", xaxis_title="layer", yaxis_title="time (ms)", height=460,
               legend_below=True)
    series = (("dense (torch conv2d)", lambda h: h["measured"]["dense_ms"]),
              ("sparse (all nnz)", lambda h: h["measured"]["sparse_ms"]),
              ("hybrid, cost model", lambda h: h["estimate"]["hybrid_ms"]),
              ("hybrid, measured", lambda h: None if h["measured"].get("same_as_sparse")
               else h["measured"]["hybrid_ms"]))
    if len(same) == len(names):     # nothing measured: no legend entry without a bar
        series = series[:3]
    for label, f in series:
        fig.add_bar(x=[short(n) for n in names], y=[f(ok[n]) for n in names], name=label,
                    hovertemplate="%{x}: %{y:.3f} ms<extra>" + label + "</extra>")
    return fig


def memory(d: dict) -> go.Figure:
    rows = [r for r in d["summary"] if r["name"] != "total"]
    fmts, absent = memory_formats(rows)
    sub = (f"<br><sup>not applicable to these weights (no bar): {', '.join(absent)}</sup>"
           if absent else "")
    fig = _fig(title="Weight memory per layer (float32 values)" + sub, barmode="group",
               xaxis_title="layer", yaxis_title="KiB (log)", height=460, legend_below=True)
    fig.add_bar(x=[short(r["name"]) for r in rows], y=[r["dense_bytes"] / 1024 for r in rows],
                name="dense", hovertemplate="%{x}: %{y:.1f} KiB<extra>dense</extra>")
    for f in fmts:
        ys = [None if r["bytes"][f] is None else r["bytes"][f] / 1024 for r in rows]
        fig.add_bar(x=[short(r["name"]) for r in rows], y=ys, name=f,
                    hovertemplate="%{x}: %{y:.1f} KiB<extra>" + f + "</extra>")
    fig.update_yaxes(type="log")
    if len(rows) <= 4:
        fig.update_traces(texttemplate="%{y:.1f}", textposition="outside", cliponaxis=False)
    return fig


def memory_formats(rows: list[dict]) -> tuple[list[str], list[str]]:
    """(formats with a size for some layer, formats that refuse every layer: no bar, no
    legend entry)."""
    fmts = list(rows[0]["bytes"])
    shown = [f for f in fmts if any(r["bytes"][f] is not None for r in rows)]
    return shown, [f for f in fmts if f not in shown]


ENCODINGS = (("csr", "CSR (int32 index + fp32 value)"),
             ("bitmap", "Cambricon-X direct (bitmap per output channel)"),
             ("step", "Cambricon-X step (8-bit steps)"),
             ("eie", "EIE (4-bit relative index + 4-bit codebook)"))


def encodings_note(d: dict) -> str:
    """What the encodings figure assumes (one line)."""
    return ("values fp32 for CSR and Cambricon-X; EIE: 4-bit codebook indices of 16 shared "
            "values + codebook; 32-bit pointers; long runs bridged by filler entries; one PE")


def encodings(d: dict) -> go.Figure | None:
    enc = d.get("encodings")
    if not enc:
        return None
    rows = [r for r in enc["rows"] if r["name"] != "(total)"]
    names = [r["name"] for r in rows]
    fig = _fig(title=f"Weight bytes in sparse accelerators' encodings<br><sup>{encodings_note(d)}</sup>",
               barmode="group", xaxis_title="layer", yaxis_title="KiB (log)", height=460,
               legend_below=True)
    for key, label in ENCODINGS:
        fig.add_bar(x=[short(n) for n in names], y=[r[key]["bytes"] / 1024 for r in rows],
                    name=label, customdata=[[n, r[key]["vs_csr"]] for n, r in zip(names, rows)],
                    hovertemplate="%{customdata[0]}: %{y:.1f} KiB (%{customdata[1]:.2f}x CSR)"
                    "<extra>" + label + "</extra>")
    fig.update_yaxes(type="log")
    return fig


def ineffectual_totals(L: dict) -> str:
    """One line: shares of all layers' dense MACs skipped by weight / activation / either zero."""
    tot = sum(e["macs_total"] for e in L.values())
    w = sum(e["macs_weight_zero"] for e in L.values()) / tot
    a = sum(e["macs_act_zero"] for e in L.values()) / tot
    e = sum(e["macs_either_zero"] for e in L.values()) / tot
    return (f"zero weights skip {100 * w:.1f} %, zero activations {100 * a:.1f} %, "
            f"either {100 * e:.2f} % of dense MACs (effectual {100 * (1 - e):.2f} %)")


def ineffectual(d: dict) -> go.Figure | None:
    ie = d["ineffectual"]
    if "unavailable" in ie:
        return None
    names = list(ie["layers"])
    L = ie["layers"]
    parts = (("effectual (both nonzero)", lambda e: e["macs_effectual"], "#2ca02c"),
             ("weight zero only", lambda e: e["macs_weight_zero"] - e["macs_both_zero"], "#1f77b4"),
             ("activation zero only", lambda e: e["macs_act_zero"] - e["macs_both_zero"], "#ff7f0e"),
             ("both zero", lambda e: e["macs_both_zero"], "#7f7f7f"))
    fig = _fig(title=f"Ineffectual work: {ineffectual_totals(L)}<br><sup>activations measured on {ie['images']} images of: {ie['input_source']}</sup>",
               barmode="stack", xaxis_title="layer", yaxis_title="share of dense MACs (%)",
               height=500, legend_below=True)
    fig.update_layout(margin=dict(t=90))
    for label, f, color in parts:
        fig.add_bar(x=[short(n) for n in names], y=[100 * f(L[n]) / L[n]["macs_total"] for n in names],
                    name=label, marker_color=color, customdata=names,
                    hovertemplate="%{customdata}: %{y:.2f} %<extra>" + label + "</extra>")
    fig.update_yaxes(range=[0, 100])
    return fig


def threshold_sweep(d: dict) -> go.Figure:
    sw = d["sweep"]
    rows = sw["rows"]
    th = [r["threshold"] for r in rows]
    has_acc = rows[0]["accuracy"] is not None
    fig = make_subplots(specs=[[{"secondary_y": has_acc}]])
    fig.update_layout(**LAYOUT, height=520, legend=LEGEND_BELOW,
                      title=dict(TITLE, text=(
                          "Pruning-threshold sweep: global magnitude thresholds on the "
                          f"{sweep_source(d)} weights (keep |w| > t), one-shot, not retrained"
                          f"<br><sup>a what-if curve; this report's own weights: "
                          f"{own_weights_text(d)}</sup>")))
    fig.update_layout(margin=dict(b=150, t=100))
    fig.add_scatter(x=th, y=[100 * r["density"] for r in rows], name="all layers in scope",
                    mode="lines+markers", line=dict(width=3),
                    customdata=[100 * r["fraction"] for r in rows],
                    hovertemplate="t=%{x:.3g}: density %{y:.2f} % (pruned %{customdata:.1f} % of the nonzeros)<extra></extra>")
    if len(d["layers"]) <= 12:
        for n in d["layers"]:
            fig.add_scatter(x=th, y=[100 * r["layers"][n] for r in rows], name=short(n), mode="lines",
                            line=dict(width=1), hovertemplate=n + ": %{y:.2f} %<extra></extra>")
    if has_acc:
        fig.add_scatter(x=th, y=[100 * r["accuracy"] for r in rows], mode="lines+markers",
                        name=f"top-1 accuracy ({sw['accuracy_images']} images)", secondary_y=True,
                        line=dict(color="black", dash="dash"),
                        hovertemplate="t=%{x:.3g}: accuracy %{y:.1f} %<extra></extra>")
        fig.update_yaxes(title_text="top-1 accuracy (%)", secondary_y=True, range=[0, 100],
                         tickmode="linear", tick0=0, dtick=20, showgrid=False)
    fig.add_scatter(x=[min(th), max(th)], y=[100 * sw["current_density"]] * 2, mode="lines",
                    line=dict(color="gray", dash="dot"), hoverinfo="skip",
                    name=f"this report's weights: density {100 * sw['current_density']:.2f} %")
    fig.update_xaxes(title_text="magnitude threshold t (weight units)")
    fig.update_yaxes(title_text="density (% of weights kept, log)", type="log", secondary_y=False)
    return fig


def sweep_source(d: dict) -> str:
    """Which weights the sweep thresholds (the job passes the unpruned ones)."""
    return d.get("sweep_weights_source", "unpruned")


def own_weights_text(d: dict) -> str:
    """Density and top-1 of the weights the report shows (the top-1 the sweep is not)."""
    acc = d.get("accuracy")
    dens = 100 * d["sweep"]["current_density"]
    if acc is None:
        return f"density {dens:.2f} %, top-1 not measured (no labelled data)"
    return f"density {dens:.2f} %, top-1 {100 * acc['top1']:.2f} % ({acc['images']} images)"


def break_even(d: dict) -> go.Figure | None:
    be = d.get("break_even")
    if not be:
        return None
    fig = _fig(title="Speedup over dense vs sparsity on the layer's shape (batch 1; sparsecnn.bench)",
               xaxis_title="sparsity (%; axis spaced by log density)",
               yaxis_title="speedup over dense (x, log)", height=480, legend_below=True)
    xs = []
    for n, res in be.items():
        if not res.get("available") or not res["rows"]:
            continue
        for kern, pts in speedup_series(res["rows"]).items():
            lab = res.get("break_even_label", {}).get(kern, "n/a")
            xs += [1 - s for s, _ in pts]
            fig.add_scatter(x=[1 - s for s, _ in pts], y=[v for _, v in pts], mode="lines+markers",
                            name=f"{short(n)}: {kern} (break-even {lab})",
                            customdata=[100 * s for s, _ in pts],
                            hovertemplate="sparsity %{customdata:.1f} %: %{y:.2f}x<extra>" + kern + "</extra>")
    if not xs:
        return None
    fig.add_scatter(x=[min(xs), max(xs)], y=[1.0, 1.0], mode="lines", name="dense (1x)",
                    line=dict(color="black", dash="dot"), hoverinfo="skip")
    for n in be:
        dens = d["profiles"][n]["global_density"]
        if dens > 0:
            fig.add_vline(x=dens, line_dash="dash", line_color="gray")
            fig.add_scatter(x=[dens], y=[1.0], mode="markers", marker=dict(symbol="x", color="gray", size=10),
                            name=f"{short(n)} in this report: {100 * (1 - dens):.2f} %",
                            hovertemplate="%{x}<extra></extra>")
    ticks = sorted(set(xs))
    fig.update_xaxes(type="log", autorange="reversed", tickvals=ticks,
                     ticktext=[f"{100 * (1 - t):.4g}" for t in ticks])
    fig.update_yaxes(type="log")
    return fig


# one renderer per entry of FIGURES, named like it (a missing one fails at import)
RENDERERS = {name: globals()[name] for name, _ in FIGURES}


def figures(d: dict) -> dict:
    """name -> plotly Figure (or None where the data is unavailable), in page order."""
    return {name: RENDERERS[name](d) for name, _ in FIGURES}
