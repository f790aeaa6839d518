"""The GPU layer benchmark: cuDNN, cuSPARSE and 2:4 against the Triton kernels (issue 10).

Method (every row of one sweep comes from one process, on one CUDA GPU):

1. Weights and inputs are the CPU benchmark's (:func:`~sparsecnn.bench.pruned_weight`,
   :func:`~sparsecnn.bench.layer_input`: seeded, unstructured magnitude pruning), moved to the
   GPU in the case's dtype (``float16`` or ``float32``).
2. Providers (:data:`BASELINES` then the Triton kernels):

   - ``cudnn``: ``torch.nn.functional.conv2d`` on the dense pruned weight, in the case's dtype,
     with ``torch.backends.cudnn.benchmark = True`` (cuDNN picks its fastest algorithm per
     shape; fp16 runs on tensor cores). ``torch.backends.cudnn.allow_tf32`` is left as PyTorch
     sets it (fp32 convolutions may use TF32 tensor cores: the fastest cuDNN has). The
     reference of every speedup and every output check.
   - ``cusparse``: im2col (``F.unfold``; the input itself for a 1x1 stride-1 layer) then the
     weight as a ``torch.sparse_csr_tensor`` times the column matrix (cuSPARSE SpMM), the
     result permuted back to NCHW: the "CSRMM" baseline of the seeds, im2col included.
   - ``semi24``: 2:4 semi-structured sparsity (``torch.sparse.to_sparse_semi_structured``,
     CUTLASS / cuSPARSELt sparse tensor cores) for 1x1 convolutions, on the weight pruned to
     2:4 (always 50 % sparse, whatever the case's sparsity: its row reports
     ``actual_sparsity`` 0.5 and its output is checked against cuDNN on that 2:4 weight);
     needs compute capability >= 8.0.
   - each Triton kernel (``triton_direct``, ``triton_direct_unified``, ``triton_spmm``):
     ``sparsecnn.conv2d(..., algo=name)`` on the weight in the kernel's format. The first call
     includes compilation and autotuning (``first_call_ms``; cached on disk by Triton).

3. Timing: the first call of each provider is timed on its own and synchronised
   (``first_call_ms``); steady state by the project's harness (:func:`sparsecnn.timing.measure`:
   ``torch.utils.benchmark.Timer`` blocks, which synchronise CUDA; interleaved between providers;
   medians).
4. Checks: ``max_abs_err`` against cuDNN in the same dtype; a row fails (``"MISMATCH"``) beyond
   ``rtol * max(1, max|y_cudnn|)`` with :data:`RTOL` per dtype.

Rows carry ``h200_floor_ms``: the roofline floor of the provider's design on an H200
(:func:`sparsecnn.bench.roofline.roofline`; cuDNN and the direct kernels), so a row on an H200
reads as a fraction of its bound. Rows carry ``dtype``, ``speedup`` (cuDNN ms / ms, same dtype) and ``speedup_vs_cusparse``;
:func:`break_even` gives the sparsity above which a provider beats cuDNN, per (layer, provider,
dtype, batch); :func:`goals` checks the issue's two goals.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict

import torch
import torch.nn.functional as F

from .. import functional, timing
from ..formats import to_sparse
from ..kernels import registry
from ..problem import ConvProblem
from .roofline import roofline
from .core import (_as_spec, _break_even_one, _check_positive_int, _check_sparsity,
                   layer_input, pruned_weight, weight_format)

GPU_SPARSITIES: tuple[float, ...] = (0.8, 0.9, 0.95, 0.98, 0.99)
GPU_BATCHES: tuple[int, ...] = (1, 32, 128)
GPU_DTYPES: tuple[str, ...] = ("float16", "float32")
GPU_SUITE = "gpu"
GPU_MIN_TIME = 0.05   # s per provider and case: GPU timings are steady
GPU_MAX_TIME = 0.25
CUDNN, CUSPARSE, SEMI24 = "cudnn", "cusparse", "semi24"
#: The vendor-library providers, in table order (cuDNN first: every speedup is against it).
BASELINES: tuple[str, ...] = (CUDNN, CUSPARSE, SEMI24)
BASELINE_DESCRIPTIONS = {
    CUDNN: "torch.nn.functional.conv2d (cuDNN, cudnn.benchmark=True), dense pruned weight",
    CUSPARSE: "F.unfold (im2col) + torch.sparse CSR @ dense (cuSPARSE SpMM), NCHW permute",
    SEMI24: "torch.sparse.to_sparse_semi_structured (2:4, sparse tensor cores), 1x1 layers, "
            "weight pruned to 2:4 (50 %)",
}
#: Output check tolerance per dtype, relative to max(1, max|y_cudnn|): fp16 stores 11
#: significant bits (and cuDNN's fp16 path rounds differently from an fp32 accumulation);
#: fp32 allows TF32 in cuDNN (10-bit mantissa inputs).
RTOL = {"float16": 2e-2, "bfloat16": 5e-2, "float32": 1e-2}

#: Keys of every row, in CSV column order.
GPU_ROW_KEYS: tuple[str, ...] = (
    "layer", "model", "N", "C", "H", "W", "K", "R", "S", "stride", "pad", "OH", "OW", "dtype",
    "sparsity", "actual_sparsity", "nnz", "kernel", "format", "ms", "iqr_ms", "n_blocks",
    "calls_per_block", "n_dropped", "first_call_ms", "speedup", "speedup_vs_cusparse",
    "useful_tflops", "dense_equiv_tflops", "h200_floor_ms", "bytes_weight", "max_abs_err", "config", "status",
)


def cuda_unavailable() -> str | None:
    """Why the GPU benchmark cannot run here (no CUDA GPU visible to PyTorch), or None."""
    if not torch.cuda.is_available():
        built = torch.version.cuda
        return ("torch.cuda.is_available() is False "
                f"(torch {torch.__version__}, built {'with CUDA ' + built if built else 'without CUDA'})")
    return None


def triton_kernel_names() -> list[str]:
    """The registered conv2d kernels that run natively on CUDA (the Triton ones)."""
    return [k.name for k in registry.kernels("conv2d")
            if k.name != "dense" and "cuda" in k.devices and not k.is_emulated("cuda")]


def resolve_providers(kernels=None, baselines=None) -> list[str]:
    """Validated provider list: the baselines (default all; ``cudnn`` always first) then the
    kernels (default :func:`triton_kernel_names`).

    Raises
    ------
    ValueError
        An unknown baseline, or a name that is not a registered conv2d kernel running on CUDA.
    """
    base = list(BASELINES) if baselines is None else list(dict.fromkeys(baselines))
    bad = [b for b in base if b not in BASELINES]
    if bad:
        raise ValueError(f"unknown baseline(s) {bad}; known: {', '.join(BASELINES)}")
    base = [CUDNN] + [b for b in base if b != CUDNN]
    if kernels is None:
        names = triton_kernel_names()
    else:
        names = list(dict.fromkeys([kernels] if isinstance(kernels, str) else kernels))
        ok = set(triton_kernel_names())
        bad = [k for k in names if k not in ok]
        if bad:
            raise ValueError(f"not a conv2d kernel that runs on CUDA: {bad}; those are: "
                             f"{', '.join(sorted(ok)) or 'none (is triton installed?)'}")
        for name in names:
            weight_format(name)
    return base + names


def _check_dtype(dtype) -> str:
    if dtype not in RTOL:
        raise ValueError(f"dtype must be one of {sorted(RTOL)}, got {dtype!r}")
    return dtype


# ---------------------------------------------------------------------------------------------
# providers: each returns (callable, weight bytes, actual sparsity or None, reference or None)
def _cudnn(x, w, spec):
    stride, pad = spec.stride, spec.pad

    def call():
        return F.conv2d(x, w, None, stride, pad)
    return call, w.numel() * w.element_size(), None, None


def _cusparse(x, w, spec):
    import warnings

    k = spec.K
    with warnings.catch_warnings():  # "Sparse CSR tensor support is in beta state"
        warnings.simplefilter("ignore", UserWarning)
        csr = w.reshape(k, -1).to_sparse_csr()
    n, oh, ow = x.shape[0], spec.OH, spec.OW
    identity = spec.R == spec.S == 1 and spec.stride == 1 and spec.pad == 0

    def call():
        if identity:
            cols = x.reshape(n, spec.C, oh * ow)
        else:
            cols = F.unfold(x, (spec.R, spec.S), padding=spec.pad, stride=spec.stride)
        cols = cols.transpose(0, 1).reshape(cols.shape[1], n * oh * ow)  # (CRS, N*L)
        y = csr @ cols                                                    # (K, N*L)
        return y.reshape(k, n, oh, ow).transpose(0, 1).contiguous()
    nbytes = (csr.crow_indices().numel() * csr.crow_indices().element_size()
              + csr.col_indices().numel() * csr.col_indices().element_size()
              + csr.values().numel() * csr.values().element_size())
    return call, nbytes, None, None


def semi24_unavailable(spec) -> str | None:
    """Why the 2:4 baseline does not apply to ``spec`` here, or None."""
    if spec.R != 1 or spec.S != 1:
        return "2:4 baseline: 1x1 layers only"
    if not torch.cuda.is_available():
        return "2:4 baseline: needs CUDA"
    major, minor = torch.cuda.get_device_capability()
    if major < 8:
        return f"2:4 baseline: needs compute capability >= 8.0, this GPU has {major}.{minor}"
    if not hasattr(torch.sparse, "to_sparse_semi_structured"):
        return "2:4 baseline: torch.sparse.to_sparse_semi_structured missing in this torch"
    return None


def _semi24(x, w, spec):
    from ..prune.masks import nm_mask

    w24 = (w * nm_mask(w, 2, 4)).contiguous()
    mat = torch.sparse.to_sparse_semi_structured(w24.reshape(spec.K, spec.C))
    n, st, hw = x.shape[0], spec.stride, spec.OH * spec.OW

    def call():
        xs = x[:, :, ::st, ::st] if st > 1 else x
        cols = xs[0].reshape(spec.C, hw) if n == 1 else xs.transpose(0, 1).reshape(spec.C, n * hw)
        y = torch.mm(mat, cols)                                           # (K, N*HW)
        return y.reshape(spec.K, n, spec.OH, spec.OW).transpose(0, 1).contiguous()
    ref = F.conv2d(x, w24, None, st, 0)
    nbytes = sum(t.numel() * t.element_size() for t in (getattr(mat, "packed", None),
                                                        getattr(mat, "meta", None))
                 if isinstance(t, torch.Tensor)) or w24.numel() * w24.element_size() // 2
    return call, int(nbytes), 0.5, ref


def _triton(name, x, w_cpu, spec, dtype, device):
    fmt = weight_format(name)
    ws = to_sparse(w_cpu, format=fmt)
    stride, pad = (spec.stride, spec.stride), (spec.pad, spec.pad)
    kernel = registry.get("conv2d", name)
    problem = ConvProblem.from_shapes(x.shape, spec.weight_shape, stride, pad, format=fmt,
                                      density=float(ws.density), dtype=dtype, device=device)
    why = kernel.why_not(problem)
    if why is not None:
        return None, why, fmt

    def call():
        return functional.conv2d(x, ws, None, stride, pad, algo=name)
    return (call, int(ws.nbytes), None, None), None, fmt


def _last_config(name) -> str:
    import sys

    mod = {"triton_spmm": "sparsecnn.kernels.triton._spmm_jit"}.get(
        name, "sparsecnn.kernels.triton._direct_jit")
    cfg = getattr(sys.modules.get(mod), "LAST_CONFIG", None)
    return ",".join(f"{k}={v}" for k, v in cfg.items()) if cfg else ""


def _nan_stats() -> dict:
    return {"ms": math.nan, "iqr_ms": math.nan, "n_blocks": 0, "calls_per_block": 0,
            "n_dropped": 0, "first_call_ms": math.nan, "speedup": math.nan,
            "speedup_vs_cusparse": math.nan, "useful_tflops": math.nan,
            "dense_equiv_tflops": math.nan, "max_abs_err": math.nan}


def time_layer_gpu(spec, sparsity: float, batch: int, dtype: str = "float16", providers=None,
                   seed: int = 0, *, min_time: float = GPU_MIN_TIME,
                   max_time: float = GPU_MAX_TIME, device: str = "cuda") -> list[dict]:
    """Time every provider on one layer, sparsity, batch and dtype, on the current CUDA GPU.

    Parameters
    ----------
    spec : LayerSpec or str
    sparsity : float in [0, 1)
    batch : int >= 1
    dtype : ``"float16"``, ``"bfloat16"`` or ``"float32"``
    providers : list of str or None
        From :func:`resolve_providers` (default: every baseline and Triton kernel).
    seed : int
    min_time, max_time : float
        Seconds of timed calls per provider (:func:`sparsecnn.timing.measure`).
    device : str
        ``"cuda"``. ``"cpu"`` runs the same pipeline on CPU tensors (PyTorch's CPU convolution
        and sparse matmul stand in for cuDNN and cuSPARSE, Triton kernels need
        ``TRITON_INTERPRET=1``): for tests of the benchmark itself, its times mean nothing.

    Returns
    -------
    list of dict
        One row per provider, keys :data:`GPU_ROW_KEYS`; ``status`` ``"ok"``, ``"MISMATCH"``,
        ``"unsupported: ..."`` or ``"error: ..."`` (a provider's own exception, reported in its
        row; out-of-memory included).

    Raises
    ------
    RuntimeError
        If no CUDA GPU is available.
    ValueError
        On a bad layer, sparsity, batch, dtype or provider.
    """
    why = cuda_unavailable() if device == "cuda" else None
    if why:
        raise RuntimeError(f"the GPU benchmark needs a CUDA GPU: {why}")
    spec = _as_spec(spec)
    sparsity = _check_sparsity(sparsity)
    batch = _check_positive_int(batch, "batch")
    dtype = _check_dtype(dtype)
    providers = resolve_providers() if providers is None else list(providers)
    tdt = getattr(torch, dtype)
    torch.backends.cudnn.benchmark = True

    w_cpu = pruned_weight(spec, sparsity, seed)
    nnz = int(torch.count_nonzero(w_cpu))
    x = layer_input(spec, batch, seed).to(device, tdt)
    w = w_cpu.to(device, tdt)
    numel = w_cpu.numel()
    flops_dense = spec.dense_flops(batch)
    base = {"layer": spec.name, "model": spec.model, "N": batch, "C": spec.C, "H": spec.H,
            "W": spec.W, "K": spec.K, "R": spec.R, "S": spec.S, "stride": spec.stride,
            "pad": spec.pad, "OH": spec.OH, "OW": spec.OW, "dtype": dtype,
            "sparsity": sparsity}
    rtol = RTOL[dtype]
    rows, calls, estimates = [], {}, {}
    ref = None
    with torch.inference_mode():
        for name in providers:
            row = dict(base, kernel=name, actual_sparsity=1.0 - nnz / numel, nnz=nnz,
                       format="dense", bytes_weight=numel * w.element_size(), config="")
            try:
                if name == CUDNN:
                    made, fmt = _cudnn(x, w, spec), "dense"
                elif name == CUSPARSE:
                    made, fmt = _cusparse(x, w, spec), "csr (torch.sparse)"
                elif name == SEMI24:
                    why = semi24_unavailable(spec)
                    if why:
                        rows.append(dict(row, **_nan_stats(), status=f"unsupported: {why}"))
                        continue
                    made, fmt = _semi24(x, w, spec), "2:4 semi-structured"
                else:
                    made, why, fmt = _triton(name, x, w_cpu, spec, dtype, device)
                    if made is None:
                        rows.append(dict(row, **_nan_stats(), format=fmt,
                                         status=f"unsupported: {why}"))
                        continue
                call, nbytes, actual, own_ref = made
                row.update(format=fmt, bytes_weight=int(nbytes))
                if actual is not None:
                    row.update(actual_sparsity=actual, nnz=round(numel * (1 - actual)))
                y, first_s = timing.time_call(call)
                estimates[name] = timing.time_call(call)[1]
            except Exception as exc:  # a provider's failure is reported in its row
                if name == CUDNN:
                    raise
                msg = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
                rows.append(dict(row, **_nan_stats(),
                                 status=f"error: {type(exc).__name__}: {msg}"))
                if device == "cuda":
                    torch.cuda.empty_cache()  # after an out-of-memory error, say
                continue
            if name == CUDNN:
                ref = y
                err, status = 0.0, "ok"
            else:
                want = own_ref if own_ref is not None else ref
                if y.shape != want.shape:
                    err, status = math.inf, f"MISMATCH (shape {tuple(y.shape)})"
                else:
                    err = float((y.float() - want.float()).abs().max())
                    ok = err <= rtol * max(1.0, float(want.float().abs().max()))
                    status = "ok" if ok else "MISMATCH"
            del y
            row.update(first_call_ms=first_s * 1e3, max_abs_err=err, status=status,
                       config=_last_config(name) if name.startswith("triton") else "")
            rows.append(row)
            calls[name] = call
        stats = {k: {f: getattr(t, f) for f in ("ms", "iqr_ms", "n_blocks", "calls_per_block",
                                                 "n_dropped")}
                 for k, t in timing.measure(calls, warmup=1, min_time=min_time,
                                            max_time=max_time, min_blocks=3, first_call=False,
                                            estimates=estimates).items()}
    rl = roofline(spec, batch, sparsity, dtype)
    floors = {CUDNN: rl["dense_ms"], "triton_direct": rl["sparse_ms"],
              "triton_direct_unified": rl["sparse_ms"]}
    cudnn_ms = stats[CUDNN]["ms"]
    cus_ms = stats.get(CUSPARSE, {}).get("ms", math.nan)
    for row in rows:
        st = stats.get(row["kernel"])
        if st is None:
            continue
        t = st["ms"] / 1e3
        useful = 2 * row["nnz"] * spec.OH * spec.OW * batch
        row.update(st, h200_floor_ms=floors.get(row["kernel"], math.nan),
                   speedup=cudnn_ms / st["ms"], speedup_vs_cusparse=cus_ms / st["ms"],
                   useful_tflops=useful / t / 1e12, dense_equiv_tflops=flops_dense / t / 1e12)
    del x, w, ref
    return [{k: row.get(k, math.nan) for k in GPU_ROW_KEYS} for row in rows]


def gpu_cases(specs, batches, dtypes, sparsities) -> list[tuple]:
    """The (layer, batch, dtype, sparsity) cases of a sweep, in the order they run (sparsity
    innermost, so that each break-even curve is complete before the next starts)."""
    return [(s, b, d, p) for s in specs for b in batches for d in dtypes for p in sparsities]


def sweep_gpu(specs, sparsities=GPU_SPARSITIES, batches=GPU_BATCHES, dtypes=GPU_DTYPES,
              providers=None, progress: bool = True, *, seed: int = 0,
              min_time: float = GPU_MIN_TIME, max_time: float = GPU_MAX_TIME,
              time_budget: float | None = None, console=None,
              device: str = "cuda") -> tuple[list[dict], list[tuple]]:
    """Run :func:`time_layer_gpu` over every case, in one process.

    ``time_budget`` (seconds): no case starts once the sweep has run that long (the first one
    always runs); the cases not run are returned (so a prepared script ends on time and says what it left out). ``device``
    as in :func:`time_layer_gpu`.

    Returns
    -------
    (rows, skipped)
        Rows of every case run (keys :data:`GPU_ROW_KEYS`) and the ``(layer, N, dtype,
        sparsity)`` cases left out by the time budget.
    """
    why = cuda_unavailable() if device == "cuda" else None
    if why:
        raise RuntimeError(f"the GPU benchmark needs a CUDA GPU: {why}")
    specs = [_as_spec(s) for s in specs]
    sparsities = sorted({_check_sparsity(s) for s in sparsities})
    batches = list(dict.fromkeys(_check_positive_int(b, "batch") for b in batches))
    dtypes = list(dict.fromkeys(_check_dtype(d) for d in dtypes))
    if not specs or not sparsities or not batches or not dtypes:
        raise ValueError("need at least one layer, sparsity, batch size and dtype")
    providers = resolve_providers() if providers is None else list(providers)
    todo = gpu_cases(specs, batches, dtypes, sparsities)
    rows: list[dict] = []
    skipped: list[tuple] = []
    t0 = time.perf_counter()

    def run(case, advance=lambda: None):
        spec, batch, dtype, sp = case
        if rows and time_budget is not None and time.perf_counter() - t0 > time_budget:
            skipped.append((spec.name, batch, dtype, sp))
        else:
            rows.extend(time_layer_gpu(spec, sp, batch, dtype, providers, seed,
                                       min_time=min_time, max_time=max_time, device=device))
        advance()

    if not progress:
        for case in todo:
            run(case)
        return rows, skipped
    from rich.console import Console
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                               TimeElapsedColumn, TimeRemainingColumn)
    console = console or Console(stderr=True)
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), TimeRemainingColumn(), console=console) as bar:
        task = bar.add_task("bench", total=len(todo))
        for case in todo:
            spec, batch, dtype, sp = case
            bar.update(task, description=f"{spec.name} N={batch} {dtype} sparsity={sp:g}")
            run(case, lambda: bar.advance(task))
    return rows, skipped


# ---------------------------------------------------------------------------------------------
# analysis
def _ok(row) -> bool:
    return row["status"] == "ok" and math.isfinite(row["speedup"]) and row["speedup"] > 0


def break_even_gpu(rows) -> dict[tuple, tuple[float | None, str]]:
    """Break-even sparsity over cuDNN per (layer, provider, dtype, N): ``(sparsity or None,
    label)`` as :func:`sparsecnn.bench.break_even` (log-density interpolation; ``"<0.8"``
    faster everywhere, ``">0.99"`` slower everywhere). The 2:4 baseline has one sparsity (50 %)
    and is left out."""
    pts = defaultdict(list)
    keys = {}
    for r in rows:
        if r["kernel"] in (CUDNN, SEMI24):
            continue
        key = (r["layer"], r["kernel"], r["dtype"], r["N"])
        keys[key] = None
        if _ok(r):
            pts[key].append((r["sparsity"], r["speedup"]))
    return {k: _break_even_one(sorted(pts.get(k, []))) for k in keys}


def goals(rows) -> list[dict]:
    """The issue's two goals, checked on the rows measured (nothing is claimed for rows that
    were not run):

    - ``vs_cudnn``: on every VGG-16 layer at batch 128 in fp16, the best Triton kernel beats
      cuDNN at every measured sparsity >= 0.9;
    - ``vs_cusparse``: on every layer, batch and dtype, the best Triton kernel beats the
      cuSPARSE path at every measured sparsity >= 0.8.

    Returns one dict per (goal, layer[, N, dtype]) with ``met`` (bool), ``worst`` (the lowest
    speedup among those sparsities) and ``at`` (its sparsity).
    """
    best = defaultdict(lambda: (math.nan, math.nan))  # (layer, N, dtype, sp) -> (vs cudnn, vs cus)
    for r in rows:
        if not r["kernel"].startswith("triton") or not _ok(r):
            continue
        k = (r["layer"], r["N"], r["dtype"], r["sparsity"])
        a, b = best[k]
        best[k] = (max(a, r["speedup"]) if math.isfinite(a) else r["speedup"],
                   max(b, r["speedup_vs_cusparse"]) if math.isfinite(b)
                   else r["speedup_vs_cusparse"])
    out = []
    groups = defaultdict(list)
    for (layer, n, dt, sp), (vc, vs) in best.items():
        groups[("vs_cusparse", layer, n, dt)].append((sp, vs))
        if layer.startswith("vgg16") and n == 128 and dt == "float16" and sp >= 0.9 - 1e-9:
            groups[("vs_cudnn", layer, n, dt)].append((sp, vc))
    for (goal, layer, n, dt), pts in sorted(groups.items()):
        if goal == "vs_cusparse":
            pts = [p for p in pts if p[0] >= 0.8 - 1e-9 and math.isfinite(p[1])]
        if not pts:
            continue
        sp, worst = min(pts, key=lambda p: p[1])
        out.append({"goal": goal, "layer": layer, "N": n, "dtype": dt, "met": worst > 1.0,
                    "worst": worst, "at": sp, "sparsities": sorted(p[0] for p in pts)})
    return out


def compile_times_gpu(rows) -> dict[str, dict]:
    """First call (compile + autotune + preparation) per provider and dtype, from its first row."""
    out = {}
    for r in rows:
        key = f"{r['kernel']} {r['dtype']}"
        if key in out or not math.isfinite(r["first_call_ms"]):
            continue
        out[key] = {"first_call_ms": r["first_call_ms"], "steady_ms": r["ms"],
                    "layer": r["layer"], "N": r["N"], "sparsity": r["sparsity"]}
    return out


__all__ = ["GPU_SPARSITIES", "GPU_BATCHES", "GPU_DTYPES", "GPU_SUITE", "BASELINES",
           "GPU_ROW_KEYS", "RTOL", "cuda_unavailable", "triton_kernel_names",
           "resolve_providers", "semi24_unavailable", "time_layer_gpu", "gpu_cases",
           "sweep_gpu", "break_even_gpu", "goals", "compile_times_gpu"]
