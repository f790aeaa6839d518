"""Pruning: masks (via ``torch.nn.utils.parametrize``), one-shot methods, gradual AGP pruning,
a training loop, sensitivity sweeps and ready-made recipes.

Public API
----------
magnitude_prune_, nm_prune_, filter_prune_, channel_prune_, unified_prune_
    One-shot pruning methods (in place; return ``{layer: bool mask}``).
prune_(model, method, amount, **kw)
    Dispatch by name (:data:`METHODS`).
GradualPruner, agp_sparsity
    Cubic schedule of Zhu & Gupta 2017.
EvolutionaryPruner, EvolutionConfig
    Evolutionary pruning with rewinding (the seeds' GPU paper, Algorithm 1).
train, evaluate, make_loader, TrainResult
    SGD + momentum + cosine LR; top-1 accuracy; DDP under torch.distributed.
distributed
    Process group from torchrun's environment, sharded loaders, reduced metrics, mask checks.
sensitivity_sweep
    Prune-one-layer accuracy curves.
sparsity_of, total_sparsity, masks_of, apply_masks_, finalize_ (= remove_parametrizations)
    Inspect and bake masks.
recipes
    :func:`recipes.resnet20_cifar_90` and friends.
"""

from __future__ import annotations

from . import distributed, recipes
from .evolutionary import EvolutionaryPruner, EvolutionConfig
from .masks import (
    PRUNABLE,
    WeightMask,
    apply_masks_,
    channel_prune_,
    check_sparsity,
    filter_prune_,
    finalize_,
    magnitude_prune_,
    masks_of,
    nm_mask,
    nm_prune_,
    raw_weight,
    remove_parametrizations,
    select_layers,
    set_mask_,
    sparsity_of,
    total_sparsity,
    unified_mask,
    unified_prune_,
)
from .schedule import GradualPruner, agp_sparsity
from .sensitivity import sensitivity_sweep
from .train import TrainResult, distillation_loss, evaluate, make_loader, train

#: One-shot methods by name: ``prune_(model, name, amount, **kw)``.
METHODS = {
    "magnitude": magnitude_prune_,
    "unified": unified_prune_,
    "filter": filter_prune_,
    "channel": channel_prune_,
}


def prune_(model, method: str, amount=None, **kw):
    """One-shot pruning by method name.

    Parameters
    ----------
    model : torch.nn.Module
    method : str
        ``"magnitude"``, ``"unified"`` (amount = sparsity), ``"filter"``, ``"channel"`` (amount =
        ratio), or ``"nm"`` (``n``, ``m`` keywords; amount unused) or an ``"N:M"`` string such as
        ``"2:4"``.
    amount : float in [0, 1)
    **kw
        Passed to the method (``scope``, ``skip_first_conv``, ``layers``, ...).

    Returns
    -------
    dict of str to torch.Tensor
        ``{layer name: bool mask}``.

    Raises
    ------
    ValueError
        For an unknown method (the message lists them) or bad amount.
    """
    if isinstance(method, str) and ":" in method:
        try:
            n, m = (int(v) for v in method.split(":"))
        except ValueError:
            raise ValueError(f"bad N:M method {method!r}; expected e.g. '2:4'") from None
        return nm_prune_(model, n, m, **kw)
    if method == "nm":
        return nm_prune_(model, **kw)
    if method not in METHODS:
        raise ValueError(f"unknown pruning method {method!r}; expected one of "
                         f"{sorted(METHODS) + ['nm', 'N:M']}")
    if amount is None:
        raise ValueError(f"method {method!r} needs an amount in [0, 1)")
    return METHODS[method](model, amount, **kw)


__all__ = [
    "METHODS", "PRUNABLE", "WeightMask", "prune_", "magnitude_prune_", "nm_prune_", "nm_mask",
    "filter_prune_", "channel_prune_", "unified_prune_", "unified_mask", "GradualPruner",
    "EvolutionaryPruner", "EvolutionConfig", "distributed",
    "agp_sparsity", "train", "evaluate", "make_loader", "TrainResult", "distillation_loss",
    "sensitivity_sweep", "sparsity_of", "total_sparsity", "masks_of", "apply_masks_",
    "set_mask_", "finalize_", "remove_parametrizations", "raw_weight", "select_layers",
    "check_sparsity", "recipes",
]
