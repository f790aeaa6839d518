"""Activation-aware direct sparse convolution: ``direct`` that also skips dead input channels.

After a ReLU, whole input channels of an image are often zero (ResNet-56 with the published
weights, 90 % pruned, real CIFAR-10: up to 36 % of the ``(image, channel)`` planes of some
layers' inputs, :mod:`sparsecnn.analysis.activations`). A weight nonzero that reads a dead
channel multiplies zeros only ("W x 0 = 0", EIE; the ineffectual neurons of Cnvlutin, Albericio
et al. 2016, skipped here at the granularity of a whole channel plane, which costs a CPU no
per-value test). Per call this kernel

1. finds each image's live channels (:func:`live_channels`: ``x[n, c]`` not all zero, a scan
   that stops at a live plane's first nonzero; exact: a NaN is live, -0.0 is zero);
2. if every channel of every image is live, runs ``direct`` unchanged (same prepared operand);
3. else compacts, per image, the prepared weight's offsets / values / block pointers to the
   nonzeros on live channels (one pass over the nonzeros per image, :func:`_compact`), and runs
   ``direct``'s jitted entry with one row of arrays per image.

The result is exact (the skipped products are exactly zero, and a sum of fewer terms differs
from dense only by float reassociation, as ``direct`` does). The work saved is the share of
weight nonzeros reading dead channels (:func:`~sparsecnn.analysis.activations.dead_channel_work`);
the cost is the scan and the compaction, so the tuner chooses this kernel only where it measured
faster on the layer's real activations (its key carries the activation density).
"""

from __future__ import annotations

import threading

import numpy as np
import torch
from numba import njit

from ..registry import Kernel, register
from .direct import prepare_direct

__all__ = ["LiveOperand", "conv2d_direct_live", "live_channels", "prepare_direct_live"]


@njit(cache=True, nogil=True)
def live_channels(x4, live) -> int:
    """``live[n, c]`` = channel ``c`` of image ``n`` of ``x4`` (N, C, H, W) holds a value other
    than 0 (NaN counts as live, -0.0 as zero); returns the number of dead planes. A live plane's
    scan stops at its first nonzero."""
    N, C, H, W = x4.shape
    x = x4.reshape(x4.size)
    hw = H * W
    dead = 0
    for i in range(N * C):
        a = i * hw
        ok = False
        for j in range(hw):
            if x[a + j] != 0.0:
                ok = True
                break
        live[i // C, i % C] = ok
        if not ok:
            dead += 1
    return dead


@njit(cache=True, nogil=True)
def _compact(live, chan, offs, vals, blkptr, o2, v2, b2, keep):
    """Per image ``n``: the nonzeros ``i`` with ``live[n, chan[i]]``, in order, into row ``n`` of
    ``o2`` / ``v2``; ``b2[n, p]`` = their count before ``blkptr[p]`` (the block pointers of the
    compacted row; ``blkptr`` runs from 0 to nnz, non-decreasing). ``keep``: uint8 scratch of
    nnz. Two branch-free passes (a gather of the flags, then write-and-advance), 3x faster here
    than one pass with the flag looked up in the loop."""
    P = blkptr.size
    nnz = offs.size
    for n in range(live.shape[0]):
        lv = live[n].view(np.uint8)
        for i in range(nnz):
            keep[i] = lv[chan[i]]
        on, vn, bn = o2[n], v2[n], b2[n]
        j = 0
        for p in range(P - 1):
            bn[p] = j
            for i in range(blkptr[p], blkptr[p + 1]):
                on[j] = offs[i]
                vn[j] = vals[i]
                j += keep[i]
        bn[P - 1] = j


@njit(cache=True, nogil=True)
def _live_compact(x4, chan, offs, vals, blkptr, live, o2, v2, b2, keep) -> int:
    """:func:`live_channels` then, if a plane is dead, :func:`_compact`; returns the dead
    planes."""
    dead = live_channels(x4, live)
    if dead:
        _compact(live, chan, offs, vals, blkptr, o2, v2, b2, keep)
    return dead


class LiveOperand:
    """``direct``'s prepared operand plus the input channel of each nonzero (``chan`` int32,
    ``nnz``): what :func:`conv2d_direct_live` needs."""

    __slots__ = ("_ws", "chan", "op")

    def __init__(self, op, chan: np.ndarray):
        self.op, self.chan = op, chan
        self._ws: dict = {}  # thread id -> (mask, offsets, values, blkptr, flags) for N images

    def _buffers(self, n: int):
        """This thread's mask and compacted arrays for ``n`` images (reused across calls)."""
        key = threading.get_ident()
        ws = self._ws.get(key)
        if ws is None or ws[0].shape[0] != n:
            d = self.op.d
            ws = self._ws[key] = (np.empty((n, d.in_shape[0]), dtype=np.bool_),
                                  np.empty((n, d.nnz), dtype=np.int32),
                                  np.empty((n, d.nnz), dtype=np.float32),
                                  np.empty((n, d.blkptr.size), dtype=np.int32),
                                  np.empty(d.nnz, dtype=np.uint8))
        return ws

    def run(self, x: torch.Tensor, bias, relu: bool) -> torch.Tensor:
        xa = (x.detach() if x.requires_grad else x).numpy()
        live, o2, v2, b2, keep = self._buffers(xa.shape[0])
        d = self.op.d
        dead = _live_compact(xa, self.chan, d.offsets, d.values, d.blkptr, live, o2, v2, b2, keep)
        return self.op.run(x, bias, relu, arrays=(o2, v2, b2) if dead else None)


def prepare_direct_live(weight, problem, cblock=None, nthreads=None) -> LiveOperand:
    """The ``prepare`` step of ``direct_live``: :func:`~sparsecnn.kernels.cpu.direct.
    prepare_direct`'s operand and each nonzero's input channel (from its offset into the
    prepared input: ``offset // (nphase * plane)``)."""
    op = prepare_direct(weight, problem, cblock, nthreads)
    d = op.d
    chan = (d.offsets.astype(np.int64) // (d.nphase * d.plane)).astype(np.int32)
    return LiveOperand(op, chan)


def conv2d_direct_live(prep, x, bias):
    """Direct sparse convolution skipping each image's all-zero input channels (registered as
    kernel ``"direct_live"``).

    Parameters
    ----------
    prep : Prepared
        ``prep.operand`` the :class:`LiveOperand` built by :func:`prepare_direct_live` for
        ``prep.problem`` (a :class:`~sparsecnn.problem.ConvProblem`) from a CSR-like weight
        ``(K, C/groups, R, S)``.
    x : torch.Tensor (N, C, H, W) float32, contiguous, CPU
    bias : torch.Tensor (K,) float32 or None

    Returns
    -------
    torch.Tensor (N, K, OH, OW) float32

    Notes
    -----
    Arguments are validated by :func:`sparsecnn.conv2d`; this function trusts them.
    """
    return prep.operand.run(x, bias, prep.problem.relu)


register(Kernel(
    "direct_live", "conv2d", conv2d_direct_live, formats=("csr",), prepare=prepare_direct_live,
    sources=("sparsecnn.kernels.cpu.direct", "sparsecnn.kernels.cpu._vec",
             "sparsecnn.kernels.cpu._direct_common", "sparsecnn.kernels.cpu.direct_csr",
             "sparsecnn.kernels.capabilities"),
    description="activation-aware direct sparse convolution: direct, skipping the nonzeros "
                "that read an image's all-zero input channels (compacted per image per call)",
))
