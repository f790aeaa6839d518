"""Quick speed check of the sparse CPU kernels against dense PyTorch, in one process.

Cases: AlexNet conv4 (384 -> 256 channels, 13x13, 3x3, pad 1) at 90 / 95 / 99.3 % random
unstructured sparsity, and fully connected 4096 -> 4096 and 9216 -> 4096 at batch 1 and 64 at
90 / 95 / 99 %. Every registered kernel accepting CSR weights is timed, plus dense
``torch.nn.functional`` (oneDNN) and, for the convolution, im2col + SciPy CSR (the "CSRMM"
baseline of anchors.md). Each kernel is warmed up (its first call, JIT compilation included, is
reported apart), then timed ``--reps`` times; the table shows medians and dense/kernel ratios
(> 1 means faster than dense).

Run from the repository root (the script takes /tmp/sparsecnn-cpu.lock itself)::

    PYTHONPATH=src python benchmarks/kernels.py [--threads 2] [--reps 30] [--json out.json]
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import statistics
import tempfile
import time

import numba
import numpy as np
import scipy.sparse
import torch
import torch.nn.functional as F
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

import sparsecnn
from sparsecnn.kernels import registry

LOCK = "/tmp/sparsecnn-cpu.lock"


def sparse_weight(shape, sparsity, gen):
    """Random N(0,1) weight with exactly round(numel * (1 - sparsity)) nonzeros."""
    w = torch.randn(shape, generator=gen)
    keep = torch.randperm(w.numel(), generator=gen)[:round(w.numel() * (1 - sparsity))]
    mask = torch.zeros(w.numel(), dtype=torch.bool)
    mask[keep] = True
    return (w.flatten() * mask).reshape(shape)


def time_call(fn, reps: int, min_seconds: float):
    """(first-call seconds, median seconds over >= reps calls and >= min_seconds, after 3 warm-ups)."""
    t0 = time.perf_counter()
    fn()
    first = time.perf_counter() - t0
    for _ in range(3):
        fn()
    times = []
    start = time.perf_counter()
    while len(times) < reps or time.perf_counter() - start < min_seconds:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return first, statistics.median(times)


def scipy_im2col_spmm(x, w_csr, k, r, s, padding):
    """im2col through torch.unfold + SciPy CSR @ dense (single-threaded SciPy SpMM)."""
    n, _, h, w = x.shape
    cols = F.unfold(x, (r, s), padding=padding)[0].numpy()  # (C*R*S, OH*OW), batch 1
    return torch.from_numpy(w_csr @ cols).reshape(n, k, h + 2 * padding - r + 1, -1)


def conv_cases(args, gen):
    x = torch.randn(args.batch, 384, 13, 13, generator=gen)
    for sp in (0.9, 0.95, 0.993):
        w = sparse_weight((256, 384, 3, 3), sp, gen)
        sw = sparsecnn.to_sparse(w, "csr")
        fns = {"dense": lambda w=w: F.conv2d(x, w, None, 1, 1)}
        for k in registry.candidates("conv2d", "csr"):
            fns[k.name] = lambda k=k, sw=sw: sparsecnn.conv2d(x, sw, None, 1, 1, algo=k.name)
        if args.batch == 1:
            wc = scipy.sparse.csr_matrix((sw.values, sw.colidx, sw.rowptr), shape=(256, 3456))
            fns["scipy_csrmm"] = lambda wc=wc: scipy_im2col_spmm(x, wc, 256, 3, 3, 1)
        ref = F.conv2d(x, w, None, 1, 1)
        yield f"AlexNet conv4 b{args.batch} {sp:.1%}", fns, ref


def linear_cases(args, gen):
    for in_f, out_f in ((4096, 4096), (9216, 4096)):
        for batch in (1, 64):
            x = torch.randn(batch, in_f, generator=gen)
            for sp in (0.9, 0.95, 0.99):
                w = sparse_weight((out_f, in_f), sp, gen)
                sw = sparsecnn.to_sparse(w, "csr")
                fns = {"dense": lambda x=x, w=w: F.linear(x, w)}
                for k in registry.candidates("linear", "csr"):
                    fns[k.name] = lambda x=x, k=k, sw=sw: sparsecnn.linear(x, sw, algo=k.name)
                yield f"FC {in_f}->{out_f} b{batch} {sp:.0%}", fns, F.linear(x, w)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--min-seconds", type=float, default=0.3)
    ap.add_argument("--batch", type=int, default=1, help="conv batch size (default 1)")
    ap.add_argument("--only", choices=("conv", "linear"), default=None)
    ap.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    numba.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(0)
    console = Console(width=200)
    rows = []
    with open(LOCK, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        cases = []
        if args.only in (None, "conv"):
            cases += list(conv_cases(args, gen))
        if args.only in (None, "linear"):
            cases += list(linear_cases(args, gen))
        with Progress(console=console, transient=True) as prog:
            task = prog.add_task("timing", total=len(cases))
            for label, fns, ref in cases:
                res = {}
                for name, fn in fns.items():
                    err = (fn() - ref).abs().max().item()
                    first, med = time_call(fn, args.reps, args.min_seconds)
                    res[name] = {"first_ms": first * 1e3, "median_ms": med * 1e3, "max_abs_err": err}
                rows.append({"case": label, "results": res})
                prog.advance(task)
    names = sorted({n for r in rows for n in r["results"]}, key=lambda n: (n != "dense", n))
    table = Table(title=f"median ms (dense / kernel), {args.threads} threads")
    table.add_column("case")
    for n in names:
        table.add_column(n, justify="right")
    for r in rows:
        d = r["results"]["dense"]["median_ms"]
        cells = []
        for n in names:
            v = r["results"].get(n)
            cells.append("" if v is None else
                         f"{v['median_ms']:.3f}" if n == "dense" else
                         f"{v['median_ms']:.3f} ({d / v['median_ms']:.2f}x)")
        table.add_row(r["case"], *cells)
    console.print(table)
    first = {n: max(r["results"][n]["first_ms"] for r in rows if n in r["results"]) for n in names}
    console.print("first call (JIT compile or cache load included), max ms: "
                  + ", ".join(f"{n} {v:.0f}" for n, v in first.items()))
    if args.json:
        meta = {"threads": args.threads, "torch": torch.__version__, "numba": numba.__version__,
                "numpy": np.__version__, "rows": rows}
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(args.json)) or ".")
        with os.fdopen(fd, "w") as f:
            json.dump(meta, f, indent=1)
        os.replace(tmp, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
