"""Sparse inference modules and model conversion.

- :class:`SparseConv2d`, :class:`SparseLinear` -- modules holding a sparse weight, a fused-ReLU
  flag and the kernel chosen per batch size; ``forward`` runs :mod:`sparsecnn.functional`.
- :func:`sparsify_` -- in place: fold BatchNorm, swap ``nn.Conv2d``/``nn.Linear`` for sparse
  modules, fuse ReLUs, tune each layer's kernel (:func:`tune_`).
- :func:`fold_batchnorm`, :func:`find_relu_fusions`, :func:`fuse_relu_`, :func:`compact` --
  the ``torch.fx`` rewrites, each checked on the example input (:func:`check_rewrite`) and
  undone with a :class:`RewriteWarning` when it changes the answer;
  :func:`find_pool_fusions`, :func:`fuse_pool_` -- ``conv -> [ReLU] -> MaxPool2d`` into one
  :class:`SparseConvPool2d`.
- :func:`layer_table`, :func:`model_nbytes` -- per-layer decisions and sizes, as plain data.
- :func:`save`, :func:`load` -- a sparsified model to / from a file (atomic write).
"""

from .convert import (layer_table, load, model_nbytes, save, sparse_modules, sparsify_, tune_)
from .fusion import (RewriteLog, RewriteWarning, check_rewrite, compact, find_relu_fusions,
                     fold_batchnorm, fuse_relu_, trace)
from .modules import SparseConv2d, SparseLinear
from .pool import SparseConvPool2d, find_pool_fusions, fuse_pool_

__all__ = ["SparseConv2d", "SparseLinear", "SparseConvPool2d", "sparsify_", "find_pool_fusions",
           "fuse_pool_", "tune_", "fold_batchnorm",
           "find_relu_fusions", "fuse_relu_", "compact", "trace", "layer_table", "model_nbytes",
           "sparse_modules", "save", "load", "RewriteWarning", "RewriteLog", "check_rewrite"]
