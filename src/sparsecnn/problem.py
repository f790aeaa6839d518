"""Problems: what one call of an op computes, as a type.

A :class:`Problem` names everything a kernel, the dispatcher and the tuning cache need to know
about one call: the op's geometry, the weight's format and density, the input's dtype and
device, a fused ReLU, and room for the density of the input activations (measured on the tuning
batch by activation-sparse kernels; ``None`` when unknown). It is immutable and hashable (the
prepared-operand cache keys on it) and has one canonical string :meth:`Problem.key` (the tuning
cache keys on it).

Each op is one subclass (:class:`ConvProblem` for ``"conv2d"``, :class:`LinearProblem` for
``"linear"``); a subclass registers its op name when it is defined, so a new op (a 3-D sparse
convolution, say) is one new class, and :data:`OPS` lists what exists.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar


def conv_output_size(size: int, kernel: int, stride: int, padding: int, dilation: int) -> int:
    """Output length along one axis: ``(size + 2p - d (k - 1) - 1) // s + 1``."""
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


class Problem:
    """Base of the per-op problem types (frozen dataclasses).

    Every subclass has the fields ``relu``, ``format``, ``density``, ``dtype``, ``device`` and
    ``act_density`` besides its geometry, and defines the class attribute ``op``.
    """

    __slots__ = ()
    op: ClassVar[str] = ""
    #: op name -> Problem subclass (filled as subclasses are defined)
    by_op: ClassVar[dict[str, type["Problem"]]] = {}

    def __init_subclass__(cls, **kw):
        super().__init_subclass__(**kw)
        if cls.op:
            Problem.by_op[cls.op] = cls

    def key(self) -> str:
        """The canonical string of this problem: ``op|field=value,...`` with the weight density
        rounded to 0.01 and the activation density to 0.05 (the tuning cache's problem part)."""
        parts = []
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if f.name == "density":
                v = f"{round(float(v), 2):.2f}"
            elif f.name == "act_density":
                v = "-" if v is None else f"{round(float(v) * 20) / 20:.2f}"
            elif isinstance(v, tuple):
                v = "x".join(map(str, v))
            elif isinstance(v, bool):
                v = int(v)
            parts.append(f"{f.name}={v}")
        return f"{self.op}|" + ",".join(parts)

    def replace(self, **changes) -> "Problem":
        """A copy with ``changes`` applied (``dataclasses.replace``)."""
        return dataclasses.replace(self, **changes)

    @property
    def batch(self) -> int:  # pragma: no cover - abstract
        """Images / rows of the input."""
        raise NotImplementedError

    @property
    def dense_flops(self) -> int:  # pragma: no cover - abstract
        """FLOPs (2 per multiply-add) of the dense op."""
        raise NotImplementedError

    @property
    def useful_flops(self) -> float:
        """FLOPs with a nonzero weight: ``density * dense_flops``."""
        return self.density * self.dense_flops


@dataclass(frozen=True, slots=True)
class ConvProblem(Problem):
    """One 2-D convolution call, NCHW (a 1-D convolution is the case ``H = R = 1``).

    Attributes
    ----------
    N, C, H, W : int
        Input batch, channels, height, width.
    K, R, S : int
        Output channels, kernel height, kernel width (the weight is ``(K, C/groups, R, S)``).
    stride, padding, dilation : tuple of (int, int)
    groups : int
    relu : bool
        ReLU fused into the output.
    format : str
        The weight's ``format_name`` (``"dense"`` for a torch tensor).
    density : float
        The weight's nnz / numel, in [0, 1].
    dtype, device : str
        The input's dtype (``"float32"``) and device type (``"cpu"``, ``"cuda"``).
    act_density : float or None
        Share of nonzero input activations, when measured.
    """

    op: ClassVar[str] = "conv2d"
    N: int
    C: int
    H: int
    W: int
    K: int
    R: int
    S: int
    stride: tuple = (1, 1)
    padding: tuple = (0, 0)
    dilation: tuple = (1, 1)
    groups: int = 1
    relu: bool = False
    format: str = "dense"
    density: float = 1.0
    dtype: str = "float32"
    device: str = "cpu"
    act_density: float | None = None

    @classmethod
    def from_shapes(cls, x_shape, w_shape, stride=(1, 1), padding=(0, 0), dilation=(1, 1),
                    groups=1, **rest) -> "ConvProblem":
        """From the input shape ``(N, C, H, W)`` and the weight shape ``(K, C/groups, R, S)``;
        ``rest`` sets the other fields (``relu``, ``format``, ``density``, ``dtype``, ...)."""
        n, c, h, w = (int(v) for v in x_shape)
        k, _, r, s = (int(v) for v in w_shape)
        return cls(n, c, h, w, k, r, s, tuple(stride), tuple(padding), tuple(dilation),
                   int(groups), **rest)

    @property
    def OH(self) -> int:  # noqa: N802 - the field's standard name
        return conv_output_size(self.H, self.R, self.stride[0], self.padding[0], self.dilation[0])

    @property
    def OW(self) -> int:  # noqa: N802
        return conv_output_size(self.W, self.S, self.stride[1], self.padding[1], self.dilation[1])

    @property
    def batch(self) -> int:
        return self.N

    @property
    def x_shape(self) -> tuple[int, int, int, int]:
        return (self.N, self.C, self.H, self.W)

    @property
    def w_shape(self) -> tuple[int, int, int, int]:
        return (self.K, self.C // self.groups, self.R, self.S)

    @property
    def out_shape(self) -> tuple[int, int, int, int]:
        return (self.N, self.K, self.OH, self.OW)

    @property
    def dense_flops(self) -> int:
        return 2 * self.N * self.K * (self.C // self.groups) * self.R * self.S * self.OH * self.OW


def pool_output_size(size: int, kernel: int, stride: int, padding: int, dilation: int,
                     ceil_mode: bool) -> int:
    """Output length of ``torch.nn.functional.max_pool2d`` along one axis (a window that would
    start in the right padding is dropped in ``ceil_mode``)."""
    span = size + 2 * padding - dilation * (kernel - 1) - 1
    out = (-(-span // stride) if ceil_mode else span // stride) + 1
    if ceil_mode and (out - 1) * stride >= size + padding:
        out -= 1
    return out


@dataclass(frozen=True, slots=True)
class ConvPoolProblem(ConvProblem):
    """A 2-D convolution, its (fused) ReLU, then a 2-D max-pooling of its output, as one call
    (op ``"conv2d_pool"``): what a fused convolution + pooling kernel computes (ECR / PECR, Xu
    et al. 2019) and the fx rewrite of ``conv -> [ReLU] -> MaxPool2d`` produces.

    Attributes
    ----------
    (those of :class:`ConvProblem`, the convolution's), and
    pool_kernel, pool_stride, pool_padding, pool_dilation : tuple of (int, int)
        The max-pooling's window, stride, padding (implicit ``-inf``) and dilation.
    ceil_mode : bool
        As ``torch.nn.functional.max_pool2d``.
    """

    op: ClassVar[str] = "conv2d_pool"
    pool_kernel: tuple = (2, 2)
    pool_stride: tuple = (2, 2)
    pool_padding: tuple = (0, 0)
    pool_dilation: tuple = (1, 1)
    ceil_mode: bool = False

    @property
    def PH(self) -> int:  # noqa: N802 - pooled height
        return pool_output_size(self.OH, self.pool_kernel[0], self.pool_stride[0],
                                self.pool_padding[0], self.pool_dilation[0], self.ceil_mode)

    @property
    def PW(self) -> int:  # noqa: N802 - pooled width
        return pool_output_size(self.OW, self.pool_kernel[1], self.pool_stride[1],
                                self.pool_padding[1], self.pool_dilation[1], self.ceil_mode)

    @property
    def conv_shape(self) -> tuple[int, int, int, int]:
        """``(N, K, OH, OW)``: the convolution's output (before pooling)."""
        return (self.N, self.K, self.OH, self.OW)

    @property
    def out_shape(self) -> tuple[int, int, int, int]:
        return (self.N, self.K, self.PH, self.PW)

    def conv_problem(self) -> ConvProblem:
        """The convolution alone (with the fused ReLU) as a :class:`ConvProblem`."""
        return ConvProblem(*(getattr(self, f.name) for f in dataclasses.fields(ConvProblem)))


@dataclass(frozen=True, slots=True)
class LinearProblem(Problem):
    """One fully connected call ``y = x W^T + b`` on a 2-D input ``(B, in_features)``."""

    op: ClassVar[str] = "linear"
    B: int
    in_features: int
    out_features: int
    relu: bool = False
    format: str = "dense"
    density: float = 1.0
    dtype: str = "float32"
    device: str = "cpu"
    act_density: float | None = None

    @property
    def batch(self) -> int:
        return self.B

    @property
    def dense_flops(self) -> int:
        return 2 * self.B * self.in_features * self.out_features


#: The ops that have a problem type (``"conv2d"``, ``"linear"``, ...), in definition order.
OPS = Problem.by_op


def problem_for(op: str) -> type[Problem]:
    """The :class:`Problem` subclass of ``op``.

    Raises
    ------
    ValueError
        If ``op`` has no problem type; the message lists the known ops.
    """
    try:
        return Problem.by_op[op]
    except KeyError:
        raise ValueError(f"unknown op {op!r}; expected one of {sorted(Problem.by_op)}") from None


def dtype_name(dtype) -> str:
    """``torch.float32`` -> ``"float32"``."""
    return str(dtype).removeprefix("torch.")


__all__ = ["Problem", "ConvProblem", "ConvPoolProblem", "LinearProblem", "OPS", "problem_for",
           "conv_output_size", "pool_output_size", "dtype_name"]
