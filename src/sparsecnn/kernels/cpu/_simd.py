"""Explicit-SIMD building blocks of the direct sparse convolution (AVX-512 through LLVM IR).

Numba on its own keeps accumulators of a loop over nonzeros in memory (a load and a store per
multiply-add) and does not combine scalar accumulators into vector registers. :func:`fma_tile`
emits the whole loop over one output channel's nonzeros as LLVM IR through
:func:`numba.extending.intrinsic`, with ``NV`` accumulators of type ``<16 x float>`` carried in
phi nodes (so LLVM keeps them in zmm registers for the whole loop):

.. code-block:: text

    acc[v] = sc[sbase + 16 v : +16]                      v = 0 .. NV-1   (registers)
    for j in [j0, j1):                                   (one output channel's nonzeros)
        w = broadcast(vals[j]); q = offs[j] & ~15; a = offs[j] & 15
        A[u] = x[xbase + q + 16 u : +16]                 u = 0 .. NV     (aligned loads)
        acc[v] = fma(w, vpermi2ps(A[v], a + lane, A[v+1]), acc[v])
    sc[sbase + 16 v : +16] = acc[v]

This is the inner loop of direct sparse convolution (Park et al. 2017, "Faster CNNs with direct
sparse convolutions and guided pruning", ICLR): each nonzero's column index has been rewritten
into an offset ``offs[j]`` into the padded input, so a nonzero is one contiguous AXPY over a tile
of the (padded-width) output plane.

``NV`` must be a compile-time constant (it is the number of registers), so one intrinsic is built
per ``NV`` in ``1 .. NV_MAX`` and :func:`fma_tile` dispatches on it. The jitted functions that
call them are cached on disk like any other (``cache=True`` works: the IR is generated at typing
time and the compiled machine code is what is cached). :func:`vcopy` and :func:`vfill` are masked
AVX-512 copies / fills used to pad the input and store output rows.
"""

from __future__ import annotations

from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

#: The largest register block, in vectors of 16 float32 (AVX-512 has 32 zmm registers: NV
#: accumulators, the broadcast weight and load temporaries must fit).
NV_MAX = 24
#: Floats per vector (one zmm register).
VEC = 16

_F32 = ir.FloatType()
_I32 = ir.IntType(32)
_I64 = ir.IntType(64)
_VTY = ir.VectorType(_F32, VEC)


_I1 = ir.IntType(1)
_MTY = ir.VectorType(_I1, VEC)
_IVTY = ir.VectorType(_I32, VEC)


def _lane_mask(builder, m):
    """``<16 x i1>`` with lanes ``[0, m)`` set (``m`` an i32)."""
    iota = ir.Constant(_IVTY, list(range(VEC)))
    undef = ir.Constant(_IVTY, ir.Undefined)
    mv = builder.shuffle_vector(builder.insert_element(undef, m, ir.Constant(_I32, 0)), undef,
                                ir.Constant(_IVTY, [0] * VEC))
    return builder.icmp_signed("<", iota, mv)


def _masked_fns(builder):
    vp = _VTY.as_pointer()
    ld = cgutils.get_or_insert_function(
        builder.module, ir.FunctionType(_VTY, [vp, _I32, _MTY, _VTY]), "llvm.masked.load.v16f32.p0")
    st = cgutils.get_or_insert_function(
        builder.module, ir.FunctionType(ir.VoidType(), [_VTY, vp, _I32, _MTY]),
        "llvm.masked.store.v16f32.p0")
    return ld, st


@intrinsic
def _copy16(typingctx, dst, di, src, si, m, relu):
    """Copy ``m <= 16`` floats ``src[si:si+m] -> dst[di:di+m]`` (masked; ReLU if ``relu``)."""
    sig = types.void(dst, di, src, si, m, relu)

    def codegen(context, builder, signature, args):
        at = signature.args
        d = context.make_array(at[0])(context, builder, args[0]).data
        s = context.make_array(at[2])(context, builder, args[2]).data
        di_ = context.cast(builder, args[1], at[1], types.int64)
        si_ = context.cast(builder, args[3], at[3], types.int64)
        m_ = context.cast(builder, args[4], at[4], types.int32)
        r_ = context.cast(builder, args[5], at[5], types.boolean)
        mask = _lane_mask(builder, m_)
        ld, st = _masked_fns(builder)
        vp = _VTY.as_pointer()
        zero = ir.Constant(_VTY, [0.0] * VEC)
        v = builder.call(ld, [builder.bitcast(builder.gep(s, [si_]), vp), ir.Constant(_I32, 4),
                              mask, zero])
        neg = builder.fcmp_ordered("<", v, zero)
        rv = builder.select(neg, zero, v)  # ReLU, NaN kept (as torch.relu)
        v = builder.select(r_, rv, v)
        builder.call(st, [v, builder.bitcast(builder.gep(d, [di_]), vp), ir.Constant(_I32, 4), mask])
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def _fill16(typingctx, dst, di, m, value):
    """Store ``value`` into ``dst[di:di+m]``, ``m <= 16`` (masked)."""
    sig = types.void(dst, di, m, value)

    def codegen(context, builder, signature, args):
        at = signature.args
        d = context.make_array(at[0])(context, builder, args[0]).data
        di_ = context.cast(builder, args[1], at[1], types.int64)
        m_ = context.cast(builder, args[2], at[2], types.int32)
        val = context.cast(builder, args[3], at[3], types.float32)
        mask = _lane_mask(builder, m_)
        _, st = _masked_fns(builder)
        undef = ir.Constant(_VTY, ir.Undefined)
        vv = builder.shuffle_vector(builder.insert_element(undef, val, ir.Constant(_I32, 0)), undef,
                                    ir.Constant(_IVTY, [0] * VEC))
        builder.call(st, [vv, builder.bitcast(builder.gep(d, [di_]), _VTY.as_pointer()),
                          ir.Constant(_I32, 4), mask])
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def _deint32(typingctx, dst, de, ne, do, no, src, si, n):
    """Split ``src[si:si+n]`` (``n <= 32``) into even and odd elements; store the first ``ne``
    evens at ``dst[de:]`` and the first ``no`` odds at ``dst[do:]`` (masked AVX-512 moves)."""
    sig = types.void(dst, de, ne, do, no, src, si, n)

    def codegen(context, builder, signature, args):
        at = signature.args
        d = context.make_array(at[0])(context, builder, args[0]).data
        s = context.make_array(at[5])(context, builder, args[5]).data

        def i64(i):
            return context.cast(builder, args[i], at[i], types.int64)

        def i32(i):
            return context.cast(builder, args[i], at[i], types.int32)

        ld, st = _masked_fns(builder)
        vp = _VTY.as_pointer()
        zero = ir.Constant(_VTY, [0.0] * VEC)
        n_ = i32(7)
        c16 = ir.Constant(_I32, VEC)
        m0 = builder.select(builder.icmp_signed("<", n_, c16), n_, c16)
        rest = builder.sub(n_, m0)
        src = builder.gep(s, [i64(6)])
        a = builder.call(ld, [builder.bitcast(src, vp), ir.Constant(_I32, 4), _lane_mask(builder, m0),
                              zero])
        b = builder.call(ld, [builder.bitcast(builder.gep(src, [ir.Constant(_I64, VEC)]), vp),
                              ir.Constant(_I32, 4), _lane_mask(builder, rest), zero])
        ev = builder.shuffle_vector(a, b, ir.Constant(_IVTY, list(range(0, 2 * VEC, 2))))
        od = builder.shuffle_vector(a, b, ir.Constant(_IVTY, list(range(1, 2 * VEC, 2))))
        builder.call(st, [ev, builder.bitcast(builder.gep(d, [i64(1)]), vp), ir.Constant(_I32, 4),
                          _lane_mask(builder, i32(2))])
        builder.call(st, [od, builder.bitcast(builder.gep(d, [i64(3)]), vp), ir.Constant(_I32, 4),
                          _lane_mask(builder, i32(4))])
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def expand16(typingctx, dst, di, nst, src, si, m):
    """Expand-load: lanes set in bit mask ``m`` (int32, 16 bits) take the next
    ``popcount(m)`` floats of ``src[si:]`` in order, the others 0; store the first ``nst <= 16``
    lanes at ``dst[di:]`` (``vexpandps`` + masked store). Reads only ``popcount(m)`` floats.
    """
    sig = types.void(dst, di, nst, src, si, m)

    def codegen(context, builder, signature, args):
        at = signature.args
        d = context.make_array(at[0])(context, builder, args[0]).data
        s = context.make_array(at[3])(context, builder, args[3]).data

        def cast(i, ty):
            return context.cast(builder, args[i], at[i], ty)

        _, st = _masked_fns(builder)
        ld, _ = _masked_fns(builder)
        expand = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(_VTY, [_VTY, _VTY, _MTY]),
            "llvm.x86.avx512.mask.expand.v16f32")
        ctpop = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(_I32, [_I32]), "llvm.ctpop.i32")
        m32 = cast(5, types.int32)
        lanes = builder.bitcast(builder.trunc(m32, ir.IntType(16)), _MTY)
        zero = ir.Constant(_VTY, [0.0] * VEC)
        # a contiguous masked load of popcount(m) floats, then a register expand (the
        # memory form of vexpandps is slow)
        raw = builder.call(ld, [builder.bitcast(builder.gep(s, [cast(4, types.int64)]),
                                                _VTY.as_pointer()), ir.Constant(_I32, 4),
                                _lane_mask(builder, builder.call(ctpop, [m32])), zero])
        v = builder.call(expand, [raw, zero, lanes])
        builder.call(st, [v, builder.bitcast(builder.gep(d, [cast(1, types.int64)]),
                                             _VTY.as_pointer()),
                          ir.Constant(_I32, 4), _lane_mask(builder, cast(2, types.int32))])
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def expand16_full(typingctx, dst, di, src, si, m):
    """:func:`expand16` with all 16 lanes stored and 16 floats read from ``src[si:]`` (plain
    unaligned load and store: both ranges must be valid)."""
    sig = types.void(dst, di, src, si, m)

    def codegen(context, builder, signature, args):
        at = signature.args
        d = context.make_array(at[0])(context, builder, args[0]).data
        s = context.make_array(at[2])(context, builder, args[2]).data

        def cast(i, ty):
            return context.cast(builder, args[i], at[i], ty)

        expand = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(_VTY, [_VTY, _VTY, _MTY]),
            "llvm.x86.avx512.mask.expand.v16f32")
        lanes = builder.bitcast(builder.trunc(cast(4, types.int32), ir.IntType(16)), _MTY)
        raw = builder.load(builder.bitcast(builder.gep(s, [cast(3, types.int64)]),
                                           _VTY.as_pointer()), align=4)
        v = builder.call(expand, [raw, ir.Constant(_VTY, [0.0] * VEC), lanes])
        builder.store(v, builder.bitcast(builder.gep(d, [cast(1, types.int64)]),
                                         _VTY.as_pointer()), align=4)
        return context.get_dummy_value()

    return sig, codegen


def _state_ptr(context, builder, aty, arr, idx, ity):
    a = context.make_array(aty)(context, builder, arr)
    return builder.gep(a.data, [context.cast(builder, idx, ity, types.int64)])


@intrinsic
def try_claim(typingctx, state, i):
    """Atomically set ``state[i]`` (int32) from 0 to 1; True if this call did it (acq_rel)."""
    sig = types.boolean(state, i)

    def codegen(context, builder, signature, args):
        ptr = _state_ptr(context, builder, signature.args[0], args[0], args[1], signature.args[1])
        res = builder.cmpxchg(ptr, ir.Constant(_I32, 0), ir.Constant(_I32, 1), "acq_rel",
                              "acquire")
        return builder.extract_value(res, 1)

    return sig, codegen


@intrinsic
def publish(typingctx, state, i):
    """``state[i] = 2`` with release ordering (the writes before it are visible to an
    :func:`is_ready` that sees it)."""
    sig = types.void(state, i)

    def codegen(context, builder, signature, args):
        ptr = _state_ptr(context, builder, signature.args[0], args[0], args[1], signature.args[1])
        builder.store_atomic(ir.Constant(_I32, 2), ptr, "release", 4)
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def is_ready(typingctx, state, i):
    """``state[i] == 2`` (acquire load); issues a ``pause`` when not (spin-wait hint)."""
    sig = types.boolean(state, i)

    def codegen(context, builder, signature, args):
        ptr = _state_ptr(context, builder, signature.args[0], args[0], args[1], signature.args[1])
        v = builder.load_atomic(ptr, "acquire", 4)
        ok = builder.icmp_signed("==", v, ir.Constant(_I32, 2))
        with builder.if_then(builder.not_(ok)):
            pause = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(ir.VoidType(), []), "llvm.x86.sse2.pause")
            builder.call(pause, [])
        return ok

    return sig, codegen


@njit(cache=True, nogil=True)
def deinterleave2(dst, de, ne, do, no, src, si, n):
    """``dst[de:de+ne] = src[si::2][:ne]``, ``dst[do:do+no] = src[si+1::2][:no]`` reading only
    ``src[si:si+n]`` (AVX-512, 32 source elements per step). Unchecked bounds."""
    t = 0
    while t < n:
        m = min(32, n - t)
        h = t // 2
        _deint32(dst, de + h, max(0, min(16, ne - h)), do + h, max(0, min(16, no - h)), src,
                 si + t, m)
        t += 32


@njit(cache=True, nogil=True)
def vcopy(dst, di, src, si, n, relu):
    """``dst[di:di+n] = src[si:si+n]`` (ReLU applied if ``relu``) with AVX-512 masked moves.

    Never touches memory outside the two ranges (the tail is masked). Unchecked bounds.
    """
    t = 0
    while t + VEC <= n:
        _copy16(dst, di + t, src, si + t, VEC, relu)
        t += VEC
    if t < n:
        _copy16(dst, di + t, src, si + t, n - t, relu)


@njit(cache=True, nogil=True)
def vfill(dst, di, n, value):
    """``dst[di:di+n] = value`` with AVX-512 (masked tail). Unchecked bounds."""
    t = 0
    while t + VEC <= n:
        _fill16(dst, di + t, VEC, value)
        t += VEC
    if t < n:
        _fill16(dst, di + t, n - t, value)


def _make_intrinsic(nv: int):
    """Build the ``NV = nv`` register-blocked sparse AXPY intrinsic (see the module docstring).

    Each nonzero's offset ``o`` is split into an aligned part ``q = o & ~15`` and a lane shift
    ``a = o & 15``: ``nv + 1`` aligned loads at ``x + xbase + q`` are realigned pairwise with
    ``vpermi2ps`` (index ``a + lane``). Misaligned 64-byte loads split cache lines and run at
    half speed on this machine; the permutes cost less (measured: 4.2 vs 3.6 FMA/ns from L1,
    3.0 vs 2.5 from L2 at NV = 13). ``x + xbase`` must therefore be 64-byte aligned and 16
    floats of slack must follow the last run read.

    ``flags``: bit 0 set: accumulators start from ``sc[sbase:]``, else from ``bias``; bit 1 set:
    the result goes to ``out`` (see :func:`fma_tile`), else back to ``sc[sbase:]``; bit 2: ReLU
    (output store only).
    """

    @intrinsic
    def _fma_tile(typingctx, x, xbase, offs, vals, j0, j1, sc, sbase, bias, out, obase, masks,
                  opos, mbase, flags):
        sig = types.void(x, xbase, offs, vals, j0, j1, sc, sbase, bias, out, obase, masks, opos,
                         mbase, flags)

        def codegen(context, builder, signature, args):
            at = signature.args

            def arr(i):
                return context.make_array(at[i])(context, builder, args[i]).data

            def i64(i):
                return context.cast(builder, args[i], at[i], types.int64)

            xptr, optr, vptr, sptr, outp, mptr, pptr = arr(0), arr(2), arr(3), arr(6), arr(9), \
                arr(11), arr(12)
            xb, j0v, j1v, sb, ob, mb, fl = i64(1), i64(4), i64(5), i64(7), i64(10), i64(13), \
                i64(14)
            bval = context.cast(builder, args[8], at[8], types.float32)
            vptr_ty = _VTY.as_pointer()
            fma = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(_VTY, [_VTY, _VTY, _VTY]), "llvm.fma.v16f32")
            perm = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(_VTY, [_VTY, _IVTY, _VTY]),
                "llvm.x86.avx512.vpermi2var.ps.512")
            compress = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(_VTY, [_VTY, _VTY, _MTY]),
                "llvm.x86.avx512.mask.compress.v16f32")
            ctpop = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(_I32, [_I32]), "llvm.ctpop.i32")
            _, mstore = _masked_fns(builder)
            zero_mask = ir.Constant(_IVTY, [0] * VEC)
            iota = ir.Constant(_IVTY, list(range(VEC)))
            undef = ir.Constant(_VTY, ir.Undefined)
            iundef = ir.Constant(_IVTY, ir.Undefined)
            zero = ir.Constant(_VTY, [0.0] * VEC)
            one = ir.Constant(_I64, 1)

            def splat(val):
                return builder.shuffle_vector(builder.insert_element(undef, val, ir.Constant(_I32, 0)),
                                              undef, zero_mask)

            def flag(bit):
                return builder.icmp_unsigned("!=", builder.and_(fl, ir.Constant(_I64, bit)),
                                             ir.Constant(_I64, 0))

            sbase = builder.gep(sptr, [sb])

            def sc_ptr(v):
                return builder.bitcast(builder.gep(sbase, [ir.Constant(_I64, VEC * v)]), vptr_ty)

            # --- initial accumulators: from sc or from the bias
            bvec = splat(bval)
            from_sc = builder.append_basic_block("sfma_init_sc")
            init_done = builder.append_basic_block("sfma_init_done")
            entry0 = builder.basic_block
            builder.cbranch(flag(1), from_sc, init_done)
            builder.position_at_end(from_sc)
            loaded = [builder.load(sc_ptr(v), align=4) for v in range(nv)]
            builder.branch(init_done)
            builder.position_at_end(init_done)
            init = []
            for v in range(nv):
                ph = builder.phi(_VTY)
                ph.add_incoming(bvec, entry0)
                ph.add_incoming(loaded[v], from_sc)
                init.append(ph)

            # --- loop over the nonzeros
            entry = builder.basic_block
            loop = builder.append_basic_block("sfma_loop")
            done = builder.append_basic_block("sfma_done")
            builder.cbranch(builder.icmp_signed("<", j0v, j1v), loop, done)
            builder.position_at_end(loop)
            j = builder.phi(_I64)
            j.add_incoming(j0v, entry)
            accs = []
            for v in range(nv):
                ph = builder.phi(_VTY)
                ph.add_incoming(init[v], entry)
                accs.append(ph)
            off = builder.load(builder.gep(optr, [j]))
            wv = splat(builder.load(builder.gep(vptr, [j])))
            a = builder.and_(off, ir.Constant(_I32, 15))
            q = builder.sext(builder.and_(off, ir.Constant(_I32, -16)), _I64)
            idx = builder.add(iota, builder.shuffle_vector(
                builder.insert_element(iundef, a, ir.Constant(_I32, 0)), iundef, zero_mask))
            src = builder.gep(xptr, [builder.add(xb, q)])
            loads = []
            for v in range(nv + 1):
                p = builder.bitcast(builder.gep(src, [ir.Constant(_I64, VEC * v)]), vptr_ty)
                loads.append(builder.load(p, align=64))
            new = []
            for v in range(nv):
                shifted = builder.call(perm, [loads[v], idx, loads[v + 1]])
                new.append(builder.call(fma, [wv, shifted, accs[v]]))
            jn = builder.add(j, one)
            loop_end = builder.basic_block
            j.add_incoming(jn, loop_end)
            for v in range(nv):
                accs[v].add_incoming(new[v], loop_end)
            builder.cbranch(builder.icmp_signed("<", jn, j1v), loop, done)

            # --- store: back to sc, or (ReLU,) compress out the junk lanes, store to out
            builder.position_at_end(done)
            fin = []
            for v in range(nv):
                ph = builder.phi(_VTY)
                ph.add_incoming(init[v], entry)
                ph.add_incoming(new[v], loop_end)
                fin.append(ph)
            to_sc = builder.append_basic_block("sfma_store_sc")
            to_out = builder.append_basic_block("sfma_store_out")
            end = builder.append_basic_block("sfma_end")
            builder.cbranch(flag(2), to_out, to_sc)
            builder.position_at_end(to_sc)
            for v in range(nv):
                builder.store(fin[v], sc_ptr(v), align=4)
            builder.branch(end)
            builder.position_at_end(to_out)
            relu = flag(4)
            for v in range(nv):
                gv = builder.add(mb, ir.Constant(_I64, v))
                m32 = builder.load(builder.gep(mptr, [gv]))
                pos = builder.sext(builder.load(builder.gep(pptr, [gv])), _I64)
                val = fin[v]
                val = builder.select(relu, builder.select(builder.fcmp_ordered("<", val, zero),
                                                          zero, val), val)
                lanes = builder.bitcast(builder.trunc(m32, ir.IntType(16)), _MTY)
                packed = builder.call(compress, [val, undef, lanes])
                cnt = builder.call(ctpop, [m32])
                prefix = builder.sub(builder.shl(ir.Constant(_I32, 1), cnt), ir.Constant(_I32, 1))
                pmask = builder.bitcast(builder.trunc(prefix, ir.IntType(16)), _MTY)
                dst = builder.bitcast(builder.gep(outp, [builder.add(ob, pos)]), vptr_ty)
                builder.call(mstore, [packed, dst, ir.Constant(_I32, 4), pmask])
            builder.branch(end)
            builder.position_at_end(end)
            return context.get_dummy_value()

        return sig, codegen

    _fma_tile.__name__ = f"fma_tile_{nv}"
    return _fma_tile


# One intrinsic per register-block size; module-level constants (built once at import).
_t1 = _make_intrinsic(1)
_t2 = _make_intrinsic(2)
_t3 = _make_intrinsic(3)
_t4 = _make_intrinsic(4)
_t5 = _make_intrinsic(5)
_t6 = _make_intrinsic(6)
_t7 = _make_intrinsic(7)
_t8 = _make_intrinsic(8)
_t9 = _make_intrinsic(9)
_t10 = _make_intrinsic(10)
_t11 = _make_intrinsic(11)
_t12 = _make_intrinsic(12)
_t13 = _make_intrinsic(13)
_t14 = _make_intrinsic(14)
_t15 = _make_intrinsic(15)
_t16 = _make_intrinsic(16)
_t17 = _make_intrinsic(17)
_t18 = _make_intrinsic(18)
_t19 = _make_intrinsic(19)
_t20 = _make_intrinsic(20)
_t21 = _make_intrinsic(21)
_t22 = _make_intrinsic(22)
_t23 = _make_intrinsic(23)
_t24 = _make_intrinsic(24)


@njit(cache=True, nogil=True, inline="always")
def fma_tile(nv, x, xbase, offs, vals, j0, j1, sc, sbase, bias, out, obase, masks, opos, mbase,
             flags):
    """One tile of one output channel: ``acc += sum_j vals[j] * x[xbase + offs[j] : +16 nv]``
    over ``j in [j0, j1)``, the ``nv`` (1 <= nv <= NV_MAX) accumulator vectors in zmm registers.

    ``acc`` starts from ``sc[sbase : +16 nv]`` if ``flags & 1`` else from the scalar ``bias``.
    If ``flags & 2`` the result (ReLU'd if ``flags & 4``) is stored to ``out``: vector ``v``'s
    lanes selected by bit mask ``masks[mbase + v]`` (the non-junk columns) are packed and written
    to ``out[obase + opos[mbase + v]:]``; else it is stored back to ``sc[sbase:]``.

    ``x`` (float32, 1-D, ``x[xbase]`` 64-byte aligned) must hold ``xbase + offs[j] + 16 (nv + 1)``
    elements for every ``j``. Bounds are not checked: callers guarantee them.
    """
    if nv == 1:
        _t1(x, xbase, offs, vals, j0, j1, sc, sbase, bias, out, obase, masks, opos, mbase,
              flags)
    elif nv == 2:
        _t2(x, xbase, offs, vals, j0, j1, sc, sbase, bias, out, obase, masks, opos, mbase,
              flags)
    elif nv == 3:
        _t3(x, xbase, offs, vals, j0, j1, sc, sbase, bias, out, obase, masks, opos, mbase,
              flags)
    elif nv == 4:
        _t4(x, xbase, offs, vals, j0, j1, sc, sbase, bias, out, obase, masks, opos, mbase,
              flags)
    elif nv == 5:
        _t5(x, xbase, offs, vals, j0, j1, sc, sbase, bias, out, obase, masks, opos, mbase,
              flags)
    elif nv == 6:
        _t6(x, xbase, offs, vals, j0, j1, sc, sbase, bias, out, obase, masks, opos, mbase,
              flags)
    elif nv == 7:
        _t7(x, xbase, offs, vals, j0, j1, sc, sbase, bias, out, obase, masks, opos, mbase,
              flags)
    elif nv == 8:
        _t8(x, xbase, offs, vals, j0, j1, sc, sbase, bias, out, obase, masks, opos, mbase,
              flags)
    elif nv == 9:
        _t9(x, xbase, offs, vals, j0, j1, sc, sbase, bias, out, obase, masks, opos, mbase,
              flags)
    elif nv == 10:
        _t10(x, xbase, offs, vals, j0, j1, sc, sbase, bias, out, obase, masks, opos, mbase,
              flags)
    elif nv == 11:
        _t11(x, xbase, offs, vals, j0, j1, sc, sbase, bias, out, obase, masks, opos, mbase,
              flags)
    elif nv == 12:
        _t12(x, xbase, offs, vals, j0, j1, sc, sbase, bias, out, obase, masks, opos, mbase,
              flags)
    elif nv == 13:
        _t13(x, xbase, offs, vals, j0, j1, sc, sbase, bias, out, obase, masks, opos, mbase,
              flags)
    elif nv == 14:
        _t14(x, xbase, offs, vals, j0, j1, sc, sbase, bias, out, obase, masks, opos, mbase,
              flags)
    elif nv == 15:
        _t15(x, xbase, offs, vals, j0, j1, sc, sbase, bias, out, obase, masks, opos, mbase,
              flags)
    elif nv == 16:
        _t16(x, xbase, offs, vals, j0, j1, sc, sbase, bias, out, obase, masks, opos, mbase,
              flags)
    elif nv == 17:
        _t17(x, xbase, offs, vals, j0, j1, sc, sbase, bias, out, obase, masks, opos, mbase,
              flags)
    elif nv == 18:
        _t18(x, xbase, offs, vals, j0, j1, sc, sbase, bias, out, obase, masks, opos, mbase,
              flags)
    elif nv == 19:
        _t19(x, xbase, offs, vals, j0, j1, sc, sbase, bias, out, obase, masks, opos, mbase,
              flags)
    elif nv == 20:
        _t20(x, xbase, offs, vals, j0, j1, sc, sbase, bias, out, obase, masks, opos, mbase,
              flags)
    elif nv == 21:
        _t21(x, xbase, offs, vals, j0, j1, sc, sbase, bias, out, obase, masks, opos, mbase,
              flags)
    elif nv == 22:
        _t22(x, xbase, offs, vals, j0, j1, sc, sbase, bias, out, obase, masks, opos, mbase,
              flags)
    elif nv == 23:
        _t23(x, xbase, offs, vals, j0, j1, sc, sbase, bias, out, obase, masks, opos, mbase,
              flags)
    elif nv == 24:
        _t24(x, xbase, offs, vals, j0, j1, sc, sbase, bias, out, obase, masks, opos, mbase,
              flags)
