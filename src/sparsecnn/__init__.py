"""sparsecnn: make pruned CNNs actually run faster, and show why.

Public entry points: :func:`conv2d`, :func:`conv1d`, :func:`linear` (``torch.nn.functional``
semantics, dense or sparse weights), :func:`to_sparse` (build a sparse weight from a dense, pruned one).
"""

from . import formats, kernels  # noqa: F401  (kernels register on import)
from .formats import to_sparse  # noqa: F401
from .functional import conv1d, conv2d, linear

__version__ = "0.1.0"
__all__ = ["conv2d", "conv1d", "linear", "to_sparse", "formats", "kernels", "__version__"]
