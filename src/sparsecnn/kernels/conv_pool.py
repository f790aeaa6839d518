"""Kernels of op ``"conv2d_pool"`` (convolution, ReLU, max-pooling) that do not fuse: a conv2d
kernel, then ``torch.nn.functional.max_pool2d``.

For every conv2d kernel registered when :mod:`sparsecnn.kernels` is imported (``dense``,
``direct``, ``im2col_spmm``, ``hybrid``, ...) :func:`register_unfused` registers a
``conv2d_pool`` kernel **of the same name** that runs it (through the shared prepared-operand
cache, on the convolution's own :class:`~sparsecnn.problem.ConvProblem`, ReLU fused into the
conv) and pools its output. So tuning a fused layer measures "conv with each kernel, then
max_pool2d" against the fused kernels (``fused_ref``, ...), and a fused kernel is chosen only
when it beats them all; a ``conv2d_pool`` layer with no fused kernel faster runs exactly as the
convolution and the pooling did before the rewrite.
"""

from __future__ import annotations

import torch.nn.functional as F

from . import prepared, registry
from .registry import Kernel, register


class ConvStep:
    """The prepared operand of an unfused ``conv2d_pool`` kernel: the conv2d kernel and the
    convolution's problem (the conv kernel's own operand lives in the prepared-operand cache,
    keyed by that problem, shared with plain ``conv2d`` calls on the same weight)."""

    __slots__ = ("kernel", "problem")

    def __init__(self, kernel, problem):
        self.kernel, self.problem = kernel, problem


def pool(y, problem):
    """``torch.nn.functional.max_pool2d`` of a conv output with ``problem``'s pooling."""
    return F.max_pool2d(y, problem.pool_kernel, problem.pool_stride, problem.pool_padding,
                        problem.pool_dilation, problem.ceil_mode)


def _run_unfused(prep, x, bias):
    step = prep.operand
    conv_prep = prepared.prepare(step.kernel, prep.weight, step.problem)
    return pool(step.kernel.run(conv_prep, x, bias), prep.problem)


def _adapter(conv: Kernel) -> Kernel:
    def prepare(weight, problem, _conv=conv):
        return ConvStep(_conv, problem.conv_problem())

    supports = None
    if conv.supports is not None:
        def supports(problem, _conv=conv):
            return _conv.supports(problem.conv_problem())
    weight_check = None
    if conv.weight_check is not None:
        def weight_check(weight, problem, _conv=conv):
            return _conv.weight_check(weight, problem.conv_problem())
    return Kernel(conv.name, "conv2d_pool", _run_unfused, formats=conv.formats, prepare=prepare,
                  requires=conv.requires, devices=conv.devices, dtypes=conv.dtypes,
                  supports=supports, weight_check=weight_check, version=conv.version,
                  sources=(getattr(conv.run, "__module__", ""), *conv.sources),
                  description=f"{conv.name} convolution, then max_pool2d (unfused)")


def register_unfused() -> list[str]:
    """Register the unfused ``conv2d_pool`` kernel of every conv2d kernel that has none yet;
    returns their names."""
    done = []
    have = set(registry.names("conv2d_pool"))
    for conv in registry.kernels("conv2d"):
        if conv.name not in have:
            register(_adapter(conv))
            done.append(conv.name)
    return done


register_unfused()

__all__ = ["register_unfused", "pool", "ConvStep"]
