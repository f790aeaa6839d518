"""Fused sparse convolution + ReLU + max-pooling, reference kernel (``"fused_ref"``, op
``"conv2d_pool"``).

The PECR idea (Xu et al. 2019, ``seeds/004``: convolution and the following pooling in one
kernel, 17.6x over cuDNN on VGG-19 layers): the convolution's output is pooled where it is made
and never written to memory whole. This kernel is the *reference* of that computation, correct
first: each work item ``(image, output channel)`` computes its channel's whole ``OH x OW`` conv
plane into a private buffer (bias, then one AXPY over the plane rows per weight nonzero, through
slices so LLVM vectorises the stride-1 case), applies the ReLU, and max-pools it straight into
the ``(N, K, PH, PW)`` output; only the pooled output reaches memory. Any convolution geometry
(stride, padding, dilation, groups) and any pooling (window, stride, ``-inf`` padding, dilation,
``ceil_mode``); NaN propagates through the pooling as in ``torch.nn.functional.max_pool2d``.

It is not register-blocked (the fast fused kernel builds on the direct kernel's register tiles);
tuning chooses it only where it beats every conv kernel followed by ``max_pool2d``
(:mod:`sparsecnn.kernels.conv_pool`).
"""

from __future__ import annotations

import numpy as np
import torch
from numba import njit, prange

from ..registry import Kernel, register
from ._common import as_array, bias_or_zero, prepare_compressed


@njit(cache=True, nogil=True, parallel=True)
def _conv_pool_ref(x, rowptr, colidx, values, bias, relu, groups, r_size, s_size, sh, sw, ph, pw,
                   dh, dw, oh_size, ow_size, pk0, pk1, ps0, ps1, pp0, pp1, pd0, pd1, out):
    n_size, c_size, h, w = x.shape
    k_size, ph_size, pw_size = out.shape[1], out.shape[2], out.shape[3]
    cg = c_size // groups
    kg = k_size // groups
    rs = r_size * s_size
    for item in prange(n_size * k_size):
        n = item // k_size
        k = item - n * k_size
        c0 = (k // kg) * cg
        plane = np.empty((oh_size, ow_size), dtype=np.float32)
        b = bias[k]
        for i in range(oh_size):
            for j in range(ow_size):
                plane[i, j] = b
        for q in range(rowptr[k], rowptr[k + 1]):
            v = values[q]
            col = colidx[q]
            c = c0 + col // rs
            r = (col // s_size) % r_size
            s = col % s_size
            off_w = s * dw - pw
            # output columns whose input column ow * sw + off_w lies in [0, w)
            lo = 0 if off_w >= 0 else (-off_w + sw - 1) // sw
            hi = (w - 1 - off_w) // sw + 1 if w - 1 - off_w >= 0 else 0
            if hi > ow_size:
                hi = ow_size
            if hi <= lo:
                continue
            xc = x[n, c]
            for oh in range(oh_size):
                ih = oh * sh - ph + r * dh
                if ih < 0 or ih >= h:
                    continue
                dst = plane[oh, lo:hi]
                if sw == 1:
                    src = xc[ih, lo + off_w:hi + off_w]
                    for t in range(hi - lo):
                        dst[t] += v * src[t]
                else:
                    xr = xc[ih]
                    for t in range(hi - lo):
                        dst[t] += v * xr[(lo + t) * sw + off_w]
        if relu:
            for i in range(oh_size):
                for j in range(ow_size):
                    if plane[i, j] < 0.0:
                        plane[i, j] = 0.0
        o = out[n, k]
        for py in range(ph_size):
            for px in range(pw_size):
                m = -np.inf
                for a in range(pk0):
                    yy = py * ps0 - pp0 + a * pd0
                    if yy < 0 or yy >= oh_size:
                        continue
                    for bb in range(pk1):
                        xx = px * ps1 - pp1 + bb * pd1
                        if xx < 0 or xx >= ow_size:
                            continue
                        val = plane[yy, xx]
                        if val > m or val != val:  # NaN sticks (val > NaN is False)
                            m = val
                o[py, px] = m


def conv2d_pool_ref(prep, x, bias):
    """Fused convolution + ReLU + max-pooling, reference (registered as ``"fused_ref"`` for op
    ``conv2d_pool``).

    Parameters
    ----------
    prep : Prepared
        ``prep.operand`` the :class:`~._common.CompressedOperand` of a CSR-like weight
        ``(K, C/groups, R, S)``; ``prep.problem`` a
        :class:`~sparsecnn.problem.ConvPoolProblem`.
    x : torch.Tensor (N, C, H, W) float32, contiguous
    bias : torch.Tensor (K,) float32 or None

    Returns
    -------
    torch.Tensor (N, K, PH, PW) float32: ``max_pool2d(relu?(conv2d(x, w, bias)))``.
    """
    p = prep.problem
    rowptr, colidx, values, _ = prep.operand
    out = torch.empty(p.out_shape, dtype=torch.float32)
    _conv_pool_ref(as_array(x), rowptr, colidx, values, bias_or_zero(bias, prep.operand),
                   bool(p.relu), p.groups, p.R, p.S, p.stride[0], p.stride[1], p.padding[0],
                   p.padding[1], p.dilation[0], p.dilation[1], p.OH, p.OW, *p.pool_kernel,
                   *p.pool_stride, *p.pool_padding, *p.pool_dilation, out.numpy())
    return out


register(Kernel(
    "fused_ref", "conv2d_pool", conv2d_pool_ref, formats=("csr",), prepare=prepare_compressed,
    description="fused conv + ReLU + max-pool, reference: each (image, channel) conv plane in a "
                "private buffer, pooled into the output (the full conv output is never written)",
))

__all__ = ["conv2d_pool_ref"]
