"""``sparsecnn bench``: time dense PyTorch against each sparse conv2d kernel on CNN layers.

Prints a rich table (per layer, batch, sparsity and kernel: median ms, IQR, speedup over dense,
GFLOP/s, weight bytes, max error vs dense), the break-even sparsities and the JIT compile times,
and writes a results folder (bench.csv, bench.json, speedup.png/.svg), atomically.
Run timing on a shared machine under ``flock /tmp/sparsecnn-cpu.lock``.
"""

from __future__ import annotations

import os
import re
import sys

from ..results import DEFAULT_PARENT
from .main import UsageError


def add_parser(subparsers) -> None:
    from ..bench import DEFAULT_BATCHES, DEFAULT_SPARSITIES, DEFAULT_SUITE, DEFAULT_THREADS, SUITES
    from ..bench.core import DEFAULT_MAX_TIME, DEFAULT_MIN_TIME

    p = subparsers.add_parser(
        "bench", help="time dense F.conv2d against the sparse kernels on CNN layers",
        description=(
            "Time dense torch.nn.functional.conv2d (oneDNN) and each sparse conv2d kernel, in one "
            "process, on layers of AlexNet / VGG-16 / ResNet-50 / ResNet-20 with random "
            "unstructured magnitude-pruned weights (seeded). Prints a table; writes bench.csv, "
            "bench.json and speedup.png/.svg to a results folder."),
    )
    p.add_argument("--suite", default=DEFAULT_SUITE, metavar="SUITE",
                   help=f"layer suite: {', '.join(SUITES)} (default: %(default)s)")
    p.add_argument("--layers", nargs="+", metavar="NAME",
                   help="layer names (override --suite); see --list")
    p.add_argument("--sparsity", "--sparsities", dest="sparsities", nargs="+", type=float,
                   default=list(DEFAULT_SPARSITIES), metavar="S", help="sparsities in [0, 1) (default: %(default)s)")
    p.add_argument("--batch", nargs="+", type=int, default=list(DEFAULT_BATCHES), metavar="N",
                   help="batch sizes (default: %(default)s)")
    p.add_argument("--threads", type=int, default=DEFAULT_THREADS,
                   help="torch and numba threads (default: %(default)s)")
    p.add_argument("--kernels", nargs="+", metavar="NAME",
                   help="sparse conv2d kernels to time (dense is always timed); default: every "
                        "registered kernel that accepts CSR")
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights and inputs (default: 0)")
    p.add_argument("--min-time", type=float, default=DEFAULT_MIN_TIME,
                   help="seconds of timed calls per provider and case before it may stop "
                        "(default: %(default)s)")
    p.add_argument("--max-time", type=float, default=DEFAULT_MAX_TIME,
                   help="maximum seconds of timed calls per provider and case (default: %(default)s)")
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
    for col in ("name", "formats", "default", "runs here", "description"):
        t.add_column(col)
    for name in registry.names("conv2d"):
        k = registry.get("conv2d", name)
        why = k.unavailable()
        t.add_row(name, ", ".join(k.formats), "yes" if name in default or name == "dense" else "",
                  "yes" if why is None else f"no: needs {', '.join(k.requires)}", k.description)
    console.print(t)
    return 0


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
