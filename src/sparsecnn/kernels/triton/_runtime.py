"""Where the Triton kernels can run, and the knobs shared by their launchers.

Nothing here imports Triton: :mod:`sparsecnn.kernels.triton` registers its kernels whether or
not a device exists to run them, and imports the jitted code (and Triton, ~0.6 s) only where one
does (a CUDA GPU, or Triton's interpreter).

- :func:`installed` -- Triton is importable.
- :func:`interpreting` -- ``TRITON_INTERPRET`` is set: Triton runs kernels in its interpreter, on
  CPU tensors (it must be set before Triton is imported; the test suite's ``conftest.py`` sets
  it where no GPU is present).
- :func:`kernel_devices` / :func:`emulated_devices` -- what the kernels declare to the registry:
  ``("cuda",)``, plus ``"cpu"`` (emulated: correctness only, never offered by dispatch) under
  the interpreter.
- :func:`autotuning` -- ``triton.autotune`` picks tile sizes (on a GPU, unless
  ``SPARSECNN_TRITON_AUTOTUNE=0``); otherwise :func:`heuristic` configurations are launched.
"""

from __future__ import annotations

import functools
import importlib.util
import os

#: Set to ``0`` to launch the heuristic configuration instead of autotuning (GPU tests use it
#: to keep compile time down; the interpreter never autotunes).
AUTOTUNE_ENV = "SPARSECNN_TRITON_AUTOTUNE"

_TRUE = ("1", "true", "yes", "on")


@functools.lru_cache(maxsize=1)
def installed() -> bool:
    """True if the ``triton`` package is importable (checked without importing it)."""
    try:
        return importlib.util.find_spec("triton") is not None
    except (ImportError, ValueError):  # pragma: no cover - a broken install
        return False


def interpreting() -> bool:
    """True if Triton runs kernels in its interpreter (``TRITON_INTERPRET`` set true)."""
    return os.environ.get("TRITON_INTERPRET", "").strip().lower() in _TRUE


def kernel_devices() -> tuple[str, ...]:
    """The devices the Triton kernels declare: ``("cuda",)``, plus ``"cpu"`` when
    interpreting."""
    return ("cuda", "cpu") if interpreting() else ("cuda",)


def emulated_devices() -> tuple[str, ...]:
    """The devices on which the Triton kernels run only emulated: ``("cpu",)`` when
    interpreting, else none."""
    return ("cpu",) if interpreting() else ()


def autotuning() -> bool:
    """True if launches go through ``triton.autotune`` (not interpreting, and
    ``SPARSECNN_TRITON_AUTOTUNE`` is not ``0``)."""
    if interpreting():
        return False
    return os.environ.get(AUTOTUNE_ENV, "1").strip().lower() not in ("0", "false", "no", "off")


def runnable_here() -> bool:
    """True if a Triton kernel can run in this process: Triton is installed and either the
    interpreter is on or PyTorch sees a CUDA GPU."""
    if not installed():
        return False
    if interpreting():
        return True
    from ..capabilities import devices

    return "cuda" in devices()


def next_pow2(n: int) -> int:
    """Smallest power of two >= ``n`` (1 for ``n <= 1``)."""
    n = int(n)
    return 1 if n <= 1 else 1 << (n - 1).bit_length()


def work_bucket(nnz_per_row: float) -> int:
    """Autotuning bucket of a weight's work per output channel: ``round(2 log2(nnz/row))``
    (half-octave steps), so sparsities within ~40 % of each other share tuned tile sizes."""
    import math

    return int(round(2 * math.log2(max(1.0, float(nnz_per_row)))))


def autotune_options() -> dict:
    """Keyword arguments for ``triton.autotune`` that this Triton accepts: results cached on
    disk (``cache_results``, in ``TRITON_CACHE_DIR``) and a short benchmark per configuration
    (5 ms warm-up, 25 ms of repetitions: tile choices differ by far more than that resolves)."""
    import inspect

    import triton

    params = inspect.signature(triton.autotune).parameters
    opts = {}
    if "cache_results" in params:
        opts["cache_results"] = True
    if "do_bench" in params:
        from triton.testing import do_bench

        def _bench(fn, quantiles=None):
            return do_bench(fn, warmup=5, rep=25, quantiles=quantiles)

        opts["do_bench"] = _bench
    return opts


__all__ = ["installed", "interpreting", "kernel_devices", "emulated_devices", "autotuning",
           "runnable_here", "next_pow2", "work_bucket", "autotune_options", "AUTOTUNE_ENV"]
