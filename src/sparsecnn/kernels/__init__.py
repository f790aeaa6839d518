"""Compute kernels, per backend, registered in :mod:`sparsecnn.kernels.registry`."""

from . import registry
from . import dense  # noqa: F401  (registers the dense PyTorch reference kernels)
from .cpu import *  # noqa: F401,F403  (registers the Numba CPU kernels)
from . import hybrid  # noqa: F401  (registers "hybrid" conv2d: dense blocks + sparse rest)
from . import conv_pool  # noqa: F401  (last: conv2d_pool = each conv2d kernel, then max-pool)

__all__ = ["registry"]
