"""Weight quantization of (pruned) layers: fp16, int8 per output channel (symmetric and
asymmetric) and k-means codebooks (Deep Compression).

Every quantizer returns a small dataclass holding the quantized payload and its storage size
(``nbytes``) at the layer's nnz, and ``dequantize()`` giving back a float32 tensor of the weight's
shape in which pruned (zero) weights stay exactly zero. :func:`quantize_model_` applies one method
to a model's Conv2d/Linear weights as fake quantization (weights replaced by their dequantized
values) and reports bytes per layer.

Storage model (``storage="csr"``, the default): the nonzeros in the CSR layout of
:mod:`sparsecnn.formats` (int32 ``colidx`` per nonzero, int32 ``rowptr`` of K + 1 entries) with the
values quantized; ``storage="dense"``: every weight's code stored, no indices.

References
----------
- Jacob et al. 2018, "Quantization and training of neural networks for efficient integer-
  arithmetic-only inference" (asymmetric uint8 with zero-point).
- Krishnamoorthi 2018, "Quantizing deep convolutional networks for efficient inference: a
  whitepaper" (per-channel symmetric int8).
- Han, Mao & Dally 2016, "Deep Compression" (k-means weight sharing, linear centroid init).
- The seeds' GPU paper (003, section 6): linear (fixed point) and clustering quantization after
  pruning, 16-bit values and 4-bit (16-centroid) codebooks.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn as nn

INDEX_BYTES = 4  # int32 colidx / rowptr, as in sparsecnn.formats.CSRWeight
STORAGES = ("csr", "dense")


def _check_weight(weight) -> torch.Tensor:
    if not isinstance(weight, torch.Tensor):
        raise TypeError(f"weight must be a torch.Tensor, got {type(weight).__name__}")
    if not weight.is_floating_point():
        raise TypeError(f"weight must be a floating tensor, got dtype {weight.dtype}")
    if weight.dim() < 1 or weight.numel() == 0:
        raise ValueError(f"weight must have at least one dimension and one element, got shape "
                         f"{tuple(weight.shape)}")
    if not torch.isfinite(weight).all():
        raise ValueError("weight holds NaN or infinite values")
    return weight.detach().to("cpu", torch.float32)


def _check_storage(storage: str) -> str:
    if storage not in STORAGES:
        raise ValueError(f"storage must be one of {STORAGES}, got {storage!r}")
    return storage


@dataclass
class QuantizedWeight:
    """Base of the quantized payloads.

    Attributes
    ----------
    shape : tuple of int
        The weight's shape.
    mask : torch.Tensor (bool, ``shape``)
        Nonzero positions of the original weight (pruned weights stay zero).
    storage : {"csr", "dense"}
    """

    shape: tuple[int, ...]
    mask: torch.Tensor
    storage: str

    method = "base"
    bits = 32

    @property
    def nnz(self) -> int:
        """Nonzeros of the original weight."""
        return int(self.mask.sum())

    @property
    def nrows(self) -> int:
        return self.shape[0]

    @property
    def nstored(self) -> int:
        """Values stored: nnz (csr) or every weight (dense)."""
        return self.nnz if self.storage == "csr" else math.prod(self.shape)

    @property
    def value_nbytes(self) -> int:
        """Bytes of the stored codes/values."""
        return math.ceil(self.nstored * self.bits / 8)

    @property
    def meta_nbytes(self) -> int:
        """Bytes of scales, zero-points or codebook."""
        return 0

    @property
    def index_nbytes(self) -> int:
        """Bytes of the sparse indices (int32 colidx per nonzero + rowptr), 0 for dense."""
        if self.storage == "dense":
            return 0
        return INDEX_BYTES * (self.nnz + self.nrows + 1)

    @property
    def nbytes(self) -> int:
        """Total bytes: values + scales/codebook + indices."""
        return self.value_nbytes + self.meta_nbytes + self.index_nbytes

    @property
    def fp32_nbytes(self) -> int:
        """Bytes of the same storage with float32 values (the unquantized baseline)."""
        return INDEX_BYTES * self.nstored + self.index_nbytes

    def dequantize(self) -> torch.Tensor:  # pragma: no cover - abstract
        """float32 tensor of ``shape``; pruned weights are exactly zero."""
        raise NotImplementedError


@dataclass
class Fp16Weight(QuantizedWeight):
    """IEEE half-precision values (``values``: float16 tensor of ``shape``)."""

    values: torch.Tensor = field(default=None)
    method = "fp16"
    bits = 16

    def dequantize(self) -> torch.Tensor:
        return self.values.float() * self.mask


@dataclass
class Int8Weight(QuantizedWeight):
    """Linear 8-bit codes per output channel.

    ``w ~ (q - zero_point[k]) * scale[k]`` for row ``k``. Symmetric: int8 ``q`` in [-127, 127],
    ``zero_point = 0``, ``scale = max|w| / 127``. Asymmetric: uint8 ``q`` in [0, 255],
    ``scale = (max(w, 0) - min(w, 0)) / 255``, integer ``zero_point`` in [0, 255] (0 stays
    exactly 0). Scales are float32 (4 bytes per channel), zero-points uint8 (1 byte per channel).
    """

    q: torch.Tensor = field(default=None)
    scale: torch.Tensor = field(default=None)  # float32 (K,)
    zero_point: torch.Tensor = field(default=None)  # int32 (K,)
    symmetric: bool = True
    bits = 8

    @property
    def method(self) -> str:  # type: ignore[override]
        return "int8_sym" if self.symmetric else "int8_asym"

    @property
    def meta_nbytes(self) -> int:
        return 4 * self.nrows + (0 if self.symmetric else self.nrows)

    def dequantize(self) -> torch.Tensor:
        view = (-1,) + (1,) * (len(self.shape) - 1)
        w = (self.q.float() - self.zero_point.view(view).float()) * self.scale.view(view)
        return w * self.mask


@dataclass
class KMeansWeight(QuantizedWeight):
    """Weight sharing: every nonzero is replaced by one of ``2**bits`` centroids.

    ``codebook`` float32 (or float16) ``(k,)``, ``codes`` int64 tensor of ``shape`` (index into
    the codebook; meaningless where ``mask`` is False). Stored as ``bits`` per value plus the
    codebook.
    """

    codebook: torch.Tensor = field(default=None)
    codes: torch.Tensor = field(default=None)
    code_bits: int = 4
    method = "kmeans"

    @property
    def bits(self) -> int:  # type: ignore[override]
        return self.code_bits

    @property
    def meta_nbytes(self) -> int:
        return self.codebook.numel() * self.codebook.element_size()

    def dequantize(self) -> torch.Tensor:
        return self.codebook.float()[self.codes] * self.mask


# ------------------------------------------------------------------------------------------------
def quantize_fp16(weight: torch.Tensor, *, storage: str = "csr") -> Fp16Weight:
    """Cast to float16 (round to nearest even). Raises TypeError/ValueError on bad input."""
    w = _check_weight(weight)
    return Fp16Weight(tuple(w.shape), w != 0, _check_storage(storage), values=w.half())


def quantize_int8(weight: torch.Tensor, *, symmetric: bool = True,
                  storage: str = "csr") -> Int8Weight:
    """Per-output-channel linear 8-bit quantization (see :class:`Int8Weight`).

    The range of each row (dim 0) is that of its weights with 0 included; the rounding error of
    every weight is at most ``scale[k] / 2``. An all-zero row gets scale 1.

    Raises
    ------
    TypeError, ValueError
        For a non-float, empty or non-finite weight, or an unknown ``storage``.
    """
    w = _check_weight(weight)
    storage = _check_storage(storage)
    mat = w.reshape(w.shape[0], -1)
    if symmetric:
        amax = mat.abs().amax(dim=1)
        scale = torch.where(amax > 0, amax / 127.0, torch.ones_like(amax))
        q = torch.clamp(torch.round(mat / scale[:, None]), -127, 127).to(torch.int8)
        zp = torch.zeros(mat.shape[0], dtype=torch.int32)
    else:
        lo = mat.amin(dim=1).clamp(max=0.0)
        hi = mat.amax(dim=1).clamp(min=0.0)
        span = hi - lo
        scale = torch.where(span > 0, span / 255.0, torch.ones_like(span))
        zp = torch.clamp(torch.round(-lo / scale), 0, 255).to(torch.int32)
        q = torch.clamp(torch.round(mat / scale[:, None]) + zp[:, None], 0, 255).to(torch.uint8)
    return Int8Weight(tuple(w.shape), w != 0, storage, q=q.reshape(w.shape),
                      scale=scale.float(), zero_point=zp, symmetric=bool(symmetric))


def quantize_kmeans(weight: torch.Tensor, bits: int = 4, *, iters: int = 30,
                    codebook_dtype: torch.dtype = torch.float32, max_samples: int = 500_000,
                    seed: int = 0, storage: str = "csr") -> KMeansWeight:
    """k-means weight sharing of the nonzeros with ``2**bits`` centroids (Deep Compression).

    Centroids start linearly spaced between the smallest and largest nonzero (Han et al. 2016
    found linear initialisation best) and are refined with Lloyd's algorithm
    (``scipy.cluster.vq.kmeans2``; a layer with more than ``max_samples`` nonzeros is fitted on a
    deterministic random subsample, then every nonzero is assigned with ``scipy.cluster.vq.vq``).
    Layers with at most ``2**bits`` distinct nonzeros keep them exactly.

    Parameters
    ----------
    weight : torch.Tensor, float
    bits : int in [1, 16]
        Bits per code; the codebook has at most ``2**bits`` entries.
    iters : int
        Lloyd iterations (>= 1).
    codebook_dtype : torch.float32 or torch.float16
        Precision of the stored centroids (the GPU paper uses 16-bit).
    max_samples : int
        Fit on at most this many nonzeros.
    seed : int
        Seed of the subsample.
    storage : {"csr", "dense"}

    Raises
    ------
    ValueError
        For bits outside [1, 16], iters < 1, an unsupported codebook dtype or bad weight.
    """
    from scipy.cluster.vq import kmeans2, vq

    if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= 16:
        raise ValueError(f"bits must be an int in [1, 16], got {bits!r}")
    if isinstance(iters, bool) or not isinstance(iters, int) or iters < 1:
        raise ValueError(f"iters must be a positive int, got {iters!r}")
    if codebook_dtype not in (torch.float32, torch.float16):
        raise ValueError(f"codebook_dtype must be torch.float32 or torch.float16, got {codebook_dtype}")
    w = _check_weight(weight)
    storage = _check_storage(storage)
    mask = w != 0
    nz = w[mask].double().numpy()
    k = 2 ** bits
    codes = torch.zeros(w.shape, dtype=torch.int64)
    if nz.size == 0:
        codebook = torch.zeros(1, dtype=codebook_dtype)
    else:
        uniq = np.unique(nz)
        if uniq.size <= k:
            centroids = uniq
        else:
            fit = nz
            if nz.size > max_samples:
                rng = np.random.default_rng(seed)
                fit = nz[rng.choice(nz.size, max_samples, replace=False)]
            centroids = np.linspace(nz.min(), nz.max(), k)
            for _ in range(4):
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # empty clusters keep their centroid
                    cent, labels = kmeans2(fit[:, None], centroids[:, None], iter=iters,
                                           minit="matrix", missing="warn")
                centroids = cent[:, 0]
                counts = np.bincount(labels, minlength=k)
                empty = np.flatnonzero(counts == 0)
                if empty.size == 0:
                    break
                # a pruned layer's nonzeros are bimodal: linear init leaves centroids in the
                # gap around 0 with no points; move them to the worst-fitted points and refit
                err = np.abs(fit - centroids[labels])
                worst = np.unique(fit[np.argsort(-err, kind="stable")[: 4 * empty.size]])
                centroids[empty] = worst[np.linspace(0, worst.size - 1, empty.size).astype(int)]
            centroids = np.unique(centroids)
        centroids = torch.from_numpy(np.asarray(centroids, np.float64)).to(codebook_dtype)
        cb = centroids.double().numpy()
        idx, _ = vq(nz[:, None], cb[:, None])
        codebook = centroids
        codes[mask] = torch.from_numpy(idx.astype(np.int64))
    return KMeansWeight(tuple(w.shape), mask, storage, codebook=codebook, codes=codes,
                        code_bits=bits)


#: Quantization methods by name.
METHODS = {
    "fp16": lambda w, **kw: quantize_fp16(w, **kw),
    "int8_sym": lambda w, **kw: quantize_int8(w, symmetric=True, **kw),
    "int8_asym": lambda w, **kw: quantize_int8(w, symmetric=False, **kw),
    "kmeans": lambda w, **kw: quantize_kmeans(w, **kw),
}


def quantize(weight: torch.Tensor, method: str, **kw) -> QuantizedWeight:
    """Quantize one weight by method name (``"fp16"``, ``"int8_sym"``, ``"int8_asym"``,
    ``"kmeans"``; ``**kw`` go to the quantizer). Raises ValueError for an unknown method."""
    if method not in METHODS:
        raise ValueError(f"unknown quantization method {method!r}; expected one of {list(METHODS)}")
    try:
        return METHODS[method](weight, **kw)
    except TypeError as exc:
        if "unexpected keyword" in str(exc):
            raise ValueError(f"method {method!r}: {exc}") from None
        raise


def quantize_model_(model: nn.Module, method: str, *, layers: Iterable[str] | None = None,
                    **kw) -> list[dict]:
    """Fake-quantize every Conv2d/Linear weight of ``model`` in place and report bytes per layer.

    Each weight is replaced by its dequantized values (float32; zeros stay zero, pruning masks
    stay attached). Biases and BatchNorm are left in float32.

    Parameters
    ----------
    model : torch.nn.Module
    method : str
        See :data:`METHODS`.
    layers : iterable of str, optional
        Layer names (default: all Conv2d/Linear).
    **kw
        Passed to the quantizer (``bits``, ``storage``, ...).

    Returns
    -------
    list of dict
        One row per layer: ``layer``, ``method``, ``shape``, ``nnz``, ``bits``, ``nbytes``
        (quantized storage = ``value_nbytes`` + ``meta_nbytes`` + ``index_nbytes``),
        ``fp32_nbytes`` (same storage, float32 values), ``ratio``
        (fp32_nbytes / nbytes), ``max_abs_error``, ``distinct_nonzeros``.

    Raises
    ------
    ValueError
        Unknown method, unknown layer names or bad quantizer arguments.
    """
    from ..prune.masks import raw_weight, select_layers

    if method not in METHODS:
        raise ValueError(f"unknown quantization method {method!r}; expected one of {list(METHODS)}")
    rows = []
    for name, module in select_layers(model, layers):
        w = module.weight.detach()
        qw = quantize(w, method, **kw)
        deq = qw.dequantize().to(w.dtype)
        with torch.no_grad():
            raw_weight(module).copy_(deq)
        nzvals = deq[deq != 0]
        rows.append({
            "layer": name, "method": method, "shape": tuple(w.shape), "nnz": qw.nnz,
            "bits": qw.bits, "nbytes": qw.nbytes, "value_nbytes": qw.value_nbytes,
            "meta_nbytes": qw.meta_nbytes, "index_nbytes": qw.index_nbytes,
            "fp32_nbytes": qw.fp32_nbytes,
            "ratio": qw.fp32_nbytes / max(qw.nbytes, 1),
            "max_abs_error": float((deq - w).abs().max()),
            "distinct_nonzeros": int(torch.unique(nzvals).numel()),
        })
    return rows


from .finetune import SharedWeight, attach_codebooks_, bake_codebooks_, finetune_kmeans_  # noqa: E402

__all__ = [
    "SharedWeight", "attach_codebooks_", "bake_codebooks_", "finetune_kmeans_",
    "METHODS", "STORAGES", "QuantizedWeight", "Fp16Weight", "Int8Weight", "KMeansWeight",
    "quantize", "quantize_fp16", "quantize_int8", "quantize_kmeans", "quantize_model_",
]
