"""Ineffectual work of a convolution: multiply-adds with a zero operand.

A dense convolution does N x OH x OW x K x C/groups x R x S multiply-adds (MACs). Those whose
weight is zero are skipped by a weight-sparse kernel (EIE: Han et al. 2016; our direct sparse
convolution); those whose input activation is zero (after a ReLU, or in the zero padding) by an
activation-sparse one (Cnvlutin: Albericio et al. 2016); a kernel exploiting both (SCNN: Parashar
et al. 2017) skips every MAC where either operand is zero. The counts are exact: for each weight
position j = (c, r, s) the number of output positions whose input at j is nonzero comes from
``torch.nn.functional.unfold`` of the nonzero indicator of the real input.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ._common import conv_weight


def activation_nonzero_counts(x: torch.Tensor, kernel_size, stride, padding, dilation,
                              groups: int = 1, chunk: int = 16) -> dict:
    """Per weight column, how many (image, output position) pairs read a nonzero input.

    Parameters
    ----------
    x : torch.Tensor (N, C, H, W)
        The layer's real input.
    kernel_size, stride, padding, dilation : pairs of int
    groups : int
    chunk : int
        Images per ``unfold`` call (bounds memory).

    Returns
    -------
    dict
        ``counts`` int64 (C * R * S,): entry ``(c * R + r) * S + s`` counts the pairs whose input
        is nonzero (padding counts as zero); ``positions`` = N x OH x OW; ``images`` = N;
        ``input_zero_share``: share of zeros in ``x`` itself (padding excluded).
    """
    n = x.shape[0]
    counts = None
    positions = 0
    for i in range(0, n, chunk):
        ind = (x[i:i + chunk] != 0).to(torch.float32)
        cols = F.unfold(ind, kernel_size, dilation=dilation, padding=padding, stride=stride)
        c = cols.sum(dim=(0, 2)).to(torch.float64)
        counts = c if counts is None else counts + c
        positions += cols.shape[0] * cols.shape[2]
    return {"counts": counts.round().to(torch.int64).numpy(), "positions": int(positions),
            "images": int(n), "input_zero_share": float((x == 0).float().mean()),
            "groups": int(groups)}


def ineffectual_work(weight, act: dict) -> dict:
    """MACs skipped by weight zeros, by activation zeros and by either, for one conv layer.

    Parameters
    ----------
    weight : torch.Tensor, numpy.ndarray or SparseWeight, (K, C/groups, R, S)
    act : dict
        Result of :func:`activation_nonzero_counts` on the layer's input.

    Returns
    -------
    dict
        ``macs_total`` (dense MACs), ``macs_weight_zero`` (weight is zero),
        ``macs_act_zero`` (activation is zero), ``macs_both_zero`` (both are zero),
        ``macs_either_zero`` (at least one is zero), ``macs_effectual`` (neither);
        and the same as shares of the total: ``skip_weight``, ``skip_act``, ``skip_either``,
        ``effectual_share``; ``input_zero_share``, ``images``.

    Raises
    ------
    ValueError
        If the counts do not match the weight's C x R x S columns.
    """
    w = conv_weight(weight)
    k, cg, r, s = w.shape
    g = act.get("groups", 1)
    counts = np.asarray(act["counts"], dtype=np.int64)
    if counts.size != g * cg * r * s:
        raise ValueError(
            f"activation counts have {counts.size} columns, the weight expects "
            f"groups x C/groups x R x S = {g * cg * r * s}"
        )
    pos = act["positions"]
    kg = k // g
    ncol = cg * r * s
    nzw = (w.reshape(k, ncol) != 0)
    total = pos * k * ncol
    effectual = 0
    act_zero = 0
    for gi in range(g):
        a = counts[gi * ncol:(gi + 1) * ncol]
        wcol = nzw[gi * kg:(gi + 1) * kg].sum(axis=0).astype(np.int64)
        effectual += int((a * wcol).sum())
        act_zero += kg * int(pos * ncol - a.sum())
    w_zero = pos * int((~nzw).sum())
    either = total - effectual
    both = w_zero + act_zero - either
    return {
        "macs_total": int(total), "macs_weight_zero": int(w_zero), "macs_act_zero": int(act_zero),
        "macs_both_zero": int(both), "macs_either_zero": int(either),
        "macs_effectual": int(effectual),
        "skip_weight": w_zero / total, "skip_act": act_zero / total, "skip_either": either / total,
        "effectual_share": effectual / total,
        "input_zero_share": act["input_zero_share"], "images": act["images"],
    }


def capture_activation_counts(model: torch.nn.Module, x: torch.Tensor, names: list[str],
                              batch: int = 64) -> dict:
    """Run ``model`` on ``x`` with forward hooks on the named Conv2d layers; count nonzeros.

    Each hook reduces the layer's input at once with :func:`activation_nonzero_counts` (so no
    activation tensor is kept).

    Parameters
    ----------
    model : torch.nn.Module
    x : torch.Tensor (N, C, H, W)
        Model input (real images, normalised as the model expects).
    names : list of str
        Names (``model.named_modules()``) of the Conv2d layers to observe.
    batch : int
        Images per forward pass.

    Returns
    -------
    dict of str -> dict
        Layer name -> :func:`activation_nonzero_counts` result, summed over the batches.

    Raises
    ------
    ValueError
        If a name is not a Conv2d of ``model`` (the message lists the Conv2d layers).
    """
    modules = dict(model.named_modules())
    convs = [n for n, m in modules.items() if isinstance(m, torch.nn.Conv2d)]
    bad = [n for n in names if n not in convs]
    if bad:
        raise ValueError(f"not Conv2d layers of the model: {bad}; Conv2d layers: {convs}")
    acc: dict = {}
    zero_sum: dict = {}
    handles = []

    def make_hook(name):
        m = modules[name]

        def hook(_mod, inputs):
            pad = m.padding
            if isinstance(pad, str):  # "valid" / "same" (stride 1)
                pad = tuple(0 if pad == "valid" else d * (kk - 1) // 2
                            for d, kk in zip(m.dilation, m.kernel_size))
            res = activation_nonzero_counts(inputs[0].detach(), m.kernel_size, m.stride,
                                            pad, m.dilation, m.groups)
            if name in acc:
                acc[name]["counts"] += res["counts"]
                acc[name]["positions"] += res["positions"]
                acc[name]["images"] += res["images"]
            else:
                acc[name] = res
            zero_sum[name] = zero_sum.get(name, 0.0) + res["input_zero_share"] * res["images"]
        return hook

    try:
        for n in names:
            handles.append(modules[n].register_forward_pre_hook(make_hook(n)))
        was_training = model.training
        model.eval()
        with torch.no_grad():
            for i in range(0, x.shape[0], batch):
                model(x[i:i + batch])
        model.train(was_training)
    finally:
        for h in handles:
            h.remove()
    for n, res in acc.items():
        res["input_zero_share"] = zero_sum[n] / max(1, res["images"])
    return acc
