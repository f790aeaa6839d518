"""CSR weights rewritten for direct sparse convolution on one input geometry.

Direct sparse convolution (Park et al. 2017, "Faster CNNs with direct sparse convolutions and
guided pruning", ICLR; Escoin, Chen 2018, "Escoin: efficient sparse convolutional neural network
inference on GPUs") keeps the weight in CSR over its ``K x (C/groups * R * S)`` matrix view and
rewrites every column index ``(c, r, s)`` once into an *offset* into the padded input, so the
inner loop of the convolution is a contiguous AXPY per nonzero:
``out[k].flat[i] += w * xin.flat[offset + i]`` over the output plane laid out with the padded
row width (the extra columns are computed and dropped).

Strided convolutions use a space-to-depth ("phase") decomposition of the padded input: for
stride ``(sh, sw)`` each input channel becomes ``sh * sw`` phase planes
``phase[py, px] = xpad[py::sh, px::sw]`` of ``Hph x Wph``; tap ``(r, s)`` of output ``(oh, ow)``
reads phase ``((r dh) % sh, (s dw) % sw)`` at ``(oh + (r dh) // sh, ow + (s dw) // sw)``: a
stride-1 read, so the same contiguous AXPY serves every stride and dilation. The input buffer is
laid out ``[n][c][phase][Hph][Wph]`` (``c`` the global input channel, so grouped and depthwise
convolutions need nothing special: output channel ``k`` of group ``g`` reads channels
``g * C/groups + c``).

This is the ``direct`` kernel's prepared operand (a plan for one input geometry), not a weight
format: it lives beside the kernel (:mod:`sparsecnn.kernels.cpu.direct`), which builds it in its
``prepare`` step.
"""

from __future__ import annotations

import math

import numpy as np


def _out_size(size: int, k: int, s: int, p: int, d: int) -> int:
    return (size + 2 * p - d * (k - 1) - 1) // s + 1


class DirectConvCSR:
    """A CSR convolution weight with column indices rewritten into input offsets.

    Built with :meth:`from_csr` from a :class:`~sparsecnn.formats.CSRWeight` (or any weight with
    ``rowptr``/``colidx``/``values``, explicit zeros included) and the input geometry it will be
    applied to; valid for that geometry only.

    Attributes
    ----------
    shape : tuple of int
        The dense weight shape ``(K, C/groups, R, S)``.
    rowptr : numpy.ndarray (K + 1,) int32
        Row (output channel) ``k``'s nonzeros are ``[rowptr[k], rowptr[k+1])``.
    colidx : numpy.ndarray (nnz,) int32
        The original columns ``(c * R + r) * S + s`` (kept for :meth:`to_numpy`).
    offsets : numpy.ndarray (nnz,) int32
        ``(c_global * nphase + phase) * plane + (r dh // sh) * Wph + (s dw // sw)``: where the
        nonzero's contiguous input run starts, relative to the image's first element in the
        prepared input buffer.
    values : numpy.ndarray (nnz,) float32
    blkptr : numpy.ndarray (K * (nblocks + 1),) int32
        Row ``k``'s nonzeros touching input-channel block ``b`` (local channels
        ``[b * cblock, (b+1) * cblock)``) are ``[blkptr[k*(nblocks+1)+b], blkptr[k*(nblocks+1)+b+1])``
        (columns are sorted by channel, so each block is a contiguous range of the row).
    in_shape : tuple of int
        ``(C, H, W)`` of the input this was built for.
    stride, padding, dilation : tuple of (int, int)
    groups : int
    out_hw : tuple of int
        ``(OH, OW)``.
    phase_hw : tuple of int
        ``(Hph, Wph)``: rows and row width of one (phase) plane of the prepared input;
        ``Hph = OH + (R-1) dh // sh``, ``Wph = OW + (S-1) dw // sw``.
    nphase : int
        ``sh * sw``.
    plane : int
        ``Hph * Wph`` floats.
    image_stride : int
        ``C * nphase * plane`` rounded up to a multiple of 16: floats per image in the prepared
        input (each image starts 64-byte aligned).
    cblock, nblocks : int
        Input channels per block, ``ceil(C/groups / cblock)`` blocks.
    max_offset : int
        Largest offset (0 for an all-zero weight).

    References
    ----------
    Park, J., Li, S., Wen, W., Tang, P. T. P., Li, H., Chen, Y., Dubey, P. (2017). Faster CNNs
    with direct sparse convolutions and guided pruning. ICLR.
    Chen, X. (2018). Escoin: Efficient sparse convolutional neural network inference on GPUs.
    arXiv:1802.10280.
    """

    def __init__(self, rowptr, colidx, offsets, values, blkptr, shape, in_shape, stride,
                 padding, dilation, groups, cblock):
        self.shape = tuple(int(d) for d in shape)
        self.rowptr = rowptr
        self.colidx = colidx
        self.offsets = offsets
        self.values = values
        self.blkptr = blkptr
        self.in_shape = tuple(int(d) for d in in_shape)
        self.stride = tuple(stride)
        self.padding = tuple(padding)
        self.dilation = tuple(dilation)
        self.groups = int(groups)
        self.cblock = int(cblock)
        k, cg, r, s = self.shape
        c, h, w = self.in_shape
        sh, sw = self.stride
        dh, dw = self.dilation
        self.nblocks = -(-cg // self.cblock)
        oh = _out_size(h, r, sh, self.padding[0], dh)
        ow = _out_size(w, s, sw, self.padding[1], dw)
        self.out_hw = (oh, ow)
        self.phase_hw = (oh + (r - 1) * dh // sh, ow + (s - 1) * dw // sw)
        self.nphase = sh * sw
        self.plane = self.phase_hw[0] * self.phase_hw[1]
        # rounded up to 16 floats so every image starts 64-byte aligned in the buffer
        self.image_stride = -(-(c * self.nphase * self.plane) // 16) * 16
        self.max_offset = int(offsets.max()) if offsets.size else 0

    @classmethod
    def from_csr(cls, weight, in_shape, stride=(1, 1), padding=(0, 0), dilation=(1, 1),
                 groups=1, cblock=None) -> "DirectConvCSR":
        """Rewrite a CSR convolution weight for input ``in_shape`` and the given geometry.

        Parameters
        ----------
        weight : CSRWeight or any SparseWeight with ``rowptr``, ``colidx``, ``values``
            4-D ``(K, C/groups, R, S)``; explicit zeros (padded formats) are kept.
        in_shape : tuple of int
            ``(C, H, W)`` (a leading batch dimension is ignored if given).
        stride, padding, dilation : pair of int
        groups : int
        cblock : int or None
            Input channels per cache block (None: all channels, one block).

        Returns
        -------
        DirectConvCSR

        Raises
        ------
        TypeError
            If ``weight`` lacks ``rowptr``/``colidx``/``values``.
        ValueError
            If the weight is not 4-D, the channels or groups do not match, the output is empty,
            or an offset would not fit in int32.
        """
        for name in ("rowptr", "colidx", "values"):
            if not hasattr(weight, name):
                raise TypeError(f"weight must be a CSR-like SparseWeight with {name}, "
                                f"got {type(weight).__name__}")
        shape = tuple(int(d) for d in weight.shape)
        if len(shape) != 4:
            raise ValueError(f"direct convolution needs a 4-D weight (K, C/groups, R, S), got {shape}")
        in_shape = tuple(int(d) for d in in_shape)[-3:]
        k, cg, r, s = shape
        c, h, w = in_shape
        groups = int(groups)
        if groups < 1 or c != cg * groups or k % groups:
            raise ValueError(f"input channels C={c}, weight {shape} and groups={groups} do not match")
        sh, sw = (int(v) for v in stride)
        dh, dw = (int(v) for v in dilation)
        ph, pw = (int(v) for v in padding)
        oh = _out_size(h, r, sh, ph, dh)
        ow = _out_size(w, s, sw, pw, dw)
        if oh < 1 or ow < 1:
            raise ValueError(f"input {h}x{w} with padding {(ph, pw)} gives an empty output")
        cblock = cg if cblock is None else max(1, min(int(cblock), cg))
        hph, wph = oh + (r - 1) * dh // sh, ow + (s - 1) * dw // sw
        nphase, plane = sh * sw, hph * wph
        if c * nphase * plane >= 2**31:
            raise ValueError(f"input of {c * nphase * plane} elements is too large for int32 offsets")

        rowptr = np.ascontiguousarray(weight.rowptr, dtype=np.int32)
        col = np.ascontiguousarray(weight.colidx, dtype=np.int64)
        values = np.ascontiguousarray(weight.values, dtype=np.float32)
        rows = np.repeat(np.arange(k, dtype=np.int64), np.diff(rowptr))
        order_key = rows * (cg * r * s) + col
        if order_key.size and (np.diff(order_key) < 0).any():  # unsorted rows: sort them
            perm = np.argsort(order_key, kind="stable")
            col, values = col[perm], values[perm]
        c_local, rs = np.divmod(col, r * s)
        tap_r, tap_s = np.divmod(rs, s)
        c_glob = (rows // (k // groups)) * cg + c_local
        dy, dx = tap_r * dh, tap_s * dw
        phase = (dy % sh) * sw + (dx % sw)
        offsets = (c_glob * nphase + phase) * plane + (dy // sh) * wph + (dx // sw)

        nb = -(-cg // cblock)
        # blkptr[k, b] = first nonzero of row k whose local channel >= b * cblock
        bounds = np.minimum(np.arange(nb + 1, dtype=np.int64) * cblock, cg)
        key = rows * (cg + 1) + c_local  # sorted: rows ascending, channels ascending in a row
        probes = (np.arange(k, dtype=np.int64)[:, None] * (cg + 1) + bounds[None, :]).ravel()
        blkptr = np.searchsorted(key, probes, side="left").astype(np.int32)
        return cls(rowptr, col.astype(np.int32), offsets.astype(np.int32), values,
                   blkptr, shape, in_shape, (sh, sw), (ph, pw), (dh, dw), groups, cblock)

    @property
    def nnz(self) -> int:
        """Stored entries (explicit zeros of a padded CSR included: the kernel multiplies them)."""
        return int(self.values.size)

    @property
    def nrows(self) -> int:
        return self.shape[0]

    @property
    def ncols(self) -> int:
        return math.prod(self.shape[1:])

    def arrays(self) -> dict[str, np.ndarray]:
        return {"rowptr": self.rowptr, "colidx": self.colidx, "offsets": self.offsets,
                "values": self.values, "blkptr": self.blkptr}

    @property
    def nbytes(self) -> int:
        """Bytes of rowptr, offsets, values and blkptr (what the kernel reads; colidx excluded)."""
        return int(self.rowptr.nbytes + self.offsets.nbytes + self.values.nbytes
                   + self.blkptr.nbytes)

    @classmethod
    def from_dense(cls, weight, **options) -> "DirectConvCSR":
        """Build from a dense 4-D weight: ``options`` are those of :meth:`from_csr`."""
        from ...formats import CSRWeight

        return cls.from_csr(CSRWeight.from_dense(weight), **options)

    def to_numpy(self) -> np.ndarray:
        mat = np.zeros((self.nrows, self.ncols), dtype=np.float32)
        rows = np.repeat(np.arange(self.nrows), np.diff(self.rowptr))
        mat[rows, self.colidx] = self.values
        return mat.reshape(self.shape)
