"""Per-layer pruning sensitivity: prune one layer at a time (by magnitude), measure top-1."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
import torch.nn as nn

from .masks import _keep_top, check_sparsity, raw_weight, select_layers
from .train import evaluate


@torch.no_grad()
def sensitivity_sweep(
    model: nn.Module,
    loader,
    sparsities: Sequence[float],
    layers: Iterable[str] | None = None,
    *,
    progress: bool = True,
) -> list[dict]:
    """Prune-one-layer accuracy curves (Han et al. 2015, figure 5 style).

    For every selected layer and every sparsity, only that layer is magnitude-pruned (one-shot,
    no fine-tuning) and top-1 measured on ``loader``; the weights are restored afterwards.

    Parameters
    ----------
    model : torch.nn.Module
        Left unchanged (existing masks are respected: already-pruned weights stay pruned).
    loader : iterable of (x, y)
    sparsities : sequence of float in [0, 1)
    layers : iterable of str, optional
        Layer names (default: every Conv2d/Linear).
    progress : bool
        Rich progress bar.

    Returns
    -------
    list of dict
        First a row ``{"layer": None, "sparsity": 0.0, "top1": dense top-1, "drop": 0.0}``, then one
        row per (layer, sparsity) with ``layer``, ``sparsity``, ``top1`` (in [0, 1]), ``drop``
        (baseline - top1) and ``numel``.

    Raises
    ------
    ValueError
        For a sparsity outside [0, 1), an empty ``sparsities`` or unknown layer names.
    """
    values = [check_sparsity(s) for s in sparsities]
    if not values:
        raise ValueError("sparsities is empty")
    chosen = select_layers(model, layers)
    base = evaluate(model, loader)
    rows = [{"layer": None, "sparsity": 0.0, "top1": base, "drop": 0.0, "numel": 0}]
    bar = None
    if progress:
        from rich.progress import Progress

        bar = Progress(transient=False)
        bar.start()
        task = bar.add_task("sensitivity", total=len(chosen) * len(values))
    try:
        for name, module in chosen:
            w = raw_weight(module)
            saved = w.detach().clone()
            scores = module.weight.detach().abs()
            try:
                for s in values:
                    keep = _keep_top(scores, round(s * scores.numel()))
                    w.copy_(saved * keep.to(saved.dtype))
                    top1 = evaluate(model, loader)
                    rows.append({"layer": name, "sparsity": s, "top1": top1, "drop": base - top1,
                                 "numel": scores.numel()})
                    if bar is not None:
                        bar.update(task, advance=1, description=f"sensitivity {name}")
            finally:
                w.copy_(saved)
    finally:
        if bar is not None:
            bar.stop()
    return rows
