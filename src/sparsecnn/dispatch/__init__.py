"""Choosing a kernel per layer: a heuristic default, refined by measurement (tuning).

- :func:`choose` -- the cheap heuristic (no measurement).
- :func:`tune` -- measure every candidate on the layer's real input, keep the fastest that beats
  dense by a margin, cache it (:class:`TuningCache`, JSON under ``$SPARSECNN_CACHE_DIR``).
- :func:`lookup` -- the cached decision for a problem, if any.
- :func:`choose_layer` -- a layer of a converted model: cached decision, else heuristic.
"""

from .heuristic import choose
from .layer import DENSE_ABOVE_DENSITY, choose_layer
from .tuning import (DEFAULT_MARGIN, Measurement, TuneResult, TuningCache, benchmark, cache_dir,
                     cpu_model, default_cache, lookup, problem_key, thread_counts, tune)

__all__ = ["choose", "choose_layer", "DENSE_ABOVE_DENSITY", "tune", "lookup", "benchmark", "TuningCache", "TuneResult", "Measurement",
           "default_cache", "cache_dir", "problem_key", "cpu_model", "thread_counts",
           "DEFAULT_MARGIN"]
