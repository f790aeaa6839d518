"""A benchmark declared as data (the Triton-tutorial habit): the x values (sparsities), the
lines (providers: the vendor library, dense ``F.conv2d``, plus each sparse kernel), the layers
and the fixed parameters. One :meth:`Benchmark.run` gives the rows from which the table, the CSV
and JSON and the plot are all rendered."""

from __future__ import annotations

from dataclasses import dataclass

from .core import (DEFAULT_BATCHES, DEFAULT_MAX_TIME, DEFAULT_MIN_TIME, DEFAULT_SPARSITIES,
                   DEFAULT_THREADS, DENSE_DESCRIPTION, RTOL, WEIGHTS_DESCRIPTION, _as_spec,
                   _check_positive_int, _check_sparsity, check_threads, resolve_kernels, sweep,
                   weight_format)
from .layers import DEFAULT_SUITE, SUITES


@dataclass(frozen=True)
class Benchmark:
    """What to measure.

    Attributes
    ----------
    layers : tuple of LayerSpec or str
        Layers (specs or :data:`~sparsecnn.bench.LAYERS` names); default: the ``alexnet-conv4``
        suite.
    x_vals : tuple of float
        Sparsities in [0, 1) (the x axis).
    providers : tuple of str or None
        Sparse kernels to time; dense ``F.conv2d`` is always the first line. None: every
        registered conv2d kernel that accepts CSR.
    batches : tuple of int
    threads : int
    seed : int
    min_time, max_time : float
        Seconds per measurement (:func:`sparsecnn.bench.core.measure`).
    """

    layers: tuple = SUITES[DEFAULT_SUITE]
    x_vals: tuple[float, ...] = DEFAULT_SPARSITIES
    providers: tuple[str, ...] | None = None
    batches: tuple[int, ...] = DEFAULT_BATCHES
    threads: int = DEFAULT_THREADS
    seed: int = 0
    min_time: float = DEFAULT_MIN_TIME
    max_time: float = DEFAULT_MAX_TIME
    x_name: str = "sparsity"

    def resolved(self) -> "Benchmark":
        """A copy with layers as specs, sorted unique sparsities and the full provider list
        (dense first), every value checked.

        Raises
        ------
        ValueError
            Unknown layer or kernel, sparsity outside [0, 1), batch or threads < 1, bad times.
        """
        layers = tuple(_as_spec(s) for s in self.layers)
        x_vals = tuple(sorted({_check_sparsity(s) for s in self.x_vals}))
        batches = tuple(dict.fromkeys(_check_positive_int(b, "batch") for b in self.batches))
        if not layers or not x_vals or not batches:
            raise ValueError("need at least one layer, one sparsity and one batch size")
        if not (self.min_time > 0 and self.max_time >= self.min_time):
            raise ValueError(f"need 0 < min_time <= max_time, got {self.min_time}, {self.max_time}")
        return Benchmark(layers, x_vals, tuple(resolve_kernels(self.providers)), batches,
                         check_threads(self.threads), int(self.seed), float(self.min_time),
                         float(self.max_time), self.x_name)

    def declaration(self) -> dict:
        """The resolved benchmark as plain data (for ``bench.json``)."""
        b = self.resolved()
        return {
            "x_name": b.x_name, "x_vals": list(b.x_vals),
            "providers": [{"name": p, "format": "dense" if p == "dense" else weight_format(p),
                           "description": DENSE_DESCRIPTION if p == "dense" else _describe(p)}
                          for p in b.providers],
            "layers": [s.as_dict() for s in b.layers], "batches": list(b.batches),
            "threads": b.threads, "seed": b.seed, "min_time_s": b.min_time,
            "max_time_s": b.max_time, "weights": WEIGHTS_DESCRIPTION, "mismatch_rtol": RTOL,
            "timing": ("torch.utils.benchmark.Timer.timeit blocks, interleaved round-robin "
                       "between providers, until IQR/median < 5 % or max_time; block outliers "
                       "above Q3 + 1.5 IQR dropped; median per call; first call timed apart"),
        }

    def run(self, progress: bool = True, console=None) -> list[dict]:
        """Time every layer x batch x sparsity x provider; returns the rows (see
        :func:`sparsecnn.bench.time_layer`)."""
        b = self.resolved()
        return sweep(b.layers, b.x_vals, b.batches, list(b.providers), b.threads, progress,
                     seed=b.seed, min_time=b.min_time, max_time=b.max_time, console=console)


def _describe(name: str) -> str:
    from ..kernels import registry
    return registry.get("conv2d", name).description


__all__ = ["Benchmark"]
