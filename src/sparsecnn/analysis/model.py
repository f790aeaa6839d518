"""Every analysis of a model's conv layers in one call (compute only; rendering is elsewhere)."""

from __future__ import annotations

import time
from contextlib import contextmanager

import numpy as np
import torch

from .balance import load_balance
from .blocks import dense_blocks, hybrid_estimate, measure_hybrid
from .breakeven import break_even_curves
from .encodings import model_index_encodings
from .ineffectual import capture_activation_counts, ineffectual_work
from .sparsity import density_profile, model_sparsity
from .sweep import DEFAULT_FRACTIONS, accuracy_evaluator, threshold_sweep


def conv_modules(model: torch.nn.Module) -> dict[str, torch.nn.Conv2d]:
    """The model's ``torch.nn.Conv2d`` layers, name -> module, in registration order."""
    return {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)}


def resolve_layers(model: torch.nn.Module, layers=None) -> list[str]:
    """Check layer names against the model; None means every Conv2d layer.

    Raises
    ------
    ValueError
        If the model has no Conv2d layer, or a name is unknown or not a Conv2d (the message
        lists the Conv2d layers, and says what the named module is).
    """
    convs = conv_modules(model)
    if not convs:
        kinds = sorted({type(m).__name__ for m in model.modules()})
        raise ValueError(f"the model has no Conv2d layer to analyse (its modules: {kinds})")
    if layers is None:
        return list(convs)
    mods = dict(model.named_modules())
    names = [layers] if isinstance(layers, str) else list(layers)
    for n in names:
        if n not in mods or n == "":
            raise ValueError(f"unknown layer {n!r}; Conv2d layers: {', '.join(convs)}")
        if n not in convs:
            raise ValueError(
                f"layer {n!r} is a {type(mods[n]).__name__}, not a Conv2d; "
                f"Conv2d layers: {', '.join(convs)}"
            )
    return names


def _geometry(m: torch.nn.Conv2d, input_shape) -> dict:
    pad = m.padding
    if isinstance(pad, str):
        pad = tuple(0 if pad == "valid" else d * (k - 1) // 2 for d, k in zip(m.dilation, m.kernel_size))
    return {"stride": tuple(m.stride), "padding": tuple(pad), "dilation": tuple(m.dilation),
            "groups": int(m.groups), "input_shape": tuple(input_shape) if input_shape else None}


def analyse_model(model: torch.nn.Module, layers=None, *, inputs: torch.Tensor | None = None,
                  labels: torch.Tensor | None = None, input_source: str = "",
                  sweep_weights: dict | None = None, sweep_fractions=DEFAULT_FRACTIONS,
                  detail_layers=None, threads: int = 1, format: str = "csr",
                  block_threshold: float = 0.5, block_tile=(16, 16), repeats: int = 20,
                  bench: bool = False, bench_sparsities=(0.5, 0.7, 0.8, 0.9, 0.95, 0.98, 0.993),
                  bench_kernels=None, eval_images: int = 256, activation_images: int = 64,
                  progress=None) -> dict:
    """Run every analysis on the model's conv layers; return plain data for the renderers.

    Parameters
    ----------
    model : torch.nn.Module
        Its current (pruned) weights are analysed; it is not modified (the sweep restores them).
    layers : str, list of str or None
        Conv2d layers in scope (None: all).
    inputs : torch.Tensor (N, C, H, W) or None
        Model inputs for the activation analysis and the layers' input shapes (normalised as the
        model expects). None: the activation analysis is reported unavailable.
    labels : torch.Tensor (N,) or None
        With ``inputs``, enables the accuracy axis of the threshold sweep.
    input_source : str
        Where ``inputs`` come from (e.g. "CIFAR-10 test subset, 64 images" or "random N(0, 1)
        inputs, not real data"): copied into the result so the report says it.
    sweep_weights : dict or None
        Weights the threshold sweep starts from (e.g. the unpruned ones); None: the current ones.
    detail_layers : list of str or None
        Layers that get the slow per-layer analyses (hybrid plan timing, break-even); None: the
        layers in scope when there is one, else the largest layer (by weight count).
    threads : int
        Threads for load balance (the timings use the threads already set in torch / numba).
    format : str
        Sparse format of the sparse kernel in the hybrid plan and the benchmark.
    block_threshold, block_tile
        :func:`dense_blocks` parameters.
    repeats : int
        Timed runs per measurement (median).
    bench : bool
        Add break-even curves (:func:`break_even_curves`; slow).
    eval_images, activation_images : int
        Images used for accuracy in the sweep and for activation counts.
    progress : object or None
        A ``rich.progress.Progress`` (or anything with ``add_task`` / ``advance`` / ``update``).

    Returns
    -------
    dict
        ``layers``, ``detail_layers``, ``geometry`` (name -> stride/padding/dilation/groups/
        input_shape), ``weights`` (name -> float32 ndarray), ``summary`` (:func:`model_sparsity`
        rows), ``profiles``, ``balance``, ``blocks`` (name -> the matching analysis),
        ``hybrid`` (name -> {``rates``, ``estimate``, ``measured``} or {``unavailable``}),
        ``encodings`` ({``rows``: :func:`~sparsecnn.analysis.model_index_encodings` per layer +
        total, ``rows_64pe``: the same with EIE's rows over 64 PEs}),
        ``sweep`` ({``rows``} or {``unavailable``}), ``ineffectual`` ({``layers``: name -> ...,
        ``input_source``} or {``unavailable``}), ``break_even`` (name -> ... when ``bench``),
        ``timings_s`` (step -> seconds).

    Raises
    ------
    ValueError
        Unknown / non-conv layer names, a model without Conv2d layers.
    """
    names = resolve_layers(model, layers)
    convs = conv_modules(model)
    timings: dict[str, float] = {}

    @contextmanager
    def step(label: str, total: int | None = None):
        t0 = time.perf_counter()
        task = progress.add_task(label, total=total) if progress is not None else None

        def advance():
            if progress is not None:
                progress.advance(task)
        try:
            yield advance
        finally:
            timings[label] = time.perf_counter() - t0
            if progress is not None:
                progress.update(task, completed=total if total else 1, total=total or 1)

    weights = {n: convs[n].weight.detach().cpu().numpy().astype(np.float32, copy=True) for n in names}
    if detail_layers is None:
        detail_layers = names if len(names) == 1 else [max(names, key=lambda n: weights[n].size)]
    else:
        detail_layers = resolve_layers(model, detail_layers)
    out: dict = {"layers": names, "detail_layers": list(detail_layers), "weights": weights,
                 "format": format, "threads": int(threads), "input_source": input_source,
                 "timings_s": timings}

    # shapes of every layer's input (one image), kept for the detail layers' timings
    captured: dict[str, torch.Tensor] = {}
    with step("layer inputs"):
        if inputs is not None:
            hooks = [convs[n].register_forward_pre_hook(
                (lambda name: lambda _m, a: captured.__setitem__(name, a[0].detach().clone()))(n))
                for n in names]
            try:
                with torch.no_grad():
                    model.eval()
                    model(inputs[:1])
            finally:
                for h in hooks:
                    h.remove()
    out["geometry"] = {n: _geometry(convs[n], captured[n].shape if n in captured else None)
                       for n in names}

    with step("sparsity summary", len(names)) as adv:
        out["summary"] = model_sparsity(weights)
        out["profiles"] = {}
        for n in names:
            out["profiles"][n] = density_profile(weights[n])
            adv()
    with step("accelerator index encodings"):
        out["encodings"] = {"rows": model_index_encodings(weights), "n_pe": 1,
                            "rows_64pe": model_index_encodings(weights, n_pe=64)}
    with step("load balance"):
        out["balance"] = {n: load_balance(weights[n], threads) for n in names}
    with step("dense blocks"):
        out["blocks"] = {n: dense_blocks(weights[n], block_threshold, block_tile)
                         if out["geometry"][n]["groups"] == 1 else None for n in names}

    out["hybrid"] = {}
    with step("hybrid plan (timed)", len(detail_layers)) as adv:
        for n in detail_layers:
            g = out["geometry"][n]
            if n not in captured:
                out["hybrid"][n] = {"unavailable": "no model input to time the layer with"}
            elif g["groups"] != 1:
                out["hybrid"][n] = {"unavailable": f"grouped convolution (groups={g['groups']})"}
            else:
                x = captured[n].contiguous().float()
                try:
                    # one interleaved run times dense, all-sparse and the hybrid; its dense and
                    # sparse rates feed the cost model
                    meas = measure_hybrid(weights[n], out["blocks"][n], x, g["stride"], g["padding"],
                                          g["dilation"], format=format, repeats=repeats)
                    est = hybrid_estimate(out["blocks"][n], meas)
                    out["hybrid"][n] = {"rates": meas, "estimate": est, "measured": meas}
                except ValueError as exc:  # no sparse kernel registered for the format, ...
                    out["hybrid"][n] = {"unavailable": str(exc)}
            adv()

    with step("activation zeros (forward hooks)"):
        if inputs is None:
            out["ineffectual"] = {"unavailable": "no input data given"}
        else:
            xa = inputs[:activation_images]
            acts = capture_activation_counts(model, xa, names)
            out["ineffectual"] = {"input_source": input_source, "images": int(xa.shape[0]),
                                  "layers": {n: ineffectual_work(weights[n], acts[n]) for n in names}}

    sw = sweep_weights if sweep_weights is not None else weights
    sw = {n: sw[n] for n in names}
    with step("threshold sweep", len(sweep_fractions)) as adv:
        evaluate = None
        if inputs is not None and labels is not None:
            evaluate = accuracy_evaluator(model, inputs[:eval_images], labels[:eval_images])
        out["sweep"] = {"rows": threshold_sweep(sw, sweep_fractions, evaluate=evaluate, progress=adv),
                        "accuracy_images": int(min(eval_images, inputs.shape[0])) if evaluate else 0,
                        "current_density": out["summary"][-1]["density"]}

    if bench:
        out["break_even"] = {}
        with step("break-even benchmark (slow)", len(detail_layers) * len(bench_sparsities)) as adv:
            for n in detail_layers:
                out["break_even"][n] = break_even_curves(
                    n, out["geometry"][n], weights[n].shape, bench_sparsities, batch=1,
                    kernels=bench_kernels, threads=threads, progress=adv)
    return out
