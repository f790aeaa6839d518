"""Sparse inference modules and model conversion.

- :class:`SparseConv2d`, :class:`SparseLinear` -- modules holding a sparse weight, a fused-ReLU
  flag and the kernel chosen per batch size; ``forward`` runs :mod:`sparsecnn.functional`.
- :func:`sparsify_` -- in place: fold BatchNorm, swap ``nn.Conv2d``/``nn.Linear`` for sparse
  modules, fuse ReLUs, tune each layer's kernel (:func:`tune_`).
- :func:`fold_batchnorm`, :func:`find_relu_fusions`, :func:`fuse_relu_`, :func:`compact` --
  the ``torch.fx`` rewrites.
- :func:`layer_table`, :func:`model_nbytes` -- per-layer decisions and sizes, as plain data.
- :func:`save`, :func:`load` -- a sparsified model to / from a file that cannot run code
  (safetensors tensors + JSON metadata, :mod:`sparsecnn.nn.serialize`).
"""

from .convert import layer_table, model_nbytes, sparse_modules, sparsify_, tune_
from .fusion import compact, find_relu_fusions, fold_batchnorm, fuse_relu_, trace
from .modules import SparseConv2d, SparseLinear
from .serialize import load, read_header, save

__all__ = ["SparseConv2d", "SparseLinear", "sparsify_", "tune_", "fold_batchnorm",
           "find_relu_fusions", "fuse_relu_", "compact", "trace", "layer_table", "model_nbytes",
           "sparse_modules", "save", "load", "read_header"]
