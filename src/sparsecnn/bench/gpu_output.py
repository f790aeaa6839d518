"""Rendering the GPU benchmark's rows: rich tables, the goals, CSV/JSON, plots, results folder.

Takes the rows of :func:`sparsecnn.bench.gpu.sweep_gpu` and only renders them.
"""

from __future__ import annotations

import csv
import json
import math
from collections import defaultdict
from pathlib import Path

from .._atomic import atomic_dir
from .gpu import (BASELINE_DESCRIPTIONS, CUDNN, GPU_ROW_KEYS, break_even_gpu, compile_times_gpu,
                  goals)
from .output import _fmt, _jsonable, machine_info, plot_speedup


def gpu_info() -> dict:
    """The GPU and its software: name, compute capability, memory, CUDA / cuDNN / Triton versions."""
    import torch

    out = {"cuda_available": torch.cuda.is_available(), "torch_cuda": torch.version.cuda}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        out.update(name=props.name, capability=f"{props.major}.{props.minor}",
                   memory_gib=round(props.total_memory / 2**30, 1),
                   multiprocessors=props.multi_processor_count,
                   cudnn=torch.backends.cudnn.version(),
                   cudnn_benchmark=True, allow_tf32_conv=torch.backends.cudnn.allow_tf32)
    try:
        import triton

        out["triton"] = triton.__version__
    except ImportError:
        out["triton"] = None
    return out


def gpu_machine_info() -> dict:
    """:func:`sparsecnn.bench.machine_info` (host, libraries) plus :func:`gpu_info`."""
    return {**machine_info(1), "gpu": gpu_info()}


def _speed_txt(r) -> str:
    sp = r["speedup"]
    if not math.isfinite(sp):
        st = r["status"]
        return "[dim]-[/]" if st.startswith("unsupported") else f"[bold red]{st[:18]}[/]"
    txt = f"{_fmt(r['ms'], '.3g')} ({sp:.2f}x)"
    if r["kernel"] == CUDNN:
        return _fmt(r["ms"], ".3g")
    if r["status"] != "ok":
        return f"[bold red]{txt} {r['status']}[/]"
    return f"[green]{txt}[/]" if sp >= 1 else f"[red]{txt}[/]"


def render_gpu_tables(rows, meta: dict | None = None, console=None) -> None:
    """Per layer: one line per (N, dtype, sparsity), one column per provider (median ms and
    speedup over cuDNN); then the break-even sparsities, the goals, and first-call times."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    if meta:
        g = meta.get("machine", {}).get("gpu", {})
        console.print(f"[bold]sparsecnn bench --device cuda[/]  {g.get('name', '?')} (sm "
                      f"{g.get('capability', '?')}), torch {meta.get('machine', {}).get('torch')}"
                      f", CUDA {g.get('torch_cuda')}, cuDNN {g.get('cudnn')}, "
                      f"Triton {g.get('triton')}")
        for name, desc in BASELINE_DESCRIPTIONS.items():
            console.print(f"  {name}: {desc}")
        console.print("cells: median ms (speedup over cuDNN in the same dtype); Triton kernels "
                      "first call = compile + autotune (table below)")
    providers = list(dict.fromkeys(r["kernel"] for r in rows))
    by_layer = defaultdict(list)
    for r in rows:
        by_layer[r["layer"]].append(r)
    for layer, lrows in by_layer.items():
        r0 = lrows[0]
        t = Table(title=f"{layer}: {r0['C']}x{r0['H']}x{r0['W']} -> {r0['K']}, {r0['R']}x{r0['S']}"
                        f" s{r0['stride']} p{r0['pad']}", title_justify="left")
        for col in ("N", "dtype", "sparsity", *providers):
            t.add_column(col, justify="right")
        cells = defaultdict(dict)
        for r in lrows:
            cells[(r["N"], r["dtype"], r["sparsity"])][r["kernel"]] = r
        for (n, dt, sp), byk in cells.items():
            t.add_row(str(n), dt, f"{sp:g}",
                      *[_speed_txt(byk[p]) if p in byk else "" for p in providers])
        console.print(t)
    be = break_even_gpu(rows)
    if be:
        t = Table(title="break-even sparsity over cuDNN (faster above it)", title_justify="left")
        for col in ("layer", "provider", "dtype", "N", "break-even"):
            t.add_column(col)
        for (layer, k, dt, n), (_, label) in be.items():
            t.add_row(layer, k, dt, str(n), label)
        console.print(t)
    gl = goals(rows)
    if gl:
        t = Table(title="goals (issue 10), on the rows measured", title_justify="left")
        for col in ("goal", "layer", "N", "dtype", "met", "worst speedup", "at sparsity"):
            t.add_column(col)
        for g in gl:
            met = "[green]yes[/]" if g["met"] else "[red]no[/]"
            t.add_row(g["goal"], g["layer"], str(g["N"]), g["dtype"], met, f"{g['worst']:.2f}x",
                      f"{g['at']:g}")
        console.print(t)
    comp = compile_times_gpu(rows)
    if comp:
        t = Table(title="first call per provider and dtype (compile + autotune + preparation)",
                  title_justify="left")
        for col in ("provider dtype", "first call ms", "steady ms", "measured on"):
            t.add_column(col)
        for k, c in comp.items():
            t.add_row(k, _fmt(c["first_call_ms"], ".1f"), _fmt(c["steady_ms"], ".3g"),
                      f"{c['layer']} N={c['N']} sparsity={c['sparsity']:g}")
        console.print(t)


def write_gpu_csv(rows, path) -> None:
    """Rows as CSV, columns :data:`~sparsecnn.bench.gpu.GPU_ROW_KEYS` (NaN written as empty)."""
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=GPU_ROW_KEYS)
        w.writeheader()
        for r in rows:
            w.writerow({k: ("" if isinstance(r[k], float) and math.isnan(r[k]) else r[k])
                        for k in GPU_ROW_KEYS})


def gpu_results_document(rows, meta: dict, skipped=()) -> dict:
    """The JSON document: meta, rows, break-even, goals, first calls, cases left out."""
    be = break_even_gpu(rows)
    return _jsonable({
        **meta, "rows": rows,
        "break_even": [{"layer": l, "kernel": k, "dtype": d, "N": n, "sparsity": s,
                        "label": lab} for (l, k, d, n), (s, lab) in be.items()],
        "goals": goals(rows), "compile": compile_times_gpu(rows),
        "skipped_by_time_budget": [list(c) for c in skipped],
    })


def plot_gpu(rows, out_dir) -> list[Path]:
    """One speedup-over-cuDNN plot per batch size (``speedup-N<batch>.png``): a subplot per
    layer, a line per (provider, dtype)."""
    files = []
    for n in sorted({r["N"] for r in rows}):
        sub = [dict(r, kernel=f"{r['kernel']} {r['dtype']}", threads=1) for r in rows
               if r["N"] == n and r["kernel"] != CUDNN]
        if not any(math.isfinite(r["speedup"]) for r in sub):
            continue
        files += plot_speedup(
            sub, Path(out_dir) / f"speedup-N{n}",
            title=f"sparsecnn bench --device cuda: speedup over cuDNN (same dtype), batch {n}\n"
                  "random unstructured magnitude-pruned weights; 2:4 is always 50 % sparse; "
                  "dotted vertical: break-even", baseline_label="cuDNN (F.conv2d)",
            formats=("png",))
    return files


def write_gpu_results(rows, meta: dict, out_dir, plot: bool = True, skipped=()) -> Path:
    """Write ``bench.csv``, ``bench.json`` and ``speedup-N*.png`` into ``out_dir``, atomically.

    Raises
    ------
    FileExistsError
        If ``out_dir`` already exists.
    """
    out_dir = Path(out_dir)
    if out_dir.exists():
        raise FileExistsError(f"results folder {out_dir} already exists; choose another --out")
    with atomic_dir(out_dir) as tmp:
        write_gpu_csv(rows, tmp / "bench.csv")
        with open(tmp / "bench.json", "w", encoding="utf-8") as f:
            json.dump(gpu_results_document(rows, meta, skipped), f, indent=1, allow_nan=False)
        if plot and rows:
            plot_gpu(rows, tmp)
    return out_dir


__all__ = ["gpu_info", "gpu_machine_info", "render_gpu_tables", "write_gpu_csv",
           "gpu_results_document", "plot_gpu", "write_gpu_results"]
