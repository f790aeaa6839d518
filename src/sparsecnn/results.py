"""Where jobs write, and how: the one results-folder policy, and output-path checks.

Every job (``optimize``, ``bench``, ``report``) writes one new folder per run,
``<parent>/<job>-<name>-<YYYYmmdd-HHMMSS>`` (``-1``, ``-2``, ... appended when that exists),
under ``parent`` (``--out``, default :data:`DEFAULT_PARENT`). The folder is built in a temporary
sibling and renamed into place when complete (:func:`sparsecnn._atomic.atomic_dir`), so it holds
a full result or does not exist; nothing that exists is ever modified or replaced. The parent
and every other output file (``--export-onnx``) are checked *before* any work
(:func:`check_parent`, :func:`check_output_file`), so a wrong path fails in a second, with one
line, not after an hour.
"""

from __future__ import annotations

import contextlib
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path

from ._atomic import atomic_dir

#: Default parent folder of every job's results (relative to the working directory).
DEFAULT_PARENT = "sparsecnn-results"
_UNSAFE = re.compile(r"[^A-Za-z0-9._+-]+")


def _writable_ancestor(path: Path) -> tuple[Path, bool]:
    """The nearest existing ancestor of ``path`` (``path`` itself included) and whether it is a
    directory this process can create entries in."""
    p = path.absolute()
    while not p.exists():
        p = p.parent
    return p, p.is_dir() and os.access(p, os.W_OK | os.X_OK)


def check_parent(parent, what: str = "--out") -> Path:
    """Check that results can be written under ``parent`` (creating it, if needed, at the end).

    Returns
    -------
    pathlib.Path

    Raises
    ------
    ValueError
        If ``parent`` exists and is not a folder, or it (or the existing folder it would be
        created in) is not writable, or the path is empty.
    """
    if parent is None or str(parent) == "":
        raise ValueError(f"{what} must name a folder, got {parent!r}")
    path = Path(parent)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{what} {str(path)!r} exists and is not a folder")
    anc, ok = _writable_ancestor(path)
    if not ok:
        why = "is not a folder" if not anc.is_dir() else "is not writable"
        raise ValueError(f"{what} {str(path)!r}: cannot create results there ({str(anc)!r} {why})")
    return path


def check_output_file(path, what: str) -> Path:
    """Check that a file can be written (atomically) at ``path`` before any work.

    Raises
    ------
    ValueError
        If ``path`` is an existing folder, or its folder cannot be created or written.
    """
    if path is None or str(path) == "":
        raise ValueError(f"{what} must name a file, got {path!r}")
    p = Path(path)
    if p.is_dir():
        raise ValueError(f"{what} {str(p)!r} is a folder; expected a file path")
    if p.exists() and not os.access(p, os.W_OK):
        raise ValueError(f"{what} {str(p)!r} exists and is not writable")
    anc, ok = _writable_ancestor(p.parent)
    if not ok:
        why = "is not a folder" if not anc.is_dir() else "is not writable"
        raise ValueError(f"{what} {str(p)!r}: cannot write there ({str(anc)!r} {why})")
    return p


def folder_name(job: str, name: str, stamp: str | None = None) -> str:
    """``<job>-<name>-<stamp>`` with unsafe characters of ``name`` replaced by ``_``."""
    stamp = stamp or time.strftime("%Y%m%d-%H%M%S")
    safe = _UNSAFE.sub("_", str(name)).strip("._") or "model"
    return f"{job}-{safe}-{stamp}"


def new_folder(parent, job: str, name: str) -> Path:
    """A path ``<parent>/<job>-<name>-<stamp>[-k]`` that does not exist yet."""
    parent = Path(parent)
    base = folder_name(job, name)
    final, k = parent / base, 1
    while final.exists():
        final = parent / f"{base}-{k}"
        k += 1
    return final


@contextlib.contextmanager
def writing_under(parent) -> Iterator[Path]:
    """Context for writing under ``parent``: folders of ``parent``'s path that this creates are
    removed again (when still empty) if the block raises, Ctrl-C included."""
    parent = Path(parent)
    missing = []
    p = parent.absolute()
    while not p.exists():
        missing.append(p)
        p = p.parent
    try:
        yield parent
    except BaseException:
        for d in missing:  # deepest first
            with contextlib.suppress(OSError):
                d.rmdir()
        raise


@contextlib.contextmanager
def results_folder(parent, job: str, name: str) -> Iterator[tuple[Path, Path]]:
    """Write one run's results: yields ``(tmp, final)``; write into ``tmp``, it becomes ``final``.

    ``final`` is :func:`new_folder` (never an existing folder). On an exception (Ctrl-C
    included) the temporary folder is removed and nothing is left (not even a parent folder this
    created).
    """
    parent = check_parent(parent)
    with writing_under(parent):
        final = new_folder(parent, job, name)
        with atomic_dir(final) as tmp:
            yield tmp, final
