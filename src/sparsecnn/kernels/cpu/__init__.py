"""Numba CPU kernels; importing this package registers them."""

from . import direct  # noqa: F401  (registers "direct" conv2d)
from . import im2col_spmm, linear  # noqa: F401  (register "im2col_spmm", "spmv", "spmm")

__all__: list[str] = []
