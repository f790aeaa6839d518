"""Graph rewrites for inference, found with ``torch.fx``: BatchNorm folding and ReLU fusion.

The patterns are found on a symbolic trace (:func:`torch.fx.symbolic_trace` semantics) and
applied *in place* to the model's own modules, so the model keeps its class and its ``forward``:

- ``conv -> bn`` (``nn.Conv2d`` -> ``nn.BatchNorm2d``, or ``nn.Linear`` -> ``nn.BatchNorm1d``):
  the BN's running statistics and affine parameters are folded into the conv's weight and bias
  (``w' = w * g / sqrt(var + eps)``, ``b' = (b - mean) * g / sqrt(var + eps) + beta``, computed in
  float64), and the BN module is replaced by ``nn.Identity``. Inference (eval-mode) semantics.
  The folded weight and bias are *new* Parameters: a Parameter the layer shares with another
  layer (tied weights) is never written. ``Linear -> BatchNorm1d`` is folded only where the
  Linear's output is provably ``(N, features)`` -- BatchNorm1d normalises dim 1, the Linear
  maps the last dim, and the two coincide only for 2-D outputs: shown by shape propagation on
  an example input (:class:`torch.fx.passes.shape_prop.ShapeProp`) or, without one, by the
  Linear's input being ``flatten(x, 1)``.
- ``conv [-> folded bn] -> relu`` (an ``nn.ReLU`` module): the ReLU is fused into the sparse
  module's kernel and the ReLU module replaced by ``nn.Identity``.

A pattern is applied only where rewriting modules is equivalent to rewriting the graph: each
module of the pattern is called at exactly one place, and each intermediate result has exactly
one user. A ReLU module shared by several call sites (torchvision's ``BasicBlock.relu``) is left
alone there. :func:`compact` then gives an ``fx.GraphModule`` with the Identity calls removed.

Every rewrite is checked against the model before it, on an example input, when there is one
(:func:`check_rewrite`, the one output check of :func:`sparsecnn.checks.compare_outputs`): a
rewrite that changes the answer is undone (:class:`RewriteLog`) with a :class:`RewriteWarning`.
:func:`check_sparsified_` is that check for :func:`sparsecnn.nn.sparsify_` as a whole.
"""

from __future__ import annotations

import operator
import warnings
from collections import Counter

import torch
from torch import fx, nn

from ..checks import compare_outputs
from .modules import SparseConv2d, SparseLinear

_BN_AFTER = {nn.Conv2d: nn.BatchNorm2d, nn.Linear: nn.BatchNorm1d}


class RewriteWarning(UserWarning):
    """A graph rewrite was undone because it changed the model's output on the example input."""


class RewriteLog:
    """Undo log of in-place rewrites: module swaps and attribute assignments, undone in reverse
    order by :meth:`undo` (Parameters are replaced, never written, so undoing restores the very
    objects the model held)."""

    def __init__(self, model: nn.Module):
        self.model = model
        self._undo: list = []

    def set_module(self, name: str, new: nn.Module) -> None:
        old = self.model.get_submodule(name)
        _set_module(self.model, name, new)
        self._undo.append(lambda: _set_module(self.model, name, old))

    def set_attr(self, obj, attr: str, value) -> None:
        had = attr in obj.__dict__ or attr in getattr(obj, "_parameters", {}) \
            or attr in getattr(obj, "_buffers", {}) or attr in getattr(obj, "_modules", {})
        old = getattr(obj, attr, None)

        def undo():
            if isinstance(obj, nn.Module) and attr in obj._parameters:
                obj._parameters[attr] = old  # restores None and Parameters alike
            elif had:
                setattr(obj, attr, old)
            else:
                delattr(obj, attr)
        setattr(obj, attr, value)
        self._undo.append(undo)

    def mark(self) -> int:
        """A point to :meth:`undo` back to."""
        return len(self._undo)

    def undo(self, mark: int = 0) -> None:
        """Undo every change made after ``mark`` (default: all), newest first."""
        while len(self._undo) > mark:
            self._undo.pop()()


@torch.no_grad()
def reference_output(model: nn.Module, example_input):
    """``model(example_input)`` in eval mode (the model's mode restored), detached and cloned;
    None when ``example_input`` is None."""
    if example_input is None:
        return None
    was = model.training
    model.eval()
    try:
        y = model(example_input)
    finally:
        model.train(was)
    return _clone(y)


def _clone(y):
    if isinstance(y, torch.Tensor):
        return y.detach().clone()
    if isinstance(y, (list, tuple)):
        return type(y)(_clone(v) for v in y)
    if isinstance(y, dict):
        return {k: _clone(v) for k, v in y.items()}
    return y


def check_rewrite(model: nn.Module, reference, example_input, what: str) -> str:
    """Compare ``model(example_input)`` (eval mode) with ``reference`` (the output before the
    rewrite): "" when equal by :func:`sparsecnn.checks.compare_outputs`, else a one-line
    reason naming ``what``. A model that raises counts as different."""
    if reference is None:
        return ""
    try:
        y = reference_output(model, example_input)
    except Exception as exc:  # noqa: BLE001 - a rewrite that breaks the forward is a failure
        return f"{what}: the rewritten model raises {type(exc).__name__}: {exc}"
    chk = compare_outputs(y, reference)
    return "" if chk.ok else f"{what} changed the output ({chk.message})"


class _Tracer(fx.Tracer):
    """fx tracer treating sparsecnn's modules, onnx2torch's operator modules (and torch.nn's)
    as leaves."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if isinstance(m, (SparseConv2d, SparseLinear)) or _is_onnx2torch(m):
            return True
        return super().is_leaf_module(m, qualname)


def _is_onnx2torch(m: nn.Module) -> bool:
    """An onnx2torch operator module (ONNX imports): a leaf, as its forward often has
    shape-dependent Python that symbolic tracing cannot follow."""
    return any(c.__module__.startswith("onnx2torch.") for c in type(m).__mro__[:-1])


def trace(model: nn.Module) -> fx.Graph:
    """Symbolic trace of ``model`` (sparse modules kept as leaves).

    Raises
    ------
    TypeError
        If the model cannot be traced (data-dependent control flow); the message says why.
    """
    try:
        return _Tracer().trace(model)
    except Exception as exc:  # fx raises many types (TraceError, TypeError, ...)
        raise TypeError(f"model {type(model).__name__} is not fx-traceable: {exc}") from exc


def _set_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, new)


def _call_counts(graph: fx.Graph) -> Counter:
    return Counter(n.target for n in graph.nodes if n.op == "call_module")


def _single_site(node: fx.Node, counts: Counter) -> bool:
    return node.op == "call_module" and counts[node.target] == 1


@torch.no_grad()
def _fold(layer: nn.Module, bn: nn.Module, log: RewriteLog) -> None:
    """Fold ``bn`` into ``layer`` by giving it a new weight and bias Parameter (the old ones,
    which other layers may share, are left untouched)."""
    scale = bn.weight.double() if bn.affine else torch.ones_like(bn.running_var, dtype=torch.float64)
    shift = bn.bias.double() if bn.affine else torch.zeros_like(bn.running_mean, dtype=torch.float64)
    inv = scale / torch.sqrt(bn.running_var.double() + bn.eps)
    w = layer.weight.double() * inv.view(-1, *([1] * (layer.weight.ndim - 1)))
    b = layer.bias.double() if layer.bias is not None else torch.zeros_like(inv)
    b = (b - bn.running_mean.double()) * inv + shift
    dtype = layer.weight.dtype
    log.set_attr(layer, "weight", nn.Parameter(w.to(dtype), requires_grad=layer.weight.requires_grad))
    bias_dtype = layer.bias.dtype if layer.bias is not None else dtype
    log.set_attr(layer, "bias", nn.Parameter(b.to(bias_dtype)))


def _is_flatten_1(node, modules: dict) -> bool:
    """``node`` is ``torch.flatten(x, 1)`` / ``x.flatten(1)`` / ``nn.Flatten()``: output 2-D."""
    if not isinstance(node, fx.Node):
        return False
    args, kw = list(node.args[1:]), dict(node.kwargs)
    if node.op == "call_function" and node.target is torch.flatten \
            or node.op == "call_method" and node.target == "flatten":
        start = args[0] if args else kw.get("start_dim", 0)
        end = args[1] if len(args) > 1 else kw.get("end_dim", -1)
        return start == 1 and end == -1
    if node.op == "call_module":
        m = modules.get(node.target)
        return type(m) is nn.Flatten and m.start_dim == 1 and m.end_dim == -1
    return False


def _output_ndim(node: fx.Node) -> int | None:
    meta = node.meta.get("tensor_meta")
    shape = getattr(meta, "shape", None)
    return len(shape) if shape is not None else None


def _shape_prop(model: nn.Module, graph: fx.Graph, example_input) -> bool:
    """Annotate ``graph``'s nodes with output shapes (``node.meta["tensor_meta"]``) by running
    ``model`` on ``example_input``; False (nothing annotated) when that fails."""
    from torch.fx.passes.shape_prop import ShapeProp
    try:
        gm = fx.GraphModule(model, graph)
        was = model.training
        model.eval()
        try:
            with torch.no_grad():
                ShapeProp(gm).propagate(example_input)
        finally:
            model.train(was)
    except Exception:  # noqa: BLE001 - shapes are an aid: without them fold only the provable
        return False
    return True


def fold_batchnorm(model: nn.Module, *, graph: fx.Graph | None = None, example_input=None,
                   log: RewriteLog | None = None) -> list[tuple[str, str]]:
    """Fold every ``conv -> BatchNorm`` pair of ``model`` that is provably equivalent into the
    conv, in place.

    Parameters
    ----------
    model : nn.Module
        fx-traceable. BatchNorm uses its running statistics (inference semantics) whatever the
        module's mode; BNs without running statistics are left alone, and so are layers whose
        weight is parametrized (``torch.nn.utils.parametrize``; call ``prune.finalize_``).
    graph : fx.Graph or None
        A trace of ``model`` to reuse.
    example_input : torch.Tensor or None
        A real input. With it, output shapes are propagated (``Linear -> BatchNorm1d`` is folded
        where the Linear's output is 2-D) and the folded model is compared with the original
        on it (:func:`check_rewrite`); folds that change the output are undone with a
        :class:`RewriteWarning`. Without it, ``Linear -> BatchNorm1d`` is folded only after
        ``flatten(x, 1)``.
    log : RewriteLog or None
        Record the changes here (to undo them later).

    Returns
    -------
    list of (layer name, bn name)
        The pairs folded (each BN is now an ``nn.Identity``).

    Raises
    ------
    TypeError
        If ``model`` is not fx-traceable.
    """
    from torch.nn.utils import parametrize
    graph = graph if graph is not None else trace(model)
    log = log if log is not None else RewriteLog(model)
    reference = reference_output(model, example_input)
    shapes = example_input is not None and _shape_prop(model, graph, example_input)
    modules = dict(model.named_modules())
    counts = _call_counts(graph)
    pairs = []
    for node in graph.nodes:
        if not _single_site(node, counts):
            continue
        bn = modules.get(node.target)
        src = node.args[0] if node.args else None
        if not isinstance(src, fx.Node) or not _single_site(src, counts) or len(src.users) != 1:
            continue
        layer = modules.get(src.target)
        bn_type = next((b for t, b in _BN_AFTER.items() if type(layer) is t), None)
        if bn_type is None or type(bn) is not bn_type or bn.running_var is None:
            continue
        if layer.weight.shape[0] != bn.num_features or parametrize.is_parametrized(layer):
            continue
        if isinstance(layer, nn.Linear):  # BN1d normalises dim 1; the Linear maps the last dim
            ndim = _output_ndim(src) if shapes else None
            if ndim is None and not _is_flatten_1(src.args[0] if src.args else None, modules):
                continue  # not provably (N, features)
            if ndim is not None and ndim != 2:
                continue
        pairs.append((src.target, node.target))

    def apply(todo):
        for layer_name, bn_name in todo:
            _fold(modules[layer_name], modules[bn_name], log)
            log.set_module(bn_name, nn.Identity())

    mark = log.mark()
    apply(pairs)
    why = check_rewrite(model, reference, example_input, "BatchNorm folding")
    if not why:
        return pairs
    log.undo(mark)  # one pair at a time: keep those that do not change the output
    kept = []
    for pair in pairs:
        m = log.mark()
        apply([pair])
        if check_rewrite(model, reference, example_input, "fold"):
            log.undo(m)
        else:
            kept.append(pair)
    warnings.warn(f"{why}; folded only {len(kept)} of {len(pairs)} conv -> BatchNorm pairs "
                  f"(skipped: {', '.join(b for _, b in pairs if (_, b) not in kept)})",
                  RewriteWarning, stacklevel=2)
    return kept


def _is_relu(node: fx.Node, modules: dict, counts: Counter) -> bool:
    return _single_site(node, counts) and type(modules.get(node.target)) is nn.ReLU


def find_relu_fusions(model: nn.Module, *, graph: fx.Graph | None = None) -> dict[str, str]:
    """Layers whose output goes (through Identity modules only) into an ``nn.ReLU`` that can be
    fused: ``{layer name: relu module name}``. Nothing is changed."""
    graph = graph if graph is not None else trace(model)
    modules = dict(model.named_modules())
    counts = _call_counts(graph)
    pairs = {}
    for node in graph.nodes:
        if not _single_site(node, counts):
            continue
        layer = modules.get(node.target)
        if not isinstance(layer, (nn.Conv2d, nn.Linear, SparseConv2d, SparseLinear)):
            continue
        cur = node
        while len(cur.users) == 1:
            nxt = next(iter(cur.users))
            if _single_site(nxt, counts) and type(modules.get(nxt.target)) is nn.Identity:
                cur = nxt
                continue
            if _is_relu(nxt, modules, counts):
                pairs[node.target] = nxt.target
            break
    return pairs


def fuse_relu_(model: nn.Module, pairs: dict[str, str],
               log: RewriteLog | None = None) -> list[tuple[str, str]]:
    """Fuse the ReLUs of ``pairs`` (from :func:`find_relu_fusions`) into their sparse layers,
    in place; layers that are not (yet) sparse modules are skipped. Returns the pairs fused."""
    log = log if log is not None else RewriteLog(model)
    done = []
    for layer_name, relu_name in pairs.items():
        layer = model.get_submodule(layer_name)
        if isinstance(layer, (SparseConv2d, SparseLinear)) and not layer.relu:
            log.set_attr(layer, "relu", True)
            layer.reset_plans()
            log._undo.append(layer.reset_plans)
            log.set_module(relu_name, nn.Identity())
            done.append((layer_name, relu_name))
    return done


def check_sparsified_(model: nn.Module, example_input, reference, log: RewriteLog,
                      after_fold: int = 0) -> list[str]:
    """The check of :func:`sparsecnn.nn.sparsify_`: the sparsified model against the model as it
    was (``reference``, its output on ``example_input`` before any rewrite).

    When they differ, fall back step by step, each with a :class:`RewriteWarning`, until they
    agree: undo the ReLU fusions (every change ``log`` recorded after its mark ``after_fold``),
    then run every sparse module on its dense weight (``algo="dense"``: a kernel bug). Returns
    the fall-backs taken ([] when the first check passes or there is no example input).

    Raises
    ------
    RuntimeError
        If the model still differs with every sparse module dense (the conversion itself is
        wrong: a bug, never hidden).
    """
    why = check_rewrite(model, reference, example_input, "sparsify_")
    if not why:
        return []
    taken = []
    warnings.warn(f"{why}; undoing the ReLU fusions", RewriteWarning, stacklevel=3)
    log.undo(after_fold)
    taken.append("relu fusion undone")
    why = check_rewrite(model, reference, example_input, "sparsify_ without ReLU fusion")
    if not why:
        return taken
    warnings.warn(f"{why}; running every sparse layer on its dense weight", RewriteWarning,
                  stacklevel=3)
    for _, m in model.named_modules():
        if isinstance(m, (SparseConv2d, SparseLinear)):
            m.algo = "dense"
            m.choices.clear()
            m.reset_plans()
    taken.append("sparse layers run dense")
    why = check_rewrite(model, reference, example_input, "sparsify_ with dense layers")
    if why:
        raise RuntimeError(f"{why}: the sparse conversion is wrong (a bug)")
    return taken


def _add_(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a + b`` written into ``a`` when shapes and dtypes match (``a`` is a fresh layer output
    nobody else reads), else out of place."""
    if a.shape == b.shape and a.dtype == b.dtype:
        return a.add_(b)
    return a + b


def _add_relu_(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``relu(a + b)``, in place in ``a`` when shapes and dtypes match."""
    if a.shape == b.shape and a.dtype == b.dtype:
        return a.add_(b).relu_()
    return torch.relu(a + b)


torch.fx.wrap("_add_")
torch.fx.wrap("_add_relu_")

_LAYERS = (nn.Conv2d, nn.Linear, SparseConv2d, SparseLinear)


def _inplace_residuals(graph: fx.Graph, modules: dict) -> int:
    """Rewrite ``relu(layer_out + other)`` / ``layer_out + other`` into in-place ops where
    ``layer_out`` is a layer's fresh output read only by the add. Returns the count."""
    n = 0
    for node in list(graph.nodes):
        if node.op != "call_function" or node.target not in (operator.add, torch.add) \
                or len(node.args) != 2 or node.kwargs:
            continue
        a, b = node.args
        if not isinstance(a, fx.Node) or not isinstance(b, fx.Node):
            continue
        if not (a.op == "call_module" and isinstance(modules.get(a.target), _LAYERS)
                and len(a.users) == 1):
            a, b = b, a
            if not (a.op == "call_module" and isinstance(modules.get(a.target), _LAYERS)
                    and len(a.users) == 1):
                continue
        users = list(node.users)
        relu = (users[0] if len(users) == 1 and users[0].op == "call_module"
                and type(modules.get(users[0].target)) is nn.ReLU else None)
        with graph.inserting_after(node):
            new = graph.call_function(_add_relu_ if relu is not None else _add_, (a, b))
        if relu is not None:
            relu.replace_all_uses_with(new)
            graph.erase_node(relu)
        node.replace_all_uses_with(new)
        graph.erase_node(node)
        n += 1
    return n


def compact(model: nn.Module, *, inplace_residual: bool = True,
            example_input=None) -> fx.GraphModule | nn.Module:
    """An ``fx.GraphModule`` running ``model`` without its ``nn.Identity`` (folded BN, fused
    ReLU) and eval-mode ``nn.Dropout`` calls: the leanest forward for batch-1 latency.

    With ``inplace_residual``, a residual ``relu(layer(x) + shortcut)`` (or the add alone) is
    computed in place in the layer's fresh output (no new allocation, one pass less), when the
    layer's output has no other reader. The GraphModule shares the model's (sparse) submodules
    and is meant for inference (in-place ops are not autograd-safe on leaf views).

    With ``example_input``, the result is checked against ``model`` on it (:func:`check_rewrite`):
    if it differs, the in-place residuals are dropped, and if it still differs ``model`` itself
    is returned, each time with a :class:`RewriteWarning`.

    Raises
    ------
    TypeError
        If ``model`` is not fx-traceable.
    """
    if example_input is not None:
        reference = reference_output(model, example_input)
        gm = compact(model, inplace_residual=inplace_residual)
        why = check_rewrite(gm, reference, example_input, "compact")
        if why and inplace_residual:
            warnings.warn(f"{why}; compacting without in-place residual adds", RewriteWarning,
                          stacklevel=2)
            gm = compact(model, inplace_residual=False)
            why = check_rewrite(gm, reference, example_input, "compact")
        if why:
            warnings.warn(f"{why}; running the model uncompacted", RewriteWarning, stacklevel=2)
            return model
        return gm
    graph = trace(model)
    modules = dict(model.named_modules())
    for node in list(graph.nodes):
        if node.op != "call_module":
            continue
        m = modules.get(node.target)
        if type(m) is nn.Identity or (isinstance(m, nn.Dropout) and not m.training):
            node.replace_all_uses_with(node.args[0])
            graph.erase_node(node)
    if inplace_residual:
        _inplace_residuals(graph, modules)
    gm = fx.GraphModule(model, graph, class_name=f"Compact{type(model).__name__}")
    gm.graph.eliminate_dead_code()
    gm.recompile()
    gm.eval()
    return gm


def try_trace(model: nn.Module) -> fx.Graph | None:
    """:func:`trace`, or None with a :class:`UserWarning` when the model is not traceable."""
    try:
        return trace(model)
    except TypeError as exc:
        warnings.warn(f"{exc}; BatchNorm folding and ReLU fusion skipped", stacklevel=3)
        return None
