"""int8 depthwise convolution with the requantize in its epilogue, hand-scheduled for CPU SIMD.

A depthwise conv has no reduction over channels, so the dot-product instructions (``vpdpbusd``,
``sdot``) have nothing to reduce 4 bytes over; what it needs is plain SIMD. TVM's default build of
the lowered kernel does not get that: EfficientNet-Lite0's 3x3 depthwise conv on 144 x 56 x 56
took 1.1 ms untuned and stayed there after MetaSchedule's few trials (4 M multiply-adds: 4 GMAC/s
on a core that does 16 int32 multiply-adds per instruction).

Two layouts, one arithmetic (the plan's fixed-point requantize, targets.kernels.REQUANT_ROWS, int64,
as relay_passes/integer_ops.requantize), so both are bit-identical (tests/test_depthwise_int8.py
checks them against NumPy):

* :func:`depthwise_requant_nhwc` (channels last, what TensorizeDot uses on CPUs): per (image,
  output row) in parallel and per group of ``vec`` channels (16, or the largest divisor of C below
  it), :data:`PIXELS` output pixels at a time, the KH x KW taps unrolled around a vector
  multiply-add on contiguous channel vectors, the requantize constants being channel vectors too.
  Measured on EfficientNet-Lite0's shapes (one znver4 core), 1.5-2.8x faster than the NCHW kernel,
  most on the 14 x 14 and 7 x 7 maps, whose NCHW rows are too short for a full vector. Its weights
  stay int8 (widened in the loop): LLVM then knows every product fits 16-bit operands and uses
  ``vpmaddwd``/``vpdpwssd`` instead of ``vpmulld`` + ``vpaddd``, and the weights of a 672-channel
  5 x 5 conv take 17 KB of L1 instead of 67 KB.
* :func:`depthwise_requant` (NCHW): per (image, channel) in parallel, the channel padded and widened
  to int32 once (``X_pad``), each output row computed ``vec`` pixels at a time
  (:func:`vector_width`, a divisor of the output width).

Why the taps' sum is its own block (``compute_at``, not inlined into the requantize): inlined under
the requantize's ``int64(acc)``, TVM's simplifier distributes the cast over the sum, so every tap
was sign-extended and added in int64 (two 8-lane halves per vector): 1.3-1.6x slower.
"""
from __future__ import annotations

from .loops import _divisor_at_most, loop_extent, parallel_if_worth
from .requant import REQUANT_ROWS, _requantize, _requantize_hi32

VEC = 16  # int32 lanes of one AVX-512 register (4 on NEON: LLVM splits the vector)
# Output pixels of one channel group summed in one block (NHWC kernel): independent accumulator
# chains. One pixel at a time, ``vpdpwssd`` chains every tap on one register (latency bound);
# measured on EfficientNet-Lite0's depthwise shapes, 4 pixels took 0.89 ms where 1 took 1.03.
PIXELS = 4


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
                           x_dtype: str, out_dtype: str, hi32: bool = False, saturate: bool = False):
    """TIR ``main(X: x_dtype[B, H, W, C], Wd: int8[KH, KW, C], qp: int64[7, C], Y: out_dtype[B, OH, OW, C])``:
    :func:`depthwise_requant` channels last (the same sums and requantize, zero padding).

    ``hi32=True``: the same values through targets.kernels.requant's high-half epilogue (``qp`` int32 rows of
    requant.hi32_rows, the bias added to the taps' int32 sum); ``saturate`` as in dense.dense_requant."""
    from tvm import te
    pt, pl, _, _ = padding
    sh, sw = stride
    OH, OW = output_size(H, W, KH, KW, stride, padding)
    X = te.placeholder((B, H, W, C), x_dtype, name="X")
    Wd = te.placeholder((KH, KW, C), "int8", name="Wd")
    qp = te.placeholder((len(REQUANT_ROWS), C), "int32" if hi32 else "int64", name="qp")

    def tap(b, h, w, c):  # zero outside the image; no condition at all when there is no padding
        v = X[b, h - pt, w - pl, c].astype("int32")
        if not any(padding):
            return v
        return te.if_then_else(te.all(h >= pt, h < pt + H, w >= pl, w < pl + W), v, te.const(0, "int32"))
    acc = te.compute((B, OH, OW, C), lambda b, i, j, c: sum(
        (tap(b, i * sh + kh, j * sw + kw, c) * Wd[kh, kw, c].astype("int32") for kh in range(KH) for kw in range(KW)),
        qp[0, c] if hi32 else 0), name="compute")
    requant = _requantize_hi32(qp, out_dtype, saturate) if hi32 else _requantize(qp, out_dtype)
    Y = te.compute((B, OH, OW, C), lambda b, i, j, c: requant(acc[b, i, j, c], c), name="C")
    return te.create_prim_func([X, Wd, qp, Y]).with_attr("global_symbol", "main")


def _row_loops(sch, taps: int, vec: int, pixels: int) -> tuple:
    """The loops of the NHWC kernels' output block ``C``: (image, output row) fused and parallel
    (when worth it), then channel groups of ``vec`` (the largest divisor of C up to it), then the
    row's pixels ``pixels`` at a time (a divisor of the row). Returns (pixel-group loop, channel loop)."""
    b, i, j, c = sch.get_loops(sch.get_sblock("C"))
    work = loop_extent(sch, (b, i, j, c)) * taps
    co, ci = sch.split(c, [None, _divisor_at_most(int(sch.get(c).extent), vec)])
    jo, ji = sch.split(j, [None, _divisor_at_most(int(sch.get(j).extent), pixels)])
    sch.reorder(b, i, co, jo, ji, ci)
    parallel_if_worth(sch, sch.fuse(b, i), work)
    return jo, ci


def schedule_depthwise_nhwc(func, vec: int = VEC, pixels: int = PIXELS):
    """Hand schedule for :func:`depthwise_requant_nhwc`; returns the ``Schedule``: (image, output row)
    fused and parallel; per group of ``vec`` channels (the largest divisor of C up to it), the
    output pixels ``pixels`` at a time (a divisor of the row): their int32 taps' sums in one
    unrolled block, then the requantize, both vectorized over the channels. Channel groups are
    outside the pixels so that a group's weights stay in L1 along the row."""
    import tvm
    sch = tvm.s_tir.Schedule(func)
    acc = sch.get_sblock("compute")
    jo, ci = _row_loops(sch, _taps(sch, True), vec, pixels)
    sch.compute_at(acc, jo)
    loops = sch.get_loops(acc)
    sch.vectorize(loops[-1])
    sch.unroll(loops[-2])
    sch.vectorize(ci)
    return sch


# ------------------------------------------------------------------------------------- dot-product taps
def tap_chunks(KW: int) -> list[int]:
    """The kernel row's taps in runs of 2 to 4 consecutive pixels (one dot-product instruction each):
    3 -> [3], 5 -> [3, 2], 7 -> [4, 3], 9 -> [4, 3, 2]; [] when KW < 2."""
    if KW < 2:
        return []
    sizes = [4] * (KW // 4) + ([KW % 4] if KW % 4 else [])
    if sizes[-1] == 1:
        sizes[-2:] = [3, 2]
    return sizes


def dot_weight(w):
    """int8 ``[KH, KW, C]`` -> ``[len(tap_chunks(KW)), KH, C, 4]``: run q's taps of each channel as
    one 4-byte word (zero padded), what :func:`depthwise_requant_nhwc_dot` reads."""
    import numpy as np
    KH, KW, C = w.shape
    sizes = tap_chunks(KW)
    out = np.zeros((len(sizes), KH, C, 4), np.int8)
    o = 0
    for q, n in enumerate(sizes):
        out[q, :, :, :n] = np.asarray(w[:, o:o + n]).transpose(0, 2, 1)
        o += n
    return out


def dot_reason(C: int, KH: int, KW: int, padding: tuple, x_dtype: str, hi32: bool, isa) -> str:
    """'' if :func:`depthwise_requant_nhwc_dot` computes this conv on ``isa``, else why not."""
    if isa is None or isa.depthwise_intrin is None:
        return "the ISA has no depthwise dot-product intrinsic"
    if x_dtype != isa.act_dtype:
        return f"the activations are {x_dtype}, the intrinsic takes {isa.act_dtype}"
    if C % isa.lanes:
        return f"{C} channels are not a multiple of {isa.lanes}"
    if any(padding):
        return "implicit padding (the pixel runs are plain loads)"
    if not tap_chunks(KW) or KH < 2:
        return f"a {KH} x {KW} kernel (the dot-product runs need 2 x 2 or more)"
    if not hi32:
        return "the requantize needs the int64 epilogue"
    return ""


def depthwise_requant_nhwc_dot(B: int, H: int, W: int, C: int, KH: int, KW: int, stride: tuple, x_dtype: str,
                               out_dtype: str, isa, saturate: bool = False):
    """The NHWC depthwise conv with its taps on a dot-product instruction (unpadded; see :func:`dot_reason`).

    TIR ``main(X: x_dtype[B, H, W, C], Wc: int8[Q, KH, C, 4], qp: int32[7, C], Y: out_dtype[B, OH, OW, C])``
    (``Wc``: :func:`dot_weight`; ``qp``: requant.hi32_rows). Each run ``q`` of :func:`tap_chunks`
    is a block ``acc{q}`` summing its ``n`` pixels x KH rows with the ``n``-tap intrinsic (one
    instruction per row and 16 channels, where the SIMD kernel needs three per tap); block ``C_b``
    adds the runs and the bias, ``C`` requantizes (the high-half epilogue)."""
    from tvm import te
    sh, sw = stride
    OH, OW = output_size(H, W, KH, KW, stride, (0, 0, 0, 0))
    sizes = tap_chunks(KW)
    X = te.placeholder((B, H, W, C), x_dtype, name="X")
    Wc = te.placeholder((len(sizes), KH, C, 4), "int8", name="Wc")
    qp = te.placeholder((len(REQUANT_ROWS), C), "int32", name="qp")

    def run(q: int, o: int, n: int):
        kh, t = te.reduce_axis((0, KH), f"kh{q}"), te.reduce_axis((0, n), f"t{q}")
        return te.compute((B, OH, OW, C), lambda b, i, j, c: te.sum(
            X[b, i * sh + kh, j * sw + o + t, c].astype("int32") * Wc[q, kh, c, t].astype("int32"), axis=[kh, t]),
            name=f"acc{q}")
    runs = [run(q, sum(sizes[:q]), n) for q, n in enumerate(sizes)]
    Cb = te.compute((B, OH, OW, C), lambda b, i, j, c: sum(r[b, i, j, c] for r in runs) + qp[0, c], name="C_b")
    requant = _requantize_hi32(qp, out_dtype, saturate)
    Y = te.compute((B, OH, OW, C), lambda b, i, j, c: requant(Cb[b, i, j, c], c), name="C")
    return te.create_prim_func([X, Wc, qp, Y]).with_attr("global_symbol", "main")


def schedule_depthwise_nhwc_dot(func, isa, pixels: int = PIXELS):
    """Hand schedule for :func:`depthwise_requant_nhwc_dot`: the loops of :func:`schedule_depthwise_nhwc`
    (rows parallel, channel groups of ``isa.lanes``, ``pixels`` output pixels at a time); each run's
    block reordered to (kernel row, pixel, channels, taps) and tensorized at the channels."""
    import tvm
    sch = tvm.s_tir.Schedule(func)
    cb = sch.get_sblock("C_b")
    runs = sorted((sch.get(b).name_hint for b in sch.get_child_blocks(sch.get_sblock("root"))
                   if sch.get(b).name_hint.startswith("acc")))
    wc = next(r.source for r in sch.get(sch.get_sblock(runs[0])).reads if r.source.name == "Wc")
    jo, ci = _row_loops(sch, int(wc.shape[0]) * int(wc.shape[1]) * 4, isa.lanes, pixels)  # runs x rows x 4 taps
    p = int(sch.get(sch.get_loops(sch.get_sblock("C"))[-2]).extent)  # pixels per group
    sch.compute_at(cb, jo)
    for name in runs:
        acc = sch.get_sblock(name)
        sch.compute_at(acc, jo)
        # the loops under jo: [pixel (if p > 1)], channels, kernel row, [taps (if n > 1)]: loops
        # of extent 1 are not created
        loops = list(sch.get_loops(acc)[3:])
        pix = loops.pop(0) if p > 1 else None
        chan, row = loops.pop(0), loops.pop(0)
        taps = loops.pop(0) if loops else None
        sch.reorder(*[x for x in (row, pix, chan, taps) if x is not None])
        sch.decompose_reduction(acc, row)
        n = int(sch.get(taps).extent) if taps is not None else 1
        sch.tensorize(chan, isa.depthwise_intrin(n))
        if pix is not None:
            sch.unroll(pix)
        sch.vectorize(sch.get_loops(sch.get_sblock(name + "_init"))[-1])
    sch.vectorize(sch.get_loops(cb)[-1])
    sch.vectorize(ci)
    return sch
