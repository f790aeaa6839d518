"""Inference modules holding a sparse weight: :class:`SparseConv2d` and :class:`SparseLinear`.

Each module holds a :class:`~sparsecnn.formats.SparseWeight`, a bias, its geometry, a fused-ReLU
flag and the kernel to run: ``algo`` fixed by name, or ``"auto"``: the choice tuning made for the
input's signature (``choices``, keyed by the :class:`~sparsecnn.problem.Problem` key of the
input's shape, dtype and device), else :func:`sparsecnn.dispatch.choose` -- the same policy as
:func:`sparsecnn.conv2d` with ``algo="auto"``. ``"dense"`` runs PyTorch on the densified weight
(kept by the prepared-operand cache): a layer is never forced onto a sparse kernel slower than
dense.

Forward path, kept lean because per-layer overhead dominates small models at batch 1: the first
call with a given input signature (shape, dtype, device) validates every argument and resolves
the kernel and its prepared operand exactly as :func:`sparsecnn.conv2d` does
(:func:`sparsecnn.functional.conv2d_problem`, :func:`sparsecnn.functional.resolve`) and remembers
``(kernel.run, prepared)`` for that signature; later calls with the same signature call the
kernel directly.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .. import dispatch
from .. import functional as Fs
from ..formats import SparseWeight, to_sparse
from ..kernels import prepared, registry
from ..problem import ConvProblem, LinearProblem, dtype_name


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
        #: problem key (input signature) -> kernel name (set by tuning or :meth:`set_choice`)
        self.choices: dict[str, str] = {}
        #: problem key -> TuneResult as a dict (what tuning measured), with its "batch"
        self.tuning: dict[str, dict] = {}
        self._plans: dict = {}

    # -- state -------------------------------------------------------------------------------
    def dense_weight(self, dtype=torch.float32) -> torch.Tensor:
        """The densified weight (a new tensor)."""
        return self.weight.to_dense().to(dtype).contiguous()

    def set_choice(self, x_shape, name: str, dtype=torch.float32, device="cpu") -> None:
        """Run inputs of shape ``x_shape`` (and ``dtype``, ``device``) with kernel ``name``
        (``"dense"`` or a sparse one)."""
        registry.get(self.op, name)
        self.choices[self.problem(tuple(x_shape), dtype_name(dtype), str(device)).key()] = name
        self._plans.clear()

    def reset_plans(self) -> None:
        """Forget the per-signature plans (after changing ``algo``, ``choices`` or the weight)."""
        self._plans.clear()

    def kernel_for(self, problem) -> str:
        """The kernel this module runs ``problem`` with: ``algo`` if fixed, else the tuned choice
        for its signature, else :func:`sparsecnn.dispatch.choose`."""
        if self.algo != "auto":
            return self.algo
        name = self.choices.get(problem.key())
        return name if name is not None else dispatch.choose(problem)

    @property
    def nbytes(self) -> int:
        """Bytes of the stored sparse weight (indices + values) and bias."""
        b = 0 if self.bias is None else self.bias.numel() * self.bias.element_size()
        return self.weight.nbytes + b

    @property
    def held_nbytes(self) -> int:
        """Bytes this layer holds now: :attr:`nbytes` plus what its kernels prepared from the
        weight and keep (a dense copy when the layer runs dense, offsets, plans)."""
        return self.nbytes + prepared.CACHE.held_nbytes(self.weight)

    @property
    def dense_nbytes(self) -> int:
        """Bytes the same layer takes dense (float32 weight + bias)."""
        b = 0 if self.bias is None else self.bias.numel() * 4
        return math.prod(self.weight.shape) * 4 + b

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_plans"] = {}
        return state

    def _apply(self, fn, *args, **kwargs):
        # .to() / .float() / .cuda() replace the bias buffer: plans hold the old one
        self._plans.clear()
        return super()._apply(fn, *args, **kwargs)

    def _plan(self, x: torch.Tensor, name: str | None = None):
        """Validate, resolve and remember ``(kernel.run, prepared)`` for ``x``'s signature;
        ``name`` overrides the module's choice (tuning runs each candidate)."""
        problem, bias = self._problem_of(x)
        kernel, prep = Fs.resolve(problem, self.weight, name or self.kernel_for(problem))
        if name is None:
            self._plans[(x.shape, x.dtype, x.device)] = (kernel.run, prep, bias)
        return kernel.run, prep, bias


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

    def problem(self, x_shape, dtype: str = "float32", device: str = "cpu") -> ConvProblem:
        """The :class:`~sparsecnn.problem.ConvProblem` of an input of ``x_shape`` (N, C, H, W)."""
        return ConvProblem.from_shapes(tuple(x_shape), self.weight.shape, self.stride,
                                       self.padding, self.dilation, self.groups, relu=self.relu,
                                       format=self.weight.format_name,
                                       density=float(self.weight.density), dtype=dtype,
                                       device=device)

    def _problem_of(self, x: torch.Tensor):
        _, problem, bias, _ = Fs.conv2d_problem(x, self.weight, self.bias, self.stride,
                                                self.padding, self.dilation, self.groups,
                                                self.relu)
        return problem, bias

    def run(self, x: torch.Tensor, name: str) -> torch.Tensor:
        """Run with kernel ``name`` through the validating functional API (tuning, tests)."""
        return Fs.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation,
                         self.groups, algo=name, relu=self.relu)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Convolve ``x`` (N, C, H, W) -> (N, K, OH, OW); 3-D (C, H, W) input is accepted too."""
        if self.training and torch.is_grad_enabled():
            _check_training(self)
        try:
            plan = self._plans.get((x.shape, x.dtype, x.device))
        except AttributeError:
            raise TypeError(f"input must be a torch.Tensor, got {type(x).__name__}") from None
        if plan is None:
            if x.ndim == 3:  # unbatched (C, H, W)
                return self.forward(x.unsqueeze(0))[0]
            if not isinstance(x, torch.Tensor) or x.ndim != 4:
                raise ValueError(f"input must be 4-D (N, C, H, W) or 3-D (C, H, W), got shape "
                                 f"{tuple(x.shape)}")
            plan = self._plan(x)
        return plan[0](plan[1], x.contiguous(), plan[2])

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

    def problem(self, x_shape, dtype: str = "float32", device: str = "cpu") -> LinearProblem:
        """The :class:`~sparsecnn.problem.LinearProblem` of a 2-D input of ``x_shape``."""
        return LinearProblem(int(x_shape[0]), self.in_features, self.out_features, self.relu,
                             self.weight.format_name, float(self.weight.density), dtype, device)

    def _problem_of(self, x: torch.Tensor):
        _, problem, bias, _ = Fs.linear_problem(x, self.weight, self.bias, self.relu)
        return problem, bias

    def run(self, x: torch.Tensor, name: str) -> torch.Tensor:
        """Run with kernel ``name`` through the validating functional API."""
        return Fs.linear(x, self.weight, self.bias, algo=name, relu=self.relu)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` (..., in_features) -> (..., out_features)."""
        if self.training and torch.is_grad_enabled():
            _check_training(self)
        try:
            plan = self._plans.get((x.shape, x.dtype, x.device))
        except AttributeError:
            raise TypeError(f"input must be a torch.Tensor, got {type(x).__name__}") from None
        if plan is None:
            if x.ndim != 2:  # (..., in): run as (prod(...), in)
                if x.ndim < 1 or x.shape[-1] != self.in_features:
                    raise ValueError(f"input must have shape (..., {self.in_features}), got "
                                     f"{tuple(x.shape)}")
                lead = x.shape[:-1]
                return self.forward(x.reshape(math.prod(lead), self.in_features)).reshape(
                    *lead, self.out_features)
            plan = self._plan(x)
        return plan[0](plan[1], x.contiguous(), plan[2])

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, relu={self.relu}, format={self.weight.format_name}, "
                f"density={self.weight.density:.4f}, algo={self.algo!r}, choices={self.choices}")
