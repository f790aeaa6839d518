"""Kernels compile for CPUs this machine is not: AVX-512 x86 and 64-bit Arm.

- ``direct_avx512`` cannot run without AVX-512F, so its jitted functions are compiled (never
  run) in a child process whose Numba targets ``skylake-avx512``: an edit that breaks its code
  generation fails here, on any x86 machine.
- The portable kernel's LLVM IR (``direct`` compiled for the 4-float ``x86-64`` baseline, the
  width NEON uses) is retargeted to ``aarch64-unknown-linux-gnu`` and turned into AArch64 object
  code with llvmlite, so an Arm build is known to compile; the tile loop (NEON's width and
  register-tile size) is emitted as a stand-alone function and, where Debian's ``qemu-user`` and
  ``gcc-aarch64-linux-gnu`` are installed, linked with a C driver and run under QEMU against a
  reference computed here.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest

_CHILD_ENV_DROP = ("NUMBA_CPU_NAME", "NUMBA_CPU_FEATURES", "NUMBA_CACHE_DIR")


def _child(script: str, cpu: str, tmp_path, timeout=900) -> str:
    env = {k: v for k, v in os.environ.items() if k not in _CHILD_ENV_DROP}
    env.update(NUMBA_CPU_NAME=cpu, NUMBA_CPU_FEATURES="", NUMBA_CACHE_DIR=str(tmp_path / "nbc"))
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(script), str(tmp_path)], env=env,
                         capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
    return out.stdout


# builds an operand for a small strided + a stride-1 problem and compiles both entries with the
# exact argument types of a call, without calling them
_COMPILE = """
    import sys, numba, torch
    from sparsecnn import to_sparse
    from sparsecnn.kernels.capabilities import target
    from sparsecnn.kernels.cpu import {module} as M
    from sparsecnn.problem import ConvProblem
    print("isa", target().isa)
    g = torch.Generator().manual_seed(0)
    w = torch.randn(8, 4, 3, 3, generator=g)
    w[w.abs() < 0.7] = 0
    ws = to_sparse(w)
    problem = ConvProblem(2, 4, 11, 11, 8, 3, 3, padding=(1, 1), format="csr")
    op = M.prepare_direct(ws, problem, nthreads=2)
    args = op.call_args(torch.randn(problem.x_shape), None, False)
    sig = tuple(numba.typeof(a) for a in args)
    for f in (M._run_serial, M._run_parallel):
        f.compile(sig)
"""


def test_direct_avx512_compiles_for_an_avx512_target(tmp_path):
    script = _COMPILE.format(module="direct_avx512") + """
    import re
    asm = M._run_serial.inspect_asm(M._run_serial.signatures[0])
    for ins in ("zmm", "vperm[it]2ps", "vcompressps", "vexpandps", "vfmadd"):
        print(ins, bool(re.search(ins, asm)))
    """
    out = _child(script, "skylake-avx512", tmp_path)
    assert "isa avx512" in out
    # the kernel's own instructions: two-source permutes, compress / expand, FMA on zmm
    for ins in ("zmm", "vperm[it]2ps", "vcompressps", "vexpandps", "vfmadd"):
        assert f"{ins} True" in out, out


_AARCH64 = "aarch64-unknown-linux-gnu"


def _generic_nrt_atomics(text: str) -> str:
    """Numba's NRT reference-count helpers are compiled (and lowered by the x86 back end, in
    place) before they are linked into a kernel's module, so its IR carries
    ``llvm.x86.atomic.sub.cc.i64(p, v, 4)`` ("atomically subtract, return whether the result is
    zero"): spell it as generic IR again. Nothing else x86-only may remain."""
    import re

    count = [0]

    def repl(m):
        count[0] += 1
        res, ptr, val, n = m.group(1), m.group(2), m.group(3), count[0]
        return (f"%x86cc.{n}.old = atomicrmw sub ptr {ptr}, i64 {val} seq_cst\n"
                f"  %x86cc.{n}.new = sub i64 %x86cc.{n}.old, {val}\n"
                f"  %x86cc.{n}.z = icmp eq i64 %x86cc.{n}.new, 0\n"
                f"  {res} = zext i1 %x86cc.{n}.z to i8")

    text = re.sub(r"(%[\w.]+) = (?:tail )?call i8 @llvm\.x86\.atomic\.sub\.cc\.i64\("
                  r"ptr (?:nonnull )?(%[\w.]+), i64 ([^,]+), i32 4\)", repl, text)
    text = re.sub(r"^declare .*@llvm\.x86\.atomic\.sub\.cc\.i64\(.*$", "", text, flags=re.M)
    assert "llvm.x86." not in text, re.findall(r".*llvm\.x86\..*", text)[:5]
    return text


def retarget_to_aarch64(ir_text: str):
    """Parse Numba's LLVM IR for x86-64 as an AArch64 module: triple and data layout replaced,
    the x86 ``target-cpu`` / ``target-features`` attributes removed. Returns (module, target
    machine)."""
    import re

    import llvmlite.binding as ll

    from sparsecnn.kernels.capabilities import _init_llvm

    _init_llvm()
    tm = ll.Target.from_triple(_AARCH64).create_target_machine(cpu="generic", features="+neon",
                                                               opt=2, reloc="pic")
    text = re.sub(r'^target triple = ".*"$', f'target triple = "{_AARCH64}"', ir_text,
                  flags=re.M)
    text = re.sub(r'^target datalayout = ".*"$', f'target datalayout = "{tm.target_data}"', text,
                  flags=re.M)
    text = re.sub(r'"target-(cpu|features)"="[^"]*"', "", text)
    text = _generic_nrt_atomics(text)
    mod = ll.parse_assembly(text)
    mod.verify()
    return mod, tm


def test_portable_kernel_emits_aarch64_object_code(tmp_path):
    # the optimised IR of each library as Numba hands it to the x86 code generator (which would
    # add x86-only intrinsics of its own, e.g. for NRT's atomic reference counts)
    capture = """
    from numba.core import codegen
    CAPTURED = {}
    _orig = codegen.CPUCodeLibrary._finalize_final_module
    def _capture(self):
        CAPTURED[self.name] = str(self._final_module)
        _orig(self)
    codegen.CPUCodeLibrary._finalize_final_module = _capture
    """
    script = capture + _COMPILE.format(module="direct") + """
    import pathlib
    out = pathlib.Path(sys.argv[1])
    for f in (M._run_serial, M._run_parallel):
        lib = f.overloads[sig].library
        (out / (f.__name__ + ".ll")).write_text(CAPTURED[lib.name])
    print("VW", M.VW, "NV_MAX", M.NV_MAX)
    """
    out = _child(script, "x86-64", tmp_path)
    assert "isa sse2" in out and "VW 4" in out
    for name in ("_run_serial", "_run_parallel"):
        ir_text = (tmp_path / f"{name}.ll").read_text()
        # multiply-adds are llvm.fmuladd (fused where the target has FMA); llvm.fma would be a
        # call to fmaf on this SSE2 target
        assert "llvm.fmuladd.v4f32" in ir_text or name == "_run_parallel"
        assert "llvm.fma." not in ir_text and "@fmaf" not in ir_text
        mod, tm = retarget_to_aarch64(ir_text)
        obj = tm.emit_object(mod)
        assert obj[:4] == b"\x7fELF" and len(obj) > 1000
        asm = tm.emit_assembly(mod)
        assert "fmul\tv" in asm or "fmla\tv" in asm, name  # NEON vector arithmetic
        assert "ldxr" in asm or "ldaxr" in asm or "cas" in asm or name == "_run_serial"


# --------------------------------------------------------------------------------------------
# the tile loop at NEON's shape, stand-alone, optionally run under QEMU
# --------------------------------------------------------------------------------------------
_DRIVER = r"""
#include <stdio.h>
#include <stdlib.h>
extern void sparsecnn_tile(const float *x, const int *offs, const float *vals, long j0, long j1,
                           float *sc, long nv, float bias, long flags);
int main(void) {
    static float x[4096], sc[256];
    static int offs[64];
    static float vals[64];
    FILE *f = fopen("in.bin", "rb");
    long nv, nnz;
    if (!f || fread(&nv, 8, 1, f) != 1 || fread(&nnz, 8, 1, f) != 1) return 2;
    if (fread(x, 4, 4096, f) != 4096 || fread(offs, 4, nnz, f) != (size_t)nnz
        || fread(vals, 4, nnz, f) != (size_t)nnz) return 3;
    fclose(f);
    sparsecnn_tile(x, offs, vals, 0, nnz, sc, nv, 0.25f, 4);
    fwrite(sc, 4, nv * 4, stdout);
    return 0;
}
"""


def tile_module(w: int, nv_max: int):
    """A stand-alone LLVM module exporting ``sparsecnn_tile(x, offs, vals, j0, j1, sc, nv, bias,
    flags)``: the same IR as the portable kernel's register tile (``_vec._emit_tile``) for
    ``w``-float vectors, ``nv`` in ``1 .. nv_max``."""
    from llvmlite import ir

    from sparsecnn.kernels.cpu import _vec

    f32, i32, i64 = ir.FloatType(), ir.IntType(32), ir.IntType(64)
    mod = ir.Module(name="tile")
    fnty = ir.FunctionType(ir.VoidType(), [f32.as_pointer(), i32.as_pointer(), f32.as_pointer(),
                                           i64, i64, f32.as_pointer(), i64, f32, i64])
    fn = ir.Function(mod, fnty, "sparsecnn_tile")
    x, offs, vals, j0, j1, sc, nv, bias, flags = fn.args
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    zero = ir.Constant(i64, 0)
    init_sc = b.icmp_unsigned("!=", b.and_(flags, ir.Constant(i64, 1)), zero)
    relu = b.icmp_unsigned("!=", b.and_(flags, ir.Constant(i64, 4)), zero)
    end = fn.append_basic_block("end")
    sw = b.switch(nv, end)
    for n in range(1, nv_max + 1):
        bb = fn.append_basic_block(f"nv{n}")
        sw.add_case(ir.Constant(i64, n), bb)
        b.position_at_end(bb)
        _vec._emit_tile(b, n, w, x, zero, offs, vals, j0, j1, sc, zero, bias, init_sc, relu)
        b.branch(end)
    b.position_at_end(end)
    b.ret_void()
    return mod


_X86 = "x86_64-unknown-linux-gnu"
# (ISA level, LLVM CPU, triple, the multiply-add instruction, a stack reference in its assembly)
_SHAPES = [("neon", "generic", _AARCH64, "fmla\tv", r"\[sp"),
           ("avx512", "skylake-avx512", _X86, "vfmadd", r"\(%rsp\)"),
           ("avx2", "haswell", _X86, "vfmadd", r"\(%rsp\)"),
           ("avx", "sandybridge", _X86, "vmulps", r"\(%rsp\)"),
           ("sse2", "x86-64", _X86, "mulps", r"\(%rsp\)")]


@pytest.mark.parametrize("isa, cpu, triple, fma, stack", _SHAPES, ids=[s[0] for s in _SHAPES])
def test_widest_tile_fits_the_register_file(isa, cpu, triple, fma, stack):
    """At each target's (VW, NV_MAX) the widest tile's accumulators stay in registers: its loop
    (the basic block with the most multiply-adds) has no stack traffic. This is what sizes
    NV_MAX per target (:func:`sparsecnn.kernels.cpu._vec.vector_shape`)."""
    import re

    import llvmlite.binding as ll

    from sparsecnn.kernels.capabilities import _init_llvm
    from sparsecnn.kernels.cpu import _vec

    w, nv_max = _vec.vector_shape(isa)
    if triple == _AARCH64:
        mod, tm = retarget_to_aarch64(str(tile_module(w, nv_max)))
    else:
        _init_llvm()
        mod = ll.parse_assembly(str(tile_module(w, nv_max)))
        tm = ll.Target.from_triple(triple).create_target_machine(cpu=cpu, opt=2)
    asm = tm.emit_assembly(mod)
    blocks = re.split(r"\n(?=\.LBB)", asm)
    body = max(blocks, key=lambda blk: blk.count(fma))
    assert body.count(fma) >= nv_max, body
    assert not re.search(stack, body), body


def _qemu_tools():
    gcc, qemu = shutil.which("aarch64-linux-gnu-gcc"), shutil.which("qemu-aarch64")
    return (gcc, qemu) if gcc and qemu else None


@pytest.mark.skipif(_qemu_tools() is None,
                    reason="needs Debian's gcc-aarch64-linux-gnu and qemu-user (qemu-aarch64)")
@pytest.mark.parametrize("nv", [1, 7, 24])
def test_neon_tile_runs_under_qemu(tmp_path, nv):
    from sparsecnn.kernels.cpu import _vec

    gcc, qemu = _qemu_tools()
    w, nv_max = _vec.vector_shape("neon")
    mod, tm = retarget_to_aarch64(str(tile_module(w, nv_max)))
    (tmp_path / "tile.o").write_bytes(tm.emit_object(mod))
    (tmp_path / "driver.c").write_text(_DRIVER)
    subprocess.run([gcc, "-O1", "-static", "-o", "drv", "driver.c", "tile.o"], cwd=tmp_path,
                   check=True, capture_output=True, timeout=300)
    rng = np.random.default_rng(nv)
    x = rng.standard_normal(4096).astype(np.float32)
    nnz = 37
    offs = rng.integers(0, 4096 - w * nv, nnz).astype(np.int32)
    vals = rng.standard_normal(nnz).astype(np.float32)
    with open(tmp_path / "in.bin", "wb") as f:
        f.write(np.array([nv, nnz], dtype=np.int64).tobytes() + x.tobytes() + offs.tobytes()
                + vals.tobytes())
    run = subprocess.run([qemu, "./drv"], cwd=tmp_path, capture_output=True, timeout=300)
    assert run.returncode == 0, run.stderr
    got = np.frombuffer(run.stdout, dtype=np.float32)
    lanes = np.arange(w * nv)
    ref = np.float32(0.25) + (vals[:, None].astype(np.float64)
                              * x[offs[:, None] + lanes[None, :]]).sum(0)
    np.testing.assert_allclose(got, np.maximum(ref, 0), rtol=1e-5, atol=1e-5)
