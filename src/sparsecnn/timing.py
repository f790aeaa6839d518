"""The one measurement harness: timing callables against each other in one process.

Used by kernel tuning (:mod:`sparsecnn.dispatch`), the layer benchmark (:mod:`sparsecnn.bench`),
the end-to-end timings of the ``optimize`` job and the hybrid-plan analysis, so that every
figure sparsecnn prints was measured the same way:

1. Each callable's first call is timed on its own (``first_call_ms``: JIT compilation and
   per-weight preparation; reported apart, never part of a median), then ``warmup`` more calls.
2. Each callable gets a :class:`torch.utils.benchmark.Timer` (which synchronises CUDA when a GPU
   is present) and a block size (calls per timed block, about ``min_time / 20`` of work).
3. Rounds time one block of every callable in turn, the order reversed every other round, each
   block preceded by one untimed call (a thread pool that slept while another callable ran
   wakes up outside the timed region: PyTorch's OpenMP and Numba's pools otherwise steal each
   other's cycles), until every callable has ``min_blocks`` blocks and ``min_time`` seconds and
   its IQR/median is under ``threshold``, or one has used ``max_time``.
4. Blocks above Q3 + 1.5 IQR are dropped (background load only ever adds time); median and IQR
   per call are reported.
5. Contention: between rounds, the runnable threads of *other* processes are counted
   (``/proc/loadavg`` minus this process's running threads), and blocks whose per-call time
   sits within 5 % of a multiple of the 4 ms scheduler tick while the median is far below it
   are counted. :attr:`Timing.contended` flags a measurement that other processes disturbed;
   the tuner re-measures those and never caches them (:func:`sparsecnn.dispatch.tune`).
"""

from __future__ import annotations

import os
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch.utils import benchmark as tbench

#: The Linux scheduler tick the contention check looks for (s).
TICK_S = 0.004


@dataclass
class Timing:
    """What :func:`measure` found for one callable.

    Attributes
    ----------
    ms, iqr_ms : float
        Median and interquartile range of the time per call over the kept blocks (ms).
    n_blocks, calls_per_block, n_dropped : int
        Blocks kept, calls per block, blocks dropped as outliers.
    first_call_ms : float or None
        The first call, alone (JIT compilation included); None if it was not made here.
    other_runnable : int or None
        Most runnable threads of other processes seen between rounds (None: no /proc).
    tick_blocks : int
        Blocks whose per-call time sits at a multiple of the 4 ms scheduler tick.
    contended : bool
        Other processes ran during the measurement, or tick-aligned blocks were seen.
    """

    ms: float
    iqr_ms: float
    n_blocks: int
    calls_per_block: int
    n_dropped: int
    first_call_ms: float | None = None
    other_runnable: int | None = None
    tick_blocks: int = 0
    contended: bool = False

    def to_dict(self) -> dict:
        return asdict(self)


# ---------------------------------------------------------------------------------------------
# threads
@contextmanager
def threads(n: int | None):
    """Run the block with ``n`` torch and Numba threads (both restored after); None: unchanged."""
    if n is None:
        yield
        return
    import numba

    old_torch, old_numba = torch.get_num_threads(), numba.get_num_threads()
    torch.set_num_threads(int(n))
    numba.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(old_torch)
        numba.set_num_threads(old_numba)


# ---------------------------------------------------------------------------------------------
# contention
def _own_running_threads() -> int:
    """Threads of this process in state R (running), from /proc/self/task/*/stat."""
    n = 0
    for task in Path("/proc/self/task").iterdir():
        try:
            stat = (task / "stat").read_text()
        except OSError:
            continue
        if stat[stat.rindex(")") + 2:].startswith("R"):
            n += 1
    return n


def runnable_others() -> int | None:
    """Runnable threads of *other* processes now: /proc/loadavg's running count (field 4,
    ``running/total``) minus this process's running threads (an OpenMP pool spinning after a
    parallel region counts as running). None where /proc is unavailable."""
    try:
        with open("/proc/loadavg", encoding="ascii") as f:
            running = int(f.read().split()[3].split("/")[0])
        own = _own_running_threads()
    except (OSError, ValueError, IndexError):
        return None
    return max(0, running - max(own, 1))


def other_runnable(samples: int = 5, interval_s: float = 0.05) -> int | None:
    """Most :func:`runnable_others` over a few samples ``interval_s`` apart (None: no /proc).
    A non-zero value means something else used the CPUs."""
    most = None
    for i in range(samples):
        n = runnable_others()
        if n is None:
            return None
        most = max(most or 0, n)
        if i + 1 < samples:
            time.sleep(interval_s)
    return most


def _tick_aligned(per_call_s: np.ndarray, calls: int, median_s: float) -> int:
    """Blocks whose time is within 5 % of a whole number (>= 1) of scheduler ticks while the
    median block is under half a tick: the signature of a thread descheduled for a tick."""
    block = per_call_s * calls
    if median_s * calls >= TICK_S / 2:
        return 0
    excess = block - median_s * calls
    ticks = np.round(excess / TICK_S)
    return int(((ticks >= 1) & (np.abs(excess - ticks * TICK_S) <= 0.05 * TICK_S * ticks)).sum())


# ---------------------------------------------------------------------------------------------
# measuring
def _robust(times: list[float], calls: int) -> tuple[float, float, int, int]:
    t = np.asarray(times, dtype=np.float64)
    if t.size >= 4:
        q1, q3 = np.percentile(t, [25, 75])
        kept = t[t <= q3 + 1.5 * (q3 - q1)]
    else:
        kept = t
    k1, k3 = np.percentile(kept, [25, 75])
    return float(np.median(kept)), float(k3 - k1), int(kept.size), int(t.size - kept.size)


def measure(fns: dict[str, Callable[[], object]], *, num_threads: int | None = None,
            warmup: int = 1, min_time: float = 0.2, max_time: float = 1.0, min_blocks: int = 5,
            threshold: float = 0.05, first_call: bool = True,
            estimates: dict[str, float] | None = None) -> dict[str, Timing]:
    """Time zero-argument callables against each other (see the module docstring).

    Parameters
    ----------
    fns : dict name -> callable
    num_threads : int or None
        Torch and Numba threads during the measurement (None: leave as they are).
    warmup : int
        Untimed calls after the first.
    min_time, max_time : float
        Seconds of timed calls per callable (at least / at most).
    min_blocks : int
        Fewest kept blocks per callable.
    threshold : float
        Stop once every callable's IQR/median is below this.
    first_call : bool
        Time the first call apart (False: the callables are already warm).
    estimates : dict name -> seconds per call, optional
        Known per-call times, to size blocks without an extra call.

    Returns
    -------
    dict name -> Timing
    """
    if not fns:
        return {}
    with threads(num_threads):
        first: dict[str, float | None] = dict.fromkeys(fns)
        for name, fn in fns.items():
            if first_call:
                t0 = time.perf_counter()
                fn()
                first[name] = (time.perf_counter() - t0) * 1e3
            for _ in range(warmup):
                fn()
        nt = torch.get_num_threads()
        timers = {k: tbench.Timer(stmt="fn()", globals={"fn": fn}, num_threads=nt)
                  for k, fn in fns.items()}
        number, times = {}, {k: [] for k in fns}
        total = dict.fromkeys(fns, 0.0)
        for k, t in timers.items():
            one = (estimates or {}).get(k) or t.timeit(1).times[0]
            number[k] = max(1, int(min_time / 20 / max(one, 1e-9)))
        order = list(fns)
        others: int | None = runnable_others()
        rnd = 0
        while True:
            for k in (order if rnd % 2 == 0 else order[::-1]):
                fns[k]()  # untimed: wakes this callable's thread pool
                per_call = timers[k].timeit(number[k]).times[0]
                times[k].append(per_call)
                total[k] += per_call * number[k]
            n_now = runnable_others()
            if n_now is not None:
                others = max(others or 0, n_now)
            rnd += 1
            n = min(len(v) for v in times.values())
            if n >= 3 and max(total.values()) >= max_time:
                break
            if n >= min_blocks and min(total.values()) >= min_time:
                stats = {k: _robust(times[k], number[k]) for k in fns}
                if all(iqr <= threshold * med for med, iqr, _, _ in stats.values()):
                    break
    out = {}
    for k in fns:
        med, iqr, kept, dropped = _robust(times[k], number[k])
        ticks = _tick_aligned(np.asarray(times[k]), number[k], med)
        out[k] = Timing(med * 1e3, iqr * 1e3, kept, number[k], dropped, first[k], others, ticks,
                        bool((others or 0) > 0 or ticks > 0))
    return out


def cpu_budget() -> int:
    """CPUs this process may run on (``sched_getaffinity``, else ``os.cpu_count()``)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


__all__ = ["Timing", "measure", "threads", "runnable_others", "other_runnable", "cpu_budget",
           "TICK_S"]
