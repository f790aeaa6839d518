"""Registry of compute kernels, one entry per (op, name).

Kernels register themselves when their module is imported (``sparsecnn.kernels`` imports every
backend). Dispatch (:mod:`sparsecnn.dispatch`) and the public functions
(:func:`sparsecnn.conv2d`, :func:`sparsecnn.linear`) look them up here; nothing else knows the
kernels by name.

Kernel calling conventions (inputs already validated and normalised by the caller):

- ``op="conv2d"``: ``fn(x, weight, bias, stride, padding, dilation, groups, relu) -> Tensor`` with
  ``x`` a contiguous float32 CPU tensor (N, C, H, W), ``weight`` a :class:`SparseWeight` (or a
  dense tensor for the ``dense`` kernel), ``bias`` a float32 tensor (K,) or None, ``stride``,
  ``padding``, ``dilation`` pairs of ints, ``groups`` an int, ``relu`` a bool (fused ReLU).
  Returns (N, K, OH, OW) float32.
- ``op="linear"``: ``fn(x, weight, bias, relu) -> Tensor`` with ``x`` (B, in) float32
  contiguous; returns (B, out).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Callable

from .capabilities import KernelUnavailableError, target

OPS = ("conv2d", "linear")


@dataclass(frozen=True)
class Kernel:
    """A registered kernel.

    Attributes
    ----------
    name : str
        Unique within ``op`` (e.g. ``"direct"``, ``"im2col_spmm"``, ``"dense"``).
    op : str
        ``"conv2d"`` or ``"linear"``.
    fn : callable
        The kernel, following the calling convention of its op (module docstring).
    formats : tuple of str
        ``format_name`` values of the weights it accepts (``"dense"`` for a torch tensor).
    backend : str
        ``"cpu"`` or ``"cuda"``.
    supports : callable or None
        ``supports(problem: dict) -> bool`` for finer limits (e.g. groups); None means all.
    requires : tuple of str
        ISA features the compiled code needs (:data:`~sparsecnn.kernels.capabilities.KNOWN_FEATURES`,
        e.g. ``("avx512f",)``): never offered where the target lacks one.
    description : str
        One line for listings and reports.
    """

    name: str
    op: str
    fn: Callable
    formats: tuple[str, ...]
    backend: str = "cpu"
    supports: Callable[[dict], bool] | None = None
    description: str = ""
    prepare: Callable | None = field(default=None, compare=False)
    requires: tuple[str, ...] = ()

    def unavailable(self) -> str | None:
        """Why this kernel cannot run on this target (e.g. missing ISA features), or None."""
        missing = target().missing(self.requires)
        if missing:
            return (f"{self.op} kernel {self.name!r} needs CPU features {missing} that the "
                    f"compilation target {target().describe()} lacks")
        return None


_LOCK = threading.Lock()
_KERNELS: dict[tuple[str, str], Kernel] = {}


def register(kernel: Kernel) -> Kernel:
    """Add ``kernel`` to the registry.

    Raises
    ------
    ValueError
        If ``kernel.op`` is unknown or ``(op, name)`` is already registered.
    """
    if kernel.op not in OPS:
        raise ValueError(f"unknown op {kernel.op!r}; expected one of {OPS}")
    key = (kernel.op, kernel.name)
    with _LOCK:
        if key in _KERNELS and _KERNELS[key].fn is not kernel.fn:
            raise ValueError(f"kernel {kernel.name!r} is already registered for op {kernel.op!r}")
        _KERNELS[key] = kernel
    return kernel


def get(op: str, name: str) -> Kernel:
    """Return the kernel ``name`` of ``op``.

    Raises
    ------
    ValueError
        If no such kernel is registered; the message lists the registered names.
    """
    try:
        return _KERNELS[(op, name)]
    except KeyError:
        raise ValueError(
            f"unknown {op} kernel {name!r}; registered: {sorted(names(op))}"
        ) from None


def runnable(op: str, name: str) -> Kernel:
    """:func:`get`, raising :class:`KernelUnavailableError` if the kernel cannot run here."""
    k = get(op, name)
    why = k.unavailable()
    if why is not None:
        raise KernelUnavailableError(why)
    return k


def names(op: str) -> list[str]:
    """Names of the kernels registered for ``op``, in registration order."""
    return [n for (o, n) in _KERNELS if o == op]


def candidates(op: str, format_name: str, problem: dict | None = None) -> list[Kernel]:
    """Kernels of ``op`` that accept weights of ``format_name``, can run on this target and
    support ``problem``."""
    out = []
    for (o, _), k in list(_KERNELS.items()):
        if o != op or format_name not in k.formats or k.unavailable() is not None:
            continue
        if problem is not None and k.supports is not None and not k.supports(problem):
            continue
        out.append(k)
    return out
