"""Timing dense PyTorch against sparse convolution kernels, one layer and sparsity at a time.

Method (every row of one sweep comes from one process):

1. The layer's dense weight is drawn once per (layer, seed) from N(0, 2 / (C R S)) and
   magnitude-pruned *unstructured* to each target sparsity (the ``round(sparsity * numel)``
   smallest |w| set to zero), so higher sparsities prune a superset. The input is drawn once per
   (layer, batch, seed) from N(0, 1). Every provider sees the same input and weight.
2. The dense reference is ``torch.nn.functional.conv2d`` on the pruned dense weight (oneDNN on
   CPU: the vendor library). Each sparse kernel runs through ``sparsecnn.conv2d(..., algo=name)``
   on the weight converted once (untimed) to a format the kernel accepts (CSR preferred).
3. Warm-up: the first call is timed on its own (``first_call_ms``: JIT compilation the first time a
   kernel runs in the process, plus any per-weight preparation); its output is compared with the
   dense output (``max_abs_err``; rows beyond tolerance get status ``"MISMATCH"``). A second call
   sizes the timing blocks.
4. Steady state (:func:`measure`): blocks of calls timed with
   :meth:`torch.utils.benchmark.Timer.timeit`, interleaved round-robin between the providers so
   they share the same background load, until IQR/median < 5 % or ``max_time``; block times
   above Q3 + 1.5 IQR dropped as outliers; median and IQR per call.

Torch and Numba thread counts are set explicitly for the duration of each measurement.
"""

from __future__ import annotations

import math
import time
import zlib
from collections import defaultdict
from numbers import Integral, Real

import numba
import torch
import torch.nn.functional as F

from .. import functional, timing
from ..checks import TOLERANCE, compare_outputs
from ..formats import FORMATS, to_sparse
from ..kernels import registry
from ..kernels.capabilities import target
from ..problem import ConvProblem
from .layers import LAYERS, LayerSpec

DEFAULT_SPARSITIES: tuple[float, ...] = (0.5, 0.7, 0.8, 0.9, 0.95, 0.98, 0.993)
DEFAULT_BATCHES: tuple[int, ...] = (1, 8)
DEFAULT_THREADS = 2
DEFAULT_MIN_TIME = 0.2   # s of timed calls per measurement before the IQR test may stop it
DEFAULT_MAX_TIME = 1.0   # s cap per measurement
DENSE = "dense"
#: The baseline provider, as the table and plot name it.
DENSE_DESCRIPTION = "torch.nn.functional.conv2d (oneDNN), dense pruned weight"
WEIGHTS_DESCRIPTION = ("random N(0, 2/(C*R*S)) weights, unstructured magnitude pruning per layer "
                       "(seeded); random N(0, 1) input (seeded)")
RTOL = TOLERANCE  # max |y - y_dense| allowed, relative to max(1, max |y_dense|)

#: Keys of every row, in CSV column order.
ROW_KEYS: tuple[str, ...] = (
    "layer", "model", "N", "C", "H", "W", "K", "R", "S", "stride", "pad", "OH", "OW",
    "sparsity", "actual_sparsity", "nnz", "kernel", "format", "isa", "threads", "seed",
    "ms", "iqr_ms", "n_blocks", "calls_per_block", "n_dropped", "first_call_ms",
    "speedup", "useful_gflops", "dense_equiv_gflops", "bytes_weight", "bytes_dense",
    "max_abs_err", "status",
)


# ---------------------------------------------------------------------------------------------
# validation helpers
def _check_sparsity(s) -> float:
    if not isinstance(s, Real) or isinstance(s, bool) or not (0.0 <= float(s) < 1.0):
        raise ValueError(f"sparsity must be a number in [0, 1), got {s!r}")
    return float(s)


def _check_positive_int(value, name: str) -> int:
    if not isinstance(value, Integral) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    return int(value)


def check_threads(threads) -> int:
    """Validate a thread count for both torch and Numba.

    Raises
    ------
    ValueError
        If ``threads`` is not an int >= 1, or exceeds Numba's ``NUMBA_NUM_THREADS`` (fixed at
        start-up; set the environment variable to allow more).
    """
    threads = _check_positive_int(threads, "threads")
    if threads > numba.config.NUMBA_NUM_THREADS:
        raise ValueError(
            f"threads={threads} exceeds numba's NUMBA_NUM_THREADS={numba.config.NUMBA_NUM_THREADS} "
            "(set that environment variable before starting Python to allow more)"
        )
    return threads


def _as_spec(spec) -> LayerSpec:
    if isinstance(spec, LayerSpec):
        return spec
    if isinstance(spec, str):
        if spec not in LAYERS:
            raise ValueError(f"unknown layer {spec!r}; known layers: {', '.join(LAYERS)}")
        return LAYERS[spec]
    raise TypeError(f"a layer must be a LayerSpec or a layer name, got {type(spec).__name__}")


# ---------------------------------------------------------------------------------------------
# kernels
def dense_isa() -> str:
    """What the dense baseline ran with: ``"torch:"`` + PyTorch's CPU capability (``avx2``,
    ``avx512``, ``default``...; oneDNN follows it unless ``ONEDNN_MAX_CPU_ISA`` caps it)."""
    try:
        cap = torch.backends.cpu.get_cpu_capability()
    except Exception:  # pragma: no cover - older torch
        cap = "unknown"
    return f"torch:{str(cap).lower()}"


def sparse_kernel_names() -> list[str]:
    """The conv2d kernels benchmarked by default: every registered one that accepts ``"csr"``.

    Kernels registered for other sparse formats only are not in the default list but can be named
    explicitly (their weight is built with the first of their formats that
    :func:`sparsecnn.to_sparse` knows).
    """
    return [k.name for k in registry.kernels("conv2d")
            if k.name != DENSE and k.accepts("csr") and k.unavailable() is None]


def resolve_kernels(kernels=None) -> list[str]:
    """Validated provider list: ``"dense"`` first, then the sparse kernels (default: all CSR ones).

    Raises
    ------
    ValueError
        If a name is not a registered conv2d kernel (the message lists them), or a kernel accepts
        no format :func:`sparsecnn.to_sparse` can build.
    """
    if kernels is None:
        names = sparse_kernel_names()
    else:
        if isinstance(kernels, str):
            kernels = [kernels]
        registered = registry.names("conv2d")
        unknown = [k for k in kernels if k not in registered]
        if unknown:
            raise ValueError(f"unknown conv2d kernel(s) {unknown}; registered: {', '.join(registered)}")
        names = [k for k in dict.fromkeys(kernels) if k != DENSE]
        for name in names:
            weight_format(name)
    return [DENSE, *names]


def weight_format(kernel: str) -> str:
    """The sparse format the benchmark builds for ``kernel``: ``"csr"`` if accepted, else the first
    of its formats known to :data:`sparsecnn.formats.FORMATS`.

    Raises
    ------
    ValueError
        If the kernel accepts no buildable format.
    """
    k = registry.get("conv2d", kernel)
    if k.accepts("csr"):
        return "csr"
    for fmt in FORMATS:
        if k.accepts(fmt):
            return fmt
    raise ValueError(f"conv2d kernel {kernel!r} accepts formats {k.formats}, none of which "
                     f"sparsecnn.to_sparse can build ({sorted(FORMATS)})")


# ---------------------------------------------------------------------------------------------
# data
def _seed_for(seed: int, *parts) -> int:
    return (int(seed) * 1_000_003 + zlib.crc32("/".join(map(str, parts)).encode())) % (2**63)


def pruned_weight(spec: LayerSpec, sparsity: float, seed: int = 0) -> torch.Tensor:
    """The layer's seeded random weight, magnitude-pruned (unstructured) to ``sparsity``.

    Returns
    -------
    torch.Tensor (K, C, R, S) float32 with exactly ``round(sparsity * K*C*R*S)`` zeros. The dense
    weight depends only on ``(spec.name, seed)``, so higher sparsities prune a superset.
    """
    spec = _as_spec(spec)
    sparsity = _check_sparsity(sparsity)
    g = torch.Generator().manual_seed(_seed_for(seed, "weight", spec.name))
    w = torch.randn(spec.weight_shape, generator=g) * math.sqrt(2.0 / (spec.C * spec.R * spec.S))
    flat = w.flatten()
    nzero = round(sparsity * flat.numel())
    if nzero:
        flat[torch.argsort(flat.abs())[:nzero]] = 0.0
    return flat.view(spec.weight_shape)


def layer_input(spec: LayerSpec, batch: int, seed: int = 0) -> torch.Tensor:
    """The layer's seeded random input, N(0, 1), shape (batch, C, H, W) float32."""
    spec = _as_spec(spec)
    g = torch.Generator().manual_seed(_seed_for(seed, "input", spec.name, batch))
    return torch.randn(spec.input_shape(batch), generator=g)


# ---------------------------------------------------------------------------------------------
# timing
def measure(fns: dict, threads: int, min_time: float = DEFAULT_MIN_TIME,
            max_time: float = DEFAULT_MAX_TIME, *, min_blocks: int = 5,
            threshold: float = 0.05, estimates: dict | None = None) -> dict[str, dict]:
    """Steady-state time per call of each (already warmed-up) function, measured interleaved
    with the project's harness (:func:`sparsecnn.timing.measure`, ``threads`` torch and Numba
    threads).

    Returns
    -------
    dict str -> dict with ``ms`` (median per call), ``iqr_ms``, ``n_blocks`` (kept),
    ``calls_per_block``, ``n_dropped``, ``contended``.
    """
    res = timing.measure(fns, num_threads=threads, warmup=0, min_time=min_time,
                         max_time=max_time, min_blocks=min_blocks, threshold=threshold,
                         first_call=False, estimates=estimates)
    keys = ("ms", "iqr_ms", "n_blocks", "calls_per_block", "n_dropped", "contended")
    return {k: {f: getattr(t, f) for f in keys} for k, t in res.items()}


def _nan_row() -> dict:
    return {"ms": math.nan, "iqr_ms": math.nan, "n_blocks": 0, "calls_per_block": 0,
            "n_dropped": 0, "first_call_ms": math.nan, "speedup": math.nan,
            "useful_gflops": math.nan, "dense_equiv_gflops": math.nan, "max_abs_err": math.nan}


def time_layer(spec, sparsity: float, batch: int, kernels=None, threads: int = DEFAULT_THREADS,
               seed: int = 0, *, min_time: float = DEFAULT_MIN_TIME,
               max_time: float = DEFAULT_MAX_TIME, rtol: float = RTOL) -> list[dict]:
    """Time dense ``F.conv2d`` and each sparse kernel on one layer at one sparsity and batch size.

    Parameters
    ----------
    spec : LayerSpec or str
        The layer (a :data:`LAYERS` name or any :class:`LayerSpec`).
    sparsity : float in [0, 1)
        Share of weights pruned to zero.
    batch : int >= 1
        N.
    kernels : list of str or None
        Registered conv2d kernels to time besides the dense baseline (which is always timed);
        None: every kernel accepting CSR (:func:`sparse_kernel_names`).
    threads : int >= 1
        Torch and Numba threads.
    seed : int
        Seeds the weight and the input.
    min_time, max_time : float
        Seconds of timed calls per measurement (see :func:`measure`).
    rtol : float
        Outputs with ``max_abs_err > rtol * max(1, max|y_dense|)`` get status ``"MISMATCH"``.

    Returns
    -------
    list of dict
        One row per provider (dense first), keys :data:`ROW_KEYS`: geometry, ``sparsity``
        (target) and ``actual_sparsity``, ``nnz``, ``kernel``, ``format``, ``ms`` (median per
        call, ms), ``iqr_ms``, ``first_call_ms`` (warm-up call incl. JIT compile), ``speedup``
        (dense ms / ms), ``useful_gflops`` (2 nnz OH OW N / t, GFLOP/s), ``dense_equiv_gflops``
        (2 K C R S OH OW N / t), ``bytes_weight`` (bytes of the stored weight: the sparse format's
        arrays, or the dense tensor), ``bytes_dense``, ``max_abs_err`` (vs dense), ``status``
        (``"ok"``, ``"MISMATCH"``, ``"unsupported"`` or ``"error: ..."``; only a kernel's own
        exception is caught, reported in the row).

    Raises
    ------
    ValueError
        Bad sparsity, batch, threads, min/max time, or unknown layer/kernel.
    """
    spec = _as_spec(spec)
    sparsity = _check_sparsity(sparsity)
    batch = _check_positive_int(batch, "batch")
    threads = check_threads(threads)
    if not (isinstance(min_time, Real) and min_time > 0 and max_time >= min_time):
        raise ValueError(f"need 0 < min_time <= max_time, got min_time={min_time!r}, max_time={max_time!r}")
    providers = resolve_kernels(kernels)

    x = layer_input(spec, batch, seed)
    w = pruned_weight(spec, sparsity, seed)
    nnz = int(torch.count_nonzero(w))
    numel = w.numel()
    stride, pad = (spec.stride, spec.stride), (spec.pad, spec.pad)
    flops_useful = 2 * nnz * spec.OH * spec.OW * batch
    flops_dense = spec.dense_flops(batch)
    base = {"layer": spec.name, "model": spec.model, "N": batch, "C": spec.C, "H": spec.H,
            "W": spec.W, "K": spec.K, "R": spec.R, "S": spec.S, "stride": spec.stride,
            "pad": spec.pad, "OH": spec.OH, "OW": spec.OW, "sparsity": sparsity,
            "actual_sparsity": 1.0 - nnz / numel, "nnz": nnz, "threads": threads, "seed": seed,
            "bytes_dense": numel * w.element_size()}

    rows, calls, estimates = [], {}, {}
    sparse_weights = {}
    ref = None
    with timing.threads(threads), torch.inference_mode():
        for name in providers:
            row = dict(base, kernel=name, isa=target().isa)
            if name == DENSE:
                def call(x=x, w=w):
                    return F.conv2d(x, w, None, stride, pad)
                row.update(format="dense", bytes_weight=numel * w.element_size(),
                           isa=dense_isa())
            else:
                fmt = weight_format(name)
                if fmt not in sparse_weights:
                    sparse_weights[fmt] = to_sparse(w, format=fmt)
                ws = sparse_weights[fmt]
                row.update(format=fmt, bytes_weight=int(ws.nbytes))
                kernel = registry.get("conv2d", name)
                problem = ConvProblem.from_shapes(x.shape, spec.weight_shape, stride, pad,
                                                  format=fmt, density=float(ws.density))
                if kernel.why_not(problem) is not None:
                    rows.append(dict(row, **_nan_row(), status="unsupported"))
                    continue

                def call(x=x, ws=ws, name=name):
                    return functional.conv2d(x, ws, None, stride, pad, algo=name)
            try:
                t0 = time.perf_counter()
                y = call()
                first_ms = (time.perf_counter() - t0) * 1e3
                t0 = time.perf_counter()
                call()
                estimates[name] = time.perf_counter() - t0
            except Exception as exc:  # a broken kernel is reported in its row, not fatal
                if name == DENSE:
                    raise
                rows.append(dict(row, **_nan_row(), status=f"error: {type(exc).__name__}: {exc}"))
                continue
            if ref is None:
                ref = y
                err, status = 0.0, "ok"
            elif y.shape != ref.shape:
                err, status = math.inf, f"MISMATCH (shape {tuple(y.shape)} != {tuple(ref.shape)})"
            else:
                chk = compare_outputs(y, ref, rtol)
                err, status = chk.max_abs_err, "ok" if chk.ok else "MISMATCH"
            del y
            row.update(first_call_ms=first_ms, max_abs_err=err, status=status)
            rows.append(row)
            calls[name] = call
        stats = measure(calls, threads, min_time, max_time, estimates=estimates)
    dense_ms = stats[DENSE]["ms"]
    for row in rows:
        st = stats.get(row["kernel"])
        if st is None:
            continue
        t = st["ms"] / 1e3
        row.update(st, speedup=dense_ms / st["ms"], useful_gflops=flops_useful / t / 1e9,
                   dense_equiv_gflops=flops_dense / t / 1e9)
    return [{k: row[k] for k in ROW_KEYS} for row in rows]


def cases(specs, sparsities, batches) -> list[tuple[LayerSpec, int, float]]:
    """The (layer, batch, sparsity) cases of a sweep, in the order they are run."""
    return [(s, b, p) for s in specs for b in batches for p in sparsities]


def sweep(specs, sparsities=DEFAULT_SPARSITIES, batches=DEFAULT_BATCHES, kernels=None,
          threads: int = DEFAULT_THREADS, progress: bool = True, *, seed: int = 0,
          min_time: float = DEFAULT_MIN_TIME, max_time: float = DEFAULT_MAX_TIME,
          console=None) -> list[dict]:
    """Run :func:`time_layer` over every layer x batch x sparsity, in one process.

    Parameters
    ----------
    specs : iterable of LayerSpec or str
    sparsities : iterable of float in [0, 1)
    batches : iterable of int >= 1
    kernels : list of str or None
        As in :func:`time_layer` (dense is always included).
    threads : int
    progress : bool
        Show a rich progress bar (on ``console``, default stderr).
    seed, min_time, max_time
        As in :func:`time_layer`.

    Returns
    -------
    list of dict
        The rows of every case, concatenated (keys :data:`ROW_KEYS`).

    Raises
    ------
    ValueError
        On any bad argument, before anything is timed.
    """
    specs = [_as_spec(s) for s in specs]
    sparsities = sorted({_check_sparsity(s) for s in sparsities})
    batches = list(dict.fromkeys(_check_positive_int(b, "batch") for b in batches))
    if not specs or not sparsities or not batches:
        raise ValueError("need at least one layer, one sparsity and one batch size")
    threads = check_threads(threads)
    providers = resolve_kernels(kernels)
    todo = cases(specs, sparsities, batches)
    rows: list[dict] = []

    def run_case(spec, batch, sparsity):
        rows.extend(time_layer(spec, sparsity, batch, providers, threads, seed,
                               min_time=min_time, max_time=max_time))

    if not progress:
        for case in todo:
            run_case(*case)
        return rows
    from rich.console import Console
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                               TimeElapsedColumn, TimeRemainingColumn)
    console = console or Console(stderr=True)
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), TimeRemainingColumn(), console=console) as bar:
        task = bar.add_task("bench", total=len(todo))
        for spec, batch, sparsity in todo:
            bar.update(task, description=f"{spec.name} N={batch} sparsity={sparsity:g}")
            run_case(spec, batch, sparsity)
            bar.advance(task)
    return rows


# ---------------------------------------------------------------------------------------------
# analysis of rows
def _valid(row) -> bool:
    return row["status"] == "ok" and math.isfinite(row["speedup"]) and row["speedup"] > 0


def _break_even_one(points) -> tuple[float | None, str]:
    """(sparsity, label) from sorted (sparsity, speedup) points; see :func:`break_even`."""
    if not points:
        return None, "n/a (no valid rows)"
    lo, hi = points[0][0], points[-1][0]
    slower = [i for i, (_, sp) in enumerate(points) if sp < 1.0]
    if not slower:
        return None, f"<{lo:g}"
    i = slower[-1]
    if i == len(points) - 1:
        return None, f">{hi:g}"
    # straight line in (log density, log speedup): sparse time ~ nnz, so this is the natural axis
    (s0, v0), (s1, v1) = points[i], points[i + 1]
    u0, u1 = math.log(1.0 - s0), math.log(1.0 - s1)
    l0, l1 = math.log(v0), math.log(v1)
    s = 1.0 - math.exp(u0 + (u1 - u0) * (0.0 - l0) / (l1 - l0))
    return s, f"{s:.3f}"


def _speedup_points(rows):
    groups = defaultdict(list)
    for row in rows:
        if row["kernel"] != DENSE and _valid(row):
            groups[(row["layer"], row["kernel"], row["N"])].append((row["sparsity"], row["speedup"]))
    keys = dict.fromkeys((r["layer"], r["kernel"], r["N"]) for r in rows if r["kernel"] != DENSE)
    return {k: sorted(groups.get(k, [])) for k in keys}


def break_even(rows) -> dict[tuple[str, str, int], float | None]:
    """Break-even sparsity per (layer, kernel, batch): above it the kernel beats dense.

    It is the sparsity where the speedup last crosses 1 going up: after the highest measured
    sparsity at which the kernel is slower than dense, interpolated between that point and the
    next along a straight line in (log density, log speedup), density = 1 - sparsity (a sparse
    kernel's time is roughly proportional to nnz; the plot uses the same axes). Rows whose status is not ``"ok"`` (mismatch, error,
    unsupported) are ignored.

    Returns
    -------
    dict
        ``(layer, kernel, N) -> float`` or ``None`` when there is no crossing inside the measured
        range (faster everywhere, slower everywhere, or no valid rows);
        :func:`break_even_labels` tells these apart (``"<0.5"``, ``">0.993"``,
        ``"n/a (no valid rows)"``).
    """
    return {k: _break_even_one(p)[0] for k, p in _speedup_points(rows).items()}


def break_even_labels(rows) -> dict[tuple[str, str, int], str]:
    """As :func:`break_even`, as text: ``"0.874"``, ``"<0.5"`` (faster at every measured
    sparsity), ``">0.993"`` (slower at every one) or ``"n/a (no valid rows)"`` (every row mismatching,
    failing or unsupported)."""
    return {k: _break_even_one(p)[1] for k, p in _speedup_points(rows).items()}


def compile_times(rows) -> dict[str, dict]:
    """Warm-up cost per kernel, from its first row in ``rows`` (the first call in the process).

    Returns
    -------
    dict
        ``kernel -> {"first_call_ms", "steady_ms", "compile_ms", "layer", "N", "sparsity"}``
        where ``compile_ms = max(0, first_call_ms - steady_ms)`` (JIT compilation, or cache
        load, plus any one-time set-up), in ms.
    """
    out = {}
    for row in rows:
        k = row["kernel"]
        if k in out or not math.isfinite(row["first_call_ms"]):
            continue
        out[k] = {"first_call_ms": row["first_call_ms"], "steady_ms": row["ms"],
                  "compile_ms": max(0.0, row["first_call_ms"] - row["ms"]), "layer": row["layer"],
                  "N": row["N"], "sparsity": row["sparsity"]}
    return out
