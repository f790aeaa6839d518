"""Tuning benchmark of the direct sparse convolution kernel against dense PyTorch (oneDNN).

Run under the machine's CPU lock, e.g.::

    flock /tmp/sparsecnn-cpu.lock env PYTHONPATH=src python benchmarks/direct_conv.py [--quick]

Dense (``torch.nn.functional.conv2d``) and direct are timed in the same process, after warm-up,
in alternating blocks (``torch.utils.benchmark.Timer.blocked_autorange``), the median of the
block medians reported; JIT compile time (first
call, including the disk-cache load) is reported apart. Weights: random unstructured sparsity.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numba
import torch
import torch.nn.functional as F
from torch.utils.benchmark import Timer

import sparsecnn
from sparsecnn import conv2d, to_sparse

# name, (C, H, W), K, R, stride, padding, batches, sparsities
CONV4 = ("alexnet conv4", (384, 13, 13), 256, 3, 1, 1)
LAYERS = [
    ("alexnet conv2 5x5 (27x27, 96->256)", (96, 27, 27), 256, 5, 1, 2),
    ("alexnet conv1 11x11 s4", (3, 227, 227), 96, 11, 4, 2),
    ("resnet50 1x1 256->64 56x56", (256, 56, 56), 64, 1, 1, 0),
    ("resnet20 s2 16->32 32x32", (16, 32, 32), 32, 3, 2, 1),
    ("vgg-like s2 128->256 56x56", (128, 56, 56), 256, 3, 2, 1),
]
RESNET20 = [
    ("resnet20 16->16 32x32", (16, 32, 32), 16, 3, 1, 1),
    ("resnet20 s2 16->32 32x32", (16, 32, 32), 32, 3, 2, 1),
    ("resnet20 32->32 16x16", (32, 16, 16), 32, 3, 1, 1),
    ("resnet20 s2 32->64 16x16", (32, 16, 16), 64, 3, 2, 1),
    ("resnet20 64->64 8x8", (64, 8, 8), 64, 3, 1, 1),
]


def _time(fn, min_run_time: float) -> float:
    fn()
    fn()
    return Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads()).blocked_autorange(min_run_time=min_run_time).median


def bench(name, chw, k, r, stride, pad, batch, sparsity, min_run_time, gen, repeats=5):
    c, h, w = chw
    x = torch.randn(batch, c, h, w, generator=gen)
    wt = torch.randn(k, c, r, r, generator=gen)
    wt[torch.rand(wt.shape, generator=gen) < sparsity] = 0
    b = torch.randn(k, generator=gen)
    sw = to_sparse(wt)
    t0 = time.perf_counter()
    y = conv2d(x, sw, b, stride, pad, algo="direct")
    first = time.perf_counter() - t0
    ref = F.conv2d(x, wt, b, stride, pad)
    err = (y - ref).abs().max().item()
    # dense and direct timed in alternating blocks; the median of the block medians of each
    # spreads any burst of load from outside the lock over both
    tds, tss = [], []
    for _ in range(repeats):
        tds.append(_time(lambda: F.conv2d(x, wt, b, stride, pad), min_run_time / repeats))
        tss.append(_time(lambda: conv2d(x, sw, b, stride, pad, algo="direct"),
                         min_run_time / repeats))
    td, ts = statistics.median(tds), statistics.median(tss)
    print(f"{name:38s} N={batch:<3d} sp={sparsity:6.3f}  dense {td * 1e3:8.3f} ms  "
          f"direct {ts * 1e3:8.3f} ms  speedup {td / ts:6.2f}x  first {first * 1e3:7.1f} ms  "
          f"maxerr {err:.1e}", flush=True)
    return td, ts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="conv4 at batch 1 only")
    ap.add_argument("--only", default="", help="run only cases whose name contains this")
    ap.add_argument("--min-run-time", type=float, default=0.5,
                    help="seconds of timing per kernel and case, split over --repeats blocks")
    ap.add_argument("--repeats", type=int, default=5, help="alternating dense/direct blocks")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    numba.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(0)
    print(f"sparsecnn {sparsecnn.__file__}, torch {torch.__version__}, numba {numba.__version__}, "
          f"threads {args.threads}")
    t0 = time.perf_counter()
    conv2d(torch.randn(1, 4, 5, 5), to_sparse(torch.randn(4, 4, 3, 3)), None, 1, 1, algo="direct")
    print(f"first call (compile or cache load): {(time.perf_counter() - t0) * 1e3:.0f} ms")
    sps = (0.5, 0.7, 0.8, 0.9, 0.95, 0.98, 0.993)
    cases = [(CONV4, 1, s) for s in sps]
    if not args.quick:
        cases += [(CONV4, 8, s) for s in sps]
        cases += [(lay, 1, s) for lay in LAYERS for s in (0.9, 0.95)]
        cases += [(lay, n, 0.9) for lay in RESNET20 for n in (1, 64)]
    for (name, chw, k, r, st, pd), n, s in cases:
        if args.only and args.only not in name:
            continue
        bench(name, chw, k, r, st, pd, n, s, args.min_run_time, gen, args.repeats)


if __name__ == "__main__":
    main()
