"""int8 depthwise convolution with the requantize in its epilogue, hand-scheduled for CPU SIMD.

A depthwise conv has no reduction over channels, so the dot-product instructions (``vpdpbusd``,
``sdot``) have nothing to reduce 4 bytes over; what it needs is plain SIMD. TVM's default build of
the lowered kernel does not get that: EfficientNet-Lite0's 3x3 depthwise conv on 144 x 56 x 56
took 1.1 ms untuned and stayed there after MetaSchedule's few trials (4 M multiply-adds: 4 GMAC/s
on a core that does 16 int32 multiply-adds per instruction).

Two layouts, one arithmetic (the plan's fixed-point requantize, targets.int8_dot.REQUANT_ROWS, int64,
as relay_passes/integer_ops.requantize), so both are bit-identical (tests/test_depthwise_int8.py
checks them against NumPy):

* :func:`depthwise_requant_nhwc` (channels last, what TensorizeDot uses on CPUs): per (image,
  output row) in parallel, each output pixel is computed ``vec`` channels at a time (``vec``: 16, or
  the largest divisor of C below it), the KH x KW taps unrolled around a vector multiply-add on
  contiguous channel vectors, the requantize constants being channel vectors too. Measured on
  EfficientNet-Lite0's shapes (one znver4 core), 1.5-2.8x faster than the NCHW kernel, most on the
  14 x 14 and 7 x 7 maps, whose NCHW rows are too short for a full vector.
* :func:`depthwise_requant` (NCHW): per (image, channel) in parallel, the channel padded and widened
  to int32 once (``X_pad``), each output row computed ``vec`` pixels at a time
  (:func:`vector_width`, a divisor of the output width).

Why the taps' sum is its own block (``compute_at``, not inlined into the requantize): inlined under
the requantize's ``int64(acc)``, TVM's simplifier distributes the cast over the sum, so every tap
was sign-extended and added in int64 (two 8-lane halves per vector): 1.3-1.6x slower.
"""
from __future__ import annotations

from .int8_dot import REQUANT_ROWS, _divisor_at_most, _requantize, loop_extent, parallel_if_worth

VEC = 16  # int32 lanes of one AVX-512 register (4 on NEON: LLVM splits the vector)


def output_size(H: int, W: int, KH: int, KW: int, stride: tuple, padding: tuple) -> tuple:
    """(OH, OW) of the conv; ``padding`` = (top, left, bottom, right)."""
    pt, pl, pb, pr = padding
    return (H + pt + pb - KH) // stride[0] + 1, (W + pl + pr - KW) // stride[1] + 1


def depthwise_requant(B: int, C: int, H: int, W: int, KH: int, KW: int, stride: tuple, padding: tuple,
                      x_dtype: str, out_dtype: str):
    """TIR ``main(X: x_dtype[B, C, H, W], Wd: int32[C, KH, KW], qp: int64[7, C], Y: out_dtype[B, C, OH, OW])``::

        acc[b, c, i, j] = sum_{kh, kw} Xpad[b, c, i*sh + kh, j*sw + kw] * Wd[c, kh, kw]     (zero padding)
        Y[b, c, i, j]   = clip(((int64(acc) + bias[c]) * mult[c] + rnd[c]) >> shift[c] + zero_point[c], lo[c], hi[c])

    The weight is widened to int32 at compile time; every requantize number is data (``qp``)."""
    from tvm import te
    pt, pl, pb, pr = padding
    sh, sw = stride
    Hp, Wp = H + pt + pb, W + pl + pr
    OH, OW = output_size(H, W, KH, KW, stride, padding)
    X = te.placeholder((B, C, H, W), x_dtype, name="X")
    Wd = te.placeholder((C, KH, KW), "int32", name="Wd")
    qp = te.placeholder((len(REQUANT_ROWS), C), "int64", name="qp")
    inside = lambda h, w: te.all(h >= pt, h < pt + H, w >= pl, w < pl + W)  # noqa: E731
    # The padded channel, its columns split into ``sw`` phases (column w*sw + p at [p, w]): a strided
    # conv then reads each tap's pixels contiguously instead of gathering every sw-th one.
    Wq = -(-Wp // sw)
    Xp = te.compute((B, C, Hp, sw, Wq), lambda b, c, h, p, w: te.if_then_else(
        inside(h, w * sw + p), X[b, c, h - pt, w * sw + p - pl].astype("int32"), te.const(0, "int32")), name="X_pad")
    # the taps written out, not a reduce axis: a reduction block under a vectorized pixel loop is
    # refused by ``vectorize`` (its reduction loops sit outside), and KH * KW <= 25 terms unroll anyway
    acc = te.compute((B, C, OH, OW), lambda b, c, i, j: sum(
        Xp[b, c, i * sh + kh, kw % sw, j + kw // sw] * Wd[c, kh, kw] for kh in range(KH) for kw in range(KW)),
        name="compute")
    requant = _requantize(qp, out_dtype)
    Y = te.compute((B, C, OH, OW), lambda b, c, i, j: requant(acc[b, c, i, j], c), name="C")
    return te.create_prim_func([X, Wd, qp, Y]).with_attr("global_symbol", "main")


def vector_width(ow: int, vec: int = VEC) -> int:
    """Output pixels per vector: the largest power of two up to ``vec`` that divides the output width
    when that is at least 4 (56 -> 8, 112 -> 16), else the largest divisor up to ``vec`` (14 -> 14,
    7 -> 7). Why: an exact split needs no tail, and a power-of-two vector maps onto registers whole;
    measured on EfficientNet-Lite0's shapes, 56 wide runs 1.4x faster with 8 than with 14."""
    pow2 = max(v for v in (1, 2, 4, 8, 16, 32, 64) if v <= vec and ow % v == 0)
    return pow2 if pow2 >= 4 else _divisor_at_most(ow, vec)


def _taps(sch, channels_last: bool) -> int:
    """KH * KW of a depthwise workload, from its int32 weight Wd ([C, KH, KW] or [KH, KW, C])."""
    wd = next(r.source for r in sch.get(sch.get_sblock("compute")).reads if r.source.name == "Wd")
    shape = [int(d) for d in wd.shape]
    return shape[0] * shape[1] if channels_last else shape[1] * shape[2]


def schedule_depthwise(func, vec: int = VEC):
    """Hand schedule for :func:`depthwise_requant`; returns the ``Schedule``: (image, channel) fused
    and parallel; the padded channel computed once per channel, vectorized along its rows; the taps'
    sum computed per vector of ``vec`` output pixels, then requantized and stored."""
    import tvm
    sch = tvm.s_tir.Schedule(func)
    epi, acc, pad = sch.get_sblock("C"), sch.get_sblock("compute"), sch.get_sblock("X_pad")
    b, c, i, j = sch.get_loops(epi)
    ow = int(sch.get(j).extent)
    work = loop_extent(sch, (b, c, i, j)) * _taps(sch, False)
    bc = sch.fuse(b, c)
    parallel_if_worth(sch, bc, work)
    jo, ji = sch.split(j, [None, vector_width(ow, vec)])
    sch.compute_at(acc, jo)  # int32 taps' sum per pixel vector, then the requantize (see the module doc)
    sch.compute_at(pad, bc)
    sch.vectorize(sch.get_loops(acc)[-1])
    sch.vectorize(ji)
    sch.vectorize(sch.get_loops(pad)[-1])
    return sch


def depthwise_requant_nhwc(B: int, H: int, W: int, C: int, KH: int, KW: int, stride: tuple, padding: tuple,
                           x_dtype: str, out_dtype: str):
    """TIR ``main(X: x_dtype[B, H, W, C], Wd: int32[KH, KW, C], qp: int64[7, C], Y: out_dtype[B, OH, OW, C])``:
    :func:`depthwise_requant` channels last (the same sums and requantize, zero padding)."""
    from tvm import te
    pt, pl, _, _ = padding
    sh, sw = stride
    OH, OW = output_size(H, W, KH, KW, stride, padding)
    X = te.placeholder((B, H, W, C), x_dtype, name="X")
    Wd = te.placeholder((KH, KW, C), "int32", name="Wd")
    qp = te.placeholder((len(REQUANT_ROWS), C), "int64", name="qp")

    def tap(b, h, w, c):  # zero outside the image; no condition at all when there is no padding
        v = X[b, h - pt, w - pl, c].astype("int32")
        if not any(padding):
            return v
        return te.if_then_else(te.all(h >= pt, h < pt + H, w >= pl, w < pl + W), v, te.const(0, "int32"))
    acc = te.compute((B, OH, OW, C), lambda b, i, j, c: sum(
        tap(b, i * sh + kh, j * sw + kw, c) * Wd[kh, kw, c] for kh in range(KH) for kw in range(KW)), name="compute")
    requant = _requantize(qp, out_dtype)
    Y = te.compute((B, OH, OW, C), lambda b, i, j, c: requant(acc[b, i, j, c], c), name="C")
    return te.create_prim_func([X, Wd, qp, Y]).with_attr("global_symbol", "main")


def schedule_depthwise_nhwc(func, vec: int = VEC):
    """Hand schedule for :func:`depthwise_requant_nhwc`; returns the ``Schedule``: (image, output row)
    fused and parallel; per output pixel, channels in vectors of ``vec`` (the largest divisor of C up
    to it): the int32 taps' sum, then the requantize, both vectorized over the channels."""
    import tvm
    sch = tvm.s_tir.Schedule(func)
    epi, acc = sch.get_sblock("C"), sch.get_sblock("compute")
    b, i, j, c = sch.get_loops(epi)
    work = loop_extent(sch, (b, i, j, c)) * _taps(sch, True)
    _, ci = sch.split(c, [None, _divisor_at_most(int(sch.get(c).extent), vec)])
    parallel_if_worth(sch, sch.fuse(b, i), work)
    sch.compute_at(acc, sch.get_loops(epi)[-2])
    sch.vectorize(sch.get_loops(acc)[-1])
    sch.vectorize(ci)
    return sch
