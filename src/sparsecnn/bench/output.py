"""Rendering benchmark rows: rich tables, CSV/JSON, the speedup plot, and the results folder.

Everything here takes the rows of :func:`sparsecnn.bench.sweep` (a list of dicts) and only
renders them; nothing is measured here.
"""

from __future__ import annotations

import csv
import datetime as _dt
import json
import math
import os
import platform
import re
import subprocess
from collections import defaultdict
from pathlib import Path

from .._atomic import atomic_dir
from ..kernels.capabilities import env_summary
from ..timing import other_runnable
from .core import (DENSE, DENSE_DESCRIPTION, ROW_KEYS, WEIGHTS_DESCRIPTION, break_even,
                   break_even_labels, compile_times)


# ---------------------------------------------------------------------------------------------
# machine
def cpu_model() -> str:
    """CPU model name from /proc/cpuinfo (``"unknown"`` where it is unreadable)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def cpu_flags() -> list[str]:
    """The SIMD flags of interest (avx2, avx512f, ...) found in /proc/cpuinfo."""
    want = ("avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "amx_tile")
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    have = set(line.split(":", 1)[1].split())
                    return [w for w in want if w in have]
    except OSError:
        pass
    return []


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=5, cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def machine_info(threads: int) -> dict:
    """Where and with what a benchmark ran: CPU, cores, load, library versions, date."""
    import numba
    import numpy
    import torch

    import sparsecnn

    onednn = re.search(r"(?:oneDNN|MKL-DNN) (v[\d.]+)", torch.__config__.show())
    return {
        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "cpu_model": cpu_model(),
        "cpu_flags": cpu_flags(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "load_average_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "other_runnable": other_runnable(),
        "threads": threads,
        "compile_target": env_summary(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "onednn": f"oneDNN {onednn.group(1)}" if onednn else None,
        "numba": numba.__version__,
        "numpy": numpy.__version__,
        "sparsecnn": sparsecnn.__version__,
        "git_commit": _git_commit(),
    }


# ---------------------------------------------------------------------------------------------
# tables
def _fmt(v, spec=".3g"):
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-" if v is None or math.isnan(v) else "inf"
    return format(v, spec)


def _iqr_text(r) -> str:
    txt = _fmt(r["iqr_ms"], ".2g")
    if math.isfinite(r["iqr_ms"]) and r["iqr_ms"] > 0.25 * r["ms"]:
        return f"[yellow]{txt}[/]"  # spread > 25 % of the median: a noisy measurement
    return txt


def render_tables(rows, meta: dict | None = None, console=None) -> None:
    """Print the rows as rich tables: one section per layer and batch, then break-even
    sparsities and compile (first-call) times."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    if meta:
        m = meta.get("machine", {})
        console.print(f"[bold]sparsecnn bench[/]  {m.get('cpu_model', '?')}, "
                      f"{m.get('threads', '?')} threads, torch {m.get('torch', '?')} "
                      f"({m.get('onednn') or 'oneDNN ?'}), numba {m.get('numba', '?')}")
        ct = m.get("compile_target")
        if ct:
            forced = "forced by NUMBA_CPU_NAME/NUMBA_CPU_FEATURES" if ct.get("forced") else "host"
            console.print(f"sparse kernels compiled for: {ct.get('cpu_name')} ({ct.get('isa')}, "
                          f"{forced}); the isa column says what each row ran")
        for when, n in (("start", m.get("other_runnable")),
                        ("end", meta.get("run", {}).get("other_runnable_end"))):
            if n:
                console.print(f"[bold yellow]{n} other runnable process(es) at the {when} of the "
                              "sweep: timings compete for the CPUs and are noisy[/]")
        console.print(f"weights: {WEIGHTS_DESCRIPTION}")
        console.print(f"dense: {DENSE_DESCRIPTION}; speedup = dense ms / kernel ms (medians); "
                      "GFLOP/s useful = 2 nnz OH OW N / t, dense-eq = 2 K C R S OH OW N / t; "
                      "IQR in yellow: > 25 % of the median (noisy)")
    by_layer = defaultdict(list)
    for r in rows:
        by_layer[r["layer"]].append(r)
    for layer, lrows in by_layer.items():
        r0 = lrows[0]
        title = (f"{layer}: C={r0['C']} H={r0['H']} W={r0['W']} K={r0['K']} R={r0['R']} "
                 f"S={r0['S']} stride={r0['stride']} pad={r0['pad']} -> {r0['OH']}x{r0['OW']}")
        t = Table(title=title, title_justify="left")
        for col, just in (("N", "right"), ("sparsity", "right"), ("kernel", "left"),
                          ("isa", "left"), ("ms", "right"), ("IQR ms", "right"), ("speedup", "right"),
                          ("useful GF/s", "right"), ("dense-eq GF/s", "right"),
                          ("weight KB", "right"), ("max err", "right"), ("status", "left")):
            t.add_column(col, justify=just)
        prev = None
        for r in lrows:
            key = (r["N"], r["sparsity"])
            if prev is not None and key != prev:
                t.add_section()
            prev = key
            sp = r["speedup"]
            sp_txt = _fmt(sp, ".2f") + "x" if math.isfinite(sp) else "-"
            if r["kernel"] != DENSE and math.isfinite(sp):
                sp_txt = f"[green]{sp_txt}[/]" if sp >= 1 else f"[red]{sp_txt}[/]"
            status = r["status"]
            if status != "ok":
                status = f"[bold red]{status}[/]"
            t.add_row(str(r["N"]), f"{r['sparsity']:g}", r["kernel"], str(r.get("isa", "-")),
                      _fmt(r["ms"], ".4g"),
                      _iqr_text(r), sp_txt, _fmt(r["useful_gflops"], ".1f"),
                      _fmt(r["dense_equiv_gflops"], ".1f"),
                      f"{r['bytes_weight'] / 1024:.0f} / {r['bytes_dense'] / 1024:.0f}",
                      _fmt(r["max_abs_err"], ".1e"), status)
        console.print(t)

    labels = break_even_labels(rows)
    if labels:
        t = Table(title="break-even sparsity (kernel faster than dense above it)",
                  title_justify="left")
        for col in ("layer", "kernel", "N", "break-even"):
            t.add_column(col)
        for (layer, kernel, n), lab in labels.items():
            t.add_row(layer, kernel, str(n), lab)
        console.print(t)
    comp = compile_times(rows)
    if comp:
        t = Table(title="first call (JIT compile / one-time set-up), per kernel, in this process",
                  title_justify="left")
        for col in ("kernel", "first call ms", "steady ms", "compile ms", "measured on"):
            t.add_column(col)
        for k, c in comp.items():
            t.add_row(k, _fmt(c["first_call_ms"], ".1f"), _fmt(c["steady_ms"], ".3g"),
                      _fmt(c["compile_ms"], ".1f"),
                      f"{c['layer']} N={c['N']} sparsity={c['sparsity']:g}")
        console.print(t)


# ---------------------------------------------------------------------------------------------
# files
def _jsonable(v):
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    return v


def write_csv(rows, path) -> None:
    """Rows as CSV, columns :data:`ROW_KEYS` (NaN written as empty)."""
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=ROW_KEYS)
        w.writeheader()
        for r in rows:
            w.writerow({k: ("" if isinstance(r[k], float) and math.isnan(r[k]) else r[k])
                        for k in ROW_KEYS})


def results_document(rows, meta: dict) -> dict:
    """The JSON document: ``meta`` (benchmark declaration, machine), rows, break-even, compile."""
    be, labels = break_even(rows), break_even_labels(rows)
    return _jsonable({
        **meta,
        "rows": rows,
        "break_even": [{"layer": l, "kernel": k, "N": n, "sparsity": be[(l, k, n)],
                        "label": labels[(l, k, n)]} for (l, k, n) in labels],
        "compile": compile_times(rows),
    })


def _neg_log_density(s):
    import numpy as np
    return -np.log10(np.clip(1.0 - np.asarray(s, dtype=float), 1e-12, None))


def _sparsity_of(u):
    import numpy as np
    return 1.0 - 10.0 ** (-np.asarray(u, dtype=float))


_NICE_TICKS = tuple(m * 10.0 ** e for e in range(-3, 4) for m in (1, 2, 5))
_FINE_TICKS = tuple(round(m * 10.0 ** e, 6) for e in range(-3, 4)
                    for m in (1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6, 8))


def plot_speedup(rows, path_stem, title: str | None = None) -> list[Path]:
    """Speedup over dense vs sparsity: one subplot per layer, one line per (kernel, batch).

    Log y axis, x axis -log10(1 - sparsity) (so 0.9 / 0.99 / 0.999 are evenly spaced and
    straight segments match :func:`~sparsecnn.bench.break_even`'s interpolation), the 1x line,
    break-even marked with a dotted vertical line and a marker on 1x, mismatching points marked
    with a red cross. Written as ``<path_stem>.png`` and ``<path_stem>.svg``.

    Returns
    -------
    list of Path
        The files written.
    """
    from matplotlib.figure import Figure
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter, NullLocator

    layers = list(dict.fromkeys(r["layer"] for r in rows))
    kernels = [k for k in dict.fromkeys(r["kernel"] for r in rows) if k != DENSE]
    batches = sorted({r["N"] for r in rows})
    sparsities = sorted({r["sparsity"] for r in rows})
    ncols = min(3, len(layers))
    nrows = math.ceil(len(layers) / ncols)
    fig = Figure(figsize=(max(7.0, 5.2 * ncols), 3.9 * nrows + 1.2), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    colors = [f"C{i}" for i in range(10)]
    styles = ["-", "--", ":", "-."]
    markers = ["o", "s", "^", "D"]
    be = break_even(rows)
    for ax in axes.flat[len(layers):]:
        ax.set_visible(False)
    for ax, layer in zip(axes.flat, layers):
        lrows = [r for r in rows if r["layer"] == layer]
        r0 = lrows[0]
        ax.set_title(f"{layer}\n{r0['C']}x{r0['H']}x{r0['W']} -> {r0['K']}, {r0['R']}x{r0['S']} "
                     f"s{r0['stride']}", fontsize=9)
        ax.axhline(1.0, color="black", lw=1.2, label="dense (F.conv2d, oneDNN)")
        for ki, k in enumerate(kernels):
            for bi, n in enumerate(batches):
                pts = sorted((r["sparsity"], r["speedup"], r["status"]) for r in lrows
                             if r["kernel"] == k and r["N"] == n and math.isfinite(r["speedup"]))
                if not pts:
                    continue
                c = colors[ki % len(colors)]
                ax.plot([p[0] for p in pts], [p[1] for p in pts], color=c,
                        ls=styles[bi % len(styles)], marker=markers[bi % len(markers)], ms=4,
                        label=f"{k}, N={n}")
                bad = [p for p in pts if p[2] != "ok"]
                if bad:
                    ax.scatter([p[0] for p in bad], [p[1] for p in bad], marker="x", s=90,
                               color="red", zorder=5, label="output mismatch / error")
                s = be.get((layer, k, n))
                if s is not None:
                    ax.axvline(s, color=c, ls=":", lw=0.9)
                    ax.plot([s], [1.0], marker="|", ms=14, mew=2, color=c)
        ax.set_yscale("log")
        vals = [r["speedup"] for r in lrows if math.isfinite(r["speedup"]) and r["speedup"] > 0]
        lo, hi = min(vals + [1.0]) / 1.25, max(vals + [1.0]) * 1.25
        ax.set_ylim(lo, hi)
        ticks = [t for t in _NICE_TICKS if lo <= t <= hi]
        if len(ticks) < 3:
            ticks = [t for t in _FINE_TICKS if lo <= t <= hi]
        ax.yaxis.set_major_locator(FixedLocator(ticks))
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}x"))
        ax.yaxis.set_minor_formatter(NullFormatter())
        # x: -log10(density), so 0.9 / 0.99 / 0.999 are evenly spaced and straight segments are
        # the interpolation break_even uses
        ax.set_xscale("function", functions=(_neg_log_density, _sparsity_of))
        u0, u1 = _neg_log_density(sparsities[0]), _neg_log_density(sparsities[-1])
        pad = 0.04 * max(u1 - u0, 0.5)
        ax.set_xlim(_sparsity_of(u0 - pad), _sparsity_of(u1 + pad))
        ax.xaxis.set_major_locator(FixedLocator(sparsities))
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_xticklabels([f"{s:g}" for s in sparsities], rotation=45, fontsize=7)
        ax.set_xlabel("sparsity (share of weights zero)")
        ax.set_ylabel("speedup over dense (x)")
        ax.grid(True, which="both", alpha=0.3)
    handles = {}
    for ax in axes.flat[:len(layers)]:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(lab, h)
    fig.legend(list(handles.values()), list(handles), loc="outside lower center",
               ncols=min(4, len(handles)), fontsize=8)
    threads = rows[0]["threads"] if rows else "?"
    fig.suptitle(title or f"sparsecnn bench: speedup over dense F.conv2d (median times), "
                 f"{threads} threads\nrandom unstructured magnitude-pruned weights; "
                 "dotted vertical: break-even sparsity", fontsize=10)
    stem = Path(path_stem)
    out = [stem.with_suffix(".png"), stem.with_suffix(".svg")]
    fig.savefig(out[0], dpi=130)
    fig.savefig(out[1])
    return out


def write_results(rows, meta: dict, out_dir, plot: bool = True) -> Path:
    """Write ``bench.csv``, ``bench.json`` and ``speedup.png``/``.svg`` into ``out_dir``, atomically
    (the job picks ``out_dir`` by :mod:`sparsecnn.results`' policy).

    The files are written into a temporary sibling folder that is renamed to ``out_dir`` only
    when all are complete, so ``out_dir`` either does not exist or holds a full result.

    Raises
    ------
    FileExistsError
        If ``out_dir`` already exists.
    """
    out_dir = Path(out_dir)
    if out_dir.exists():
        raise FileExistsError(f"results folder {out_dir} already exists; choose another --out")
    with atomic_dir(out_dir) as tmp:  # the rename fails if out_dir appeared meanwhile
        write_csv(rows, tmp / "bench.csv")
        with open(tmp / "bench.json", "w", encoding="utf-8") as f:
            json.dump(results_document(rows, meta), f, indent=1, allow_nan=False)
        if plot and rows:
            plot_speedup(rows, tmp / "speedup")
    return out_dir
