"""Numba CPU kernels; importing this package registers them."""

from . import _cache  # noqa: F401  (first: Numba's disk cache keyed on all kernel sources)
from . import direct_avx512  # noqa: F401  (registers "direct_avx512" conv2d; needs avx512f)
from . import direct  # noqa: F401  (registers "direct" conv2d: portable)
from . import direct_live  # noqa: F401  (registers "direct_live" conv2d: skips dead channels)
from . import im2col_spmm, linear  # noqa: F401  (register "im2col_spmm", "spmv", "spmm")
from . import structured  # noqa: F401  (registers "im2col_bsr" conv2d, "nm" linear)
from . import sparse_sparse  # noqa: F401  (registers "sparse_sparse" conv2d)
from . import fused_pool  # noqa: F401  (registers "fused_ref" conv2d_pool)
from . import fused_band  # noqa: F401  (registers "fused_direct" conv2d_pool)

__all__: list[str] = []
