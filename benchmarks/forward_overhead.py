"""Per-call overhead of the sparse modules' forward over calling their kernel directly.

Run under the machine's CPU lock, e.g.::

    flock /tmp/sparsecnn-cpu.lock env PYTHONPATH=src python benchmarks/forward_overhead.py

Small layers (the overhead matters most where a layer's kernel takes microseconds: small models
at batch 1). For each layer, in one process, in alternating blocks
(``torch.utils.benchmark.Timer.blocked_autorange``, medians of the block medians):

- ``kernel``: ``kernel.run(prepared, x, bias)``, the floor;
- ``no_grad``: ``module(x)`` under ``torch.no_grad()``;
- ``grad on``: ``module(x)`` with gradients enabled, ``x`` not requiring grad (eval-mode
  inference without ``no_grad``, the common case);
- ``x.requires_grad``: ``module(x)`` building the autograd graph (saliency maps), forward only.

Printed: the ratio of each to ``kernel`` and the difference in microseconds (compile time is
spent in the warm-up, apart).
"""

from __future__ import annotations

import argparse
import statistics

import torch
from torch.utils.benchmark import Timer

from sparsecnn import nn as snn
from sparsecnn import to_sparse


def _layers():
    g = torch.Generator().manual_seed(0)

    def w(*shape):
        t = torch.randn(*shape, generator=g)
        return t * (torch.rand(*shape, generator=g) < 0.1)

    return [
        ("linear 64->10 spmv, batch 1", snn.SparseLinear(to_sparse(w(10, 64)), torch.zeros(10),
                                                         algo="spmv"), torch.randn(1, 64)),
        ("linear 64->10 dense, batch 1", snn.SparseLinear(to_sparse(w(10, 64)), torch.zeros(10),
                                                          algo="dense"), torch.randn(1, 64)),
        ("conv 8->8 3x3 8x8 direct, batch 1",
         snn.SparseConv2d(to_sparse(w(8, 8, 3, 3)), torch.zeros(8), padding=1, relu=True,
                          algo="direct"), torch.randn(1, 8, 8, 8)),
        ("conv 8->8 3x3 8x8 im2col_spmm, batch 1",
         snn.SparseConv2d(to_sparse(w(8, 8, 3, 3)), torch.zeros(8), padding=1, relu=True,
                          algo="im2col_spmm"), torch.randn(1, 8, 8, 8)),
    ]


def _median(timer: Timer, min_run_time: float) -> float:
    return timer.blocked_autorange(min_run_time=min_run_time).median


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=5, help="alternating rounds per layer")
    ap.add_argument("--block", type=float, default=0.2, help="seconds per timed block")
    args = ap.parse_args()
    torch.set_num_threads(1)
    print(f"{'layer':40s} {'variant':18s} {'x kernel':>9s} {'+us':>7s}")
    for name, m, x in _layers():
        m.eval()
        with torch.no_grad():
            m(x)
        run, prep, bias = m._plan(x)
        xg = x.clone().requires_grad_(True)
        loop = "for _ in range(100):\n    "
        g = {"run": run, "prep": prep, "x": x, "xg": xg, "bias": bias, "m": m, "torch": torch}
        variants = {  # 100 calls per timed statement
            "kernel": Timer(loop + "run(prep, x, bias)", globals=g),
            "no_grad": Timer("with torch.no_grad():\n    " + loop.replace("\n", "\n    ")
                             + "    m(x)", globals=g),
            "grad on": Timer(loop + "m(x)", globals=g),
            "x.requires_grad": Timer(loop + "m(xg)", globals=g),
        }
        for t in variants.values():  # warm-up (compilation, plans)
            t.timeit(3)
        samples = {k: [] for k in variants}
        for _ in range(args.rounds):
            for k, t in variants.items():
                samples[k].append(_median(t, args.block))
        base = statistics.median(samples["kernel"])
        for k, v in samples.items():
            med = statistics.median(v)
            print(f"{name:40s} {k:18s} {med / base:9.2f} {1e4 * (med - base):7.2f}")


if __name__ == "__main__":
    main()
