"""Data sets: scikit-learn's 8x8 digits (embedded default) and the shared CIFAR-10 subsets.

Public API
----------
shared_data_dir() -> Path | None
load_digits(test_fraction=0.2, seed=0) -> (train, test) TensorDatasets, images (N, 1, 8, 8)
load_npz(path, normalize="cifar10") -> TensorDataset, images (N, 3, H, W)
cifar10_subsets() -> (train, test) TensorDatasets (4660 / 846 real CIFAR-10 images)
named_datasets(name) -> (train, test, description) of "digits" or "cifar10_subsets"
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import TensorDataset

#: CIFAR-10 normalisation of the reference ResNet checkpoints (the ImageNet mean/std), RGB.
CIFAR10_MEAN = (0.485, 0.456, 0.406)
CIFAR10_STD = (0.229, 0.224, 0.225)
NUM_CLASSES = 10
ENV_VAR = "SPARSECNN_SHARED_DATA"

_NORMALIZE = {"cifar10": (CIFAR10_MEAN, CIFAR10_STD)}


def shared_data_dir() -> Path | None:
    """The shared real-data folder, or None if it is absent.

    Looks at ``$SPARSECNN_SHARED_DATA`` first (if set, it must be a directory), then at
    ``<repository root>/../shared/data``.

    Returns
    -------
    pathlib.Path or None
    """
    env = os.environ.get(ENV_VAR)
    if env:
        path = Path(env)
        return path if path.is_dir() else None
    repo_root = Path(__file__).resolve().parents[3]
    path = repo_root.parent / "shared" / "data"
    return path if path.is_dir() else None


def load_digits(test_fraction: float = 0.2, seed: int = 0) -> tuple[TensorDataset, TensorDataset]:
    """scikit-learn's bundled 8x8 handwritten digits (1797 images, 10 classes), split in two.

    Pixels (0..16) are scaled to [0, 1] and normalised with the training split's mean and std.

    Parameters
    ----------
    test_fraction : float
        Share of images in the test split, in (0, 1). The split is stratified and deterministic
        for a given ``seed``.
    seed : int
        Seed of the split's permutation.

    Returns
    -------
    (train, test) : tuple of torch.utils.data.TensorDataset
        Each holds ``images`` float32 ``(N, 1, 8, 8)`` and ``labels`` int64 ``(N,)``.

    Raises
    ------
    ValueError
        If ``test_fraction`` is not in (0, 1).
    ImportError
        If scikit-learn is not installed (``pip install sparsecnn[data]``).
    """
    if not isinstance(test_fraction, (int, float)) or not 0.0 < float(test_fraction) < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction!r}")
    try:
        from sklearn.datasets import load_digits as _sk_load_digits
        from sklearn.model_selection import train_test_split
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise ImportError("load_digits needs scikit-learn: pip install 'sparsecnn[data]'") from exc
    bunch = _sk_load_digits()
    x = bunch.images.astype(np.float32) / 16.0
    y = bunch.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(
        x, y, test_size=float(test_fraction), random_state=int(seed), stratify=y
    )
    mean, std = float(x_tr.mean()), float(x_tr.std())

    def make(xs, ys):
        images = torch.from_numpy((xs - mean) / std).float().unsqueeze(1).contiguous()
        return TensorDataset(images, torch.from_numpy(ys))

    return make(x_tr, y_tr), make(x_te, y_te)


def load_npz(path, normalize: str | None = "cifar10", *, labels_required: bool = True) -> TensorDataset:
    """Load images and labels from an ``.npz`` file (the shared CIFAR-10 subset format).

    Parameters
    ----------
    path : str or os.PathLike
        File holding ``images``: uint8 ``(N, 3, H, W)`` channel-first RGB, and ``labels``:
        integer ``(N,)`` in ``[0, 10)``.
    normalize : {"cifar10", None}
        ``"cifar10"``: scale to [0, 1] and normalise with :data:`CIFAR10_MEAN` /
        :data:`CIFAR10_STD`; None: only scale to [0, 1].
    labels_required : bool
        False: a file without ``labels`` is fine (unlabelled images, for label-free jobs): it
        gives a one-tensor dataset, ``images`` may have any channel count and be uint8 (scaled
        to [0, 1], normalised only when ``normalize`` is given and C is 3) or float32 (taken as
        it is, already preprocessed).

    Returns
    -------
    torch.utils.data.TensorDataset
        ``images`` float32 ``(N, 3, H, W)``, ``labels`` int64 ``(N,)``.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ValueError
        If the file is not a readable npz, lacks ``images``/``labels``, or their dtype, shape,
        length or label range is wrong (the message names what was found and what was expected),
        or ``normalize`` is unknown.
    """
    if normalize is not None and normalize not in _NORMALIZE:
        raise ValueError(f"normalize must be one of {sorted(_NORMALIZE)} or None, got {normalize!r}")
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"npz file not found: {path}")
    if path.is_dir():
        raise ValueError(f"{path} is a folder; expected an .npz file with 'images' and 'labels'")
    with open(path, "rb") as fh:
        head = fh.read(6)
    if head == b"\x93NUMPY":
        raise ValueError(f"{path} is a single .npy array, expected an .npz archive holding "
                         "'images' uint8 (N, 3, H, W) and 'labels' (N,): write it with "
                         "numpy.savez(path, images=..., labels=...)")
    try:
        with np.load(path, allow_pickle=False) as npz:
            if not isinstance(npz, np.lib.npyio.NpzFile):
                raise ValueError("not an npz archive")
            arrays = {k: npz[k] for k in npz.files if k in ("images", "labels")}
            files = sorted(npz.files)
    except (OSError, zipfile.BadZipFile, EOFError, ValueError, AttributeError) as exc:
        raise ValueError(f"cannot read npz file {path}: {exc}") from exc
    if not labels_required and "images" in arrays and "labels" not in arrays:
        return _unlabelled(path, arrays["images"], normalize)
    missing = {"images", "labels"} - set(arrays)
    if missing:
        raise ValueError(
            f"{path}: missing array(s) {sorted(missing)}; found {files}, "
            "expected 'images' and 'labels'"
        )
    images, labels = arrays["images"], arrays["labels"]
    if images.dtype != np.uint8:
        raise ValueError(f"{path}: images dtype is {images.dtype}, expected uint8")
    if images.ndim != 4 or images.shape[1] != 3 or 0 in images.shape:
        raise ValueError(
            f"{path}: images shape is {images.shape}, expected (N, 3, H, W) channel-first RGB"
        )
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"{path}: labels dtype is {labels.dtype}, expected an integer dtype")
    if labels.ndim != 1:
        raise ValueError(f"{path}: labels shape is {labels.shape}, expected (N,)")
    if labels.shape[0] != images.shape[0]:
        raise ValueError(
            f"{path}: {labels.shape[0]} labels for {images.shape[0]} images, expected equal lengths"
        )
    if labels.size and (labels.min() < 0 or labels.max() >= NUM_CLASSES):
        raise ValueError(
            f"{path}: labels range over [{labels.min()}, {labels.max()}], expected [0, {NUM_CLASSES})"
        )
    x = torch.from_numpy(images).float().div_(255.0)
    if normalize is not None:
        mean, std = _NORMALIZE[normalize]
        x = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    return TensorDataset(x.contiguous(), torch.from_numpy(labels.astype(np.int64)))


def _unlabelled(path, images: np.ndarray, normalize) -> TensorDataset:
    if images.ndim != 4 or 0 in images.shape:
        raise ValueError(f"{path}: images shape is {images.shape}, expected (N, C, H, W)")
    if images.dtype == np.uint8:
        x = torch.from_numpy(images).float().div_(255.0)
        if normalize is not None and images.shape[1] == 3:
            mean, std = _NORMALIZE[normalize]
            x = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    elif images.dtype == np.float32:
        if not np.isfinite(images).all():
            raise ValueError(f"{path}: images hold NaN or infinite values")
        x = torch.from_numpy(images.copy())
    else:
        raise ValueError(f"{path}: images dtype is {images.dtype}, expected uint8 or float32")
    return TensorDataset(x.contiguous())


def cifar10_subsets(data_dir=None) -> tuple[TensorDataset, TensorDataset]:
    """The shared real CIFAR-10 subsets: 4660 training and 846 test images, normalised.

    Parameters
    ----------
    data_dir : str or os.PathLike, optional
        The shared data folder; default :func:`shared_data_dir`.

    Returns
    -------
    (train, test) : tuple of torch.utils.data.TensorDataset
        Images float32 ``(N, 3, 32, 32)``, labels int64 ``(N,)``.

    Raises
    ------
    FileNotFoundError
        If the shared data (or one of its npz files) is absent; the message says where it looked.
    """
    base = Path(data_dir) if data_dir is not None else shared_data_dir()
    if base is None:
        raise FileNotFoundError(
            f"shared data not found: set ${ENV_VAR} or place it at <repo>/../shared/data"
        )
    folder = base / "cifar10"
    return (load_npz(folder / "cifar10_train_subset.npz"),
            load_npz(folder / "cifar10_test_subset.npz"))


def random_crop_flip(x: torch.Tensor, generator: torch.Generator | None = None,
                     padding: int = 4) -> torch.Tensor:
    """Standard CIFAR augmentation on a batch: zero-pad by ``padding``, random crop back to the
    input size, random horizontal flip (each with probability 1/2), per image.

    Parameters
    ----------
    x : torch.Tensor, float (N, C, H, W)
    generator : torch.Generator, optional
        Source of randomness (for reproducible training).
    padding : int
        Pixels of zero padding on each side (>= 0).

    Returns
    -------
    torch.Tensor of the same shape (a new tensor).
    """
    if x.dim() != 4:
        raise ValueError(f"x must be (N, C, H, W), got shape {tuple(x.shape)}")
    if padding < 0:
        raise ValueError(f"padding must be >= 0, got {padding}")
    n, _, h, w = x.shape
    padded = torch.nn.functional.pad(x, (padding, padding, padding, padding))
    offs = torch.randint(0, 2 * padding + 1, (n, 2), generator=generator)
    flips = torch.rand(n, generator=generator) < 0.5
    out = torch.empty_like(x)
    for i in range(n):
        dy, dx = int(offs[i, 0]), int(offs[i, 1])
        crop = padded[i, :, dy:dy + h, dx:dx + w]
        out[i] = crop.flip(-1) if flips[i] else crop
    return out


#: Data sets known by name (:func:`named_datasets`, model specs, recipes).
DATASETS = ("digits", "cifar10_subsets")


def named_datasets(name: str):
    """``(train, test, description)`` of a data set known by name (:data:`DATASETS`).

    Raises
    ------
    ValueError
        If ``name`` is unknown.
    FileNotFoundError
        If the data set lives in the shared data folder and that is absent.
    """
    if name == "digits":
        train, test = load_digits()
        return train, test, "scikit-learn digits 8x8 (1437 train / 360 test)"
    if name == "cifar10_subsets":
        train, test = cifar10_subsets()
        return train, test, "CIFAR-10 subsets (4660 train / 846 test, shared data)"
    raise ValueError(f"unknown dataset {name!r}; expected one of {list(DATASETS)}")


__all__ = [
    "DATASETS",
    "named_datasets",
    "random_crop_flip",
    "shared_data_dir",
    "load_digits",
    "load_npz",
    "cifar10_subsets",
    "CIFAR10_MEAN",
    "CIFAR10_STD",
]
