"""Benchmark of submanifold sparse convolution on real scans: sparsecnn.spatial against spconv 2.x
(CPU build) and dense ``torch.nn.functional.conv3d``, all in one process.

Method (``sparsecnn bench-spatial``; every figure of one row from one run):

1. Input: a mesh of ``../shared/data/meshes`` voxelised at ``res^3`` (:func:`meshes.voxelize`:
   uniform surface samples, quantised); batch ``B`` holds ``B`` copies rotated by multiples of 90
   degrees. Features N(0, 1) (seeded), weights N(0, 0.1) (seeded), one ``SubMConv3d`` 3x3x3,
   ``C -> C`` channels, no bias, fp32.
2. "fresh" = everything from coordinates to output features: building the sparse tensor
   (ours validates the coordinates and builds the H_in hash table; spconv's
   ``SparseConvTensor`` does nothing), the rulebook and the convolution. "reused" = the
   convolution alone on a tensor whose rulebook is cached (ours: ``indice_dict``; spconv: a
   layer with the same ``indice_key`` on the previous layer's output, via ``replace_feature``).
3. Times: one warm-up call (JIT compilation happens there and is reported apart), then calls
   until ``min_time`` seconds have passed (at least ``min_reps``, at most ``max_reps``); the
   median is reported.
4. Peak memory (one extra call per measurement, after the timed ones): the increase of the
   process's peak resident set (``VmHWM`` of /proc/self/status, reset before the call by writing
   5 to /proc/self/clear_refs) over the resident set before the call, with glibc's mmap threshold
   pinned at 128 KiB for that call and ``malloc_trim`` before it, so freed large blocks go back
   to the OS and do not hide allocations (then the threshold is set to 32 MiB, what glibc's
   dynamic threshold grows to, for the timed calls that follow). This sees every allocator (NumPy, torch, spconv's C++), unlike tracemalloc
   (NumPy and Python only). Where /proc is unavailable the column is empty.
5. Output checked against each other: ours against spconv (max abs difference) and against dense
   conv3d at the active sites where dense runs.

Dense conv3d runs only where input + output fit ``dense_limit_gb`` (default 1.5 GB).
spconv columns are empty (with a note) when ``spconv.pytorch`` cannot be imported.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import math
import statistics
import time
from dataclasses import asdict, dataclass

import numba
import numpy as np
import torch
import torch.nn.functional as F

from . import functional as SF
from . import meshes
from .tensor import SparseTensor

SCANS = ("bunny", "armadillo")
RESOLUTIONS = (64, 128, 256)
CHANNELS = (16, 64)
BATCHES = (1, 4)

#: Keys of every row, in CSV column order.
ROW_KEYS = (
    "scan", "res", "batch", "channels", "sites", "occupancy_pct", "neighbours_per_site",
    "pairs", "gflop", "provider", "fresh_ms", "reused_ms", "first_call_ms", "fresh_peak_mb",
    "reused_peak_mb", "gflops_reused", "speedup_fresh_vs_spconv", "speedup_reused_vs_spconv",
    "speedup_reused_vs_dense", "max_abs_err", "err_vs", "note",
)


# ---------------------------------------------------------------------------------------------
# measurement helpers
def _libc():
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


_LIBC = _libc()
_M_MMAP_THRESHOLD = -3


def pin_mmap_threshold(nbytes: int = 128 * 1024) -> bool:
    """Fix glibc's mmap threshold (``mallopt(M_MMAP_THRESHOLD)``): blocks above it are mmap'ed
    and returned to the OS when freed, so the peak resident set measures them. False off glibc."""
    if _LIBC is None:
        return False
    try:
        return bool(_LIBC.mallopt(_M_MMAP_THRESHOLD, int(nbytes)))
    except AttributeError:
        return False


def _status_kb(field: str) -> int | None:
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def peak_rss_mb(fn) -> tuple[object, float | None]:
    """``(fn(), MB)``: the rise of the peak resident set during ``fn()`` over the resident set
    before it (None where /proc/self/clear_refs cannot be written)."""
    gc.collect()
    pinned = pin_mmap_threshold()
    if _LIBC is not None:
        with contextlib.suppress(AttributeError):
            _LIBC.malloc_trim(0)
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
        before = _status_kb("VmRSS")
    except OSError:
        before = None
    out = fn()
    peak = _status_kb("VmHWM")
    if pinned:   # back to what glibc's dynamic threshold grows to after large frees (32 MiB)
        pin_mmap_threshold(32 * 2**20)
    if before is None or peak is None:
        return out, None
    return out, max(0.0, (peak - before) / 1024.0)


def time_calls(fn, min_time: float, min_reps: int, max_reps: int) -> tuple[float, float, int]:
    """``(first_call_ms, median_ms, reps)``: one untimed-for-the-median first call, then calls
    until ``min_time`` s have passed (``min_reps`` .. ``max_reps``)."""
    t0 = time.perf_counter()
    fn()
    first = (time.perf_counter() - t0) * 1e3
    ts: list[float] = []
    start = time.perf_counter()
    while len(ts) < max_reps and (len(ts) < min_reps or time.perf_counter() - start < min_time):
        t = time.perf_counter()
        fn()
        ts.append((time.perf_counter() - t) * 1e3)
    return first, statistics.median(ts), len(ts)


@contextlib.contextmanager
def threads(n: int):
    old_t, old_n = torch.get_num_threads(), numba.get_num_threads()
    torch.set_num_threads(n)
    numba.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old_t)
        numba.set_num_threads(old_n)


def spconv_module():
    """``spconv.pytorch`` or None (with the reason) when it cannot be imported."""
    try:
        import spconv.pytorch as spc  # noqa: F401
        return spc, None
    except Exception as exc:  # ImportError, or a broken binary build
        return None, f"spconv not importable ({type(exc).__name__}: {exc}); pip install 'sparsecnn[spatial-bench]'"


def to_spconv_weight(w: torch.Tensor) -> torch.Tensor:
    """torch layout (C_out, C_in, k, k, k) -> spconv 2.x layout (C_out, k, k, k, C_in)."""
    return w.permute(0, *range(2, w.dim()), 1).contiguous()


# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Config:
    scans: tuple[str, ...] = SCANS
    resolutions: tuple[int, ...] = RESOLUTIONS
    channels: tuple[int, ...] = CHANNELS
    batches: tuple[int, ...] = BATCHES
    threads: int = 2
    min_time: float = 0.3
    min_reps: int = 3
    max_reps: int = 20
    dense_limit_gb: float = 1.5
    spconv: bool = True
    dense: bool = True
    algos: bool = False       # also time each sparsecnn algorithm (the measured choice)
    seed: int = 0


def _case_input(scan, res, batch, channels, seed):
    base = meshes.voxelize(scan, res, channels=1, batch=batch, seed=seed)
    g = torch.Generator().manual_seed(seed + 17 * channels)
    feats = torch.randn(base.n, channels, generator=g)
    w = torch.randn(channels, channels, 3, 3, 3, generator=g) * 0.1
    coords = base.coords.clone()
    return base, feats, coords, w


def run_case(cfg: Config, scan: str, res: int, batch: int, channels: int, spc=None,
             spconv_note: str | None = None) -> list[dict]:
    """Rows (one per provider) of one (scan, res, batch, channels) case."""
    base, feats, coords, w = _case_input(scan, res, batch, channels, cfg.seed)
    shape = (res,) * 3
    n = base.n
    geometry = SF.make_geometry("subm", 3, 3)
    rb, _ = SF.get_rulebook(base, geometry)
    pairs = rb.n_pairs
    common = {"scan": scan, "res": res, "batch": batch, "channels": channels, "sites": n,
              "occupancy_pct": round(100.0 * n / (batch * res**3), 3),
              "neighbours_per_site": round(pairs / max(n, 1), 2), "pairs": pairs,
              "gflop": round(2.0 * pairs * channels * channels / 1e9, 3)}
    rows = []
    with torch.no_grad():
        # --- sparsecnn ---------------------------------------------------------------------
        def ours_fresh(algo=None):
            st = SparseTensor(feats, coords, shape, batch_size=batch)
            return SF.sparse_conv(st, w, algo=algo)

        st = SparseTensor(feats, coords, shape, batch_size=batch)
        ref_ours = SF.sparse_conv(st, w).features

        def ours_reused(algo=None):
            return SF.sparse_conv(st, w, algo=algo)

        variants = [("sparsecnn", None)]
        if cfg.algos:
            variants += [(f"sparsecnn[{a}]", a) for a in ("fused", "gemm")]
        for name, algo in variants:
            first, fresh, _ = time_calls(lambda: ours_fresh(algo), cfg.min_time, cfg.min_reps,
                                         cfg.max_reps)
            _, reused, _ = time_calls(lambda: ours_reused(algo), cfg.min_time, cfg.min_reps,
                                      cfg.max_reps)
            _, mf = peak_rss_mb(lambda: ours_fresh(algo))
            _, mr = peak_rss_mb(lambda: ours_reused(algo))
            rows.append({**common, "provider": name, "fresh_ms": fresh, "reused_ms": reused,
                         "first_call_ms": first, "fresh_peak_mb": mf, "reused_peak_mb": mr})
        # --- spconv ------------------------------------------------------------------------
        if spc is not None:
            m = spc.SubMConv3d(channels, channels, 3, bias=False, indice_key="subm1")
            m.weight.data = to_spconv_weight(w)
            m.eval()

            def sc_fresh():
                return m(spc.SparseConvTensor(feats, coords, list(shape), batch))

            y0 = sc_fresh()

            def sc_reused():
                return m(y0.replace_feature(feats))

            first, fresh, _ = time_calls(sc_fresh, cfg.min_time, cfg.min_reps, cfg.max_reps)
            _, reused, _ = time_calls(sc_reused, cfg.min_time, cfg.min_reps, cfg.max_reps)
            _, mf = peak_rss_mb(sc_fresh)
            _, mr = peak_rss_mb(sc_reused)
            out = sc_reused()
            same_order = torch.equal(out.indices, coords)
            note = None if same_order else "output rows in another order"
            err = float("nan")
            if same_order:
                d = (out.features - ref_ours).abs()
                err = float(d.max())
                tol = 1e-3 * max(1.0, float(ref_ours.abs().max()))
                wrong = int((d > tol).any(dim=1).sum())
                if wrong:
                    note = (f"spconv wrong at {wrong} of {n} sites (vs sparsecnn = dense); "
                            f"its CPU path races at {cfg.threads} threads")
            rows.append({**common, "provider": "spconv", "fresh_ms": fresh, "reused_ms": reused,
                         "first_call_ms": first, "fresh_peak_mb": mf, "reused_peak_mb": mr,
                         "max_abs_err": err, "err_vs": "sparsecnn", "note": note})
        elif spconv_note:
            for r in rows:
                r["note"] = spconv_note
        # --- dense conv3d ------------------------------------------------------------------
        dense_gb = 2 * batch * channels * res**3 * 4 / 1e9
        if cfg.dense and dense_gb <= cfg.dense_limit_gb:
            xd = base.replace_feature(feats).to_dense()

            def dense():
                return F.conv3d(xd, w, padding=1)

            first, t, _ = time_calls(dense, 0.0, 2, 2)
            yd, md = peak_rss_mb(dense)
            err = float((yd.movedim(1, -1)[tuple(coords.long().T)] - ref_ours).abs().max())
            rows.append({**common, "provider": "dense conv3d", "fresh_ms": t, "reused_ms": t,
                         "first_call_ms": first, "fresh_peak_mb": md, "reused_peak_mb": md,
                         "max_abs_err": err, "err_vs": "sparsecnn"})
            del xd, yd
        elif cfg.dense:
            rows.append({**common, "provider": "dense conv3d",
                         "note": f"skipped: input + output {dense_gb:.1f} GB > {cfg.dense_limit_gb} GB"})
    _derive(rows)
    return rows


def _derive(rows: list[dict]) -> None:
    for r in rows:
        for k in ROW_KEYS:
            r.setdefault(k, None)
    by = {r["provider"]: r for r in rows}
    sc, dn = by.get("spconv"), by.get("dense conv3d")
    for r in rows:
        if r["reused_ms"]:
            r["gflops_reused"] = r["gflop"] / r["reused_ms"] * 1e3
        if sc and sc["fresh_ms"] and r["fresh_ms"]:
            r["speedup_fresh_vs_spconv"] = sc["fresh_ms"] / r["fresh_ms"]
            r["speedup_reused_vs_spconv"] = sc["reused_ms"] / r["reused_ms"]
        if dn and dn["reused_ms"] and r["reused_ms"]:
            r["speedup_reused_vs_dense"] = dn["reused_ms"] / r["reused_ms"]


def run(cfg: Config, progress=None) -> tuple[list[dict], dict]:
    """Every case of ``cfg``; returns ``(rows, meta)``. ``progress(description)`` is called before
    each case."""
    spc, note = (spconv_module() if cfg.spconv else (None, "spconv not requested"))
    meta = {"config": asdict(cfg), "spconv": None, "spconv_note": note,
            "mmap_threshold": "128 KiB during memory measurements, 32 MiB otherwise (glibc)",
            "memory_method": "peak RSS rise (VmHWM after clear_refs=5) over RSS before the call"}
    if spc is not None:
        import spconv
        meta["spconv"] = getattr(spconv, "__version__", "2.x")
    rows: list[dict] = []
    with threads(cfg.threads):
        for scan in cfg.scans:
            for res in cfg.resolutions:
                for ch in cfg.channels:
                    for b in cfg.batches:
                        if progress:
                            progress(f"{scan} {res}^3 C={ch} batch {b}")
                        rows += run_case(cfg, scan, res, b, ch, spc, note)
    return rows, meta


# ---------------------------------------------------------------------------------------------
# a small network end to end
def encoder(spatial_mod, c_in: int = 1, width: int = 16):
    """A sparse 3-D encoder: SubM(c_in->w) BN ReLU, SubM(w->w) BN ReLU, SparseConv(w->2w, s2)
    BN ReLU, SubM(2w->2w) BN ReLU, SparseConv(2w->4w, s2) BN ReLU, SubM(4w->4w) BN ReLU -- with
    the module classes of ``spatial_mod`` (sparsecnn.spatial or spconv.pytorch)."""
    nn = torch.nn
    S = spatial_mod
    is_spconv = not hasattr(S, "SparseBatchNorm")
    bn = (lambda c: nn.BatchNorm1d(c)) if is_spconv else (lambda c: S.SparseBatchNorm(c))
    relu = (lambda: nn.ReLU()) if is_spconv else (lambda: S.SparseReLU())
    w = width
    return S.SparseSequential(
        S.SubMConv3d(c_in, w, 3, bias=False, indice_key="s1"), bn(w), relu(),
        S.SubMConv3d(w, w, 3, bias=False, indice_key="s1"), bn(w), relu(),
        S.SparseConv3d(w, 2 * w, 3, stride=2, padding=1, bias=False, indice_key="d1"), bn(2 * w), relu(),
        S.SubMConv3d(2 * w, 2 * w, 3, bias=False, indice_key="s2"), bn(2 * w), relu(),
        S.SparseConv3d(2 * w, 4 * w, 3, stride=2, padding=1, bias=False, indice_key="d2"), bn(4 * w), relu(),
        S.SubMConv3d(4 * w, 4 * w, 3, bias=False, indice_key="s3"), bn(4 * w), relu(),
    )


def copy_encoder_weights(src, dst) -> None:
    """Copy a sparsecnn encoder's parameters and BN statistics into the spconv one."""
    for a, b in zip(src, dst):
        if hasattr(a, "weight") and a.weight is not None and a.weight.dim() == 5:
            b.weight.data = to_spconv_weight(a.weight.data)
        elif isinstance(a, torch.nn.BatchNorm1d):
            b.load_state_dict(a.state_dict())


def run_network(cfg: Config, scan: str = "bunny", res: int = 128, batch: int = 1,
                width: int = 16) -> dict:
    """Time the :func:`encoder` end to end (fresh rulebooks: from coordinates) in sparsecnn and
    in spconv with the same weights; returns a row dict with both times and the max abs
    difference of the outputs (compared site by site)."""
    import sparsecnn.spatial as ours_mod

    base = meshes.voxelize(scan, res, channels=1, batch=batch, seed=cfg.seed)
    torch.manual_seed(cfg.seed)
    net = encoder(ours_mod, 1, width)
    for m in net:        # non-trivial BN statistics
        if isinstance(m, torch.nn.BatchNorm1d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    net.eval()
    feats, coords, shape = base.features, base.coords.clone(), (res,) * 3
    row = {"scan": scan, "res": res, "batch": batch, "width": width, "sites": base.n}
    with torch.no_grad(), threads(cfg.threads):
        def ours():
            return net(SparseTensor(feats, coords, shape, batch_size=batch))

        first, t, _ = time_calls(ours, cfg.min_time, cfg.min_reps, cfg.max_reps)
        y = ours()
        _, mem = peak_rss_mb(ours)
        row.update(sparsecnn_ms=t, sparsecnn_first_ms=first, sparsecnn_peak_mb=mem,
                   out_sites=y.n, out_channels=y.channels)
        spc, note = spconv_module() if cfg.spconv else (None, "spconv not requested")
        if spc is None:
            row["note"] = note
            return row
        snet = encoder(spc, 1, width)
        copy_encoder_weights(net, snet)
        snet.eval()

        def theirs():
            return snet(spc.SparseConvTensor(feats, coords, list(shape), batch))

        first, t, _ = time_calls(theirs, cfg.min_time, cfg.min_reps, cfg.max_reps)
        ys = theirs()
        _, mem = peak_rss_mb(theirs)
        # compare site by site (the two may order output rows differently)
        a = {tuple(c): i for i, c in enumerate(y.coords.tolist())}
        order = torch.tensor([a.get(tuple(c), -1) for c in ys.indices.tolist()])
        ok = bool((order >= 0).all()) and len(order) == y.n
        err = float((ys.features - y.features[order.clamp_min(0)]).abs().max()) if ok else float("nan")
        scale = float(y.features.abs().max())
        row.update(spconv_ms=t, spconv_first_ms=first, spconv_peak_mb=mem,
                   same_sites=ok, max_abs_err=err, max_abs_out=scale,
                   speedup_vs_spconv=t / row["sparsecnn_ms"])
    return row


# ---------------------------------------------------------------------------------------------
# rendering
def render(rows: list[dict], meta: dict, network: dict | None, console) -> None:
    """Rich tables of the rows and the network row."""
    from rich.table import Table

    def f(v, spec=".3g"):
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return "-"
        return format(v, spec)

    t = Table(title=f"SubMConv3d 3x3x3, fp32, {meta['config']['threads']} threads "
                    "(median ms; speedups = spconv time / ours)", title_justify="left")
    for col in ("scan", "res", "B", "C", "sites", "occ %", "nbr/site", "provider", "fresh ms",
                "reused ms", "GFLOP/s", "x spconv fresh", "x spconv reused", "x dense",
                "peak MB fresh", "peak MB reused", "max |err|", "note"):
        t.add_column(col, justify="left" if col in ("scan", "provider", "note") else "right")
    for r in rows:
        t.add_row(r["scan"], str(r["res"]), str(r["batch"]), str(r["channels"]), str(r["sites"]),
                  f(r["occupancy_pct"]), f(r["neighbours_per_site"]), r["provider"],
                  f(r["fresh_ms"]), f(r["reused_ms"]), f(r["gflops_reused"]),
                  f(r["speedup_fresh_vs_spconv"]), f(r["speedup_reused_vs_spconv"]),
                  f(r["speedup_reused_vs_dense"]), f(r["fresh_peak_mb"]), f(r["reused_peak_mb"]),
                  f(r["max_abs_err"], ".1e"), r["note"] or "")
    console.print(t)
    if meta.get("spconv_note") and not meta.get("spconv"):
        console.print(f"[yellow]{meta['spconv_note']}: spconv columns skipped[/]")
    if network:
        t = Table(title="encoder end to end (fresh rulebooks, from coordinates)", title_justify="left")
        keys = [k for k in ("scan", "res", "batch", "width", "sites", "out_sites", "sparsecnn_ms",
                            "spconv_ms", "speedup_vs_spconv", "sparsecnn_peak_mb",
                            "spconv_peak_mb", "same_sites", "max_abs_err", "max_abs_out", "note")
                if k in network]
        for k in keys:
            t.add_column(k, justify="right")
        t.add_row(*(f(network[k]) if isinstance(network[k], float) else str(network[k])
                    for k in keys))
        console.print(t)


def markdown(rows: list[dict], network: dict | None = None) -> str:
    """The rows as a Markdown table (one line per case: ours, spconv, dense side by side)."""
    def f(v, spec=".3g"):
        return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)

    cases: dict = {}
    for r in rows:
        cases.setdefault((r["scan"], r["res"], r["batch"], r["channels"]), {})[r["provider"]] = r
    head = ("| scan | grid | B | C | sites (occ.) | ours fresh / reused ms | spconv fresh / reused ms "
            "| x fresh | x reused | dense ms | peak MB ours / spconv (fresh) | spconv wrong sites |")
    lines = [head, "|" + " --- |" * 12]
    for (scan, res, b, c), by in cases.items():
        o, sc, dn = by.get("sparsecnn", {}), by.get("spconv", {}), by.get("dense conv3d", {})
        note = sc.get("note") or ""
        wrong = note.split(" of ")[0].replace("spconv wrong at ", "") if "wrong" in note else "0" if sc else "–"
        lines.append(
            f"| {scan} | {res}^3 | {b} | {c} | {o.get('sites')} ({f(o.get('occupancy_pct'))} %) "
            f"| {f(o.get('fresh_ms'))} / {f(o.get('reused_ms'))} "
            f"| {f(sc.get('fresh_ms'))} / {f(sc.get('reused_ms'))} "
            f"| {f(o.get('speedup_fresh_vs_spconv'), '.2f')} | {f(o.get('speedup_reused_vs_spconv'), '.2f')} "
            f"| {f(dn.get('reused_ms'))} | {f(o.get('fresh_peak_mb'))} / {f(sc.get('fresh_peak_mb'))} "
            f"| {wrong} |")
    algos = [r for r in rows if r["provider"].startswith("sparsecnn[")]
    if algos:
        lines += ["", "| scan | grid | B | C | algo | fresh ms | reused ms | GFLOP/s |",
                  "|" + " --- |" * 8]
        lines += [f"| {r['scan']} | {r['res']}^3 | {r['batch']} | {r['channels']} | "
                  f"{r['provider'][10:-1]} | {f(r['fresh_ms'])} | {f(r['reused_ms'])} | "
                  f"{f(r['gflops_reused'])} |" for r in algos]
    if network:
        n = network
        lines += ["", "| network | grid | sites -> out sites | ours ms | spconv ms | x | peak MB ours / spconv | max abs diff (max abs out) |",
                  "|" + " --- |" * 8,
                  f"| encoder w={n.get('width')} | {n.get('res')}^3 | {n.get('sites')} -> {n.get('out_sites')} "
                  f"| {f(n.get('sparsecnn_ms'))} | {f(n.get('spconv_ms'))} | {f(n.get('speedup_vs_spconv'), '.2f')} "
                  f"| {f(n.get('sparsecnn_peak_mb'))} / {f(n.get('spconv_peak_mb'))} "
                  f"| {f(n.get('max_abs_err'), '.1e')} ({f(n.get('max_abs_out'))}) |"]
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path) -> None:
    """Bar chart: speedup over spconv (fresh and reused rulebook) per case -> path.png."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    ours = [r for r in rows if r["provider"] == "sparsecnn" and r["speedup_fresh_vs_spconv"]]
    if not ours:
        return
    labels = [f"{r['scan'][:4]} {r['res']} C{r['channels']} B{r['batch']}" for r in ours]
    x = np.arange(len(ours))
    fig, ax = plt.subplots(figsize=(max(8, 0.45 * len(ours)), 4.5))
    ax.bar(x - 0.2, [r["speedup_fresh_vs_spconv"] for r in ours], 0.4, label="fresh rulebook")
    ax.bar(x + 0.2, [r["speedup_reused_vs_spconv"] for r in ours], 0.4, label="reused rulebook")
    ax.axhline(1.0, color="k", lw=0.8)
    ax.set_xticks(x, labels, rotation=60, ha="right", fontsize=8)
    ax.set_ylabel("speedup over spconv (x)")
    ax.set_title("sparsecnn.spatial SubMConv3d vs spconv (CPU), same process")
    ax.legend()
    fig.tight_layout()
    fig.savefig(f"{path}.png", dpi=120)
    plt.close(fig)
