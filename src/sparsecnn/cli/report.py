"""``sparsecnn report``: the sparsity analysis and visual report of a model or one conv layer.

Examples
--------
The seed's case study (AlexNet conv4, 256 x 384 x 3 x 3, 99.3 % sparse; random init, since no
pretrained AlexNet is available here)::

    sparsecnn report --arch alexnet --layer conv4 --sparsity 0.993

A trained CIFAR-10 ResNet-20, magnitude-pruned to 90 % per conv layer, activations measured on
the shared CIFAR-10 test subset::

    sparsecnn report --arch resnet20 --weights ../shared/data/resnet_cifar10/resnet20-12fca82f.th \\
        --sparsity 0.9
"""

from __future__ import annotations

import argparse
import datetime as _dt
import os
import platform
import time

from .main import UsageError

INPUT_SHAPES = {"resnet": (3, 32, 32), "alexnet": (3, 224, 224), "vgg16": (3, 224, 224),
                "smallcnn": (1, 8, 8)}


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "report", help="sparsity analysis and visual report (HTML + PNG/SVG + CSV/JSON)",
        description=(
            "Analyse the conv layers of a model (or one layer): Distiller-style sparsity summary, "
            "filter-grid density, load balance across threads, dense sub-blocks and a hybrid "
            "dense+sparse plan, a pruning-threshold sweep, ineffectual work (zero weights and "
            "activations) and, with --bench, break-even curves. Writes a folder with a "
            "self-contained index.html, PNG/SVG figures and CSV/JSON data."),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=("examples:\n  sparsecnn report --arch alexnet --layer conv4 --sparsity 0.993\n"
                "  sparsecnn report --arch resnet20 --weights "
                "../shared/data/resnet_cifar10/resnet20-12fca82f.th --sparsity 0.9"))
    p.add_argument("--arch", required=True, help="model name (sparsecnn.models.NAMES)")
    p.add_argument("--weights", help="checkpoint (.th/.pt state dict; a pruned one is fine). "
                   "Default: random initialisation (the report says so)")
    p.add_argument("--sparsity", type=float, default=None,
                   help="magnitude-prune every conv layer to this sparsity first (e.g. 0.993); "
                   "default: keep the weights as loaded")
    p.add_argument("--prune-scope", choices=("layer", "global"), default="layer",
                   help="per-layer sparsity or one global threshold (default: layer)")
    p.add_argument("--layer", action="append", metavar="NAME",
                   help="conv layer to report on (repeatable); default: every conv layer")
    p.add_argument("--data", metavar="NPZ", help="images + labels (.npz, CIFAR-10 subset format) "
                   "for activation zeros and accuracy; default for ResNets: the shared CIFAR-10 "
                   "test subset when present; otherwise random inputs, labelled as such")
    p.add_argument("--threads", type=int, default=None,
                   help="threads for timings and the load-balance analysis (default: all cores)")
    p.add_argument("--out", help="output folder (default: report-<arch>[-<layer>])")
    p.add_argument("--bench", action="store_true", help="add break-even curves (slow: times "
                   "every sparse kernel at 7 sparsities)")
    p.add_argument("--format", default="csr",
                   help="sparse format of the sparse kernel in the hybrid plan (default csr)")
    p.add_argument("--images", type=int, default=64, help="images for activation zeros (64)")
    p.add_argument("--eval-images", type=int, default=256,
                   help="images for the accuracy axis of the threshold sweep (256)")
    p.add_argument("--block-threshold", type=float, default=0.5,
                   help="minimum density of a dense sub-block (0.5)")
    p.add_argument("--tile", type=int, nargs=2, default=(16, 16), metavar=("ROWS", "COLS"),
                   help="tile of the dense-block search, in filters (16 16)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random init / inputs (0)")
    p.add_argument("--no-static", action="store_true", help="skip the PNG/SVG figures")
    p.set_defaults(func=run)


def _input_shape(arch: str) -> tuple[int, ...]:
    for prefix, shape in INPUT_SHAPES.items():
        if arch.startswith(prefix):
            return shape
    return (3, 224, 224)


def _positive(value, name):
    if value is not None and value < 1:
        raise UsageError(f"--{name} must be >= 1, got {value}")


def _load_data(args, arch, torch):
    """(images, labels or None, description)."""
    from .. import data as sdata

    if args.data:
        ds = sdata.load_npz(args.data)
        images, labels = ds.tensors[0], ds.tensors[1]
        return images, labels, f"{args.data} ({images.shape[0]} images)"
    if arch.startswith("resnet") and sdata.shared_data_dir() is not None:
        _, test = sdata.cifar10_subsets()
        images, labels = test.tensors[0], test.tensors[1]
        return images, labels, f"CIFAR-10 test subset (shared data, {images.shape[0]} images)"
    g = torch.Generator().manual_seed(args.seed)
    n = min(args.images, 4) if _input_shape(arch)[1] > 64 else args.images
    images = torch.randn((n, *_input_shape(arch)), generator=g)
    return images, None, (f"random N(0, 1) inputs, {n} images of {'x'.join(map(str, _input_shape(arch)))}"
                          " — NOT real data (none available for this model)")


def run(args) -> int:
    t_start = time.perf_counter()
    import numba
    import torch
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from .. import analysis, models
    from ..formats import FORMATS
    from ..report import write_report

    _positive(args.threads, "threads")
    _positive(args.images, "images")
    _positive(args.eval_images, "eval-images")
    if args.format not in FORMATS:
        raise UsageError(f"unknown --format {args.format!r}; expected one of {sorted(FORMATS)}")
    if args.sparsity is not None and not 0.0 <= args.sparsity < 1.0:
        raise UsageError(f"--sparsity must be in [0, 1), got {args.sparsity}")
    threads = args.threads or os.cpu_count() or 1
    if threads > numba.config.NUMBA_NUM_THREADS:
        raise UsageError(f"--threads {threads} exceeds Numba's maximum ({numba.config.NUMBA_NUM_THREADS})")
    torch.set_num_threads(threads)
    numba.set_num_threads(threads)
    torch.manual_seed(args.seed)

    arch = args.arch.lower()
    model = models.build(arch)          # ValueError listing the known names
    model.eval()
    if args.weights:
        models.load_weights(model, args.weights)
        weights_note = f"trained weights from {args.weights}"
    else:
        weights_note = (f"random initialisation (torch default init, seed {args.seed}): no pretrained "
                        f"{arch} weights are available here, so the pattern is that of random weights")
    layers = analysis.resolve_layers(model, args.layer)   # ValueError listing the conv layers
    convs = analysis.conv_modules(model)
    original = {n: convs[n].weight.detach().clone().numpy() for n in layers}
    if args.sparsity is not None:
        from .. import prune

        prune.magnitude_prune_(model, args.sparsity, scope=args.prune_scope, layers=list(convs))
        prune.finalize_(model)
        prune_note = (f"one-shot unstructured magnitude pruning to {args.sparsity:g} "
                      f"({args.prune_scope} scope) of every conv layer, not retrained")
    else:
        prune_note = "none applied (weights as loaded)"
    images, labels, data_note = _load_data(args, arch, torch)

    err = Console(stderr=True)
    columns = (TextColumn("{task.description:<34}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
               TimeElapsedColumn())
    with Progress(*columns, console=err, transient=False, disable=not err.is_terminal) as progress:
        data = analysis.analyse_model(
            model, layers, inputs=images, labels=labels, input_source=data_note,
            sweep_weights=original, threads=threads, format=args.format,
            block_threshold=args.block_threshold, block_tile=tuple(args.tile), bench=args.bench,
            eval_images=args.eval_images, activation_images=args.images, progress=progress)
        scope = args.layer[0] if args.layer and len(args.layer) == 1 else (
            ", ".join(args.layer) if args.layer else f"all {len(layers)} conv layers")
        meta = {
            "title": f"sparsecnn report: {arch}, {scope}",
            "architecture": arch, "layers": scope, "weights": weights_note, "pruning": prune_note,
            "input data": data_note, "threads": threads, "sparse format (hybrid plan)": args.format,
            "detail layer(s)": ", ".join(data["detail_layers"]),
            "machine": f"{platform.machine()} {platform.processor() or ''}, {os.cpu_count()} cores",
            "versions": f"torch {torch.__version__}, numba {numba.__version__}, python {platform.python_version()}",
            "generated": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
            "options": " ".join(f"--{k.replace('_', '-')}={v}" for k, v in sorted(vars(args).items())
                                if k not in ("func", "command") and v not in (None, False)),
        }
        out = args.out or f"report-{arch}" + (f"-{args.layer[0]}" if args.layer and len(args.layer) == 1 else "")
        path = write_report(data, out, meta, static=not args.no_static, progress=progress)
    total = time.perf_counter() - t_start
    bench_s = data["timings_s"].get("break-even benchmark (slow)", 0.0)
    tot = data["summary"][-1]
    print(f"report written to {path}/index.html")
    print(f"layers: {scope}; density {100 * tot['density']:.3f} % ({tot['nnz']} nnz of {tot['numel']})")
    print(f"weights: {weights_note}; pruning: {prune_note}")
    print(f"input data: {data_note}")
    for n, h in data["hybrid"].items():
        if "unavailable" in h:
            print(f"hybrid plan {n}: unavailable ({h['unavailable']})")
        else:
            print(f"hybrid plan {n} ({len(data['blocks'][n]['blocks'])} dense blocks): dense "
                  f"{h['measured']['dense_ms']:.3f} ms, sparse {h['measured']['sparse_ms']:.3f} ms "
                  f"({h['measured']['sparse_kernel']}), hybrid est. "
                  f"{h['estimate']['hybrid_ms']:.3f} ms, measured {h['measured']['hybrid_ms']:.3f} ms")
            p = h.get("placement")
            if p:
                print(f"  heterogeneous (est., {p['gpu']}): {p['placement']}: "
                      f"{p['heterogeneous_ms']:.3f} ms (GPU part {p['gpu_part_ms']:.3f}, CPU part "
                      f"{p['cpu_part_ms']:.3f}); whole layer dense on the GPU {p['gpu_dense_ms']:.3f} ms")
    print(f"time: {total:.1f} s" + (f" ({bench_s:.1f} s of it the --bench benchmark)" if bench_s else ""))
    return 0
