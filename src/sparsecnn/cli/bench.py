"""``sparsecnn bench``: time dense PyTorch against each sparse conv2d kernel on CNN layers.

Prints a rich table (per layer, batch, sparsity and kernel: median ms, IQR, speedup over dense,
GFLOP/s, weight bytes, max error vs dense), the break-even sparsities and the JIT compile times,
and writes a results folder (bench.csv, bench.json, speedup.png/.svg), atomically.
Run timing on a shared machine under ``flock /tmp/sparsecnn-cpu.lock``.

``--device cuda`` runs the GPU benchmark instead (:mod:`sparsecnn.bench.gpu`): cuDNN, cuSPARSE
and 2:4 against the Triton kernels, in fp16 and fp32 (docs/gpu.md); without a CUDA GPU it says
so and exits 2.
"""

from __future__ import annotations

import os
import re
import sys
import time

from ..results import DEFAULT_PARENT
from .main import UsageError


def add_parser(subparsers) -> None:
    from ..bench import DEFAULT_BATCHES, DEFAULT_SPARSITIES, DEFAULT_SUITE, DEFAULT_THREADS, SUITES
    from ..bench.core import DEFAULT_MAX_TIME, DEFAULT_MIN_TIME
    from ..bench.gpu import BASELINES, GPU_BATCHES, GPU_DTYPES, GPU_SPARSITIES

    p = subparsers.add_parser(
        "bench", help="time dense F.conv2d against the sparse kernels on CNN layers",
        description=(
            "Time dense torch.nn.functional.conv2d (oneDNN) and each sparse conv2d kernel, in one "
            "process, on layers of AlexNet / VGG-16 / ResNet-50 / ResNet-20 with random "
            "unstructured magnitude-pruned weights (seeded). Prints a table; writes bench.csv, "
            "bench.json and speedup.png/.svg to a results folder."),
    )
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                   help="cpu: dense oneDNN vs the CPU kernels; cuda: cuDNN, cuSPARSE and 2:4 vs "
                        "the Triton kernels on the GPU (docs/gpu.md) (default: %(default)s)")
    p.add_argument("--suite", default=None, metavar="SUITE",
                   help=f"layer suite: {', '.join(SUITES)} (default: {DEFAULT_SUITE}; "
                        "gpu with --device cuda)")
    p.add_argument("--layers", nargs="+", metavar="NAME",
                   help="layer names (override --suite); see --list")
    p.add_argument("--sparsity", "--sparsities", dest="sparsities", nargs="+", type=float,
                   default=None, metavar="S",
                   help=f"sparsities in [0, 1) (default: {' '.join(map(str, DEFAULT_SPARSITIES))}; "
                        f"{' '.join(map(str, GPU_SPARSITIES))} with --device cuda)")
    p.add_argument("--batch", nargs="+", type=int, default=None, metavar="N",
                   help=f"batch sizes (default: {' '.join(map(str, DEFAULT_BATCHES))}; "
                        f"{' '.join(map(str, GPU_BATCHES))} with --device cuda)")
    p.add_argument("--dtype", nargs="+", default=None, metavar="DTYPE",
                   help=f"--device cuda: input dtypes (default: {' '.join(GPU_DTYPES)})")
    p.add_argument("--baselines", nargs="+", default=None, metavar="NAME",
                   help=f"--device cuda: vendor baselines ({', '.join(BASELINES)}; cudnn is "
                        "always timed; default: all)")
    p.add_argument("--time-budget", type=float, default=None, metavar="S",
                   help="--device cuda: start no case after S seconds of sweep (the cases left "
                        "out are listed); default: none")
    p.add_argument("--threads", type=int, default=DEFAULT_THREADS,
                   help="torch and numba threads (default: %(default)s)")
    p.add_argument("--kernels", nargs="+", metavar="NAME",
                   help="sparse conv2d kernels to time (dense is always timed); default: every "
                        "registered CPU kernel that accepts CSR (the Triton kernels with "
                        "--device cuda)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights and inputs (default: 0)")
    p.add_argument("--min-time", type=float, default=None,
                   help="seconds of timed calls per provider and case before it may stop "
                        f"(default: {DEFAULT_MIN_TIME}; 0.05 with --device cuda)")
    p.add_argument("--max-time", type=float, default=None,
                   help="maximum seconds of timed calls per provider and case (default: "
                        f"{DEFAULT_MAX_TIME}; 0.25 with --device cuda)")
    p.add_argument("--target", metavar="CPU",
                   help="compile the sparse kernels for this CPU instead of the host: 'haswell' "
                        "(AVX2 + FMA), 'x86-64' (SSE2 baseline), 'skylake-avx512', any LLVM CPU "
                        "name, or 'host'; the benchmark reruns itself in a subprocess with "
                        "NUMBA_CPU_NAME / NUMBA_CPU_FEATURES set (Numba reads them at import). "
                        "Only kernels the target can run are offered; dense PyTorch is unchanged")
    p.add_argument("--out", metavar="DIR", default=DEFAULT_PARENT,
                   help="parent folder of the new results folder bench-<suite>-<time> "
                        "(default: %(default)s)")
    p.add_argument("--no-plot", action="store_true", help="skip speedup.png/.svg")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--list", action="store_true",
                   help="list suites, layers and kernels, then exit")
    p.set_defaults(func=run)


def _list(console) -> int:
    from rich.table import Table

    from ..bench import LAYERS, SUITES, sparse_kernel_names
    from ..kernels import registry
    from ..kernels.capabilities import target

    t = Table(title="layers", title_justify="left")
    for col in ("name", "C x H x W -> K, R x S, stride, pad", "suites"):
        t.add_column(col)
    for name, spec in LAYERS.items():
        suites = [s for s, names in SUITES.items() if name in names and s != "all"]
        t.add_row(name, spec.shape_str(), ", ".join(suites))
    console.print(t)
    default = set(sparse_kernel_names())
    t = Table(title=f"conv2d kernels (compiled for {target().describe()})", title_justify="left")
    for col in ("name", "formats", "devices", "default (cpu)", "runs here", "description"):
        t.add_column(col)
    for name in registry.names("conv2d"):
        k = registry.get("conv2d", name)
        why = k.unavailable()
        devs = ", ".join(f"{d} (emulated)" if k.is_emulated(d) else d for d in k.devices)
        t.add_row(name, ", ".join(k.formats), devs,
                  "yes" if name in default or name == "dense" else "",
                  "yes" if why is None else f"no: {why}", k.description)
    console.print(t)
    return 0


def _defaults(args) -> None:
    """Fill the options left unset with the defaults of the chosen device."""
    from ..bench import DEFAULT_BATCHES, DEFAULT_SPARSITIES, DEFAULT_SUITE
    from ..bench.core import DEFAULT_MAX_TIME, DEFAULT_MIN_TIME
    from ..bench.gpu import (GPU_BATCHES, GPU_DTYPES, GPU_MAX_TIME, GPU_MIN_TIME,
                             GPU_SPARSITIES, GPU_SUITE)

    gpu = args.device == "cuda"
    if args.suite is None:
        args.suite = GPU_SUITE if gpu else DEFAULT_SUITE
    if args.sparsities is None:
        args.sparsities = list(GPU_SPARSITIES if gpu else DEFAULT_SPARSITIES)
    if args.batch is None:
        args.batch = list(GPU_BATCHES if gpu else DEFAULT_BATCHES)
    if args.min_time is None:
        args.min_time = GPU_MIN_TIME if gpu else DEFAULT_MIN_TIME
    if args.max_time is None:
        args.max_time = GPU_MAX_TIME if gpu else DEFAULT_MAX_TIME
    if gpu and args.dtype is None:
        args.dtype = list(GPU_DTYPES)
    if gpu and args.target is not None:
        raise UsageError("--target applies to --device cpu only (it picks the CPU the Numba "
                         "kernels are compiled for)")
    if not gpu:
        for opt, val in (("--dtype", args.dtype), ("--baselines", args.baselines),
                         ("--time-budget", args.time_budget)):
            if val is not None:
                raise UsageError(f"{opt} applies to --device cuda only")


#: Set in the environment of a benchmark rerun for ``--target`` (so it does not rerun again).
TARGET_ENV = "SPARSECNN_BENCH_TARGET"
_CPU_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def _argv(args) -> list[str]:
    """The ``sparsecnn bench`` arguments that reproduce ``args`` (``--target`` left out)."""
    out = ["--suite", args.suite]
    if args.layers:
        out += ["--layers", *args.layers]
    out += ["--sparsity", *map(repr, args.sparsities), "--batch", *map(str, args.batch),
            "--threads", str(args.threads), "--seed", str(args.seed),
            "--min-time", repr(args.min_time), "--max-time", repr(args.max_time)]
    if args.kernels:
        out += ["--kernels", *args.kernels]
    if args.out is not None:
        out += ["--out", str(args.out)]
    out += [flag for flag, on in (("--no-plot", args.no_plot), ("--no-progress", args.no_progress),
                                  ("--list", args.list)) if on]
    return out


def target_environment(cpu: str, environ=None) -> dict:
    """The environment of a process whose Numba compiles for ``cpu`` (``"host"``: the host CPU,
    ``NUMBA_CPU_NAME`` / ``NUMBA_CPU_FEATURES`` removed; else both set, features empty: the CPU
    name's defaults).

    Raises
    ------
    UsageError
        If ``cpu`` is not a plausible LLVM CPU name.
    """
    if not _CPU_NAME.match(cpu):
        raise UsageError(f"--target must be 'host' or an LLVM CPU name such as haswell, x86-64 "
                         f"or skylake-avx512, got {cpu!r}")
    env = dict(os.environ if environ is None else environ)
    if cpu == "host":
        env.pop("NUMBA_CPU_NAME", None)
        env.pop("NUMBA_CPU_FEATURES", None)
    else:
        env["NUMBA_CPU_NAME"], env["NUMBA_CPU_FEATURES"] = cpu, ""
    env[TARGET_ENV] = cpu
    return env


def _rerun_for_target(args) -> int:
    import subprocess

    env = target_environment(args.target)
    cmd = [sys.executable, "-m", "sparsecnn", "bench", *_argv(args)]
    return subprocess.run(cmd, env=env).returncode


def run(args) -> int:
    _defaults(args)
    if args.device == "cuda" and not args.list:
        return run_gpu(args)
    return run_cpu(args)


def run_gpu(args) -> int:
    """``sparsecnn bench --device cuda``: the GPU benchmark (exit 2 without a CUDA GPU)."""
    from rich.console import Console

    from ..bench import select_layers
    from ..bench.core import _check_positive_int, _check_sparsity
    from ..bench.gpu import RTOL, cuda_unavailable, resolve_providers, sweep_gpu
    from ..bench.gpu_output import gpu_machine_info, render_gpu_tables, write_gpu_results
    from ..results import check_parent, new_folder, writing_under

    console = Console(width=None if sys.stdout.isatty() else 200)
    why = cuda_unavailable()
    if why:
        raise UsageError(f"--device cuda needs a CUDA GPU, and there is none here: {why}")
    try:
        specs = select_layers(args.suite, args.layers)
        providers = resolve_providers(args.kernels, args.baselines)
        sparsities = sorted({_check_sparsity(s) for s in args.sparsities})
        batches = [_check_positive_int(b, "batch") for b in args.batch]
        bad = [d for d in args.dtype if d not in RTOL]
        if bad:
            raise ValueError(f"unknown dtype(s) {bad}; expected some of {sorted(RTOL)}")
        if not (args.min_time > 0 and args.max_time >= args.min_time):
            raise ValueError(f"need 0 < min_time <= max_time, got {args.min_time}, {args.max_time}")
        if args.time_budget is not None and not args.time_budget > 0:
            raise ValueError(f"--time-budget must be > 0, got {args.time_budget}")
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    try:
        parent = check_parent(args.out)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    meta = {"benchmark": {"device": "cuda", "layers": [s.as_dict() for s in specs],
                          "providers": providers, "sparsities": sparsities, "batches": batches,
                          "dtypes": list(args.dtype), "seed": args.seed,
                          "min_time_s": args.min_time, "max_time_s": args.max_time,
                          "time_budget_s": args.time_budget, "mismatch_rtol": RTOL},
            "machine": gpu_machine_info()}
    t0 = time.perf_counter()
    rows, skipped = sweep_gpu(specs, sparsities, batches, args.dtype, providers,
                              progress=not args.no_progress, seed=args.seed,
                              min_time=args.min_time, max_time=args.max_time,
                              time_budget=args.time_budget)
    meta["run"] = {"elapsed_s": round(time.perf_counter() - t0, 1), "cases_run":
                   len({(r["layer"], r["N"], r["dtype"], r["sparsity"]) for r in rows}),
                   "cases_skipped_by_time_budget": len(skipped)}
    render_gpu_tables(rows, meta, console)
    name = "layers" if args.layers else f"gpu-{args.suite}"
    with writing_under(parent):
        path = write_gpu_results(rows, meta, new_folder(parent, "bench", name),
                                 plot=not args.no_plot, skipped=skipped)
    files = ", ".join(sorted(p.name for p in path.iterdir()))
    console.print(f"results: {path}/ ({files}); sweep took {meta['run']['elapsed_s']:.0f} s")
    if skipped:
        console.print(f"[bold yellow]{len(skipped)} case(s) not run: the time budget of "
                      f"{args.time_budget:g} s was spent (listed in bench.json)[/]")
    bad = [r for r in rows if r["status"].startswith("MISMATCH")
           or (r["status"].startswith("error") and r["kernel"].startswith("triton"))]
    if bad:
        console.print(f"[bold red]{len(bad)} row(s) with a Triton kernel error or an output "
                      "mismatch (see the table); exit code 1[/]")
        return 1
    return 0


def run_cpu(args) -> int:
    from rich.console import Console

    if args.target is not None and os.environ.get(TARGET_ENV) != args.target:
        return _rerun_for_target(args)

    from ..bench.job import bench

    # piped output: wide rather than wrapped (rich assumes 80 columns off a terminal)
    console = Console(width=None if sys.stdout.isatty() else 160)
    if args.list:
        return _list(console)
    res = bench(suite=args.suite, layers=args.layers, sparsities=args.sparsities,
                kernels=args.kernels, batches=args.batch, threads=args.threads, seed=args.seed,
                min_time=args.min_time, max_time=args.max_time, out=args.out,
                plot=not args.no_plot, progress=not args.no_progress, console=console)
    path = res["path"]
    files = ", ".join(sorted(p.name for p in path.iterdir()))
    console.print(f"results: {path}/ ({files}); sweep took {res['meta']['run']['elapsed_s']:.0f} s")
    if res["failed"]:
        console.print(f"[bold red]{len(res['failed'])} row(s) with a kernel output mismatch or "
                      "error (see the status column); exit code 1[/]")
        return 1
    return 0
