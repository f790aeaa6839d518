"""Public functional API: :func:`conv2d`, :func:`conv1d` and :func:`linear` with
``torch.nn.functional`` semantics.

The weight may be a dense tensor or any :class:`~sparsecnn.formats.SparseWeight`; ``algo`` picks
a registered kernel by name, or ``"auto"`` lets :mod:`sparsecnn.dispatch` choose. Every argument
is validated here, once, so kernels only compute.

Gradients: kernels compute on plain arrays (no autograd). When gradients are enabled and the
input or bias requires grad, :func:`run_kernel` runs the kernel inside an
``torch.autograd.Function`` whose backward is the transposed product: ``grad_x = grad_y W``
(linear), ``grad_x = conv2d_input(grad_y, W)`` (:func:`torch.nn.grad.conv2d_input`, the dense
transposed convolution, with the densified weight), ``grad_bias = grad_y`` summed over all but
the channel axis, through the fused ReLU's mask ``y > 0`` as :func:`torch.relu`'s backward.
A sparse weight has no gradient (it is frozen data, not a tensor); a dense ``torch.Tensor``
weight runs PyTorch's own differentiable op (weight gradient included).
"""

from __future__ import annotations

import dataclasses
import math
import weakref
from numbers import Integral

import torch

from . import dispatch
from .formats import SparseWeight
from .dispatch.tuning import default_cache, thread_counts
from .kernels import prepared, registry
from .kernels.capabilities import numba_threads
from .problem import (ConvPoolProblem, ConvProblem, LinearProblem, Problem, conv_output_size,
                      dtype_name)

__all__ = ["conv2d", "conv1d", "conv2d_pool", "linear", "resolve", "run_kernel", "conv2d_problem",
           "conv1d_problem", "conv2d_pool_problem",
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


class _SparseOp(torch.autograd.Function):
    """``y = run(prepared, x, bias)`` with the gradients of ``x`` and ``bias`` (module
    docstring); the prepared operand's weight is a :class:`~sparsecnn.formats.SparseWeight`."""

    @staticmethod
    def forward(ctx, x, bias, run, prep):
        y = run(prep, x, bias)
        ctx.prep, ctx.x_shape = prep, x.shape
        # the mask, not y: a caller may update y in place (compact's residual adds)
        ctx.save_for_backward(y > 0 if prep.problem.relu else None)
        return y

    @staticmethod
    def backward(ctx, gy):
        prep = ctx.prep
        p = prep.problem
        (mask,) = ctx.saved_tensors
        if mask is not None:
            gy = gy * mask
        gx = gb = None
        if ctx.needs_input_grad[0]:
            w = _dense_weight(prep, gy)
            if p.op == "conv2d":
                gx = torch.nn.grad.conv2d_input(ctx.x_shape, w, gy, p.stride, p.padding,
                                                p.dilation, p.groups)
            else:
                gx = gy.mm(w)
        if ctx.needs_input_grad[1]:
            gb = gy.sum((0, 2, 3)) if p.op == "conv2d" else gy.sum(0)
        return gx, gb, None, None


def _dense_weight(prep, like: torch.Tensor) -> torch.Tensor:
    """The densified weight in ``like``'s dtype and device: the dense kernel's prepared copy,
    else a new one (not kept: backward is off the inference path)."""
    if prep.kernel.name == "dense" and isinstance(prep.operand, torch.Tensor):
        return prep.operand.to(device=like.device, dtype=like.dtype)  # a no-op when they match
    return prep.weight.to_dense().to(device=like.device, dtype=like.dtype)


def _needs_grad(x, bias) -> bool:
    return torch.is_grad_enabled() and (x.requires_grad
                                        or (bias is not None and bias.requires_grad))


def run_kernel(run, prep, x: torch.Tensor, bias) -> torch.Tensor:
    """``run(prep, x, bias)``, differentiable in ``x`` and ``bias`` when gradients are enabled
    and either requires grad (the one place sparse ops meet autograd; see the module docstring).

    Parameters
    ----------
    run : callable
        A kernel's ``run``.
    prep : Prepared
        Its prepared operand (:func:`resolve`).
    x, bias : torch.Tensor
        Validated as by :func:`conv2d_problem` / :func:`linear_problem` (``x`` contiguous).
    """
    if _needs_grad(x, bias) and not isinstance(prep.weight, torch.Tensor):
        return _SparseOp.apply(x, bias, run, prep)
    return run(prep, x, bias)


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

    Differentiable in ``x`` and ``bias`` through every kernel (:func:`run_kernel`); a sparse
    weight has no gradient.
    """
    key = _call_key(x, weight, algo, stride, padding, dilation, groups, relu)
    hit = _CALLS.get(key) if key is not None else None
    if hit is not None:
        prep = hit()
        if prep is not None and prep.weight is weight:  # (and not an id reused by another)
            if bias is not None:
                bias = _check_bias(bias, x, prep.problem.K)
            x4 = x.unsqueeze(0) if x.ndim == 3 else x
            y = run_kernel(prep.kernel.run, prep, x4.contiguous(), bias)
            return y[0] if x.ndim == 3 else y
    x4, problem, bias, unbatched = conv2d_problem(x, weight, bias, stride, padding, dilation,
                                                   groups, relu)
    kernel, prep = resolve(problem, weight, algo)
    if key is not None:
        _remember(key, prep)
    y = run_kernel(kernel.run, prep, x4.contiguous(), bias)
    return y[0] if unbatched else y


#: Resolved calls of :func:`conv2d` / :func:`conv1d` with a sparse weight, so that a repeated
#: call skips validation, dispatch and the prepared-cache look-up (about 20 us of Python at
#: batch 1; a 99 % sparse layer runs in a few hundred): :func:`_call_key` -> weak reference to
#: the :class:`~sparsecnn.kernels.prepared.Prepared` operand (so this memo keeps nothing alive:
#: when the prepared cache drops an operand, or its weight dies, the entry is dead and the call
#: takes the full path again).
_CALLS: dict = {}
_CALLS_MAX = 512


def _call_key(x, weight, algo, *args):
    """The memo key of a call: everything validation and dispatch depend on except the bias
    (checked on every call): the weight's identity (formats are immutable), the input's shape,
    dtype and device, the geometry arguments as given, ``algo``, the Numba thread count (plans
    split work per thread), the registry's generation and, for ``"auto"``, the tuning cache's
    and thread counts' signature (as :func:`sparsecnn.dispatch.choose` memoises). None when the
    call cannot be memoised (a tensor weight, unhashable arguments)."""
    if not isinstance(weight, SparseWeight) or not isinstance(x, torch.Tensor):
        return None
    sig = (default_cache().signature(), thread_counts()) if algo == "auto" else None
    key = (id(weight), algo, x.shape, x.dtype, x.device, *args, numba_threads(),
           registry.generation(), sig)
    try:
        hash(key)
    except TypeError:
        return None
    return key


def _remember(key, prep) -> None:
    if len(_CALLS) >= _CALLS_MAX:
        _CALLS.clear()
    _CALLS[key] = weakref.ref(prep)


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


def _single(value, name: str, minimum: int) -> int:
    """An int (or a 1-tuple / 1-list of an int) >= ``minimum``; raises TypeError / ValueError."""
    if type(value) is int and value >= minimum:
        return value
    if isinstance(value, (tuple, list)) and len(value) == 1:
        value = value[0]
    if not isinstance(value, Integral) or isinstance(value, bool):
        raise TypeError(f"{name} must be an int or a 1-tuple of int, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def conv1d_weight_2d(weight):
    """The conv2d view ``(K, C/groups, 1, S)`` of a 1-D convolution weight.

    A dense ``(K, C/groups, S)`` tensor becomes its ``unsqueeze(2)`` view; a
    :class:`~sparsecnn.formats.SparseWeight` already stores a 1-D weight as ``(K, C/groups, 1,
    S)`` (``to_sparse(w.unsqueeze(2))``, what :class:`sparsecnn.nn.SparseConv1d` holds: the same
    CSR columns ``c * S + s``) and is returned as it is.

    Raises
    ------
    TypeError
        Neither a tensor nor a sparse weight.
    ValueError
        A dense weight that is not 3-D, or a sparse one that is not ``(K, C/groups, 1, S)``.
    """
    if isinstance(weight, SparseWeight):
        if len(weight.shape) != 4 or weight.shape[2] != 1:
            raise ValueError(f"a sparse conv1d weight must have shape (K, C/groups, 1, S) "
                             f"(to_sparse(w.unsqueeze(2))), got {tuple(weight.shape)}")
        return weight
    if isinstance(weight, torch.Tensor):
        if weight.ndim != 3:
            raise ValueError(f"weight must be 3-D (K, C/groups, S), got shape {tuple(weight.shape)}")
        return weight.unsqueeze(2)
    raise TypeError(
        f"weight must be a torch.Tensor or a sparsecnn SparseWeight, got {type(weight).__name__}"
    )


def conv1d_problem(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1,
                   relu=False):
    """Validate the arguments of :func:`conv1d` and build the :class:`~sparsecnn.problem.ConvProblem`
    of its conv2d view (``H = R = 1``).

    Returns
    -------
    (x4, weight4, problem, bias, unbatched)
        The input as ``(N, C, 1, L)``, the weight as ``(K, C/groups, 1, S)``
        (:func:`conv1d_weight_2d`), the problem, the bias (or None) and whether the input was
        2-D. Raises as :func:`conv1d`.
    """
    _check_tensor(x, "input")
    if x.ndim not in (2, 3):
        raise ValueError(f"input must be 3-D (N, C, L) or 2-D (C, L), got shape {tuple(x.shape)}")
    unbatched = x.ndim == 2
    w4 = conv1d_weight_2d(weight)
    stride = _single(stride, "stride", 1)
    dilation = _single(dilation, "dilation", 1)
    if isinstance(padding, str):
        if padding not in ("valid", "same"):
            raise ValueError(f"padding must be an int, 'valid' or 'same', got {padding!r}")
        if padding == "same" and stride != 1:
            raise ValueError(f"padding='same' needs stride 1, got stride {stride}")
        pad2 = padding
    else:
        pad2 = (0, _single(padding, "padding", 0))
    x4 = (x.unsqueeze(0) if unbatched else x).unsqueeze(2)
    x4, problem, bias, _ = conv2d_problem(x4, w4, bias, (1, stride), pad2, (1, dilation), groups,
                                          relu)
    return x4, w4, problem, bias, unbatched


def conv1d(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, *,
           algo: str = "auto", relu: bool = False) -> torch.Tensor:
    """1-D convolution with the semantics of :func:`torch.nn.functional.conv1d`, run by the
    conv2d kernels on its ``H = R = 1`` view (the same registry, dispatch, tuning cache and
    prepared operands as :func:`conv2d`).

    Parameters
    ----------
    x : torch.Tensor (N, C, L) or (C, L), float32 for sparse kernels
    weight : torch.Tensor (K, C/groups, S), or SparseWeight of shape (K, C/groups, 1, S)
        A sparse 1-D weight is stored as its conv2d view: ``to_sparse(w.unsqueeze(2))``.
    bias : torch.Tensor (K,) or None
    stride, padding, dilation : int (or a 1-tuple)
        ``padding`` may also be ``"valid"`` or ``"same"`` (stride 1 only).
    groups : int
    algo : str
        A registered ``conv2d`` kernel name or ``"auto"`` (as :func:`conv2d`).
    relu : bool
        Fuse a ReLU into the output.

    Returns
    -------
    torch.Tensor (N, K, OL) (or (K, OL) for 2-D input), ``OL = (L + 2p - d (S - 1) - 1) // s + 1``.

    Raises
    ------
    TypeError, ValueError
        As :func:`conv2d`, with 1-D shapes (an input that is not 2-D/3-D, a dense weight that is
        not 3-D, a sparse weight whose third dimension is not 1).
    """
    key = _call_key(x, weight, algo, "conv1d", stride, padding, dilation, groups, relu)
    hit = _CALLS.get(key) if key is not None else None
    if hit is not None:
        prep = hit()
        if prep is not None and prep.weight is weight:
            if bias is not None:
                bias = _check_bias(bias, x, prep.problem.K)
            x4 = (x.unsqueeze(0) if x.ndim == 2 else x).unsqueeze(2)
            y = run_kernel(prep.kernel.run, prep, x4.contiguous(), bias).squeeze(2)
            return y[0] if x.ndim == 2 else y
    x4, w4, problem, bias, unbatched = conv1d_problem(x, weight, bias, stride, padding, dilation,
                                                      groups, relu)
    kernel, prep = resolve(problem, w4, algo)
    if key is not None:
        _remember(key, prep)
    y = run_kernel(kernel.run, prep, x4.contiguous(), bias).squeeze(2)
    return y[0] if unbatched else y


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
    if _needs_grad(x, bias) and not isinstance(weight, torch.Tensor):
        # differentiable: the sparse conv (run_kernel's backward), then torch's max_pool2d
        y = conv2d(x4, weight, bias, stride, padding, dilation, groups, relu=relu,
                   algo=algo if algo in registry.names("conv2d") else "auto")
        y = torch.nn.functional.max_pool2d(y, problem.pool_kernel, problem.pool_stride,
                                           problem.pool_padding, problem.pool_dilation,
                                           ceil_mode=problem.ceil_mode)
        return y[0] if unbatched else y
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

    Notes
    -----
    Differentiable in ``x`` and ``bias`` through every kernel (:func:`run_kernel`).
    """
    x2, problem, bias, lead = linear_problem(x, weight, bias, relu)
    kernel, prep = resolve(problem, weight, algo)
    y = run_kernel(kernel.run, prep, x2, bias)
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
