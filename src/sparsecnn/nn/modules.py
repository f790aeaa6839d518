"""Inference modules holding a sparse weight: :class:`SparseConv2d` and :class:`SparseLinear`.

Each module holds a :class:`~sparsecnn.formats.SparseWeight`, a bias, its geometry, a fused-ReLU
flag and the kernel to run, per batch size (``choices``, filled by tuning) or ``"auto"``
(the tuning cache's decision for the input's shape, else a heuristic, see
:func:`sparsecnn.dispatch.choose_layer`). ``"dense"`` runs a densified copy of the weight
through PyTorch (oneDNN): a layer is never forced onto a sparse kernel slower than dense.

Forward path, kept lean because per-layer overhead dominates small models at batch 1: the first
call with a given input shape and dtype goes through :func:`sparsecnn.functional.conv2d` /
:func:`~sparsecnn.functional.linear` (every argument validated, kernel resolved) and remembers a
*plan* ``(kernel function, weight)`` for that shape; later calls with the same shape call the
kernel directly (the validation would repeat on identical arguments, so it is skipped).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .. import functional as Fs
from ..dispatch import choose_layer
from ..formats import SparseWeight, to_sparse
from ..kernels import registry


def _check_training(module: nn.Module) -> None:
    raise RuntimeError(
        f"{type(module).__name__} is inference-only (its sparse kernels have no backward); "
        "call model.eval() or run under torch.no_grad() / torch.inference_mode()"
    )


class _SparseBase(nn.Module):
    op = ""

    def __init__(self, weight: SparseWeight, bias, *, relu: bool, algo: str):
        super().__init__()
        if not isinstance(weight, SparseWeight):
            raise TypeError(f"weight must be a sparsecnn SparseWeight, got {type(weight).__name__}")
        if not isinstance(algo, str):
            raise TypeError(f"algo must be a str, got {type(algo).__name__}")
        if algo != "auto":
            registry.get(self.op, algo)  # ValueError listing the registered kernels
        nout = weight.shape[0]
        if bias is not None:
            if not isinstance(bias, torch.Tensor) or not bias.is_floating_point():
                raise TypeError(f"bias must be a floating-point torch.Tensor or None, got {type(bias).__name__}")
            if tuple(bias.shape) != (nout,):
                raise ValueError(f"bias must have shape ({nout},), got {tuple(bias.shape)}")
            bias = bias.detach().to(torch.float32).contiguous()
        self.weight = weight
        self.register_buffer("bias", bias)
        self.relu = bool(relu)
        self.algo = algo
        #: batch size -> kernel name (set by tuning or :meth:`set_choice`)
        self.choices: dict[int, str] = {}
        #: batch size -> TuneResult as a dict (what tuning measured)
        self.tuning: dict[int, dict] = {}
        self._plans: dict = {}
        self._dense: torch.Tensor | None = None

    # -- state -------------------------------------------------------------------------------
    def dense_weight(self, dtype=torch.float32) -> torch.Tensor:
        """The densified weight (cached; built on first use)."""
        if self._dense is None or self._dense.dtype != dtype:
            self._dense = self.weight.to_dense().to(dtype).contiguous()
        return self._dense

    def set_choice(self, batch: int, name: str) -> None:
        """Run inputs of batch size ``batch`` with kernel ``name`` (``"dense"`` or a sparse one)."""
        registry.get(self.op, name)
        self.choices[int(batch)] = name
        self._plans.clear()

    def reset_plans(self) -> None:
        """Forget the per-shape plans (after changing ``algo``, ``choices`` or the weight)."""
        self._plans.clear()
        self._dense = None

    def kernel_for(self, problem: dict) -> str:
        """The kernel this module runs ``problem`` with: ``algo`` if fixed, else the tuned choice
        for the batch, else :func:`sparsecnn.dispatch.choose_layer`."""
        if self.algo != "auto":
            return self.algo
        batch = problem["N"] if self.op == "conv2d" else problem["B"]
        name = self.choices.get(batch)
        return name if name is not None else choose_layer(self.op, self.weight, problem)

    @property
    def nbytes(self) -> int:
        """Bytes of the stored sparse weight (indices + values) and bias."""
        b = 0 if self.bias is None else self.bias.numel() * self.bias.element_size()
        return self.weight.nbytes + b

    @property
    def dense_nbytes(self) -> int:
        """Bytes the same layer takes dense (float32 weight + bias)."""
        b = 0 if self.bias is None else self.bias.numel() * 4
        return math.prod(self.weight.shape) * 4 + b

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_plans"] = {}
        state["_dense"] = None
        return state

    def _run_weight(self, name: str, dtype) -> object:
        return self.dense_weight(dtype) if name == "dense" else self.weight


class SparseConv2d(_SparseBase):
    """2-D convolution with a sparse weight, for inference (NCHW, float32).

    Parameters
    ----------
    weight : SparseWeight of shape (K, C/groups, R, S)
    bias : torch.Tensor (K,) or None
    stride, padding, dilation : int or pair of int
    groups : int
    relu : bool
        Apply ReLU to the output, fused into the kernel.
    algo : str
        A registered conv2d kernel name (``"dense"`` runs the densified weight) or ``"auto"``
        (per batch: ``choices``, else the tuning cache, else the heuristic).

    Raises
    ------
    TypeError, ValueError
        On a non-sparse weight, a bias of the wrong shape, bad geometry or an unknown ``algo``.
    RuntimeError
        From ``forward`` in training mode with gradients enabled (no backward exists).

    See Also
    --------
    sparsecnn.functional.conv2d, sparsecnn.nn.sparsify_
    """

    op = "conv2d"

    def __init__(self, weight: SparseWeight, bias=None, stride=1, padding=0, dilation=1,
                 groups=1, *, relu: bool = False, algo: str = "auto"):
        super().__init__(weight, bias, relu=relu, algo=algo)
        if not weight.is_conv:
            raise ValueError(f"SparseConv2d needs a 4-D (K, C/groups, R, S) weight, got shape {weight.shape}")
        self.stride = Fs._pair(stride, "stride", 1)
        self.padding = Fs._pair(padding, "padding", 0)
        self.dilation = Fs._pair(dilation, "dilation", 1)
        if not isinstance(groups, int) or isinstance(groups, bool) or groups < 1:
            raise ValueError(f"groups must be a positive int, got {groups!r}")
        k, cg, r, s = weight.shape
        if k % groups:
            raise ValueError(f"groups={groups} must divide the output channels K={k}")
        self.groups = groups
        self.in_channels, self.out_channels, self.kernel_size = cg * groups, k, (r, s)

    @classmethod
    def from_dense(cls, conv: nn.Conv2d, *, format: str = "csr", relu: bool = False,
                   algo: str = "auto", **format_options) -> "SparseConv2d":
        """Convert an ``nn.Conv2d`` (its zeros are dropped; zero padding mode only).

        Raises
        ------
        TypeError
            If ``conv`` is not an ``nn.Conv2d``.
        ValueError
            If its ``padding_mode`` is not ``"zeros"`` or its padding string cannot be resolved.
        """
        if not isinstance(conv, nn.Conv2d):
            raise TypeError(f"expected an nn.Conv2d, got {type(conv).__name__}")
        if conv.padding_mode != "zeros":
            raise ValueError(f"only padding_mode='zeros' is supported, got {conv.padding_mode!r}")
        padding = conv.padding
        if isinstance(padding, str):
            if padding == "valid":
                padding = (0, 0)
            else:  # "same" (PyTorch requires stride 1 for it)
                tot = [d * (k - 1) for d, k in zip(conv.dilation, conv.kernel_size)]
                if any(t % 2 for t in tot):
                    raise ValueError(f"padding='same' with even dilated kernel extent {tot} is not supported")
                padding = (tot[0] // 2, tot[1] // 2)
        w = to_sparse(conv.weight.detach().float(), format=format, **format_options)
        return cls(w, conv.bias, conv.stride, padding, conv.dilation, conv.groups,
                   relu=relu, algo=algo)

    def problem(self, x_shape, dtype: str = "float32", device: str = "cpu") -> dict:
        """The problem dict for an input of ``x_shape`` (see :func:`sparsecnn.functional.conv2d_problem`)."""
        p = Fs.conv2d_problem(tuple(x_shape), self.weight.shape, self.stride, self.padding,
                              self.dilation, self.groups, density=self.weight.density,
                              fmt=self.weight.format_name, dtype=dtype, device=device)
        p["relu"] = self.relu
        return p

    def run(self, x: torch.Tensor, name: str) -> torch.Tensor:
        """Run with kernel ``name`` through the validating functional API (tuning, tests)."""
        return Fs.conv2d(x, self._run_weight(name, x.dtype), self.bias, self.stride, self.padding,
                         self.dilation, self.groups, algo=name, relu=self.relu)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Convolve ``x`` (N, C, H, W) -> (N, K, OH, OW); 3-D (C, H, W) input is accepted too."""
        if self.training and torch.is_grad_enabled():
            _check_training(self)
        try:
            plan = self._plans.get((x.shape, x.dtype))
        except AttributeError:
            raise TypeError(f"input must be a torch.Tensor, got {type(x).__name__}") from None
        if plan is not None:
            return plan[0](x.contiguous(), plan[1], self.bias, self.stride, self.padding,
                           self.dilation, self.groups, self.relu)
        if x.ndim == 3:  # unbatched (C, H, W)
            return self.forward(x.unsqueeze(0))[0]
        if x.ndim != 4:
            raise ValueError(f"input must be 4-D (N, C, H, W) or 3-D (C, H, W), got shape {tuple(x.shape)}")
        name = self.kernel_for(self.problem(x.shape, str(x.dtype).removeprefix("torch."),
                                            x.device.type))
        y = self.run(x, name)  # validates every argument once for this shape
        self._plans[(x.shape, x.dtype)] = (registry.get("conv2d", name).fn,
                                           self._run_weight(name, x.dtype))
        return y

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}, dilation={self.dilation}, "
                f"groups={self.groups}, bias={self.bias is not None}, relu={self.relu}, "
                f"format={self.weight.format_name}, density={self.weight.density:.4f}, "
                f"algo={self.algo!r}, choices={self.choices}")


class SparseLinear(_SparseBase):
    """Fully connected layer ``y = x W^T + b`` with a sparse weight, for inference.

    Parameters
    ----------
    weight : SparseWeight of shape (out_features, in_features)
    bias : torch.Tensor (out_features,) or None
    relu : bool
        Fuse a ReLU into the output.
    algo : str
        A registered linear kernel (``"dense"``, ``"spmv"``, ``"spmm"``, ...) or ``"auto"``.

    Raises
    ------
    TypeError, ValueError
        As :class:`SparseConv2d`.
    RuntimeError
        From ``forward`` in training mode with gradients enabled.
    """

    op = "linear"

    def __init__(self, weight: SparseWeight, bias=None, *, relu: bool = False, algo: str = "auto"):
        super().__init__(weight, bias, relu=relu, algo=algo)
        if weight.is_conv:
            raise ValueError(f"SparseLinear needs a 2-D (out, in) weight, got shape {weight.shape}")
        self.out_features, self.in_features = weight.shape

    @classmethod
    def from_dense(cls, linear: nn.Linear, *, format: str = "csr", relu: bool = False,
                   algo: str = "auto", **format_options) -> "SparseLinear":
        """Convert an ``nn.Linear`` (its zeros are dropped)."""
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"expected an nn.Linear, got {type(linear).__name__}")
        w = to_sparse(linear.weight.detach().float(), format=format, **format_options)
        return cls(w, linear.bias, relu=relu, algo=algo)

    def problem(self, x_shape, dtype: str = "float32", device: str = "cpu") -> dict:
        """The linear problem dict for a 2-D input of ``x_shape``."""
        return {"op": "linear", "B": int(x_shape[0]), "in": self.in_features,
                "out": self.out_features, "density": float(self.weight.density),
                "format": self.weight.format_name, "dtype": dtype, "device": device,
                "relu": self.relu}

    def run(self, x: torch.Tensor, name: str) -> torch.Tensor:
        """Run with kernel ``name`` through the validating functional API."""
        return Fs.linear(x, self._run_weight(name, x.dtype), self.bias, algo=name, relu=self.relu)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` (..., in_features) -> (..., out_features)."""
        if self.training and torch.is_grad_enabled():
            _check_training(self)
        try:
            plan = self._plans.get((x.shape, x.dtype))
        except AttributeError:
            raise TypeError(f"input must be a torch.Tensor, got {type(x).__name__}") from None
        if plan is not None:
            return plan[0](x.contiguous(), plan[1], self.bias, self.relu)
        if x.ndim != 2:  # (..., in): run as (prod(...), in)
            if x.ndim < 1 or x.shape[-1] != self.in_features:
                raise ValueError(f"input must have shape (..., {self.in_features}), got {tuple(x.shape)}")
            lead = x.shape[:-1]
            return self.forward(x.reshape(math.prod(lead), self.in_features)).reshape(
                *lead, self.out_features)
        name = self.kernel_for(self.problem(x.shape, str(x.dtype).removeprefix("torch."),
                                            x.device.type))
        y = self.run(x, name)
        self._plans[(x.shape, x.dtype)] = (registry.get("linear", name).fn,
                                           self._run_weight(name, x.dtype))
        return y

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, relu={self.relu}, format={self.weight.format_name}, "
                f"density={self.weight.density:.4f}, algo={self.algo!r}, choices={self.choices}")
