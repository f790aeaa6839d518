"""Portable explicit-SIMD building blocks of the direct sparse convolution (generic LLVM IR).

The portable kernel ``direct`` (:mod:`sparsecnn.kernels.cpu.direct`) needs what Numba alone does
not give: a loop over one output channel's nonzeros whose ``NV`` accumulator vectors stay in
registers for the whole loop. :func:`fma_tile` emits that loop as LLVM IR through
:func:`numba.extending.intrinsic`, using only target-independent IR, so LLVM lowers it for
whatever CPU Numba compiles for (AVX-512, AVX2, AVX, SSE2, NEON, ...):

.. code-block:: text

    acc[v] = sc[sbase + VW v : +VW]  or  splat(bias)     v = 0 .. NV-1  (phi nodes: registers)
    for j in [j0, j1):                                    (one output channel's nonzeros)
        w = splat(vals[j])
        acc[v] = fmuladd(w, x[xbase + offs[j] + VW v : +VW], acc[v])   (unaligned loads)
    sc[sbase + VW v : +VW] = relu ? select(acc < 0, 0, acc) : acc

- Vectors are ``<VW x float>`` with ``VW`` (:data:`VW`) the float width of the target's vector
  registers, and ``NV <= NV_MAX`` (:data:`NV_MAX`) from its register count
  (:func:`vector_shape`): 16 floats / 28 on AVX-512 (32 zmm), 8 / 14 on AVX2 and AVX (16 ymm),
  4 / 12 on SSE2 (16 xmm; no memory operands for unaligned loads, so more temporaries), 4 / 24
  on NEON (32 v registers).
- ``llvm.fmuladd`` (not ``llvm.fma``): one fused instruction where the target has FMA, a
  multiply and an add where it has not (``llvm.fma`` would become a call to ``fmaf`` there).
- Plain unaligned vector loads (``align 4``): no lane permutes, so no x86-only intrinsics; a load
  crossing a cache line costs one extra load slot on recent x86 cores.
- ReLU is a ``select`` (NaN kept, as ``torch.relu``).
- One intrinsic holds the loops of every ``NV`` in ``1 .. NV_MAX`` behind one ``switch``, so its
  single call site (inlined) compiles once.

The store of a finished tile goes through the scratch buffer: :func:`copy_span` then copies each
output row segment (the non-junk columns) from ``sc`` to the output with full-width unaligned
loads / stores, the last one overlapping the previous one instead of being masked (the same
values are written twice), and narrower vectors for segments shorter than ``VW``. No masked
stores: SSE2 and NEON have none (LLVM would emit one branch per lane).

:func:`try_claim` / :func:`publish` / :func:`is_ready` are atomics for the parallel input
preparation (a plain spin, no ``pause``: it has no portable spelling).
"""

from __future__ import annotations

from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

from ..capabilities import target


def vector_shape(isa: str) -> tuple[int, int]:
    """``(VW, NV_MAX)`` for an ISA level (:attr:`~sparsecnn.kernels.capabilities.Target.isa`).

    ``VW``: float32 lanes of one vector register. ``NV_MAX``: the largest register tile (in
    vectors) that leaves room, besides the accumulators, for the broadcast weight and the load
    temporaries the target needs (x86 AVX/AVX-512 fold unaligned loads into the multiply-add;
    SSE2 and NEON load into a register first).
    """
    return {"avx512": (16, 28), "avx2": (8, 14), "avx": (8, 13), "sse2": (4, 12),
            "neon": (4, 24)}.get(isa, (4, 12))


#: Float32 lanes per vector, and the largest register tile, on the compilation target.
VW, NV_MAX = vector_shape(target().isa)

_F32 = ir.FloatType()
_I1 = ir.IntType(1)
_I32 = ir.IntType(32)
_I64 = ir.IntType(64)


def _vty(w: int):
    return ir.VectorType(_F32, w)


def _splat(builder, val, w: int):
    undef = ir.Constant(_vty(w), ir.Undefined)
    return builder.shuffle_vector(builder.insert_element(undef, val, ir.Constant(_I32, 0)),
                                  undef, ir.Constant(ir.VectorType(_I32, w), [0] * w))


def _data(context, builder, aty, arr):
    return context.make_array(aty)(context, builder, arr).data


def _vptr(builder, base, idx, w: int):
    """``<w x float>*`` at ``base + idx`` (``idx`` an i64 value)."""
    return builder.bitcast(builder.gep(base, [idx]), _vty(w).as_pointer())


# --------------------------------------------------------------------------------------------
# the register-tile loop
# --------------------------------------------------------------------------------------------
def _emit_tile(builder, nv, w, xptr, xb, optr, vptr, j0, j1, sptr, sb, bval, init_sc, relu):
    """Emit the loop of one ``nv``-vector tile at the builder's position (see module docstring)."""
    vty = _vty(w)
    fmuladd = cgutils.get_or_insert_function(
        builder.module, ir.FunctionType(vty, [vty, vty, vty]), f"llvm.fmuladd.v{w}f32")
    sbase = builder.gep(sptr, [sb])

    def sc_ptr(v):
        return _vptr(builder, sbase, ir.Constant(_I64, w * v), w)

    # initial accumulators: from sc or from the bias
    bvec = _splat(builder, bval, w)
    entry0 = builder.basic_block
    from_sc = builder.append_basic_block("tile_init_sc")
    init_done = builder.append_basic_block("tile_init_done")
    builder.cbranch(init_sc, from_sc, init_done)
    builder.position_at_end(from_sc)
    loaded = [builder.load(sc_ptr(v), align=4 * w) for v in range(nv)]
    from_sc_end = builder.basic_block
    builder.branch(init_done)
    builder.position_at_end(init_done)
    init = []
    for v in range(nv):
        ph = builder.phi(vty)
        ph.add_incoming(bvec, entry0)
        ph.add_incoming(loaded[v], from_sc_end)
        init.append(ph)

    # the loop over the nonzeros, accumulators in phi nodes
    entry = builder.basic_block
    loop = builder.append_basic_block("tile_loop")
    done = builder.append_basic_block("tile_done")
    builder.cbranch(builder.icmp_signed("<", j0, j1), loop, done)
    builder.position_at_end(loop)
    j = builder.phi(_I64)
    j.add_incoming(j0, entry)
    accs = []
    for v in range(nv):
        ph = builder.phi(vty)
        ph.add_incoming(init[v], entry)
        accs.append(ph)
    off = builder.sext(builder.load(builder.gep(optr, [j]), align=4), _I64)
    wv = _splat(builder, builder.load(builder.gep(vptr, [j]), align=4), w)
    src = builder.gep(xptr, [builder.add(xb, off)])
    new = []
    for v in range(nv):
        a = builder.load(_vptr(builder, src, ir.Constant(_I64, w * v), w), align=4)
        new.append(builder.call(fmuladd, [wv, a, accs[v]]))
    jn = builder.add(j, ir.Constant(_I64, 1))
    loop_end = builder.basic_block
    j.add_incoming(jn, loop_end)
    for v in range(nv):
        accs[v].add_incoming(new[v], loop_end)
    builder.cbranch(builder.icmp_signed("<", jn, j1), loop, done)

    # store to sc (ReLU'd if asked)
    builder.position_at_end(done)
    fin = []
    for v in range(nv):
        ph = builder.phi(vty)
        ph.add_incoming(init[v], entry)
        ph.add_incoming(new[v], loop_end)
        fin.append(ph)
    # ReLU as a clamp to a threshold vector (0 with ReLU, -inf without): one compare + select
    # per vector and no branch; NaN is kept (the compare is false), as torch.relu does
    lo = _splat(builder, builder.select(relu, ir.Constant(_F32, 0.0),
                                        ir.Constant(_F32, float("-inf"))), w)
    for v in range(nv):
        builder.store(builder.select(builder.fcmp_ordered("<", fin[v], lo), lo, fin[v]),
                      sc_ptr(v), align=4 * w)


def make_fma_tile(w: int, nv_max: int):
    """The register-tile intrinsic for ``w``-float vectors and tiles of ``1 .. nv_max`` vectors.

    ``fma_tile(nv, x, xbase, offs, vals, j0, j1, sc, sbase, bias, flags)`` (see
    :func:`fma_tile`); exposed so tests can build it for another target's width.
    """

    @intrinsic
    def _fma_tile(typingctx, nv, x, xbase, offs, vals, j0, j1, sc, sbase, bias, flags):
        sig = types.void(nv, x, xbase, offs, vals, j0, j1, sc, sbase, bias, flags)

        def codegen(context, builder, signature, args):
            at = signature.args

            def i64(i):
                return context.cast(builder, args[i], at[i], types.int64)

            xptr, optr, vptr, sptr = (_data(context, builder, at[i], args[i]) for i in (1, 3, 4, 7))
            nvv, xb, j0v, j1v, sb, fl = i64(0), i64(2), i64(5), i64(6), i64(8), i64(10)
            bval = context.cast(builder, args[9], at[9], types.float32)
            zero64 = ir.Constant(_I64, 0)
            init_sc = builder.icmp_unsigned("!=", builder.and_(fl, ir.Constant(_I64, 1)), zero64)
            relu = builder.icmp_unsigned("!=", builder.and_(fl, ir.Constant(_I64, 4)), zero64)
            end = builder.append_basic_block("tile_end")
            default = builder.append_basic_block("tile_bad_nv")
            sw = builder.switch(nvv, default)
            for nv_ in range(1, nv_max + 1):
                bb = builder.append_basic_block(f"tile_nv{nv_}")
                sw.add_case(ir.Constant(_I64, nv_), bb)
                builder.position_at_end(bb)
                _emit_tile(builder, nv_, w, xptr, xb, optr, vptr, j0v, j1v, sptr, sb, bval,
                           init_sc, relu)
                builder.branch(end)
            builder.position_at_end(default)  # unreachable: the plan keeps 1 <= nv <= nv_max
            builder.branch(end)
            builder.position_at_end(end)
            return context.get_dummy_value()

        return sig, codegen

    return _fma_tile


_fma_tile = make_fma_tile(VW, NV_MAX)


@njit(cache=True, nogil=True, inline="always")
def fma_tile(nv, x, xbase, offs, vals, j0, j1, sc, sbase, bias, flags):
    """One register tile of one output channel: ``acc += sum_j vals[j] * x[xbase + offs[j] :
    + VW nv]`` over ``j in [j0, j1)``, the ``nv`` (1 <= nv <= NV_MAX) accumulator vectors held
    in registers; the result goes to ``sc[sbase : + VW nv]``.

    ``acc`` starts from ``sc[sbase:]`` if ``flags & 1`` else from the scalar ``bias``; ``flags &
    4``: ReLU applied to the result. ``sc[sbase]`` must be ``4 VW``-byte aligned and ``x`` hold
    ``xbase + offs[j] + VW nv`` elements for every ``j``: bounds are not checked (the plan
    guarantees them).
    """
    _fma_tile(nv, x, xbase, offs, vals, j0, j1, sc, sbase, bias, flags)


# --------------------------------------------------------------------------------------------
# copies and fills of arbitrary length without masked stores
# --------------------------------------------------------------------------------------------
def _emit_span(builder, n, vw, op):
    """Emit ``op(offset, width)`` calls covering ``[0, n)`` exactly (``n`` an i64 >= 0):
    ``n >= vw``: full vectors at ``0, vw, 2 vw, ...`` and, if ``vw`` does not divide ``n``, one
    more at ``n - vw`` (overlapping the previous one); ``n < vw``: the widest power of two
    ``w <= n`` at ``0`` and ``n - w``; ``n == 1``: width 1. Every element of ``[0, n)`` is
    covered and nothing outside it is touched."""
    c = lambda v: ir.Constant(_I64, v)  # noqa: E731
    end = builder.append_basic_block("span_end")
    full = builder.append_basic_block("span_full")
    small = builder.append_basic_block("span_small")
    builder.cbranch(builder.icmp_signed(">=", n, c(vw)), full, small)
    # n >= vw: do { op(t); t += vw } while (t + vw <= n); if (t < n) op(n - vw)
    builder.position_at_end(full)
    pre = builder.basic_block
    loop = builder.append_basic_block("span_loop")
    builder.branch(loop)
    builder.position_at_end(loop)
    t = builder.phi(_I64)
    t.add_incoming(c(0), pre)
    op(t, vw)
    tn = builder.add(t, c(vw))
    t.add_incoming(tn, builder.basic_block)
    after = builder.append_basic_block("span_after")
    builder.cbranch(builder.icmp_signed("<=", builder.add(tn, c(vw)), n), loop, after)
    builder.position_at_end(after)
    with builder.if_then(builder.icmp_signed("<", tn, n)):
        op(builder.sub(n, c(vw)), vw)
    builder.branch(end)
    # n < vw: two overlapping vectors of the widest width w <= n
    builder.position_at_end(small)
    w = vw // 2
    while w >= 1:
        this = builder.append_basic_block(f"span_w{w}")
        nxt = builder.append_basic_block(f"span_lt{w}")
        builder.cbranch(builder.icmp_signed(">=", n, c(w)), this, nxt)
        builder.position_at_end(this)
        op(c(0), w)
        if w > 1:
            op(builder.sub(n, c(w)), w)
        builder.branch(end)
        builder.position_at_end(nxt)
        w //= 2
    builder.branch(end)  # n == 0
    builder.position_at_end(end)


def _ptr(builder, base, idx, w: int):
    return _vptr(builder, base, idx, w) if w > 1 else builder.gep(base, [idx])


@intrinsic
def copy_span(typingctx, dst, di, src, si, n):
    """``dst[di:di+n] = src[si:si+n]`` for any ``n >= 0``, touching no element outside the two
    ranges: full-width unaligned vectors, the last one overlapping the previous (rewriting the
    same values) rather than masked; a span shorter than a vector uses two overlapping vectors of
    the widest power-of-two width that fits. The ranges must not overlap each other. Unchecked
    bounds. (One intrinsic, not a Numba function: array arguments of an inlined Numba function
    called in a loop cost two NRT reference-count calls per call.)"""
    sig = types.void(dst, di, src, si, n)

    def codegen(context, builder, signature, args):
        at = signature.args
        d = builder.gep(_data(context, builder, at[0], args[0]),
                        [context.cast(builder, args[1], at[1], types.int64)])
        s = builder.gep(_data(context, builder, at[2], args[2]),
                        [context.cast(builder, args[3], at[3], types.int64)])

        def op(off, w):
            v = builder.load(_ptr(builder, s, off, w), align=4)
            builder.store(v, _ptr(builder, d, off, w), align=4)

        _emit_span(builder, context.cast(builder, args[4], at[4], types.int64), VW, op)
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def fill_span(typingctx, dst, di, n, value):
    """``dst[di:di+n] = value`` for any ``n >= 0`` (as :func:`copy_span`). Unchecked bounds."""
    sig = types.void(dst, di, n, value)

    def codegen(context, builder, signature, args):
        at = signature.args
        d = builder.gep(_data(context, builder, at[0], args[0]),
                        [context.cast(builder, args[1], at[1], types.int64)])
        val = context.cast(builder, args[3], at[3], types.float32)
        splats = {1: val}
        w = VW
        while w > 1:  # built here, in the block that dominates every store
            splats[w] = _splat(builder, val, w)
            w //= 2

        def op(off, w):
            builder.store(splats[w], _ptr(builder, d, off, w), align=4)

        _emit_span(builder, context.cast(builder, args[2], at[2], types.int64), VW, op)
        return context.get_dummy_value()

    return sig, codegen


# --------------------------------------------------------------------------------------------
# atomics (portable: no spin-wait hint)
# --------------------------------------------------------------------------------------------
def _state_ptr(context, builder, aty, arr, idx, ity):
    return builder.gep(_data(context, builder, aty, arr),
                       [context.cast(builder, idx, ity, types.int64)])


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
    """``state[i] == 2`` (acquire load)."""
    sig = types.boolean(state, i)

    def codegen(context, builder, signature, args):
        ptr = _state_ptr(context, builder, signature.args[0], args[0], args[1], signature.args[1])
        v = builder.load_atomic(ptr, "acquire", 4)
        return builder.icmp_signed("==", v, ir.Constant(_I32, 2))

    return sig, codegen
