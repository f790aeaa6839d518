"""``torch.nn`` modules on :class:`~sparsecnn.spatial.SparseTensor` (spconv-style names).

Weights use torch's conv layout: ``SubMConv3d(16, 32, 3).weight`` is (32, 16, 3, 3, 3), so
``F.conv3d`` of the densified input with that weight is the reference at the active sites (the
same values copied into spconv's (C_out, k, k, k, C_in) layout give spconv's output).

- :class:`SubMConv2d` / :class:`SubMConv3d` -- submanifold (output sites = input sites).
- :class:`SparseConv2d` / :class:`SparseConv3d` -- regular (output sites grow; stride >= 1).
- :class:`SparseInverseConv2d` / :class:`SparseInverseConv3d` -- back to the finer sites of the
  ``SparseConv`` with the same ``indice_key``, using its rulebook transposed.
- :class:`SparseMaxPool2d` / :class:`SparseMaxPool3d`.
- :class:`SparseBatchNorm`, :class:`SparseReLU` -- on the features; :class:`SparseSequential`.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from . import functional as SF
from .tensor import SparseTensor


class _SparseConvNd(nn.Module):
    ndim = 3
    kind = "subm"

    def __init__(self, in_channels: int, out_channels: int, kernel_size=3, stride=1, padding=0,
                 dilation=1, bias: bool = True, indice_key: str | None = None,
                 algo: str | None = None):
        super().__init__()
        d = self.ndim
        ks = SF._tuple(kernel_size, d, "kernel_size")
        self.in_channels, self.out_channels = int(in_channels), int(out_channels)
        if self.in_channels < 1 or self.out_channels < 1:
            raise ValueError(f"channels must be >= 1, got {in_channels}, {out_channels}")
        self.kernel_size = ks
        self.stride = SF._tuple(stride, d, "stride")
        self.padding = SF._tuple(padding, d, "padding")
        self.dilation = SF._tuple(dilation, d, "dilation")
        if self.kind != "inverse":   # validate the geometry now, not at the first call
            SF.make_geometry(self.kind, d, ks, self.stride, self.padding, self.dilation)
        self.indice_key = indice_key
        self.algo = algo
        self.weight = nn.Parameter(torch.empty(self.out_channels, self.in_channels, *ks))
        self.bias = nn.Parameter(torch.empty(self.out_channels)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """As ``torch.nn.ConvNd``: Kaiming-uniform weight, uniform bias."""
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            fan_in = self.in_channels * math.prod(self.kernel_size)
            bound = 1 / math.sqrt(fan_in)
            nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: SparseTensor) -> SparseTensor:
        if self.kind == "inverse":
            return SF.sparse_conv(x, self.weight, self.bias, kind="inverse",
                                  indice_key=self.indice_key, algo=self.algo)
        return SF.sparse_conv(x, self.weight, self.bias, kind=self.kind, stride=self.stride,
                              padding=self.padding, dilation=self.dilation,
                              indice_key=self.indice_key, algo=self.algo)

    def extra_repr(self) -> str:
        s = (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
             f"stride={self.stride}")
        if self.kind == "conv":
            s += f", padding={self.padding}"
        if self.dilation != (1,) * self.ndim:
            s += f", dilation={self.dilation}"
        if self.indice_key:
            s += f", indice_key={self.indice_key!r}"
        return s + ("" if self.bias is not None else ", bias=False")


class SubMConv3d(_SparseConvNd):
    """Submanifold 3-D convolution: output sites = input sites, odd kernel, stride 1.
    ``weight`` (C_out, C_in, k, k, k). Input/output: SparseTensor (P, C_in) -> (P, C_out)."""
    ndim, kind = 3, "subm"


class SubMConv2d(_SparseConvNd):
    """Submanifold 2-D convolution (see :class:`SubMConv3d`); ``weight`` (C_out, C_in, k, k)."""
    ndim, kind = 2, "subm"


class SparseConv3d(_SparseConvNd):
    """Regular sparse 3-D convolution: an output site is active if its window holds an active
    input (``stride`` 1 grows the sites, 2 downsamples). ``weight`` (C_out, C_in, k, k, k).
    Give ``indice_key`` to let a :class:`SparseInverseConv3d` undo it."""
    ndim, kind = 3, "conv"


class SparseConv2d(_SparseConvNd):
    """Regular sparse 2-D convolution (see :class:`SparseConv3d`)."""
    ndim, kind = 2, "conv"


class SparseInverseConv3d(_SparseConvNd):
    """Transposed convolution back to the input sites of the :class:`SparseConv3d` with the same
    ``indice_key`` (its rulebook transposed; its stride/padding/dilation). ``weight`` (C_out,
    C_in, k, k, k): the dense reference is ``F.conv_transpose3d(x, weight.transpose(0, 1), ...)``
    at those sites."""
    ndim, kind = 3, "inverse"

    def __init__(self, in_channels, out_channels, kernel_size=3, indice_key: str | None = None,
                 bias: bool = True, algo: str | None = None):
        if indice_key is None:
            raise ValueError("SparseInverseConv needs the indice_key of the SparseConv it inverts")
        super().__init__(in_channels, out_channels, kernel_size, bias=bias, indice_key=indice_key,
                         algo=algo)


class SparseInverseConv2d(SparseInverseConv3d):
    """2-D :class:`SparseInverseConv3d`."""
    ndim = 2


class SparseMaxPool3d(nn.Module):
    """Sparse max-pool: output sites of a regular convolution of this geometry, each the max over
    the active inputs of its window. ``stride`` defaults to ``kernel_size``."""
    ndim = 3

    def __init__(self, kernel_size=2, stride=None, padding=0, dilation=1,
                 indice_key: str | None = None):
        super().__init__()
        self.kernel_size = SF._tuple(kernel_size, self.ndim, "kernel_size")
        self.stride = self.kernel_size if stride is None else SF._tuple(stride, self.ndim, "stride")
        self.padding = SF._tuple(padding, self.ndim, "padding")
        self.dilation = SF._tuple(dilation, self.ndim, "dilation")
        self.indice_key = indice_key

    def forward(self, x: SparseTensor) -> SparseTensor:
        return SF.sparse_max_pool(x, self.kernel_size, self.stride, self.padding, self.dilation,
                                  self.indice_key)


class SparseMaxPool2d(SparseMaxPool3d):
    """2-D :class:`SparseMaxPool3d`."""
    ndim = 2


class SparseBatchNorm(nn.BatchNorm1d):
    """``BatchNorm1d`` over the features (P, C) of a SparseTensor (statistics over active sites,
    as spconv's ``nn.BatchNorm1d`` on ``.features``)."""

    def forward(self, x: SparseTensor) -> SparseTensor:
        return x.replace_feature(super().forward(x.features))


class SparseReLU(nn.ReLU):
    """ReLU on the features of a SparseTensor."""

    def forward(self, x: SparseTensor) -> SparseTensor:
        return x.replace_feature(super().forward(x.features))


class SparseSequential(nn.Sequential):
    """``nn.Sequential`` of modules taking and returning SparseTensors."""
