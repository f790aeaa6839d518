"""The Triton code of direct sparse convolution (imported only where a Triton kernel can run).

One program computes a tile of the output ``y[n, k, p]``: a block of ``BLOCK_K`` output
channels x a sub-batch of ``SUB_BATCH`` images x ``BLOCK_P`` output pixels (``p = oh * OW +
ow``), accumulating in fp32 registers. The input is the zero-padded image (the launcher pads
it), so every stored entry ``(c, r, s)`` of a channel is one offset ``c * Hp * Wp + r dh * Wp +
s dw`` from the pixel's base ``oh sh * Wp + ow sw``: no bounds tests. For each entry ``j`` of
its channels (one step of the loop) a program loads the channels' values and offsets
(``BLOCK_K`` each), gathers the ``BLOCK_K x SUB_BATCH * BLOCK_P`` input elements they multiply
(consecutive pixels at consecutive addresses for stride 1: coalesced along the pixel axis) and
does one FMA per element -- three instructions of the inner loop per useful FMA besides the
load. Each loaded weight is reused by ``SUB_BATCH * BLOCK_P`` outputs; the sub-batch is the GPU
paper's tuned parameter (seeds/003, section 8: "subBatchSize" in {2, 4, 8}).

- ``UNIFIED``: every channel stores ``L`` entries (unified-row CSR, seeds/003 section 7), laid
  out entry-major (``[j * K + k]``): the ``BLOCK_K`` loads of a step are contiguous and every
  lane of the program runs the same ``L`` steps.
- plain CSR: channels are taken in the order of a row swizzle (sorted by nnz, heaviest first;
  Sputnik, Gale et al. 2020) so the channels of a block have similar lengths; a block runs as
  many steps as its longest channel, shorter ones multiplying zeros.

Inputs of any float dtype are loaded and converted to fp32; the output is stored in the input's
dtype.
"""

from __future__ import annotations

import triton
import triton.language as tl

from ._runtime import autotune_options, next_pow2

#: Accumulator elements per program (BLOCK_K x SUB_BATCH x BLOCK_P): 16 fp32 registers per
#: thread at 4 warps.
TILE_ELEMS = 2048

#: The autotuning space: the sub-batch in {1, 2, 4, 8} (the paper's parameter) x two channel
#: blocks, pixels filling the tile.
CONFIGS = [
    triton.Config({"BLOCK_K": bk, "SUB_BATCH": sb, "BLOCK_P": TILE_ELEMS // (bk * sb)},
                  num_warps=4)
    for sb in (1, 2, 4, 8) for bk in (4, 16)
]

_SHAPE_ARGS = ["N", "C_HW", "W", "K", "OH", "OW", "sh", "sw", "L", "work_key"]


def _prune(configs, named_args, **kwargs):
    """Drop configurations whose sub-batch exceeds the batch or whose pixel tile is more than
    twice the output plane (they only compute masked lanes); keep at least one."""
    n = int(named_args["N"])
    plane = int(named_args["OH"]) * int(named_args["OW"])
    keep = [c for c in configs
            if c.kwargs["SUB_BATCH"] <= next_pow2(n)
            and c.kwargs["BLOCK_P"] <= max(16, 2 * next_pow2(plane))]
    return keep or configs[:1]


@triton.jit(do_not_specialize=_SHAPE_ARGS)
def direct_conv_kernel(x_ptr, val_ptr, off_ptr, rowptr_ptr, perm_ptr, bias_ptr, y_ptr,
                       N, C_HW, W, K, OH, OW, sh, sw, L, work_key,
                       UNIFIED: tl.constexpr, HAS_BIAS: tl.constexpr, RELU: tl.constexpr,
                       BLOCK_K: tl.constexpr, SUB_BATCH: tl.constexpr, BLOCK_P: tl.constexpr):
    # x: the zero-padded input (N, C, H, W), so that no tap needs a bounds test
    pid_k = tl.program_id(0)
    pid_n = tl.program_id(1)
    pid_p = tl.program_id(2)
    OHW = OH * OW
    kk = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    kmask = kk < K
    m = tl.arange(0, SUB_BATCH * BLOCK_P)
    n = pid_n * SUB_BATCH + m // BLOCK_P
    pix = pid_p * BLOCK_P + m % BLOCK_P
    mmask = (n < N) & (pix < OHW)
    # lanes past the batch or the plane read a valid address (image N-1, pixel OHW-1) and are
    # not stored: the loop's loads need no mask
    nc = tl.minimum(n, N - 1)
    pc = tl.minimum(pix, OHW - 1)
    oh = pc // OW
    ow = pc % OW
    xrow = x_ptr + (nc.to(tl.int64) * C_HW + oh * sh * W + ow * sw)[None, :]
    if UNIFIED:
        rows = kk
        start = kk * 0
        cnt = start
        steps = L
    else:
        rows = tl.load(perm_ptr + kk, mask=kmask, other=0)
        start = tl.load(rowptr_ptr + rows, mask=kmask, other=0)
        cnt = tl.load(rowptr_ptr + rows + 1, mask=kmask, other=0) - start
        cnt = tl.where(kmask, cnt, 0)
        steps = tl.max(cnt, axis=0)
    acc = tl.zeros((BLOCK_K, SUB_BATCH * BLOCK_P), dtype=tl.float32)
    for j in range(0, steps):
        if UNIFIED:
            idx = j * K + kk
            jm = kmask
        else:
            idx = start + j
            jm = j < cnt
        # a lane past its row's end gets value 0 and offset 0 (a valid address)
        v = tl.load(val_ptr + idx, mask=jm, other=0.0)
        off = tl.load(off_ptr + idx, mask=jm, other=0)
        xv = tl.load(xrow + off[:, None])
        acc += v[:, None] * xv.to(tl.float32)
    if HAS_BIAS:
        b = tl.load(bias_ptr + rows, mask=kmask, other=0.0)
        acc += b.to(tl.float32)[:, None]
    if RELU:
        acc = tl.maximum(acc, 0.0)
    ybase = n.to(tl.int64) * K * OHW + pix
    yptr = y_ptr + ybase[None, :] + (rows * OHW)[:, None]
    tl.store(yptr, acc.to(y_ptr.dtype.element_ty), mask=kmask[:, None] & mmask[None, :])


direct_conv_tuned = triton.autotune(
    configs=CONFIGS, key=["N", "C_HW", "W", "K", "OH", "OW", "sh", "sw", "work_key", "UNIFIED"],
    prune_configs_by={"early_config_prune": _prune}, **autotune_options(),
)(direct_conv_kernel)


#: The block sizes of the last launch (the autotuner's choice when autotuning): read by the
#: GPU benchmark to report the chosen sub-batch and tiles.
LAST_CONFIG: dict = {}


def heuristic(n: int, plane: int, k: int, interpreter: bool = False) -> dict:
    """The configuration launched without autotuning.

    On a GPU: 4 channels per block, the sub-batch covers the batch (up to 8), the pixel tile
    fills :data:`TILE_ELEMS`. Under the interpreter, whose cost is per operation rather than per
    element, larger tiles (up to 8 channels x 4 images x 256 pixels) so that a test runs few
    programs -- yet several for the larger test cases, so the program-index arithmetic is
    exercised too.
    """
    if interpreter:
        return {"BLOCK_K": min(8, next_pow2(k)), "SUB_BATCH": min(4, next_pow2(n)),
                "BLOCK_P": max(16, min(256, next_pow2(plane)))}
    sb = min(8, next_pow2(n))
    bk = 4
    bp = max(16, min(TILE_ELEMS // (bk * sb), next_pow2(plane)))
    return {"BLOCK_K": bk, "SUB_BATCH": sb, "BLOCK_P": bp}


def launch(x, values, offsets, rowptr, perm, bias, y, *, stride, row_len, work_key, unified,
           relu, autotune, interpreter=False, config=None):
    """Run the kernel: ``y`` (N, K, OH, OW) from the zero-padded input ``x`` (N, C, H + 2 ph,
    W + 2 pw), both contiguous, on the index arrays' device; ``bias`` (K,) or None. Returns the
    config used.

    ``autotune`` launches through ``triton.autotune``; otherwise ``config`` (a dict of the
    block sizes, as in :data:`CONFIGS`) or the :func:`heuristic` one is launched."""
    n_img, c, h, w = x.shape
    k, oh, ow = y.shape[1], y.shape[2], y.shape[3]
    sh, sw = stride
    args = (x, values, offsets, rowptr, perm, values if bias is None else bias, y,
            n_img, c * h * w, w, k, oh, ow, sh, sw, row_len, work_key)
    flags = {"UNIFIED": bool(unified), "HAS_BIAS": bias is not None, "RELU": bool(relu)}
    plane = oh * ow
    if autotune and config is None:
        def grid(meta):
            return (triton.cdiv(k, meta["BLOCK_K"]), triton.cdiv(n_img, meta["SUB_BATCH"]),
                    triton.cdiv(plane, meta["BLOCK_P"]))

        direct_conv_tuned[grid](*args, **flags)
        LAST_CONFIG.clear()
        LAST_CONFIG.update(direct_conv_tuned.best_config.kwargs)
        return dict(LAST_CONFIG)
    cfg = config or heuristic(n_img, plane, k, interpreter)
    grid = (triton.cdiv(k, cfg["BLOCK_K"]), triton.cdiv(n_img, cfg["SUB_BATCH"]),
            triton.cdiv(plane, cfg["BLOCK_P"]))
    direct_conv_kernel[grid](*args, **flags, **cfg, num_warps=4)
    LAST_CONFIG.clear()
    LAST_CONFIG.update(cfg)
    return cfg
