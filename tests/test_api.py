"""Validation of the public functional API (kernels are tested in their own files)."""

import pytest
import torch
import torch.nn.functional as F

import sparsecnn
from sparsecnn.kernels import registry


def test_dense_algo_matches_torch():
    x = torch.randn(2, 4, 9, 9)
    w = torch.randn(6, 4, 3, 3)
    b = torch.randn(6)
    torch.testing.assert_close(sparsecnn.conv2d(x, w, b, padding=1, algo="dense"),
                               F.conv2d(x, w, b, padding=1))


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        ({"x": torch.randn(4, 9, 9, 1, 1)}, ValueError, "4-D"),
        ({"w": torch.randn(6, 3, 3, 3)}, ValueError, "input channels"),
        ({"stride": 0}, ValueError, "stride"),
        ({"stride": (1,)}, TypeError, "stride"),
        ({"padding": -1}, ValueError, "padding"),
        ({"dilation": 0}, ValueError, "dilation"),
        ({"groups": 3}, ValueError, "groups"),
        ({"x": torch.randn(1, 4, 2, 2)}, ValueError, "smaller than"),
        ({"bias": torch.randn(5)}, ValueError, "bias"),
        ({"x": torch.randn(1, 4, 9, 9).double()}, TypeError, "dtype"),
        ({"x": torch.ones(1, 4, 9, 9, dtype=torch.int32)}, TypeError, "floating"),
        ({"algo": "nope"}, ValueError, "unknown conv2d kernel"),
        ({"w": "weights"}, TypeError, "weight"),
    ],
)
def test_conv2d_bad_input(kwargs, exc, match):
    args = {"x": torch.randn(1, 4, 9, 9), "w": torch.randn(6, 4, 3, 3), "bias": None,
            "stride": 1, "padding": 0, "dilation": 1, "groups": 1, "algo": "dense"}
    args.update(kwargs)
    with pytest.raises(exc, match=match):
        sparsecnn.conv2d(args["x"], args["w"], args["bias"], args["stride"], args["padding"],
                         args["dilation"], args["groups"], algo=args["algo"])


def test_linear_bad_input():
    with pytest.raises(ValueError, match="features"):
        sparsecnn.linear(torch.randn(2, 5), torch.randn(3, 4), algo="dense")


def test_registry_lists_dense():
    assert "dense" in registry.names("conv2d")
    assert "dense" in registry.names("linear")
    with pytest.raises(ValueError, match="registered"):
        registry.get("conv2d", "missing")


def test_shape_errors_name_both_shapes():
    ws = sparsecnn.to_sparse(torch.randn(6, 4, 3, 3), "csr")
    with pytest.raises(ValueError, match=r"\(6, 4, 3, 3\).*\(1, 5, 9, 9\)"):
        sparsecnn.conv2d(torch.randn(1, 5, 9, 9), ws)
    wl = sparsecnn.to_sparse(torch.randn(3, 4), "csr")
    with pytest.raises(ValueError, match=r"\(2, 5\).*\(3, 4\)"):
        sparsecnn.linear(torch.randn(2, 5), wl)


def test_caller_mutating_its_arrays_cannot_reach_a_kernel():
    """Issue 7: changing the caller's colidx / rowptr after building a CSRWeight used to make
    the CSR kernels read out of bounds (segfault). The weight owns copies now."""
    import numpy as np

    from sparsecnn.formats import CSRWeight
    from sparsecnn.kernels import registry

    gen = torch.Generator().manual_seed(1)
    w = torch.randn(6, 4, 3, 3, generator=gen)
    w[torch.rand(w.shape, generator=gen) < 0.7] = 0
    ref = sparsecnn.to_sparse(w)
    rowptr, colidx, values = ref.rowptr.copy(), ref.colidx.copy(), ref.values.copy()
    csr = CSRWeight(rowptr, colidx, values, w.shape)
    x = torch.randn(1, 4, 8, 8, generator=gen)
    want = F.conv2d(x, w, None, 1, 1)
    colidx[:] = 10**6
    rowptr[1:] = 10**6
    values[:] = np.nan
    _, problem, _, _ = sparsecnn.functional.conv2d_problem(x, csr, None, 1, 1)
    for k in registry.kernels("conv2d"):
        if k.accepts("csr") and k.why_not(problem, csr) is None:
            torch.testing.assert_close(sparsecnn.conv2d(x, csr, None, 1, 1, algo=k.name), want,
                                       rtol=1e-4, atol=1e-4)
