"""Data loading: digits split, npz validation, shared CIFAR-10 subsets."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sparsecnn import data


def test_digits_split_deterministic():
    tr, te = data.load_digits(test_fraction=0.2, seed=0)
    assert len(tr) + len(te) == 1797 and abs(len(te) - 360) <= 1
    x, y = tr.tensors
    assert x.shape[1:] == (1, 8, 8) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert abs(float(x.mean())) < 1e-4 and abs(float(x.std()) - 1) < 1e-2
    assert set(y.tolist()) == set(range(10))
    tr2, te2 = data.load_digits(test_fraction=0.2, seed=0)
    assert torch.equal(tr2.tensors[0], x) and torch.equal(te2.tensors[1], te.tensors[1])
    tr3, _ = data.load_digits(test_fraction=0.2, seed=1)
    assert not torch.equal(tr3.tensors[1], y)


@pytest.mark.parametrize("frac", [0, 1, -0.1, 1.5, "a"])
def test_digits_bad_fraction(frac):
    with pytest.raises(ValueError, match="test_fraction"):
        data.load_digits(test_fraction=frac)


def _write(tmp_path, images, labels=None, name="d.npz", **extra):
    path = tmp_path / name
    arrays = {"images": images, **extra}
    if labels is not None:
        arrays["labels"] = labels
    np.savez(path, **arrays)
    return path


def test_load_npz_ok_and_normalised(tmp_path):
    images = np.zeros((4, 3, 5, 6), np.uint8)
    images[:, 0] = 255
    path = _write(tmp_path, images, np.array([0, 1, 2, 9]))
    ds = data.load_npz(path)
    x, y = ds.tensors
    assert x.shape == (4, 3, 5, 6) and y.tolist() == [0, 1, 2, 9]
    torch.testing.assert_close(x[0, 0, 0, 0], torch.tensor((1 - 0.485) / 0.229))
    torch.testing.assert_close(x[0, 1, 0, 0], torch.tensor(-0.456 / 0.224))
    raw = data.load_npz(path, normalize=None).tensors[0]
    assert float(raw.max()) == 1.0 and float(raw.min()) == 0.0


@pytest.mark.parametrize("images, labels, match", [
    (np.zeros((2, 3, 4, 4), np.float32), np.array([0, 1]), "images dtype is float32, expected uint8"),
    (np.zeros((2, 4, 4, 3), np.uint8), np.array([0, 1]), r"images shape is \(2, 4, 4, 3\), expected \(N, 3, H, W\)"),
    (np.zeros((2, 3, 4), np.uint8), np.array([0, 1]), "images shape"),
    (np.zeros((2, 3, 4, 4), np.uint8), np.array([0.0, 1.0]), "labels dtype is float64, expected an integer"),
    (np.zeros((2, 3, 4, 4), np.uint8), np.array([[0, 1]]), r"labels shape is \(1, 2\), expected \(N,\)"),
    (np.zeros((2, 3, 4, 4), np.uint8), np.array([0, 1, 2]), "3 labels for 2 images"),
    (np.zeros((2, 3, 4, 4), np.uint8), np.array([0, 10]), r"labels range over \[0, 10\], expected \[0, 10\)"),
    (np.zeros((2, 3, 4, 4), np.uint8), np.array([-1, 3]), "labels range"),
])
def test_load_npz_validation(tmp_path, images, labels, match):
    with pytest.raises(ValueError, match=match):
        data.load_npz(_write(tmp_path, images, labels))


def test_load_npz_missing_key_file_and_corrupt(tmp_path):
    with pytest.raises(ValueError, match=r"missing array\(s\) \['labels'\]"):
        data.load_npz(_write(tmp_path, np.zeros((1, 3, 2, 2), np.uint8)))
    with pytest.raises(FileNotFoundError, match="nothere.npz"):
        data.load_npz(tmp_path / "nothere.npz")
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"garbage")
    with pytest.raises(ValueError, match="cannot read npz"):
        data.load_npz(bad)
    with pytest.raises(ValueError, match="normalize"):
        data.load_npz(bad, normalize="imagenet21k")


def test_shared_data_dir_env(tmp_path, monkeypatch):
    monkeypatch.setenv("SPARSECNN_SHARED_DATA", str(tmp_path))
    assert data.shared_data_dir() == tmp_path
    with pytest.raises(FileNotFoundError, match="cifar10_train_subset.npz"):
        data.cifar10_subsets()
    monkeypatch.setenv("SPARSECNN_SHARED_DATA", str(tmp_path / "absent"))
    assert data.shared_data_dir() is None
    with pytest.raises(FileNotFoundError, match="shared data not found"):
        data.cifar10_subsets()


@pytest.mark.skipif(data.shared_data_dir() is None, reason="shared data absent")
def test_cifar10_subsets():
    tr, te = data.cifar10_subsets()
    assert len(tr) == 4660 and len(te) == 846
    assert tr.tensors[0].shape == (4660, 3, 32, 32)
    assert set(te.tensors[1].tolist()) == set(range(10))
