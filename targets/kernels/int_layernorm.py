"""The integer LayerNorm kernel: one TIR PrimFunc, int64 arithmetic only, scheduled for CPUs.

It computes tvmptq/quant/int_layernorm.py's contract on ``rows x N`` codes: per row the centred
sum, ``d = N xc - S``, ``V = sum d^2 + E``, the normalising shift ``t``, the digit-by-digit floor
square root of ``V 4^t`` (31 steps of shifts and compares), the reciprocal ``2^62 // sig``, then
per element the Q24 normalised value and the per-channel fixed-point multiply-add onto the output
grid. Schedule (written into the loops, as the row-reduction rules of targets/cpu_reduction.py
would give): rows parallel (from ``PARALLEL_MIN_ROWS`` rows on), every pass over the row in
vector lanes of 16/8/4/2 (the two sums as lane-wise partial sums added at the end: integer
addition, so the order does not change the result), the per-row scalar steps serial.

Arguments: ``X[rows, N]`` (input container), ``M, K, B[N]`` int64 (multiplier, shift, bias),
``P[5]`` int64 (z_in, E, z_out, clip lo, clip hi), output ``Y[rows, N]`` (output container).
"""
from __future__ import annotations

import functools

VECTOR_WIDTHS = (16, 8, 4, 2)
PARALLEL_MIN_ROWS = 8
FRAC_BITS, RECIP_BITS = 24, 62  # the plan's frac_bits / recip_bits (checked by the pass)


def kernel_name(rows: int, n: int, in_dtype: str, out_dtype: str) -> str:
    """The PrimFunc's symbol (and the name the lowering gives it in the module): shape and dtypes,
    so profiles name it and kernels of several shapes in one module never share a symbol."""
    return f"int_layer_norm_{rows}x{n}_{in_dtype}_{out_dtype}"


@functools.cache
def int_layer_norm(rows: int, n: int, in_dtype: str, out_dtype: str):
    """The PrimFunc for ``rows x n`` codes (marked scheduled: the build leaves its loops alone),
    named :func:`kernel_name`."""
    from tvm.script import tirx as T
    w = next((v for v in VECTOR_WIDTHS if n % v == 0), 1)
    groups = n // w
    one = T.int64(1)

    @T.prim_func
    def int_layer_norm_rows(X: T.Buffer((rows, n), in_dtype), M: T.Buffer((n,), "int64"), K: T.Buffer((n,), "int64"),
               B: T.Buffer((n,), "int64"), P: T.Buffer((5,), "int64"), Y: T.Buffer((rows, n), out_dtype)):
        T.func_attr({"tirx.noalias": True})
        for i in T.parallel(rows) if rows >= PARALLEL_MIN_ROWS else T.serial(rows):
            d = T.decl_buffer((n,), "int64")
            part = T.decl_buffer((w,), "int64")
            s = T.decl_buffer((8,), "int64", scope="local")  # S, V, t, rem, res, bit, r, shift
            for jl in T.vectorized(w):
                part[jl] = T.int64(0)
            for jo in range(groups):
                for jl in T.vectorized(w):
                    part[jl] = part[jl] + (T.Cast("int64", X[i, jo * w + jl]) - P[0])
            s[0] = T.int64(0)
            for jl in range(w):
                s[0] = s[0] + part[jl]
            for jo in range(groups):
                for jl in T.vectorized(w):
                    d[jo * w + jl] = T.int64(n) * (T.Cast("int64", X[i, jo * w + jl]) - P[0]) - s[0]
            for jl in T.vectorized(w):
                part[jl] = T.int64(0)
            for jo in range(groups):
                for jl in T.vectorized(w):
                    part[jl] = part[jl] + d[jo * w + jl] * d[jo * w + jl]
            s[1] = P[1]
            for jl in range(w):
                s[1] = s[1] + part[jl]
            s[2] = T.int64(0)
            for j in range(1, 31):  # t: V 4^t in [2^60, 2^62)
                s[2] = s[2] + T.Select(s[1] < T.shift_left(one, T.Cast("int64", 62 - 2 * j)), one, T.int64(0))
            s[3] = T.shift_left(s[1], s[2] * 2)
            s[4] = T.int64(0)
            for j in range(31):  # floor sqrt, digit by digit: bit = 2^60 ... 1
                s[5] = T.shift_left(one, T.Cast("int64", 60 - 2 * j))
                if s[3] >= s[4] + s[5]:
                    s[3] = s[3] - (s[4] + s[5])
                    s[4] = T.shift_right(s[4], one) + s[5]
                else:
                    s[4] = T.shift_right(s[4], one)
            s[6] = T.Select(s[4] > T.int64(0), T.floordiv(T.shift_left(one, T.int64(RECIP_BITS)), T.max(s[4], one)),
                            T.int64(0))
            s[7] = T.int64(RECIP_BITS - FRAC_BITS) - s[2]
            for jo in range(groups):
                for jl in T.vectorized(w):
                    Y[i, jo * w + jl] = T.Cast(out_dtype, T.min(T.max(T.shift_right(
                        T.shift_right(d[jo * w + jl] * s[6] + T.shift_left(one, s[7] - one), s[7]) * M[jo * w + jl]
                        + B[jo * w + jl] + T.shift_left(one, K[jo * w + jl] - one), K[jo * w + jl]) + P[2], P[3]), P[4]))

    return int_layer_norm_rows.with_attr({"tirx.is_scheduled": True,
                                          "global_symbol": kernel_name(rows, n, in_dtype, out_dtype)})
