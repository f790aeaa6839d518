"""Per-layer sparsity statistics in the form Distiller users expect.

Distiller's ``sparsity_summary`` (Zmora et al. 2019, "Neural Network Distiller") reports, per
weight tensor, element ("fine"), kernel (a whole R x S filter is zero), channel (an input channel
is zero across every filter) and filter (an output channel is all zero) sparsity and nnz. We add
local (per R x S filter) and global density, nnz per output and input channel, and the bytes of
the dense weight against each sparse format in :data:`sparsecnn.formats.FORMATS`.
"""

from __future__ import annotations

import numpy as np

from ._common import conv_weight, filter_nnz


def layer_sparsity(weight, name: str = "", formats: tuple[str, ...] | None = None) -> dict:
    """Sparsity summary of one conv weight.

    Parameters
    ----------
    weight : torch.Tensor, numpy.ndarray or SparseWeight, (K, C/groups, R, S)
    name : str
        Layer name, copied into the result.
    formats : tuple of str or None
        Formats to size (keys of :data:`sparsecnn.formats.FORMATS`); None means all of them.

    Returns
    -------
    dict
        ``name``, ``shape`` (K, C/groups, R, S), ``numel``, ``nnz``, ``density`` (nnz / numel),
        ``element_sparsity`` (1 - density), ``kernel_sparsity`` (share of R x S filters that are
        all zero), ``channel_sparsity`` (share of input channels whose every filter is zero),
        ``filter_sparsity`` (share of output channels that are all zero), ``zero_filters``,
        ``zero_in_channels``, ``zero_out_channels`` (counts), ``dense_bytes`` (float32 bytes) and
        ``bytes`` (format name -> bytes, or None where the format could not store this weight,
        with the reason in ``bytes_errors``).

    Raises
    ------
    ValueError
        If a name in ``formats`` is unknown.
    """
    w = conv_weight(weight)
    k, c, r, s = w.shape
    fnnz = filter_nnz(w)
    nnz = int(fnnz.sum())
    numel = int(w.size)
    out = {
        "name": name,
        "shape": (k, c, r, s),
        "numel": numel,
        "nnz": nnz,
        "density": nnz / numel,
        "element_sparsity": 1.0 - nnz / numel,
        "kernel_sparsity": float(np.mean(fnnz == 0)),
        "channel_sparsity": float(np.mean(fnnz.sum(axis=0) == 0)),
        "filter_sparsity": float(np.mean(fnnz.sum(axis=1) == 0)),
        "zero_filters": int(np.count_nonzero(fnnz == 0)),
        "zero_in_channels": int(np.count_nonzero(fnnz.sum(axis=0) == 0)),
        "zero_out_channels": int(np.count_nonzero(fnnz.sum(axis=1) == 0)),
        "dense_bytes": numel * 4,
    }
    out["bytes"], out["bytes_errors"] = format_bytes(w, formats)
    return out


def format_bytes(weight, formats: tuple[str, ...] | None = None) -> tuple[dict, dict]:
    """Bytes each sparse format takes for ``weight`` (float32 values, default options).

    Returns
    -------
    (dict, dict)
        format name -> ``nbytes`` (int, or None where the format refused this weight) and format
        name -> the reason it refused (e.g. an N:M format given an unstructured pattern).

    Raises
    ------
    ValueError
        If a name in ``formats`` is unknown (the message lists the known ones).
    """
    from ..formats import FORMATS

    w = conv_weight(weight)
    names = tuple(FORMATS) if formats is None else tuple(formats)
    unknown = [f for f in names if f not in FORMATS]
    if unknown:
        raise ValueError(f"unknown format(s) {unknown}; expected some of {sorted(FORMATS)}")
    sizes, errors = {}, {}
    for fmt in names:
        try:
            sizes[fmt] = int(FORMATS[fmt].from_dense(w).nbytes)
        except (ValueError, TypeError) as exc:  # a format that cannot hold this pattern
            sizes[fmt] = None
            errors[fmt] = str(exc)
    return sizes, errors


def density_profile(weight) -> dict:
    """Local (per R x S filter) and global density, and nnz per output / input channel.

    Parameters
    ----------
    weight : torch.Tensor, numpy.ndarray or SparseWeight, (K, C/groups, R, S)

    Returns
    -------
    dict
        ``filter_nnz`` int64 (K, C/groups): nnz of each filter; ``local_density`` float64
        (K, C/groups): filter_nnz / (R*S); ``global_density``: nnz / numel;
        ``out_channel_nnz`` int64 (K,); ``in_channel_nnz`` int64 (C/groups,);
        ``filter_nnz_hist`` int64 (R*S + 1,): how many filters hold 0, 1, ..., R*S nonzeros;
        ``nonzero_filter_density``: mean local density over filters with at least one nonzero
        (how dense the surviving filters are).
    """
    w = conv_weight(weight)
    rs = w.shape[2] * w.shape[3]
    fnnz = filter_nnz(w)
    live = fnnz[fnnz > 0]
    return {
        "filter_nnz": fnnz,
        "local_density": fnnz / rs,
        "global_density": float(fnnz.sum() / w.size),
        "out_channel_nnz": fnnz.sum(axis=1),
        "in_channel_nnz": fnnz.sum(axis=0),
        "filter_nnz_hist": np.bincount(fnnz.ravel(), minlength=rs + 1).astype(np.int64),
        "nonzero_filter_density": float(live.mean() / rs) if live.size else 0.0,
    }


def model_sparsity(weights: dict, formats: tuple[str, ...] | None = None) -> list[dict]:
    """:func:`layer_sparsity` of each named conv weight, plus a ``"total"`` row.

    Parameters
    ----------
    weights : dict of str -> weight (K, C/groups, R, S)
        In model order (e.g. from ``{n: m.weight for n, m in conv_layers(model)}``).

    Returns
    -------
    list of dict
        One row per layer, then a row named ``"total"`` with summed numel / nnz / bytes; its kernel,
        channel and filter sparsity are zero filters / channels over all filters / channels.

    Raises
    ------
    ValueError
        If ``weights`` is empty.
    """
    if not weights:
        raise ValueError("no conv weights to summarise (the model has no Conv2d layer)")
    rows = [layer_sparsity(w, name, formats) for name, w in weights.items()]
    numel = sum(r["numel"] for r in rows)
    nnz = sum(r["nnz"] for r in rows)
    nfilt = sum(r["shape"][0] * r["shape"][1] for r in rows)
    total = {
        "name": "total", "shape": None, "numel": numel, "nnz": nnz, "density": nnz / numel,
        "element_sparsity": 1 - nnz / numel,
        "kernel_sparsity": sum(r["zero_filters"] for r in rows) / nfilt,
        "channel_sparsity": sum(r["zero_in_channels"] for r in rows)
        / sum(r["shape"][1] for r in rows),
        "filter_sparsity": sum(r["zero_out_channels"] for r in rows)
        / sum(r["shape"][0] for r in rows),
        "zero_filters": sum(r["zero_filters"] for r in rows),
        "zero_in_channels": sum(r["zero_in_channels"] for r in rows),
        "zero_out_channels": sum(r["zero_out_channels"] for r in rows),
        "dense_bytes": sum(r["dense_bytes"] for r in rows),
        "bytes": {
            f: (None if any(r["bytes"][f] is None for r in rows) else sum(r["bytes"][f] for r in rows))
            for f in rows[0]["bytes"]
        },
        "bytes_errors": {},
    }
    return rows + [total]
