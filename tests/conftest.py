"""Suite-wide settings.

The suite runs in parallel (pytest-xdist), so every timing it takes sees another busy worker:
tuning would flag each measurement as disturbed and refuse to cache it. Tests of caching
behaviour need decisions cached, so the suite asks for that (tests of the contention policy
itself remove the variable).

Without a GPU, Triton kernels are tested in Triton's interpreter on CPU tensors
(``TRITON_INTERPRET=1``, which must be set before sparsecnn, hence Triton, is imported): the
registry then declares them for the CPU too (emulated: never offered by dispatch or tuning),
and the registry-driven kernel grids run them. With a GPU they are compiled and run on CUDA.
"""

import os

os.environ.setdefault("SPARSECNN_TUNE_CONTENDED", "cache")

import torch  # noqa: E402

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
