"""Roofline estimates of a convolution layer on a GPU: dense (cuDNN) against direct sparse.

What the Triton kernels (:mod:`sparsecnn.kernels.triton`) are designed against, and what a GPU
benchmark row is compared with (``docs/gpu.md``). A *floor* is the least time a kernel can
take: the larger of its arithmetic at the GPU's peak rate and its DRAM traffic at the GPU's
bandwidth (Williams, Waterman & Patterson 2009, "Roofline"). Both models are bounds, not
predictions: real kernels reach 50-80 % of them.

- **dense** (``torch.nn.functional.conv2d``, cuDNN): ``2 K C R S N OH OW`` FLOP at the tensor
  cores' dense rate of the dtype; traffic = input + output + dense weight, each read or
  written once (implicit GEMM keeps its tiles on chip).
- **direct sparse** (``triton_direct`` / ``triton_direct_unified``): ``2 nnz N OH OW`` useful
  FLOP, as fp32 FMAs on the CUDA cores (no tensor cores: each stored weight multiplies a
  *gathered* strip of the input, not a dense tile). Each FMA needs one input element from L1
  (the kernel does not reuse a loaded input element across output channels), so the rate is
  the smaller of the FMA rate and L1's load rate (``l1_bytes_per_clk`` per SM / element size,
  one FMA = 2 FLOP per element). Traffic = input + output + the weight (fp32 value + int32
  offset per nonzero, int32 row pointers) + for a padded layer the zero-padding copy the
  launcher makes (read the input, write the padded input, the kernel reads that instead).

Units: FLOP, bytes, milliseconds, TFLOP/s, TB/s (10**12).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

_ELEM = {"float16": 2, "bfloat16": 2, "float32": 4}


@dataclass(frozen=True)
class GPUSpec:
    """Peak figures of a GPU (vendor datasheet, dense, no 2:4 sparsity).

    Attributes
    ----------
    name : str
    hbm_tbps : float
        DRAM bandwidth, TB/s.
    tensor_tflops : dict
        Dense tensor-core rate per input dtype, TFLOP/s (``float32``: TF32, what cuDNN may use
        for fp32 with ``allow_tf32``).
    fma_tflops : float
        fp32 FMA rate of the CUDA cores (non-tensor), TFLOP/s.
    sms : int
        Streaming multiprocessors.
    clock_ghz : float
        Boost clock, GHz.
    l1_bytes_per_clk : int
        L1 / shared-memory load bandwidth per SM and clock, bytes.
    """

    name: str
    hbm_tbps: float
    tensor_tflops: dict
    fma_tflops: float
    sms: int
    clock_ghz: float
    l1_bytes_per_clk: int = 128

    def gather_tflops(self, dtype: str) -> float:
        """Useful TFLOP/s of a kernel doing one FMA per input element loaded from L1."""
        per_clk = self.l1_bytes_per_clk / _elem(dtype)
        return self.sms * self.clock_ghz * 1e9 * per_clk * 2 / 1e12


#: NVIDIA H200 SXM (Hopper GH100, 141 GB HBM3e): 4.8 TB/s, 989.5 TFLOP/s dense fp16 / bf16
#: tensor, 494.7 TF32, 66.9 fp32 FMA (132 SMs x 128 lanes x 2 x 1.98 GHz).
H200 = GPUSpec("H200 SXM", 4.8, {"float16": 989.5, "bfloat16": 989.5, "float32": 494.7},
               66.9, 132, 1.98)


def _elem(dtype: str) -> int:
    if dtype not in _ELEM:
        raise ValueError(f"dtype must be one of {sorted(_ELEM)}, got {dtype!r}")
    return _ELEM[dtype]


def _floor_ms(flop: float, tflops: float, nbytes: float, tbps: float) -> tuple[float, str]:
    compute, memory = flop / (tflops * 1e9), nbytes / (tbps * 1e9)
    return (compute, "compute") if compute >= memory else (memory, "memory")


def roofline(spec, batch: int, sparsity: float, dtype: str = "float16",
             gpu: GPUSpec = H200, pad_copy: bool = True) -> dict:
    """Roofline floors of one layer: cuDNN dense and the direct sparse kernel.

    Parameters
    ----------
    spec : LayerSpec or str
        The layer (:data:`sparsecnn.bench.LAYERS`).
    batch : int >= 1
    sparsity : float in [0, 1)
        Weight sparsity (nnz = round((1 - sparsity) K C R S)).
    dtype : ``"float16"``, ``"bfloat16"`` or ``"float32"``
    gpu : GPUSpec
        Default :data:`H200`.
    pad_copy : bool
        Count the launcher's zero-padding copy of the input (what the kernels do today); False
        gives the floor of a kernel that masks its border taps instead.

    Returns
    -------
    dict
        ``dense_gflop``, ``dense_mb`` (traffic, 10**6 bytes), ``dense_ms``, ``dense_bound``
        (``"compute"`` or ``"memory"``), ``useful_gflop``, ``sparse_mb``, ``sparse_ms``,
        ``sparse_bound``, ``sparse_tflops`` (the kernel's compute ceiling), ``speedup_ceiling``
        (``dense_ms / sparse_ms``) and ``break_even`` (the sparsity above which the sparse
        floor is below the dense one, or None if it never is).

    Raises
    ------
    ValueError
        On a bad batch, sparsity or dtype.
    """
    from .core import _as_spec, _check_positive_int, _check_sparsity

    spec = _as_spec(spec)
    batch = _check_positive_int(batch, "batch")
    sparsity = _check_sparsity(sparsity)
    e = _elem(dtype)
    k, c, r, s = spec.weight_shape
    n_in = batch * c * spec.H * spec.W
    n_out = batch * k * spec.OH * spec.OW
    dense_flop = spec.dense_flops(batch)
    dense_bytes = (n_in + n_out + k * c * r * s) * e
    dense_ms, dense_bound = _floor_ms(dense_flop, gpu.tensor_tflops[dtype], dense_bytes,
                                      gpu.hbm_tbps)
    rate = min(gpu.fma_tflops, gpu.gather_tflops(dtype))
    n_pad = (batch * c * (spec.H + 2 * spec.pad) * (spec.W + 2 * spec.pad)
             if spec.pad and pad_copy else 0)

    def sparse(sp: float) -> tuple[float, float, float, str]:
        nnz = round((1.0 - sp) * k * c * r * s)
        useful = 2 * nnz * batch * spec.OH * spec.OW
        nbytes = (n_in + 2 * n_pad + n_out) * e + nnz * 8 + (k + 1) * 4
        ms, bound = _floor_ms(useful, rate, nbytes, gpu.hbm_tbps)
        return useful, nbytes, ms, bound

    useful, sparse_bytes, sparse_ms, sparse_bound = sparse(sparsity)
    # the sparse floor falls monotonically with sparsity: bisect for where it meets dense's
    lo, hi = 0.0, 1.0 - 1e-9
    if sparse(hi)[2] >= dense_ms:
        break_even = None
    elif sparse(lo)[2] < dense_ms:
        break_even = 0.0
    else:
        for _ in range(60):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if sparse(mid)[2] >= dense_ms else (lo, mid)
        break_even = hi
    return {"layer": spec.name, "N": batch, "dtype": dtype, "sparsity": sparsity, "gpu": gpu.name,
            "dense_gflop": dense_flop / 1e9, "dense_mb": dense_bytes / 1e6, "dense_ms": dense_ms,
            "dense_bound": dense_bound, "useful_gflop": useful / 1e9,
            "sparse_mb": sparse_bytes / 1e6, "sparse_ms": sparse_ms,
            "sparse_bound": sparse_bound, "sparse_tflops": rate,
            "speedup_ceiling": dense_ms / sparse_ms if sparse_ms else math.inf,
            "break_even": break_even}


def roofline_table(specs, batch: int = 128, sparsities=(0.9, 0.99), dtype: str = "float16",
                   gpu: GPUSpec = H200, pad_copy: bool = True) -> str:
    """A Markdown table of :func:`roofline` per layer (docs/gpu.md's table): dense GFLOP, MB and
    floor, then the sparse floor and speedup ceiling per sparsity, and the break-even."""
    head = ["layer", "GFLOP", "MB (dense)", "cuDNN floor ms"]
    for sp in sparsities:
        head += [f"sparse {sp:g}: MB", "floor ms", "ceiling"]
    head.append("break-even")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for spec in specs:
        rows = [roofline(spec, batch, sp, dtype, gpu, pad_copy) for sp in sparsities]
        r0 = rows[0]
        cells = [r0["layer"], f"{r0['dense_gflop']:.1f}", f"{r0['dense_mb']:.0f}",
                 f"{r0['dense_ms']:.3f} ({r0['dense_bound'][0]})"]
        for r in rows:
            cells += [f"{r['sparse_mb']:.0f}", f"{r['sparse_ms']:.3f} ({r['sparse_bound'][0]})",
                      f"{r['speedup_ceiling']:.2f}x"]
        be = r0["break_even"]
        cells.append("never" if be is None else f"{be:.3f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


__all__ = ["GPUSpec", "H200", "roofline", "roofline_table"]
