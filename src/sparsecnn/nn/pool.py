"""Fused convolution + (ReLU) + max-pooling: the module and its ``torch.fx`` rewrite.

:func:`find_pool_fusions` finds, on a symbolic trace, every ``conv -> [ReLU] -> MaxPool2d``
chain (AlexNet's conv1 / conv2 / conv5, the last conv of each VGG-16 block) where rewriting the
modules is equivalent to rewriting the graph: each module called at one place, each intermediate
result read once, ``nn.Identity`` modules (folded BatchNorm, fused ReLU) allowed in between, a
MaxPool2d without ``return_indices``. :func:`fuse_pool_` replaces the (sparse) conv by a
:class:`SparseConvPool2d` that computes ``max_pool2d(relu(conv(x)))`` in one call and the ReLU and
pooling modules by ``nn.Identity``, in place (the model keeps its class and ``forward``).

The fused module runs op ``"conv2d_pool"``: tuning measures every conv2d kernel followed by
``max_pool2d`` (the unfused path, :mod:`sparsecnn.kernels.conv_pool`) against the fused kernels,
so a fused kernel is chosen only where it is faster, and a layer is never slower than before the
rewrite (up to measurement noise).
"""

from __future__ import annotations

import dataclasses
from collections import Counter

from torch import fx, nn

from .. import functional as Fs
from ..problem import ConvPoolProblem
from .modules import SparseConv2d


class SparseConvPool2d(SparseConv2d):
    """A sparse convolution, its ReLU and a max-pooling, for inference: ``forward(x) =
    max_pool2d(relu?(conv2d(x, W, b)), pool_kernel, pool_stride, pool_padding, pool_dilation,
    ceil_mode)`` (op ``"conv2d_pool"``, :func:`sparsecnn.functional.conv2d_pool`).

    Parameters
    ----------
    weight, bias, stride, padding, dilation, groups, relu
        As :class:`SparseConv2d`.
    pool_kernel, pool_stride, pool_padding, pool_dilation : int or pair of int
        The pooling (``pool_stride`` None: the window, as PyTorch).
    ceil_mode : bool
    algo : str
        A kernel registered for ``conv2d_pool`` (``"dense"``, a conv kernel's name = that conv
        then ``max_pool2d``, ``"fused_ref"``, ...) or ``"auto"``.

    Raises
    ------
    TypeError, ValueError
        As :class:`SparseConv2d`, and for a bad pooling (checked on the first input).
    """

    op = "conv2d_pool"

    def __init__(self, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, *,
                 pool_kernel, pool_stride=None, pool_padding=0, pool_dilation=1,
                 ceil_mode: bool = False, relu: bool = False, algo: str = "auto"):
        super().__init__(weight, bias, stride, padding, dilation, groups, relu=relu, algo=algo)
        self.pool_kernel = Fs._pair(pool_kernel, "pool_kernel", 1)
        self.pool_stride = (self.pool_kernel if pool_stride is None
                            else Fs._pair(pool_stride, "pool_stride", 1))
        self.pool_padding = Fs._pair(pool_padding, "pool_padding", 0)
        self.pool_dilation = Fs._pair(pool_dilation, "pool_dilation", 1)
        if not isinstance(ceil_mode, bool):
            raise TypeError(f"ceil_mode must be a bool, got {ceil_mode!r}")
        self.ceil_mode = ceil_mode

    @classmethod
    def from_conv(cls, conv: SparseConv2d, pool: nn.MaxPool2d, *, relu: bool | None = None,
                  algo: str | None = None) -> "SparseConvPool2d":
        """Fuse a :class:`SparseConv2d` and the ``nn.MaxPool2d`` after it (sharing the conv's
        weight object and bias; ``relu`` None keeps the conv's flag; ``algo`` None is
        ``"auto"``, also for a conv fixed to dense (too dense for a sparse convolution, such as
        a first conv left unpruned): its fused layer is tuned too, because a fused kernel's
        pooling (``fused_dense``: dense conv, then a faster max-pool) can pay where a sparse
        convolution does not; untuned, the heuristic still runs a dense weight dense).

        Raises
        ------
        TypeError
            If ``conv`` is not a SparseConv2d or ``pool`` not an ``nn.MaxPool2d``.
        ValueError
            If the pool returns indices.
        """
        if not isinstance(conv, SparseConv2d) or isinstance(conv, SparseConvPool2d):
            raise TypeError(f"expected a SparseConv2d, got {type(conv).__name__}")
        if not isinstance(pool, nn.MaxPool2d):
            raise TypeError(f"expected an nn.MaxPool2d, got {type(pool).__name__}")
        if pool.return_indices:
            raise ValueError("a MaxPool2d with return_indices=True cannot be fused")
        if algo is None:
            algo = "auto"
        new = cls(conv.weight, conv.bias, conv.stride, conv.padding, conv.dilation, conv.groups,
                  pool_kernel=pool.kernel_size, pool_stride=pool.stride,
                  pool_padding=pool.padding, pool_dilation=pool.dilation,
                  ceil_mode=bool(pool.ceil_mode), relu=conv.relu if relu is None else relu,
                  algo=algo)
        return new.train(conv.training)

    def _geometry(self) -> dict:
        return {**super()._geometry(), "pool_kernel": list(self.pool_kernel),
                "pool_stride": list(self.pool_stride), "pool_padding": list(self.pool_padding),
                "pool_dilation": list(self.pool_dilation), "ceil_mode": self.ceil_mode}

    @classmethod
    def _skeleton(cls, conv: nn.Conv2d, *, relu: bool = False, meta=None) -> "SparseConvPool2d":
        """A module with ``conv``'s geometry, the pooling recorded in the file's state
        (``meta["geometry"]``) and an all-zero weight, to load a state into.

        Raises ValueError if the state records no pooling."""
        from .modules import _conv_padding, _empty_weight
        g = (meta or {}).get("geometry") or {}
        try:
            pool = {k: tuple(int(v) for v in g[k])
                    for k in ("pool_kernel", "pool_stride", "pool_padding", "pool_dilation")}
            ceil_mode = g["ceil_mode"]
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"a SparseConvPool2d state needs its pooling in 'geometry', got "
                             f"{g!r}") from None
        if not isinstance(ceil_mode, bool):
            raise ValueError(f"ceil_mode must be true or false, got {ceil_mode!r}")
        return cls(_empty_weight(tuple(conv.weight.shape)), None, conv.stride,
                   _conv_padding(conv), conv.dilation, conv.groups, relu=relu,
                   ceil_mode=ceil_mode, **pool)

    def _pool_kw(self) -> dict:
        return {"pool_kernel": self.pool_kernel, "pool_stride": self.pool_stride,
                "pool_padding": self.pool_padding, "pool_dilation": self.pool_dilation,
                "ceil_mode": self.ceil_mode}

    def problem(self, x_shape, dtype: str = "float32", device: str = "cpu") -> ConvPoolProblem:
        """The :class:`~sparsecnn.problem.ConvPoolProblem` of an input of ``x_shape``."""
        cp = super().problem(x_shape, dtype, device)
        fields = {f.name: getattr(cp, f.name) for f in dataclasses.fields(cp)}
        return ConvPoolProblem(**fields, **self._pool_kw())

    def _problem_of(self, x):
        _, problem, bias, _ = Fs.conv2d_pool_problem(x, self.weight, self.bias, self.stride,
                                                     self.padding, self.dilation, self.groups,
                                                     self.relu, **self._pool_kw())
        return problem, bias

    def run(self, x, name: str):
        """Run with ``conv2d_pool`` kernel ``name`` through the validating functional API."""
        return Fs.conv2d_pool(x, self.weight, self.bias, self.stride, self.padding,
                              self.dilation, self.groups, relu=self.relu, algo=name,
                              **self._pool_kw())

    def extra_repr(self) -> str:
        return (super().extra_repr() + f", pool_kernel={self.pool_kernel}, "
                f"pool_stride={self.pool_stride}, pool_padding={self.pool_padding}, "
                f"pool_dilation={self.pool_dilation}, ceil_mode={self.ceil_mode}")


_CONVS = (nn.Conv2d, SparseConv2d)


def find_pool_fusions(model: nn.Module, *, graph: fx.Graph | None = None) -> dict:
    """Chains ``conv -> [Identity...] -> [ReLU] -> [Identity...] -> MaxPool2d`` that can be fused:
    ``{conv name: (relu module name or None, pool module name)}``. Nothing is changed.

    Raises
    ------
    TypeError
        If ``model`` is not fx-traceable (when no ``graph`` is given).
    """
    from .fusion import trace

    graph = graph if graph is not None else trace(model)
    modules = dict(model.named_modules())
    counts = Counter(n.target for n in graph.nodes if n.op == "call_module")

    def single(node):
        return node.op == "call_module" and counts[node.target] == 1

    found = {}
    for node in graph.nodes:
        if not single(node):
            continue
        layer = modules.get(node.target)
        if not isinstance(layer, _CONVS) or isinstance(layer, SparseConvPool2d):
            continue
        cur, relu = node, None
        while len(cur.users) == 1:
            nxt = next(iter(cur.users))
            if not single(nxt):
                break
            m = modules.get(nxt.target)
            if type(m) is nn.Identity:
                cur = nxt
            elif type(m) is nn.ReLU and relu is None:
                relu, cur = nxt.target, nxt
            elif type(m) is nn.MaxPool2d and not m.return_indices:
                found[node.target] = (relu, nxt.target)
                break
            else:
                break
    return found


def _set_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, new)


def fuse_pool_(model: nn.Module, found: dict) -> list[str]:
    """Apply the fusions of ``found`` (from :func:`find_pool_fusions`) in place: each conv that
    is (by now) a :class:`SparseConv2d` becomes a :class:`SparseConvPool2d`, its ReLU (if still
    an ``nn.ReLU``: folded in, ``relu=True``) and pool become ``nn.Identity``. Convs that are not
    sparse modules are skipped. Returns the conv names fused."""
    done = []
    for conv_name, (relu_name, pool_name) in found.items():
        conv = model.get_submodule(conv_name)
        if not isinstance(conv, SparseConv2d) or isinstance(conv, SparseConvPool2d):
            continue
        pool = model.get_submodule(pool_name)
        if not isinstance(pool, nn.MaxPool2d):
            continue
        relu = conv.relu
        if relu_name is not None:
            r = model.get_submodule(relu_name)
            if type(r) is nn.ReLU:
                relu = True
                _set_module(model, relu_name, nn.Identity())
            elif type(r) is not nn.Identity:  # replaced by something else since: leave it
                continue
            else:
                relu = True  # the ReLU was already fused into the conv (Identity now)
        _set_module(model, conv_name, SparseConvPool2d.from_conv(conv, pool, relu=relu))
        _set_module(model, pool_name, nn.Identity())
        done.append(conv_name)
    return done


__all__ = ["SparseConvPool2d", "find_pool_fusions", "fuse_pool_"]
