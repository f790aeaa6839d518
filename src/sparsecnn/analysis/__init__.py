"""Sparsity analyses of conv weights: functions that return data (dicts, lists, ndarrays).

Rendering lives in :mod:`sparsecnn.report` (Distiller's split of compute and rendering).

- :func:`layer_sparsity`, :func:`model_sparsity`: element / kernel / channel / filter sparsity,
  nnz, bytes dense vs each sparse format.
- :func:`density_profile`: local (per R x S filter) and global density, nnz per channel.
- :func:`load_balance`: nnz per thread and imbalance under the engine's partition and a naive one.
- :func:`dense_blocks`, :func:`measure_rates`, :func:`hybrid_estimate`, :func:`measure_hybrid`:
  dense sub-blocks and a hybrid dense + sparse plan, estimated and measured.
- :func:`threshold_sweep`, :func:`accuracy_evaluator`: density (and accuracy) vs the threshold.
- :func:`break_even_curves`: speedup vs sparsity per kernel (from :mod:`sparsecnn.bench`; slow).
- :func:`capture_activation_counts`, :func:`ineffectual_work`: MACs skipped by weight zeros,
  activation zeros and both.
- :func:`zero_structure`, :func:`activation_structure`, :func:`dead_channel_work`: where the
  zeros of real activations are (values, dead channels per image, zero rows, zero vector windows).
- :func:`index_encodings`, :func:`model_index_encodings`: bytes of Cambricon-X direct / step
  indexing and EIE's relative 4-bit indices + 4-bit codebook against CSR.
- :func:`analyse_model`: all of the above over a model's conv layers (what `sparsecnn report` shows).
"""

from .balance import load_balance, naive_boundaries
from .blocks import dense_blocks, hybrid_estimate, measure_hybrid, measure_rates, split_weight
from .breakeven import break_even_curves, speedup_series
from .model import analyse_model, conv_modules, resolve_layers
from .activations import activation_structure, dead_channel_work, zero_structure
from .encodings import index_encodings, model_index_encodings
from .ineffectual import activation_nonzero_counts, capture_activation_counts, ineffectual_work
from .sparsity import density_profile, format_bytes, layer_sparsity, model_sparsity
from .sweep import accuracy_evaluator, threshold_sweep

__all__ = [
    "layer_sparsity", "model_sparsity", "format_bytes", "density_profile", "load_balance",
    "naive_boundaries", "dense_blocks", "split_weight", "measure_rates", "hybrid_estimate",
    "measure_hybrid", "threshold_sweep", "accuracy_evaluator", "break_even_curves", "speedup_series",
    "activation_nonzero_counts", "capture_activation_counts", "ineffectual_work",
    "analyse_model", "conv_modules", "resolve_layers", "zero_structure", "activation_structure",
    "dead_channel_work", "index_encodings", "model_index_encodings",
]
