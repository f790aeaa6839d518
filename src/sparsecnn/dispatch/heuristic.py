"""The one dispatch policy: the tuning cache's measured decision, else a cheap heuristic.

:func:`choose` is what ``sparsecnn.conv2d(..., algo="auto")``, ``sparsecnn.linear`` and the
modules of :mod:`sparsecnn.nn` all call for a problem they have not been told how to run, so
they cannot disagree.
"""

from __future__ import annotations

from ..kernels import registry
from ..problem import Problem
from .tuning import default_cache, lookup, thread_counts

#: problem -> (signature, kernel name): choose()'s memo, valid while the signature holds
_MEMO: dict = {}
_MEMO_MAX = 4096

#: Without a measurement, a sparse weight denser than this runs dense (PyTorch on its densified
#: weight, which the prepared-operand cache keeps): the published break-even of direct sparse
#: convolution is around 70 % sparsity (Park et al. 2017, SkimCaffe), so 30 % density is a
#: conservative cut.
DENSE_ABOVE_DENSITY = 0.3

#: Preference order per op among the sparse kernels that can run a problem (the first that can
#: wins); kernels not listed come after, by name.
PREFERENCE = {
    "conv2d": ("direct_avx512", "direct", "im2col_spmm", "im2col_bsr"),
    # conv + ReLU + max-pool: the conv kernels then max_pool2d, in the same order (fused
    # kernels are chosen by measurement)
    "conv2d_pool": ("direct_avx512", "direct", "im2col_spmm", "im2col_bsr"),
    "linear": ("spmv", "spmm", "nm"),
    "sparse_conv": ("fused", "gemm"),  # sparsecnn.spatial (bench-spatial --algos, docs/spatial.md)
}
#: Linear layers at batch > 1 prefer SpMM (the batch is its inner loop).
PREFERENCE_BATCHED = {"linear": ("spmm", "spmv", "nm")}


def heuristic(problem: Problem, *, dense_above: float = DENSE_ABOVE_DENSITY) -> str:
    """The kernel to run ``problem`` with when nothing is measured.

    ``"dense"`` for a dense weight, for a weight denser than ``dense_above`` (default
    :data:`DENSE_ABOVE_DENSITY`; 1.0 asks for the preferred sparse kernel whatever the density),
    or when no sparse kernel can run the problem here; otherwise the first of
    :data:`PREFERENCE` that can (SpMM before SpMV for linear layers at batch > 1). An op without
    a ``"dense"`` kernel (``"sparse_conv"``: the sparsity is in the input sites, its weight is
    dense) gets the first of its kernels that can run the problem.

    Raises
    ------
    ValueError
        If an op without a ``"dense"`` kernel has none that can run ``problem`` here.
    """
    has_dense = "dense" in registry.names(problem.op)
    if has_dense and (problem.format == "dense" or problem.density > dense_above):
        return "dense"
    # (candidates without a weight: kernels whose use depends on the weight, like ``hybrid``,
    # are chosen only by measurement)
    ok = {k.name for k in registry.candidates(problem)} - {"dense"}
    if not ok:
        if not has_dense:
            raise ValueError(f"no {problem.op} kernel can run {problem.key()} here; registered: "
                             f"{registry.names(problem.op)}")
        return "dense"
    order = PREFERENCE.get(problem.op, ())
    if problem.batch > 1:
        order = PREFERENCE_BATCHED.get(problem.op, order)
    for name in order:
        if name in ok:
            return name
    return sorted(ok)[0]


def choose(problem: Problem, *, use_cache: bool = True) -> str:
    """The kernel for ``problem``: the tuning cache's decision if one is stored for this
    problem on this machine (and its kernel can run here), else :func:`heuristic`.

    ``use_cache=False`` skips the cache (touches no file).

    The answer is memoised per problem while the tuning cache file, the thread counts and the
    registered kernels stay the same (one ``stat`` per call), so ``conv2d(algo="auto")`` does
    not redo the lookup on every call.
    """
    sig = (use_cache and default_cache().signature(), thread_counts(), registry.generation())
    hit = _MEMO.get(problem)
    if hit is not None and hit[0] == sig:
        return hit[1]
    name = None
    if use_cache and problem.format != "dense":
        name = lookup(problem)
    if name is None:
        name = heuristic(problem)
    if len(_MEMO) >= _MEMO_MAX:
        _MEMO.clear()
    _MEMO[problem] = (sig, name)
    return name
