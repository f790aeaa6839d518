"""Sparse convolution on voxels and point clouds (submanifold and regular), CPU (Numba).

The ``H_in`` / ``H_out`` hash tables, the rulebook grouped by kernel offset and the
gather-GEMM-scatter of Graham & van der Maaten 2017 ("Submanifold Sparse Convolutional
Networks"), as spconv and MinkowskiEngine run them, with a register-blocked fused kernel on the
CPU. The op is ``"sparse_conv"`` (:class:`SparseConvProblem`); its kernels ``"fused"`` and
``"gemm"`` live in the kernel registry and :func:`sparsecnn.dispatch.choose` picks one. See
docs/spatial.md.

>>> import torch
>>> from sparsecnn import spatial
>>> x = spatial.SparseTensor(torch.ones(2, 4), torch.tensor([[0, 1, 2, 3], [0, 1, 2, 4]]), (8, 8, 8))
>>> conv = spatial.SubMConv3d(4, 8, 3)
>>> conv(x).features.shape
torch.Size([2, 8])
"""

from .functional import (get_rulebook, kernel_for, make_geometry, problem_of, sparse_conv,
                         sparse_max_pool)
from .kernels import ALGORITHMS
from .problem import SparseConvProblem
from .nn import (SparseBatchNorm, SparseConv2d, SparseConv3d, SparseInverseConv2d,
                 SparseInverseConv3d, SparseMaxPool2d, SparseMaxPool3d, SparseReLU,
                 SparseSequential, SubMConv2d, SubMConv3d)
from .rulebook import Geometry, RuleBook
from .tensor import CoordSet, SparseTensor

__all__ = [
    "ALGORITHMS", "CoordSet", "Geometry", "RuleBook", "SparseBatchNorm",
    "SparseConv2d", "SparseConv3d", "SparseInverseConv2d", "SparseInverseConv3d",
    "SparseMaxPool2d", "SparseMaxPool3d", "SparseReLU", "SparseSequential", "SparseTensor",
    "SparseConvProblem", "SubMConv2d", "SubMConv3d", "get_rulebook", "kernel_for",
    "make_geometry", "problem_of", "sparse_conv", "sparse_max_pool",
]
