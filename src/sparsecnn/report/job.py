"""The report job as a library function: load (and prune) a model, analyse its conv layers,
write the report folder. ``sparsecnn report`` only parses arguments, calls :func:`report` and
prints :func:`summary_lines`.
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import time

from ..results import DEFAULT_PARENT, check_parent, new_folder, writing_under


def _load_data(arch_spec, data, images, seed, torch):
    """(images, labels or None, description)."""
    from .. import data as sdata

    if data:
        ds = sdata.load_npz(data)
        x, labels = ds.tensors[0], ds.tensors[1]
        return x, labels, f"{data} ({x.shape[0]} images)"
    if arch_spec.dataset is not None:
        try:
            _, test, desc = arch_spec.default_data()
        except FileNotFoundError:
            test = None
        if test is not None:
            x, labels = test.tensors[0], test.tensors[1]
            return x, labels, f"{desc}: the test split, {x.shape[0]} images"
    shape = arch_spec.input_shape
    g = torch.Generator().manual_seed(seed)
    n = min(images, 4) if shape[1] > 64 else images
    x = torch.randn((n, *shape), generator=g)
    return x, None, (f"random N(0, 1) inputs, {n} images of {'x'.join(map(str, shape))}"
                     " — NOT real data (none available for this model)")


def report(arch: str, *, weights=None, sparsity: float | None = None, prune_scope: str = "layer",
           layers=None, data=None, threads: int | None = None, out=DEFAULT_PARENT,
           bench: bool = False, format: str = "csr", images: int = 64, eval_images: int = 256,
           block_threshold: float = 0.5, tile=(16, 16), seed: int = 0, static: bool = True,
           options: str = "", progress=None) -> dict:
    """Analyse the conv layers of model ``arch`` and write a report folder.

    Parameters
    ----------
    arch : str
        A :data:`sparsecnn.models.NAMES` entry.
    weights : path or None
        Checkpoint (a pruned one is fine). None: random initialisation (the report says so).
    sparsity : float in [0, 1) or None
        Magnitude-prune every conv layer to this first (one-shot, ``prune_scope`` "layer" or
        "global"); None keeps the weights as loaded.
    layers : list of str or None
        Conv layers to report on (None: all).
    data : path or None
        Images + labels npz for activation zeros and accuracy (default: the model spec's data set
        when present, else random inputs, labelled as such).
    threads : int or None
        Threads for timings and the load-balance analysis (None: every usable core).
    out : path
        Parent folder; the report goes to a new ``report-<arch>[-<layer>]-<time>`` folder in it
        (:mod:`sparsecnn.results`).
    bench, format, images, eval_images, block_threshold, tile, seed, static
        See ``sparsecnn report --help``.
    options : str
        The command line options, recorded in the provenance table.
    progress : rich.progress.Progress or None

    Returns
    -------
    dict
        ``path`` (the report folder), ``data`` (:func:`sparsecnn.analysis.analyse_model`),
        ``meta`` (the provenance table), ``scope``, ``weights_note``, ``prune_note``,
        ``data_note``, ``seconds``.

    Raises
    ------
    ValueError, TypeError, FileNotFoundError
        Bad arguments, checkpoint, layer names or data (before anything is written).
    """
    t_start = time.perf_counter()
    import numba
    import torch

    from .. import analysis, models
    from ..formats import FORMATS
    from ..threads import check_threads, max_threads, set_threads
    from .writer import write_report

    for value, name in ((images, "images"), (eval_images, "eval-images")):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"--{name} must be >= 1, got {value}")
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int)
                                or threads < 1):
        raise ValueError(f"--threads must be >= 1, got {threads}")
    if format not in FORMATS:
        raise ValueError(f"unknown --format {format!r}; expected one of {sorted(FORMATS)}")
    if sparsity is not None and not 0.0 <= sparsity < 1.0:
        raise ValueError(f"--sparsity must be in [0, 1), got {sparsity}")
    threads = check_threads(threads if threads is not None else max_threads(), "--threads")
    check_parent(out)
    set_threads(threads)
    torch.manual_seed(seed)

    arch = arch.lower()
    arch_spec = models.spec(arch)            # ValueError listing the known names
    model = models.build(arch)
    model.eval()
    if weights:
        models.load_weights(model, weights)
        weights_note = f"trained weights from {weights}"
    else:
        weights_note = (f"random initialisation (torch default init, seed {seed}): no pretrained "
                        f"{arch} weights are available here, so the pattern is that of random weights")
    names = analysis.resolve_layers(model, layers)   # ValueError listing the conv layers
    convs = analysis.conv_modules(model)
    original = {n: convs[n].weight.detach().clone().numpy() for n in names}
    if sparsity is not None:
        from .. import prune

        prune.magnitude_prune_(model, sparsity, scope=prune_scope, layers=list(convs))
        prune.finalize_(model)
        prune_note = (f"one-shot unstructured magnitude pruning to {sparsity:g} "
                      f"({prune_scope} scope) of every conv layer, not retrained")
    else:
        prune_note = "none applied (weights as loaded)"
    x, labels, data_note = _load_data(arch_spec, data, images, seed, torch)

    d = analysis.analyse_model(
        model, names, inputs=x, labels=labels, input_source=data_note,
        sweep_weights=original, threads=threads, format=format,
        block_threshold=block_threshold, block_tile=tuple(tile), bench=bench,
        eval_images=eval_images, activation_images=images, progress=progress)
    scope = layers[0] if layers and len(layers) == 1 else (
        ", ".join(layers) if layers else f"all {len(names)} conv layers")
    meta = {
        "title": f"sparsecnn report: {arch}, {scope}",
        "architecture": arch, "layers": scope, "weights": weights_note, "pruning": prune_note,
        "input data": data_note, "threads": threads, "sparse format (hybrid plan)": format,
        "detail layer(s)": ", ".join(d["detail_layers"]),
        "machine": f"{platform.machine()} {platform.processor() or ''}, {os.cpu_count()} cores",
        "versions": f"torch {torch.__version__}, numba {numba.__version__}, python {platform.python_version()}",
        "generated": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "options": options,
    }
    name = arch + (f"-{layers[0]}" if layers and len(layers) == 1 else "")
    with writing_under(out):
        path = write_report(d, new_folder(out, "report", name), meta, static=static,
                            progress=progress)
    return {"path": path, "data": d, "meta": meta, "scope": scope, "weights_note": weights_note,
            "prune_note": prune_note, "data_note": data_note,
            "seconds": time.perf_counter() - t_start}


def summary_lines(res: dict) -> list[str]:
    """What ``sparsecnn report`` prints after writing the folder."""
    d = res["data"]
    bench_s = d["timings_s"].get("break-even benchmark (slow)", 0.0)
    tot = d["summary"][-1]
    lines = [f"report written to {res['path']}/index.html",
             f"layers: {res['scope']}; density {100 * tot['density']:.3f} % ({tot['nnz']} nnz of "
             f"{tot['numel']})",
             f"weights: {res['weights_note']}; pruning: {res['prune_note']}",
             f"input data: {res['data_note']}"]
    for n, h in d["hybrid"].items():
        if "unavailable" in h:
            lines.append(f"hybrid plan {n}: unavailable ({h['unavailable']})")
        else:
            lines.append(
                f"hybrid plan {n} ({len(d['blocks'][n]['blocks'])} dense blocks): dense "
                f"{h['measured']['dense_ms']:.3f} ms, sparse {h['measured']['sparse_ms']:.3f} ms "
                f"({h['measured']['sparse_kernel']}), hybrid est. "
                f"{h['estimate']['hybrid_ms']:.3f} ms, measured {h['measured']['hybrid_ms']:.3f} ms")
    lines.append(f"time: {res['seconds']:.1f} s"
                 + (f" ({bench_s:.1f} s of it the --bench benchmark)" if bench_s else ""))
    return lines
