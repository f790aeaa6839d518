"""Choosing a kernel per layer by measuring it (autotuning), with an on-disk cache of decisions.

The approach follows spconv's / TorchSparse's ``tune_and_cache``: every candidate kernel that can
run the :class:`~sparsecnn.problem.Problem` here (:func:`sparsecnn.kernels.registry.candidates`,
dense PyTorch included) is run on the layer's real input and timed with the project's one
harness (:func:`sparsecnn.timing.measure`: first call apart, alternating blocks, outliers
dropped, medians). A candidate whose output does not match dense is rejected. The winner is kept
only if it beats dense by a margin: **dense wins ties and close calls** (a sparse kernel must be
at least ``margin`` = 5 % faster), so tuning never picks a kernel slower than dense.

A measurement that other processes disturbed (:attr:`sparsecnn.timing.Timing.contended`) is
repeated up to ``retries`` times; if it stays disturbed the decision is used for this run but
**not cached** (a warning says so), unless ``SPARSECNN_TUNE_CONTENDED=cache`` is set (shared
CI machines, where someone is always running).

Decisions are cached in a JSON file (``$SPARSECNN_CACHE_DIR/tuning.json``, default
``~/.cache/sparsecnn/tuning.json``) keyed by :func:`cache_key`: the problem's key (geometry,
batch, density rounded to 0.01, format, dtype, device, fused ReLU), the compilation target's ISA
level and CPU name, the CPU model, the thread counts, and each candidate kernel's fingerprint
(name, version and a hash of its source), so another CPU, a forced target or a changed kernel
never reuses a stale decision.

The file is safe to share:

- reads need no lock and no write access (writers replace the file atomically, so a reader sees
  a whole file); a missing, unreadable, corrupt or foreign file reads as empty;
- an entry that does not hold a valid decision (not a dict, a non-string or unknown choice,
  negative or non-finite times) is ignored with one warning per file version;
- updates take an exclusive ``fcntl`` lock on ``<file>.lock``, re-read, merge, and write a
  temporary file that replaces the old one (:func:`sparsecnn._atomic.atomic_path`); temporary
  files left by killed writers are removed; when the directory or lock file is not writable
  the decision is kept in memory for this process, with one warning, and inference goes on.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import platform
import threading
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch

from .._atomic import atomic_path, remove_orphans
from ..kernels import registry
from ..kernels.capabilities import numba_threads, target
from ..problem import Problem
from ..timing import measure

CACHE_ENV = "SPARSECNN_CACHE_DIR"
CONTENDED_ENV = "SPARSECNN_TUNE_CONTENDED"
CACHE_VERSION = 2
#: A sparse kernel must be this much faster than dense (relative) to be chosen.
DEFAULT_MARGIN = 0.05
#: How often (s) :meth:`TuningCache.signature` looks at the file again.
RESTAT_S = 0.5
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
    return int(torch.get_num_threads()), numba_threads()


def cache_dir() -> Path:
    """Directory of sparsecnn's caches: ``$SPARSECNN_CACHE_DIR`` or ``~/.cache/sparsecnn``."""
    return _cache_dir_for(os.environ.get(CACHE_ENV))


@functools.lru_cache(maxsize=16)
def _cache_dir_for(env: str | None) -> Path:
    return Path(env).expanduser() if env else Path.home() / ".cache" / "sparsecnn"


@functools.lru_cache(maxsize=16)
def _default_file(env: str | None) -> Path:
    return _cache_dir_for(env) / "tuning.json"


def cache_key(problem: Problem, kernels) -> str:
    """The tuning-cache key of ``problem`` when choosing among ``kernels`` (Kernel objects).

    ``problem.key()`` + ``|isa=...|cpu_name=...|cpu=...|threads=T,N|kernels=fp1,fp2,...`` where
    each ``fp`` is a kernel's :attr:`~sparsecnn.kernels.registry.Kernel.fingerprint`.
    """
    t = target()
    tt, nt = thread_counts()
    fps = ",".join(sorted(k.fingerprint for k in kernels))
    return (f"{problem.key()}|isa={t.isa}|cpu_name={t.cpu_name}|cpu={cpu_model()}|"
            f"threads={tt},{nt}|kernels={fps}")


# ---------------------------------------------------------------------------------------------
# results
# ---------------------------------------------------------------------------------------------
@dataclass
class Measurement:
    """What tuning measured for one candidate kernel on one layer.

    Attributes
    ----------
    name : str
        Kernel name.
    median_ms : float or None
        Median time per call (ms); None if the kernel failed or was rejected.
    samples : int
        Timed blocks kept.
    dropped : int
        Blocks dropped as outliers.
    first_call_ms : float or None
        The first call, JIT compilation included (reported apart, never in the median).
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
    """The decision for one layer at one input signature.

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
    contended : bool
        Other processes disturbed every attempt at measuring (the decision was not cached).
    attempts : int
        Measurements made (1 + retries used).
    """

    choice: str
    dense_ms: float | None
    chosen_ms: float | None
    key: str
    cached: bool = False
    measurements: list[Measurement] = field(default_factory=list)
    margin: float = DEFAULT_MARGIN
    contended: bool = False
    attempts: int = 1

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
                   margin=float(d.get("margin", DEFAULT_MARGIN)),
                   contended=bool(d.get("contended", False)), attempts=int(d.get("attempts", 1)))


def _valid_time(v) -> bool:
    return v is None or (isinstance(v, (int, float)) and not isinstance(v, bool)
                         and math.isfinite(v) and v >= 0)


def valid_entry(entry) -> str | None:
    """Why a cache entry is not a usable decision, or None if it is."""
    if not isinstance(entry, dict):
        return f"an entry must be an object, got {type(entry).__name__}"
    choice = entry.get("choice")
    if not isinstance(choice, str) or not choice:
        return f"'choice' must be a kernel name, got {choice!r}"
    for name in ("dense_ms", "chosen_ms"):
        if not _valid_time(entry.get(name)):
            return f"{name!r} must be a non-negative finite number, got {entry.get(name)!r}"
    ms = entry.get("measurements", [])
    if not isinstance(ms, list) or not all(isinstance(m, dict) for m in ms):
        return "'measurements' must be a list of objects"
    try:
        TuneResult.from_dict(entry)
    except (TypeError, ValueError, KeyError) as exc:
        return f"not a tuning result ({exc})"
    return None


# ---------------------------------------------------------------------------------------------
# the cache file
# ---------------------------------------------------------------------------------------------
class TuningCache:
    """A JSON file of tuning decisions, safe across threads and processes (module docstring).

    Parameters
    ----------
    path : str or Path or None
        The JSON file; default ``cache_dir() / "tuning.json"`` (resolved when used, so the
        environment variable may change between calls).
    """

    def __init__(self, path=None):
        self._path = Path(path) if path is not None else None
        self._lock = threading.Lock()
        self._parsed: tuple | None = None        # (path, stat signature, entries)
        self._memory: dict[Path, dict] = {}      # per file: decisions that could not be written
        self._warned: set = set()
        #: bumped on every change made through this object (decision memos key on it)
        self.generation = 0
        self._stat: tuple | None = None          # (path, when, stat signature)

    @property
    def path(self) -> Path:
        return self._path if self._path is not None else _default_file(os.environ.get(CACHE_ENV))

    def _warn_once(self, tag, message: str) -> None:
        if tag not in self._warned:
            self._warned.add(tag)
            warnings.warn(message, RuntimeWarning, stacklevel=3)

    def _read_file(self, path: Path) -> dict:
        try:
            with open(path, encoding="utf-8") as fh:
                data = json.load(fh)
        except (OSError, ValueError):
            return {}
        if not isinstance(data, dict) or data.get("version") != CACHE_VERSION:
            return {}
        entries = data.get("entries")
        if not isinstance(entries, dict):
            return {}
        good = {}
        for key, entry in entries.items():
            why = valid_entry(entry)
            if why is None:
                good[key] = entry
            else:
                self._warn_once(("bad", str(path), key),
                                f"tuning cache {str(path)!r}: ignoring entry {key[:60]!r}...: {why}")
        return good

    def load(self) -> dict:
        """All valid entries (key -> decision dict); no lock, no write access needed."""
        path = self.path
        try:
            st = path.stat()
            sig = (st.st_mtime_ns, st.st_size, st.st_ino)
        except OSError:
            sig = None
        with self._lock:
            if self._parsed is not None and self._parsed[:2] == (path, sig):
                entries = self._parsed[2]
            else:
                entries = self._read_file(path) if sig is not None else {}
                self._parsed = (path, sig, entries)
            mem = self._memory.get(path)
            return {**entries, **mem} if mem else entries

    def get(self, key: str) -> dict | None:
        """The decision stored under ``key`` or None."""
        return self.load().get(key)

    def signature(self) -> tuple:
        """Changes when what :meth:`load` returns may have changed: the file's path, this
        object's generation (every change made in this process), and the file's stat, looked
        at most every :data:`RESTAT_S` seconds (other processes' decisions show up that late):
        decision memos key on it."""
        path, now = self.path, time.monotonic()
        last = self._stat
        if last is not None and last[0] == path and now - last[1] < RESTAT_S:
            return (path, last[2], self.generation)
        try:
            st = os.stat(path)
            sig = (st.st_mtime_ns, st.st_size, st.st_ino)
        except OSError:
            sig = None
        self._stat = (path, now, sig)
        return (path, sig, self.generation)

    def put(self, key: str, value: dict) -> bool:
        """Store ``value`` under ``key``, merged with other writers, written atomically.

        Returns True if the file was written; False if it could not be (read-only or missing
        directory, unwritable lock file): the decision is then kept in memory for this process
        and a warning is given once.
        """
        why = valid_entry(value)
        if why is not None:
            raise ValueError(f"not a valid tuning decision: {why}")
        path = self.path
        self.generation += 1
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with self._lock, open(str(path) + ".lock", "a+") as fh:
                try:
                    import fcntl
                    fcntl.flock(fh, fcntl.LOCK_EX)
                except ImportError:  # pragma: no cover - non-POSIX: the thread lock only
                    pass
                entries = self._read_file(path)
                entries[key] = value
                payload = {"version": CACHE_VERSION, "entries": entries}
                with atomic_path(path) as tmp:
                    tmp.write_text(json.dumps(payload, indent=1, sort_keys=True), encoding="utf-8")
                remove_orphans(path)
                self._parsed = None
                self._memory.get(path, {}).pop(key, None)
            return True
        except OSError as exc:
            with self._lock:
                self._memory.setdefault(path, {})[key] = value
                self.generation += 1
            self._warn_once(("write", str(path)),
                            f"tuning cache {str(path)!r} is not writable ({exc}); tuning "
                            f"decisions are kept in memory for this process only")
            return False

    def clear(self) -> None:
        """Remove every entry (the file and this process's in-memory decisions)."""
        self.generation += 1
        with self._lock:
            self._memory.pop(self.path, None)
            self._parsed = None
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)


_DEFAULT_CACHE = TuningCache()


def default_cache() -> TuningCache:
    """The process-wide cache object (its file follows ``$SPARSECNN_CACHE_DIR``)."""
    return _DEFAULT_CACHE


# ---------------------------------------------------------------------------------------------
# tuning
# ---------------------------------------------------------------------------------------------
def _max_err(y: torch.Tensor, ref: torch.Tensor) -> tuple[float, bool]:
    if y.shape != ref.shape:
        return math.inf, False
    err = float((y - ref).abs().max()) if y.numel() else 0.0
    scale = max(1.0, float(ref.abs().max()) if ref.numel() else 0.0)
    return err, bool(math.isfinite(err) and err <= TOLERANCE * scale)


def candidate_kernels(problem: Problem, names: list[str] | None = None, weight=None) -> list:
    """The kernels tuning compares for ``problem``: ``dense`` plus every sparse candidate that can
    run it here (or those of ``names``, each checked with
    :func:`~sparsecnn.kernels.registry.resolve`). With ``weight``, kernels that take only some
    weights (:attr:`~sparsecnn.kernels.registry.Kernel.weight_check`, e.g. ``hybrid``) are
    included when they take this one."""
    if names is None:
        ks = registry.candidates(problem, weight)
    else:
        ks = [registry.resolve(problem, n, weight) for n in dict.fromkeys(names)]
    dense = registry.resolve(problem, "dense")
    return [dense, *[k for k in ks if k.name != "dense"]]


def tune(problem: Problem, run: Callable[[str], torch.Tensor], *,
         candidates: list[str] | None = None, cache: TuningCache | None = None,
         use_cache: bool = True, retune: bool = False, margin: float = DEFAULT_MARGIN,
         min_time_s: float = 0.05, max_time_s: float = 0.5, retries: int = 2,
         weight=None) -> TuneResult:
    """Measure the candidate kernels of one layer and return (and cache) the fastest.

    Parameters
    ----------
    problem : Problem
        The layer's problem at its real input signature.
    run : callable
        ``run(kernel_name) -> Tensor``: runs the layer on its real input with that kernel.
        Called with no gradient.
    candidates : list of str or None
        Kernel names to try besides dense; default: every kernel that can run ``problem`` here.
    cache : TuningCache or None
        Default :func:`default_cache`.
    use_cache : bool
        Look the decision up first and store it after measuring; False touches no file.
    retune : bool
        Measure even if a decision is cached (and replace it).
    margin : float
        Relative margin (default 0.05): a sparse kernel is chosen only if
        ``t_sparse <= (1 - margin) * t_dense``; otherwise dense.
    min_time_s, max_time_s : float
        Seconds of timed calls per candidate (see :func:`sparsecnn.timing.measure`).
    retries : int
        Re-measurements when other processes disturbed the measurement.
    weight : object or None
        The layer's weight: kernels that take only some weights (``hybrid``) are candidates when
        they take it (and then part of the cache key); None leaves them out.

    Returns
    -------
    TuneResult

    Raises
    ------
    ValueError
        If ``margin`` is outside [0, 1), a candidate is not registered or cannot run the problem.
    KernelUnavailableError
        If a named candidate cannot run on this machine.
    """
    if not 0.0 <= margin < 1.0:
        raise ValueError(f"margin must be in [0, 1), got {margin!r}")
    kernels = candidate_kernels(problem, candidates, weight)
    key = cache_key(problem, kernels)
    cache = cache or default_cache()
    names = [k.name for k in kernels]
    if use_cache and not retune:
        hit = cache.get(key)
        if hit is not None and hit.get("choice") in names:
            res = TuneResult.from_dict(hit)
            res.cached, res.key = True, key
            return res

    with torch.no_grad():
        ref = run("dense")
        fns: dict[str, Callable] = {"dense": functools.partial(run, "dense")}
        ms: dict[str, Measurement] = {}
        for name in names[1:]:
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
        attempts = 0
        while True:
            attempts += 1
            timed = measure(fns, warmup=2, min_time=min_time_s, max_time=max_time_s,
                            first_call=False)
            contended = any(t.contended for t in timed.values())
            if not contended or attempts > retries:
                break
    dense_t = timed["dense"]
    dense_m = Measurement("dense", dense_t.ms, dense_t.n_blocks, dense_t.n_dropped, None, 0.0)
    for name, t in timed.items():
        if name in ms:
            ms[name].median_ms, ms[name].samples, ms[name].dropped = t.ms, t.n_blocks, t.n_dropped
    choice, chosen_ms = "dense", dense_t.ms
    for name, m in ms.items():
        if m.status == "ok" and m.median_ms is not None and m.median_ms < chosen_ms:
            if m.median_ms <= (1.0 - margin) * dense_t.ms:
                choice, chosen_ms = name, m.median_ms
    res = TuneResult(choice, dense_t.ms, chosen_ms, key, False, [dense_m, *ms.values()], margin,
                     contended, attempts)
    if use_cache:
        if contended and os.environ.get(CONTENDED_ENV, "").lower() != "cache":
            warnings.warn(f"other processes ran while tuning {problem.key()} ({attempts} "
                          f"attempts): the choice {choice!r} is used but not cached "
                          f"(set {CONTENDED_ENV}=cache to cache it anyway)", RuntimeWarning,
                          stacklevel=2)
        else:
            entry = res.to_dict()
            entry.pop("cached", None)
            entry["time"] = time.strftime("%Y-%m-%dT%H:%M:%S")
            cache.put(key, entry)
    return res


def lookup(problem: Problem, cache: TuningCache | None = None) -> str | None:
    """The cached choice for ``problem`` among the kernels that can run it here, or None."""
    kernels = candidate_kernels(problem)
    hit = (cache or default_cache()).get(cache_key(problem, kernels))
    if hit is None or hit.get("choice") not in {k.name for k in kernels}:
        return None
    return hit["choice"]
