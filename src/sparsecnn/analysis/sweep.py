"""Pruning-threshold sweep: density (and accuracy) against the magnitude threshold.

Magnitude pruning (Han et al. 2015, "Learning both weights and connections") keeps the weights
with ``|w| > t``. One global threshold ``t`` is swept over the layers in scope; the thresholds are
the quantiles of the nonzero ``|w|`` at the requested fractions, so the points spread over the
density range whatever the weights' scale, for unpruned and already pruned weights alike.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from ._common import conv_weight

DEFAULT_FRACTIONS = (0.0, 0.1, 0.2, 0.3, 0.5, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99, 0.995)


def threshold_sweep(weights: dict, fractions=DEFAULT_FRACTIONS, *,
                    evaluate: Callable[[dict], float] | None = None, progress=None) -> list[dict]:
    """Density of each layer (and optionally accuracy) for a sweep of magnitude thresholds.

    Parameters
    ----------
    weights : dict of str -> weight (K, C/groups, R, S)
        The (unpruned or already pruned) weights in scope.
    fractions : sequence of float in [0, 1)
        Shares of the currently nonzero weights to prune; the threshold of each is the matching
        quantile of the nonzero |w| (for unpruned weights, the fraction is the target sparsity).
    evaluate : callable or None
        ``evaluate(masked: dict name -> float32 ndarray) -> accuracy in [0, 1]``: called once per
        threshold with the weights pruned at it (the caller loads them into a model copy).
    progress : callable or None
        Called with no argument after each point (for a progress bar).

    Returns
    -------
    list of dict
        Per threshold, in increasing order: ``threshold`` (same units as the weights),
        ``fraction``, ``density`` (overall kept share of all weights), ``layers`` (name ->
        density) and
        ``accuracy`` (float, or None without ``evaluate``).

    Raises
    ------
    ValueError
        If ``weights`` is empty, holds no nonzero, or a fraction is outside [0, 1).
    """
    if not weights:
        raise ValueError("no weights to sweep (the model has no Conv2d layer)")
    sp = [float(s) for s in fractions]
    bad = [s for s in sp if not 0.0 <= s < 1.0]
    if bad:
        raise ValueError(f"fractions must lie in [0, 1), got {bad}")
    arrs = {n: conv_weight(w, n) for n, w in weights.items()}
    total = sum(a.size for a in arrs.values())
    mags = np.concatenate([np.abs(a[a != 0]) for a in arrs.values()])
    if mags.size == 0:
        raise ValueError("every weight in scope is zero: nothing to sweep")
    mags.sort()
    rows = []
    for s in sorted(sp):
        # prune the floor(s * nnz) smallest nonzero magnitudes: t is the largest, keep |w| > t
        m = int(np.floor(s * mags.size))
        t = float(mags[m - 1]) if m > 0 else 0.0
        layers = {n: float(np.count_nonzero(np.abs(a) > t) / a.size) for n, a in arrs.items()}
        kept = sum(layers[n] * arrs[n].size for n in arrs)
        acc = None
        if evaluate is not None:
            acc = float(evaluate({n: np.where(np.abs(a) > t, a, np.float32(0)) for n, a in arrs.items()}))
        rows.append({"threshold": t, "fraction": s, "density": kept / total,
                     "layers": layers, "accuracy": acc})
        if progress is not None:
            progress()
    return rows


def accuracy_evaluator(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor,
                       batch: int = 128) -> Callable[[dict], float]:
    """An ``evaluate`` for :func:`threshold_sweep`: top-1 accuracy with the masked weights loaded.

    Parameters
    ----------
    model : torch.nn.Module
        Evaluated in ``eval()`` mode; its parameters are restored after each call.
    images : torch.Tensor (N, C, H, W) float32, already normalised as the model expects
    labels : torch.Tensor (N,) int64
    batch : int
        Images per forward pass.
    """
    modules = dict(model.named_modules())

    def evaluate(masked: dict) -> float:
        saved = {n: modules[n].weight.detach().clone() for n in masked}
        try:
            with torch.no_grad():
                for n, a in masked.items():
                    modules[n].weight.copy_(torch.from_numpy(np.asarray(a)))
                model.eval()
                correct = 0
                for i in range(0, images.shape[0], batch):
                    out = model(images[i:i + batch])
                    correct += int((out.argmax(1) == labels[i:i + batch]).sum())
            return correct / max(1, images.shape[0])
        finally:
            with torch.no_grad():
                for n, w in saved.items():
                    modules[n].weight.copy_(w)

    return evaluate
