"""Index encodings of sparse accelerators, and what each costs in bytes against CSR.

A conv weight ``(K, C/groups, R, S)`` is viewed, as by every CSR kernel here, as the matrix of
``K`` rows (output channels) by ``C/groups x R x S`` columns. :func:`index_encodings` sizes it in
the encodings that sparse accelerators use (the seeds' lecture on EIE, Cambricon-X and Cnvlutin):

- **CSR** (this project's format): ``rowptr`` (K + 1 pointers), one column index and one value
  per nonzero.
- **Cambricon-X direct indexing** (Zhang et al. 2016, MICRO): per output channel a bit string
  with one bit per input (1 = connected), each channel's string padded to whole bytes; one value
  per nonzero. Independent of where the nonzeros are; pays one bit per *zero* too.
- **Cambricon-X step indexing**: per nonzero the distance (step) from the previous nonzero of its
  output channel (the first one: from column 0), in ``step_bits`` bits; a step longer than
  ``2**step_bits - 1`` is bridged by filler entries (a zero value with the largest step), so each
  filler costs an index *and* a value; plus ``K + 1`` row pointers.
- **EIE** (Han et al. 2016, ISCA): the matrix in CSC (EIE multiplies a column by each nonzero
  input activation), rows interleaved over ``n_pe`` processing elements (row ``i`` on PE
  ``i mod n_pe``), each PE holding its own CSC: per entry a 4-bit *relative* row index (zeros since
  the previous entry of that column on that PE) and a 4-bit weight index into a per-layer
  codebook of 16 shared values (weight sharing by k-means, Deep Compression); a run of more than
  15 zeros is bridged by a padding zero entry; ``n_pe x (columns + 1)`` column pointers and the
  codebook (16 float32 values). The codebook makes the values approximate (what Deep Compression
  retrains for); only bytes are counted here.

Conventions, stated so the figures can be checked: values ``value_bits`` (default 32, float32 as
our kernels store them; Cambricon-X computes in 16-bit fixed point, pass 16 to see that), pointers
``pointer_bits`` (default 32, as CSR's int32 ``rowptr``), CSR column indices 32 bits (what
:class:`~sparsecnn.formats.CSRWeight` stores). Every size is whole bytes per array (bit arrays
rounded up once).
"""

from __future__ import annotations

import numpy as np

from ._common import conv_weight


def _bytes(bits: int) -> int:
    return -(-int(bits) // 8)


def _fillers(gaps: np.ndarray, bits: int) -> int:
    """Filler entries for runs of ``gaps`` positions skipped, with ``bits``-bit run fields: a run
    of ``z`` zeros needs ``z // 2**bits`` fillers (each filler covers ``2**bits - 1`` zeros and
    itself)."""
    return int((gaps // (1 << bits)).sum()) if gaps.size else 0


def index_encodings(weight, *, value_bits: int = 32, pointer_bits: int = 32,
                    step_bits: int = 8, eie_index_bits: int = 4, eie_weight_bits: int = 4,
                    n_pe: int = 1) -> dict:
    """Bytes of one conv weight in CSR, Cambricon-X direct / step indexing and EIE's encoding.

    Parameters
    ----------
    weight : torch.Tensor, numpy.ndarray or SparseWeight, (K, C/groups, R, S)
    value_bits : int
        Bits per stored value for CSR and Cambricon-X (default 32).
    pointer_bits : int
        Bits per row / column pointer (default 32).
    step_bits : int
        Bits per Cambricon-X step (default 8).
    eie_index_bits, eie_weight_bits : int
        EIE's relative-index and codebook-index widths (default 4 and 4: 16 shared values).
    n_pe : int
        EIE processing elements the rows are interleaved over (default 1: the encoding itself;
        EIE had 64).

    Returns
    -------
    dict
        ``shape``, ``rows`` (K), ``cols`` (C/groups R S), ``nnz``, ``dense_bytes`` (float32), and
        one dict per encoding -- ``csr``, ``bitmap`` (Cambricon-X direct), ``step`` (Cambricon-X
        step), ``eie`` -- each with ``index_bytes``, ``value_bytes``, ``pointer_bytes``,
        ``bytes`` (their sum, plus ``codebook_bytes`` for EIE), ``vs_csr`` (bytes / CSR bytes);
        ``step`` and ``eie`` also ``fillers`` (entries added to bridge long runs) and
        ``entries``.

    Raises
    ------
    ValueError
        If a bit width is not in 1..64 or ``n_pe < 1``; as
        :func:`~sparsecnn.analysis._common.conv_weight` for a bad weight.
    """
    for name, v in (("value_bits", value_bits), ("pointer_bits", pointer_bits),
                    ("step_bits", step_bits), ("eie_index_bits", eie_index_bits),
                    ("eie_weight_bits", eie_weight_bits)):
        if isinstance(v, bool) or int(v) != v or not 1 <= int(v) <= 64:
            raise ValueError(f"{name} must be an int in 1..64, got {v!r}")
    if isinstance(n_pe, bool) or int(n_pe) != n_pe or n_pe < 1:
        raise ValueError(f"n_pe must be a positive int, got {n_pe!r}")
    w = conv_weight(weight)
    k = w.shape[0]
    ncols = int(np.prod(w.shape[1:]))
    mask = w.reshape(k, ncols) != 0
    nnz = int(mask.sum())
    rows, cols = np.nonzero(mask)                    # row-major: sorted by row, then column

    def pack(index_bits, value_bytes, pointer_bytes, **extra):
        d = {"index_bytes": _bytes(index_bits), "value_bytes": value_bytes,
             "pointer_bytes": pointer_bytes, **extra}
        d["bytes"] = d["index_bytes"] + value_bytes + pointer_bytes + d.get("codebook_bytes", 0)
        return d

    vbytes = _bytes(nnz * value_bits)
    rowptr_bytes = _bytes((k + 1) * pointer_bits)
    csr = pack(nnz * 32, vbytes, rowptr_bytes)
    # Cambricon-X direct indexing: one bit per (row, column), each row padded to whole bytes
    bitmap = pack(k * _bytes(ncols) * 8, vbytes, 0)
    # Cambricon-X step indexing: distance to the previous nonzero of the row (first: column)
    if nnz:
        first = np.ones(nnz, dtype=bool)
        first[1:] = rows[1:] != rows[:-1]
        prev = np.empty(nnz, dtype=np.int64)
        prev[1:] = cols[:-1]
        steps = np.where(first, cols, cols - prev)
        # a step s needs (s - 1) // maxstep fillers (s <= maxstep fits in one entry)
        maxstep = (1 << step_bits) - 1
        step_fill = int((np.maximum(steps - 1, 0) // maxstep).sum())
    else:
        step_fill = 0
    step_entries = nnz + step_fill
    step = pack(step_entries * step_bits, _bytes(step_entries * value_bits), rowptr_bytes,
                fillers=step_fill, entries=step_entries, step_bits=int(step_bits))
    # EIE: CSC per PE (rows interleaved), relative row index = zeros since the previous entry
    if nnz:
        pe = rows % n_pe
        local = rows // n_pe
        order = np.lexsort((local, cols, pe))
        pe, c_s, loc = pe[order], cols[order], local[order]
        new_col = np.ones(nnz, dtype=bool)
        new_col[1:] = (pe[1:] != pe[:-1]) | (c_s[1:] != c_s[:-1])
        prev_l = np.empty(nnz, dtype=np.int64)
        prev_l[1:] = loc[:-1]
        zeros_before = np.where(new_col, loc, loc - prev_l - 1)
        eie_fill = _fillers(zeros_before, eie_index_bits)
    else:
        eie_fill = 0
    eie_entries = nnz + eie_fill
    eie = pack(eie_entries * eie_index_bits, _bytes(eie_entries * eie_weight_bits),
               _bytes(n_pe * (ncols + 1) * pointer_bits),
               codebook_bytes=(1 << eie_weight_bits) * 4, fillers=eie_fill,
               entries=eie_entries, n_pe=int(n_pe))
    out = {"shape": tuple(int(d) for d in w.shape), "rows": int(k), "cols": ncols, "nnz": nnz,
           "dense_bytes": int(w.size) * 4, "value_bits": int(value_bits),
           "pointer_bits": int(pointer_bits),
           "csr": csr, "bitmap": bitmap, "step": step, "eie": eie}
    for key in ("csr", "bitmap", "step", "eie"):
        out[key]["vs_csr"] = out[key]["bytes"] / csr["bytes"] if csr["bytes"] else float("nan")
    return out


def model_index_encodings(weights: dict, **options) -> list[dict]:
    """:func:`index_encodings` of every weight of ``{name: weight}``, as table rows with a
    ``name`` and a final ``"(total)"`` row of summed bytes (``options`` as for
    :func:`index_encodings`)."""
    rows = []
    tot = {key: {"index_bytes": 0, "value_bytes": 0, "pointer_bytes": 0, "bytes": 0}
           for key in ("csr", "bitmap", "step", "eie")}
    nnz = dense = 0
    for name, w in weights.items():
        r = index_encodings(w, **options)
        r["name"] = name
        rows.append(r)
        nnz += r["nnz"]
        dense += r["dense_bytes"]
        for key in tot:
            for f in tot[key]:
                tot[key][f] += r[key][f]
    for key in tot:
        tot[key]["vs_csr"] = (tot[key]["bytes"] / tot["csr"]["bytes"] if tot["csr"]["bytes"]
                              else float("nan"))
    rows.append({"name": "(total)", "nnz": nnz, "dense_bytes": dense, **tot})
    return rows


__all__ = ["index_encodings", "model_index_encodings"]
