"""Choosing a kernel per layer: one policy (measured decision, else heuristic), and tuning.

- :func:`choose` -- the policy every caller uses: the tuning cache's decision, else
  :func:`heuristic`.
- :func:`heuristic` -- the cheap default (no measurement).
- :func:`tune` -- measure every candidate on the layer's real input, keep the fastest that beats
  dense by a margin, cache it (:class:`TuningCache`, JSON under ``$SPARSECNN_CACHE_DIR``).
- :func:`lookup` -- the cached decision for a problem, if any.
"""

from .heuristic import DENSE_ABOVE_DENSITY, PREFERENCE, choose, heuristic
from .tuning import (CACHE_VERSION, CONTENDED_ENV, DEFAULT_MARGIN, Measurement, TuneResult,
                     TuningCache, cache_dir, cache_key, candidate_kernels, cpu_model,
                     default_cache, lookup, thread_counts, tune, valid_entry)

__all__ = ["choose", "heuristic", "DENSE_ABOVE_DENSITY", "PREFERENCE", "tune", "lookup",
           "TuningCache", "TuneResult", "Measurement", "default_cache", "cache_dir", "cache_key",
           "candidate_kernels", "cpu_model", "thread_counts", "DEFAULT_MARGIN", "CACHE_VERSION",
           "CONTENDED_ENV", "valid_entry"]
