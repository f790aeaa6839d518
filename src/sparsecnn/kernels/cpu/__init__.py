"""Numba CPU kernels; importing this package registers them."""

__all__: list[str] = []
