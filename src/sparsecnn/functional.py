"""Public functional API: :func:`conv2d` and :func:`linear` with ``torch.nn.functional`` semantics.

The weight may be a dense tensor or any :class:`~sparsecnn.formats.SparseWeight`; ``algo`` picks
a registered kernel by name, or ``"auto"`` lets :mod:`sparsecnn.dispatch` choose. Every argument
is validated here, once, so kernels only compute.
"""

from __future__ import annotations

import dataclasses
import math
from numbers import Integral

import torch

from . import dispatch
from .formats import SparseWeight
from .kernels import prepared, registry
from .problem import (ConvPoolProblem, ConvProblem, LinearProblem, Problem, conv_output_size,
                      dtype_name)

__all__ = ["conv2d", "conv2d_pool", "linear", "resolve", "conv2d_problem", "conv2d_pool_problem",
           "linear_problem", "conv_output_size"]


def _pair(value, name: str, minimum: int) -> tuple[int, int]:
    # fast path for the common case (plain ints): this runs on every call of every layer
    if type(value) is int and value >= minimum:
        return (value, value)
    if (type(value) is tuple and len(value) == 2 and type(value[0]) is int
            and type(value[1]) is int and min(value) >= minimum):
        return value
    if isinstance(value, Integral) and not isinstance(value, bool):
        value = (int(value), int(value))
    if (not isinstance(value, (tuple, list)) or len(value) != 2
            or not all(isinstance(v, Integral) and not isinstance(v, bool) for v in value)):
        raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}")
    value = (int(value[0]), int(value[1]))
    if min(value) < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def _weight_info(weight, ndim: int) -> tuple[tuple[int, ...], str]:
    """Shape and format name of a dense or sparse weight; raises TypeError/ValueError."""
    if isinstance(weight, SparseWeight):
        shape, fmt = weight.shape, weight.format_name
    elif isinstance(weight, torch.Tensor):
        shape, fmt = tuple(weight.shape), "dense"
    else:
        raise TypeError(
            f"weight must be a torch.Tensor or a sparsecnn SparseWeight, got {type(weight).__name__}"
        )
    if len(shape) != ndim:
        raise ValueError(f"weight must be {ndim}-D, got shape {shape}")
    return shape, fmt


def _check_tensor(x, name: str) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")


def _check_bias(bias, x: torch.Tensor, nout: int):
    if bias is None:
        return None
    _check_tensor(bias, "bias")
    if bias.shape != (nout,):
        raise ValueError(f"bias must have shape ({nout},), got {tuple(bias.shape)}")
    if bias.device != x.device:
        raise ValueError(f"bias is on {bias.device} but input is on {x.device}")
    return bias.to(x.dtype).contiguous()


def _check_dense_weight(weight, x: torch.Tensor) -> None:
    if isinstance(weight, torch.Tensor):
        _check_tensor(weight, "weight")
        if weight.device != x.device:
            raise ValueError(f"weight is on {weight.device} but input is on {x.device}")
        if weight.dtype != x.dtype:
            raise TypeError(f"weight dtype {weight.dtype} does not match input dtype {x.dtype}")


def resolve(problem: Problem, weight, algo: str = "auto"):
    """The kernel and prepared operand that run ``problem`` with ``weight``.

    ``algo="auto"`` asks :func:`sparsecnn.dispatch.choose` (the tuning cache, else the
    heuristic); a name is checked with :func:`sparsecnn.kernels.registry.resolve`. The prepared
    operand comes from the bounded cache of :mod:`sparsecnn.kernels.prepared`.

    Returns
    -------
    (Kernel, Prepared)

    Raises
    ------
    TypeError
        If ``algo`` is not a str, or the kernel does not take the input's dtype.
    ValueError
        Unknown ``algo``, a weight format, device or problem the kernel cannot take, or a
        machine that lacks what it needs (:class:`~sparsecnn.kernels.capabilities.KernelUnavailableError`).
    """
    if not isinstance(algo, str):
        raise TypeError(f"algo must be a str, got {type(algo).__name__}")
    if algo == "auto":
        kernel = registry.resolve(problem, dispatch.choose(problem))
        if kernel.weight_check is not None and kernel.why_not(problem, weight) is not None:
            # a decision measured on another weight of the same problem key that this one
            # cannot take (no dense block for ``hybrid``): the heuristic's choice instead
            kernel = registry.resolve(problem, dispatch.heuristic(problem))
    else:
        kernel = registry.resolve(problem, algo, weight)
    return kernel, prepared.prepare(kernel, weight, problem)


def conv2d(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, *,
           algo: str = "auto", relu: bool = False) -> torch.Tensor:
    """2-D convolution with the semantics of :func:`torch.nn.functional.conv2d`.

    Parameters
    ----------
    x : torch.Tensor (N, C, H, W) or (C, H, W), float32 for sparse kernels
        Input in NCHW layout.
    weight : torch.Tensor (K, C/groups, R, S) or SparseWeight of that shape
        Dense or sparse weight.
    bias : torch.Tensor (K,) or None
    stride, padding, dilation : int or pair of int
        ``padding`` may also be ``"valid"`` or ``"same"`` (stride 1 only), as in PyTorch.
    groups : int
        Divides C and K; ``groups == C == K`` is depthwise.
    algo : str
        A kernel registered for ``conv2d`` (``"dense"``, ``"direct"``, ``"im2col_spmm"``, ...) or
        ``"auto"`` (dispatch chooses; dense for a dense weight).
    relu : bool
        Apply ReLU to the output, fused into the kernel where it supports it.

    Returns
    -------
    torch.Tensor (N, K, OH, OW) (or (K, OH, OW) for 3-D input), the dtype of ``x``.

    Raises
    ------
    TypeError
        Non-tensor input, non-floating dtype, dtype mismatch, non-int geometry, unknown weight type.
    ValueError
        Wrong ndim, channel mismatch, groups not dividing C and K, non-positive stride or dilation,
        negative padding, an input smaller than the (dilated) kernel, bias of the wrong shape,
        device mismatch, or an unknown ``algo`` or one that does not accept the weight's format
        or cannot run on this machine (``KernelUnavailableError``, naming the missing feature).

    Notes
    -----
    Sparse kernels skip the products of zero weights, so an ``inf`` / ``nan`` in the input
    reaches only the outputs that *nonzero* weights connect it to; dense arithmetic (``0 * inf
    = nan``) also spreads it through the zeros. Finite inputs give the dense results up to
    float32 summation order (``docs/engine.md``).
    """
    x4, problem, bias, unbatched = conv2d_problem(x, weight, bias, stride, padding, dilation,
                                                   groups, relu)
    kernel, prep = resolve(problem, weight, algo)
    y = kernel.run(prep, x4.contiguous(), bias)
    return y[0] if unbatched else y


def conv2d_problem(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1,
                   relu=False):
    """Validate the arguments of :func:`conv2d` and build their :class:`~sparsecnn.problem.ConvProblem`.

    Returns
    -------
    (x4, problem, bias, unbatched)
        The input as 4-D, the problem, the bias in the input's dtype (contiguous) or None, and
        whether the input was 3-D. Raises as :func:`conv2d`.
    """
    _check_tensor(x, "input")
    if x.ndim not in (3, 4):
        raise ValueError(f"input must be 4-D (N, C, H, W) or 3-D (C, H, W), got shape {tuple(x.shape)}")
    unbatched = x.ndim == 3
    if unbatched:
        x = x.unsqueeze(0)
    w_shape, fmt = _weight_info(weight, 4)
    _check_dense_weight(weight, x)
    if not isinstance(groups, Integral) or isinstance(groups, bool) or groups < 1:
        raise ValueError(f"groups must be a positive int, got {groups!r}")
    n, c, h, w = x.shape
    k, cg, r, s = w_shape
    if c % groups or k % groups:
        raise ValueError(f"groups={groups} must divide input channels C={c} and output channels K={k}")
    if cg * groups != c:
        raise ValueError(
            f"weight of shape {tuple(w_shape)} expects {cg * groups} input channels "
            f"(C/groups={cg} x groups={groups}), input of shape {tuple(x.shape)} has C={c}"
        )
    stride = _pair(stride, "stride", 1)
    dilation = _pair(dilation, "dilation", 1)
    if isinstance(padding, str):
        if padding == "valid":
            padding = (0, 0)
        elif padding == "same":
            if stride != (1, 1):
                raise ValueError(f"padding='same' needs stride 1, got stride {stride}")
            tot = (dilation[0] * (r - 1), dilation[1] * (s - 1))
            if tot[0] % 2 or tot[1] % 2:
                raise ValueError(f"padding='same' with even dilated kernel extent {tot} is not supported")
            padding = (tot[0] // 2, tot[1] // 2)
        else:
            raise ValueError(f"padding must be an int, a pair, 'valid' or 'same', got {padding!r}")
    padding = _pair(padding, "padding", 0)
    bias = _check_bias(bias, x, k)
    density = weight.density if isinstance(weight, SparseWeight) else 1.0
    problem = ConvProblem(n, c, h, w, k, r, s, stride, padding, dilation, int(groups), bool(relu),
                          fmt, float(density), dtype_name(x.dtype), x.device.type)
    if problem.OH < 1 or problem.OW < 1:
        raise ValueError(
            f"input {h}x{w} with padding {padding} is smaller than the dilated kernel "
            f"{dilation[0] * (r - 1) + 1}x{dilation[1] * (s - 1) + 1}"
        )
    return x, problem, bias, unbatched


def conv2d_pool(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, *,
                pool_kernel, pool_stride=None, pool_padding=0, pool_dilation=1,
                ceil_mode: bool = False, relu: bool = False, algo: str = "auto") -> torch.Tensor:
    """Convolution, optional ReLU, then max-pooling, as one call:
    ``max_pool2d(relu(conv2d(x, weight, ...)), pool_kernel, pool_stride, ...)``.

    A fused kernel (ECR / PECR, Xu et al. 2019) computes the pooled output without writing the
    whole convolution output; the other kernels of op ``"conv2d_pool"`` run a conv2d kernel of
    the same name, then ``torch.nn.functional.max_pool2d`` (``docs/activation.md``).

    Parameters
    ----------
    x, weight, bias, stride, padding, dilation, groups, relu
        As :func:`conv2d`.
    pool_kernel : int or pair of int
        Max-pooling window.
    pool_stride : int, pair of int or None
        Default: ``pool_kernel`` (as PyTorch).
    pool_padding : int or pair of int
        Implicit ``-inf`` padding, at most half the window.
    pool_dilation : int or pair of int
    ceil_mode : bool
        As :func:`torch.nn.functional.max_pool2d`.
    algo : str
        A kernel registered for ``conv2d_pool`` (``"dense"``, ``"im2col_spmm"``, ``"fused_ref"``,
        ...) or ``"auto"``.

    Returns
    -------
    torch.Tensor (N, K, PH, PW) (or (K, PH, PW) for 3-D input)

    Raises
    ------
    TypeError, ValueError
        As :func:`conv2d`; and a non-positive pool window, stride or dilation, negative padding
        or padding over half the window, or an empty pooled output.
    """
    x4, problem, bias, unbatched = conv2d_pool_problem(
        x, weight, bias, stride, padding, dilation, groups, relu, pool_kernel=pool_kernel,
        pool_stride=pool_stride, pool_padding=pool_padding, pool_dilation=pool_dilation,
        ceil_mode=ceil_mode)
    kernel, prep = resolve(problem, weight, algo)
    y = kernel.run(prep, x4.contiguous(), bias)
    return y[0] if unbatched else y


def conv2d_pool_problem(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1,
                        relu=False, *, pool_kernel, pool_stride=None, pool_padding=0,
                        pool_dilation=1, ceil_mode=False):
    """Validate the arguments of :func:`conv2d_pool` and build their
    :class:`~sparsecnn.problem.ConvPoolProblem`.

    Returns
    -------
    (x4, problem, bias, unbatched)
        As :func:`conv2d_problem`. Raises as :func:`conv2d_pool`.
    """
    x4, cp, bias, unbatched = conv2d_problem(x, weight, bias, stride, padding, dilation, groups,
                                             relu)
    pk = _pair(pool_kernel, "pool_kernel", 1)
    ps = pk if pool_stride is None else _pair(pool_stride, "pool_stride", 1)
    pp = _pair(pool_padding, "pool_padding", 0)
    pd = _pair(pool_dilation, "pool_dilation", 1)
    if pp[0] * 2 > pk[0] or pp[1] * 2 > pk[1]:
        raise ValueError(f"pool_padding {pp} must be at most half the pool window {pk}")
    if not isinstance(ceil_mode, bool):
        raise TypeError(f"ceil_mode must be a bool, got {ceil_mode!r}")
    fields = {f.name: getattr(cp, f.name) for f in dataclasses.fields(cp)}
    problem = ConvPoolProblem(**fields, pool_kernel=pk, pool_stride=ps, pool_padding=pp,
                              pool_dilation=pd, ceil_mode=ceil_mode)
    if problem.PH < 1 or problem.PW < 1:
        raise ValueError(f"convolution output {problem.OH}x{problem.OW} is smaller than the "
                         f"dilated pool window {pd[0] * (pk[0] - 1) + 1}x{pd[1] * (pk[1] - 1) + 1} "
                         f"(padding {pp})")
    return x4, problem, bias, unbatched


def linear(x, weight, bias=None, *, algo: str = "auto", relu: bool = False) -> torch.Tensor:
    """Fully connected layer ``y = x W^T + b`` with the semantics of :func:`torch.nn.functional.linear`.

    Parameters
    ----------
    x : torch.Tensor (..., in_features), float32 for sparse kernels
    weight : torch.Tensor (out_features, in_features) or SparseWeight of that shape
    bias : torch.Tensor (out_features,) or None
    algo : str
        ``"dense"``, a sparse linear kernel (``"spmm"``, ``"spmv"``, ...) or ``"auto"``
        (SpMV at batch 1, SpMM above, as dispatch decides).
    relu : bool
        Fuse a ReLU into the output.

    Returns
    -------
    torch.Tensor (..., out_features)

    Raises
    ------
    TypeError, ValueError
        As :func:`conv2d`: wrong types, ``in_features`` mismatch, bias shape, device, unknown algo.
    """
    x2, problem, bias, lead = linear_problem(x, weight, bias, relu)
    kernel, prep = resolve(problem, weight, algo)
    y = kernel.run(prep, x2, bias)
    return y.reshape(*lead, problem.out_features)


def linear_problem(x, weight, bias=None, relu=False):
    """Validate the arguments of :func:`linear` and build their :class:`~sparsecnn.problem.LinearProblem`.

    Returns
    -------
    (x2, problem, bias, lead)
        The input as a contiguous 2-D ``(prod(lead), in_features)``, the problem, the bias or
        None, and the leading shape ``lead`` of the input. Raises as :func:`linear`.
    """
    _check_tensor(x, "input")
    if x.ndim < 1:
        raise ValueError("input must have at least 1 dimension (..., in_features)")
    w_shape, fmt = _weight_info(weight, 2)
    _check_dense_weight(weight, x)
    out_f, in_f = w_shape
    if x.shape[-1] != in_f:
        raise ValueError(
            f"input of shape {tuple(x.shape)} has {x.shape[-1]} features in its last dimension, "
            f"weight of shape {tuple(w_shape)} expects {in_f}"
        )
    bias = _check_bias(bias, x, out_f)
    lead = x.shape[:-1]
    x2 = x.reshape(math.prod(lead), in_f).contiguous()
    density = weight.density if isinstance(weight, SparseWeight) else 1.0
    problem = LinearProblem(x2.shape[0], in_f, out_f, bool(relu), fmt, float(density),
                            dtype_name(x.dtype), x.device.type)
    return x2, problem, bias, lead
