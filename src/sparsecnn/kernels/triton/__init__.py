"""GPU kernels in Triton, registered as ``triton_*`` (only when the ``triton`` package is
installed: ``pip install sparsecnn[gpu]``).

- conv2d ``triton_direct`` (CSR) and ``triton_direct_unified`` (unified-row CSR): direct sparse
  convolution (:mod:`.direct`);
- conv2d ``triton_spmm`` (1x1) and linear ``triton_spmm``: Sputnik-style CSR SpMM (:mod:`.spmm`).

They run on CUDA GPUs; with ``TRITON_INTERPRET=1`` set before sparsecnn is imported they also
run on CPU tensors in Triton's interpreter (emulated: for correctness tests, never offered by
dispatch). Registering them imports neither Triton nor their jitted code: that happens at the
first call (see :mod:`._runtime`). docs/gpu.md describes the design, the roofline and the GPU
benchmark.
"""

from ._runtime import installed

if installed():
    from . import direct, spmm  # noqa: F401  (register the kernels)

__all__: list[str] = []
