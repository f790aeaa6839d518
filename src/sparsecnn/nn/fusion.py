"""Graph rewrites for inference, found with ``torch.fx``: BatchNorm folding and ReLU fusion.

The patterns are found on a symbolic trace (:func:`torch.fx.symbolic_trace` semantics) and
applied *in place* to the model's own modules, so the model keeps its class and its ``forward``:

- ``conv -> bn`` (``nn.Conv2d`` -> ``nn.BatchNorm2d``, ``nn.Conv1d`` / ``nn.Linear`` ->
  ``nn.BatchNorm1d``):
  the BN's running statistics and affine parameters are folded into the conv's weight and bias
  (``w' = w * g / sqrt(var + eps)``, ``b' = (b - mean) * g / sqrt(var + eps) + beta``, computed in
  float64), and the BN module is replaced by ``nn.Identity``. Inference (eval-mode) semantics.
- ``conv [-> folded bn] -> relu`` (an ``nn.ReLU`` module): the ReLU is fused into the sparse
  module's kernel and the ReLU module replaced by ``nn.Identity``.

A pattern is applied only where rewriting modules is equivalent to rewriting the graph: each
module of the pattern is called at exactly one place, and each intermediate result has exactly
one user. A ReLU module shared by several call sites (torchvision's ``BasicBlock.relu``) is left
alone there. :func:`compact` then gives an ``fx.GraphModule`` with the Identity calls removed.
"""

from __future__ import annotations

import warnings
from collections import Counter

import torch
from torch import fx, nn

from .modules import SparseConv2d, SparseLinear

_BN_AFTER = {nn.Conv2d: nn.BatchNorm2d, nn.Conv1d: nn.BatchNorm1d, nn.Linear: nn.BatchNorm1d}


class _Tracer(fx.Tracer):
    """fx tracer treating sparsecnn's modules (and torch.nn's) as leaves."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if isinstance(m, (SparseConv2d, SparseLinear)):
            return True
        return super().is_leaf_module(m, qualname)


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
def _fold(layer: nn.Module, bn: nn.Module) -> None:
    scale = bn.weight.double() if bn.affine else torch.ones_like(bn.running_var, dtype=torch.float64)
    shift = bn.bias.double() if bn.affine else torch.zeros_like(bn.running_mean, dtype=torch.float64)
    inv = scale / torch.sqrt(bn.running_var.double() + bn.eps)
    w = layer.weight.double() * inv.view(-1, *([1] * (layer.weight.ndim - 1)))
    b = layer.bias.double() if layer.bias is not None else torch.zeros_like(inv)
    b = (b - bn.running_mean.double()) * inv + shift
    layer.weight.copy_(w.to(layer.weight.dtype))
    if layer.bias is None:
        layer.bias = nn.Parameter(b.to(layer.weight.dtype))
    else:
        layer.bias.copy_(b.to(layer.bias.dtype))


def fold_batchnorm(model: nn.Module, *, graph: fx.Graph | None = None) -> list[tuple[str, str]]:
    """Fold every ``conv -> BatchNorm`` pair of ``model`` into the conv, in place.

    Parameters
    ----------
    model : nn.Module
        fx-traceable. BatchNorm uses its running statistics (inference semantics) whatever the
        module's mode; BNs without running statistics are left alone.
    graph : fx.Graph or None
        A trace of ``model`` to reuse.

    Returns
    -------
    list of (layer name, bn name)
        The pairs folded (each BN is now an ``nn.Identity``).

    Raises
    ------
    TypeError
        If ``model`` is not fx-traceable.
    """
    graph = graph if graph is not None else trace(model)
    modules = dict(model.named_modules())
    counts = _call_counts(graph)
    folded = []
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
        if layer.weight.shape[0] != bn.num_features:
            continue
        _fold(layer, bn)
        _set_module(model, node.target, nn.Identity())
        folded.append((src.target, node.target))
    return folded


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
        if not isinstance(layer, (nn.Conv2d, nn.Conv1d, nn.Linear, SparseConv2d, SparseLinear)):
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


def fuse_relu_(model: nn.Module, pairs: dict[str, str]) -> list[tuple[str, str]]:
    """Fuse the ReLUs of ``pairs`` (from :func:`find_relu_fusions`) into their sparse layers,
    in place; layers that are not (yet) sparse modules are skipped. Returns the pairs fused."""
    done = []
    for layer_name, relu_name in pairs.items():
        layer = model.get_submodule(layer_name)
        if isinstance(layer, (SparseConv2d, SparseLinear)):
            layer.relu = True
            layer.reset_plans()
            _set_module(model, relu_name, nn.Identity())
            done.append((layer_name, relu_name))
    return done


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
    import operator
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


def compact(model: nn.Module, *, inplace_residual: bool = True) -> fx.GraphModule:
    """An ``fx.GraphModule`` running ``model`` without its ``nn.Identity`` (folded BN, fused
    ReLU) and eval-mode ``nn.Dropout`` calls: the leanest forward for batch-1 latency.

    With ``inplace_residual``, a residual ``relu(layer(x) + shortcut)`` (or the add alone) is
    computed in place in the layer's fresh output (no new allocation, one pass less), when the
    layer's output has no other reader. The GraphModule shares the model's (sparse) submodules
    and is meant for inference (in-place ops are not autograd-safe on leaf views).

    Raises
    ------
    TypeError
        If ``model`` is not fx-traceable.
    """
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
