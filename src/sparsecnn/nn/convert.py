"""Converting a pruned model for sparse inference: :func:`sparsify_` (torchao style, in place),
per-layer tuning (:func:`tune_`), the per-layer table and save / load."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
from torch import nn

from .._atomic import atomic_path
from ..dispatch import DEFAULT_MARGIN, tune
from .fusion import (RewriteLog, check_sparsified_, find_relu_fusions, fold_batchnorm, fuse_relu_,
                     reference_output, try_trace)
from .modules import SparseConv2d, SparseLinear
from .pool import find_pool_fusions, fuse_pool_

SPARSE_MODULES = (SparseConv2d, SparseLinear)
FILE_MAGIC = "sparsecnn-model"
FILE_VERSION = 1


def sparse_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(name, module)`` of every :class:`SparseConv2d` / :class:`SparseLinear` in ``model``."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, SPARSE_MODULES)]


def _sparsity(w: torch.Tensor) -> float:
    return 1.0 - float(torch.count_nonzero(w)) / w.numel()


def sparsify_(model: nn.Module, *, format: str = "csr", filter_fn: Callable | None = None,
              tune: bool = True, example_input=None, min_sparsity: float = 0.5,
              fold_bn: bool = True, fuse_relu: bool = True, margin: float = DEFAULT_MARGIN,
              use_cache: bool = True, format_options: dict | None = None,
              fuse_pool: bool = True) -> nn.Module:
    """Convert a pruned model for sparse inference, in place.

    Steps: eval mode; fold ``conv -> BatchNorm`` (fx, :func:`~sparsecnn.nn.fold_batchnorm`);
    replace each selected ``nn.Conv2d`` / ``nn.Linear`` by :class:`SparseConv2d` /
    :class:`SparseLinear` (its weight in ``format``); fuse the ``nn.ReLU`` that follows it; then
    choose each layer's kernel: measured on ``example_input`` (:func:`tune_`) or, without it, at
    first use (tuning cache, else heuristic). A layer can always end up dense (PyTorch on its
    densified weight) when no sparse kernel beats dense by ``margin``.

    Parameters
    ----------
    model : nn.Module
        The pruned model (zeros in its weights). fx-traceable for folding and fusion; otherwise
        those steps are skipped with a warning.
    format : str
        Sparse format name (:data:`sparsecnn.formats.FORMATS`).
    filter_fn : callable or None
        ``filter_fn(module, fqn) -> bool``: convert only the layers it accepts (default: every
        ``nn.Conv2d`` with zero padding mode and every ``nn.Linear``).
    tune : bool
        Measure the kernels on ``example_input`` (needs it). ``False``: heuristic/cached choice.
    example_input : torch.Tensor or None
        A real input batch (its batch size is the one tuned for).
    min_sparsity : float in [0, 1]
        Layers sparser than this are converted and tuned; the others are converted but run dense
        (they still get ReLU fusion).
    fold_bn, fuse_relu : bool
        Do the graph rewrites.
    fuse_pool : bool
        Replace each ``conv -> [ReLU] -> MaxPool2d`` by one :class:`~sparsecnn.nn.SparseConvPool2d`
        (:func:`~sparsecnn.nn.fuse_pool_`; tuning then compares the fused kernels with the conv
        kernels followed by ``max_pool2d``).
    margin : float
        A sparse kernel must be this much faster than dense to be chosen (default 5 %).
    use_cache : bool
        Use and fill the on-disk tuning cache.
    format_options : dict or None
        Passed to the format's ``from_dense``.

    Returns
    -------
    nn.Module
        ``model`` itself.

    Raises
    ------
    TypeError
        If ``model`` is not an ``nn.Module`` or ``filter_fn`` not callable.
    ValueError
        If ``min_sparsity`` is outside [0, 1], ``format`` unknown, or ``tune`` without
        ``example_input``.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if filter_fn is not None and not callable(filter_fn):
        raise TypeError(f"filter_fn must be callable(module, fqn) -> bool, got {filter_fn!r}")
    if not 0.0 <= float(min_sparsity) <= 1.0:
        raise ValueError(f"min_sparsity must be in [0, 1], got {min_sparsity!r}")
    if tune and example_input is None:
        raise ValueError("tune=True needs example_input (a real input batch); "
                         "pass one or use tune=False")
    from ..formats import FORMATS
    if format not in FORMATS:
        raise ValueError(f"unknown format {format!r}; expected one of {sorted(FORMATS)}")
    model.eval()
    reference, log = reference_output(model, example_input), RewriteLog(model)
    graph = try_trace(model) if (fold_bn or fuse_relu or fuse_pool) else None
    if graph is not None and fold_bn:
        fold_batchnorm(model, graph=graph, example_input=example_input, log=log)
    after_fold = log.mark()
    pairs = find_relu_fusions(model, graph=graph) if (graph is not None and fuse_relu) else {}
    pools = find_pool_fusions(model, graph=graph) if (graph is not None and fuse_pool) else {}

    for name, mod in list(model.named_modules()):
        if type(mod) not in (nn.Conv2d, nn.Linear):
            continue
        if isinstance(mod, nn.Conv2d) and mod.padding_mode != "zeros":
            continue
        if filter_fn is not None and not filter_fn(mod, name):
            continue
        cls = SparseConv2d if isinstance(mod, nn.Conv2d) else SparseLinear
        algo = "auto" if _sparsity(mod.weight) >= min_sparsity else "dense"
        new = cls.from_dense(mod, format=format, algo=algo, **(format_options or {})).eval()
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, new)
    fuse_relu_(model, pairs, log)
    fuse_pool_(model, pools)
    model.eval()
    if tune:
        tune_(model, example_input, margin=margin, use_cache=use_cache)
    check_sparsified_(model, example_input, reference, log, after_fold)
    return model


def _capture_inputs(model: nn.Module, example_input) -> dict[str, torch.Tensor]:
    """Run ``model`` once and return the input of every sparse module (by name)."""
    captured: dict[str, torch.Tensor] = {}
    handles = []
    for name, mod in sparse_modules(model):
        def hook(m, args, _name=name):
            captured.setdefault(_name, args[0].detach().clone())
        handles.append(mod.register_forward_pre_hook(hook))
    try:
        with torch.no_grad():
            model(example_input)
    finally:
        for h in handles:
            h.remove()
    return captured


def tune_(model: nn.Module, example_input, *, margin: float = DEFAULT_MARGIN,
          use_cache: bool = True, retune: bool = False,
          progress: Callable[[str], None] | None = None) -> nn.Module:
    """Measure the kernels of every sparse module of ``model`` (``algo="auto"``) on the inputs
    it sees for ``example_input`` and fix each layer's choice for that input signature, in place.

    Each layer tries the kernels that can run its problem here (plus dense), see
    :func:`sparsecnn.dispatch.tune` (warm-up, alternating blocks, outliers dropped, median;
    a wrong output is rejected; dense wins unless beaten by ``margin``; disturbed measurements
    are repeated and never cached). The results are kept in ``module.tuning[key]`` and the
    choice in ``module.choices[key]``, ``key`` the layer's problem key at that input.

    Parameters
    ----------
    retune : bool
        Measure even where the tuning cache holds a decision (and replace it).

    Returns
    -------
    nn.Module
        ``model``.
    """
    model.eval()
    inputs = _capture_inputs(model, example_input)
    for name, mod in sparse_modules(model):
        x = inputs.get(name)
        if x is None or mod.algo != "auto":
            continue
        if mod.op == "conv2d" and x.ndim == 3:
            x = x.unsqueeze(0)
        if mod.op == "linear" and x.ndim != 2:
            x = x.reshape(-1, mod.in_features)
        x = x.contiguous()
        problem, _ = mod._problem_of(x)
        if progress is not None:
            progress(name)
        # the tuning batch's activation density goes into the problem the tuner measures and
        # caches for (a decision on 70 %-zero inputs is not reused for dense ones); the
        # module's choice stays keyed by the input signature
        act = float(torch.count_nonzero(x)) / max(1, x.numel())
        res = tune(problem.replace(act_density=act), _runner(mod, x), margin=margin,
                   use_cache=use_cache, retune=retune, weight=mod.weight)
        key = problem.key()
        mod.choices[key] = res.choice
        mod.tuning[key] = {**res.to_dict(), "batch": problem.batch, "act_density": act}
        mod.reset_plans()
    return model


def _runner(mod, x: torch.Tensor):
    """``run(name)`` for tuning: validated and resolved once per kernel (as the module's forward
    resolves it), then the kernel called directly."""
    fast: dict[str, Callable] = {}

    def run(name: str) -> torch.Tensor:
        fn = fast.get(name)
        if fn is None:
            k_run, prep, bias = mod._plan(x, name)
            fn = fast[name] = lambda: k_run(prep, x, bias)
        return fn()
    return run


def layer_table(model: nn.Module, batch: int | None = None) -> list[dict]:
    """One row per sparse module: name, kind, shape, sparsity, nnz, format, relu, bytes, and for
    ``batch`` (default: the first tuned one) the chosen kernel, dense ms, chosen ms, speedup and
    rejected kernels. Plain data for reports."""
    rows = []
    for name, m in sparse_modules(model):
        tuned = {t["batch"]: t for t in m.tuning.values()}
        b = batch if batch is not None else (min(tuned) if tuned else None)
        t = tuned.get(b) if b is not None else None
        row = {
            "name": name, "kind": type(m).__name__, "shape": list(m.weight.shape),
            "sparsity": m.weight.sparsity, "nnz": m.weight.nnz, "format": m.weight.format_name,
            "relu": m.relu, "nbytes": m.nbytes, "dense_nbytes": m.dense_nbytes, "batch": b,
            "kernel": m.algo if m.algo != "auto" else (t["choice"] if t else "auto"),
            "dense_ms": None, "chosen_ms": None, "speedup": None, "rejected": [],
        }
        if t is not None:
            row.update(dense_ms=t["dense_ms"], chosen_ms=t["chosen_ms"], speedup=t.get("speedup"),
                       cached=t.get("cached", False),
                       candidates={mm["name"]: mm["median_ms"] for mm in t.get("measurements", [])},
                       rejected=[f"{mm['name']}: {mm['message']}" for mm in t.get("measurements", [])
                                 if mm["status"] != "ok"])
        rows.append(row)
    return rows


def model_nbytes(model: nn.Module) -> dict:
    """Bytes of the model: ``nbytes`` as stored (sparse modules count their sparse arrays and
    bias, everything else its parameters and buffers), ``held_nbytes`` as held in memory now
    (plus what the sparse layers' kernels prepared and keep: a dense copy for a layer that runs
    dense, offsets and plans), and ``dense_nbytes``, the dense equivalent."""
    sparse = dense = held = 0
    seen = set()
    for _, m in sparse_modules(model):
        sparse += m.nbytes
        held += m.held_nbytes
        dense += m.dense_nbytes
        seen.add(id(m))
    for _, m in model.named_modules():
        if id(m) in seen:
            continue
        for t in list(m.parameters(recurse=False)) + list(m.buffers(recurse=False)):
            nb = t.numel() * t.element_size()
            sparse += nb
            held += nb
            dense += nb
    return {"nbytes": sparse, "held_nbytes": held, "dense_nbytes": dense}


# ---------------------------------------------------------------------------------------------
# save / load
# ---------------------------------------------------------------------------------------------
def save(model: nn.Module, path) -> Path:
    """Save a sparsified model (architecture, sparse weights, kernel choices) to ``path``.

    The file is ``torch.save`` of ``{"magic", "version", "model"}``: the whole module is pickled
    (its class must be importable when loading); the per-shape plans and densified copies are
    not stored (rebuilt at first use). Written atomically: a temporary file in the same
    directory, then ``os.replace``.

    Returns
    -------
    pathlib.Path
        The path written.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save({"magic": FILE_MAGIC, "version": FILE_VERSION, "model": model}, tmp)
    return path


def load(path) -> nn.Module:
    """Load a model written by :func:`save` (in eval mode).

    The file is unpickled (``weights_only=False``): load only files you trust.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ValueError
        If the file is corrupt, truncated, or not a sparsecnn model file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no sparsecnn model file at {str(path)!r}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise ValueError(f"{str(path)!r} is not a readable sparsecnn model file "
                         f"({type(exc).__name__}: {exc})") from None
    if not isinstance(obj, dict) or obj.get("magic") != FILE_MAGIC:
        raise ValueError(f"{str(path)!r} is not a sparsecnn model file (written by sparsecnn.nn.save)")
    if obj.get("version") != FILE_VERSION:
        raise ValueError(f"{str(path)!r} has file version {obj.get('version')!r}; "
                         f"this sparsecnn reads version {FILE_VERSION}")
    model = obj["model"]
    if not isinstance(model, nn.Module):
        raise ValueError(f"{str(path)!r} does not hold a torch.nn.Module")
    return model.eval()
