"""Public functional API: :func:`conv2d` and :func:`linear` with ``torch.nn.functional`` semantics.

The weight may be a dense tensor or any :class:`~sparsecnn.formats.SparseWeight`; ``algo`` picks
a registered kernel by name, or ``"auto"`` lets :mod:`sparsecnn.dispatch` choose. Every argument
is validated here, once, so kernels only compute.
"""

from __future__ import annotations

import math
from numbers import Integral

import torch

from . import dispatch
from .formats import SparseWeight
from .kernels import registry


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


def _kernel_for(op: str, algo: str, fmt: str, weight, problem: dict):
    if not isinstance(algo, str):
        raise TypeError(f"algo must be a str, got {type(algo).__name__}")
    name = dispatch.choose(op, weight, problem) if algo == "auto" else algo
    kernel = registry.runnable(op, name)
    if fmt not in kernel.formats:
        raise ValueError(
            f"{op} kernel {name!r} accepts weight formats {kernel.formats}, got {fmt!r}; "
            f"kernels for {fmt!r}: {[k.name for k in registry.candidates(op, fmt)]}"
        )
    if kernel.supports is not None and not kernel.supports(problem):
        raise ValueError(f"{op} kernel {name!r} does not support this problem: {problem}")
    if kernel.name != "dense" and problem["dtype"] != "float32":
        raise TypeError(f"sparse kernels take float32 input, got {problem['dtype']}")
    if kernel.backend == "cpu" and problem["device"] != "cpu":
        raise ValueError(f"kernel {name!r} runs on the CPU, but input is on {problem['device']}")
    return kernel


def conv_output_size(size: int, kernel: int, stride: int, padding: int, dilation: int) -> int:
    """Output length along one axis: ``(size + 2p - d (k - 1) - 1) // s + 1``."""
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def conv2d_problem(x_shape, w_shape, stride, padding, dilation, groups, *, density=1.0,
                   fmt="dense", dtype="float32", device="cpu") -> dict:
    """The problem description dispatch and tuning key on (a plain dict of ints and strings)."""
    n, c, h, w = x_shape
    k, _, r, s = w_shape
    return {
        "op": "conv2d", "N": n, "C": c, "H": h, "W": w, "K": k, "R": r, "S": s,
        "stride": tuple(stride), "padding": tuple(padding), "dilation": tuple(dilation),
        "groups": groups, "OH": conv_output_size(h, r, stride[0], padding[0], dilation[0]),
        "OW": conv_output_size(w, s, stride[1], padding[1], dilation[1]),
        "density": float(density), "format": fmt, "dtype": dtype, "device": device,
    }


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
        device mismatch, or an unknown ``algo`` or one that does not accept the weight's format.
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
    problem = conv2d_problem(x.shape, w_shape, stride, padding, dilation, groups, density=density,
                             fmt=fmt, dtype=str(x.dtype).removeprefix("torch."),
                             device=x.device.type)
    if problem["OH"] < 1 or problem["OW"] < 1:
        raise ValueError(
            f"input {h}x{w} with padding {padding} is smaller than the dilated kernel "
            f"{dilation[0] * (r - 1) + 1}x{dilation[1] * (s - 1) + 1}"
        )
    kernel = _kernel_for("conv2d", algo, fmt, weight, problem)
    y = kernel.fn(x.contiguous(), weight, bias, stride, padding, dilation, groups, bool(relu))
    return y[0] if unbatched else y


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
    problem = {"op": "linear", "B": x2.shape[0], "in": in_f, "out": out_f, "density": float(density),
               "format": fmt, "dtype": str(x.dtype).removeprefix("torch."), "device": x.device.type}
    kernel = _kernel_for("linear", algo, fmt, weight, problem)
    y = kernel.fn(x2, weight, bias, bool(relu))
    return y.reshape(*lead, out_f)
