"""End-to-end speed of a depthwise / pointwise detector imported from ONNX, pruned to 90 %.

The model (built here; no weights are downloaded): a MobileNet-v1-style backbone (a 3x3 stem,
13 depthwise-separable blocks), a small FPN neck (1x1 laterals, nearest upsample + add, one
depthwise-separable block per merge) and an SSD-style head per level (two depthwise-separable
blocks, class and box 1x1 convs) on 4 levels (80, 40, 20, 10 at 640x640): 62 convolutions,
BatchNorm + ReLU after every conv but the predictions. It is exported to ONNX (PyTorch's exporter
folds the BatchNorms), re-imported (:func:`sparsecnn.onnx.load_onnx`), every conv but the first
magnitude-pruned to 90 % per layer, then run as ``sparsecnn optimize`` runs a model: sparsify +
tune (batch 1) + compact.

Reported, all from one process (run under ``flock /tmp/sparsecnn-cpu.lock``):

- end-to-end median latency at batch 1 of the dense imported model (PyTorch, oneDNN) and the
  sparse one, in alternating blocks (:func:`sparsecnn.pipeline.time_models`), and their ratio;
- a per-node breakdown of both graphs (an ``fx.Interpreter`` timing every node, medians over
  repeats): convolutions by kind (stem, depthwise, pointwise, dense 3x3, head) with the kernel
  each ran, and every other op (Resize, Add, Concat, Reshape, ...) -- "where the time goes";
- which kernels ran (count per kernel) and the compile/tune time.

Usage::

    flock /tmp/sparsecnn-cpu.lock env PYTHONPATH=src python benchmarks/onnx_detector.py \\
        [--size 640] [--threads 2] [--time 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import collections
import copy
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import fx, nn


def _cbr(cin, cout, k, s=1, groups=1):
    return [nn.Conv2d(cin, cout, k, s, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout),
            nn.ReLU()]


def _ds(cin, cout, s=1):
    """Depthwise 3x3 (stride s) + pointwise 1x1, each with BN + ReLU."""
    return nn.Sequential(*_cbr(cin, cin, 3, s, groups=cin), *_cbr(cin, cout, 1))


class Detector(nn.Module):
    """MobileNet-v1 backbone (width ``alpha``) + FPN-lite neck + SSD-lite head, 62 convs."""

    def __init__(self, alpha: float = 1.0, classes: int = 20, anchors: int = 3):
        super().__init__()
        c = lambda n: max(8, int(n * alpha))  # noqa: E731
        self.stem = nn.Sequential(*_cbr(3, c(32), 3, 2))
        cfg = [(64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2), (512, 1), (512, 1),
               (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1)]
        blocks, cin = [], c(32)
        for cout, s in cfg:
            blocks.append(_ds(cin, c(cout), s))
            cin = c(cout)
        self.backbone = nn.ModuleList(blocks)       # outputs after blocks 4, 10, 12: 80, 40, 20
        self.extra = nn.Sequential(_ds(c(1024), c(256), 2), _ds(c(256), c(256)))  # 10x10
        w = c(128)
        self.lat = nn.ModuleList([nn.Conv2d(ch, w, 1) for ch in (c(256), c(512), c(1024))])
        self.merge = nn.ModuleList([_ds(w, w), _ds(w, w)])
        heads = []
        for ch in (w, w, w, c(256)):
            heads.append(nn.Sequential(_ds(ch, w), _ds(w, w)))
        self.heads = nn.ModuleList(heads)
        self.cls = nn.ModuleList([nn.Conv2d(w, anchors * classes, 1) for _ in range(4)])
        self.box = nn.ModuleList([nn.Conv2d(w, anchors * 4, 1) for _ in range(4)])

    def forward(self, x):
        x = self.stem(x)
        feats = []
        for i, b in enumerate(self.backbone):
            x = b(x)
            if i in (4, 10, 12):
                feats.append(x)
        p6 = self.extra(x)
        c3, c4, c5 = (lat(f) for lat, f in zip(self.lat, feats))
        p4 = self.merge[1](c4 + F.interpolate(c5, scale_factor=2.0, mode="nearest"))
        p3 = self.merge[0](c3 + F.interpolate(p4, scale_factor=2.0, mode="nearest"))
        outs = []
        for lvl, f in enumerate((p3, p4, c5, p6)):
            h = self.heads[lvl](f)
            outs += [self.cls[lvl](h).flatten(2), self.box[lvl](h).flatten(2)]
        return torch.cat(outs[0::2], 2), torch.cat(outs[1::2], 2)


def build(alpha: float, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    m = Detector(alpha)
    g = torch.Generator().manual_seed(seed)
    for mod in m.modules():   # BN statistics as a trained net has them (not 0 / 1)
        if isinstance(mod, nn.BatchNorm2d):
            n = mod.num_features
            mod.running_mean.copy_(0.1 * torch.randn(n, generator=g))
            mod.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            mod.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            mod.bias.data.copy_(0.1 * torch.randn(n, generator=g))
    return m.eval()


def conv_kind(m: nn.Conv2d, first: bool) -> str:
    if first:
        return "stem 3x3 (dense)"
    if m.groups > 1 and m.groups == m.in_channels:
        return "depthwise 3x3"
    if m.kernel_size == (1, 1):
        return "pointwise 1x1"
    return f"conv {m.kernel_size[0]}x{m.kernel_size[1]}"


class _Timed(fx.Interpreter):
    """Runs a GraphModule node by node, adding each node's wall time to ``times[node.name]``."""

    def __init__(self, gm, times):
        super().__init__(gm)
        self.times = times

    def run_node(self, n):
        t0 = time.perf_counter()
        out = super().run_node(n)
        self.times[n.name].append(time.perf_counter() - t0)
        return out


def node_times(gm: fx.GraphModule, x, repeats: int) -> dict[str, float]:
    """Median ms per node over ``repeats`` runs (after 2 warm-up runs)."""
    times = collections.defaultdict(list)
    with torch.inference_mode():
        for _ in range(2):
            _Timed(gm, collections.defaultdict(list)).run(x)
        for _ in range(repeats):
            _Timed(gm, times).run(x)
    return {k: 1e3 * statistics.median(v) for k, v in times.items()}


def breakdown(gm: fx.GraphModule, x, repeats: int, first_conv: str) -> dict:
    """Per-node ms grouped: conv kinds (with the kernel that ran) and other ops by type."""
    from sparsecnn.nn import SparseConv2d, layer_table
    mods = dict(gm.named_modules())
    chosen = {r["name"]: r["kernel"] for r in layer_table(gm, batch=x.shape[0])}
    nt = node_times(gm, x, repeats)
    groups = collections.defaultdict(lambda: {"ms": 0.0, "count": 0, "kernels": collections.Counter()})
    for node in gm.graph.nodes:
        if node.name not in nt or node.op in ("placeholder", "output", "get_attr"):
            continue
        m = mods.get(node.target) if node.op == "call_module" else None
        if isinstance(m, nn.Conv2d):
            key, kern = conv_kind(m, node.target == first_conv), "dense (torch)"
        elif isinstance(m, SparseConv2d):
            geo = nn.Conv2d(1, 1, 1)
            geo.groups, geo.in_channels = m.groups, m.weight.shape[1] * m.groups
            geo.kernel_size = tuple(m.weight.shape[2:])
            key = conv_kind(geo, node.target == first_conv)
            kern = chosen.get(node.target, m.algo)
        else:
            key = type(m).__name__ if m is not None else (
                getattr(node.target, "__name__", str(node.target)))
            kern = None
        g = groups[key]
        g["ms"] += nt[node.name]
        g["count"] += 1
        if kern:
            g["kernels"][kern] += 1
    total = sum(g["ms"] for g in groups.values())
    return {"total_ms": total, "groups": {k: {"ms": v["ms"], "count": v["count"],
                                             "kernels": dict(v["kernels"])}
                                         for k, v in sorted(groups.items(), key=lambda kv: -kv[1]["ms"])}}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=640)
    ap.add_argument("--alpha", type=float, default=1.0, help="backbone width multiplier")
    ap.add_argument("--sparsity", type=float, default=0.9)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--time", type=float, default=3.0, help="seconds of end-to-end timing")
    ap.add_argument("--repeats", type=int, default=7, help="runs of the per-node breakdown")
    ap.add_argument("--json", type=Path, help="write the numbers here")
    ap.add_argument("--compare-untraced", action="store_true",
                    help="also time the sparse model as it was before onnx2torch's modules were fx "
                         "leaves (the imported graph then does not trace: no ReLU fusion, no "
                         "compact)")
    args = ap.parse_args(argv)

    from sparsecnn import nn as snn
    from sparsecnn import prune
    from sparsecnn.onnx import export_onnx, load_onnx
    from sparsecnn.pipeline import time_models
    from sparsecnn.threads import set_threads

    threads = set_threads(args.threads)
    src = build(args.alpha)
    n_conv = sum(isinstance(m, nn.Conv2d) for m in src.modules())
    x = torch.randn(1, 3, args.size, args.size)
    with tempfile.TemporaryDirectory() as tmp:
        path = export_onnx(src, x, Path(tmp) / "detector.onnx")
        net = load_onnx(path)
    convs = [(n, m) for n, m in net.named_modules() if isinstance(m, nn.Conv2d)]
    first = convs[0][0]
    prune.magnitude_prune_(net, args.sparsity, layers=[n for n, _ in convs[1:]])
    prune.finalize_(net)
    net.eval()
    print(f"detector: {n_conv} convs ({len(convs)} after import), {args.size}x{args.size}, "
          f"every conv but {first!r} at {args.sparsity:.0%}; threads {threads}")

    sparse = copy.deepcopy(net)
    t0 = time.perf_counter()
    snn.sparsify_(sparse, example_input=x, min_sparsity=0.5)
    tune_s = time.perf_counter() - t0
    run = snn.compact(sparse, example_input=x)
    with torch.inference_mode():
        from sparsecnn.checks import compare_outputs
        chk = compare_outputs(run(x), net(x))
    print(f"sparsify + tune: {tune_s:.1f} s; output check vs dense: {'ok' if chk.ok else chk.message}"
          f" (max |err| {chk.max_abs_err:.2e})")

    models_ = {"dense": net, "sparse": run}
    if args.compare_untraced:
        import warnings

        from sparsecnn.nn import fusion
        real = fusion._is_onnx2torch
        fusion._is_onnx2torch = lambda m: False       # the old tracer: the graph fails to trace
        try:
            old = copy.deepcopy(net)
            with warnings.catch_warnings(record=True) as seen:
                warnings.simplefilter("always")
                snn.sparsify_(old, example_input=x, min_sparsity=0.5)
            skipped = any("not fx-traceable" in str(w.message) for w in seen)
            print(f"untraced variant: fusion skipped = {skipped}")
            models_["sparse_untraced"] = old
        finally:
            fusion._is_onnx2torch = real
    t = time_models(models_, x, min_time_s=args.time)
    ratio = t["dense"]["median_ms"] / t["sparse"]["median_ms"]
    print(f"end to end, batch 1: dense {t['dense']['median_ms']:.2f} ms, sparse "
          f"{t['sparse']['median_ms']:.2f} ms -> {ratio:.2f}x")
    if "sparse_untraced" in t:
        print(f"  sparse without tracing the imported graph (no ReLU fusion, no compact): "
              f"{t['sparse_untraced']['median_ms']:.2f} ms -> "
              f"{t['dense']['median_ms'] / t['sparse_untraced']['median_ms']:.2f}x")

    dense_gm = net if isinstance(net, fx.GraphModule) else fx.symbolic_trace(net)
    bd_dense = breakdown(dense_gm, x, args.repeats, first)
    bd_sparse = breakdown(run, x, args.repeats, first) if isinstance(run, fx.GraphModule) else None
    print("\nper-node breakdown (sum of node medians, ms; the interpreter adds ~10 us per node):")
    keys = list(dict.fromkeys(list(bd_dense["groups"]) + list((bd_sparse or {"groups": {}})["groups"])))
    print(f"{'op':28} {'n':>4} {'dense ms':>9} {'sparse ms':>10} {'ratio':>6}  kernels (sparse)")
    for k in keys:
        d = bd_dense["groups"].get(k, {"ms": 0.0, "count": 0})
        s = (bd_sparse or {"groups": {}})["groups"].get(k, {"ms": 0.0, "count": 0, "kernels": {}})
        r = f"{d['ms'] / s['ms']:.2f}" if s["ms"] > 0 and d["ms"] > 0 else "-"
        kern = ", ".join(f"{n} x{c}" for n, c in s.get("kernels", {}).items())
        print(f"{k[:28]:28} {max(d['count'], s['count']):4d} {d['ms']:9.2f} {s['ms']:10.2f} {r:>6}  {kern}")
    print(f"{'total':28} {'':4} {bd_dense['total_ms']:9.2f} "
          f"{(bd_sparse or {'total_ms': float('nan')})['total_ms']:10.2f}")
    kernels = collections.Counter(r["kernel"] for r in snn.layer_table(sparse, batch=1))
    print("kernels that ran (per layer):", dict(kernels))
    if args.json:
        args.json.write_text(json.dumps({
            "size": args.size, "alpha": args.alpha, "sparsity": args.sparsity, "threads": threads,
            "convs": n_conv, "latency": t, "ratio": ratio, "tune_seconds": tune_s,
            "check": chk.as_dict(), "breakdown": {"dense": bd_dense, "sparse": bd_sparse},
            "kernels": dict(kernels), "layers": snn.layer_table(sparse, batch=1)}, indent=1,
            default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
