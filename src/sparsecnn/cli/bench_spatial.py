"""``sparsecnn bench-spatial``: submanifold sparse convolution on real scans against spconv 2.x and
dense conv3d (see :mod:`sparsecnn.spatial.bench` for the method).

Prints rich tables and writes a results folder (spatial.csv, spatial.json, speedup.png)
atomically. Run timing on a shared machine under ``flock /tmp/sparsecnn-cpu.lock``.
"""

from __future__ import annotations

import csv
import json
import math
import sys
import time
from pathlib import Path

from .main import UsageError


def add_parser(subparsers) -> None:
    from ..spatial import bench as B

    p = subparsers.add_parser(
        "bench-spatial", help="time sparse (submanifold) conv3d on real scans vs spconv and dense",
        description=(
            "Time sparsecnn.spatial's SubMConv3d (3x3x3, fp32) on the Stanford Bunny / Armadillo "
            "voxelised at several resolutions, against spconv 2.x (if importable: pip install "
            "'sparsecnn[spatial-bench]') and dense torch conv3d, in one process: fresh rulebook "
            "and reused, peak memory. Optionally a small encoder network end to end."),
    )
    p.add_argument("--scans", nargs="+", default=list(B.SCANS), metavar="NAME",
                   help="meshes of ../shared/data/meshes (default: %(default)s)")
    p.add_argument("--res", nargs="+", type=int, default=list(B.RESOLUTIONS), metavar="N",
                   help="grid resolutions (default: %(default)s)")
    p.add_argument("--channels", nargs="+", type=int, default=list(B.CHANNELS), metavar="C",
                   help="C -> C channels (default: %(default)s)")
    p.add_argument("--batch", nargs="+", type=int, default=list(B.BATCHES), metavar="B",
                   help="batch sizes (default: %(default)s)")
    p.add_argument("--threads", type=int, default=2, help="torch and numba threads (default: 2)")
    p.add_argument("--min-time", type=float, default=0.3,
                   help="seconds of timed calls per measurement (default: %(default)s)")
    p.add_argument("--max-reps", type=int, default=20, help="most timed calls (default: 20)")
    p.add_argument("--dense-limit-gb", type=float, default=1.5,
                   help="run dense conv3d only where input + output fit (default: %(default)s)")
    p.add_argument("--no-spconv", action="store_true", help="skip spconv")
    p.add_argument("--no-dense", action="store_true", help="skip dense conv3d")
    p.add_argument("--algos", action="store_true",
                   help="also time each sparsecnn algorithm (fused, gemm) forced")
    p.add_argument("--network", action="store_true",
                   help="also time a small sparse encoder end to end against spconv")
    p.add_argument("--network-res", type=int, default=128, help="its resolution (default: 128)")
    p.add_argument("--scan-network", default="bunny", metavar="NAME",
                   help="its scan (default: bunny)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", metavar="DIR",
                   help="results folder (must not exist); default sparsecnn-results/spatial-<time>")
    p.add_argument("--no-plot", action="store_true")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def _clean(v):
    return None if isinstance(v, float) and not math.isfinite(v) else v


def run(args) -> int:
    import datetime as dt

    from rich.console import Console
    from rich.progress import Progress

    from .._atomic import atomic_dir
    from ..bench.output import machine_info
    from ..spatial import bench as B
    from ..spatial.meshes import mesh_path

    console = Console(width=None if sys.stdout.isatty() else 220)
    for s in [*args.scans, *([args.scan_network] if args.network else [])]:
        if mesh_path(s) is None:
            raise UsageError(f"mesh {s!r} not found: the shared data (../shared/data/meshes or "
                             "$SPARSECNN_SHARED_DATA/meshes) is absent or has no such scan")
    for name, vals in (("--res", args.res), ("--channels", args.channels), ("--batch", args.batch)):
        if any(v < 1 for v in vals):
            raise UsageError(f"{name} values must be >= 1, got {vals}")
    from ..bench.core import check_threads
    try:
        threads = check_threads(args.threads)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    cfg = B.Config(tuple(args.scans), tuple(args.res), tuple(args.channels), tuple(args.batch),
                   threads, args.min_time, 3, args.max_reps, args.dense_limit_gb,
                   not args.no_spconv, not args.no_dense, args.algos, args.seed)
    out = (Path("sparsecnn-results") / f"spatial-{dt.datetime.now():%Y%m%d-%H%M%S}"
           if args.out is None else Path(args.out))
    if out.exists():
        raise UsageError(f"results folder {out} already exists; choose another --out")
    t0 = time.perf_counter()
    n_cases = len(cfg.scans) * len(cfg.resolutions) * len(cfg.channels) * len(cfg.batches)
    with Progress(console=console, disable=args.no_progress, transient=True) as prog:
        task = prog.add_task("cases", total=n_cases + (1 if args.network else 0))

        def step(desc):
            prog.update(task, description=desc)
            prog.advance(task, 0)

        done = []

        def progress(desc):
            if done:
                prog.advance(task)
            done.append(desc)
            step(desc)

        rows, meta = B.run(cfg, progress)
        network = None
        if args.network:
            progress(f"encoder {args.scan_network} {args.network_res}^3")
            network = B.run_network(cfg, args.scan_network, args.network_res)
        prog.advance(task)
    meta["machine"] = machine_info(threads)
    meta["elapsed_s"] = round(time.perf_counter() - t0, 1)
    meta["command"] = " ".join(["sparsecnn", *sys.argv[1:]]) if sys.argv else None
    B.render(rows, meta, network, console)
    rows = [{k: _clean(r.get(k)) for k in B.ROW_KEYS} for r in rows]
    with atomic_dir(out) as tmp:
        with open(tmp / "spatial.csv", "w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=list(B.ROW_KEYS))
            w.writeheader()
            w.writerows(rows)
        doc = {"meta": meta, "rows": rows,
               "network": {k: _clean(v) for k, v in network.items()} if network else None}
        with open(tmp / "spatial.json", "w", encoding="utf-8") as f:
            json.dump(doc, f, indent=1, allow_nan=False, default=str)
        (tmp / "summary.md").write_text(B.markdown(rows, doc["network"]), encoding="utf-8")
        if not args.no_plot:
            B.plot(rows, tmp / "speedup")
    console.print(f"results: {out}/ ({', '.join(sorted(p.name for p in out.iterdir()))}); "
                  f"took {meta['elapsed_s']:.0f} s")
    return 0
