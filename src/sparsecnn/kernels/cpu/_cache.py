"""Numba's disk cache, keyed on every kernel source file, not only the defining one.

Numba stamps a function's cache index with a hash of the file that *defines* the function
(``numba.core.caching._SourceFileBackedLocatorMixin.get_source_stamp``). Our jitted kernels also
depend on code in other files -- the LLVM IR intrinsics of ``_vec.py`` / ``_simd.py``, helpers
of ``_common.py``, the vector width chosen in ``capabilities.py`` -- whose machine code is
compiled *into* the caller. Edit one of those alone and Numba would keep serving machine code
built from the old version.

This module registers cache locators (subclasses of Numba's own, first in
``numba.core.caching.CacheImpl._locator_classes``) for functions defined under one of the
:data:`ROOTS` (by default the ``sparsecnn.kernels`` package): their source stamp is Numba's
plus a digest of the contents of every ``.py`` file under that root, so any edit in the kernel
package invalidates the cached machine code of every kernel (the next process recompiles; the
old data files are overwritten in place). Cache *locations* are Numba's: ``NUMBA_CACHE_DIR``
when set, else the module's ``__pycache__``, else the user-wide cache directory. (Setting
``NUMBA_CACHE_LOCATOR_CLASSES`` replaces Numba's list, and this mechanism with it.)

It must be imported before any ``cache=True`` function of the package is decorated (Numba picks
the locator then): ``sparsecnn.kernels.cpu``'s ``__init__`` imports it first.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from numba.core import caching

#: Source trees whose jitted functions get dependency-aware stamps: each function's stamp covers
#: every ``.py`` file under the root that contains its file.
ROOTS: list[Path] = [Path(__file__).resolve().parents[1]]

_DIGESTS: dict = {}


def root_of(py_file) -> Path | None:
    """The entry of :data:`ROOTS` that contains ``py_file``, or None."""
    try:
        p = Path(py_file).resolve()
    except (OSError, RuntimeError):
        return None
    for root in ROOTS:
        if p == root or root in p.parents:
            return root
    return None


def dependency_files(root) -> list[Path]:
    """The source files whose contents stamp the cache of functions under ``root`` (sorted)."""
    return sorted(Path(root).rglob("*.py"))


def sources_digest(root) -> str:
    """SHA-256 over the relative paths and contents of :func:`dependency_files` of ``root``
    (re-read only when a file's mtime or size changes)."""
    files = dependency_files(root)
    stats = []
    for f in files:
        st = f.stat()
        stats.append((str(f), st.st_mtime_ns, st.st_size))
    key = (str(root), tuple(stats))
    digest = _DIGESTS.get(key)
    if digest is None:
        h = hashlib.sha256()
        for f in files:
            h.update(os.fsencode(f.relative_to(root)))
            h.update(b"\0")
            h.update(f.read_bytes())
            h.update(b"\0")
        digest = _DIGESTS[key] = h.hexdigest()
    return digest


class _DependencyStampMixin:
    """Numba's source stamp of the defining file plus :func:`sources_digest` of its root; the
    locator only applies to files under one of the :data:`ROOTS`."""

    def get_source_stamp(self):
        return (super().get_source_stamp(), "sparsecnn-deps", sources_digest(root_of(self._py_file)))

    @classmethod
    def from_function(cls, py_func, py_file):
        if root_of(py_file) is None:
            return None
        return super().from_function(py_func, py_file)


class DependencyUserProvidedCacheLocator(_DependencyStampMixin, caching.UserProvidedCacheLocator):
    """``NUMBA_CACHE_DIR`` locator with dependency-aware stamps."""


class DependencyInTreeCacheLocator(_DependencyStampMixin, caching.InTreeCacheLocator):
    """``__pycache__`` locator with dependency-aware stamps."""


class DependencyUserWideCacheLocator(_DependencyStampMixin, caching.UserWideCacheLocator):
    """User-wide cache directory locator with dependency-aware stamps."""


LOCATORS = (DependencyUserProvidedCacheLocator, DependencyInTreeCacheLocator,
            DependencyUserWideCacheLocator)


def install() -> None:
    """Put :data:`LOCATORS` first in Numba's locator list (idempotent)."""
    classes = caching.CacheImpl._locator_classes
    for cls in reversed(LOCATORS):
        if cls not in classes:
            classes.insert(0, cls)


install()
