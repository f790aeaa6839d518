"""One thread count for PyTorch and Numba: checked against the machine, applied to both.

The sparse kernels run on Numba's thread pool and dense layers on PyTorch's (OpenMP): a timing
with different counts compares unlike things, and a count above the cores oversubscribes them
(every thread then waits on the scheduler's tick, which is how a "33751x speedup" got printed).
"""

from __future__ import annotations

import math


def max_threads() -> int:
    """The largest count :func:`check_threads` accepts: the usable cores, and at most Numba's
    thread pool (``NUMBA_NUM_THREADS``)."""
    import numba

    from .timing import cpu_budget
    return max(1, min(cpu_budget(), int(numba.config.NUMBA_NUM_THREADS)))


def check_threads(threads, what: str = "threads") -> int:
    """``threads`` as an int in ``1 .. max_threads()``.

    Raises
    ------
    ValueError
        For a bool, a non-integer, a value below 1 or above :func:`max_threads` (the message
        gives the cap and why).
    """
    if isinstance(threads, bool) or not isinstance(threads, (int, float)) \
            or (isinstance(threads, float) and (not math.isfinite(threads) or threads != int(threads))):
        raise ValueError(f"{what} must be a positive int, got {threads!r}")
    n = int(threads)
    cap = max_threads()
    if n < 1:
        raise ValueError(f"{what} must be a positive int, got {threads!r}")
    if n > cap:
        raise ValueError(f"{what} {n} is more than this machine's {cap} usable cores "
                         f"(and Numba's pool); expected 1..{cap}")
    return n


def set_threads(threads) -> dict:
    """Check ``threads`` and give PyTorch and Numba that count.

    Returns
    -------
    dict
        ``{"torch": n, "numba": n}`` as each library reports it afterwards.
    """
    import numba
    import torch
    n = check_threads(threads)
    # Numba first: launching its OpenMP threading layer resets the process's OpenMP thread
    # count (which PyTorch shares), so a torch count set before it would be lost.
    numba.set_num_threads(n)
    torch.set_num_threads(n)
    return {"torch": torch.get_num_threads(), "numba": numba.get_num_threads()}
