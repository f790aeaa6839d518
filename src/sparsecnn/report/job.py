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


def _load_data(arch_spec, data, shape, images, seed, torch):
    """(images, labels or None, description)."""
    from .. import data as sdata

    if data:
        ds = sdata.load_npz(data, labels_required=False)
        if len(ds.tensors) == 1:
            ds = sdata.load_npz(data, None, labels_required=False)
            x = ds.tensors[0]
            return x, None, f"{data} ({x.shape[0]} unlabelled images)"
        x, labels = ds.tensors[0], ds.tensors[1]
        return x, labels, f"{data} ({x.shape[0]} images)"
    if arch_spec is not None and arch_spec.dataset is not None:
        try:
            _, test, desc = arch_spec.default_data()
        except FileNotFoundError:
            test = None
        if test is not None:
            x, labels = test.tensors[0], test.tensors[1]
            return x, labels, f"{desc}: the test split, {x.shape[0]} images"
    g = torch.Generator().manual_seed(seed)
    n = min(images, 4) if shape[1] > 64 else images
    x = torch.randn((n, *shape), generator=g)
    return x, None, (f"random N(0, 1) inputs, {n} images of {'x'.join(map(str, shape))}"
                     " — NOT real data (none available for this model)")


def _top1(model, x, labels, torch) -> float:
    from ..prune import evaluate, make_loader
    from torch.utils.data import TensorDataset
    return evaluate(model, make_loader(TensorDataset(x, labels), 256, shuffle=False))


def _input_shape(text) -> tuple[int, int, int]:
    """``--input-shape`` "N,C,H,W" (or C,H,W) -> (C, H, W)."""
    from ..pipeline import _check_input_shape
    if isinstance(text, str) and len(text.replace("x", ",").split(",")) == 3:
        text = "1," + text
    return tuple(_check_input_shape(text)[1:])


def report(arch: str | None = None, *, onnx=None, input_shape=None, weights=None,
           sparsity: float | None = None, prune_scope: str = "layer", layers=None, data=None,
           threads: int | None = None, out=DEFAULT_PARENT, bench: bool = False,
           format: str = "csr", images: int = 64, eval_images: int = 256,
           block_threshold: float = 0.5, tile=(16, 16), seed: int = 0, static: bool = True,
           options: str = "", progress=None) -> dict:
    """Analyse the conv layers of model ``arch`` (or an ONNX file) and write a report folder.

    Parameters
    ----------
    arch : str or None
        A :data:`sparsecnn.models.NAMES` entry; exactly one of ``arch`` and ``onnx``.
    onnx : path or None
        An ONNX model (:func:`sparsecnn.onnx.load_onnx`); layer names are its node names
        (``/`` included).
    input_shape : "N,C,H,W" / "C,H,W" or None
        Input of random images when there is no ``data`` (default: the model spec's, or the
        ONNX file's static input shape).
    weights : path or None
        Checkpoint (a pruned one is fine). None: the model spec's published weights when the
        shared data holds them (ResNet-20 / -56, as ``optimize``), else random initialisation
        (the report says so).
    sparsity : float in [0, 1) or None
        Magnitude-prune every conv layer to this first (one-shot, ``prune_scope`` "layer" or
        "global"); None keeps the weights as loaded.
    layers : list of str or None
        Conv layers to report on (None: all).
    data : path or None
        Images npz (with ``labels``: accuracy too) for activation zeros (default: the model
        spec's data set when present, else random inputs, labelled as such).
    threads : int or None
        Threads for timings and the load-balance analysis (None: every usable core).
    out : path
        Parent folder; the report goes to a new ``report-<model>[-<layer>]-<time>`` folder in
        it (:mod:`sparsecnn.results`).
    bench, format, images, eval_images, block_threshold, tile, seed, static
        See ``sparsecnn report --help``.
    options : str
        The command line options, recorded in the provenance table.
    progress : rich.progress.Progress or None

    Returns
    -------
    dict
        ``path`` (the report folder), ``data`` (:func:`sparsecnn.analysis.analyse_model`, plus
        ``accuracy``: top-1 of the weights shown and of the weights before pruning, or None
        without labels), ``meta`` (the provenance table), ``scope``, ``weights_note``,
        ``prune_note``, ``data_note``, ``accuracy_note``, ``seconds``.

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

    if (arch is None) == (onnx is None):
        raise ValueError("give a model: --arch NAME or --onnx FILE (one of them)")
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
    if onnx is not None and weights:
        raise ValueError("--weights is for --arch models; an ONNX file holds its weights")
    shape = _input_shape(input_shape) if input_shape is not None else None
    set_threads(threads)
    torch.manual_seed(seed)

    if onnx is not None:
        from pathlib import Path

        from ..onnx import input_shape as onnx_shape
        from ..onnx import load_onnx
        arch_spec, name = None, Path(onnx).stem
        model = load_onnx(onnx)
        if shape is None and not data:
            dims = onnx_shape(onnx)
            if len(dims) != 4 or any(d is None for d in dims[1:]):
                raise ValueError(f"{onnx} declares input shape "
                                 f"{tuple('?' if d is None else d for d in dims)}; pass "
                                 "--input-shape N,C,H,W or --data NPZ")
            shape = tuple(dims[1:])
        weights_note = f"weights of the ONNX model {onnx}"
    else:
        name = arch = arch.lower()
        arch_spec = models.spec(arch)            # ValueError listing the known names
        shape = shape or arch_spec.input_shape
        model = models.build(arch)
        if not weights and arch_spec.default_weights() is not None:
            weights = arch_spec.default_weights()
            weights_note = f"published pretrained weights {weights} (the model's default)"
        elif weights:
            weights_note = f"trained weights from {weights}"
        else:
            weights_note = (f"random initialisation (torch default init, seed {seed}): no "
                            f"pretrained {arch} weights are available here, so the pattern is "
                            "that of random weights")
        if weights:
            models.load_weights(model, weights)
    model.eval()
    names = analysis.resolve_layers(model, layers)   # ValueError listing the conv layers
    convs = analysis.conv_modules(model)
    original = {n: convs[n].weight.detach().clone().numpy() for n in names}
    x, labels, data_note = _load_data(arch_spec, data, shape, images, seed, torch)
    top1_before = _top1(model, x[:eval_images], labels[:eval_images], torch) \
        if labels is not None and sparsity is not None else None
    if sparsity is not None:
        from .. import prune

        prune.magnitude_prune_(model, sparsity, scope=prune_scope, layers=list(convs))
        prune.finalize_(model)
        prune_note = (f"one-shot unstructured magnitude pruning to {sparsity:g} "
                      f"({prune_scope} scope) of every conv layer, not retrained")
    else:
        prune_note = "none applied (weights as loaded)"
    if labels is not None:
        n_eval = min(eval_images, x.shape[0])
        top1 = _top1(model, x[:n_eval], labels[:n_eval], torch)
        accuracy = {"top1": top1, "top1_before_pruning": top1_before, "images": n_eval}
        accuracy_note = (f"{100 * top1:.2f} % on {n_eval} images of {data_note}"
                         + (f" ({100 * top1_before:.2f} % before pruning)"
                            if top1_before is not None else ""))
    else:
        accuracy, accuracy_note = None, "not measured (no labelled data)"

    d = analysis.analyse_model(
        model, names, inputs=x, labels=labels, input_source=data_note,
        sweep_weights=original, threads=threads, format=format,
        block_threshold=block_threshold, block_tile=tuple(tile), bench=bench,
        eval_images=eval_images, activation_images=images, progress=progress)
    d["accuracy"] = accuracy
    d["sweep_weights_source"] = ("loaded (before this report's pruning)" if sparsity is not None
                                 else "loaded")
    scope = layers[0] if layers and len(layers) == 1 else (
        ", ".join(layers) if layers else f"all {len(names)} conv layers")
    meta = {
        "title": f"sparsecnn report: {name}, {scope}",
        "architecture": arch if arch is not None else f"ONNX {onnx}", "layers": scope,
        "weights": weights_note, "pruning": prune_note,
        "top-1 of these weights": accuracy_note,
        "input data": data_note, "threads": threads, "sparse format (hybrid plan)": format,
        "detail layer(s)": ", ".join(d["detail_layers"]),
        "machine": f"{platform.machine()} {platform.processor() or ''}, {os.cpu_count()} cores",
        "versions": f"torch {torch.__version__}, numba {numba.__version__}, python {platform.python_version()}",
        "generated": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "options": options,
    }
    folder = name + (f"-{layers[0]}" if layers and len(layers) == 1 else "")
    with writing_under(out):
        path = write_report(d, new_folder(out, "report", folder), meta, static=static,
                            progress=progress)
    return {"path": path, "data": d, "meta": meta, "scope": scope, "weights_note": weights_note,
            "prune_note": prune_note, "data_note": data_note, "accuracy_note": accuracy_note,
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
             f"top-1 of these weights: {res['accuracy_note']}",
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
