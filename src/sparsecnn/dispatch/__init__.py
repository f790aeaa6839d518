"""Choosing a kernel per layer: a heuristic default, refined by measurement (tuning)."""

from .heuristic import choose

__all__ = ["choose"]
