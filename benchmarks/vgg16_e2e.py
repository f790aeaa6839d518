"""VGG-16 end to end, dense PyTorch against the sparsified model, and where the time goes.

Issue 8: every convolution but the first (``conv1_2`` .. ``conv5_3``) and ``fc6`` / ``fc7`` pruned
to ``--sparsity`` (unstructured, by magnitude per layer, random weights: speed does not depend
on the values), ``conv1_1`` and ``fc8`` dense, batch ``--batch``, 224x224. The sparse model is
:func:`sparsecnn.nn.sparsify_` of a copy (BatchNorm-free VGG: ReLUs fused; each layer's kernel
tuned on the example input, dense where no sparse kernel beats it).

Prints (ratios from one run, one process):

- the whole forward of both models (:func:`sparsecnn.timing.measure`, alternating blocks);
- per layer: the median time of each module in both models (forward hooks, ``perf_counter``,
  over ``--runs`` forwards), the kernel chosen, and the rest (pools, ReLUs, flatten, Python
  between modules) as the difference to the whole forward.

    flock /tmp/sparsecnn-cpu.lock env PYTHONPATH=src python benchmarks/vgg16_e2e.py
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
from torch import nn

from sparsecnn import timing
from sparsecnn.models import VGG16
from sparsecnn.nn import layer_table, sparse_modules, sparsify_


def prune_vgg16_(model: nn.Module, sparsity: float) -> nn.Module:
    """Zero the smallest-magnitude ``sparsity`` share of the weights of every conv but
    ``conv1_1`` and of ``fc6`` / ``fc7``, in place."""
    with torch.no_grad():
        for name, m in model.named_modules():
            if not isinstance(m, (nn.Conv2d, nn.Linear)) or name in ("conv1_1", "fc8"):
                continue
            w = m.weight
            k = int(round(sparsity * w.numel()))
            if k:
                thr = w.abs().flatten().kthvalue(k).values
                w.mul_((w.abs() > thr).float())
    return model


def _per_module_ms(model: nn.Module, x: torch.Tensor, runs: int) -> tuple[dict, float]:
    """Median ms per leaf module over ``runs`` forwards, and the median whole forward (ms)."""
    times: dict[str, list[float]] = {}
    start: dict[str, float] = {}
    handles = []
    for name, m in model.named_modules():
        if list(m.children()) or name == "":
            continue

        def pre(mod, args, _n=name):
            start[_n] = time.perf_counter()

        def post(mod, args, out, _n=name):
            times.setdefault(_n, []).append((time.perf_counter() - start[_n]) * 1e3)
        handles += [m.register_forward_pre_hook(pre), m.register_forward_hook(post)]
    whole = []
    try:
        for _ in range(runs):
            t0 = time.perf_counter()
            model(x)
            whole.append((time.perf_counter() - t0) * 1e3)
    finally:
        for h in handles:
            h.remove()
    return {n: statistics.median(v) for n, v in times.items()}, statistics.median(whole)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sparsity", type=float, default=0.9)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=7, help="forwards for the per-layer medians")
    ap.add_argument("--min-time", type=float, default=2.0, help="s per model, whole forward")
    ap.add_argument("--size", type=int, default=224, help="input height and width")
    ap.add_argument("--no-cache", action="store_true", help="do not use the tuning cache")
    a = ap.parse_args(argv)
    torch.manual_seed(0)
    with timing.threads(a.threads), torch.inference_mode():
        dense = prune_vgg16_(VGG16().eval(), a.sparsity)
        x = torch.randn(a.batch, 3, a.size, a.size)
        sparse = copy.deepcopy(dense)
        t0 = time.perf_counter()
        sparsify_(sparse, example_input=x, use_cache=not a.no_cache)
        tune_s = time.perf_counter() - t0
        ref, y = dense(x), sparse(x)
        err = float((y - ref).abs().max() / ref.abs().max().clamp_min(1e-30))
        st = timing.measure({"dense": lambda: dense(x), "sparse": lambda: sparse(x)},
                            min_time=a.min_time, max_time=3 * a.min_time)
        d_layers, d_whole = _per_module_ms(dense, x, a.runs)
        s_layers, s_whole = _per_module_ms(sparse, x, a.runs)
    kernels = {r["name"]: r["kernel"] for r in layer_table(sparse)}
    names = [n for n, _ in sparse_modules(sparse)]
    print(f"VGG-16 at {a.size}x{a.size}, batch {a.batch}, {a.threads} threads, sparsity {a.sparsity} "
          f"(conv1_2..conv5_3, fc6, fc7); sparsify_ + tuning {tune_s:.1f} s; "
          f"max rel. err {err:.1e}")
    print(f"whole forward: dense {st['dense'].ms:.1f} ms, sparse {st['sparse'].ms:.1f} ms, "
          f"speedup {st['dense'].ms / st['sparse'].ms:.2f}x")
    print(f"{'layer':10s} {'kernel':14s} {'dense ms':>9s} {'sparse ms':>9s} {'speedup':>8s} "
          f"{'share of sparse':>15s}")
    for n in names:
        d, s = d_layers.get(n, float("nan")), s_layers.get(n, float("nan"))
        print(f"{n:10s} {kernels.get(n, '-'):14s} {d:9.2f} {s:9.2f} {d / s:7.2f}x "
              f"{s / s_whole:14.1%}")
    d_rest = d_whole - sum(d_layers.get(n, 0.0) for n in names)
    s_rest = s_whole - sum(s_layers.get(n, 0.0) for n in names)
    print(f"{'rest':10s} {'(pool, relu..)':14s} {d_rest:9.2f} {s_rest:9.2f} "
          f"{d_rest / s_rest:7.2f}x {s_rest / s_whole:14.1%}")
    print(f"{'whole':10s} {'(hooked)':14s} {d_whole:9.2f} {s_whole:9.2f} "
          f"{d_whole / s_whole:7.2f}x")


if __name__ == "__main__":
    main()
