"""Numba's disk cache never serves machine code built from an older kernel source file.

Numba stamps a cached function with its *defining* file only; ``sparsecnn.kernels.cpu._cache``
registers locators whose stamp also covers every source file of the kernel package (the LLVM IR
intrinsics of ``_vec.py`` / ``_simd.py`` are compiled into their callers). The subprocess tests
build a tiny package whose jitted function uses a constant from a sibling file, cache it, edit
only the sibling, and run again in a fresh process.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from sparsecnn.kernels.cpu import _cache, direct, direct_avx512, im2col_spmm

_SCRIPT = textwrap.dedent("""
    import importlib.util, pathlib, sys
    root, mode, cache_py = pathlib.Path(sys.argv[1]), sys.argv[2], sys.argv[3]
    # the locator module alone (it needs only numba): no torch import in the child
    spec = importlib.util.spec_from_file_location("_sparsecnn_cache", cache_py)
    _cache = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(_cache)
    if mode == "deps":
        _cache.ROOTS.append(root / "pkgdeps")
    sys.path.insert(0, str(root))
    from pkgdeps.user import f
    value = f(1.0)
    print(value, sum(f.stats.cache_hits.values()), type(f._cache._impl.locator).__name__)
""")


def _make_package(root: Path, scale: float) -> None:
    pkg = root / "pkgdeps"
    pkg.mkdir(parents=True, exist_ok=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "helper.py").write_text(f"SCALE = {scale}\n")
    (pkg / "user.py").write_text(textwrap.dedent("""
        from numba import njit

        from .helper import SCALE


        @njit(cache=True)
        def f(x):
            return x * SCALE
    """))


def _run(root: Path, mode: str, cache_dir: Path | None):
    env = {k: v for k, v in os.environ.items() if not k.startswith("NUMBA_CACHE")}
    if cache_dir is not None:
        env["NUMBA_CACHE_DIR"] = str(cache_dir)
    out = subprocess.run([sys.executable, "-c", _SCRIPT, str(root), mode, _cache.__file__], env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    value, hits, locator = out.stdout.split()
    return float(value), int(hits), locator


@pytest.mark.parametrize("where", ["pycache", "NUMBA_CACHE_DIR"])
def test_editing_only_a_dependency_recompiles(tmp_path, where):
    cache_dir = tmp_path / "nbcache" if where == "NUMBA_CACHE_DIR" else None
    _make_package(tmp_path, 2.0)
    value, hits, locator = _run(tmp_path, "deps", cache_dir)
    assert value == 2.0 and hits == 0
    assert locator == ("DependencyUserProvidedCacheLocator" if cache_dir else
                       "DependencyInTreeCacheLocator")
    assert _run(tmp_path, "deps", cache_dir)[:2] == (2.0, 1)  # served from the disk cache
    (tmp_path / "pkgdeps" / "helper.py").write_text("SCALE = 3.0\n")  # the user file unchanged
    value, hits, _ = _run(tmp_path, "deps", cache_dir)
    assert (value, hits) == (3.0, 0)  # recompiled from the new source
    assert _run(tmp_path, "deps", cache_dir)[:2] == (3.0, 1)


def test_without_the_mechanism_numba_serves_stale_code(tmp_path):
    """The control: Numba's own stamp misses the edit (what the mechanism exists for)."""
    _make_package(tmp_path, 2.0)
    assert _run(tmp_path, "stock", None)[0] == 2.0
    (tmp_path / "pkgdeps" / "helper.py").write_text("SCALE = 3.0\n")
    value, hits, locator = _run(tmp_path, "stock", None)
    assert (value, hits) == (2.0, 1) and not locator.startswith("Dependency")


def test_every_kernel_function_uses_a_dependency_locator():
    fns = [direct._compute_item, direct._run_parallel, direct._run_serial,
           direct_avx512._run_parallel, direct_avx512._compute_item, im2col_spmm.csr_spmm]
    for f in fns:
        assert isinstance(f._cache._impl.locator, _cache.LOCATORS), f


def test_digest_covers_the_kernel_package(tmp_path):
    root = _cache.ROOTS[0]
    names = {p.name for p in _cache.dependency_files(root)}
    assert {"_vec.py", "_simd.py", "direct.py", "direct_avx512.py", "capabilities.py"} <= names
    # any edit under a root changes its digest
    (tmp_path / "a.py").write_text("x = 1\n")
    d0 = _cache.sources_digest(tmp_path)
    (tmp_path / "a.py").write_text("x = 2\n")
    assert _cache.sources_digest(tmp_path) != d0
