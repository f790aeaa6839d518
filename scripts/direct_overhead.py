"""Where the time of one ``direct`` call goes (issue 8: "how the time divides at 99.3 %").

Times, in one process, with the one timing harness (:func:`sparsecnn.timing.measure`):
dense ``F.conv2d``; ``sparsecnn.conv2d`` (the public call: validation, dispatch, cache look-up,
kernel); the kernel alone as a module calls it (``kernel.run(prep, x, bias)``); the jitted entry
alone (prebuilt arguments: no Python); the same work on one thread; an empty parallel region
(fork/join); the input preparation alone; the output allocation. Ratios from one run.

    PYTHONPATH=src flock /tmp/sparsecnn-cpu.lock python scripts/direct_overhead.py \
        --layer alexnet-conv4 --sparsity 0.993 --batch 1 --threads 2
"""

from __future__ import annotations

import argparse

import numba
import numpy as np
import torch
import torch.nn.functional as F
from numba import njit, prange

import sparsecnn
from sparsecnn import timing
from sparsecnn.bench import LAYERS
from sparsecnn.bench.core import layer_input, pruned_weight
from sparsecnn.functional import conv2d_problem, resolve
from sparsecnn.kernels.cpu import direct


@njit(parallel=True, cache=True)
def _empty_region(a, n):
    for i in prange(n):
        a[i] += 1.0


@njit(cache=True)
def _prepare_only(x4, xbuf, prm):
    n, c, h, w = x4.shape
    x = x4.reshape(x4.size)
    for i in range(n):
        direct._prepare_slice(i, 0, 1, x, xbuf, prm, c, h, w)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layer", default="alexnet-conv4")
    ap.add_argument("--sparsity", type=float, default=0.993)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--min-time", type=float, default=0.3)
    a = ap.parse_args(argv)
    spec = LAYERS[a.layer]
    x = layer_input(spec, a.batch)
    w = pruned_weight(spec, a.sparsity)
    ws = sparsecnn.to_sparse(w)
    st, pd = spec.stride, spec.pad
    with timing.threads(a.threads), torch.inference_mode():
        _, problem, _, _ = conv2d_problem(x, ws, None, st, pd)
        kernel, prep = resolve(problem, ws, "direct")
        op = prep.operand
        args = op.call_args(x, None, False)
        serial = direct.prepare_direct(ws, problem, nthreads=1)
        sargs = serial.call_args(x, None, False)
        flag = np.zeros(a.threads, dtype=np.float32)
        xbuf = args[1]
        fns = {
            "dense F.conv2d": lambda: F.conv2d(x, w, None, st, pd),
            "sparsecnn.conv2d": lambda: sparsecnn.conv2d(x, ws, None, st, pd, algo="direct"),
            "kernel.run (module path)": lambda: kernel.run(prep, x, None),
            "call_args (Python, alloc)": lambda: op.call_args(x, None, False),
            "entry, prebuilt args": lambda: op.entry(*args),
            "entry, 1 thread": lambda: serial.entry(*sargs),
            "empty parallel region": lambda: _empty_region(flag, a.threads),
            "input preparation": lambda: _prepare_only(args[0], xbuf, args[2]),
            "np.empty output": lambda: np.empty(op.out_shape, dtype=np.float32),
        }
        stats = timing.measure(fns, min_time=a.min_time, max_time=4 * a.min_time)
    print(f"{a.layer} sparsity {a.sparsity} batch {a.batch}, {a.threads} threads, "
          f"{sparsecnn.kernels.capabilities.target().isa}; plan: parallel={op.plan.parallel} "
          f"items={op.plan.nitems} tiles={op.plan.ntiles}x{op.plan.tl} nblocks={op.d.nblocks}")
    dense = stats["dense F.conv2d"].ms
    print(f"{'':28s} {'us':>9s} {'dense/this':>10s}")
    for name, t in stats.items():
        print(f"{name:28s} {t.ms * 1e3:9.1f} {dense / t.ms:10.2f}")


if __name__ == "__main__":
    main()
