"""Write a report folder: index.html (plotly, JS inlined), PNG + SVG figures, CSV + JSON data.

The folder is built in a temporary sibling directory and moved into place at the end, so a
reader never sees a half-written report (an existing report there is replaced).
"""

from __future__ import annotations

import csv
import html
import json
import re
import time
from pathlib import Path

import numpy as np

from .._atomic import atomic_dir
from ._common import FIGURES

MARKER = "report.json"
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def file_stem(layer: str) -> str:
    """A layer name as a file-name part: ``/`` (ONNX node names) and other characters that are
    not letters, digits, ``.``, ``_`` or ``-`` become ``_``."""
    return _UNSAFE.sub("_", layer).strip("_") or "layer"


def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return None if not np.isfinite(obj) else float(obj)
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    return obj


def _write_csv(path: Path, rows: list[dict]) -> None:
    if not rows:
        return
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    with open(path, "w", newline="") as f:
        wr = csv.DictWriter(f, fieldnames=keys)
        wr.writeheader()
        for r in rows:
            wr.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in keys})


def tables(d: dict) -> dict[str, list[dict]]:
    """The report's data as flat tables (name -> rows) for CSV."""
    out: dict[str, list[dict]] = {}
    rows = []
    for r in d["summary"]:
        row = {k: r[k] for k in ("name", "numel", "nnz", "density", "element_sparsity", "kernel_sparsity",
                                 "channel_sparsity", "filter_sparsity", "zero_filters",
                                 "zero_in_channels", "zero_out_channels", "dense_bytes")}
        row["shape"] = "x".join(map(str, r["shape"])) if r["shape"] else ""
        for f, b in r["bytes"].items():
            row[f"bytes_{f}"] = b
        rows.append(row)
    out["summary"] = rows
    out["load_balance"] = [
        {"layer": n, "threads": lb["threads"], "nnz": lb["nnz"],
         "naive_imbalance": lb["naive"]["imbalance"],
         "naive_nnz_per_thread": " ".join(map(str, lb["naive"]["nnz_per_thread"])),
         "engine_imbalance": lb["engine"]["imbalance"] if lb["engine"] else None,
         "engine_nnz_per_thread": " ".join(map(str, lb["engine"]["nnz_per_thread"])) if lb["engine"] else None,
         "engine_unavailable": lb["engine_unavailable"]}
        for n, lb in d["balance"].items()]
    out["dense_blocks"] = [
        {"layer": n, "block": i, "rows": " ".join(map(str, blk["rows"])),
         "cols": " ".join(map(str, blk["cols"])), "nnz": blk["nnz"], "elements": blk["elements"],
         "density": blk["density"], "share_of_layer_nnz": blk["nnz"] / b["nnz"] if b["nnz"] else 0.0,
         "threshold": b["threshold"], "tile": f"{b['tile'][0]}x{b['tile'][1]}"}
        for n, b in d["blocks"].items() if b for i, blk in enumerate(b["blocks"])]
    out["hybrid"] = []
    for n, h in d["hybrid"].items():
        if "unavailable" in h:
            out["hybrid"].append({"layer": n, "unavailable": h["unavailable"]})
            continue
        b = d["blocks"][n]
        out["hybrid"].append({
            "layer": n, "blocks": len(b["blocks"]), "block_share_of_nnz": b["share"],
            "sparse_kernel": h["rates"]["sparse_kernel"], "format": h["rates"]["format"],
            "dense_gflops": h["rates"]["dense_gflops"],
            "sparse_useful_gflops": h["rates"]["sparse_useful_gflops"],
            "dense_ms": h["measured"]["dense_ms"], "sparse_ms": h["measured"]["sparse_ms"],
            "hybrid_est_ms": h["estimate"]["hybrid_ms"], "hybrid_measured_ms": h["measured"]["hybrid_ms"],
            "hybrid_max_abs_err": h["measured"]["max_abs_err"], "unavailable": None})
    if d.get("encodings"):
        out["encodings"] = [
            {"layer": r["name"], "nnz": r["nnz"], "dense_bytes": r["dense_bytes"],
             **{f"{key}_bytes": r[key]["bytes"] for key in ("csr", "bitmap", "step", "eie")},
             **{f"{key}_vs_csr": r[key]["vs_csr"] for key in ("bitmap", "step", "eie")},
             "step_fillers": r["step"].get("fillers"), "eie_fillers": r["eie"].get("fillers"),
             "eie_64pe_bytes": r64["eie"]["bytes"]}
            for r, r64 in zip(d["encodings"]["rows"], d["encodings"]["rows_64pe"])]
    ie = d["ineffectual"]
    if "unavailable" not in ie:
        out["ineffectual"] = [{"layer": n, **e} for n, e in ie["layers"].items()]
    out["threshold_sweep"] = [
        {"threshold": r["threshold"], "fraction_pruned": r["fraction"], "density": r["density"],
         "accuracy": r["accuracy"], **{f"density_{n}": v for n, v in r["layers"].items()}}
        for r in d["sweep"]["rows"]]
    if d.get("break_even"):
        out["break_even"] = [{"layer": n, **row} for n, res in d["break_even"].items()
                             for row in res.get("rows", [])]
    for n in d["detail_layers"]:
        fnnz = d["profiles"][n]["filter_nnz"]
        out[f"filter_nnz_{file_stem(n)}"] = [{"k": k, **{f"c{c}": int(v) for c, v in enumerate(row)}}
                                  for k, row in enumerate(fnnz)]
    return out


def _unavailable(d: dict, name: str) -> str:
    if name == "ineffectual":
        return d["ineffectual"].get("unavailable", "")
    if name == "hybrid":
        return "; ".join(f"{n}: {h['unavailable']}" for n, h in d["hybrid"].items() if "unavailable" in h)
    if name == "break_even":
        if "break_even" not in d:
            return "not requested (run with --bench; slow)"
        return "; ".join(f"{n}: {r.get('reason') or 'no rows'}" for n, r in d["break_even"].items())
    if name == "dense_blocks":
        return "grouped convolution"
    if name == "load_balance_layers":
        return ""
    if name == "encodings":
        return "no encodings in the data (analysis from an older version)"
    return "no data"


CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px auto;max-width:1200px;
color:#222;padding:0 16px}
h1{font-size:1.6em} h2{font-size:1.2em;margin-top:2em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:.85em;margin:8px 0} td,th{border:1px solid #ddd;padding:3px 7px;
text-align:right} th{background:#f4f4f4} td:first-child,th:first-child{text-align:left}
.note{color:#555;font-size:.9em} .unavail{color:#a33;font-style:italic} .figure{margin:8px 0 24px}
.files a{margin-right:10px} .lead{font-size:1.05em}
"""

STATUS_JS = """
<script>
window.__reportErrors = [];
window.addEventListener('error', function (e) { window.__reportErrors.push(String(e.message)); });
window.addEventListener('load', function () {
  setTimeout(function () {
    var figs = Array.prototype.slice.call(document.querySelectorAll('.figure .plotly-graph-div'));
    function box(el) { var r = el.getBoundingClientRect();
      return {x: r.left + window.scrollX, y: r.top + window.scrollY, w: r.width, h: r.height}; }
    function boxes(f, sel) { return Array.prototype.slice.call(f.querySelectorAll(sel))
      .map(box).filter(function (b) { return b.w > 0 && b.h > 0; }); }
    var rects = figs.map(function (f) { var r = box(f);
      r.id = f.id; r.name = f.closest('.figure').getAttribute('data-figure');
      r.rendered = !!(f._fullLayout && f.querySelector('.main-svg'));
      // layout geometry, for the overlap checks of the browser test
      r.parts = {modebar: boxes(f, '.modebar'), title: boxes(f, '.g-gtitle text'),
                 menus: boxes(f, '.updatemenu-header-group'), legend: boxes(f, '.legend .bg'),
                 plot: boxes(f, '.draglayer .nsewdrag'), bartext: boxes(f, '.bars .bartext')};
      return r; });
    document.body.setAttribute('data-report-status', JSON.stringify({
      figures: figs.length, rendered: rects.filter(function (r) { return r.rendered; }).length,
      errors: window.__reportErrors, rects: rects,
      height: document.documentElement.scrollHeight}));
  }, 300);
});
</script>
"""


def _table(rows: list[dict], cols: list[tuple[str, str, str]]) -> str:
    head = "".join(f"<th>{html.escape(label)}</th>" for _, label, _ in cols)
    body = []
    for r in rows:
        cells = []
        for key, _, fmt in cols:
            v = r.get(key)
            cells.append("<td>–</td>" if v is None else f"<td>{html.escape(format(v, fmt) if fmt else str(v))}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def render_html(d: dict, meta: dict, figs: dict, static_names: set[str], tabs: dict) -> str:
    """The self-contained page (plotly.js inlined once; no network access needed)."""
    import plotly.offline

    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(meta.get('title', 'sparsecnn report'))}"
             f"</title><style>{CSS}</style>{STATUS_JS}"
             f"<script type='text/javascript'>{plotly.offline.get_plotlyjs()}</script></head><body>"]
    parts.append(f"<h1>{html.escape(meta.get('title', 'sparsecnn report'))}</h1>")
    if "top-1 of these weights" in meta:
        parts.append(f"<p class='lead'>Top-1 of the weights shown: "
                     f"<b>{html.escape(str(meta['top-1 of these weights']))}</b></p>")
    parts.append("<table>" + "".join(
        f"<tr><th>{html.escape(str(k))}</th><td style='text-align:left'>{html.escape(str(v))}</td></tr>"
        for k, v in meta.items() if k != "title") + "</table>")
    fmts = list(d["summary"][0]["bytes"])
    srows = []
    for r in tabs["summary"]:
        row = dict(r)
        for key in ("density", "element_sparsity", "kernel_sparsity", "channel_sparsity", "filter_sparsity"):
            row[key] = 100 * r[key]
        row["dense_kib"] = r["dense_bytes"] / 1024
        for f in fmts:
            row[f"kib_{f}"] = None if r[f"bytes_{f}"] in (None, "") else r[f"bytes_{f}"] / 1024
        srows.append(row)
    parts.append("<h2>Sparsity summary</h2>")
    parts.append(_table(srows, [("name", "layer", ""), ("shape", "K x C x R x S", ""), ("nnz", "nnz", "d"),
                                ("density", "density %", ".3f"), ("element_sparsity", "element %", ".2f"),
                                ("kernel_sparsity", "kernel %", ".2f"), ("channel_sparsity", "channel %", ".2f"),
                                ("filter_sparsity", "filter %", ".2f"), ("dense_kib", "dense KiB", ".1f")]
                       + [(f"kib_{f}", f"{f} KiB", ".1f") for f in fmts]))
    if tabs["hybrid"]:
        parts.append("<h2>Hybrid plan (dense blocks on torch conv2d + sparse rest)</h2>")
        parts.append(_table(tabs["hybrid"], [
            ("layer", "layer", ""), ("blocks", "blocks", "d"), ("block_share_of_nnz", "share of nnz", ".3f"),
            ("sparse_kernel", "sparse kernel", ""), ("dense_gflops", "dense GFLOP/s", ".1f"),
            ("sparse_useful_gflops", "sparse useful GFLOP/s", ".1f"), ("dense_ms", "dense ms", ".3f"),
            ("sparse_ms", "sparse ms", ".3f"), ("hybrid_est_ms", "hybrid est. ms", ".3f"),
            ("hybrid_measured_ms", "hybrid meas. ms", ".3f"), ("hybrid_max_abs_err", "max |err|", ".2g"),
            ("unavailable", "unavailable", "")]))
        parts.append("<p class='note'>Cost model: dense MACs of the blocks at the dense rate (torch conv2d "
                     "on the whole layer) + nonzeros outside the blocks at the sparse kernel's useful rate "
                     "(measured on the whole layer). Dense, sparse and the measured hybrid are timed interleaved "
                     "(medians); the hybrid includes gathering the blocks' input channels and adding the "
                     "outputs, and its output is checked equal to the full convolution.</p>")
    if tabs.get("encodings"):
        erows = [{**r, **{f"{k}_kib": r[f"{k}_bytes"] / 1024 for k in
                          ("csr", "bitmap", "step", "eie", "eie_64pe")}} for r in tabs["encodings"]]
        parts.append("<h2>Accelerators' index encodings (weight bytes)</h2>")
        parts.append(_table(erows, [
            ("layer", "layer", ""), ("nnz", "nnz", "d"), ("csr_kib", "CSR KiB", ".1f"),
            ("bitmap_kib", "Cambricon-X direct KiB", ".1f"), ("bitmap_vs_csr", "x CSR", ".2f"),
            ("step_kib", "Cambricon-X step KiB", ".1f"), ("step_vs_csr", "x CSR", ".2f"),
            ("eie_kib", "EIE KiB", ".1f"), ("eie_vs_csr", "x CSR", ".2f"),
            ("eie_64pe_kib", "EIE, 64 PEs KiB", ".1f"), ("eie_fillers", "EIE padding zeros", "d")]))
        parts.append("<p class='note'>Cambricon-X direct indexing: one bit per weight position of "
                     "each output channel; step indexing: 8-bit distance to the previous nonzero "
                     "(filler entries for longer gaps); both with fp32 values. EIE: CSC, 4-bit "
                     "relative row index (a padding zero per run of more than 15 zeros) and a "
                     "4-bit index into 16 shared values (the codebook, 64 bytes, makes values "
                     "approximate: Deep Compression retrains for it); 64 PEs interleave rows, "
                     "each PE with its own column pointers. Pointers 32-bit.</p>")
    for name, title in FIGURES:
        fig = figs.get(name)
        if fig is None:
            why = _unavailable(d, name)
            if why:
                parts.append(f"<h2>{html.escape(title)}</h2><p class='unavail'>Unavailable: {html.escape(why)}</p>")
            continue
        parts.append(f"<h2 id='{name}'>{html.escape(title)}</h2><div class='figure' data-figure='{name}'>")
        parts.append(fig.to_html(full_html=False, include_plotlyjs=False, div_id=f"fig-{name}",
                                 config={"displaylogo": False, "scrollZoom": True}))
        if name in static_names:
            parts.append(f"<div class='files'><a href='{name}.png'>PNG</a><a href='{name}.svg'>SVG</a></div>")
        parts.append("</div>")
    parts.append("<h2>Time per step (s)</h2>")
    parts.append(_table([{"step": k, "s": v} for k, v in d["timings_s"].items()],
                        [("step", "step", ""), ("s", "seconds", ".2f")]))
    parts.append("<h2>Data files</h2><ul class='files'>" + "".join(
        f"<li><a href='{n}.csv'>{html.escape(n)}.csv</a></li>" for n, rows in tabs.items() if rows)
        + f"<li><a href='{MARKER}'>{MARKER}</a> (everything)</li></ul>")
    parts.append("</body></html>")
    return "".join(parts)


def write_report(d: dict, out, meta: dict | None = None, *, static: bool = True, progress=None) -> Path:
    """Write the report folder for an :func:`sparsecnn.analysis.analyse_model` result.

    Parameters
    ----------
    d : dict
        The analysis result.
    out : str or os.PathLike
        The folder to create (or replace, if it holds a previous report).
    meta : dict or None
        Provenance shown at the top of the page and stored in report.json (where the weights
        came from, pruning, input data, threads, ...).
    static : bool
        Also write PNG and SVG figures (matplotlib).
    progress : rich.progress.Progress or None

    Returns
    -------
    pathlib.Path
        The report folder: ``index.html``, ``<figure>.png`` / ``.svg``, ``<table>.csv``,
        ``report.json``.

    Raises
    ------
    ValueError
        If ``out`` exists and is not a directory holding a previous report (it is never deleted).
    """
    from . import interactive, static as static_mod

    out = Path(out)
    meta = dict(meta or {})
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / MARKER).exists())):
        raise ValueError(f"output folder {out} exists and is not a sparsecnn report; choose another --out")
    timings = {}
    with atomic_dir(out, replace=True) as tmp:  # an earlier report there is swapped out
        t0 = time.perf_counter()
        figs = interactive.figures(d)
        timings["plotly figures"] = time.perf_counter() - t0
        static_names: set[str] = set()
        if static:
            import matplotlib.pyplot as plt

            t0 = time.perf_counter()
            task = progress.add_task("PNG + SVG figures", total=len(figs)) if progress else None
            for name, _ in FIGURES:
                fig = static_mod.RENDERERS[name](d) if figs.get(name) is not None else None
                if fig is not None:
                    fig.savefig(tmp / f"{name}.png", dpi=150, bbox_inches="tight")
                    fig.savefig(tmp / f"{name}.svg", bbox_inches="tight")
                    plt.close(fig)
                    static_names.add(name)
                if progress:
                    progress.advance(task)
            timings["PNG + SVG figures"] = time.perf_counter() - t0
        d["timings_s"].update(timings)
        t0 = time.perf_counter()
        tabs = tables(d)
        for name, rows in tabs.items():
            _write_csv(tmp / f"{name}.csv", rows)
        payload = {k: v for k, v in d.items() if k != "weights"}
        payload["meta"] = meta
        payload["figures"] = sorted(static_names) if static else [n for n, f in figs.items() if f is not None]
        (tmp / MARKER).write_text(json.dumps(_jsonable(payload)))
        (tmp / "index.html").write_text(render_html(d, meta, figs, static_names, tabs), encoding="utf-8")
        d["timings_s"]["html + data"] = time.perf_counter() - t0
    return out
