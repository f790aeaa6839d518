"""The optimize job as a library function: train or load -> prune -> sparsify + tune -> verify ->
benchmark -> results folder.

:func:`optimize` returns a plain result dict (everything ``results.json`` holds);
:func:`render_summary` turns it into Markdown and :func:`print_summary` into rich tables. The
CLI (``sparsecnn optimize``) only parses arguments and calls these.

Timing protocol (end to end, each batch size): the dense baseline is the pruned model exactly as
trained -- unmodified eval-mode PyTorch, BatchNorm *not* folded; "dense, BN folded" is the same
model with BatchNorm folded (an honest second baseline); "sparse" is the sparsified model
(BN folded, ReLU fused, per-layer kernels, Identity calls compacted away with ``torch.fx``).
All three run in one process on the same input, after a warm-up (JIT compilation excluded and
reported apart), in alternating blocks of 20 consecutive calls per model (strict call-by-call
interleaving made PyTorch's OpenMP threads and Numba's threads steal cycles from each other on
2 cores, slowing both); medians of the kept samples (outliers above 2x the running mean
dropped); ratio = dense median / sparse median.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import math
import time
from pathlib import Path

import torch
from torch import nn

from . import quant
from ._atomic import atomic_dir, atomic_path

#: quantization methods reported by default (all of :data:`sparsecnn.quant.METHODS`)
QUANT_METHODS = tuple(quant.METHODS)
METHODS = ("magnitude", "global", "nm", "filter", "unified")
#: Methods pruned gradually (AGP, through :func:`sparsecnn.prune.recipes.run_recipe`) when
#: ``epochs > 0``: method -> (recipe ``scope``, recipe ``method``).
GRADUAL = {"magnitude": ("layer", "magnitude"), "global": ("global", "magnitude"),
           "unified": ("layer", "unified")}
DEFAULT_OUT = "sparsecnn-results"
#: Output check of the sparse model against the pruned dense model:
#: ``max|y_sparse - y_dense| <= VERIFY_TOL * max(1, max|y_dense|)`` and identical top-1.
VERIFY_TOL = 1e-4
#: Pruned models whose classifier is most of the weights prune their Linear layers too.
PRUNE_LINEAR = {"smallcnn": True, "alexnet": True, "vgg16": True}
DENSE_TRAIN = {"smallcnn": {"epochs": 15, "lr": 0.05, "batch_size": 64}}


def _log(console, msg: str) -> None:
    if console is not None:
        console.log(msg)


# ---------------------------------------------------------------------------------------------
# inputs
# ---------------------------------------------------------------------------------------------
def _check_args(model, sparsity, method, epochs, batch_sizes, threads, format, onnx) -> None:
    from . import models
    from .formats import FORMATS
    if onnx is None and model not in models.NAMES:
        raise ValueError(f"unknown model {model!r}; expected one of {list(models.NAMES)}")
    if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)) \
            or not 0.0 <= float(sparsity) < 1.0 or math.isnan(float(sparsity)):
        raise ValueError(f"sparsity must be a number in [0, 1), got {sparsity!r}")
    if method not in METHODS:
        raise ValueError(f"unknown pruning method {method!r}; expected one of {list(METHODS)}")
    if epochs is not None and (isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 0):
        raise ValueError(f"epochs must be an int >= 0, got {epochs!r}")
    if not batch_sizes or any(isinstance(b, bool) or not isinstance(b, int) or b < 1
                              for b in batch_sizes):
        raise ValueError(f"batch sizes must be positive ints, got {batch_sizes!r}")
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads must be a positive int, got {threads!r}")
    if format not in FORMATS:
        raise ValueError(f"unknown format {format!r}; expected one of {sorted(FORMATS)}")


def _set_threads(threads: int) -> dict:
    torch.set_num_threads(threads)
    import numba
    nb = min(threads, numba.config.NUMBA_NUM_THREADS)
    numba.set_num_threads(nb)
    return {"torch": torch.get_num_threads(), "numba": nb}


def _datasets(model_name, data, train_data):
    """(train or None, test) TensorDatasets and a description."""
    from . import data as D
    if data is not None:
        test = D.load_npz(data)
        train = D.load_npz(train_data) if train_data is not None else None
        return train, test, f"{data}" + (f" (train {train_data})" if train_data else "")
    if train_data is not None:
        raise ValueError("--train-data needs --data (the evaluation images) too")
    if model_name == "smallcnn":
        train, test = D.load_digits()
        return train, test, "scikit-learn digits 8x8 (1437 train / 360 test)"
    if model_name and model_name.startswith("resnet"):
        train, test = D.cifar10_subsets()
        return train, test, "CIFAR-10 subsets (4660 train / 846 test, shared data)"
    raise ValueError(f"model {model_name!r} has no default data set; pass --data NPZ")


def _check_fits(model: nn.Module, x: torch.Tensor, what: str) -> torch.Tensor:
    try:
        with torch.no_grad():
            y = model.eval()(x)
    except Exception as exc:
        raise ValueError(f"{what} of shape {tuple(x.shape)} and dtype {x.dtype} do not fit the "
                         f"model: {type(exc).__name__}: {exc}") from None
    if not isinstance(y, torch.Tensor) or y.ndim != 2:
        raise ValueError(f"the model must return (N, classes) logits, got "
                         f"{type(y).__name__} {getattr(y, 'shape', '')}")
    return y


def _dense_cache_path(model_name: str, seed: int) -> Path:
    from .dispatch import cache_dir
    cfg = json.dumps({"model": model_name, "seed": seed, **DENSE_TRAIN.get(model_name, {})},
                     sort_keys=True)
    digest = hashlib.sha256(cfg.encode()).hexdigest()[:12]
    return cache_dir() / "weights" / f"{model_name}-dense-{digest}.pt"


def _train_dense(model, model_name, train_set, test_loader, seed, progress, console):
    """Train from scratch (smallcnn default), or load the cached trained weights."""
    from . import models, prune
    path = _dense_cache_path(model_name, seed)
    if path.is_file():
        try:
            models.load_weights(model, path)
            _log(console, f"dense weights from cache {path}")
            return {"source": "cache", "path": str(path)}
        except (ValueError, FileNotFoundError) as exc:
            _log(console, f"cached weights unusable ({exc}); retraining")
    cfg = DENSE_TRAIN.get(model_name)
    if cfg is None or train_set is None:
        raise ValueError(f"model {model_name!r} needs --weights (or training data and a training "
                         "recipe; only smallcnn trains from scratch here)")
    torch.manual_seed(seed)
    loader = prune.make_loader(train_set, cfg["batch_size"], shuffle=True, seed=seed)
    t0 = time.perf_counter()
    prune.train(model, loader, cfg["epochs"], cfg["lr"], seed=seed, progress=progress,
                description=f"train dense {model_name}")
    model.eval()
    with atomic_path(path) as tmp:
        torch.save({"state_dict": model.state_dict()}, tmp)
    return {"source": "trained", "path": str(path), "seconds": time.perf_counter() - t0,
            "epochs": cfg["epochs"]}


def _default_weights(model_name: str) -> Path | None:
    from . import data as D
    files = {"resnet20": "resnet20-12fca82f.th", "resnet56": "resnet56-4bfd9763.th"}
    shared = D.shared_data_dir()
    if model_name in files and shared is not None:
        p = shared / "resnet_cifar10" / files[model_name]
        return p if p.is_file() else None
    return None


# ---------------------------------------------------------------------------------------------
# pruning
# ---------------------------------------------------------------------------------------------
def pruning_recipe(model_name: str | None, method: str, sparsity: float, epochs: int, *,
                   seed: int = 0, weights=None, prune_linear: bool | None = None):
    """The :class:`~sparsecnn.prune.recipes.Recipe` that ``optimize`` runs for gradual pruning.

    Defaults per model from the ready-made recipes: the CIFAR ResNets take
    :func:`~sparsecnn.prune.recipes.resnet20_cifar_90` (batch 128, lr 0.02, AGP over the first
    60 % of the steps, distillation from the dense model, crop + flip), ``smallcnn`` takes
    :func:`~sparsecnn.prune.recipes.smallcnn_digits`; any other model (or an ONNX import,
    ``model_name=None``) the :class:`Recipe` defaults without augmentation or distillation.
    ``method`` sets the scope (``"magnitude"``: per layer, ``"global"``: one threshold,
    ``"unified"``: per layer, equal nnz per output channel); ``sparsity``, ``epochs``, ``seed``,
    ``weights`` (the starting checkpoint's path, recorded; needed for distillation) and
    ``prune_linear`` (None: the recipe's) override.

    Raises
    ------
    ValueError
        For a method that is not gradual (see :data:`GRADUAL`).
    """
    from .prune import recipes
    if method not in GRADUAL:
        raise ValueError(f"method {method!r} is not a gradual pruning method; expected one of "
                         f"{list(GRADUAL)}")
    scope, mask_method = GRADUAL[method]
    if model_name == "smallcnn":
        base = recipes.smallcnn_digits()
    elif model_name is not None and model_name.startswith("resnet"):  # the CIFAR ResNets
        base = recipes.resnet20_cifar_90(model=model_name)
    else:
        base = recipes.Recipe(model=model_name or "onnx", weights=None, dataset="npz",
                              final_sparsity=sparsity, augment=False, kd_alpha=0.0)
    changes = {"final_sparsity": sparsity, "epochs": epochs, "seed": seed, "scope": scope,
               "method": mask_method, "weights": None if weights is None else str(weights)}
    if prune_linear is not None:
        changes["prune_linear"] = prune_linear
    return base.replace(**changes)


def _prune(model, model_name, recipe_key, method, sparsity, epochs, train_set, test_set,
           weights, seed, prune_linear, progress, console) -> dict:
    from . import prune
    from .prune.masks import select_layers
    types = (nn.Conv2d, nn.Linear) if prune_linear else (nn.Conv2d,)
    layers = [n for n, _ in select_layers(model, types=types)]
    info = {"method": method, "target_sparsity": sparsity, "epochs": epochs, "layers": layers,
            "prune_linear": prune_linear}
    if sparsity == 0.0:
        info["note"] = "sparsity 0: weights used as given (no pruning)"
        return info
    if epochs > 0 and train_set is None:
        raise ValueError("fine-tuning (epochs > 0) needs training data: pass --train-data NPZ "
                         "or --epochs 0 (one-shot pruning)")
    t0 = time.perf_counter()
    if epochs == 0 or method not in GRADUAL:
        if method in ("magnitude", "global"):
            prune.magnitude_prune_(model, sparsity, scope="layer" if method == "magnitude" else "global",
                                   layers=layers)
        elif method == "unified":
            prune.unified_prune_(model, sparsity, layers=layers)
        elif method == "filter":
            prune.filter_prune_(model, sparsity, layers=layers)
        else:  # nm: keep n of every m consecutive weights, n/m ~ 1 - sparsity, m = 8 (or 4)
            m = 8 if sparsity > 0.5 else 4
            n = max(1, round((1.0 - sparsity) * m))
            prune.nm_prune_(model, n, m, layers=layers)
            info["nm"] = f"{n}:{m}"
        info["schedule"] = "one-shot"
        if epochs > 0:  # fine-tune with the masks fixed (parametrized weights stay zero)
            loader = prune.make_loader(train_set, 64 if model_name == "smallcnn" else 128, seed=seed)
            prune.train(model, loader, epochs, 0.01, seed=seed, progress=progress,
                        description=f"fine-tune {method}")
            info["schedule"] = f"one-shot + {epochs} epochs fine-tuning"
    else:  # gradual: the recipe mechanism (sparsecnn.prune.recipes)
        recipe = pruning_recipe(recipe_key, method, sparsity, epochs, seed=seed, weights=weights,
                                prune_linear=prune_linear).replace(model=model_name)
        out = prune.recipes.run_recipe(recipe, model=model, train_set=train_set,
                                       test_set=test_set, progress=progress)
        sch = out["schedule"]
        text = (f"AGP (Zhu & Gupta 2017) over steps {sch['start_step']}..{sch['end_step']} of "
                f"{sch['total_steps']}, every {sch['frequency']} steps, {recipe.scope} "
                f"{recipe.method}; SGD lr {recipe.lr} cosine, batch {recipe.batch_size}")
        if sch["distillation"]:
            text += (f", distillation from the dense model (alpha {recipe.kd_alpha}, "
                     f"T {recipe.kd_temperature})")
        if sch["augment"]:
            text += ", random crop + flip"
        info.update(schedule=text, recipe=dataclasses.asdict(recipe), layers=out["layers"],
                    agp=sch)
    prune.finalize_(model)
    model.eval()
    info["seconds"] = time.perf_counter() - t0
    return info


def quantization_report(pruned: nn.Module, test_loader, methods, pruned_top1: float) -> list[dict]:
    """Top-1 and storage of the pruned model with its Conv2d/Linear weights quantized.

    Each method runs on a copy (fake quantization: weights replaced by their dequantized values,
    zeros kept; :func:`sparsecnn.quant.quantize_model_`). Storage is the CSR layout at the
    layers' nnz (int32 indices) with quantized values plus scales/codebooks. The sparse kernels
    compute in fp32, so quantization changes storage and accuracy here, not speed.

    Returns
    -------
    list of dict
        Per method: ``method``, ``top1``, ``delta_points`` (percentage points vs ``pruned_top1``),
        ``nbytes`` and ``fp32_nbytes`` (same CSR storage, float32 values), ``ratio``.

    Raises
    ------
    ValueError
        An unknown method (the message lists :data:`sparsecnn.quant.METHODS`).
    """
    from .prune import evaluate
    rows = []
    for method in methods:
        q = copy.deepcopy(pruned)
        layers = quant.quantize_model_(q, method)
        top1 = evaluate(q, test_loader)
        nbytes = sum(r["nbytes"] for r in layers)
        fp32 = sum(r["fp32_nbytes"] for r in layers)
        rows.append({"method": method, "top1": top1, "delta_points": 100 * (top1 - pruned_top1),
                     "nbytes": nbytes, "fp32_nbytes": fp32, "ratio": fp32 / max(nbytes, 1)})
    return rows


# ---------------------------------------------------------------------------------------------
# verification and timing
# ---------------------------------------------------------------------------------------------
@torch.no_grad()
def _outputs(model, loader) -> tuple[torch.Tensor, torch.Tensor]:
    ys, labels = [], []
    for x, y in loader:
        ys.append(model(x))
        labels.append(y)
    return torch.cat(ys), torch.cat(labels)


def verify(sparse_model: nn.Module, dense_model: nn.Module, loader) -> dict:
    """Compare the sparse model with the pruned dense model over ``loader``.

    Returns
    -------
    dict
        ``max_abs_err``, ``scale`` (max |y_dense|), ``within_tolerance`` (max_abs_err <=
        VERIFY_TOL * max(1, scale)), ``prediction_agreement`` (share of identical top-1),
        ``same_predictions``, ``dense_top1``, ``sparse_top1``, ``n``.
    """
    yd, labels = _outputs(dense_model.eval(), loader)
    ys, _ = _outputs(sparse_model.eval(), loader)
    err = float((ys - yd).abs().max())
    scale = float(yd.abs().max())
    pd, ps = yd.argmax(1), ys.argmax(1)
    n = int(labels.numel())
    agree = int((pd == ps).sum()) / n
    return {"max_abs_err": err, "scale": scale, "tolerance": VERIFY_TOL,
            "within_tolerance": err <= VERIFY_TOL * max(1.0, scale),
            "prediction_agreement": agree, "same_predictions": bool((pd == ps).all()),
            "dense_top1": int((pd == labels).sum()) / n,
            "sparse_top1": int((ps == labels).sum()) / n, "n": n}


def _batch(images: torch.Tensor, b: int) -> torch.Tensor:
    reps = -(-b // images.shape[0])
    return images.repeat(reps, *([1] * (images.ndim - 1)))[:b].contiguous()


def time_models(models_: dict[str, nn.Module], x: torch.Tensor, *, min_time_s: float = 1.0,
                min_repeats: int = 20, max_time_s: float = 10.0) -> dict:
    """Median end-to-end latency (ms) of each model on ``x``, in one process, with the project's
    harness (:func:`sparsecnn.timing.measure`: first call apart, alternating blocks, outliers
    dropped).

    Returns ``{name: {"median_ms", "samples", "dropped", "first_call_ms", "contended"}}``.
    """
    from .timing import measure
    with torch.inference_mode():
        fns = {name: (lambda m=m: m(x)) for name, m in models_.items()}
        res = measure(fns, warmup=3, min_time=min_time_s, max_time=max_time_s,
                      min_blocks=min_repeats)
    return {name: {"median_ms": t.ms, "samples": t.n_blocks, "dropped": t.n_dropped,
                   "first_call_ms": t.first_call_ms, "contended": t.contended}
            for name, t in res.items()}


def _param_bytes(model: nn.Module) -> int:
    return int(sum(t.numel() * t.element_size()
                   for t in list(model.parameters()) + list(model.buffers())))


# ---------------------------------------------------------------------------------------------
# the job
# ---------------------------------------------------------------------------------------------
def optimize(model: str = "smallcnn", *, weights=None, data=None, train_data=None,
             sparsity: float = 0.9, method: str = "magnitude", epochs: int | None = None,
             batch_sizes=(1, 64), threads: int = 2, format: str = "csr", onnx=None,
             export_onnx=None, out_dir=DEFAULT_OUT, tune: bool = True, seed: int = 0,
             prune_linear: bool | None = None, time_s: float = 1.0, progress: bool = True,
             quantize=QUANT_METHODS, console=None) -> dict:
    """Train or load a model, prune it, sparsify and tune it, verify, benchmark, write results.

    Parameters
    ----------
    model : str
        A :data:`sparsecnn.models.NAMES` entry (``"smallcnn"`` default: trained from scratch on
        the 8x8 digits, the trained dense weights cached in the cache dir after the first run).
    weights : path or None
        Checkpoint for the model (ResNet-20/56 default to the shared published weights).
    data, train_data : path or None
        Evaluation / fine-tuning images (npz: ``images`` uint8 (N, 3, H, W), ``labels``).
    sparsity : float in [0, 1)
        Target sparsity of the pruned layers (0: use the weights as given).
    method : {"magnitude", "global", "nm", "filter", "unified"}
        Per-layer or global magnitude, N:M, filter (structured) or unified-row. With
        ``epochs > 0`` the magnitude, global and unified methods prune gradually (AGP) through
        :func:`sparsecnn.prune.recipes.run_recipe`, with the recipe of :func:`pruning_recipe`
        (CIFAR ResNets: distillation from the dense model + crop/flip, as
        ``resnet20_cifar_90``); N:M and filter prune one-shot, then fine-tune with fixed masks.
    epochs : int or None
        Fine-tuning epochs during/after pruning (default: 15 for smallcnn, 0 = one-shot otherwise).
    batch_sizes : sequence of int
        Batches to tune and time (default 1 and 64).
    threads : int
        Threads for PyTorch and Numba.
    format : str
        Sparse weight format.
    onnx : path or None
        Import the model from ONNX (onnx2torch) instead of ``model``.
    export_onnx : path or None
        Write the pruned dense model to ONNX.
    out_dir : path
        Parent folder of the results folder ``optimize-<model>-<timestamp>``.
    tune : bool
        Measure kernels per layer (else heuristic / cache).
    time_s : float
        Seconds of timed end-to-end calls per batch size.
    quantize : sequence of str
        :data:`sparsecnn.quant.METHODS` to report on the pruned model (top-1 and bytes each, see
        :func:`quantization_report`); empty for none.
    console : rich.console.Console or None
        Progress log.

    Returns
    -------
    dict
        Everything written to ``results.json``, plus ``"results_dir"``.

    Raises
    ------
    ValueError, TypeError, FileNotFoundError
        Bad arguments, files or data (raised before anything is written).
    """
    from . import models as M
    from . import nn as snn
    from .dispatch import cpu_model
    from .prune import evaluate, make_loader

    batch_sizes = [int(b) if isinstance(b, (int, float)) and not isinstance(b, bool) and b == int(b)
                   else b for b in batch_sizes]
    _check_args(model, sparsity, method, epochs, batch_sizes, threads, format, onnx)
    quantize = tuple(quantize)
    unknown = [m for m in quantize if m not in quant.METHODS]
    if unknown:
        raise ValueError(f"unknown quantization method(s) {unknown}; expected any of "
                         f"{list(quant.METHODS)}")
    t_start = time.perf_counter()
    sparsity = float(sparsity)
    threads_info = _set_threads(threads)
    torch.manual_seed(seed)
    name = model if onnx is None else Path(onnx).stem
    if epochs is None:
        epochs = DENSE_TRAIN.get(model, {}).get("epochs", 0) if onnx is None else 0
    if prune_linear is None:
        prune_linear = PRUNE_LINEAR.get(model, False)

    # -- data and model -------------------------------------------------------------------------
    train_set, test_set, data_desc = _datasets(model if onnx is None else None, data, train_data) \
        if (onnx is None or data is not None) else (None, None, None)
    if test_set is None:
        raise ValueError("--onnx needs --data (evaluation images)")
    test_loader = make_loader(test_set, 256, shuffle=False)
    images = test_set.tensors[0]
    if onnx is not None:
        from .onnx import load_onnx
        net = load_onnx(onnx)
        weights_info = {"source": "onnx", "path": str(onnx)}
    else:
        net = M.build(model)
        if weights is None:
            weights = _default_weights(model)
        if weights is not None:
            M.load_weights(net, weights)
            weights_info = {"source": "file", "path": str(weights)}
        else:
            _check_fits(net, images[:2], "images")
            weights_info = _train_dense(net, model, train_set, test_loader, seed, progress, console)
    net.eval()
    _check_fits(net, images[:2], "images")
    dense_top1 = evaluate(net, test_loader)
    _log(console, f"dense top-1 {dense_top1:.2%} on {len(test_set)} images")

    # -- prune ------------------------------------------------------------------------------------
    pruned = copy.deepcopy(net)
    prune_info = _prune(pruned, name, model if onnx is None else None, method, sparsity, epochs,
                        train_set, test_set, weights_info.get("path"), seed, prune_linear,
                        progress, console)
    pruned.eval()
    from .prune import sparsity_of
    layer_sparsity = sparsity_of(pruned)
    pruned_top1 = evaluate(pruned, test_loader)
    _log(console, f"pruned top-1 {pruned_top1:.2%}")
    quant_rows = quantization_report(pruned, test_loader, quantize, pruned_top1)
    for r in quant_rows:
        _log(console, f"quantized {r['method']}: top-1 {r['top1']:.2%} ({r['delta_points']:+.2f} "
                      f"points), {r['nbytes']:,} bytes")
    export_path = None
    if export_onnx is not None:
        from .onnx import export_onnx as _export
        export_path = str(_export(pruned, images[:1], export_onnx))

    # -- sparsify + tune ----------------------------------------------------------------------------
    sparse = copy.deepcopy(pruned)
    t0 = time.perf_counter()
    snn.sparsify_(sparse, format=format, tune=tune, example_input=_batch(images, batch_sizes[0]),
                  min_sparsity=0.5)
    for b in batch_sizes[1:]:
        if tune:
            snn.tune_(sparse, _batch(images, b))
    tune_s = time.perf_counter() - t0
    try:
        sparse_run = snn.compact(sparse)
    except TypeError:
        sparse_run = sparse
    _log(console, f"sparsified and tuned in {tune_s:.1f} s")

    # -- verify -------------------------------------------------------------------------------------
    check = verify(sparse_run, pruned, test_loader)
    _log(console, f"verify: max |err| {check['max_abs_err']:.2e}, predictions agree "
                  f"{check['prediction_agreement']:.2%}")

    # -- benchmark ----------------------------------------------------------------------------------
    folded = copy.deepcopy(pruned)
    snn.fold_batchnorm(folded)
    timing = {}
    for b in batch_sizes:
        x = _batch(images, b)
        t = time_models({"dense": pruned, "dense_bn_folded": folded, "sparse": sparse_run}, x,
                        min_time_s=time_s)
        t["speedup"] = t["dense"]["median_ms"] / t["sparse"]["median_ms"]
        t["speedup_vs_folded"] = t["dense_bn_folded"]["median_ms"] / t["sparse"]["median_ms"]
        timing[str(b)] = t
        _log(console, f"batch {b}: dense {t['dense']['median_ms']:.3f} ms, sparse "
                      f"{t['sparse']['median_ms']:.3f} ms, {t['speedup']:.2f}x")

    sizes = snn.model_nbytes(sparse)
    result = {
        "job": "optimize", "model": name, "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "data": data_desc, "weights": weights_info, "threads": threads_info, "format": format,
        "seed": seed, "batch_sizes": batch_sizes,
        "cpu": cpu_model(),
        "torch": torch.__version__,
        "accuracy": {"dense_top1": dense_top1, "pruned_top1": pruned_top1,
                     "sparse_top1": check["sparse_top1"], "n": check["n"]},
        "pruning": {**prune_info, "layer_sparsity": layer_sparsity},
        "quantization": quant_rows,
        "verify": check,
        "layers": {str(b): snn.layer_table(sparse, batch=b) for b in batch_sizes},
        "latency": timing,
        "model_bytes": {"dense": _param_bytes(pruned), "sparse": sizes["nbytes"],
                        "sparse_layers_dense_equivalent": sizes["dense_nbytes"]},
        "tune_seconds": tune_s, "export_onnx": export_path,
        "notes": ["dense = the pruned model as trained (eval mode, BatchNorm not folded); "
                  "dense_bn_folded = same with BatchNorm folded; sparse = BN folded, ReLU fused, "
                  "per-layer kernels, fx-compacted",
                  "per-layer times are the tuner's medians on each layer's real input "
                  "('(cached)': measured by an earlier run with the same key, see "
                  "sparsecnn.dispatch.cache_key)",
                  f"verification tolerance: max|err| <= {VERIFY_TOL} x max(1, max|y_dense|)"],
    }
    result["seconds"] = time.perf_counter() - t_start
    result["results_dir"] = str(_write_results(result, sparse, out_dir))
    return result


def _write_results(result: dict, sparse_model: nn.Module, out_dir) -> Path:
    """Write results.json, summary.md and model.pt into a new folder, atomically (temp folder in
    ``out_dir``, then rename); an existing folder is never touched."""
    from . import nn as snn
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    final = out_dir / f"optimize-{result['model']}-{stamp}"
    k = 1
    while final.exists():
        final = out_dir / f"optimize-{result['model']}-{stamp}-{k}"
        k += 1
    result["results_dir"] = str(final)
    with atomic_dir(final) as tmp:
        snn.save(sparse_model, tmp / "model.pt")
        (tmp / "results.json").write_text(json.dumps(result, indent=1, default=str))
        (tmp / "summary.md").write_text(render_summary(result))
    return final


# ---------------------------------------------------------------------------------------------
# rendering
# ---------------------------------------------------------------------------------------------
def _fmt(v, spec=".3f", none="-"):
    return none if v is None else format(v, spec)


def layer_rows(result: dict, batch) -> list[list[str]]:
    """Rows of the per-layer table for ``batch``: name, shape, sparsity, kernel, dense ms,
    chosen ms, speedup."""
    rows = []
    for r in result["layers"][str(batch)]:
        name = r["name"] + (" (cached)" if r.get("cached") else "")
        rows.append([name, "x".join(map(str, r["shape"])), f"{r['sparsity']:.1%}",
                     r["kernel"] + (" +relu" if r["relu"] else ""), _fmt(r["dense_ms"]),
                     _fmt(r["chosen_ms"]), _fmt(r["speedup"], ".2f") + "x" if r["speedup"] else "-"])
    return rows


def render_summary(result: dict) -> str:
    """Markdown summary of an :func:`optimize` result."""
    acc, ver, mb = result["accuracy"], result["verify"], result["model_bytes"]
    lines = [f"# sparsecnn optimize: {result['model']}", "",
             f"- data: {result['data']}; weights: {result['weights'].get('source')} "
             f"{result['weights'].get('path', '')}",
             f"- pruning: {result['pruning']['method']} to {result['pruning']['target_sparsity']:.0%}, "
             f"{result['pruning'].get('schedule', result['pruning'].get('note', ''))}",
             f"- threads: torch {result['threads']['torch']}, numba {result['threads']['numba']}; "
             f"CPU: {result['cpu']}; format {result['format']}", "",
             "## Accuracy (top-1)", "", "| dense | pruned | sparse-executed |", "| --- | --- | --- |",
             f"| {acc['dense_top1']:.2%} | {acc['pruned_top1']:.2%} | {acc['sparse_top1']:.2%} |", "",
             f"Sparse vs pruned dense on {ver['n']} images: max |err| {ver['max_abs_err']:.2e} "
             f"(tolerance {ver['tolerance']} x max(1, {ver['scale']:.3g})), "
             f"{'within' if ver['within_tolerance'] else 'OUTSIDE'} tolerance; top-1 predictions "
             f"agree on {ver['prediction_agreement']:.2%}.", "",
             "## End-to-end latency (median ms, one process, alternating blocks of 20 calls)", "",
             "| batch | dense (BN not folded) | dense, BN folded | sparse | speedup vs dense | vs folded |",
             "| --- | --- | --- | --- | --- | --- |"]
    for b, t in result["latency"].items():
        lines.append(f"| {b} | {t['dense']['median_ms']:.3f} | {t['dense_bn_folded']['median_ms']:.3f} "
                     f"| {t['sparse']['median_ms']:.3f} | {t['speedup']:.2f}x | "
                     f"{t['speedup_vs_folded']:.2f}x |")
    lines += ["", f"Model bytes: dense {mb['dense']:,} B, sparse {mb['sparse']:,} B "
              f"({mb['dense'] / max(mb['sparse'], 1):.2f}x smaller).", ""]
    if result.get("quantization"):
        lines += ["## Quantization of the pruned weights (CSR storage, fake-quantized top-1)", "",
                  "| method | top-1 | change (points) | bytes | fp32 CSR bytes | ratio |",
                  "| --- | --- | --- | --- | --- | --- |"]
        lines += [f"| {r['method']} | {r['top1']:.2%} | {r['delta_points']:+.2f} | {r['nbytes']:,} "
                  f"| {r['fp32_nbytes']:,} | {r['ratio']:.2f}x |" for r in result["quantization"]]
        lines.append("")
    for b in result["batch_sizes"]:
        lines += [f"## Per layer, batch {b} (tuner medians, ms)", "",
                  "| layer | shape | sparsity | kernel | dense ms | chosen ms | speedup |",
                  "| --- | --- | --- | --- | --- | --- | --- |"]
        lines += ["| " + " | ".join(r) + " |" for r in layer_rows(result, b)]
        rejected = [f"{r['name']}: {x}" for r in result["layers"][str(b)] for x in r["rejected"]]
        if rejected:
            lines += ["", "Rejected kernels: " + "; ".join(rejected)]
        lines.append("")
    lines += ["## Notes", ""] + [f"- {n}" for n in result["notes"]] + [""]
    return "\n".join(lines)


def print_summary(result: dict, console=None) -> None:
    """Print the per-layer tables, accuracy, latency and size with rich."""
    from rich.console import Console
    from rich.table import Table
    console = console or Console()
    for b in result["batch_sizes"]:
        t = Table(title=f"{result['model']}: per layer, batch {b} (tuner medians)")
        for col in ("layer", "shape", "sparsity", "kernel", "dense ms", "chosen ms", "speedup"):
            t.add_column(col, justify="left" if col in ("layer", "kernel") else "right")
        for row in layer_rows(result, b):
            t.add_row(*row)
        console.print(t)
    acc, ver = result["accuracy"], result["verify"]
    t = Table(title="top-1 accuracy")
    for col in ("dense", "pruned", "sparse-executed", "predictions agree", "max |err|"):
        t.add_column(col, justify="right")
    t.add_row(f"{acc['dense_top1']:.2%}", f"{acc['pruned_top1']:.2%}", f"{acc['sparse_top1']:.2%}",
              f"{ver['prediction_agreement']:.2%}", f"{ver['max_abs_err']:.1e}")
    console.print(t)
    t = Table(title="end-to-end latency (median ms)")
    for col in ("batch", "dense", "dense BN folded", "sparse", "speedup", "vs folded"):
        t.add_column(col, justify="right")
    for b, v in result["latency"].items():
        t.add_row(b, f"{v['dense']['median_ms']:.3f}", f"{v['dense_bn_folded']['median_ms']:.3f}",
                  f"{v['sparse']['median_ms']:.3f}", f"{v['speedup']:.2f}x",
                  f"{v['speedup_vs_folded']:.2f}x")
    console.print(t)
    mb = result["model_bytes"]
    console.print(f"model bytes: dense {mb['dense']:,}  sparse {mb['sparse']:,}  "
                  f"({mb['dense'] / max(mb['sparse'], 1):.2f}x smaller)")
    if result.get("quantization"):
        t = Table(title="quantized pruned weights (CSR storage; kernels still run fp32)")
        for col in ("method", "top-1", "change (points)", "bytes", "vs fp32 CSR"):
            t.add_column(col, justify="left" if col == "method" else "right")
        for r in result["quantization"]:
            t.add_row(r["method"], f"{r['top1']:.2%}", f"{r['delta_points']:+.2f}",
                      f"{r['nbytes']:,}", f"{r['ratio']:.2f}x smaller")
        console.print(t)
    console.print(f"results: {result['results_dir']}")

