"""Compute kernels, per backend, registered in :mod:`sparsecnn.kernels.registry`."""

from . import registry
from . import dense  # noqa: F401  (registers the dense PyTorch reference kernels)
from .cpu import *  # noqa: F401,F403  (registers the Numba CPU kernels)
from . import triton  # noqa: F401,E402  (registers the Triton GPU kernels when Triton is installed)

__all__ = ["registry"]
