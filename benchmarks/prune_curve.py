"""Accuracy-vs-sparsity curves of the pruning methods at an equal training budget.

ResNet-20 with the published weights, the shared CIFAR-10 subsets: every method trains on the
same 90 % of the 4660-image training subset (the other 10 %, stratified, seeded, is the
validation set that only the evolutionary selection looks at) with the same recipe
(:func:`sparsecnn.prune.recipes.resnet20_cifar_90`: distillation, crop + flip, SGD lr 0.02
cosine, the cubic ramp of the total conv sparsity over the first 60 % of the steps) and the same
number of optimizer steps (``--epochs`` x 33 batches of 128); only the pruning method differs.
Top-1 is measured once, at the end, on the 846-image test subset.

Methods: ``agp-layer`` (AGP, every conv layer at the same sparsity), ``agp-global`` (AGP, one
global magnitude threshold), ``evolutionary`` (:class:`sparsecnn.prune.EvolutionaryPruner`).

    PYTHONPATH=src python benchmarks/prune_curve.py run --out DIR --epochs 20 \\
        --methods agp-layer agp-global evolutionary --sparsities 0.9 0.92 0.94 0.96
    PYTHONPATH=src python benchmarks/prune_curve.py plot --out DIR

    PYTHONPATH=src flock /tmp/sparsecnn-cpu.lock python benchmarks/prune_curve.py speed \
        --out DIR --names NAME ... --batch-sizes 1 16

``speed`` sparsifies the saved models (BatchNorm folded, ReLU fused, each layer's kernel tuned
on its real input, fx-compacted: what ``sparsecnn optimize`` runs) and times them end to end in
one process, beside the dense model (BatchNorm folded), with the project's timing harness;
it writes ``DIR/speed.json`` and prints the speedups (ratios from this one run).

``run`` appends one JSON file per point to ``DIR/points/`` (an existing point is skipped, so an
interrupted run resumes) and saves the pruned weights to ``DIR/models/``; ``plot`` writes
``DIR/curve.csv`` and ``DIR/curve.png``.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

import torch

from sparsecnn._atomic import atomic_path
from sparsecnn.prune import EvolutionConfig, recipes

METHODS = {
    "agp-layer": dict(method="magnitude", scope="layer"),
    "agp-global": dict(method="magnitude", scope="global"),
    "evolutionary": dict(method="evolutionary", scope="layer"),
}


#: starting weights (published, ../shared/data/resnet_cifar10) of the models the curve runs on
WEIGHTS = {"resnet20": "resnet20-12fca82f.th", "resnet56": "resnet56-4bfd9763.th"}


def _point_name(method, sparsity, epochs, seed, tag, model="resnet20"):
    return f"{'' if model == 'resnet20' else model + '-'}{method}-s{sparsity:.3f}-e{epochs}-seed{seed}{('-' + tag) if tag else ''}"


def run_point(out: Path, method: str, sparsity: float, epochs: int, seed: int, evo: dict,
              tag: str, threads: int, model: str = "resnet20", overrides: dict | None = None
              ) -> dict:
    torch.set_num_threads(threads)
    recipe = recipes.resnet20_cifar_90(final_sparsity=sparsity, epochs=epochs, seed=seed,
                                       val_fraction=0.1, evolution=EvolutionConfig(**evo),
                                       **METHODS[method])
    if model != "resnet20":
        recipe = recipe.replace(model=model, weights=WEIGHTS[model])
    recipe = recipes.apply_overrides(recipe, overrides or {})
    t0 = time.perf_counter()
    res = recipes.run_recipe(recipe, progress=True)  # rich: the evolution logs each iteration
    seconds = time.perf_counter() - t0
    name = _point_name(method, sparsity, epochs, seed, tag, model)
    row = {"name": name, "model": model, "method": method, "tag": tag,
           "recipe_overrides": overrides or {}, "target_sparsity": sparsity,
           "epochs": epochs, "seed": seed, "steps": res["schedule"]["total_steps"],
           "top1": res["top1"], "dense_top1": res["dense_top1"],
           "conv_sparsity": res["pruned_sparsity"], "layer_sparsity": res["sparsity"],
           "seconds": seconds, "threads": threads, "data": res["data"],
           "evolution": res.get("evolution"), "evo_config": evo if method == "evolutionary" else None}
    (out / "models").mkdir(parents=True, exist_ok=True)
    recipes.save_pruned(res["model"], out / "models" / f"{name}.pt", top1=res["top1"],
                        recipe=repr(recipe))
    with atomic_path(out / "points" / f"{name}.json") as tmp:
        tmp.write_text(json.dumps(row, indent=1, default=str))
    return row


def plot(out: Path) -> None:
    rows = [json.loads(p.read_text()) for p in sorted((out / "points").glob("*.json"))]
    if not rows:
        raise SystemExit(f"no points in {out / 'points'}")
    rows.sort(key=lambda r: (r["method"], r["tag"], r["epochs"], r["target_sparsity"], r["seed"]))
    with atomic_path(out / "curve.csv") as tmp, open(tmp, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["method", "tag", "epochs", "steps", "seed", "target_sparsity",
                    "conv_sparsity", "top1", "correct_of_846", "seconds", "rejected", "rewinds"])
        for r in rows:
            ev = (r.get("evolution") or {}).get("counts", {})
            w.writerow([r["method"], r["tag"], r["epochs"], r["steps"], r["seed"],
                        f"{r['target_sparsity']:.3f}", f"{r['conv_sparsity']:.4f}",
                        f"{r['top1']:.4f}", round(r["top1"] * 846), f"{r['seconds']:.0f}",
                        ev.get("rejected", ""), ev.get("rewinds", "")])
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    groups = {}
    for r in rows:
        groups.setdefault((r["method"], r["tag"], r["epochs"]), []).append(r)
    for (method, tag, epochs), rs in sorted(groups.items()):
        rs.sort(key=lambda r: r["conv_sparsity"])
        label = f"{method}{(' ' + tag) if tag else ''}, {epochs} epochs ({rs[0]['steps']} steps)"
        ax.plot([100 * r["conv_sparsity"] for r in rs], [100 * r["top1"] for r in rs],
                marker="o", label=label)
    ax.axhline(100 * rows[0]["dense_top1"], color="grey", ls=":", label="dense (published)")
    ax.axhline(88.0, color="red", ls="--", lw=0.8, label="goal: 88 % at >= 92 %")
    ax.axvline(92.0, color="red", ls="--", lw=0.8)
    ax.set_xlabel("conv weight sparsity (%)")
    ax.set_ylabel("top-1 on the 846-image CIFAR-10 test subset (%)")
    ax.set_title("ResNet-20: accuracy vs sparsity at an equal training budget")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(out / "curve.png") as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    print((out / "curve.csv").read_text())


def speed(out: Path, names: list[str], batch_sizes: list[int], threads: int,
          time_s: float) -> dict:
    import copy

    from sparsecnn import data, models
    from sparsecnn import nn as snn
    from sparsecnn.pipeline import _batch, time_models
    from sparsecnn.prune import sparsity_of

    torch.set_num_threads(threads)
    _, test = data.cifar10_subsets()
    images = test.tensors[0]
    rows = {json.loads(p.read_text())["name"]: json.loads(p.read_text())
            for p in (out / "points").glob("*.json")}
    missing = [n for n in names if n not in rows]
    if missing:
        raise SystemExit(f"no points named {missing} in {out / 'points'}")
    arch = {rows[n].get("model", "resnet20") for n in names}
    if len(arch) != 1:
        raise SystemExit(f"time one architecture at a time, got {sorted(arch)}")
    arch = arch.pop()
    dense = models.build(arch).eval()
    models.load_weights(dense, models.published_weights(WEIGHTS[arch]))
    snn.fold_batchnorm(dense)
    sparse, info = {}, {}
    for n in names:
        m = models.build(arch)
        models.load_weights(m, out / "models" / f"{n}.pt")
        m.eval()
        with torch.inference_mode():
            ref = m(images[:256]).argmax(1)
        s = copy.deepcopy(m)
        t0 = time.perf_counter()
        snn.sparsify_(s, tune=True, example_input=_batch(images, batch_sizes[0]), min_sparsity=0.5)
        for b in batch_sizes[1:]:
            snn.tune_(s, _batch(images, b))
        tune_s = time.perf_counter() - t0
        try:
            s = snn.compact(s)
        except TypeError:
            pass
        with torch.inference_mode():
            agree = float((s(images[:256]).argmax(1) == ref).float().mean())
        sparse[n] = s
        info[n] = {"tune_seconds": tune_s, "prediction_agreement_256": agree,
                   "top1": rows[n]["top1"], "conv_sparsity": rows[n]["conv_sparsity"],
                   "layer_sparsity": sparsity_of(m)}
        print(f"{n}: sparsified + tuned in {tune_s:.0f} s, predictions agree {agree:.2%}",
              flush=True)
    timing = {}
    for b in batch_sizes:
        t = time_models({"dense": dense, **sparse}, _batch(images, b), min_time_s=time_s)
        timing[str(b)] = t
    result = {"model": arch, "threads": threads, "batch_sizes": batch_sizes, "models": info,
              "latency": timing,
              "note": "dense = the published model, BatchNorm folded, PyTorch; speedup = dense "
                      "median / sparse median, one process, sparsecnn.timing.measure"}
    with atomic_path(out / "speed.json") as tmp:
        tmp.write_text(json.dumps(result, indent=1, default=str))
    print("| model | conv sparsity | top-1 | " +
          " | ".join(f"batch {b} ms | speedup" for b in batch_sizes) + " |")
    print("| --- " * (3 + 2 * len(batch_sizes)) + "|")
    for n in ["dense", *names]:
        cells = [n, "0" if n == "dense" else f"{info[n]['conv_sparsity']:.4f}",
                 "-" if n == "dense" else f"{info[n]['top1']:.4f}"]
        for b in batch_sizes:
            t = timing[str(b)]
            cells += [f"{t[n]['median_ms']:.3f}",
                      f"{t['dense']['median_ms'] / t[n]['median_ms']:.2f}x"]
        print("| " + " | ".join(cells) + " |")
    return result


def _pairs(items) -> dict:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"expected KEY=VALUE, got {item!r}")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--out", type=Path, required=True)
    r.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    r.add_argument("--sparsities", type=float, nargs="+", default=[0.9, 0.92, 0.94, 0.96])
    r.add_argument("--epochs", type=int, default=20)
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--threads", type=int, default=2)
    r.add_argument("--evo", action="append", default=[], metavar="KEY=VALUE",
                   help="EvolutionConfig field (JSON value), repeatable")
    r.add_argument("--tag", default="", help="label of this variant in the table and plot")
    r.add_argument("--model", default="resnet20", choices=list(WEIGHTS))
    r.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                   help="override a recipe field (kd_alpha=0, prunes_per_epoch=4, ...; "
                        "JSON value), repeatable; the same for every method of the run")
    p = sub.add_parser("plot")
    p.add_argument("--out", type=Path, required=True)
    q = sub.add_parser("speed")
    q.add_argument("--out", type=Path, required=True)
    q.add_argument("--names", nargs="+", required=True, help="point names (DIR/points/NAME.json)")
    q.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 16])
    q.add_argument("--threads", type=int, default=2)
    q.add_argument("--time-s", type=float, default=1.0, help="timing per model and batch size")
    args = ap.parse_args(argv)
    if args.cmd == "speed":
        speed(args.out, args.names, args.batch_sizes, args.threads, args.time_s)
        return 0
    if args.cmd == "plot":
        plot(args.out)
        return 0
    evo, overrides = _pairs(args.evo), _pairs(args.overrides)
    for s in args.sparsities:
        for method in args.methods:
            name = _point_name(method, s, args.epochs, args.seed, args.tag, args.model)
            if (args.out / "points" / f"{name}.json").exists():
                print(f"{name}: done already", flush=True)
                continue
            row = run_point(args.out, method, s, args.epochs, args.seed, evo, args.tag,
                            args.threads, args.model, overrides)
            print(f"{name}: top-1 {row['top1']:.4f} conv sparsity {row['conv_sparsity']:.4f} "
                  f"in {row['seconds']:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
