"""Activation sparsity, fused conv + pool and hybrid execution: measurements (issue 11).

Subcommands (each prints a table; ``--json FILE`` keeps the numbers); timings use the project's
one harness (:func:`sparsecnn.timing.measure`: first call apart, alternating blocks, medians),
dense PyTorch timed in the same process, ratios from one run. Run under the exclusive CPU lock::

    flock /tmp/sparsecnn-cpu.lock env PYTHONPATH=src python benchmarks/activation.py stats
    flock /tmp/sparsecnn-cpu.lock env PYTHONPATH=src python benchmarks/activation.py layers
    flock /tmp/sparsecnn-cpu.lock env PYTHONPATH=src python benchmarks/activation.py pool
    flock /tmp/sparsecnn-cpu.lock env PYTHONPATH=src python benchmarks/activation.py hybrid
    flock /tmp/sparsecnn-cpu.lock env PYTHONPATH=src python benchmarks/activation.py e2e

- ``stats``: zero structure of every conv layer's input (:mod:`sparsecnn.analysis.activations`)
  for ResNet-20 / ResNet-56 with the published CIFAR-10 weights on real CIFAR-10 test images
  (dense weights, and ``--sparsity`` one-shot magnitude-pruned), and AlexNet with *random-init*
  weights magnitude-pruned to 90 % on random N(0, 1) inputs (labelled: not a trained network,
  not real images).
- ``layers``: activation-aware kernels vs the weight-only ones on AlexNet conv2-5 shapes at
  weight sparsity 0.8 / 0.9 / 0.95 x activation sparsity 0.25 / 0.5 / 0.7 / 0.9 (random and
  structured: dead channels) and on real ResNet-20 / 56 activations.
- ``pool``: fused conv + ReLU + max-pool kernels vs each conv kernel then ``max_pool2d`` on
  AlexNet conv1 / conv2 / conv5 and the VGG-16 block ends, 90 % weight sparsity, batch 1.
- ``hybrid``: the hybrid kernel vs dense and the sparse kernel on planted dense blocks and on
  real pruned layers (where the block finder finds none, it says so).
- ``e2e``: whole models, every conv but the first (and AlexNet's fc6 / fc7) magnitude-pruned to
  90 %, sparsified and tuned, against dense PyTorch in the same process.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.table import Table

import sparsecnn
import sparsecnn.data
from sparsecnn import models, prune
from sparsecnn.analysis import activations
from sparsecnn.kernels import registry
from sparsecnn.timing import measure

console = Console(width=int(os.environ.get("COLUMNS", "200")))
DATA = sparsecnn.data.shared_data_dir() or Path("/nonexistent: set SPARSECNN_SHARED_DATA")
WEIGHTS = {"resnet20": "resnet20-12fca82f.th", "resnet56": "resnet56-4bfd9763.th"}


# ---------------------------------------------------------------------------------------------
# models and inputs
# ---------------------------------------------------------------------------------------------
def cifar_images(n: int) -> torch.Tensor:
    from sparsecnn.data import load_npz

    path = DATA / "cifar10" / "cifar10_test_subset.npz"
    if not path.is_file():
        sys.exit(f"real CIFAR-10 images not found at {path} (set SPARSECNN_SHARED_DATA)")
    return load_npz(path).tensors[0][:n].contiguous()


def resnet(name: str) -> torch.nn.Module:
    path = DATA / "resnet_cifar10" / WEIGHTS[name]
    if not path.is_file():
        sys.exit(f"published weights not found at {path} (set SPARSECNN_SHARED_DATA)")
    m = models.build(name)
    models.load_weights(m, path)
    return m.eval()


def prune_model(model: torch.nn.Module, sparsity: float, linear=()) -> torch.nn.Module:
    """Magnitude-prune every conv but the first (and the named linear layers) to ``sparsity``,
    per layer, one shot."""
    convs = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)]
    prune.magnitude_prune_(model, sparsity, layers=[*convs[1:], *linear])
    prune.finalize_(model)
    return model.eval()


def alexnet_pruned(sparsity: float = 0.9, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return prune_model(models.build("alexnet").eval(), sparsity, linear=("fc6", "fc7"))


# ---------------------------------------------------------------------------------------------
# stats
# ---------------------------------------------------------------------------------------------
def _stats_rows(model, x, label):
    res = activations.activation_structure(model, x, batch=64)
    convs = {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)}
    rows = []
    for n, r in res.items():
        w = convs[n].weight.detach()
        dw = activations.dead_channel_work(w, r["dead_per_channel"], r["images"]) \
            if convs[n].groups == 1 else {"skipped_share": float("nan")}
        rows.append({"model": label, "layer": n, "in_shape": list(r["in_shape"]),
                     "after_relu": bool(r["nonnegative"]), "zero_share": r["zero_share"],
                     "dead_channel_share": r["dead_channel_share"],
                     "dead_channels_per_image": r["dead_channels_per_image_mean"],
                     "dead_in_every_image": r["channels_dead_in_every_image"],
                     "zero_row_share": r["zero_row_share"],
                     "zero_win8": r["zero_window_share"][8],
                     "zero_win16": r["zero_window_share"][16],
                     "dead_work_share": dw["skipped_share"],
                     "weight_sparsity": 1.0 - float((w != 0).float().mean())})
    return rows


def cmd_stats(args):
    x = cifar_images(args.images)
    rows = []
    for name in ("resnet20", "resnet56"):
        m = resnet(name)
        rows += _stats_rows(m, x, f"{name} (published weights, dense)")
        if args.sparsity:
            rows += _stats_rows(prune_model(copy.deepcopy(m), args.sparsity), x,
                                f"{name} ({args.sparsity:.0%} one-shot pruned)")
    torch.manual_seed(1)
    xa = torch.randn(args.alexnet_images, 3, 224, 224)
    rows += _stats_rows(alexnet_pruned(0.9), xa,
                        "alexnet (RANDOM-INIT weights, 90% pruned; random N(0,1) inputs: "
                        "not a trained net, not real images)")
    for label in dict.fromkeys(r["model"] for r in rows):
        t = Table(title=f"{label}: zero structure of each conv layer's input "
                        f"({x.shape[0] if 'resnet' in label else xa.shape[0]} images)")
        for c in ("layer", "in C x H x W", "ReLU'd", "zeros", "dead ch", "dead ch/img",
                  "dead in all", "zero rows", "zero 8-win", "zero 16-win", "w-nnz on dead ch"):
            t.add_column(c, justify="right")
        for r in (r for r in rows if r["model"] == label):
            t.add_row(r["layer"], "x".join(map(str, r["in_shape"])), "yes" if r["after_relu"] else "no",
                      f"{r['zero_share']:.1%}", f"{r['dead_channel_share']:.1%}",
                      f"{r['dead_channels_per_image']:.1f}", str(r["dead_in_every_image"]),
                      f"{r['zero_row_share']:.1%}", f"{r['zero_win8']:.1%}",
                      f"{r['zero_win16']:.1%}", f"{r['dead_work_share']:.1%}")
        console.print(t)
    return rows


# ---------------------------------------------------------------------------------------------
# helpers for timed comparisons
# ---------------------------------------------------------------------------------------------
def sparse_weight(shape, sparsity, gen):
    w = torch.randn(shape, generator=gen)
    keep = torch.randperm(w.numel(), generator=gen)[:round(w.numel() * (1 - sparsity))]
    mask = torch.zeros(w.numel(), dtype=torch.bool)
    mask[keep] = True
    return (w.flatten() * mask).reshape(shape)


def runnable(problem, weight, names):
    ks = []
    for n in names:
        try:
            k = registry.get(problem.op, n)
        except ValueError:
            continue
        if k.why_not(problem, weight) is None:
            ks.append(n)
    return ks


def time_conv(x, w, ws, geom, names, relu=True, check=True):
    """Median ms of dense and each kernel of ``names`` that runs here (one interleaved run)."""
    stride, padding = geom
    _, p, _, _ = sparsecnn.functional.conv2d_problem(x, ws, None, stride, padding, 1, 1, relu)
    names = runnable(p, ws, names)
    fns = {"dense": lambda: F.relu(F.conv2d(x, w, None, stride, padding))}
    for n in names:
        fns[n] = (lambda n=n: sparsecnn.conv2d(x, ws, None, stride, padding, algo=n, relu=relu))
    if check:
        ref = fns["dense"]()
        for n in names:
            err = float((fns[n]() - ref).abs().max())
            assert err <= 1e-3 * max(1.0, float(ref.abs().max())), (n, err)
    t = measure(fns, warmup=2, min_time=0.1, max_time=0.6)
    return {k: v.ms for k, v in t.items()}, {k: v.first_call_ms for k, v in t.items()}


# ---------------------------------------------------------------------------------------------
# layers: activation-aware vs weight-only
# ---------------------------------------------------------------------------------------------
ALEXNET = {  # name: (C, H, W, K, R, stride, padding) at 224 x 224 input
    "conv2": (64, 27, 27, 192, 5, 1, 2), "conv3": (192, 13, 13, 384, 3, 1, 1),
    "conv4": (384, 13, 13, 256, 3, 1, 1), "conv5": (256, 13, 13, 256, 3, 1, 1)}
WEIGHT_ONLY = ("direct_avx512", "direct", "im2col_spmm")
ACT_AWARE = ("direct_live", "sparse_sparse")


def act_input(shape, act_sparsity, pattern, gen):
    x = torch.relu(torch.randn(shape, generator=gen)) + 0.01  # positive: zeros placed below
    n, c, h, w = shape
    if pattern == "random":
        x = x * (torch.rand(shape, generator=gen) >= act_sparsity)
    elif pattern == "channels":  # whole channels dead per image
        for i in range(n):
            x[i, torch.randperm(c, generator=gen)[:round(act_sparsity * c)]] = 0
    return x.contiguous()


def _ratio_cols(ms):
    d = ms["dense"]
    return {k: d / v for k, v in ms.items() if k != "dense"}


def cmd_layers(args):
    gen = torch.Generator().manual_seed(0)
    rows = []
    names = [*WEIGHT_ONLY, *ACT_AWARE]
    for lname in args.alexnet_layers:
        c, h, w_, k, r, s, p = ALEXNET[lname]
        for ws_ in args.weight_sparsity:
            wt = sparse_weight((k, c, r, r), ws_, gen)
            wsp = sparsecnn.to_sparse(wt, "csr")
            for pattern in ("random", "channels"):
                for a in args.act_sparsity:
                    x = act_input((args.batch, c, h, w_), a, pattern, gen)
                    ms, _ = time_conv(x, wt, wsp, (s, p), names)
                    rows.append({"layer": f"alexnet {lname}", "weight_sparsity": ws_,
                                 "act_sparsity": float((x == 0).float().mean()),
                                 "pattern": pattern, "batch": args.batch, "ms": ms})
                    _print_row(rows[-1])
    if args.real:
        x_img = cifar_images(args.batch)
        for name in ("resnet20", "resnet56"):
            m = prune_model(resnet(name), 0.9)
            convs = {n: mm for n, mm in m.named_modules() if isinstance(mm, torch.nn.Conv2d)}
            inputs = {}
            hs = [mm.register_forward_pre_hook(
                lambda _m, a, n=n: inputs.setdefault(n, a[0].detach().clone()))
                for n, mm in convs.items()]
            with torch.no_grad():
                m(x_img)
            for hh in hs:
                hh.remove()
            for n, mm in list(convs.items())[1:]:
                x = inputs[n].contiguous()
                wt = mm.weight.detach().contiguous()
                ms, _ = time_conv(x, wt, sparsecnn.to_sparse(wt, "csr"),
                                  (mm.stride, mm.padding), names)
                rows.append({"layer": f"{name} {n}", "weight_sparsity": 0.9,
                             "act_sparsity": float((x == 0).float().mean()),
                             "pattern": "real", "batch": args.batch, "ms": ms})
                _print_row(rows[-1])
    _live_summary(rows)
    return rows


def _print_row(r):
    ms = r["ms"]
    parts = [f"{k} {ms[k]:.3f} ms ({ms['dense'] / ms[k]:.2f}x)" for k in ms if k != "dense"]
    live = (f" || direct_live over direct {ms['direct'] / ms['direct_live']:.2f}x"
            if "direct" in ms and "direct_live" in ms else "")
    console.print(f"{r['layer']:<22} w {r['weight_sparsity']:.2f} a {r['act_sparsity']:.2f} "
                  f"{r['pattern']:<8} b{r['batch']}: dense {ms['dense']:.3f} ms | "
                  + " | ".join(parts) + live)


def _live_summary(rows):
    """direct_live over direct: per pattern, on all rows and on rows with >= 50 % zeros."""
    import math

    t = Table(title="direct_live over weight-only direct (geometric mean / max)")
    for c in ("pattern", "rows", "all", ">= 50 % zeros: rows", "geomean", "max"):
        t.add_column(c, justify="right")
    for pat in dict.fromkeys(r["pattern"] for r in rows):
        rs = [r for r in rows if r["pattern"] == pat and "direct_live" in r["ms"]
              and "direct" in r["ms"]]
        if not rs:
            continue
        q = [r["ms"]["direct"] / r["ms"]["direct_live"] for r in rs]
        q50 = [r["ms"]["direct"] / r["ms"]["direct_live"] for r in rs if r["act_sparsity"] >= 0.5]
        gm = (lambda v: math.exp(sum(map(math.log, v)) / len(v)) if v else float("nan"))
        t.add_row(pat, str(len(q)), f"{gm(q):.2f}x", str(len(q50)), f"{gm(q50):.2f}x",
                  f"{max(q50):.2f}x" if q50 else "-")
    console.print(t)


# ---------------------------------------------------------------------------------------------
# pool: fused conv + ReLU + max-pool vs conv then max_pool2d
# ---------------------------------------------------------------------------------------------
POOL_LAYERS = {  # name: (C, H, W, K, R, stride, padding, pool k, pool s)
    "alexnet conv1": (3, 224, 224, 64, 11, 4, 2, 3, 2),
    "alexnet conv2": (64, 27, 27, 192, 5, 1, 2, 3, 2),
    "alexnet conv5": (256, 13, 13, 256, 3, 1, 1, 3, 2),
    "vgg16 conv1_2": (64, 224, 224, 64, 3, 1, 1, 2, 2),
    "vgg16 conv2_2": (128, 112, 112, 128, 3, 1, 1, 2, 2),
    "vgg16 conv3_3": (256, 56, 56, 256, 3, 1, 1, 2, 2),
    "vgg16 conv4_3": (512, 28, 28, 512, 3, 1, 1, 2, 2),
    "vgg16 conv5_3": (512, 14, 14, 512, 3, 1, 1, 2, 2),
}


def cmd_pool(args):
    gen = torch.Generator().manual_seed(0)
    rows = []
    for lname in args.pool_layers:
        c, h, w_, k, r, s, p, pk, ps = POOL_LAYERS[lname]
        wt = sparse_weight((k, c, r, r), args.sparsity, gen)
        wsp = sparsecnn.to_sparse(wt, "csr")
        x = act_input((args.batch, c, h, w_), 0.5, "random", gen) if lname != "alexnet conv1" \
            else torch.randn(args.batch, c, h, w_, generator=gen)
        _, prob, _, _ = sparsecnn.functional.conv2d_pool_problem(
            x, wsp, None, s, p, 1, 1, True, pool_kernel=pk, pool_stride=ps)
        names = [kk.name for kk in registry.candidates(prob, wsp) if kk.name != "dense"]
        fns = {"dense": lambda: F.max_pool2d(F.relu(F.conv2d(x, wt, None, s, p)), pk, ps)}
        for n in names:
            fns[n] = (lambda n=n: sparsecnn.functional.conv2d_pool(
                x, wsp, None, s, p, relu=True, pool_kernel=pk, pool_stride=ps, algo=n))
        ref = fns["dense"]()
        for n in names:
            assert float((fns[n]() - ref).abs().max()) <= 1e-3 * max(1, float(ref.abs().max())), n
        t = measure(fns, warmup=2, min_time=0.1, max_time=0.8)
        ms = {kk: v.ms for kk, v in t.items()}
        rows.append({"layer": lname, "weight_sparsity": args.sparsity, "batch": args.batch,
                     "ms": ms})
        unfused = {kk: v for kk, v in ms.items() if kk in registry.names("conv2d") and kk != "dense"}
        best_unfused = min(unfused, key=unfused.get) if unfused else None
        fused = {kk: v for kk, v in ms.items() if kk not in registry.names("conv2d")}
        line = " | ".join(f"{kk} {v:.3f}" for kk, v in ms.items())
        extra = ""
        if best_unfused and fused:
            bf = min(fused, key=fused.get)
            extra = (f" => best fused {bf} {ms[best_unfused] / ms[bf]:.2f}x over "
                     f"{best_unfused}+max_pool2d")
        console.print(f"{lname:<15} b{args.batch}: {line} ms{extra}")
    return rows


# ---------------------------------------------------------------------------------------------
# hybrid
# ---------------------------------------------------------------------------------------------
def cmd_hybrid(args):
    from sparsecnn.kernels import hybrid

    gen = torch.Generator().manual_seed(0)
    rows = []
    cases = []
    for lname in ("conv3", "conv4", "conv5"):
        c, h, w_, k, r, s, p = ALEXNET[lname]
        for block in (0.25, 0.5):  # share of K and of C in the planted dense block
            wt = sparse_weight((k, c, r, r), 0.95, gen)
            kb, cb = int(k * block), int(c * block)
            wt[:kb, :cb] = torch.randn(kb, cb, r, r, generator=gen)
            cases.append((f"alexnet {lname} 95% + dense {kb}x{cb} block", wt, (s, p),
                          (1, c, h, w_)))
    x_img = cifar_images(1)
    m = prune_model(resnet("resnet56"), 0.9)
    for n, mm in m.named_modules():
        if isinstance(mm, torch.nn.Conv2d) and n in ("layer1.0.conv1", "layer2.4.conv1",
                                                        "layer3.8.conv2"):
            cases.append((f"resnet56 {n} 90% magnitude-pruned", mm.weight.detach(),
                          (mm.stride, mm.padding), None))
    inputs = {}
    hs = [mm.register_forward_pre_hook(lambda _m, a, n=n: inputs.setdefault(n, a[0].clone()))
          for n, mm in m.named_modules() if isinstance(mm, torch.nn.Conv2d)]
    with torch.no_grad():
        m(x_img)
    for hh in hs:
        hh.remove()
    for label, wt, geom, shape in cases:
        wsp = sparsecnn.to_sparse(wt.contiguous(), "csr")
        if shape is None:
            x = inputs[label.split()[1]].contiguous()
        else:
            x = act_input(shape, 0.5, "random", gen)
        why = hybrid._weight_check(wsp, None)
        blocks = hybrid.weight_blocks(wsp)
        if why:
            console.print(f"{label}: hybrid not a candidate ({why})")
            rows.append({"case": label, "candidate": False, "why": why})
            continue
        ms, _ = time_conv(x, wt, wsp, geom, [*WEIGHT_ONLY, "hybrid"])
        best_sparse = min((k for k in ms if k not in ("dense", "hybrid")), key=ms.get)
        rows.append({"case": label, "candidate": True, "ms": ms, "block_share": blocks["share"],
                     "nblocks": len(blocks["blocks"])})
        console.print(f"{label}: blocks {len(blocks['blocks'])} holding {blocks['share']:.0%} of "
                      f"nnz; dense {ms['dense']:.3f} ms, {best_sparse} {ms[best_sparse]:.3f} ms, "
                      f"hybrid {ms['hybrid']:.3f} ms => hybrid {ms['dense'] / ms['hybrid']:.2f}x "
                      f"dense, {ms[best_sparse] / ms['hybrid']:.2f}x {best_sparse}")
    return rows


# ---------------------------------------------------------------------------------------------
# e2e
# ---------------------------------------------------------------------------------------------
#: the kernels this issue adds; "before" tunes without them (and without pool fusion): main's
#: engine, the same process
NEW_KERNELS = ("hybrid", "sparse_sparse", "fused_ref", "fused_direct", "fused_dense", "direct_live")


class without_kernels:
    """Context: the named kernels unregistered (every op), registered again on exit."""

    def __init__(self, names):
        self.names, self.saved = set(names), []

    def __enter__(self):
        for op in ("conv2d", "conv2d_pool"):
            for k in registry.kernels(op):
                if k.name in self.names:
                    self.saved.append(k)
                    registry.unregister(op, k.name)
        return self

    def __exit__(self, *exc):
        for k in self.saved:
            registry.register(k)
        return False


def _sparsified(model, xb, *, new: bool):
    import sparsecnn.nn as snn

    sm = copy.deepcopy(model).eval()
    t0 = time.perf_counter()
    if new:
        snn.sparsify_(sm, example_input=xb, use_cache=False)
    else:
        with without_kernels(NEW_KERNELS):
            snn.sparsify_(sm, example_input=xb, use_cache=False, fuse_pool=False)
    return sm, snn.compact(sm), time.perf_counter() - t0


def _split(table, total_ms):
    """How a sparse model's time divides: its tuned sparse layers (chosen kernel, per-layer
    medians from tuning), and the rest (layers left dense, pooling, adds, glue)."""
    tuned = [r for r in table if r.get("chosen_ms") is not None]
    chosen = sum(r["chosen_ms"] for r in tuned)
    dense = sum(r["dense_ms"] for r in tuned)
    return {"tuned_layers": len(tuned), "layers_chosen_ms": chosen, "layers_dense_ms": dense,
            "rest_ms": total_ms - chosen}


def _e2e(label, model, x, batches, top=6):
    import sparsecnn.nn as snn

    rows = []
    dense = copy.deepcopy(model).eval()
    fused_dense = copy.deepcopy(model).eval()
    snn.fold_batchnorm(fused_dense)
    for b in batches:
        xb = x[:b].contiguous()
        variants = {"before": _sparsified(model, xb, new=False),
                    "after": _sparsified(model, xb, new=True)}
        with torch.no_grad():
            ref = dense(xb)
            errs = {k: float((gm(xb) - ref).abs().max()) for k, (_, gm, _) in variants.items()}
        with torch.inference_mode():
            t = measure({"dense": lambda: dense(xb), "dense+BN folded": lambda: fused_dense(xb),
                         **{f"sparse {k}": (lambda gm=gm: gm(xb))
                            for k, (_, gm, _) in variants.items()}},
                        warmup=2, min_time=0.3, max_time=3.0)
        ms = {k: v.ms for k, v in t.items()}
        row = {"model": label, "batch": b, "ms": ms, "max_abs_err": errs}
        for k, (sm, _, tune_s) in variants.items():
            table = snn.layer_table(sm, batch=b)
            kinds = {}
            for r in table:
                kinds[r["kernel"]] = kinds.get(r["kernel"], 0) + 1
            row[k] = {"tune_s": tune_s, "kernels": kinds, "split": _split(table, ms[f"sparse {k}"]),
                      "layers": [{kk: r.get(kk) for kk in ("name", "kernel", "dense_ms",
                                                            "chosen_ms", "speedup", "sparsity",
                                                            "candidates")} for r in table]}
        rows.append(row)
        _print_e2e(row, top)
    return rows


def _print_e2e(row, top):
    ms, b = row["ms"], row["batch"]
    t = Table(title=f"{row['model']}, batch {b}: medians, ratios over dense PyTorch (one run)")
    for c in ("variant", "ms", "x dense", "x dense BN-folded", "max|err|", "kernels",
              "tuned layers ms (chosen / dense)", "rest ms", "tuned in s"):
        t.add_column(c, justify="right")
    t.add_row("dense PyTorch", f"{ms['dense']:.3f}", "1.00", "", "", "", "", "", "")
    t.add_row("dense, BN folded", f"{ms['dense+BN folded']:.3f}",
              f"{ms['dense'] / ms['dense+BN folded']:.2f}", "1.00", "", "", "", "", "")
    for k in ("before", "after"):
        v, sp = row[k], row[k]["split"]
        t.add_row(f"sparse {k}", f"{ms['sparse ' + k]:.3f}", f"{ms['dense'] / ms['sparse ' + k]:.2f}",
                  f"{ms['dense+BN folded'] / ms['sparse ' + k]:.2f}", f"{row['max_abs_err'][k]:.2g}",
                  ", ".join(f"{n} {c}" for n, c in v["kernels"].items()),
                  f"{sp['layers_chosen_ms']:.3f} / {sp['layers_dense_ms']:.3f} "
                  f"({sp['tuned_layers']} layers)", f"{sp['rest_ms']:.3f}", f"{v['tune_s']:.0f}")
    console.print(t)
    layers = sorted(row["after"]["layers"], key=lambda r: -(r["chosen_ms"] or 0))[:top]
    lt = Table(title=f"the {top} slowest tuned layers after (batch {b})")
    for c in ("layer", "sparsity", "kernel", "chosen ms", "dense ms", "x", "other candidates ms"):
        lt.add_column(c, justify="right")
    for r in layers:
        if r["chosen_ms"] is None:
            continue
        cands = ", ".join(f"{n} {v:.3f}" for n, v in (r.get("candidates") or {}).items()
                          if n != r["kernel"] and v is not None)
        lt.add_row(r["name"], f"{r['sparsity']:.2f}", r["kernel"], f"{r['chosen_ms']:.3f}",
                   f"{r['dense_ms']:.3f}", f"{r['dense_ms'] / r['chosen_ms']:.2f}", cands)
    console.print(lt)


def cmd_e2e(args):
    rows = []
    if "resnet56" in args.models:
        x = cifar_images(max(args.resnet_batches))
        rows += _e2e("resnet56 (published weights, 90% pruned, real CIFAR-10)",
                     prune_model(resnet("resnet56"), 0.9), x, args.resnet_batches)
    if "resnet20" in args.models:
        x = cifar_images(max(args.resnet_batches))
        rows += _e2e("resnet20 (published weights, 90% pruned, real CIFAR-10)",
                     prune_model(resnet("resnet20"), 0.9), x, args.resnet_batches)
    if "alexnet" in args.models:
        torch.manual_seed(2)
        x = torch.randn(max(args.alexnet_batches), 3, 224, 224)
        rows += _e2e("alexnet (random-init, 90% pruned, random inputs)", alexnet_pruned(0.9), x,
                     args.alexnet_batches)
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path, default=None, help="write the rows here")
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("stats")
    s.add_argument("--images", type=int, default=256)
    s.add_argument("--alexnet-images", type=int, default=8)
    s.add_argument("--sparsity", type=float, default=0.9)
    s = sub.add_parser("layers")
    s.add_argument("--alexnet-layers", nargs="*", default=list(ALEXNET))
    s.add_argument("--weight-sparsity", type=float, nargs="*", default=[0.8, 0.9, 0.95])
    s.add_argument("--act-sparsity", type=float, nargs="*", default=[0.25, 0.5, 0.7, 0.9])
    s.add_argument("--batch", type=int, default=1)
    s.add_argument("--no-real", dest="real", action="store_false")
    s = sub.add_parser("pool")
    s.add_argument("--pool-layers", nargs="*", default=list(POOL_LAYERS))
    s.add_argument("--sparsity", type=float, default=0.9)
    s.add_argument("--batch", type=int, default=1)
    sub.add_parser("hybrid")
    s = sub.add_parser("e2e")
    s.add_argument("--models", nargs="*", default=["resnet56", "alexnet"])
    s.add_argument("--resnet-batches", type=int, nargs="*", default=[1, 64])
    s.add_argument("--alexnet-batches", type=int, nargs="*", default=[1, 8])
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    import numba
    numba.set_num_threads(min(args.threads, numba.config.NUMBA_NUM_THREADS))
    console.print(f"sparsecnn {sparsecnn.__version__}, torch {torch.__version__}, "
                  f"{args.threads} threads, target {sparsecnn.kernels.capabilities.target().describe()}")
    rows = {"stats": cmd_stats, "layers": cmd_layers, "pool": cmd_pool, "hybrid": cmd_hybrid,
            "e2e": cmd_e2e}[args.cmd](args)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1, default=float))


if __name__ == "__main__":
    main()
