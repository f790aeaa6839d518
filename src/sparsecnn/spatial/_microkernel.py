"""Register-blocked gather-GEMM-scatter micro-kernel (LLVM IR through Numba intrinsics).

One call multiplies ``MR`` *gathered* input rows by one ``C_in x 8 NV`` panel of an offset's
weight and adds the result into ``MR`` *scattered* output rows, keeping the ``MR x NV``
accumulators (``<8 x float>``, AVX2 ymm registers) in phi nodes across the whole ``C_in`` loop::

    acc[r][v] = Y[yo[r] + col + 8 v : +8]                r < MR, v < NV   (registers)
    for c in [0, C_in):
        w[v] = W[wo + c * ldw + 8 v : +8]                (one weight row of the panel)
        for r: b = broadcast(X[xo[r] + c]);  acc[r][v] = fma(b, w[v], acc[r][v])
    Y[yo[r] + col + 8 v : +8] = acc[r][v]

This is the BLIS "6 x 16" AVX2 micro-kernel shape (Van Zee & van de Geijn 2015) with the rows of
A and C addressed through index lists instead of a stride: the gather and the scatter of the
rulebook's gather-GEMM-scatter are folded into the micro-kernel's loads and stores, so no gathered
copy is ever written (an "implicit GEMM"). ``MR * NV + NV + 1 <= 16`` ymm registers. Numba alone
would keep such accumulators in memory (see docs/direct-conv.md); LLVM keeps phis in registers.

``MR`` and ``NV`` are compile-time constants, so one intrinsic is built per pair and
:func:`micro` dispatches. On a CPU without AVX2/FMA LLVM legalises the 8-wide vectors into
narrower ones (correct, slower).
"""

from __future__ import annotations

from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

MR_MAX = 6
VEC = 8

_F32 = ir.FloatType()
_I32 = ir.IntType(32)
_I64 = ir.IntType(64)
_VTY = ir.VectorType(_F32, VEC)


def _make(mr: int, nv: int):
    @intrinsic
    def mk(typingctx, X, W, Y, xo, yo, r0, wo, ldw, cin, col):
        sig = types.void(X, W, Y, xo, yo, r0, wo, ldw, cin, col)

        def codegen(context, builder, signature, args):
            at = signature.args
            xd = context.make_array(at[0])(context, builder, args[0]).data
            wd = context.make_array(at[1])(context, builder, args[1]).data
            yd = context.make_array(at[2])(context, builder, args[2]).data
            xod = context.make_array(at[3])(context, builder, args[3]).data
            yod = context.make_array(at[4])(context, builder, args[4]).data

            def i64(i):
                return context.cast(builder, args[i], at[i], types.int64)

            r0_, wo_, ldw_, cin_, col_ = i64(5), i64(6), i64(7), i64(8), i64(9)
            vp = _VTY.as_pointer()
            fma = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(_VTY, [_VTY, _VTY, _VTY]), "llvm.fma.v8f32")
            xoff, ybase = [], []
            for r in range(mr):
                ri = builder.add(r0_, ir.Constant(_I64, r))
                xoff.append(builder.load(builder.gep(xod, [ri])))
                yoff = builder.add(builder.load(builder.gep(yod, [ri])), col_)
                ybase.append(builder.gep(yd, [yoff]))
            acc0 = [[builder.load(builder.bitcast(builder.gep(ybase[r], [ir.Constant(_I64, VEC * v)]), vp),
                                  align=4) for v in range(nv)] for r in range(mr)]
            pre = builder.block
            head = builder.append_basic_block("mk.head")
            body = builder.append_basic_block("mk.body")
            done = builder.append_basic_block("mk.done")
            builder.branch(head)
            builder.position_at_end(head)
            c = builder.phi(_I64)
            c.add_incoming(ir.Constant(_I64, 0), pre)
            acc = [[builder.phi(_VTY) for _ in range(nv)] for _ in range(mr)]
            for r in range(mr):
                for v in range(nv):
                    acc[r][v].add_incoming(acc0[r][v], pre)
            builder.cbranch(builder.icmp_signed("<", c, cin_), body, done)
            builder.position_at_end(body)
            wrow = builder.gep(wd, [builder.add(wo_, builder.mul(c, ldw_))])
            w = [builder.load(builder.bitcast(builder.gep(wrow, [ir.Constant(_I64, VEC * v)]), vp),
                              align=4) for v in range(nv)]
            undef = ir.Constant(_VTY, ir.Undefined)
            zeros = ir.Constant(ir.VectorType(_I32, VEC), [0] * VEC)
            new = []
            for r in range(mr):
                xs = builder.load(builder.gep(xd, [builder.add(xoff[r], c)]))
                b = builder.shuffle_vector(builder.insert_element(undef, xs, ir.Constant(_I32, 0)),
                                           undef, zeros)
                new.append([builder.call(fma, [b, w[v], acc[r][v]]) for v in range(nv)])
            c1 = builder.add(c, ir.Constant(_I64, 1))
            end = builder.block
            c.add_incoming(c1, end)
            for r in range(mr):
                for v in range(nv):
                    acc[r][v].add_incoming(new[r][v], end)
            builder.branch(head)
            builder.position_at_end(done)
            for r in range(mr):
                for v in range(nv):
                    builder.store(acc[r][v], builder.bitcast(
                        builder.gep(ybase[r], [ir.Constant(_I64, VEC * v)]), vp), align=4)
            return context.get_dummy_value()

        return sig, codegen

    return mk


_mk_6_2, _mk_5_2, _mk_4_2, _mk_3_2, _mk_2_2, _mk_1_2 = (_make(m, 2) for m in (6, 5, 4, 3, 2, 1))
_mk_6_1, _mk_5_1, _mk_4_1, _mk_3_1, _mk_2_1, _mk_1_1 = (_make(m, 1) for m in (6, 5, 4, 3, 2, 1))


@njit(cache=True, nogil=True, inline="always")
def micro(m, nv, X, W, Y, xo, yo, r0, wo, ldw, cin, col):
    """``Y[yo[r0+r] + col : +8 nv] += X[xo[r0+r] : +cin] @ W[wo : , : 8 nv]`` (row stride ``ldw``)
    for ``r < m``; ``1 <= m <= 6``, ``nv`` in (1, 2). X, W, Y flat float32; xo, yo int64 element
    offsets. Unchecked bounds."""
    if nv == 2:
        if m == 6:
            _mk_6_2(X, W, Y, xo, yo, r0, wo, ldw, cin, col)
        elif m == 5:
            _mk_5_2(X, W, Y, xo, yo, r0, wo, ldw, cin, col)
        elif m == 4:
            _mk_4_2(X, W, Y, xo, yo, r0, wo, ldw, cin, col)
        elif m == 3:
            _mk_3_2(X, W, Y, xo, yo, r0, wo, ldw, cin, col)
        elif m == 2:
            _mk_2_2(X, W, Y, xo, yo, r0, wo, ldw, cin, col)
        else:
            _mk_1_2(X, W, Y, xo, yo, r0, wo, ldw, cin, col)
    else:
        if m == 6:
            _mk_6_1(X, W, Y, xo, yo, r0, wo, ldw, cin, col)
        elif m == 5:
            _mk_5_1(X, W, Y, xo, yo, r0, wo, ldw, cin, col)
        elif m == 4:
            _mk_4_1(X, W, Y, xo, yo, r0, wo, ldw, cin, col)
        elif m == 3:
            _mk_3_1(X, W, Y, xo, yo, r0, wo, ldw, cin, col)
        elif m == 2:
            _mk_2_1(X, W, Y, xo, yo, r0, wo, ldw, cin, col)
        else:
            _mk_1_1(X, W, Y, xo, yo, r0, wo, ldw, cin, col)
