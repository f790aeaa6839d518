"""The decision for one layer of a converted model: cached measurement, else a heuristic."""

from __future__ import annotations

from .heuristic import choose
from .tuning import lookup

#: Without a measurement, a sparse weight denser than this runs dense (its densified weight
#: through PyTorch): the published break-even of direct sparse convolution is around 70 %
#: sparsity (Park et al. 2017, SkimCaffe), so 30 % density is a conservative cut.
DENSE_ABOVE_DENSITY = 0.3


def choose_layer(op: str, weight, problem: dict, *, use_cache: bool = True) -> str:
    """Kernel for one layer of a model: the tuning cache's decision if there is one, else
    ``"dense"`` above :data:`DENSE_ABOVE_DENSITY`, else :func:`choose`.

    ``"dense"`` here means: run the layer's densified weight through PyTorch (the modules of
    :mod:`sparsecnn.nn` keep a dense copy for that), whatever the sparse format.
    """
    if use_cache:
        hit = lookup(problem, op)
        if hit is not None:
            return hit
    if problem["format"] == "dense" or problem.get("density", 0.0) > DENSE_ABOVE_DENSITY:
        return "dense"
    try:
        return choose(op, weight, problem)
    except ValueError:  # no kernel for this format: the dense copy always works
        return "dense"
