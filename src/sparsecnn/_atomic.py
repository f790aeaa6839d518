"""Atomic writes: a file or a folder appears complete under its final name, or not at all.

Everything sparsecnn writes (tuning cache, saved models, checkpoints, ONNX files, result and
report folders) goes through these two context managers, so an interrupted run never leaves a
half-written file in place of a good one.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is fsynced and renamed to ``path``.

    The caller writes the temporary file by any means (``torch.save``, ``json.dump``,
    ``torch.onnx.export`` ...). On an exception the temporary file is removed and ``path`` is left
    as it was. Parent folders are created. The file gets mode 0644 (``mkstemp`` makes 0600).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, 0o644)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def remove_orphans(path, older_than_s: float = 600.0) -> int:
    """Remove temporary files that :func:`atomic_path` left beside ``path`` when its writer was
    killed (``.<name>.*.tmp`` older than ``older_than_s`` seconds: a live writer's temporary
    file is younger). Returns how many were removed; errors are ignored."""
    import time

    path = Path(path)
    now, n = time.time(), 0
    try:
        siblings = list(path.parent.glob(f".{path.name}.*.tmp"))
    except OSError:
        return 0
    for tmp in siblings:
        with contextlib.suppress(OSError):
            if now - tmp.stat().st_mtime > older_than_s:
                tmp.unlink()
                n += 1
    return n


@contextlib.contextmanager
def atomic_dir(path, *, replace: bool = False) -> Iterator[Path]:
    """Yield a temporary folder beside ``path``; on success it is renamed to ``path``.

    Parameters
    ----------
    path : str or os.PathLike
        The final folder.
    replace : bool
        If ``path`` exists, swap it out (the old folder is removed after the new one is in
        place). If False, an existing non-empty ``path`` makes the final rename fail (OSError)
        and the temporary folder is removed.

    On an exception the temporary folder is removed and ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o755)
        if replace and path.exists():
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
