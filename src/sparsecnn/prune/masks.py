"""Pruning masks and one-shot pruning methods.

Masks are applied with :mod:`torch.nn.utils.parametrize`: a pruned layer's ``weight`` becomes
``original * mask`` with ``mask`` a fixed buffer, so masked weights stay zero through training (their
gradient is zero) until the mask is recomputed. :func:`finalize_` bakes the masks in.

Every method works on the K x (C/groups * R * S) matrix view of a conv weight (``(out, in)`` for
Linear), the view of :mod:`sparsecnn.formats`: row = output channel, column
``j = (c * R + r) * S + s``.

Methods
-------
- :func:`magnitude_prune_`: unstructured, smallest ``|w|`` first (Han et al. 2015, "Learning both
  weights and connections"), per layer or global.
- :func:`nm_prune_`: N:M, at most N nonzeros in each group of M consecutive columns of a row.
- :func:`filter_prune_`: whole output filters (rows) by L1 norm (Li et al. 2017).
- :func:`channel_prune_`: whole input channels by L1 norm.
- :func:`unified_prune_`: every output channel of a layer keeps the same nnz (the GPU paper's
  "unified sparsity level per output channel", section 7 of the seeds' 003).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
import torch.nn as nn
from torch.nn.utils import parametrize

PRUNABLE = (nn.Conv2d, nn.Linear)


class WeightMask(nn.Module):
    """Parametrization ``weight -> weight * mask`` with a fixed ``mask`` buffer (same dtype).

    With ``track_grad = True`` the backward pass also adds the *dense* gradient
    ``dL/d(weight * mask)`` -- nonzero at pruned positions too, unlike the gradient of the
    trainable tensor, which the mask zeroes -- to ``dense_grad`` (a plain attribute, not saved;
    reset it to None to start a new sum). Gradient-informed mask scores use it
    (:mod:`sparsecnn.prune.evolutionary`).
    """

    def __init__(self, mask: torch.Tensor):
        super().__init__()
        self.register_buffer("mask", mask)
        self.track_grad = False
        self.dense_grad: torch.Tensor | None = None

    def _add_grad(self, grad: torch.Tensor) -> None:
        g = grad.detach()
        self.dense_grad = g.clone() if self.dense_grad is None else self.dense_grad.add_(g)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        out = weight * self.mask
        if getattr(self, "track_grad", False) and out.requires_grad:
            out.register_hook(self._add_grad)
        return out


# ------------------------------------------------------------------------------------------------
# validation and layer selection
# ------------------------------------------------------------------------------------------------
def check_sparsity(sparsity, name: str = "sparsity") -> float:
    """Return ``sparsity`` as a float in [0, 1); raise ValueError naming the value otherwise."""
    if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)):
        raise ValueError(f"{name} must be a number in [0, 1), got {sparsity!r}")
    value = float(sparsity)
    if not (0.0 <= value < 1.0):  # also rejects NaN
        raise ValueError(f"{name} must be in [0, 1), got {sparsity!r}")
    return value


def _layer_names(model: nn.Module) -> list[tuple[str, nn.Module]]:
    from ..models import conv_layers

    return conv_layers(model)


def select_layers(
    model: nn.Module,
    layers: Iterable[str] | None = None,
    *,
    skip_first_conv: bool = False,
    skip_classifier: bool = False,
    types: tuple[type, ...] = PRUNABLE,
) -> list[tuple[str, nn.Module]]:
    """Prunable layers of ``model`` (Conv2d and Linear) in forward order.

    Parameters
    ----------
    model : torch.nn.Module
    layers : iterable of str, optional
        Qualified names to keep (default: all). Unknown names raise ValueError listing what exists.
    skip_first_conv : bool
        Leave out the first Conv2d (the image-facing layer, few weights, sensitive).
    skip_classifier : bool
        Leave out the last Linear layer.
    types : tuple of type
        Layer types considered.

    Raises
    ------
    TypeError
        If ``model`` is not an ``nn.Module`` or ``layers`` is a plain string.
    ValueError
        If a name in ``layers`` is not a prunable layer, or nothing is left to prune.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    found = [(n, m) for n, m in _layer_names(model) if isinstance(m, types)]
    if skip_first_conv:
        first = next((n for n, m in found if isinstance(m, nn.Conv2d)), None)
        found = [(n, m) for n, m in found if n != first]
    if skip_classifier:
        last = next((n for n, m in reversed(found) if isinstance(m, nn.Linear)), None)
        found = [(n, m) for n, m in found if n != last]
    if layers is not None:
        if isinstance(layers, str):
            raise TypeError(f"layers must be an iterable of names, not a string ({layers!r})")
        wanted = list(layers)
        names = [n for n, _ in found]
        unknown = [n for n in wanted if n not in names]
        if unknown:
            raise ValueError(f"unknown layer(s) {unknown}; prunable layers are {names}")
        found = [(n, m) for n, m in found if n in set(wanted)]
    if not found:
        raise ValueError("no layer left to prune (check layers / skip_first_conv / skip_classifier)")
    return found


# ------------------------------------------------------------------------------------------------
# mask plumbing
# ------------------------------------------------------------------------------------------------
def _mask_param(module: nn.Module) -> WeightMask | None:
    if parametrize.is_parametrized(module, "weight"):
        for p in module.parametrizations.weight:
            if isinstance(p, WeightMask):
                return p
    return None


def raw_weight(module: nn.Module) -> torch.nn.Parameter:
    """The trainable weight tensor: ``parametrizations.weight.original`` if masked, else ``weight``."""
    if parametrize.is_parametrized(module, "weight"):
        return module.parametrizations.weight.original
    return module.weight


def set_mask_(module: nn.Module, mask: torch.Tensor) -> torch.Tensor:
    """Attach (or replace) the pruning mask of ``module.weight`` and zero the masked weights.

    Parameters
    ----------
    module : nn.Conv2d or nn.Linear
    mask : torch.Tensor, bool or float, shape of the weight
        True/1 = keep, False/0 = pruned.

    Returns
    -------
    torch.Tensor
        The mask as a bool tensor.
    """
    weight = raw_weight(module)
    if tuple(mask.shape) != tuple(weight.shape):
        raise ValueError(f"mask shape {tuple(mask.shape)} does not match weight {tuple(weight.shape)}")
    keep = mask.to(dtype=torch.bool, device=weight.device)
    fmask = keep.to(weight.dtype)
    existing = _mask_param(module)
    if existing is None:
        parametrize.register_parametrization(module, "weight", WeightMask(fmask.clone()))
    else:
        existing.mask.copy_(fmask)
    with torch.no_grad():
        raw_weight(module).mul_(fmask)  # masked weights are zero in storage too
    return keep


def masks_of(model: nn.Module) -> dict[str, torch.Tensor]:
    """Current masks, ``{layer name: bool tensor}``, for every masked Conv2d/Linear of ``model``."""
    out = {}
    for name, module in model.named_modules():
        p = _mask_param(module)
        if p is not None:
            out[name] = p.mask.detach().to(torch.bool).clone()
    return out


def apply_masks_(model: nn.Module, masks: dict[str, torch.Tensor]) -> nn.Module:
    """Attach ``masks`` (``{layer name: mask}``, e.g. from :func:`masks_of`) to ``model``.

    Raises
    ------
    ValueError
        If a name is not a Conv2d/Linear of ``model`` or a mask's shape does not fit.
    """
    modules = dict(model.named_modules())
    for name, mask in masks.items():
        module = modules.get(name)
        if not isinstance(module, PRUNABLE):
            raise ValueError(f"mask for {name!r}: not a Conv2d/Linear layer of the model")
        set_mask_(module, torch.as_tensor(mask))
    return model


def finalize_(model: nn.Module) -> nn.Module:
    """Bake the masks in: remove the parametrizations, leaving ``weight`` = masked weight.

    Returns ``model``; its ``state_dict`` then has plain ``<layer>.weight`` keys again.
    """
    for module in model.modules():
        if _mask_param(module) is not None:
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
    return model


remove_parametrizations = finalize_


def sparsity_of(model: nn.Module, *, types: tuple[type, ...] = PRUNABLE) -> dict[str, float]:
    """Fraction of zero weights of every Conv2d/Linear layer, ``{name: sparsity in [0, 1]}``."""
    out = {}
    for name, module in _layer_names(model):
        if isinstance(module, types):
            w = module.weight.detach()
            out[name] = float((w == 0).sum()) / w.numel()
    return out


def total_sparsity(model: nn.Module, layers: Iterable[str] | None = None) -> float:
    """Zero weights / weights over the named layers (default: every Conv2d/Linear)."""
    chosen = set(layers) if layers is not None else None
    zeros = total = 0
    for name, module in _layer_names(model):
        if chosen is None or name in chosen:
            w = module.weight.detach()
            zeros += int((w == 0).sum())
            total += w.numel()
    return zeros / max(total, 1)


# ------------------------------------------------------------------------------------------------
# scores -> masks
# ------------------------------------------------------------------------------------------------
def _keep_top(scores: torch.Tensor, n_prune: int) -> torch.Tensor:
    """Bool mask of ``scores``' shape with exactly ``n_prune`` entries (lowest scores) False.

    Ties break by position (stable sort), so the result is deterministic.
    """
    flat = scores.reshape(-1)
    keep = torch.ones(flat.numel(), dtype=torch.bool, device=flat.device)
    if n_prune > 0:
        order = torch.argsort(flat, stable=True)
        keep[order[:n_prune]] = False
    return keep.view_as(scores)


def _matrix(w: torch.Tensor) -> torch.Tensor:
    return w.reshape(w.shape[0], -1)


def magnitude_prune_(
    model: nn.Module,
    sparsity: float,
    *,
    scope: str = "layer",
    skip_first_conv: bool = False,
    skip_classifier: bool = False,
    layers: Iterable[str] | None = None,
) -> dict[str, torch.Tensor]:
    """Unstructured magnitude pruning: zero the smallest ``|w|``.

    Parameters
    ----------
    model : torch.nn.Module
        Pruned in place (masks attached with ``torch.nn.utils.parametrize``).
    sparsity : float in [0, 1)
        Target share of zeros. ``scope="layer"``: every selected layer gets exactly
        ``round(sparsity * numel)`` zeros; ``"global"``: one threshold over all selected layers,
        exactly ``round(sparsity * total)`` zeros in all (layers get different sparsities).
    scope : {"layer", "global"}
    skip_first_conv, skip_classifier, layers
        Layer selection, see :func:`select_layers`.

    Returns
    -------
    dict of str to torch.Tensor
        ``{layer name: bool mask}`` (True = kept) of the pruned layers.

    Raises
    ------
    ValueError
        If ``sparsity`` is not in [0, 1), ``scope`` is unknown or a layer name is unknown.

    Notes
    -----
    Magnitudes are those of the current (already masked) weights, so a weight once pruned is
    pruned again at any higher sparsity (ties broken by position).
    """
    sparsity = check_sparsity(sparsity)
    if scope not in ("layer", "global"):
        raise ValueError(f"scope must be 'layer' or 'global', got {scope!r}")
    chosen = select_layers(model, layers, skip_first_conv=skip_first_conv,
                           skip_classifier=skip_classifier)
    masks: dict[str, torch.Tensor] = {}
    if scope == "layer":
        for name, module in chosen:
            w = module.weight.detach()
            masks[name] = set_mask_(module, _keep_top(w.abs(), round(sparsity * w.numel())))
        return masks
    weights = [m.weight.detach() for _, m in chosen]
    scores = torch.cat([w.abs().reshape(-1).float() for w in weights])
    keep = _keep_top(scores, round(sparsity * scores.numel()))
    offset = 0
    for (name, module), w in zip(chosen, weights):
        masks[name] = set_mask_(module, keep[offset:offset + w.numel()].view_as(w))
        offset += w.numel()
    return masks


def nm_mask(weight: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """N:M mask of a weight: in each row of the K x (C/groups*R*S) view, every group of ``m``
    consecutive columns keeps its ``n`` largest ``|w|`` (a trailing partial group of ``r`` columns
    keeps ``min(n, r)``). Returns a bool tensor of the weight's shape."""
    mat = _matrix(weight.detach()).abs().float()
    rows, cols = mat.shape
    groups = math.ceil(cols / m)
    padded = torch.full((rows, groups * m), -1.0, device=mat.device)
    padded[:, :cols] = mat
    g = padded.view(rows, groups, m)
    # stable descending order: largest |w| first, lower column index first on ties
    order = torch.argsort(-g, dim=2, stable=True)
    keep = torch.zeros_like(g, dtype=torch.bool)
    keep.scatter_(2, order[:, :, :n], True)
    keep = keep.view(rows, groups * m)[:, :cols]
    return keep.reshape(weight.shape)


def nm_prune_(
    model: nn.Module,
    n: int = 2,
    m: int = 4,
    *,
    skip_first_conv: bool = False,
    skip_classifier: bool = False,
    layers: Iterable[str] | None = None,
) -> dict[str, torch.Tensor]:
    """N:M structured pruning (e.g. 2:4, Mishra et al. 2021, NVIDIA Ampere sparse tensor cores).

    In each row of the K x (C/groups*R*S) matrix view, every group of ``m`` consecutive columns
    keeps at most ``n`` nonzeros (the ``n`` largest ``|w|``): sparsity ``1 - n/m`` when the row
    length is a multiple of ``m``.

    Returns ``{layer name: bool mask}``.

    Raises
    ------
    ValueError
        If not ``1 <= n < m`` (ints), or a layer name is unknown.
    """
    if isinstance(n, bool) or isinstance(m, bool) or not isinstance(n, int) or not isinstance(m, int):
        raise ValueError(f"n and m must be ints, got n={n!r}, m={m!r}")
    if not 1 <= n < m:
        raise ValueError(f"N:M needs 1 <= n < m, got n={n}, m={m}")
    chosen = select_layers(model, layers, skip_first_conv=skip_first_conv,
                           skip_classifier=skip_classifier)
    return {name: set_mask_(mod, nm_mask(mod.weight, n, m)) for name, mod in chosen}


def _check_ratio(ratio) -> float:
    return check_sparsity(ratio, "ratio")


def filter_prune_(
    model: nn.Module,
    ratio: float,
    *,
    skip_first_conv: bool = False,
    skip_classifier: bool = True,
    layers: Iterable[str] | None = None,
) -> dict[str, torch.Tensor]:
    """Filter pruning (Li et al. 2017, "Pruning filters for efficient ConvNets"): in each layer,
    zero the ``round(ratio * K)`` output filters (rows) with the smallest L1 norm.

    Shapes are kept (the filters become zero rows). The classifier is skipped by default (pruning
    its rows would delete classes).

    Returns ``{layer name: bool mask}``. Raises ValueError if ``ratio`` is not in [0, 1).
    """
    return _slice_prune_(model, ratio, 0, layers, skip_first_conv, skip_classifier)


def channel_prune_(
    model: nn.Module,
    ratio: float,
    *,
    skip_first_conv: bool = True,
    skip_classifier: bool = False,
    layers: Iterable[str] | None = None,
) -> dict[str, torch.Tensor]:
    """Input-channel pruning: in each layer, zero the ``round(ratio * C)`` input channels (dim 1 of
    the weight, all K x R x S weights of a channel) with the smallest L1 norm.

    Shapes are kept. The first conv is skipped by default (its inputs are the image's colours).

    Returns ``{layer name: bool mask}``. Raises ValueError if ``ratio`` is not in [0, 1).
    """
    return _slice_prune_(model, ratio, 1, layers, skip_first_conv, skip_classifier)


def _slice_prune_(model, ratio, dim, layers, skip_first_conv, skip_classifier):
    """Zero, in each chosen layer, the ``round(ratio * w.shape[dim])`` slices of the weight along
    ``dim`` (0: output filters, 1: input channels) with the smallest L1 norm."""
    ratio = _check_ratio(ratio)
    chosen = select_layers(model, layers, skip_first_conv=skip_first_conv,
                           skip_classifier=skip_classifier)
    masks = {}
    for name, module in chosen:
        w = module.weight.detach()
        norms = w.abs().sum(dim=[d for d in range(w.dim()) if d != dim])
        keep = _keep_top(norms, round(ratio * w.shape[dim]))
        shape = [1] * w.dim()
        shape[dim] = -1
        masks[name] = set_mask_(module, keep.view(shape).expand_as(w))
    return masks


def unified_mask(weight: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Bool mask keeping, in every row of the K x (C/groups*R*S) view, the same number
    ``ncols - round(sparsity * ncols)`` of largest ``|w|``."""
    mat = _matrix(weight.detach()).abs()
    n_prune = round(sparsity * mat.shape[1])
    keep = torch.ones_like(mat, dtype=torch.bool)
    if n_prune:
        order = torch.argsort(mat, dim=1, stable=True)
        keep.scatter_(1, order[:, :n_prune], False)
    return keep.reshape(weight.shape)


def unified_prune_(
    model: nn.Module,
    sparsity: float,
    *,
    skip_first_conv: bool = False,
    skip_classifier: bool = False,
    layers: Iterable[str] | None = None,
) -> dict[str, torch.Tensor]:
    """Unified per-channel sparsity: every output channel (row) of a layer keeps the same nnz.

    The seeds' GPU paper (003, section 7) unifies the sparsity of the K output channels of each
    convolution so that every GPU warp runs the same number of iterations; here each row keeps
    its ``ncols - round(sparsity * ncols)`` largest ``|w|`` (``ncols = C/groups*R*S``).

    Returns ``{layer name: bool mask}``. Raises ValueError if ``sparsity`` is not in [0, 1).
    """
    sparsity = check_sparsity(sparsity)
    chosen = select_layers(model, layers, skip_first_conv=skip_first_conv,
                           skip_classifier=skip_classifier)
    return {name: set_mask_(mod, unified_mask(mod.weight, sparsity)) for name, mod in chosen}
