"""Registry of compute kernels, one entry per (op, name).

Kernels register themselves when their module is imported (``sparsecnn.kernels`` imports every
backend). Dispatch (:mod:`sparsecnn.dispatch`), the public functions (:func:`sparsecnn.conv2d`,
:func:`sparsecnn.linear`) and the modules of :mod:`sparsecnn.nn` look them up here; nothing else
knows the kernels by name.

A kernel declares what it can run (:class:`Kernel`): its op, the weight format families it
accepts, the devices, input dtypes and ISA features it needs, and finer limits as
``supports(problem)``. :func:`candidates` offers only kernels that can run a
:class:`~sparsecnn.problem.Problem` *here*, and never one that runs it only *emulated* (a GPU
kernel on the CPU through Triton's interpreter: correct, but far too slow to be chosen);
:func:`resolve` checks a kernel asked for by name and raises a clear error naming what is
missing.

Calling convention (inputs already validated and normalised by :mod:`sparsecnn.functional`):

- ``prepare(weight, problem) -> operand``: whatever the kernel precomputes from the weight for
  this problem (int32 index arrays, offsets into the padded input, an execution plan, a
  densified copy...). Built once and cached per (weight, kernel, problem, threads) by
  :mod:`sparsecnn.kernels.prepared`; ``None`` means the operand is the weight itself.
- ``run(prepared, x, bias) -> Tensor`` with ``prepared`` a
  :class:`~sparsecnn.kernels.prepared.Prepared` (``.operand``, ``.problem``, ``.weight``),
  ``x`` contiguous on the problem's device and dtype -- ``(N, C, H, W)`` for conv2d,
  ``(B, in_features)`` for linear -- and ``bias`` a tensor ``(K,)`` / ``(out_features,)`` of the
  same dtype, or None. Returns ``(N, K, OH, OW)`` / ``(B, out_features)``, ReLU applied when
  ``problem.relu``.
- ``sparse_conv`` (:mod:`sparsecnn.spatial.kernels`) adds the input's structure:
  ``run(prepared, features, bias, rulebook)``, features ``(P_in, C_in)`` -> ``(P_out, C_out)``.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import sys
import threading
from dataclasses import dataclass, field
from typing import Callable

from ..problem import OPS, Problem
from .capabilities import KernelUnavailableError, devices, target

#: Accepts every weight format (the kernel densifies or converts in ``prepare``).
ANY_FORMAT = "any"


@functools.lru_cache(maxsize=256)
def format_families(format_name: str) -> tuple[str, ...]:
    """The families a weight format belongs to: ``"unified_csr"`` -> ``("unified_csr", "csr")``
    (padded CSR is CSR to every CSR kernel); ``"dense"`` -> ``("dense",)``."""
    if format_name == "dense":
        return ("dense",)
    from ..formats import FORMATS

    cls = FORMATS.get(format_name)
    return cls.families if cls is not None else (format_name,)


@dataclass(frozen=True, eq=False)  # identity equality and hash: kernels key caches
class Kernel:
    """A registered kernel.

    Attributes
    ----------
    name : str
        Unique within ``op`` (e.g. ``"direct"``, ``"im2col_spmm"``, ``"dense"``).
    op : str
        A key of :data:`sparsecnn.problem.OPS` (``"conv2d"``, ``"linear"``, ...).
    run : callable
        ``run(prepared, x, bias) -> Tensor`` (module docstring).
    formats : tuple of str
        Format families it accepts (``"dense"``, ``"csr"``, ``"bsr"``, ``"nm"``, ... or
        :data:`ANY_FORMAT`); see :func:`format_families`.
    prepare : callable or None
        ``prepare(weight, problem) -> operand``; None: the operand is the weight.
    requires : tuple of str
        ISA features its compiled code needs (:data:`~sparsecnn.kernels.capabilities.KNOWN_FEATURES`,
        e.g. ``("avx512f",)``): never offered where the compilation target lacks one.
    devices : tuple of str
        Device types it runs on (``"cpu"``, ``"cuda"``).
    emulated : tuple of str
        Those of ``devices`` on which it only runs emulated, for correctness tests (Triton
        kernels on ``"cpu"`` under ``TRITON_INTERPRET=1``): :func:`resolve` accepts them,
        :func:`candidates` (dispatch, tuning) never offers them.
    dtypes : tuple of str
        Input dtypes it takes (``"float32"``, ...).
    supports : callable or None
        ``supports(problem) -> bool`` for finer limits (e.g. groups); None means all.
    weight_check : callable or None
        ``weight_check(weight, problem) -> str | None``: why this kernel refuses this particular
        weight (None: it takes it), for kernels that are a different computation only for some
        weights (``hybrid`` needs a dense block). Such a kernel is offered by
        :func:`candidates` only when given the weight, and dispatch's heuristic never picks it:
        only a measurement does.
    version : str
        Bump on a change of behaviour the source fingerprint would not show.
    sources : tuple of str
        Modules (dotted names) besides ``run``'s own whose source shapes the kernel's code: they
        go into :attr:`fingerprint`, so an edit to any of them invalidates tuning decisions.
    description : str
        One line for listings and reports.
    """

    name: str
    op: str
    run: Callable
    formats: tuple[str, ...]
    prepare: Callable | None = None
    requires: tuple[str, ...] = ()
    devices: tuple[str, ...] = ("cpu",)
    emulated: tuple[str, ...] = ()
    dtypes: tuple[str, ...] = ("float32",)
    supports: Callable[[Problem], bool] | None = field(default=None, compare=False)
    weight_check: Callable | None = field(default=None, compare=False)
    version: str = "1"
    sources: tuple[str, ...] = ()
    description: str = ""

    def accepts(self, format_name: str) -> bool:
        """True if weights of ``format_name`` are of a family this kernel takes."""
        return ANY_FORMAT in self.formats or any(f in self.formats
                                                 for f in format_families(format_name))

    def unavailable(self) -> str | None:
        """Why this kernel cannot run on this machine (missing ISA features or device), or None."""
        return _unavailable(self)

    def is_emulated(self, device: str) -> bool:
        """True if this kernel runs on ``device`` only emulated (see :attr:`emulated`)."""
        return device in self.emulated

    @property
    def weight_dependent(self) -> bool:
        """True if whether it runs depends on the weight itself (:attr:`weight_check`)."""
        return self.weight_check is not None

    def why_not(self, problem: Problem, weight=None) -> str | None:
        """Why this kernel cannot run ``problem`` here (with ``weight``, when given), or None if
        it can."""
        if problem.op != self.op:
            return f"kernel {self.name!r} is a {self.op} kernel, the problem is {problem.op}"
        why = self.unavailable()
        if why is not None:
            return why
        if not self.accepts(problem.format):
            return (f"{self.op} kernel {self.name!r} accepts weight formats {self.formats}, "
                    f"got {problem.format!r}")
        if problem.device not in self.devices:
            return (f"{self.op} kernel {self.name!r} runs on {self.devices}, but the input is "
                    f"on {problem.device}")
        if problem.dtype not in self.dtypes:
            return f"{self.op} kernel {self.name!r} takes {self.dtypes} input, got {problem.dtype}"
        if self.supports is not None and not self.supports(problem):
            return f"{self.op} kernel {self.name!r} does not support this problem: {problem.key()}"
        if weight is not None and self.weight_check is not None:
            why = self.weight_check(weight, problem)
            if why:
                return f"{self.op} kernel {self.name!r} refuses this weight: {why}"
        return None

    @property
    def fingerprint(self) -> str:
        """``name@version+hash`` of the source of ``run``'s module and :attr:`sources`: part of
        every tuning-cache key, so a changed kernel never reuses a stale decision."""
        return _fingerprint(self)


@functools.lru_cache(maxsize=None)
def _unavailable(kernel: Kernel) -> str | None:
    missing = target().missing(kernel.requires)
    if missing:
        return (f"{kernel.op} kernel {kernel.name!r} needs CPU features {missing} that the "
                f"compilation target {target().describe()} lacks")
    if not set(kernel.devices) & devices():
        return f"{kernel.op} kernel {kernel.name!r} needs a device in {kernel.devices}; none here"
    return None


@functools.lru_cache(maxsize=None)
def _fingerprint(kernel: Kernel) -> str:
    h = hashlib.sha1(kernel.version.encode())
    mods = [getattr(kernel.run, "__module__", None), *kernel.sources]
    for mod in mods:
        h.update(_module_source(mod) if mod else b"None")
    return f"{kernel.name}@{kernel.version}+{h.hexdigest()[:10]}"


def _module_source(mod: str) -> bytes:
    """The source of module ``mod`` (read from its file when it is not imported yet, as for
    kernel modules imported lazily); its name when there is no source."""
    m = sys.modules.get(mod)
    try:
        if m is not None:
            return inspect.getsource(m).encode()
        import importlib.util

        spec = importlib.util.find_spec(mod)
        if spec is not None and spec.origin and spec.origin.endswith(".py"):
            with open(spec.origin, "rb") as fh:
                return fh.read()
    except (OSError, TypeError, ImportError, ValueError):  # frozen / interactive / no parent
        pass
    return repr(mod).encode()


_LOCK = threading.Lock()
_KERNELS: dict[tuple[str, str], Kernel] = {}
_GENERATION = [0]


def generation() -> int:
    """Bumped on every register / unregister (decision memos key on it)."""
    return _GENERATION[0]


def register(kernel: Kernel) -> Kernel:
    """Add ``kernel`` to the registry.

    Raises
    ------
    ValueError
        If ``kernel.op`` has no problem type or ``(op, name)`` is already registered to another
        function.
    """
    if kernel.op not in OPS:
        raise ValueError(f"unknown op {kernel.op!r}; expected one of {sorted(OPS)}")
    key = (kernel.op, kernel.name)
    with _LOCK:
        old = _KERNELS.get(key)
        if old is not None and old.run is not kernel.run:
            raise ValueError(f"kernel {kernel.name!r} is already registered for op {kernel.op!r}")
        _KERNELS[key] = kernel
        _GENERATION[0] += 1
    return kernel


def unregister(op: str, name: str) -> None:
    """Remove a kernel (tests registering fakes clean up with this); no error if absent."""
    with _LOCK:
        _KERNELS.pop((op, name), None)
        _GENERATION[0] += 1


def get(op: str, name: str) -> Kernel:
    """Return the kernel ``name`` of ``op`` (whether or not it can run here).

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


def names(op: str) -> list[str]:
    """Names of the kernels registered for ``op``, in registration order."""
    return [n for (o, n) in list(_KERNELS) if o == op]


def kernels(op: str) -> list[Kernel]:
    """The kernels registered for ``op``, in registration order."""
    return [k for (o, _), k in list(_KERNELS.items()) if o == op]


def candidates(problem: Problem, weight=None) -> list[Kernel]:
    """Kernels that can run ``problem`` on this machine, not emulated (registration order).
    Kernels with a :attr:`Kernel.weight_check` are included only when ``weight`` is given and
    they take it."""
    return [k for k in kernels(problem.op)
            if not k.is_emulated(problem.device)
            and (weight is not None or k.weight_check is None) and k.why_not(problem, weight) is None]


def resolve(problem: Problem, name: str, weight=None) -> Kernel:
    """The kernel ``name`` for ``problem`` (and ``weight``, when given), checked.

    Raises
    ------
    ValueError
        Unknown name (the registered ones are listed), a weight format the kernel does not take
        (the kernels that do are listed), a device it does not run on, a problem outside its
        ``supports``, or a weight its ``weight_check`` refuses (the reason is given).
    KernelUnavailableError
        (a ValueError) If this machine lacks an ISA feature or device the kernel needs.
    TypeError
        If the input dtype is not one the kernel takes.
    """
    kernel = get(problem.op, name)
    why = kernel.unavailable()
    if why is not None:
        raise KernelUnavailableError(why)
    why = kernel.why_not(problem, weight)
    if why is None:
        return kernel
    if problem.dtype not in kernel.dtypes:
        raise TypeError(why)
    if not kernel.accepts(problem.format):
        ok = [k.name for k in kernels(problem.op) if k.accepts(problem.format)]
        raise ValueError(f"{why}; kernels for {problem.format!r}: {ok}")
    raise ValueError(why)


__all__ = ["Kernel", "ANY_FORMAT", "register", "unregister", "get", "names", "kernels", "generation",
           "candidates", "resolve", "format_families", "KernelUnavailableError"]
