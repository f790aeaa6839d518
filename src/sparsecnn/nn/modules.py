"""Inference modules holding a sparse weight: :class:`SparseConv2d`, :class:`SparseConv1d` (its
``H = 1`` view) and :class:`SparseLinear`.

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

State (PyTorch semantics): ``state_dict()`` holds the sparse weight -- each array of its format
as a tensor ``weight_<array>`` (``weight_rowptr``, ``weight_colidx``, ``weight_values`` for CSR),
copies, never views of the format object's read-only memory -- the ``bias`` buffer, and under
``_extra_state`` plain data: the format, dense shape and format parameters, the geometry, the
fused-ReLU flag, ``algo``, the tuned ``choices`` and ``tuning``. ``load_state_dict`` rebuilds
the format object through its validating constructor (a state of any nnz or format is accepted;
a different op, weight shape, geometry or ReLU flag is a different architecture: an error), so
``torch.save(model.state_dict())`` / ``torch.load(..., weights_only=True)`` round-trips, and
``copy.deepcopy`` shares the immutable format object. The format object stays the one source
of truth (it is not registered as buffers: a buffer would be a mutable alias of arrays a kernel
trusts, or a second copy of them). ``.to(dtype)`` / ``.to(device)`` convert the bias; the sparse
weight keeps its values (float32 from ``from_dense``), and an input of another dtype or device
runs on a kernel that takes it (PyTorch's dense kernel computes in the input's dtype on its
device); a module fixed to a kernel that cannot take the target dtype (device) refuses the
conversion with a TypeError (ValueError).

Gradients: with gradients enabled and an input (or bias) that requires grad, forward goes
through :func:`sparsecnn.functional.run_kernel`'s ``autograd.Function``: input and bias
gradients are exact (the transposed product with the densified weight), the sparse weight has
none (it is frozen data; training mode with gradients enabled raises). Inputs that do not
require grad take the plain path (no graph, no extra work).
"""

from __future__ import annotations

import copy
import math

import numpy as np
import torch
from torch import nn

import warnings

from .. import dispatch
from .. import functional as Fs
from ..formats import CSRWeight, SparseWeight, to_sparse
from ..kernels import prepared, registry
from ..problem import ConvProblem, LinearProblem, dtype_name
from . import state as _state


def _check_training(module: nn.Module) -> None:
    raise RuntimeError(
        f"{type(module).__name__} is inference-only: its sparse weight is frozen data with no "
        "gradient, so it cannot be trained. Call model.eval() (input and bias gradients are "
        "computed in eval mode, e.g. for saliency maps) or run under torch.no_grad() / "
        "torch.inference_mode(); to train, train the dense model and sparsify it again"
    )


def _empty_weight(shape) -> CSRWeight:
    """An all-zero CSR weight of ``shape``: a placeholder that ``load_state_dict`` replaces."""
    return CSRWeight(np.zeros(shape[0] + 1, np.int32), np.zeros(0, np.int32),
                     np.zeros(0, np.float32), tuple(shape))


def _clean_choices(choices, tuning, where: str) -> tuple[dict, dict]:
    """The usable entries of a state's ``choices`` (problem key -> kernel name) and ``tuning``
    (problem key -> tuning result with its ``batch``); malformed ones are dropped with one
    warning (they are hints and report data: a kernel name is only ever run after
    :meth:`_SparseBase.kernel_for` checked that it exists and can run here)."""
    bad = []
    if not isinstance(choices, dict):
        bad.append(f"choices is a {type(choices).__name__}")
        choices = {}
    good_c = {k: v for k, v in choices.items() if isinstance(k, str) and isinstance(v, str) and v}
    bad += [f"choice {k!r}: {v!r}" for k, v in choices.items() if k not in good_c]
    if not isinstance(tuning, dict):
        bad.append(f"tuning is a {type(tuning).__name__}")
        tuning = {}
    good_t = {}
    for k, v in tuning.items():
        why = dispatch.valid_entry(v) if isinstance(k, str) else "key is not a str"
        if why is None and not (type(v.get("batch")) is int and v["batch"] >= 1):
            why = f"'batch' must be a positive int, got {v.get('batch')!r}"
        if why is None:
            good_t[k] = copy.deepcopy(v)
        else:
            bad.append(f"tuning {k!r}: {why}")
    if bad:
        warnings.warn(f"{where}: ignored {len(bad)} malformed tuning entr"
                      f"{'y' if len(bad) == 1 else 'ies'}: {'; '.join(bad[:3])}", stacklevel=4)
    return good_c, good_t


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
        for its signature (if that kernel can run it here), else :func:`sparsecnn.dispatch.choose`."""
        if self.algo != "auto":
            return self.algo
        name = self.choices.get(problem.key())
        if name is not None:
            # a choice tuned elsewhere (a loaded model) may name a kernel this machine lacks
            try:
                if registry.get(self.op, name).why_not(problem) is None:
                    return name
            except ValueError:
                pass
        return dispatch.choose(problem)

    @property
    def nbytes(self) -> int:
        """Bytes of the stored sparse weight (indices + values) and bias."""
        b = 0 if self.bias is None else self.bias.numel() * self.bias.element_size()
        return self.weight.nbytes + b

    @property
    def held_nbytes(self) -> int:
        """Bytes this layer holds now: :attr:`nbytes` plus what its kernels prepared from the
        weight and keep (a dense copy when the layer runs dense, offsets, plans): those in
        the prepared-operand cache and those this module's plans still reference (an operand
        the bounded cache evicted stays alive while a plan holds it), each counted once."""
        preps = {id(p): p for p in prepared.CACHE.held(self.weight)}
        preps.update((id(plan[1]), plan[1]) for plan in self._plans.values())
        return self.nbytes + sum(p.nbytes for p in preps.values())

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
        self._check_conversion(fn)
        self._plans.clear()
        return super()._apply(fn, *args, **kwargs)

    def _check_conversion(self, fn) -> None:
        """Refuse ``.to(dtype / device)`` when the module is fixed to a kernel that cannot take
        the target (``algo="auto"`` always can: PyTorch's dense kernel takes every float dtype
        and device)."""
        if self.algo == "auto":
            return
        try:  # what the conversion does to a float32 CPU tensor (fn is opaque)
            probe = fn(torch.zeros(1))
        except Exception:  # noqa: BLE001 - not a dtype/device conversion
            return
        if not isinstance(probe, torch.Tensor):
            return
        kernel = registry.get(self.op, self.algo)
        dt = dtype_name(probe.dtype)
        if dt != "float32" and dt not in kernel.dtypes:
            raise TypeError(
                f"{type(self).__name__} runs kernel {self.algo!r}, which takes {list(kernel.dtypes)} "
                f"inputs only; cannot convert it to {dt}. Set algo='auto' (another dtype runs on "
                "a kernel that takes it, PyTorch's dense kernel) or algo='dense' first")
        dev = probe.device.type
        if dev != "cpu" and dev not in kernel.devices:
            raise ValueError(
                f"{type(self).__name__} runs kernel {self.algo!r}, which runs on "
                f"{list(kernel.devices)} only; cannot move it to {dev}. Set algo='auto' or "
                "algo='dense' first")

    # -- state dict ---------------------------------------------------------------------------
    def _geometry(self) -> dict:  # pragma: no cover - per subclass
        raise NotImplementedError

    def get_extra_state(self) -> dict:
        """The module's non-tensor state, as plain data (goes into ``state_dict()`` under
        ``_extra_state``): format, shape and format parameters of the weight, geometry, ReLU
        flag, ``algo``, tuned ``choices`` and ``tuning``."""
        return {"version": _state.STATE_VERSION, "kind": type(self).__name__,
                "weight": self._weight_meta(), "bias": self.bias is not None,
                "geometry": self._geometry(), "relu": self.relu, "algo": self.algo,
                "choices": dict(self.choices), "tuning": copy.deepcopy(self.tuning)}

    def _weight_meta(self) -> dict:
        return _state.weight_state(self.weight)[0]

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        _, arrays = _state.weight_state(self.weight)
        for name, t in arrays.items():
            destination[prefix + "weight_" + name] = t
        super()._save_to_state_dict(destination, prefix, keep_vars)  # bias, _extra_state

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        for hook in self._load_state_dict_pre_hooks.values():
            hook(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                 error_msgs)
        mine = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)
                and "." not in k[len(prefix):]}
        meta = mine.pop("_extra_state", None)
        bias = mine.pop("bias", None)
        arrays = {k[len("weight_"):]: mine.pop(k) for k in list(mine) if k.startswith("weight_")}
        unexpected_keys.extend(prefix + k for k in mine)
        if meta is None:
            missing_keys.append(prefix + "_extra_state")
            missing_keys.extend(prefix + "weight_" + k for k in self.weight.arrays())
            return
        names = _state.array_names(meta.get("weight") if isinstance(meta, dict) else None)
        if names is not None:  # the format is known: its arrays are keys like any other
            unexpected_keys.extend(prefix + "weight_" + k for k in arrays if k not in names)
            absent = [prefix + "weight_" + k for k in names if k not in arrays]
            if absent:
                missing_keys.extend(absent)
                return
            arrays = {k: arrays[k] for k in names}
        try:
            self._load_state(meta, arrays, bias, prefix)
        except ValueError as exc:
            error_msgs.append(str(exc))

    def _load_state(self, meta, arrays: dict, bias, prefix: str = "") -> None:
        """Validate a state (``get_extra_state`` data, weight arrays, bias) and adopt it; raises
        ValueError naming what does not match, leaving the module unchanged."""
        where = f"{prefix or type(self).__name__ + '.'}"
        if not isinstance(meta, dict):
            raise ValueError(f"{where}_extra_state must be an object, got {type(meta).__name__}")
        version = meta.get("version")
        if not isinstance(version, int) or version > _state.STATE_VERSION:
            raise ValueError(f"{where}: state version {version!r}; this sparsecnn reads version "
                             f"{_state.STATE_VERSION} (written by a newer sparsecnn?)")
        if meta.get("kind") != type(self).__name__:
            raise ValueError(f"{where}: the state is of a {meta.get('kind')!r}, the module is a "
                             f"{type(self).__name__}")
        weight = _state.weight_from_state(meta.get("weight"), arrays, where.rstrip("."))
        if tuple(weight.shape) != tuple(self.weight.shape):
            raise ValueError(f"{where}: weight of shape {weight.shape} in the state, the module's "
                             f"is {self.weight.shape}")
        geometry = meta.get("geometry")
        if _state.json_copy(geometry, f"{where}geometry") != _state.json_copy(
                self._geometry(), "geometry"):
            raise ValueError(f"{where}: geometry {geometry} in the state, the module has "
                             f"{self._geometry()}")
        relu = meta.get("relu")
        if relu is not self.relu:
            raise ValueError(f"{where}: fused ReLU {relu!r} in the state, the module has "
                             f"{self.relu} (the model's ReLU modules differ)")
        algo = meta.get("algo")
        if not isinstance(algo, str):
            raise ValueError(f"{where}: algo must be a str, got {algo!r}")
        if algo != "auto":
            try:
                registry.get(self.op, algo)
            except ValueError as exc:
                raise ValueError(f"{where}: {exc}") from None
        has_bias = meta.get("bias")
        if has_bias is True:
            if not isinstance(bias, torch.Tensor) or not bias.is_floating_point() \
                    or tuple(bias.shape) != (weight.shape[0],):
                raise ValueError(f"{where}bias must be a floating tensor of shape "
                                 f"({weight.shape[0]},), got "
                                 f"{tuple(bias.shape) if isinstance(bias, torch.Tensor) else bias!r}")
            old = self.bias
            dtype = old.dtype if old is not None else torch.float32
            device = old.device if old is not None else torch.device("cpu")
            bias = bias.detach().to(device=device, dtype=dtype, copy=True).contiguous()
        elif has_bias is False:
            if bias is not None:
                raise ValueError(f"{where}: the state says no bias but holds one")
        else:
            raise ValueError(f"{where}: 'bias' must be true or false, got {has_bias!r}")
        choices, tuning = _clean_choices(meta.get("choices"), meta.get("tuning"), where)
        self.weight = weight
        self.bias = bias
        self.algo, self.choices, self.tuning = algo, choices, tuning
        self._plans.clear()

    def _plan(self, x: torch.Tensor, name: str | None = None):
        """Validate, resolve and remember ``(kernel.run, prepared, bias)`` for ``x``'s
        signature; ``name`` overrides the module's choice (tuning runs each candidate)."""
        problem, bias = self._problem_of(x)
        kernel, prep = Fs.resolve(problem, self.weight, name or self.kernel_for(problem))
        own = self.bias
        if name is None and not (own is not None and own.requires_grad and bias is not own):
            # (a bias that needs its gradient and had to be converted is converted per call)
            self._plans[(x.shape, x.dtype, x.device)] = (kernel.run, prep, bias)
        return kernel.run, prep, bias

    def _forward_grad(self, plan, x: torch.Tensor) -> torch.Tensor:
        """The planned kernel through :func:`sparsecnn.functional.run_kernel` (autograd:
        input and bias gradients), with the bias taken from the module now."""
        bias = Fs._check_bias(self.bias, x, self.weight.shape[0])
        return Fs.run_kernel(plan[0], plan[1], x.contiguous(), bias)


def _conv_padding(conv: nn.Conv2d) -> tuple[int, int]:
    """``conv.padding`` as a pair of ints (``"valid"`` / ``"same"`` resolved)."""
    padding = conv.padding
    if isinstance(padding, str):
        if padding == "valid":
            return (0, 0)
        # "same" (PyTorch requires stride 1 for it)
        tot = [d * (k - 1) for d, k in zip(conv.dilation, conv.kernel_size)]
        if any(t % 2 for t in tot):
            raise ValueError(f"padding='same' with even dilated kernel extent {tot} is not supported")
        return (tot[0] // 2, tot[1] // 2)
    return tuple(padding)


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
        (per input signature: ``choices``, else the tuning cache, else the heuristic).

    The bias is a buffer (frozen, like the sparse weight; ``bias.requires_grad_()`` asks for its
    gradient). In eval mode, gradients flow to the input (and bias) through every kernel.

    Raises
    ------
    TypeError, ValueError
        On a non-sparse weight, a bias of the wrong shape, bad geometry or an unknown ``algo``.
    RuntimeError
        From ``forward`` in training mode with gradients enabled (the sparse weight cannot be
        trained).

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
        padding = _conv_padding(conv)
        w = to_sparse(conv.weight.detach().float(), format=format, **format_options)
        return cls(w, conv.bias, conv.stride, padding, conv.dilation, conv.groups,
                   relu=relu, algo=algo)

    def _geometry(self) -> dict:
        return {"stride": list(self.stride), "padding": list(self.padding),
                "dilation": list(self.dilation), "groups": self.groups}

    @classmethod
    def _skeleton(cls, conv: nn.Conv2d, *, relu: bool = False, meta=None) -> "SparseConv2d":
        """A module with ``conv``'s geometry and an all-zero weight, to load a state into."""
        w = conv.weight
        return cls(_empty_weight(tuple(w.shape)), None, conv.stride, _conv_padding(conv),
                   conv.dilation, conv.groups, relu=relu)

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
        b = plan[2]
        if x.requires_grad or (b is not None and b.requires_grad):
            return self._forward_grad(plan, x)
        return plan[0](plan[1], x.contiguous(), b)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}, dilation={self.dilation}, "
                f"groups={self.groups}, bias={self.bias is not None}, relu={self.relu}, "
                f"format={self.weight.format_name}, density={self.weight.density:.4f}, "
                f"algo={self.algo!r}, choices={self.choices}")


class SparseConv1d(SparseConv2d):
    """1-D convolution with a sparse weight, for inference (NCL, float32): a
    :class:`SparseConv2d` over the ``H = R = 1`` view, so the same kernels, dispatch, tuning and
    prepared operands run it.

    Parameters
    ----------
    weight : SparseWeight of shape (K, C/groups, 1, S)
        The 1-D weight ``(K, C/groups, S)`` stored as its conv2d view
        (``to_sparse(w.unsqueeze(2))``; :meth:`from_dense` does it).
    bias : torch.Tensor (K,) or None
    stride, padding, dilation : int (or a 1-tuple)
    groups : int
    relu, algo
        As :class:`SparseConv2d`.

    Raises
    ------
    TypeError, ValueError
        As :class:`SparseConv2d`, and when the weight's third dimension is not 1.
    """

    def __init__(self, weight: SparseWeight, bias=None, stride=1, padding=0, dilation=1,
                 groups=1, *, relu: bool = False, algo: str = "auto"):
        if isinstance(weight, SparseWeight) and (len(weight.shape) != 4 or weight.shape[2] != 1):
            raise ValueError(f"SparseConv1d needs a (K, C/groups, 1, S) weight "
                             f"(to_sparse(w.unsqueeze(2))), got shape {tuple(weight.shape)}")
        super().__init__(weight, bias, (1, Fs._single(stride, "stride", 1)),
                         (0, Fs._single(padding, "padding", 0)),
                         (1, Fs._single(dilation, "dilation", 1)), groups, relu=relu, algo=algo)
        self.kernel_size = (weight.shape[3],)

    @classmethod
    def from_dense(cls, conv: nn.Conv1d, *, format: str = "csr", relu: bool = False,
                   algo: str = "auto", **format_options) -> "SparseConv1d":
        """Convert an ``nn.Conv1d`` (its zeros are dropped; zero padding mode only).

        Raises
        ------
        TypeError
            If ``conv`` is not an ``nn.Conv1d``.
        ValueError
            If its ``padding_mode`` is not ``"zeros"`` or its padding string cannot be resolved
            (``"same"`` with an even dilated kernel extent).
        """
        if not isinstance(conv, nn.Conv1d):
            raise TypeError(f"expected an nn.Conv1d, got {type(conv).__name__}")
        if conv.padding_mode != "zeros":
            raise ValueError(f"only padding_mode='zeros' is supported, got {conv.padding_mode!r}")
        padding = conv.padding
        if isinstance(padding, str):
            if padding == "valid":
                padding = 0
            else:  # "same" (PyTorch requires stride 1 for it)
                tot = conv.dilation[0] * (conv.kernel_size[0] - 1)
                if tot % 2:
                    raise ValueError(f"padding='same' with even dilated kernel extent {tot} is "
                                     "not supported")
                padding = tot // 2
        w = to_sparse(conv.weight.detach().float().unsqueeze(2), format=format, **format_options)
        return cls(w, conv.bias, conv.stride, padding, conv.dilation, conv.groups,
                   relu=relu, algo=algo)

    @classmethod
    def _skeleton(cls, conv: nn.Conv1d, *, relu: bool = False, meta=None) -> "SparseConv1d":
        """A module with ``conv``'s geometry and an all-zero weight, to load a state into."""
        k, c, s = conv.weight.shape
        padding = conv.padding if not isinstance(conv.padding, str) else \
            (0 if conv.padding == "valid" else conv.dilation[0] * (conv.kernel_size[0] - 1) // 2)
        return cls(_empty_weight((k, c, 1, s)), None, conv.stride, padding, conv.dilation,
                   conv.groups, relu=relu)

    @staticmethod
    def as_2d(x: torch.Tensor) -> torch.Tensor:
        """The conv2d view ``(N, C, 1, L)`` of an input ``(N, C, L)`` or ``(C, L)``."""
        return (x.unsqueeze(0) if x.ndim == 2 else x).unsqueeze(2)

    def problem(self, x_shape, dtype: str = "float32", device: str = "cpu") -> ConvProblem:
        """The :class:`~sparsecnn.problem.ConvProblem` (``H = R = 1``) of an input of
        ``x_shape``: ``(N, C, L)``, or its view ``(N, C, 1, L)``."""
        x_shape = tuple(x_shape)
        if len(x_shape) == 3:
            x_shape = (x_shape[0], x_shape[1], 1, x_shape[2])
        return super().problem(x_shape, dtype, device)

    def run(self, x: torch.Tensor, name: str) -> torch.Tensor:
        """Run with kernel ``name`` through the validating functional API (tuning, tests)."""
        if x.ndim == 4:
            x = x.squeeze(2)
        return Fs.conv1d(x, self.weight, self.bias, self.stride[1], self.padding[1],
                         self.dilation[1], self.groups, algo=name, relu=self.relu)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Convolve ``x`` (N, C, L) -> (N, K, OL); 2-D (C, L) input is accepted too."""
        if self.training and torch.is_grad_enabled():
            _check_training(self)
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"input must be a torch.Tensor, got {type(x).__name__}")
        if x.ndim == 2:
            return self.forward(x.unsqueeze(0))[0]
        if x.ndim != 3:
            raise ValueError(f"input must be 3-D (N, C, L) or 2-D (C, L), got shape "
                             f"{tuple(x.shape)}")
        return super().forward(x.unsqueeze(2)).squeeze(2)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride[1:]}, padding={self.padding[1:]}, "
                f"dilation={self.dilation[1:]}, groups={self.groups}, "
                f"bias={self.bias is not None}, relu={self.relu}, "
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
        From ``forward`` in training mode with gradients enabled (the sparse weight cannot be
        trained; eval mode gives input and bias gradients).
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

    def _geometry(self) -> dict:
        return {}

    @classmethod
    def _skeleton(cls, linear: nn.Linear, *, relu: bool = False, meta=None) -> "SparseLinear":
        """A module of ``linear``'s shape with an all-zero weight, to load a state into."""
        return cls(_empty_weight(tuple(linear.weight.shape)), None, relu=relu)

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
        b = plan[2]
        if x.requires_grad or (b is not None and b.requires_grad):
            return self._forward_grad(plan, x)
        return plan[0](plan[1], x.contiguous(), b)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, relu={self.relu}, format={self.weight.format_name}, "
                f"density={self.weight.density:.4f}, algo={self.algo!r}, choices={self.choices}")
