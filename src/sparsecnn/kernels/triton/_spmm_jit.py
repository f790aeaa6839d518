"""The Triton code of CSR SpMM ``Y[b] = W @ X[b]`` (imported only where a Triton kernel can run).

Sputnik's two main ideas (Gale et al. 2020, "Sparse GPU kernels for deep learning", SC):

- **row swizzle**: programs take the sparse rows in the order of ``perm`` (rows sorted by nnz,
  heaviest first), so the rows of one program have similar lengths (few masked steps) and the
  longest rows start first (load balance across the machine);
- **vector loads of the dense operand**: for each stored entry the program reads a contiguous
  run of ``BLOCK_P`` elements of one row of ``X`` (unit stride, hinted contiguous and aligned
  so that the compiler can emit 128-bit loads); each loaded weight is reused ``BLOCK_P`` times.

One program: ``BLOCK_M`` swizzled rows x ``BLOCK_P`` columns of one batch item ``b``; fp32
accumulators; bias and ReLU in the epilogue; output in the input's dtype. Strides make the same
code serve a 1x1 convolution (``X[b]`` = image ``b`` as (C, H*W), ``Y[b]`` = (K, OH*OW)) and a
linear layer (one item, ``X`` = the transposed input (in, B), ``Y`` written as (B, out)).
"""

from __future__ import annotations

import triton
import triton.language as tl

from ._runtime import autotune_options, next_pow2

#: The autotuning space: (rows, columns) per program, 2048 or 4096 accumulators.
CONFIGS = [
    triton.Config({"BLOCK_M": bm, "BLOCK_P": bp}, num_warps=4)
    for bm, bp in ((4, 512), (8, 256), (16, 128), (32, 64), (8, 512), (16, 256))
]

_SHAPE_ARGS = ["M", "P", "NB", "syb", "sym", "syp", "sxb", "work_key"]


def _prune(configs, named_args, **kwargs):
    """Drop configurations whose column tile is more than twice the columns (keep one)."""
    p = int(named_args["P"])
    keep = [c for c in configs if c.kwargs["BLOCK_P"] <= max(64, 2 * next_pow2(p))]
    return keep or configs[:1]


@triton.jit(do_not_specialize=_SHAPE_ARGS)
def csr_spmm_kernel(x_ptr, val_ptr, col_ptr, rowptr_ptr, perm_ptr, bias_ptr, y_ptr,
                    M, P, NB, sxb, sxk, sxp, syb, sym, syp, work_key,
                    HAS_BIAS: tl.constexpr, RELU: tl.constexpr, BLOCK_M: tl.constexpr,
                    BLOCK_P: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_b = tl.program_id(1)
    pid_p = tl.program_id(2)
    r = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rmask = r < M
    rows = tl.load(perm_ptr + r, mask=rmask, other=0)
    start = tl.load(rowptr_ptr + rows, mask=rmask, other=0)
    cnt = tl.load(rowptr_ptr + rows + 1, mask=rmask, other=0) - start
    cnt = tl.where(rmask, cnt, 0)
    steps = tl.max(cnt, axis=0)
    p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    p = tl.max_contiguous(tl.multiple_of(p, BLOCK_P), BLOCK_P)
    pmask = (p < P)[None, :]
    xcol = x_ptr + pid_b.to(tl.int64) * sxb + (p * sxp)[None, :]
    acc = tl.zeros((BLOCK_M, BLOCK_P), dtype=tl.float32)
    for j in range(0, steps):
        # a row past its end gets value 0 and column 0 (a valid address): only the column
        # tail is masked
        jm = j < cnt
        v = tl.load(val_ptr + start + j, mask=jm, other=0.0)
        c = tl.load(col_ptr + start + j, mask=jm, other=0)
        xv = tl.load(xcol + (c.to(tl.int64) * sxk)[:, None], mask=pmask, other=0.0)
        acc += v[:, None] * xv.to(tl.float32)
    if HAS_BIAS:
        b = tl.load(bias_ptr + rows, mask=rmask, other=0.0)
        acc += b.to(tl.float32)[:, None]
    if RELU:
        acc = tl.maximum(acc, 0.0)
    yptr = (y_ptr + pid_b.to(tl.int64) * syb + rows.to(tl.int64)[:, None] * sym
            + p[None, :].to(tl.int64) * syp)
    tl.store(yptr, acc.to(y_ptr.dtype.element_ty), mask=rmask[:, None] & pmask)


csr_spmm_tuned = triton.autotune(
    configs=CONFIGS, key=["M", "P", "NB", "sxk", "work_key"],
    prune_configs_by={"early_config_prune": _prune}, **autotune_options(),
)(csr_spmm_kernel)


#: The block sizes of the last launch (the autotuner's choice when autotuning): read by the
#: GPU benchmark to report the chosen sub-batch and tiles.
LAST_CONFIG: dict = {}


def heuristic(p: int, m: int, interpreter: bool = False) -> dict:
    """The configuration launched without autotuning: the column tile covers the columns (16 to
    256), rows fill 2048 accumulators (4 to 32). Under the interpreter (cost per operation, not
    per element) up to 16 rows x 256 columns, still several programs for the larger tests."""
    bp = max(16, min(256, next_pow2(p)))
    if interpreter:
        return {"BLOCK_M": max(4, min(16, next_pow2(m))), "BLOCK_P": bp}
    return {"BLOCK_M": max(4, min(32, 2048 // bp)), "BLOCK_P": bp}


def launch(x, values, cols, rowptr, perm, bias, y, *, m, p, nb, x_strides, y_strides,
           work_key, relu, autotune, interpreter=False, config=None):
    """``y[b] = W @ x[b] (+ bias, ReLU)`` for ``b < nb``: ``x`` read at ``b * sxb + c * sxk +
    q * sxp``, ``y`` written at ``b * syb + row * sym + q * syp`` (q < p, row < m). Returns the
    config used.

    ``autotune`` launches through ``triton.autotune``; otherwise ``config`` (a dict of the
    block sizes, as in :data:`CONFIGS`) or the :func:`heuristic` one is launched."""
    sxb, sxk, sxp = x_strides
    syb, sym, syp = y_strides
    args = (x, values, cols, rowptr, perm, values if bias is None else bias, y,
            m, p, nb, sxb, sxk, sxp, syb, sym, syp, work_key)
    flags = {"HAS_BIAS": bias is not None, "RELU": bool(relu)}
    if autotune and config is None:
        def grid(meta):
            return (triton.cdiv(m, meta["BLOCK_M"]), nb, triton.cdiv(p, meta["BLOCK_P"]))

        csr_spmm_tuned[grid](*args, **flags)
        LAST_CONFIG.clear()
        LAST_CONFIG.update(csr_spmm_tuned.best_config.kwargs)
        return dict(LAST_CONFIG)
    cfg = config or heuristic(p, m, interpreter)
    grid = (triton.cdiv(m, cfg["BLOCK_M"]), nb, triton.cdiv(p, cfg["BLOCK_P"]))
    csr_spmm_kernel[grid](*args, **flags, **cfg, num_warps=4)
    LAST_CONFIG.clear()
    LAST_CONFIG.update(cfg)
    return cfg
