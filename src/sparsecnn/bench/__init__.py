"""Layer benchmark: dense ``torch.nn.functional.conv2d`` against each sparse conv2d kernel.

Data in, data out: :data:`LAYERS` and :data:`SUITES` declare the layers, :func:`time_layer` and
:func:`sweep` measure and return rows (dicts), :func:`break_even` and :func:`compile_times`
analyse rows, and :mod:`sparsecnn.bench.output` renders them (rich tables, CSV/JSON, plot,
results folder). The ``sparsecnn bench`` command ties them together (docs/bench.md).
"""

from .benchmark import Benchmark
from .core import (DEFAULT_BATCHES, DEFAULT_SPARSITIES, DEFAULT_THREADS, ROW_KEYS, break_even,
                   break_even_labels, check_threads, compile_times, layer_input, measure,
                   pruned_weight, resolve_kernels, sparse_kernel_names, sweep, time_layer,
                   weight_format)
from .layers import DEFAULT_SUITE, LAYERS, SUITES, LayerSpec, select_layers
from .output import (machine_info, plot_speedup, render_tables, results_document, write_csv,
                     write_results)

__all__ = [
    "Benchmark", "LAYERS", "SUITES", "DEFAULT_SUITE", "LayerSpec", "select_layers",
    "DEFAULT_SPARSITIES", "DEFAULT_BATCHES", "DEFAULT_THREADS", "ROW_KEYS",
    "time_layer", "sweep", "measure", "break_even", "break_even_labels", "compile_times",
    "pruned_weight", "layer_input", "resolve_kernels", "sparse_kernel_names", "weight_format",
    "check_threads", "machine_info", "render_tables", "write_csv", "write_results",
    "results_document", "plot_speedup",
]
