"""Zero structure of real activations: what an activation-sparse kernel could skip, and at what
granularity.

After a ReLU, a convolution's input is full of zeros (EIE's ``W x 0 = 0``; Cnvlutin, Albericio et
al. 2016, measures 44 % zero neurons on average). How much of that a CPU kernel can turn into
speed depends on *where* the zeros are, because a vector unit skips whole vectors, not single
values. For each conv layer's input :func:`zero_structure` counts, exactly:

- the share of zero values (what :func:`~sparsecnn.analysis.ineffectual_work` counts as skippable
  MACs, padding aside);
- **dead channels**: ``(image, channel)`` planes that are entirely zero (a direct sparse
  convolution can drop every nonzero of that input channel for that image, so the work saved is
  the share of *weight nonzeros* reading dead channels, which :func:`dead_channel_work` gives);
- **zero rows**: ``(image, channel, row)`` rows of W values that are all zero;
- **zero vector windows**: aligned windows of ``w`` consecutive values of a channel's plane
  (flattened ``H x W``, NCHW memory order, the last window of a plane possibly shorter) that are
  all zero, for the vector widths of AVX2 (8 floats) and AVX-512 (16).

:func:`activation_structure` runs a model on real inputs with forward pre-hooks on its Conv2d
layers and accumulates these counts over batches (no activation tensor is kept).
"""

from __future__ import annotations

import numpy as np
import torch

#: Vector widths (floats) whose all-zero windows are counted: AVX2 / NEON-pairs and AVX-512.
WIDTHS = (8, 16)


def _counts(x: torch.Tensor, widths) -> dict:
    """Raw counts of one batch (summable across batches)."""
    if not isinstance(x, torch.Tensor) or x.ndim != 4:
        raise ValueError(f"activations must be a 4-D (N, C, H, W) tensor, got "
                         f"{type(x).__name__} {tuple(getattr(x, 'shape', ()))}")
    n, c, h, w = x.shape
    nz = (x != 0)
    plane_nz = nz.flatten(2).sum(dim=2)                       # (N, C)
    dead = plane_nz == 0                                      # (N, C)
    row_dead = ~nz.any(dim=3)                                 # (N, C, H)
    out = {
        "images": int(n), "channels": int(c), "height": int(h), "width": int(w),
        "values": int(x.numel()), "zeros": int(x.numel() - int(plane_nz.sum())),
        "negatives": int((x < 0).sum()), "nonfinite": int((~torch.isfinite(x)).sum()),
        "dead_planes": int(dead.sum()), "rows": int(n * c * h), "zero_rows": int(row_dead.sum()),
        # per channel: in how many images it is dead (for "dead in every image")
        "dead_per_channel": dead.sum(dim=0).to(torch.int64).numpy(),
        # per image: how many of its channels are dead
        "dead_per_image": dead.sum(dim=1).to(torch.int64).numpy(),
        "windows": {}, "zero_windows": {},
    }
    flat = nz.reshape(n, c, h * w)
    for vw in widths:
        vw = int(vw)
        nwin = -(-(h * w) // vw)
        pad = nwin * vw - h * w
        f = torch.nn.functional.pad(flat, (0, pad)) if pad else flat
        any_nz = f.reshape(n, c, nwin, vw).any(dim=3)
        out["windows"][vw] = int(n * c * nwin)
        out["zero_windows"][vw] = int((~any_nz).sum())
    return out


def _merge(a: dict | None, b: dict) -> dict:
    if a is None:
        return b
    for k in ("images", "values", "zeros", "negatives", "nonfinite", "dead_planes", "rows",
              "zero_rows"):
        a[k] += b[k]
    a["dead_per_channel"] = a["dead_per_channel"] + b["dead_per_channel"]
    a["dead_per_image"] = np.concatenate([a["dead_per_image"], b["dead_per_image"]])
    for vw in b["windows"]:
        a["windows"][vw] += b["windows"][vw]
        a["zero_windows"][vw] += b["zero_windows"][vw]
    return a


def _finish(c: dict) -> dict:
    planes = c["images"] * c["channels"]
    dpi = c["dead_per_image"]
    out = dict(c)
    out.update({
        "zero_share": c["zeros"] / c["values"] if c["values"] else 0.0,
        "nonnegative": c["negatives"] == 0,
        "dead_channel_share": c["dead_planes"] / planes if planes else 0.0,
        "dead_channels_per_image_mean": float(dpi.mean()) if dpi.size else 0.0,
        "dead_channels_per_image_min": int(dpi.min()) if dpi.size else 0,
        "dead_channels_per_image_max": int(dpi.max()) if dpi.size else 0,
        "channels_dead_in_every_image": int((c["dead_per_channel"] == c["images"]).sum()),
        "channels_never_dead": int((c["dead_per_channel"] == 0).sum()),
        "zero_row_share": c["zero_rows"] / c["rows"] if c["rows"] else 0.0,
        "zero_window_share": {vw: (c["zero_windows"][vw] / c["windows"][vw]
                                   if c["windows"][vw] else 0.0) for vw in c["windows"]},
    })
    return out


def zero_structure(x: torch.Tensor, widths=WIDTHS) -> dict:
    """Zero structure of one activation tensor (a conv layer's input).

    Parameters
    ----------
    x : torch.Tensor (N, C, H, W)
        Real activations (any floating dtype).
    widths : tuple of int
        Vector widths (floats) whose aligned all-zero windows are counted.

    Returns
    -------
    dict
        Counts: ``images``, ``channels``, ``height``, ``width``, ``values``, ``zeros``,
        ``negatives``, ``nonfinite``, ``dead_planes`` (all-zero (image, channel) planes), ``rows``,
        ``zero_rows``, ``windows`` / ``zero_windows`` (width -> count), ``dead_per_channel`` int64
        (C,) (images in which each channel is dead), ``dead_per_image`` int64 (N,) (dead channels
        of each image). Shares: ``zero_share``, ``dead_channel_share`` (dead planes / N C),
        ``zero_row_share``, ``zero_window_share`` (width -> share); ``dead_channels_per_image_mean``
        / ``_min`` / ``_max``, ``channels_dead_in_every_image``, ``channels_never_dead``,
        ``nonnegative`` (no negative value: the input follows a ReLU).

    Raises
    ------
    ValueError
        If ``x`` is not a 4-D tensor.
    """
    return _finish(_counts(x.detach(), widths))


def dead_channel_work(weight, dead_per_channel, images: int) -> dict:
    """Share of a layer's weight-sparse work (nonzeros x output pixels) that reads dead input
    channels: what skipping dead channels per image saves a direct sparse convolution.

    Parameters
    ----------
    weight : (K, C/groups, R, S) weight (tensor, ndarray or SparseWeight), groups = 1
    dead_per_channel : array_like int (C,)
        In how many of ``images`` images each input channel is all zero
        (``zero_structure(x)["dead_per_channel"]``).
    images : int

    Returns
    -------
    dict
        ``nnz``, ``skipped_share`` (sum over channels of nnz reading the channel x images dead,
        over nnz x images), ``nnz_per_channel`` int64 (C,).

    Raises
    ------
    ValueError
        If the channel counts do not match.
    """
    from ._common import conv_weight

    w = conv_weight(weight)
    per_c = np.count_nonzero(w.reshape(w.shape[0], w.shape[1], -1), axis=(0, 2)).astype(np.int64)
    dpc = np.asarray(dead_per_channel, dtype=np.int64)
    if dpc.shape != per_c.shape:
        raise ValueError(f"dead_per_channel has {dpc.size} channels, the weight {w.shape} has "
                         f"{per_c.size} input channels")
    nnz = int(per_c.sum())
    skipped = float((per_c * dpc).sum()) / (nnz * images) if nnz and images else 0.0
    return {"nnz": nnz, "skipped_share": skipped, "nnz_per_channel": per_c}


def activation_structure(model: torch.nn.Module, x: torch.Tensor, names=None, *,
                         batch: int = 64, widths=WIDTHS) -> dict:
    """Zero structure of the input of each named Conv2d layer of ``model`` run on ``x``.

    Parameters
    ----------
    model : torch.nn.Module
        Run in eval mode under ``torch.no_grad`` (its mode is restored).
    x : torch.Tensor (N, ...)
        Model inputs (real images, normalised as the model expects).
    names : list of str or None
        Conv2d layers to observe (None: all, in registration order).
    batch : int
        Images per forward pass.
    widths : tuple of int
        As :func:`zero_structure`.

    Returns
    -------
    dict of str -> dict
        Layer name -> :func:`zero_structure` of its input over all of ``x`` (counts summed over
        the batches), plus ``in_shape`` (C, H, W).

    Raises
    ------
    ValueError
        If a name is not a Conv2d layer of ``model`` (the message lists them), or ``batch < 1``.
    """
    if int(batch) < 1:
        raise ValueError(f"batch must be >= 1, got {batch!r}")
    modules = dict(model.named_modules())
    convs = [n for n, m in modules.items() if isinstance(m, torch.nn.Conv2d)]
    names = convs if names is None else list(names)
    bad = [n for n in names if n not in convs]
    if bad:
        raise ValueError(f"not Conv2d layers of the model: {bad}; Conv2d layers: {convs}")
    acc: dict = {}
    handles = []

    def make_hook(name):
        def hook(_mod, inputs):
            acc[name] = _merge(acc.get(name), _counts(inputs[0].detach(), widths))
        return hook

    was_training = model.training
    try:
        for n in names:
            handles.append(modules[n].register_forward_pre_hook(make_hook(n)))
        model.eval()
        with torch.no_grad():
            for i in range(0, x.shape[0], int(batch)):
                model(x[i:i + int(batch)])
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    out = {}
    for n in names:
        if n in acc:
            r = _finish(acc[n])
            r["in_shape"] = (r["channels"], r["height"], r["width"])
            out[n] = r
    return out


__all__ = ["zero_structure", "activation_structure", "dead_channel_work", "WIDTHS"]
