"""The bench job as a library function: time the layers, render the tables, write the results
folder. ``sparsecnn bench`` only parses arguments and calls :func:`bench`."""

from __future__ import annotations

import os
import time

from ..results import DEFAULT_PARENT, check_parent, new_folder, writing_under


def bench(*, suite: str | None = None, layers=None, sparsities=None, kernels=None, batches=None,
          threads: int | None = None, seed: int = 0, min_time: float | None = None,
          max_time: float | None = None, out=DEFAULT_PARENT, plot: bool = True,
          progress: bool = True, console=None) -> dict:
    """Time dense PyTorch against each sparse conv2d kernel and write a results folder.

    Parameters
    ----------
    suite, layers, sparsities, kernels, batches, threads, seed, min_time, max_time
        See :class:`sparsecnn.bench.Benchmark` (None: its defaults).
    out : path
        Parent folder of the new ``bench-<suite>-<time>`` folder (:mod:`sparsecnn.results`;
        checked before timing anything).
    plot : bool
        Write ``speedup.png`` / ``.svg``.
    progress : bool
    console : rich.console.Console or None
        Where the tables are printed (None: nothing printed).

    Returns
    -------
    dict
        ``rows`` (one per layer x batch x sparsity x kernel), ``meta`` (benchmark declaration,
        machine, run), ``path`` (the folder), ``failed`` (rows with a mismatch or error).

    Raises
    ------
    ValueError
        Bad arguments or output folder (before any timing).
    """
    from . import core, layers as L
    from .benchmark import Benchmark
    from ..timing import other_runnable
    from .output import machine_info, render_tables, write_results

    specs = L.select_layers(suite or L.DEFAULT_SUITE, layers)
    b = Benchmark(tuple(specs),
                  tuple(sparsities if sparsities is not None else core.DEFAULT_SPARSITIES),
                  kernels and tuple(kernels),
                  tuple(batches if batches is not None else core.DEFAULT_BATCHES),
                  threads if threads is not None else core.DEFAULT_THREADS, seed,
                  min_time if min_time is not None else core.DEFAULT_MIN_TIME,
                  max_time if max_time is not None else core.DEFAULT_MAX_TIME).resolved()
    check_parent(out)
    meta = {"benchmark": b.declaration(), "machine": machine_info(b.threads)}
    t0 = time.perf_counter()
    rows = b.run(progress=progress)
    meta["run"] = {"elapsed_s": round(time.perf_counter() - t0, 1),
                   "load_average_1min_end": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
                   "other_runnable_end": other_runnable()}
    if console is not None:
        render_tables(rows, meta, console)
    name = "layers" if layers else (suite or L.DEFAULT_SUITE)
    with writing_under(out):
        path = write_results(rows, meta, new_folder(out, "bench", name), plot=plot)
    failed = [r for r in rows if r["status"] not in ("ok", "unsupported")]
    return {"rows": rows, "meta": meta, "path": path, "failed": failed}
