"""Interactive plotly figures of an :func:`sparsecnn.analysis.analyse_model` result."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from ..analysis.breakeven import speedup_series
from ._common import FIGURES, filter_values_text, short

def grid_colors(rs: int) -> list:
    """White for empty filters; 1 .. R*S nonzeros from teal to dark blue (1 stays visible)."""
    cut = 0.5 / rs
    return [[0.0, "#ffffff"], [cut, "#ffffff"], [cut, "#41b6c4"], [(cut + 1) / 2, "#225ea8"],
            [1.0, "#081d58"]]
LAYOUT = dict(template="plotly_white", margin=dict(l=70, r=30, t=60, b=60), font=dict(size=12))


def _fig(**kw) -> go.Figure:
    fig = go.Figure()
    fig.update_layout(**LAYOUT, **kw)
    return fig


def sparsity_summary(d: dict) -> go.Figure:
    rows = [r for r in d["summary"] if r["name"] != "total"]
    names = [short(r["name"]) for r in rows]
    fig = _fig(title="Sparsity per layer", barmode="group", yaxis_title="sparsity (%)",
               xaxis_title="layer", height=420, legend=dict(orientation="h", y=1.08))
    for key, label in (("element_sparsity", "element"), ("kernel_sparsity", "kernel (R x S filter)"),
                       ("channel_sparsity", "channel (input)"), ("filter_sparsity", "filter (output)")):
        fig.add_bar(x=names, y=[100 * r[key] for r in rows], name=label,
                    customdata=[[r["name"], r["nnz"], r["numel"]] for r in rows],
                    hovertemplate="%{customdata[0]}<br>" + label
                    + " sparsity %{y:.2f} %<br>nnz %{customdata[1]} of %{customdata[2]}<extra></extra>")
    fig.update_yaxes(range=[0, 100])
    if len(rows) <= 4:
        fig.update_traces(texttemplate="%{y:.2f} %", textposition="outside")
    return fig


def filter_grid(d: dict) -> go.Figure:
    layers = d["layers"]
    first = layers.index(d["detail_layers"][0]) if d["detail_layers"][0] in layers else 0
    fig = _fig(height=680)
    buttons = []
    for i, n in enumerate(layers):
        w = d["weights"][n]
        k, c, r, s = w.shape
        fnnz = d["profiles"][n]["filter_nnz"]
        text = filter_values_text(w, fnnz)
        hover = ("output channel k=%{y}<br>input channel c=%{x}<br>nnz=%{z} of " + str(r * s))
        if text is not None:
            hover += "<br>values (R x S):<br>%{text}"
        fig.add_heatmap(z=fnnz, zmin=0, zmax=r * s, colorscale=grid_colors(r * s), visible=(i == first),
                        text=text, hovertemplate=hover + f"<extra>{n}</extra>", name=n,
                        colorbar=dict(title=dict(text=f"nnz per<br>{r}x{s} filter")), xgap=0, ygap=0)
        dens = d["profiles"][n]["global_density"]
        title = (f"Filter grid of {n}: K={k} x C={c} filters of {r}x{s}, global density "
                 f"{100 * dens:.2f} % (zoom: drag; reset: double-click)")
        buttons.append(dict(label=n, method="update",
                            args=[{"visible": [j == i for j in range(len(layers))]},
                                  {"title.text": title}]))
        if i == first:
            fig.update_layout(title=dict(text=title))
    fig.update_xaxes(title="input channel c", showgrid=False, constrain="domain")
    fig.update_yaxes(title="output channel k", autorange="reversed", showgrid=False,
                     scaleanchor="x", constrain="domain")
    if len(layers) > 1:
        fig.update_layout(updatemenus=[dict(buttons=buttons, direction="down", x=1.0, y=1.12,
                                            xanchor="right", showactive=True, active=first)])
    return fig


def local_density(d: dict) -> go.Figure:
    n = d["detail_layers"][0]
    p = d["profiles"][n]
    rs = p["filter_nnz_hist"].size - 1
    fig = _fig(title=f"{n}: filters by nnz (global density {100 * p['global_density']:.2f} %, "
                     f"mean density of non-empty filters {100 * p['nonzero_filter_density']:.1f} %)",
               xaxis_title=f"nnz in the R x S filter (of {rs})", yaxis_title="filters (count, log)",
               height=400)
    fig.add_bar(x=list(range(rs + 1)), y=p["filter_nnz_hist"], name="filters",
                hovertemplate="%{y} filters hold %{x} nonzeros<extra></extra>")
    fig.update_yaxes(type="log", range=[-0.1, np.log10(max(1, p["filter_nnz_hist"].max())) + 0.3])
    return fig


def channel_nnz(d: dict) -> go.Figure:
    n = d["detail_layers"][0]
    p = d["profiles"][n]
    fig = make_subplots(rows=1, cols=2, subplot_titles=("per output channel k", "per input channel c"))
    fig.update_layout(**LAYOUT, title=f"{n}: nnz per channel", height=400, showlegend=False)
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
               height=400)
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
               xaxis_title="layer", yaxis_title="imbalance (1 = perfect)", height=400, barmode="group")
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
    rs = d["weights"][n].shape[2] * d["weights"][n].shape[3]
    fig = _fig(height=640, title=(f"{n}: reordered grid, {len(b['blocks'])} dense block(s) with density "
                                  f"≥ {100 * b['threshold']:.0f} % hold {100 * b['share']:.1f} % of nnz "
                                  f"(tile {b['tile'][0]}x{b['tile'][1]} filters; densest tile {100 * b['tile_density'].max():.1f} %)"))
    fig.add_heatmap(z=fnnz, zmin=0, zmax=rs, colorscale=grid_colors(rs),
                    customdata=np.stack(np.meshgrid(b["col_order"], b["row_order"]), axis=-1),
                    hovertemplate=("row %{y} = output channel %{customdata[1]}<br>col %{x} = input "
                                   "channel %{customdata[0]}<br>nnz %{z}<extra></extra>"),
                    colorbar=dict(title=dict(text="nnz per filter")))
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
    fig = _fig(title="Hybrid plan vs dense and all-sparse (one image; medians of interleaved runs, ms)",
               barmode="group", xaxis_title="layer", yaxis_title="time (ms)", height=420)
    series = (("dense (torch conv2d)", lambda h: h["measured"]["dense_ms"]),
              ("sparse (all nnz)", lambda h: h["measured"]["sparse_ms"]),
              ("hybrid, cost model", lambda h: h["estimate"]["hybrid_ms"]),
              ("hybrid, measured", lambda h: h["measured"]["hybrid_ms"]))
    for label, f in series:
        fig.add_bar(x=[short(n) for n in names], y=[f(ok[n]) for n in names], name=label,
                    hovertemplate="%{x}: %{y:.3f} ms<extra>" + label + "</extra>")
    return fig


def memory(d: dict) -> go.Figure:
    rows = [r for r in d["summary"] if r["name"] != "total"]
    fmts = list(rows[0]["bytes"])
    fig = _fig(title="Weight memory per layer (float32 values)", barmode="group", xaxis_title="layer",
               yaxis_title="KiB (log)", height=420, legend=dict(orientation="h", y=1.08))
    fig.add_bar(x=[short(r["name"]) for r in rows], y=[r["dense_bytes"] / 1024 for r in rows],
                name="dense", hovertemplate="%{x}: %{y:.1f} KiB<extra>dense</extra>")
    for f in fmts:
        ys = [None if r["bytes"][f] is None else r["bytes"][f] / 1024 for r in rows]
        fig.add_bar(x=[short(r["name"]) for r in rows], y=ys, name=f,
                    hovertemplate="%{x}: %{y:.1f} KiB<extra>" + f + "</extra>")
    fig.update_yaxes(type="log")
    if len(rows) <= 4:
        fig.update_traces(texttemplate="%{y:.1f}", textposition="outside")
    return fig


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
               barmode="group", xaxis_title="layer", yaxis_title="KiB (log)", height=440,
               legend=dict(orientation="h", y=1.12))
    fig.update_layout(margin=dict(t=100))
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
    fig = _fig(title=f"{ineffectual_totals(L)}<br><sup>activations measured on {ie['images']} images of: {ie['input_source']}</sup>",
               barmode="stack", xaxis_title="layer", yaxis_title="share of dense MACs (%)", height=480,
               legend=dict(x=1.02, y=1.0, traceorder="reversed"))
    fig.update_layout(margin=dict(t=80))
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
    fig.update_layout(**LAYOUT, height=480, legend=dict(orientation="h", y=-0.18, yanchor="top"),
                      title="Density vs global magnitude threshold (keep |w| > t)")
    fig.update_layout(margin=dict(b=140))
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
                    name=f"this report's weights: {100 * sw['current_density']:.2f} %")
    fig.update_xaxes(title_text="magnitude threshold t (weight units)")
    fig.update_yaxes(title_text="density (% of weights kept, log)", type="log", secondary_y=False)
    return fig


def break_even(d: dict) -> go.Figure | None:
    be = d.get("break_even")
    if not be:
        return None
    fig = _fig(title="Speedup over dense vs sparsity on the layer's shape (batch 1; sparsecnn.bench)",
               xaxis_title="sparsity (%; axis spaced by log density)",
               yaxis_title="speedup over dense (x, log)", height=440)
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
