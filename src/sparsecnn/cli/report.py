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

from ..results import DEFAULT_PARENT


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
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--arch", help="model name (sparsecnn.models.NAMES)")
    src.add_argument("--onnx", metavar="FILE", help="an ONNX model (imported with onnx2torch; "
                     "layer names are its node names)")
    p.add_argument("--input-shape", metavar="N,C,H,W",
                   help="shape of the random inputs when there is no --data (default: the "
                        "model's, or the ONNX file's static input shape)")
    p.add_argument("--weights", help="checkpoint (.th/.pt state dict; a pruned one is fine). "
                   "Default: the published pretrained weights of resnet20 / resnet56 when the "
                   "shared data holds them (as optimize), else random initialisation (the "
                   "report says so)")
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
    p.add_argument("--out", default=DEFAULT_PARENT, metavar="DIR",
                   help="parent folder of the new report folder report-<arch>[-<layer>]-<time> "
                        "(default: %(default)s)")
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


def run(args) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from ..report.job import report, summary_lines

    err = Console(stderr=True)
    columns = (TextColumn("{task.description:<34}"), BarColumn(),
               TextColumn("{task.completed}/{task.total}"), TimeElapsedColumn())
    options = " ".join(f"--{k.replace('_', '-')}={v}" for k, v in sorted(vars(args).items())
                       if k not in ("func", "command") and v not in (None, False))
    with Progress(*columns, console=err, transient=False, disable=not err.is_terminal) as progress:
        res = report(args.arch, onnx=args.onnx, input_shape=args.input_shape,
                     weights=args.weights, sparsity=args.sparsity,
                     prune_scope=args.prune_scope, layers=args.layer, data=args.data,
                     threads=args.threads, out=args.out, bench=args.bench, format=args.format,
                     images=args.images, eval_images=args.eval_images,
                     block_threshold=args.block_threshold, tile=tuple(args.tile), seed=args.seed,
                     static=not args.no_static, options=options, progress=progress)
    for line in summary_lines(res):
        print(line)
    return 0
