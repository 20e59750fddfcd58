"""im2col for int8 convolutions that are neither 1x1 nor depthwise (a network's stem, 3x3 convs).

Such a conv is a GEMM once each output pixel's receptive field is laid out as one row:
``cols[b*OH*OW + i*OW + j, (kh*KW + kw)*C + c] = X[b, c, i*sh + kh - pt, j*sw + kw - pl]`` (zero
outside the image, which is the conv's own zero padding). The dot-product dense kernel
(targets/dense.dense_requant) then computes the conv with its requantize, writing NHWC rows.
Why it pays: EfficientNet-Lite0's stem (3 -> 32 channels, 3x3, stride 2) took 0.77 ms in TVM's
tuned direct conv; as im2col (12544 x 27 bytes) and a 12544 x 32 x 27 dense it is a fraction of that.

:func:`im2col` reads NCHW (a conv whose input comes from an NCHW op, such as the stem's quantized
image) or NHWC (an input produced by a channels-last kernel); ``(kh, kw, c)`` is the column order in
both, so the weight is packed once as ``W[N, KH, KW, C]``.
"""
from __future__ import annotations

from .depthwise import output_size


def im2col(B: int, C: int, H: int, W: int, KH: int, KW: int, stride: tuple, padding: tuple, dtype: str,
           layout: str = "NCHW"):
    """TIR ``main(X: dtype[B, C, H, W] (or [B, H, W, C]), cols: dtype[B*OH*OW, KH*KW*C])``, scheduled
    (rows in parallel when there are enough: dense.parallel_if_worth)."""
    import tvm
    from tvm import te
    if layout not in ("NCHW", "NHWC"):
        raise ValueError(f"im2col reads NCHW or NHWC, not {layout}")
    pt, pl, _, _ = padding
    sh, sw = stride
    OH, OW = output_size(H, W, KH, KW, stride, padding)
    X = te.placeholder((B, C, H, W) if layout == "NCHW" else (B, H, W, C), dtype, name="X")

    def value(m, k):
        b, i, j = m // (OH * OW), m // OW % OH, m % OW
        kh, kw, c = k // (KW * C), k // C % KW, k % C
        h, w = i * sh + kh - pt, j * sw + kw - pl
        v = X[b, c, h, w] if layout == "NCHW" else X[b, h, w, c]
        if not any(padding):
            return v
        return te.if_then_else(te.all(h >= 0, h < H, w >= 0, w < W), v, te.const(0, dtype))
    cols = te.compute((B * OH * OW, KH * KW * C), value, name="cols")
    func = te.create_prim_func([X, cols]).with_attr("global_symbol", "main")
    sch = tvm.s_tir.Schedule(func)
    m, k = sch.get_loops(sch.get_sblock("cols"))
    from .loops import PARALLEL_MIN_ELEMENTS, parallel_if_worth
    work = int(sch.get(m).extent) * int(sch.get(k).extent)
    # split the flat row and column indices back into (b, i, j) and (kh, kw, c): the simplifier
    # then drops the per-element div/mod of value()'s index arithmetic
    b, i, j = sch.split(m, [B, OH, OW])
    kh, kw, c = sch.split(k, [KH, KW, C])
    parallel_if_worth(sch, sch.fuse(b, i), work, PARALLEL_MIN_ELEMENTS)
    sch.unroll(kh)
    sch.unroll(kw)
    if layout == "NHWC" and C >= 16:
        sch.vectorize(c)  # contiguous channels in and out
    elif C <= 16:
        sch.unroll(c)
    return sch.mod["main"]


def weight_columns(w):
    """OIHW weight ``[N, C, KH, KW]`` -> ``[N, KH*KW*C]`` in :func:`im2col`'s column order."""
    import numpy as np
    w = np.asarray(w)
    return np.ascontiguousarray(w.transpose(0, 2, 3, 1).reshape(w.shape[0], -1))
