"""The optimize job as a library function: train or load -> prune -> sparsify + tune -> verify ->
benchmark -> results folder.

:func:`optimize` returns a plain result dict (everything ``results.json`` holds);
:func:`sparsecnn.report.summary.render_summary` turns it into Markdown and
:func:`~sparsecnn.report.summary.print_summary` into rich tables (both re-exported here). The CLI
(``sparsecnn optimize``) only parses arguments and calls these. Per-model defaults (weights,
data, recipe, whether Linear layers are pruned) come from :func:`sparsecnn.models.spec`; the
results folder follows :mod:`sparsecnn.results`; the output check is
:func:`sparsecnn.checks.compare_outputs`.

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
from torch.utils.data import TensorDataset

from . import quant
from ._atomic import atomic_path
from .checks import TOLERANCE, compare_outputs
from .report.summary import layer_rows, print_summary, render_summary  # noqa: F401 (re-exported)
from .results import DEFAULT_PARENT, check_output_file, check_parent, results_folder

#: quantization methods reported by default (all of :data:`sparsecnn.quant.METHODS`)
QUANT_METHODS = tuple(quant.METHODS)
METHODS = ("magnitude", "global", "nm", "filter", "unified")
#: Methods pruned gradually (AGP, through :func:`sparsecnn.prune.recipes.run_recipe`) when
#: ``epochs > 0``: method -> (recipe ``scope``, recipe ``method``).
GRADUAL = {"magnitude": ("layer", "magnitude"), "global": ("global", "magnitude"),
           "unified": ("layer", "unified")}
DEFAULT_OUT = DEFAULT_PARENT
#: Output check of the sparse model against the pruned dense model
#: (:func:`sparsecnn.checks.compare_outputs`): ``max|y_sparse - y_dense| <= VERIFY_TOL *
#: max(1, max|y_dense|)``, and top-1 predictions compared.
VERIFY_TOL = TOLERANCE
#: Random images a label-free run (``input_shape``) verifies on (at least).
VERIFY_IMAGES = 4


def _log(console, msg: str) -> None:
    if console is not None:
        console.log(msg)


# ---------------------------------------------------------------------------------------------
# inputs
# ---------------------------------------------------------------------------------------------
def _check_args(model, sparsity, method, epochs, batch_sizes, threads, format, onnx,
                time_s) -> None:
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
    if batch_sizes is not None:
        _check_batch_sizes(batch_sizes)
    from .threads import check_threads
    check_threads(threads)
    if format not in FORMATS:
        raise ValueError(f"unknown format {format!r}; expected one of {sorted(FORMATS)}")
    if isinstance(time_s, bool) or not isinstance(time_s, (int, float)) \
            or not math.isfinite(float(time_s)) or float(time_s) <= 0:
        raise ValueError(f"time (seconds of timed runs per batch size) must be a finite number "
                         f"> 0, got {time_s!r}")


def _check_batch_sizes(batch_sizes) -> None:
    if not batch_sizes or any(isinstance(b, bool) or not isinstance(b, int) or b < 1
                              for b in batch_sizes):
        raise ValueError(f"batch sizes must be positive ints, got {batch_sizes!r}")


def _check_input_shape(shape) -> tuple[int, ...]:
    """``--input-shape``: N,C,H,W positive ints (a string "1,3,640,640" or a sequence)."""
    text = shape
    if isinstance(shape, str):
        try:
            shape = [int(v) for v in shape.replace("x", ",").split(",")]
        except ValueError:
            raise ValueError(f"input shape must be N,C,H,W (positive ints), got {text!r}") from None
    shape = tuple(shape)
    if len(shape) != 4 or any(isinstance(v, bool) or not isinstance(v, int) or v < 1
                              for v in shape):
        raise ValueError(f"input shape must be N,C,H,W (4 positive ints), got {text!r}")
    return shape


def _onnx_static_shape(path) -> tuple[int, ...]:
    from .onnx import input_shape
    dims = input_shape(path)
    if len(dims) != 4 or any(d is None for d in dims):
        raise ValueError(f"{path} declares input shape {tuple('?' if d is None else d for d in dims)}"
                         "; pass --input-shape N,C,H,W (label-free) or --data NPZ")
    return dims


def _datasets(model_name, data, train_data):
    """(train or None, test) TensorDatasets and a description."""
    from . import data as D
    from . import models
    if data is not None:
        test = D.load_npz(data, labels_required=False)
        if len(test.tensors) == 1:  # unlabelled images: label-free mode, [0, 1] pixels
            test = D.load_npz(data, None, labels_required=False)
            if train_data is not None:
                raise ValueError("--train-data needs labelled evaluation images; --data has no "
                                 "'labels'")
            return None, test, f"{data} ({len(test)} unlabelled images)"
        train = D.load_npz(train_data) if train_data is not None else None
        return train, test, f"{data}" + (f" (train {train_data})" if train_data else "")
    if train_data is not None:
        raise ValueError("--train-data needs --data (the evaluation images) too")
    if model_name is None:
        raise ValueError("an ONNX model has no default data set; pass --data NPZ")
    return models.spec(model_name).default_data()


def _check_fits(model: nn.Module, x: torch.Tensor, what: str, labelled: bool = True):
    try:
        with torch.no_grad():
            y = model.eval()(x)
    except Exception as exc:
        raise ValueError(f"{what} of shape {tuple(x.shape)} and dtype {x.dtype} do not fit the "
                         f"model: {type(exc).__name__}: {exc}") from None
    if not labelled:  # label-free: any tensors will do (detection / segmentation maps)
        compare_outputs(y, y)  # TypeError naming what it got, if not tensors
        return y
    if not isinstance(y, torch.Tensor) or y.ndim != 2:
        raise ValueError(f"with labelled data the model must return (N, classes) logits, got "
                         f"{type(y).__name__} {getattr(y, 'shape', '')}; for detection or "
                         "segmentation models use --input-shape N,C,H,W or an npz of images "
                         "without labels (label-free mode)")
    return y


def _dense_cache_path(model_name: str, seed: int) -> Path:
    from . import models
    from .dispatch import cache_dir
    cfg = json.dumps({"model": model_name, "seed": seed,
                      **(models.spec(model_name).dense_train or {})}, sort_keys=True)
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
    cfg = models.spec(model_name).dense_train
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


# ---------------------------------------------------------------------------------------------
# pruning
# ---------------------------------------------------------------------------------------------
def pruning_recipe(model_name: str | None, method: str, sparsity: float, epochs: int, *,
                   seed: int = 0, weights=None, prune_linear: bool | None = None):
    """The :class:`~sparsecnn.prune.recipes.Recipe` that ``optimize`` runs for gradual pruning.

    The base is the model spec's recipe (:attr:`sparsecnn.models.ModelSpec.recipe`): the CIFAR
    ResNets take :func:`~sparsecnn.prune.recipes.resnet20_cifar_90` (batch 128, lr 0.02, AGP
    over the first 60 % of the steps, distillation from the dense model, crop + flip),
    ``smallcnn`` takes :func:`~sparsecnn.prune.recipes.smallcnn_digits`; any other model (or an
    ONNX import, ``model_name=None``) the :class:`Recipe` defaults without augmentation or
    distillation.
    ``method`` sets the scope (``"magnitude"``: per layer, ``"global"``: one threshold,
    ``"unified"``: per layer, equal nnz per output channel); ``sparsity``, ``epochs``, ``seed``,
    ``weights`` (the starting checkpoint's path, recorded; needed for distillation) and
    ``prune_linear`` (None: the recipe's) override.

    Raises
    ------
    ValueError
        For a method that is not gradual (see :data:`GRADUAL`).
    """
    from . import models
    from .prune import recipes
    if method not in GRADUAL:
        raise ValueError(f"method {method!r} is not a gradual pruning method; expected one of "
                         f"{list(GRADUAL)}")
    scope, mask_method = GRADUAL[method]
    base_name = models.spec(model_name).recipe if model_name is not None else None
    if base_name is not None:
        base = recipes.RECIPES[base_name](model=model_name)
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
    from . import models, prune
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
            batch = models.spec(recipe_key).finetune_batch if recipe_key is not None else 128
            loader = prune.make_loader(train_set, batch, seed=seed)
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
    """Compare the sparse model with the pruned dense model over ``loader``
    (:func:`sparsecnn.checks.compare_outputs`).

    ``loader`` yields ``(x, labels)`` batches, or ``(x,)`` without labels: then the models may
    return anything made of tensors (detection / segmentation maps) and only the outputs are
    compared (the top-1 entries are None).

    Returns
    -------
    dict
        ``max_abs_err``, ``scale`` (max |y_dense|), ``within_tolerance`` (max_abs_err <=
        VERIFY_TOL * max(1, scale)), ``prediction_agreement`` (share of identical top-1),
        ``same_predictions``, ``dense_top1``, ``sparse_top1``, ``n``.
    """
    first = next(iter(loader))
    if len(first) < 2:  # no labels: outputs only, batch by batch
        err, scale, ok, n = 0.0, 0.0, True, 0
        with torch.no_grad():
            for (x,) in loader:
                chk = compare_outputs(sparse_model.eval()(x), dense_model.eval()(x), VERIFY_TOL)
                err, scale = max(err, chk.max_abs_err), max(scale, chk.scale)
                ok, n = ok and chk.ok, n + x.shape[0]
        ok = ok and err <= VERIFY_TOL * max(1.0, scale)
        return {"max_abs_err": err, "scale": scale, "tolerance": VERIFY_TOL,
                "within_tolerance": ok, "prediction_agreement": None, "same_predictions": None,
                "dense_top1": None, "sparse_top1": None, "n": n}
    yd, labels = _outputs(dense_model.eval(), loader)
    ys, _ = _outputs(sparse_model.eval(), loader)
    check = compare_outputs(ys, yd, VERIFY_TOL)
    pd, ps = yd.argmax(1), ys.argmax(1)
    n = int(labels.numel())
    agree = int((pd == ps).sum()) / n
    return {"max_abs_err": check.max_abs_err, "scale": check.scale, "tolerance": VERIFY_TOL,
            "within_tolerance": check.ok,
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
             batch_sizes=None, threads: int | None = None, format: str = "csr", onnx=None,
             export_onnx=None, out_dir=DEFAULT_OUT, tune: bool = True, retune: bool = False,
             seed: int = 0,
             prune_linear: bool | None = None, time_s: float = 1.0, progress: bool = True,
             quantize=QUANT_METHODS, input_shape=None, console=None) -> dict:
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
    batch_sizes : sequence of int or None
        Batches to tune and time (default 1 and 64; label-free: the N of ``input_shape``, or 1).
    threads : int or None
        Threads for PyTorch and Numba (both get the same count), 1 ..
        :func:`sparsecnn.threads.max_threads`; None: 2, or fewer on a smaller machine.
    format : str
        Sparse weight format.
    onnx : path or None
        Import the model from ONNX (onnx2torch) instead of ``model``.
    export_onnx : path or None
        Write the pruned dense model to ONNX.
    out_dir : path
        Parent folder of the results folder ``optimize-<model>-<timestamp>``
        (:mod:`sparsecnn.results`; checked before any work).
    tune : bool
        Measure kernels per layer (else heuristic / cache).
    retune : bool
        Measure every layer again even where the tuning cache holds a decision, and replace it
        (a cache filled on a busy machine). Needs ``tune``.
    time_s : float
        Seconds of timed end-to-end calls per batch size.
    quantize : sequence of str
        :data:`sparsecnn.quant.METHODS` to report on the pruned model (top-1 and bytes each, see
        :func:`quantization_report`); empty for none. Skipped without labels.
    input_shape : "N,C,H,W", sequence of 4 ints, or None
        Label-free mode on random N(0, 1) inputs of this shape: for detection / segmentation
        models (any tensor outputs) and models without labelled data. The job prunes one-shot,
        sparsifies, tunes, verifies the sparse outputs against the pruned dense model, times
        and exports, and records that accuracy was not measured (``result["accuracy"]`` is
        None). An npz ``data`` without ``labels`` runs the same mode on its images. An ONNX
        model with neither defaults to the static input shape its file declares.
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
    from .threads import max_threads, set_threads

    if batch_sizes is not None:
        batch_sizes = [int(b) if isinstance(b, (int, float)) and not isinstance(b, bool)
                       and b == int(b) else b for b in batch_sizes]
    if threads is None:
        threads = min(2, max_threads())
    _check_args(model, sparsity, method, epochs, batch_sizes, threads, format, onnx, time_s)
    if retune and not tune:
        raise ValueError("--retune measures the kernels again; it cannot go with --no-tune")
    check_parent(out_dir)
    if export_onnx is not None:
        check_output_file(export_onnx, "--export-onnx")
    quantize = tuple(quantize)
    unknown = [m for m in quantize if m not in quant.METHODS]
    if unknown:
        raise ValueError(f"unknown quantization method(s) {unknown}; expected any of "
                         f"{list(quant.METHODS)}")
    t_start = time.perf_counter()
    sparsity = float(sparsity)
    threads_info = set_threads(threads)
    torch.manual_seed(seed)
    name = model if onnx is None else Path(onnx).stem
    spec = M.spec(model) if onnx is None else None
    if epochs is None:
        epochs = (spec.dense_train or {}).get("epochs", 0) if spec is not None else 0
    if prune_linear is None:
        prune_linear = spec.prune_linear if spec is not None else False

    # -- data and model -------------------------------------------------------------------------
    if input_shape is not None and data is not None:
        raise ValueError("give --data or --input-shape, not both")
    if input_shape is None and data is None and onnx is not None:
        input_shape = _onnx_static_shape(onnx)
    if input_shape is not None:
        input_shape = _check_input_shape(input_shape)
        if train_data is not None:
            raise ValueError("--train-data needs --data (labelled evaluation images), not "
                             "--input-shape")
        g = torch.Generator().manual_seed(seed)
        n_img = max(input_shape[0], VERIFY_IMAGES)
        test_set = TensorDataset(torch.randn((n_img, *input_shape[1:]), generator=g))
        train_set = None
        data_desc = (f"random N(0, 1) inputs of {'x'.join(map(str, input_shape[1:]))} "
                     f"({n_img} images, seed {seed}): no labels")
    else:
        train_set, test_set, data_desc = _datasets(model if onnx is None else None, data,
                                                   train_data)
    labelled = len(test_set.tensors) > 1
    if batch_sizes is None:
        batch_sizes = [1, 64] if labelled else [input_shape[0] if input_shape else 1]
    _check_batch_sizes(batch_sizes)
    if not labelled and epochs:
        raise ValueError("fine-tuning (epochs > 0) needs labelled training data; without labels "
                         "(--input-shape, or an npz without 'labels') pruning is one-shot: "
                         "pass --epochs 0")
    test_loader = make_loader(test_set, 256 if labelled else batch_sizes[0], shuffle=False)
    images = test_set.tensors[0]
    if onnx is not None:
        from .onnx import load_onnx
        net = load_onnx(onnx)
        weights_info = {"source": "onnx", "path": str(onnx)}
    else:
        net = M.build(model)
        if weights is None:
            weights = spec.default_weights()
        if weights is not None:
            M.load_weights(net, weights)
            weights_info = {"source": "file", "path": str(weights)}
        else:
            _check_fits(net, images[:2], "images", labelled)
            weights_info = _train_dense(net, model, train_set, test_loader, seed, progress, console)
    net.eval()
    _check_fits(net, images[:2], "images", labelled)
    dense_top1 = evaluate(net, test_loader) if labelled else None
    if labelled:
        _log(console, f"dense top-1 {dense_top1:.2%} on {len(test_set)} images")
    else:
        _log(console, f"no labels: accuracy is not measured ({data_desc})")

    # -- prune ------------------------------------------------------------------------------------
    pruned = copy.deepcopy(net)
    prune_info = _prune(pruned, name, model if onnx is None else None, method, sparsity, epochs,
                        train_set, test_set, weights_info.get("path"), seed, prune_linear,
                        progress, console)
    pruned.eval()
    from .prune import sparsity_of
    layer_sparsity = sparsity_of(pruned)
    pruned_top1 = evaluate(pruned, test_loader) if labelled else None
    if labelled:
        _log(console, f"pruned top-1 {pruned_top1:.2%}")
        quant_rows = quantization_report(pruned, test_loader, quantize, pruned_top1)
    else:
        quant_rows = []
    for r in quant_rows:
        _log(console, f"quantized {r['method']}: top-1 {r['top1']:.2%} ({r['delta_points']:+.2f} "
                      f"points), {r['nbytes']:,} bytes")

    # -- sparsify + tune ----------------------------------------------------------------------------
    sparse = copy.deepcopy(pruned)
    t0 = time.perf_counter()
    example = _batch(images, batch_sizes[0])
    # with retune, sparsify_ only converts; every batch is then measured afresh by tune_
    snn.sparsify_(sparse, format=format, tune=tune and not retune, example_input=example,
                  min_sparsity=0.5)
    for i, b in enumerate(batch_sizes):
        if tune and (retune or i > 0):
            snn.tune_(sparse, _batch(images, b), retune=retune)
    tune_s = time.perf_counter() - t0
    try:
        sparse_run = snn.compact(sparse, example_input=example)
    except TypeError:
        sparse_run = sparse
    _log(console, f"sparsified and tuned in {tune_s:.1f} s")

    # -- verify -------------------------------------------------------------------------------------
    check = verify(sparse_run, pruned, test_loader)
    _log(console, f"verify: max |err| {check['max_abs_err']:.2e}"
         + (f", predictions agree {check['prediction_agreement']:.2%}" if labelled else ""))

    # -- benchmark ----------------------------------------------------------------------------------
    folded = copy.deepcopy(pruned)
    notes = []
    if snn.fusion.try_trace(folded) is not None:
        snn.fold_batchnorm(folded, example_input=example)
    else:
        notes.append("dense_bn_folded = dense: the model is not fx-traceable, nothing folded")
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
    if not labelled:
        notes.insert(0, "accuracy was NOT measured: no labels (label-free mode); the sparse "
                        "model's outputs were compared with the pruned dense model's instead")
    result = {
        "job": "optimize", "model": name, "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "data": data_desc, "weights": weights_info, "threads": threads_info, "format": format,
        "seed": seed, "batch_sizes": batch_sizes, "labelled": labelled,
        "input_shape": list(images.shape[1:]),
        "cpu": cpu_model(),
        "torch": torch.__version__,
        "accuracy": ({"dense_top1": dense_top1, "pruned_top1": pruned_top1,
                      "sparse_top1": check["sparse_top1"], "n": check["n"]} if labelled else None),
        "pruning": {**prune_info, "layer_sparsity": layer_sparsity},
        "quantization": quant_rows,
        "verify": check,
        "layers": {str(b): snn.layer_table(sparse, batch=b) for b in batch_sizes},
        "latency": timing,
        "model_bytes": {"dense": _param_bytes(pruned), "sparse": sizes["nbytes"],
                        "sparse_layers_dense_equivalent": sizes["dense_nbytes"]},
        "tune_seconds": tune_s, "export_onnx": None,
        "notes": notes + [
            "dense = the pruned model as trained (eval mode, BatchNorm not folded); "
            "dense_bn_folded = same with BatchNorm folded; sparse = BN folded, ReLU fused, "
            "per-layer kernels, fx-compacted",
            "per-layer times are the tuner's medians on each layer's real input "
            "('(cached)': measured by an earlier run with the same key, see "
            "sparsecnn.dispatch.cache_key)",
            f"verification tolerance: max|err| <= {VERIFY_TOL} x max(1, max|y_dense|)"],
    }
    # -- outputs, all at the end (an interrupted run writes nothing) -----------------------------
    if export_onnx is not None:
        from .onnx import export_onnx as _export
        result["export_onnx"] = str(_export(pruned, images[:1], export_onnx))
        _log(console, f"exported the pruned dense model to {export_onnx} (dynamic N, H, W)")
    result["seconds"] = time.perf_counter() - t_start
    result["results_dir"] = str(_write_results(result, sparse, out_dir))
    return result


def _write_results(result: dict, sparse_model: nn.Module, out_dir) -> Path:
    """Write results.json, summary.md and model.pt into a new results folder
    (:func:`sparsecnn.results.results_folder`: atomic, an existing folder is never touched)."""
    from . import nn as snn
    with results_folder(out_dir, "optimize", result["model"]) as (tmp, final):
        result["results_dir"] = str(final)
        snn.save(sparse_model, tmp / "model.pt")
        (tmp / "results.json").write_text(json.dumps(result, indent=1, default=str))
        (tmp / "summary.md").write_text(render_summary(result))
    return final
