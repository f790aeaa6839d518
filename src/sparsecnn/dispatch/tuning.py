"""Choosing a kernel per layer by measuring it (autotuning), with an on-disk cache of decisions.

The approach follows spconv's / TorchSparse's ``tune_and_cache``: every candidate kernel (the
registry's kernels for the weight's format, plus dense PyTorch) is run on the layer's real input
(shape and batch), after a warm-up that absorbs JIT compilation; the timed calls come in short
alternating blocks per candidate (so background load hits them alike), samples far above the running
mean are dropped as noise, and the median is kept. A candidate whose output does not match dense
is rejected. The winner is kept only if it beats dense by a margin: **dense wins ties and close
calls** (a sparse kernel must be at least ``margin`` = 5 % faster), so tuning never picks a
kernel slower than dense.

Decisions are cached in a JSON file (``$SPARSECNN_CACHE_DIR/tuning.json``, default
``~/.cache/sparsecnn/tuning.json``), keyed by the layer's shape and geometry, batch, density
(rounded to 0.01), format, dtype, thread counts, CPU model and the set of candidate kernels. The
file is rewritten atomically (temporary file + ``os.replace``) under an exclusive ``fcntl`` lock,
so concurrent processes neither corrupt it nor lose each other's entries.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import platform
import statistics
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch

from .._atomic import atomic_path
from ..kernels import registry

CACHE_ENV = "SPARSECNN_CACHE_DIR"
CACHE_VERSION = 1
#: A sparse kernel must be this much faster than dense (relative) to be chosen.
DEFAULT_MARGIN = 0.05
#: A timed sample above ``OUTLIER_FACTOR`` x the running mean of the kept samples is dropped.
OUTLIER_FACTOR = 2.0
#: Output check against dense: ``max|y - y_dense| <= TOLERANCE * max(1, max|y_dense|)``.
TOLERANCE = 1e-4


# ---------------------------------------------------------------------------------------------
# environment: threads and CPU model (part of every key)
# ---------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux, else :func:`platform.processor`)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def thread_counts() -> tuple[int, int]:
    """``(torch threads, numba threads)`` in effect now."""
    try:
        import numba
        nb = int(numba.get_num_threads())
    except Exception:  # pragma: no cover - numba is a core dependency
        nb = 0
    return int(torch.get_num_threads()), nb


def cache_dir() -> Path:
    """Directory of sparsecnn's caches: ``$SPARSECNN_CACHE_DIR`` or ``~/.cache/sparsecnn``."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "sparsecnn"


def problem_key(problem: dict, candidates: list[str]) -> str:
    """The cache key of a problem: geometry, batch, rounded density, format, dtype, threads, CPU,
    and the sorted candidate kernel names (a new kernel invalidates old decisions).

    Parameters
    ----------
    problem : dict
        As built by :func:`sparsecnn.functional.conv2d_problem` (op ``"conv2d"``) or the linear
        problem dict (op ``"linear"``: ``B``, ``in``, ``out``).
    candidates : list of str
        Kernel names that were (or would be) measured.
    """
    op = problem["op"]
    if op == "conv2d":
        geo = (f"N={problem['N']},C={problem['C']},H={problem['H']},W={problem['W']},"
               f"K={problem['K']},R={problem['R']},S={problem['S']},"
               f"stride={tuple(problem['stride'])},padding={tuple(problem['padding'])},"
               f"dilation={tuple(problem['dilation'])},groups={problem['groups']}")
    elif op == "linear":
        geo = f"B={problem['B']},in={problem['in']},out={problem['out']}"
    else:
        raise ValueError(f"unknown op {op!r}; expected 'conv2d' or 'linear'")
    tt, nt = thread_counts()
    relu = int(bool(problem.get("relu", False)))
    return (f"{op}|{geo}|relu={relu}|density={round(float(problem['density']), 2):.2f}|"
            f"format={problem['format']}|dtype={problem['dtype']}|torch_threads={tt}|"
            f"numba_threads={nt}|cpu={cpu_model()}|kernels={','.join(sorted(candidates))}")


# ---------------------------------------------------------------------------------------------
# the cache file
# ---------------------------------------------------------------------------------------------
class TuningCache:
    """A JSON file of tuning decisions, safe across threads and processes.

    Parameters
    ----------
    path : str or Path or None
        The JSON file; default ``cache_dir() / "tuning.json"`` (resolved when first used, so the
        environment variable can change between calls).

    Notes
    -----
    Reads take a shared ``fcntl`` lock on ``<path>.lock``; updates take an exclusive lock, re-read
    the file, merge and write a temporary file in the same directory that replaces the old one
    with :func:`os.replace` (atomic on POSIX). A corrupt or foreign file is treated as empty and
    overwritten at the next update.
    """

    def __init__(self, path=None):
        self._path = Path(path) if path is not None else None
        self._lock = threading.Lock()

    @property
    def path(self) -> Path:
        return self._path if self._path is not None else cache_dir() / "tuning.json"

    @contextlib.contextmanager
    def _file_lock(self, exclusive: bool):
        path = self.path
        path.parent.mkdir(parents=True, exist_ok=True)
        with self._lock, open(str(path) + ".lock", "a+") as fh:
            try:
                import fcntl
                fcntl.flock(fh, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
            except ImportError:  # pragma: no cover - non-POSIX: the thread lock only
                pass
            yield

    def _read(self) -> dict:
        try:
            with open(self.path, encoding="utf-8") as fh:
                data = json.load(fh)
        except (OSError, ValueError):
            return {}
        if not isinstance(data, dict) or data.get("version") != CACHE_VERSION:
            return {}
        entries = data.get("entries")
        return entries if isinstance(entries, dict) else {}

    def load(self) -> dict:
        """All entries (key -> decision dict)."""
        with self._file_lock(exclusive=False):
            return self._read()

    def get(self, key: str) -> dict | None:
        """The decision stored under ``key`` or None."""
        return self.load().get(key)

    def put(self, key: str, value: dict) -> None:
        """Store ``value`` (JSON-serialisable) under ``key``; atomic, merged with other writers."""
        path = self.path
        with self._file_lock(exclusive=True):
            entries = self._read()
            entries[key] = value
            payload = {"version": CACHE_VERSION, "entries": entries}
            with atomic_path(path) as tmp:
                tmp.write_text(json.dumps(payload, indent=1, sort_keys=True), encoding="utf-8")

    def clear(self) -> None:
        """Remove every entry (the file is rewritten empty)."""
        with self._file_lock(exclusive=True):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)


_DEFAULT_CACHE = TuningCache()


def default_cache() -> TuningCache:
    """The process-wide cache object (its file follows ``$SPARSECNN_CACHE_DIR``)."""
    return _DEFAULT_CACHE


# ---------------------------------------------------------------------------------------------
# timing
# ---------------------------------------------------------------------------------------------
@dataclass
class Measurement:
    """What tuning measured for one candidate kernel on one layer.

    Attributes
    ----------
    name : str
        Kernel name.
    median_ms : float or None
        Median of the kept timed samples (ms); None if the kernel failed or was rejected.
    samples : int
        Timed samples kept.
    dropped : int
        Samples dropped as outliers (above ``OUTLIER_FACTOR`` x the running mean).
    first_call_ms : float or None
        The first (warm-up) call, JIT compilation included (reported apart, never in the median).
    max_abs_err : float or None
        ``max |y - y_dense|``.
    status : str
        ``"ok"``, ``"rejected"`` (output mismatch) or ``"error"`` (raised).
    message : str
        Why it was rejected / what it raised.
    """

    name: str
    median_ms: float | None = None
    samples: int = 0
    dropped: int = 0
    first_call_ms: float | None = None
    max_abs_err: float | None = None
    status: str = "ok"
    message: str = ""


@dataclass
class TuneResult:
    """The decision for one layer at one input shape.

    Attributes
    ----------
    choice : str
        The kernel to run (``"dense"`` unless a sparse kernel beat dense by the margin).
    dense_ms, chosen_ms : float
        Median times (ms) of dense and of the choice.
    key : str
        The cache key.
    cached : bool
        True if the decision came from the cache (no measurement in this call).
    measurements : list of Measurement
        Every candidate (empty when cached).
    margin : float
        The relative margin a sparse kernel had to beat dense by.
    """

    choice: str
    dense_ms: float | None
    chosen_ms: float | None
    key: str
    cached: bool = False
    measurements: list[Measurement] = field(default_factory=list)
    margin: float = DEFAULT_MARGIN

    @property
    def speedup(self) -> float | None:
        """dense_ms / chosen_ms."""
        if not self.dense_ms or not self.chosen_ms:
            return None
        return self.dense_ms / self.chosen_ms

    @property
    def rejected(self) -> list[Measurement]:
        """Candidates rejected for a wrong output or an exception."""
        return [m for m in self.measurements if m.status != "ok"]

    def to_dict(self) -> dict:
        d = asdict(self)
        d["speedup"] = self.speedup
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "TuneResult":
        ms = [Measurement(**m) for m in d.get("measurements", [])]
        return cls(choice=d["choice"], dense_ms=d.get("dense_ms"), chosen_ms=d.get("chosen_ms"),
                   key=d.get("key", ""), cached=bool(d.get("cached", False)), measurements=ms,
                   margin=float(d.get("margin", DEFAULT_MARGIN)))


def _filtered_median(samples: list[float], factor: float) -> tuple[float, int, int]:
    """Median of ``samples`` after dropping those above ``factor`` x the running mean of those
    kept so far (in arrival order). Returns ``(median, kept, dropped)``."""
    kept: list[float] = []
    total = 0.0
    for s in samples:
        if kept and s > factor * (total / len(kept)):
            continue
        kept.append(s)
        total += s
    # a first sample far above the rest (cold caches) is caught by a second pass on the median
    med = statistics.median(kept)
    kept2 = [s for s in kept if s <= factor * med] or kept
    return statistics.median(kept2), len(kept2), len(samples) - len(kept2)


def benchmark(fns: dict[str, Callable[[], object]], *, warmup: int = 2, min_repeats: int = 7,
              max_repeats: int = 200, min_time_s: float = 0.02, block: int = 5,
              outlier_factor: float = OUTLIER_FACTOR) -> dict[str, tuple[float, int, int, float]]:
    """Time several zero-argument callables in alternating blocks.

    Each function is called once (its first call, JIT compilation included, timed apart), then
    ``warmup`` more times untimed. Then rounds: in each round every function in turn makes one
    untimed call (its thread pool wakes up again: PyTorch's OpenMP and Numba's pools would
    otherwise steal cycles from each other when strictly interleaved) and ``block`` timed calls.
    Rounds go on until every function has at least ``min_repeats`` samples and the rounds took
    ``min_time_s`` seconds (at most ``max_repeats`` samples each). Alternating blocks spread slow
    drifts (other processes, frequency) over all functions alike.

    Returns
    -------
    dict name -> (median_ms, kept, dropped, first_call_ms)
        Median of the samples kept after dropping outliers (see :func:`_filtered_median`).
    """
    block = max(1, int(block))
    first: dict[str, float] = {}
    for name, fn in fns.items():
        t0 = time.perf_counter()
        fn()
        first[name] = (time.perf_counter() - t0) * 1e3
        for _ in range(warmup):
            fn()
    samples: dict[str, list[float]] = {name: [] for name in fns}
    start = time.perf_counter()
    n = 0
    while n < max_repeats and (n < min_repeats or time.perf_counter() - start < min_time_s):
        for name, fn in fns.items():
            fn()
            for _ in range(block):
                t0 = time.perf_counter()
                fn()
                samples[name].append((time.perf_counter() - t0) * 1e3)
        n += block
    out = {}
    for name, s in samples.items():
        med, kept, dropped = _filtered_median(s, outlier_factor)
        out[name] = (med, kept, dropped, first[name])
    return out


def _max_err(y: torch.Tensor, ref: torch.Tensor) -> tuple[float, bool]:
    if y.shape != ref.shape:
        return math.inf, False
    err = float((y - ref).abs().max()) if y.numel() else 0.0
    scale = max(1.0, float(ref.abs().max()) if ref.numel() else 0.0)
    return err, bool(math.isfinite(err) and err <= TOLERANCE * scale)


def tune(op: str, run: Callable[[str], torch.Tensor], problem: dict, *,
         candidates: list[str] | None = None, cache: TuningCache | None = None,
         use_cache: bool = True, margin: float = DEFAULT_MARGIN, warmup: int = 5,
         min_repeats: int = 10, min_time_s: float = 0.05) -> TuneResult:
    """Measure the candidate kernels of one layer and return (and cache) the fastest.

    Parameters
    ----------
    op : {"conv2d", "linear"}
    run : callable
        ``run(kernel_name) -> Tensor``: runs the layer on its real input with that kernel
        (``"dense"`` runs the dense weight through PyTorch). Called with no gradient.
    problem : dict
        The layer's problem dict (see :func:`problem_key`); must have ``"format"``.
    candidates : list of str or None
        Kernel names to try besides dense; default: every registered kernel of ``op`` that
        accepts ``problem["format"]`` and supports the problem.
    cache : TuningCache or None
        Default :func:`default_cache`.
    use_cache : bool
        Look the decision up first and store it after measuring.
    margin : float
        Relative margin (default 0.05): a sparse kernel is chosen only if
        ``t_sparse <= (1 - margin) * t_dense``; otherwise dense (ties and close calls go to dense).
    warmup, min_repeats, min_time_s
        Untimed calls after the first; timed rounds at least ``min_repeats`` and ``min_time_s``
        seconds in all (see :func:`benchmark`).

    Returns
    -------
    TuneResult

    Raises
    ------
    ValueError
        If ``margin`` is outside [0, 1) or a candidate name is not registered for ``op``.
    """
    if not 0.0 <= margin < 1.0:
        raise ValueError(f"margin must be in [0, 1), got {margin!r}")
    if candidates is None:
        candidates = [k.name for k in registry.candidates(op, problem["format"], problem)]
    else:
        for name in candidates:
            registry.get(op, name)  # raises ValueError for an unknown name
    candidates = [c for c in dict.fromkeys(candidates) if c != "dense"]
    key = problem_key(problem, ["dense", *candidates])
    cache = cache or default_cache()
    if use_cache:
        hit = cache.get(key)
        if hit is not None and hit.get("choice") in ("dense", *candidates):
            res = TuneResult.from_dict(hit)
            res.cached, res.key = True, key
            return res

    with torch.no_grad():
        ref = run("dense")
        fns: dict[str, Callable] = {"dense": functools.partial(run, "dense")}
        ms: dict[str, Measurement] = {}
        for name in candidates:
            m = Measurement(name)
            ms[name] = m
            try:
                t0 = time.perf_counter()
                y = run(name)
                m.first_call_ms = (time.perf_counter() - t0) * 1e3
            except Exception as exc:  # a kernel that raises is reported, never chosen
                m.status, m.message = "error", f"{type(exc).__name__}: {exc}"
                continue
            m.max_abs_err, ok = _max_err(y, ref)
            if not ok:
                m.status = "rejected"
                m.message = (f"output differs from dense: max|err| = {m.max_abs_err:.3g} > "
                             f"{TOLERANCE:g} x max(1, max|y_dense|)")
                continue
            fns[name] = functools.partial(run, name)
        timed = benchmark(fns, warmup=warmup, min_repeats=min_repeats, min_time_s=min_time_s)
    dense_med, kept, dropped, first = timed["dense"]
    dense_m = Measurement("dense", dense_med, kept, dropped, first, 0.0)
    for name, (med, kept, dropped, _) in timed.items():
        if name in ms:
            ms[name].median_ms, ms[name].samples, ms[name].dropped = med, kept, dropped
    choice, chosen_ms = "dense", dense_med
    for name, m in ms.items():
        if m.status == "ok" and m.median_ms is not None and m.median_ms < chosen_ms:
            if m.median_ms <= (1.0 - margin) * dense_med:
                choice, chosen_ms = name, m.median_ms
    res = TuneResult(choice, dense_med, chosen_ms, key, False, [dense_m, *ms.values()], margin)
    if use_cache:
        entry = res.to_dict()
        entry.pop("cached", None)
        entry["time"] = time.strftime("%Y-%m-%dT%H:%M:%S")
        cache.put(key, entry)
    return res


def lookup(problem: dict, op: str | None = None) -> str | None:
    """The cached choice for ``problem`` (with the currently registered candidates), or None."""
    op = op or problem["op"]
    names = ["dense", *[k.name for k in registry.candidates(op, problem["format"], problem)
                        if k.name != "dense"]]
    hit = default_cache().get(problem_key(problem, names))
    return None if hit is None else hit.get("choice")
