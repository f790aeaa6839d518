"""The atomic file and folder writers every output of sparsecnn goes through."""

import pytest

from sparsecnn._atomic import atomic_dir, atomic_path


def test_atomic_path_replaces_only_on_success(tmp_path):
    target = tmp_path / "sub" / "f.json"
    with atomic_path(target) as tmp:
        tmp.write_text("first")
    assert target.read_text() == "first"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("interrupted")
    assert target.read_text() == "first"
    assert [p.name for p in target.parent.iterdir()] == ["f.json"]  # no temp file left


def test_atomic_dir_new_replace_and_refuse(tmp_path):
    out = tmp_path / "res"
    with atomic_dir(out) as tmp:
        (tmp / "a.txt").write_text("1")
    assert (out / "a.txt").read_text() == "1"
    with pytest.raises(OSError):
        with atomic_dir(out) as tmp:  # exists and not empty, replace=False
            (tmp / "b.txt").write_text("2")
    assert sorted(p.name for p in out.iterdir()) == ["a.txt"]
    with atomic_dir(out, replace=True) as tmp:
        (tmp / "c.txt").write_text("3")
    assert sorted(p.name for p in out.iterdir()) == ["c.txt"]
    with pytest.raises(ValueError):
        with atomic_dir(out, replace=True) as tmp:
            (tmp / "d.txt").write_text("4")
            raise ValueError("boom")
    assert sorted(p.name for p in out.iterdir()) == ["c.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["res"]
