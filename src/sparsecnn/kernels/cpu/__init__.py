"""Numba CPU kernels; importing this package registers them."""

from . import direct  # noqa: F401  (registers "direct" conv2d)

__all__: list[str] = []
