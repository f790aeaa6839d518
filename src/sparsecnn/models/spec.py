"""What the jobs know about each model, in one place: a :class:`ModelSpec` per name.

A spec says what a model takes and returns (input shape, classes), where its weights and data
come from by default, and how ``optimize`` prunes and trains it (the base pruning recipe, whether
Linear layers are pruned, the recipe for training it from scratch). ``sparsecnn optimize``,
``sparsecnn report`` and :mod:`sparsecnn.prune.recipes` read these; nothing else holds per-model
defaults.

Public API
----------
spec(name) -> ModelSpec
    The spec of a :data:`sparsecnn.models.NAMES` entry (``ValueError`` listing them otherwise).
SPECS : dict
    name -> ModelSpec.
published_weights(file) -> Path
    A published checkpoint file under ``<shared data>/resnet_cifar10``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

#: Folder of the shared data holding the published CIFAR-10 ResNet checkpoints.
PUBLISHED_WEIGHTS_DIR = "resnet_cifar10"


@dataclass(frozen=True)
class ModelSpec:
    """Defaults the jobs use for one model.

    Attributes
    ----------
    name : str
        A :data:`sparsecnn.models.NAMES` entry.
    input_shape : (C, H, W)
        One image as the model takes it (float32, normalised as its data set is).
    num_classes : int
        Logits per image.
    weights : str or None
        Published checkpoint (file name under ``<shared data>/resnet_cifar10``) used when no
        ``--weights`` is given; None: none is shipped.
    dataset : str or None
        Default data set (:func:`sparsecnn.data.named_datasets`): ``"digits"`` or
        ``"cifar10_subsets"``; None: the user passes ``--data``.
    recipe : str or None
        Base of gradual pruning in ``optimize``: a :data:`sparsecnn.prune.recipes.RECIPES`
        name; None: the :class:`~sparsecnn.prune.recipes.Recipe` defaults (no augmentation,
        no distillation).
    prune_linear : bool
        Prune the Linear layers too (models whose classifier holds most of the weights).
    dense_train : dict or None
        ``{"epochs", "lr", "batch_size"}`` to train the dense model from scratch when no weights
        are given (cached); None: weights are required.
    finetune_batch : int
        Batch size of one-shot pruning's fine-tuning.
    """

    name: str
    input_shape: tuple[int, int, int]
    num_classes: int
    weights: str | None = None
    dataset: str | None = None
    recipe: str | None = None
    prune_linear: bool = False
    dense_train: dict | None = field(default=None, hash=False, compare=True)
    finetune_batch: int = 128

    def replace(self, **changes) -> "ModelSpec":
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)

    def default_weights(self) -> Path | None:
        """The published checkpoint of this model when the shared data holds it, else None."""
        if self.weights is None:
            return None
        try:
            path = published_weights(self.weights)
        except FileNotFoundError:
            return None
        return path if path.is_file() else None

    def default_data(self):
        """``(train, test, description)`` of the default data set.

        Raises
        ------
        ValueError
            If the model has no default data set (pass ``--data``).
        FileNotFoundError
            If the data set lives in the shared data and that is absent.
        """
        if self.dataset is None:
            raise ValueError(f"model {self.name!r} has no default data set; pass --data NPZ")
        from ..data import named_datasets
        return named_datasets(self.dataset)


def _resnet(depth: int, weights: str | None) -> ModelSpec:
    return ModelSpec(f"resnet{depth}", (3, 32, 32), 10, weights=weights,
                     dataset="cifar10_subsets", recipe="resnet20_cifar_90")


#: name -> spec, for every :data:`sparsecnn.models.NAMES` entry.
SPECS: dict[str, ModelSpec] = {
    "resnet20": _resnet(20, "resnet20-12fca82f.th"),
    "resnet32": _resnet(32, None),
    "resnet44": _resnet(44, None),
    "resnet56": _resnet(56, "resnet56-4bfd9763.th"),
    "alexnet": ModelSpec("alexnet", (3, 224, 224), 1000, prune_linear=True),
    "vgg16": ModelSpec("vgg16", (3, 224, 224), 1000, prune_linear=True),
    "smallcnn": ModelSpec("smallcnn", (1, 8, 8), 10, dataset="digits", recipe="smallcnn_digits",
                          prune_linear=True, finetune_batch=64,
                          dense_train={"epochs": 15, "lr": 0.05, "batch_size": 64}),
}


def spec(name: str) -> ModelSpec:
    """The :class:`ModelSpec` of model ``name`` (case-insensitive).

    Raises
    ------
    TypeError
        If ``name`` is not a string.
    ValueError
        If ``name`` is unknown (the message lists the known names).
    """
    if not isinstance(name, str):
        raise TypeError(f"model name must be a str, got {type(name).__name__}")
    try:
        return SPECS[name.lower()]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; expected one of {list(SPECS)}") from None


def published_weights(file: str) -> Path:
    """Path of a published checkpoint: ``file`` itself when it is absolute or exists, else
    ``<shared data>/resnet_cifar10/<file>``.

    Raises
    ------
    FileNotFoundError
        If the shared data folder is absent (see :func:`sparsecnn.data.shared_data_dir`).
    """
    from ..data import shared_data_dir
    path = Path(file)
    if path.is_absolute() or path.exists():
        return path
    shared = shared_data_dir()
    if shared is None:
        raise FileNotFoundError(f"weights {file!r}: shared data folder not found")
    return shared / PUBLISHED_WEIGHTS_DIR / file
