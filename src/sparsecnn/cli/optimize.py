"""``sparsecnn optimize``: train/load -> prune -> sparsify + tune -> verify -> benchmark -> report.

Thin wrapper over :func:`sparsecnn.pipeline.optimize`; with no arguments it runs the embedded
default (SmallCNN on the 8x8 digits, 90 % sparse) in a few minutes.
"""

from __future__ import annotations

import argparse


def _sparsity(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"sparsity must be a number in [0, 1), got {text!r}") from None
    return v  # range checked by the pipeline (ValueError -> exit 2 with one line)


def add_parser(subparsers) -> argparse.ArgumentParser:
    from ..models import NAMES
    from ..pipeline import DEFAULT_OUT, METHODS, QUANT_METHODS
    p = subparsers.add_parser(
        "optimize", help="prune, sparsify, tune and benchmark a model (default: SmallCNN on digits)",
        description="Train or load a model, prune it, convert it to sparse kernels (tuned per "
                    "layer), verify it against the pruned dense model, time it against dense "
                    "PyTorch, and write a results folder.")
    p.add_argument("--model", default="smallcnn", choices=NAMES, help="model (default smallcnn)")
    p.add_argument("--weights", metavar="FILE", help="checkpoint (.th/.pt state dict)")
    p.add_argument("--data", metavar="NPZ",
                   help="evaluation images (npz: images uint8 (N,3,H,W), labels); without "
                        "'labels' (images uint8 or float32 (N,C,H,W)): label-free mode")
    p.add_argument("--input-shape", metavar="N,C,H,W",
                   help="label-free mode on random inputs of this shape (detection / "
                        "segmentation models, no labels): prune one-shot, sparsify, tune, "
                        "verify outputs against the pruned dense model, time, export; accuracy "
                        "is not measured. An ONNX model with a static input shape needs neither")
    p.add_argument("--train-data", metavar="NPZ", help="fine-tuning images (same npz format)")
    p.add_argument("--onnx", metavar="FILE", help="import the model from ONNX (onnx2torch)")
    p.add_argument("--export-onnx", metavar="FILE", help="write the pruned dense model to ONNX")
    p.add_argument("--sparsity", type=_sparsity, default=0.9,
                   help="target sparsity of the pruned layers, in [0, 1) (0: weights as given)")
    p.add_argument("--method", default="magnitude", choices=METHODS,
                   help="pruning method (evolutionary: with rewinding, validates on a held-out "
                        "10 %% of the training data; needs --epochs > 0)")
    p.add_argument("--epochs", type=int, default=None,
                   help="fine-tuning epochs (default 15 for smallcnn, else 0 = one-shot)")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=None, metavar="B",
                   help="batch sizes to tune and time (default 1 64; label-free: N of the input)")
    p.add_argument("--threads", type=int, default=None,
                   help="threads for PyTorch and Numba alike, 1 .. the usable cores "
                        "(default: 2, or fewer on a smaller machine)")
    p.add_argument("--format", default="csr", help="sparse weight format (default csr)")
    p.add_argument("--no-tune", action="store_true", help="heuristic kernel choice, no measuring")
    p.add_argument("--retune", action="store_true",
                   help="measure every layer again even where the tuning cache holds a decision "
                        "(and replace it), e.g. after a run on a busy machine")
    p.add_argument("--time", type=float, default=1.0, dest="time_s",
                   help="seconds of timed end-to-end runs per batch size")
    p.add_argument("--out", default=DEFAULT_OUT,
                   help=f"parent folder of the new results folder optimize-<model>-<time> "
                        f"(default {DEFAULT_OUT}; checked before any work)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quantize", nargs="+", default=list(QUANT_METHODS), metavar="METHOD",
                   choices=[*QUANT_METHODS, "none"],
                   help="quantization methods to report on the pruned model (top-1 and bytes); "
                        f"any of {', '.join(QUANT_METHODS)}, or none (default: all)")
    p.add_argument("--recipe-set", action="append", default=[], metavar="KEY=VALUE",
                   dest="recipe_set",
                   help="override a field of the gradual-pruning recipe (lr, batch_size, "
                        "kd_alpha, val_fraction, ...) or an evolutionary parameter "
                        "(evolution.beta=0.2, evolution.population_size=8, ...); VALUE is JSON "
                        "(else a string); repeatable")
    p.add_argument("--checkpoint", metavar="FILE",
                   help="resumable fine-tuning state, saved every epoch; rerun with the same "
                        "FILE to resume")
    p.set_defaults(func=run)
    return p


def run(args) -> int:
    from rich.console import Console

    from ..pipeline import optimize, print_summary
    from ..prune import distributed

    console = Console(stderr=True)
    try:
        result = _optimize(args, optimize, console)   # errors: one line, exit 2 (cli.main)
    finally:
        several_ranks = distributed.context().active
        distributed.cleanup()
    if result.get("results_dir") is not None:  # rank 0 (or one process)
        print_summary(result, Console())
    if several_ranks:   # a torchrun rank: end now, not in a finalization gloo can abort
        distributed.exit_process(0)
    return 0


def _overrides(items) -> dict:
    import json

    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--recipe-set expects KEY=VALUE, got {item!r}")
        try:
            out[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            out[key.strip()] = value
    return out


def _optimize(args, optimize, console):
    return optimize(args.model, weights=args.weights, data=args.data, train_data=args.train_data,
                    sparsity=args.sparsity, method=args.method, epochs=args.epochs,
                    batch_sizes=args.batch_sizes, threads=args.threads, format=args.format,
                    onnx=args.onnx, export_onnx=args.export_onnx, out_dir=args.out,
                    tune=not args.no_tune, retune=args.retune, seed=args.seed, time_s=args.time_s,
                    quantize=[m for m in args.quantize if m != "none"],
                    input_shape=args.input_shape, console=console,
                    recipe_overrides=_overrides(args.recipe_set), checkpoint=args.checkpoint)
