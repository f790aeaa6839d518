import numpy as np
import pytest
import torch

from sparsecnn.formats import CSRWeight, to_sparse


def test_csr_round_trip():
    w = torch.randn(8, 3, 3, 3)
    w[torch.rand_like(w) < 0.7] = 0
    s = to_sparse(w, "csr")
    assert s.nnz == int((w != 0).sum())
    torch.testing.assert_close(s.to_dense(), w, rtol=0, atol=0)


@pytest.mark.parametrize(
    "rowptr, colidx, values, match",
    [
        ([0, 1], [0], [1.0], "length"),
        ([1, 1, 1], [0], [1.0], r"rowptr\[0\]"),
        ([0, 2, 1], [0, 1], [1.0, 2.0], "non-decreasing"),
        ([0, 1, 2], [0, 5], [1.0, 2.0], r"\[0, 4\)"),
        ([0, 2, 2], [1, 0], [1.0, 2.0], "strictly increasing"),
        ([0, 1, 2], [0, 1], [1.0], "equal length"),
    ],
)
def test_csr_invariants(rowptr, colidx, values, match):
    with pytest.raises(ValueError, match=match):
        CSRWeight(np.array(rowptr), np.array(colidx), np.array(values, dtype=np.float32), (2, 4))
