"""Trained quantization (Deep Compression, Han et al. 2016, section 3.2): after k-means weight
sharing, fine-tune the shared centroids. The gradient of a centroid is the sum of the gradients of
the weights assigned to it; the assignments (codes) and the pruning pattern stay fixed.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn as nn
from torch.nn.utils import parametrize


class SharedWeight(nn.Module):
    """Parametrization ``weight = codebook[codes] * mask`` with a trainable ``codebook``.

    The original tensor is ignored (kept only so the parametrization can be removed).
    """

    def __init__(self, codebook: torch.Tensor, codes: torch.Tensor, mask: torch.Tensor):
        super().__init__()
        self.codebook = nn.Parameter(codebook.float().clone())
        self.register_buffer("codes", codes.clone())
        self.register_buffer("mask", mask.float().clone())

    def forward(self, original: torch.Tensor) -> torch.Tensor:
        return self.codebook[self.codes] * self.mask


def attach_codebooks_(model: nn.Module, bits: int = 4, *, layers: Iterable[str] | None = None,
                      **kw) -> dict[str, SharedWeight]:
    """k-means-quantize each Conv2d/Linear weight and make its codebook trainable.

    Pruning masks (``sparsecnn.prune``) are baked in first. Returns ``{layer: SharedWeight}``;
    call :func:`bake_codebooks_` after training. ``**kw`` go to
    :func:`sparsecnn.quant.quantize_kmeans`.
    """
    from ..prune.masks import finalize_, select_layers
    from . import quantize_kmeans

    finalize_(model)
    out = {}
    for name, module in select_layers(model, layers):
        q = quantize_kmeans(module.weight.detach(), bits, **kw)
        shared = SharedWeight(q.codebook, q.codes, q.mask).to(module.weight.device)
        parametrize.register_parametrization(module, "weight", shared, unsafe=True)
        module.parametrizations.weight.original.requires_grad_(False)
        out[name] = shared
    return out


def bake_codebooks_(model: nn.Module) -> nn.Module:
    """Replace every :class:`SharedWeight` parametrization by its current weight values."""
    for module in model.modules():
        if parametrize.is_parametrized(module, "weight") and any(
                isinstance(p, SharedWeight) for p in module.parametrizations.weight):
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
            module.weight.requires_grad_(True)
    return model


def finetune_kmeans_(model: nn.Module, loader, epochs: int, lr: float, bits: int = 4, *,
                     layers: Iterable[str] | None = None, train_bn: bool = False,
                     quant_kw: dict | None = None, **train_kw) -> dict:
    """k-means quantize (``2**bits`` centroids per layer), then fine-tune the centroids.

    Parameters
    ----------
    model : torch.nn.Module
        Changed in place; afterwards every selected layer holds at most ``2**bits`` distinct
        nonzero values and its zeros are unchanged.
    loader, epochs, lr, **train_kw
        Passed to :func:`sparsecnn.prune.train` (e.g. ``teacher``, ``kd_alpha``, ``augment``,
        ``weight_decay``; weight decay defaults to 0 here).
    bits : int
    layers : iterable of str, optional
    train_bn : bool
        Also train BatchNorm affine parameters (default: only the codebooks move).
    quant_kw : dict, optional
        Passed to :func:`sparsecnn.quant.quantize_kmeans`.

    Returns
    -------
    dict
        ``history`` (from ``train``) and ``codebooks`` (``{layer: tensor}``).
    """
    from ..prune.train import train

    shared = attach_codebooks_(model, bits, layers=layers, **(quant_kw or {}))
    frozen = []
    for name, p in model.named_parameters():
        is_codebook = name.endswith(".codebook")
        if not is_codebook and p.requires_grad and not (train_bn and _is_bn_param(model, name)):
            p.requires_grad_(False)
            frozen.append(p)
    train_kw.setdefault("weight_decay", 0.0)
    try:
        result = train(model, loader, epochs, lr, **train_kw)
    finally:
        for p in frozen:
            p.requires_grad_(True)
        bake_codebooks_(model)
    return {"history": result.history,
            "codebooks": {n: s.codebook.detach().clone() for n, s in shared.items()}}


def _is_bn_param(model: nn.Module, name: str) -> bool:
    owner = name.rsplit(".", 1)[0]
    module = dict(model.named_modules()).get(owner)
    return isinstance(module, nn.modules.batchnorm._BatchNorm)
