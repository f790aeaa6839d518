"""What the machine code we compile can use: the target's ISA features, detected once.

Numba compiles every jitted kernel for one LLVM target: the host CPU, unless ``NUMBA_CPU_NAME``
and/or ``NUMBA_CPU_FEATURES`` force another (numba.core.config). :func:`target` describes that
same target, so a kernel is offered only where the code it would compile can run:

- ``cpu_name`` and the feature string are the ones Numba passes to LLVM (``NUMBA_CPU_NAME`` or
  llvmlite's host CPU name; ``NUMBA_CPU_FEATURES`` or the host's feature string).
- The features that matter to our kernels (vector widths and FMA) are found by *asking LLVM*:
  a few one-line IR functions are compiled to assembly for that exact target machine and the
  registers and instructions it chose are read off (``zmm`` -> AVX-512, ``ymm`` integer adds ->
  AVX2, ``vfmadd`` -> FMA, ``fmla`` -> NEON). A forced CPU name therefore gets the features LLVM
  gives it (``NUMBA_CPU_NAME=haswell NUMBA_CPU_FEATURES=`` is AVX2 + FMA on any x86 host), and
  no hand-kept table of CPU names can go stale.

Kernels declare the features they need (:attr:`sparsecnn.kernels.registry.Kernel.requires`);
the registry never offers one whose needs are not met, and asking for it by name raises
:class:`KernelUnavailableError` naming what is missing.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass

#: Feature names a kernel may require (LLVM's spelling).
KNOWN_FEATURES = ("sse2", "avx", "avx2", "fma", "avx512f", "neon")

_PROBES = {
    # feature: (IR body, predicate on the assembly)
    "avx512f": ("""
define <16 x float> @p(<16 x float> %a, <16 x float> %b) {
  %r = fadd <16 x float> %a, %b
  ret <16 x float> %r
}""", lambda asm: "zmm" in asm),
    "avx": ("""
define <8 x float> @p(<8 x float> %a, <8 x float> %b) {
  %r = fadd <8 x float> %a, %b
  ret <8 x float> %r
}""", lambda asm: "ymm" in asm),
    "avx2": ("""
define <8 x i32> @p(<8 x i32> %a, <8 x i32> %b) {
  %r = add <8 x i32> %a, %b
  ret <8 x i32> %r
}""", lambda asm: "vpaddd" in asm and "ymm" in asm),
    "fma": ("""
declare <4 x float> @llvm.fma.v4f32(<4 x float>, <4 x float>, <4 x float>)
define <4 x float> @p(<4 x float> %a, <4 x float> %b, <4 x float> %c) {
  %r = call <4 x float> @llvm.fma.v4f32(<4 x float> %a, <4 x float> %b, <4 x float> %c)
  ret <4 x float> %r
}""", lambda asm: "vfmadd" in asm or "fmla" in asm or "fmadd" in asm),
    "sse2": ("""
define <4 x float> @p(<4 x float> %a, <4 x float> %b) {
  %r = fmul <4 x float> %a, %b
  ret <4 x float> %r
}""", lambda asm: "mulps" in asm),
    "neon": ("""
define <4 x float> @p(<4 x float> %a, <4 x float> %b) {
  %r = fmul <4 x float> %a, %b
  ret <4 x float> %r
}""", lambda asm: "fmul\tv" in asm or "fmul v" in asm),
}


class KernelUnavailableError(ValueError):
    """A kernel was asked for by name where it cannot run (missing ISA feature, device, dtype).

    A ``ValueError`` subclass, so callers catching bad-argument errors catch it too."""


@dataclass(frozen=True)
class Target:
    """The compilation target of the CPU kernels.

    Attributes
    ----------
    triple : str
        LLVM target triple, e.g. ``"x86_64-unknown-linux-gnu"``.
    cpu_name : str
        LLVM CPU name Numba compiles for (``"znver3"``, ``"haswell"``, ``"x86-64"``, ...).
    feature_string : str
        The feature string Numba passes to LLVM (``""``: the CPU name's defaults).
    features : frozenset of str
        Those of :data:`KNOWN_FEATURES` LLVM uses for this target.
    forced : bool
        True if ``NUMBA_CPU_NAME`` or ``NUMBA_CPU_FEATURES`` set the target.
    """

    triple: str
    cpu_name: str
    feature_string: str
    features: frozenset
    forced: bool

    @property
    def arch(self) -> str:
        """``"x86_64"``, ``"aarch64"``, ... (the triple's first field)."""
        return self.triple.split("-", 1)[0]

    @property
    def isa(self) -> str:
        """The widest vector ISA level: ``"avx512"``, ``"avx2"``, ``"avx"``, ``"sse2"``,
        ``"neon"`` or ``"generic"`` (part of every tuning-cache key)."""
        f = self.features
        if "avx512f" in f:
            return "avx512"
        if "avx2" in f and "fma" in f:
            return "avx2"
        for name in ("avx", "sse2", "neon"):
            if name in f:
                return name
        return "generic"

    @property
    def vector_bytes(self) -> int:
        """Bytes of the widest float vector register: 64 (AVX-512), 32 (AVX/AVX2), 16 else."""
        return {"avx512": 64, "avx2": 32, "avx": 32}.get(self.isa, 16)

    def missing(self, required) -> list[str]:
        """The features of ``required`` this target lacks (sorted)."""
        return sorted(set(required) - self.features)

    def describe(self) -> str:
        """One line, e.g. ``"znver3 (x86_64, avx2)"`` or ``"haswell (x86_64, avx2; forced)"``."""
        forced = "; forced by NUMBA_CPU_NAME/NUMBA_CPU_FEATURES" if self.forced else ""
        return f"{self.cpu_name} ({self.arch}, {self.isa}{forced})"


def probe_features(triple: str, cpu_name: str, feature_string: str = "") -> frozenset:
    """The :data:`KNOWN_FEATURES` that LLVM uses when compiling for this target machine.

    Compiles one tiny IR function per feature to assembly (a few ms in all) and reads which
    registers / instructions were chosen. Works for any triple llvmlite has a backend for (x86,
    AArch64), so it also answers for a cross target.

    Raises
    ------
    ValueError
        If llvmlite has no backend for ``triple``.
    """
    import llvmlite.binding as ll

    _init_llvm()
    try:
        tgt = ll.Target.from_triple(triple)
    except RuntimeError as exc:
        raise ValueError(f"no LLVM backend for target triple {triple!r}: {exc}") from None
    tm = tgt.create_target_machine(cpu=cpu_name, features=feature_string, opt=2)
    found = set()
    for name, (body, pred) in _PROBES.items():
        mod = ll.parse_assembly(body)
        mod.triple = triple
        try:
            asm = tm.emit_assembly(mod)
        except RuntimeError:  # pragma: no cover - a backend that rejects the probe
            continue
        if pred(asm):
            found.add(name)
    if triple.startswith("aarch64"):
        found.add("neon")  # AArch64's baseline (ASIMD)
    if "avx" in found and triple.startswith("x86_64"):
        found.add("sse2")
    return frozenset(found)


@functools.lru_cache(maxsize=1)
def _init_llvm() -> None:
    import llvmlite.binding as ll

    for name in ("initialize_all_targets", "initialize_all_asmprinters"):
        fn = getattr(ll, name, None)
        if fn is not None:
            fn()


@functools.lru_cache(maxsize=1)
def target() -> Target:
    """The target Numba compiles the CPU kernels for (detected once per process).

    Follows Numba's own rule (``numba.core.codegen``): ``NUMBA_CPU_NAME`` or the host CPU name;
    ``NUMBA_CPU_FEATURES`` if set (``""`` = the CPU name's defaults), else the host's features.
    """
    import llvmlite.binding as ll
    from numba.core import codegen, config

    cpu = config.CPU_NAME or ll.get_host_cpu_name()
    feats = config.CPU_FEATURES if config.CPU_FEATURES is not None \
        else codegen.get_host_cpu_features()
    triple = ll.get_process_triple()
    forced = (config.CPU_NAME is not None or config.CPU_FEATURES is not None)
    return Target(triple, cpu, feats, probe_features(triple, cpu, feats), forced)


_NUMBA_THREADS = []


def numba_threads() -> int:
    """``numba.get_num_threads()`` without its per-call launch check (~0.4 us instead of ~3 us:
    it is on the hot path of every call); the first call launches Numba's pool as usual."""
    if not _NUMBA_THREADS:
        import numba

        numba.get_num_threads()  # launches the threading layer
        try:
            from numba.np.ufunc.parallel import _get_num_threads
        except ImportError:  # pragma: no cover - another Numba: the public call
            _get_num_threads = numba.get_num_threads
        _NUMBA_THREADS.append(_get_num_threads)
    return int(_NUMBA_THREADS[0]())


def devices() -> frozenset:
    """Devices the kernels can run on here: ``"cpu"``, plus ``"cuda"`` when PyTorch sees a GPU."""
    out = {"cpu"}
    try:
        import torch

        if torch.cuda.is_available():
            out.add("cuda")
    except Exception:  # pragma: no cover - torch is a core dependency
        pass
    return frozenset(out)


def env_summary() -> dict:
    """The target as plain data (for benchmark tables and results folders)."""
    t = target()
    return {"cpu_name": t.cpu_name, "arch": t.arch, "isa": t.isa, "features": sorted(t.features),
            "forced": t.forced, "numba_cpu_name": os.environ.get("NUMBA_CPU_NAME"),
            "numba_cpu_features": os.environ.get("NUMBA_CPU_FEATURES")}
