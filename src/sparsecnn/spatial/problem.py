"""The problem type of a sparse convolution over a rulebook (op ``"sparse_conv"``).

One :class:`SparseConvProblem` describes one call of :func:`sparsecnn.spatial.sparse_conv`: the
active sites on each side, the channels, the kernel volume and kind. It is a
:class:`sparsecnn.problem.Problem` like ``ConvProblem`` / ``LinearProblem`` (frozen, hashable,
one canonical :meth:`~sparsecnn.problem.Problem.key`), so the kernel registry
(:mod:`sparsecnn.kernels.registry`) checks the capabilities of the spatial kernels against it and
:func:`sparsecnn.dispatch.choose` picks among them with the project's one policy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ..problem import Problem


@dataclass(frozen=True, slots=True)
class SparseConvProblem(Problem):
    """One sparse (submanifold, regular or inverse) convolution over a rulebook.

    Attributes
    ----------
    kind : str
        ``"subm"``, ``"conv"`` or ``"inverse"``.
    ndim : int
        Spatial dimensions D (2 or 3 in practice).
    kernel_size : tuple of int
        D kernel sizes; ``volume`` is their product (the rulebook's K columns).
    n_in, n_out : int
        Active input / output sites (rows of the feature matrices).
    c_in, c_out : int
        Input / output channels.
    batch_size : int
        Samples in the batch (the coordinates' batch index range).
    relu, format, density, dtype, device, act_density
        As every :class:`~sparsecnn.problem.Problem`; the weight is a dense torch tensor here
        (``format="dense"``, ``density=1.0``).
    """

    op: ClassVar[str] = "sparse_conv"
    kind: str
    ndim: int
    kernel_size: tuple
    n_in: int
    n_out: int
    c_in: int
    c_out: int
    batch_size: int = 1
    relu: bool = False
    format: str = "dense"
    density: float = 1.0
    dtype: str = "float32"
    device: str = "cpu"
    act_density: float | None = None

    @property
    def volume(self) -> int:
        """Kernel offsets K (``prod(kernel_size)``)."""
        v = 1
        for k in self.kernel_size:
            v *= int(k)
        return v

    @property
    def batch(self) -> int:
        return self.batch_size

    @property
    def dense_flops(self) -> int:
        """FLOPs if every output site had all ``volume`` neighbours (an upper bound: the
        rulebook's pair count ``n_pairs`` gives the useful work, ``2 n_pairs c_in c_out``)."""
        return 2 * self.n_out * self.volume * self.c_in * self.c_out

    def pair_flops(self, n_pairs: int) -> int:
        """Useful FLOPs of a rulebook with ``n_pairs`` (offset, input, output) entries."""
        return 2 * int(n_pairs) * self.c_in * self.c_out


__all__ = ["SparseConvProblem"]
