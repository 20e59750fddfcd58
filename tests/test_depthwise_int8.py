"""targets.kernels.depthwise: the hand-scheduled int8 depthwise conv + requantize, bit-exact against an
independent NumPy integer reference (zero padding, strides, asymmetric padding, both activation and
output dtypes, batch 2, requantize numbers at the int64 extremes the lowering produces)."""
import numpy as np
import pytest
import tvm

import targets
from targets.kernels.depthwise import (depthwise_requant, depthwise_requant_nhwc, output_size, schedule_depthwise,
                                    schedule_depthwise_nhwc, vector_width)

TARGET = targets.get("x86-host").tvm_target()


def reference(x, w, qp, stride, padding, out_dtype):
    """Direct NumPy: int64 sums over the taps of the zero-padded input, then the per-channel
    fixed-point requantize ((acc + bias) * mult + rnd) >> shift + zp, clipped."""
    B, C, H, W = x.shape
    _, KH, KW = w.shape
    pt, pl, pb, pr = padding
    OH, OW = (H + pt + pb - KH) // stride[0] + 1, (W + pl + pr - KW) // stride[1] + 1
    xp = np.zeros((B, C, H + pt + pb, W + pl + pr), np.int64)
    xp[:, :, pt:pt + H, pl:pl + W] = x
    acc = np.zeros((B, C, OH, OW), np.int64)
    for i in range(OH):
        for j in range(OW):
            patch = xp[:, :, i * stride[0]:i * stride[0] + KH, j * stride[1]:j * stride[1] + KW]
            acc[:, :, i, j] = (patch * w[None].astype(np.int64)).sum((2, 3))
    bias, mult, rnd, shift, zp, lo, hi = (qp[r][None, :, None, None] for r in range(7))
    return np.clip((((acc + bias) * mult + rnd) >> shift) + zp, lo, hi).astype(out_dtype)


def _requant_numbers(rng, C, out_dtype):
    info = np.iinfo(out_dtype)
    shift = rng.integers(30, 40, C)
    return np.stack([rng.integers(-5000, 5000, C), rng.integers(1 << 20, 1 << 30, C), np.int64(1) << (shift - 1),
                     shift, rng.integers(-3, 4, C), np.full(C, info.min), np.full(C, info.max)]).astype(np.int64)


CASES = [  # B, C, H, W, KH, KW, stride, padding (top, left, bottom, right), x dtype, out dtype
    (1, 16, 12, 12, 3, 3, (1, 1), (1, 1, 1, 1), "uint8", "int8"),
    (1, 8, 13, 13, 3, 3, (2, 2), (0, 0, 0, 0), "int8", "uint8"),      # TF-style "valid" stride 2
    (2, 5, 10, 11, 5, 5, (1, 1), (2, 2, 2, 2), "int8", "int8"),       # batch 2, odd widths
    (1, 12, 16, 16, 5, 5, (2, 2), (1, 1, 2, 2), "uint8", "uint8"),    # asymmetric "same" padding
    (1, 7, 7, 7, 3, 5, (1, 2), (1, 2, 1, 2), "int8", "int8"),         # rectangular kernel and stride
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"b{c[0]}c{c[1]}_{c[2]}x{c[3]}_k{c[4]}x{c[5]}_s{c[6][0]}{c[6][1]}")
def test_depthwise_requant_is_bit_exact(case):
    B, C, H, W, KH, KW, stride, padding, x_dtype, out_dtype = case
    rng = np.random.default_rng(sum(case[:6]))
    info = np.iinfo(x_dtype)
    x = rng.integers(info.min, info.max + 1, (B, C, H, W)).astype(x_dtype)
    x[0, 0] = info.max  # a whole channel at the extreme: the largest sums the int32 accumulator sees
    w = rng.integers(-128, 128, (C, KH, KW)).astype(np.int32)
    w[0] = -128
    qp = _requant_numbers(rng, C, out_dtype)
    OH, OW = output_size(H, W, KH, KW, stride, padding)
    lib = tvm.compile(schedule_depthwise(depthwise_requant(B, C, H, W, KH, KW, stride, padding, x_dtype, out_dtype)).mod,
                      target=TARGET)
    bufs = [tvm.runtime.tensor(a) for a in (x, w, qp, np.zeros((B, C, OH, OW), out_dtype))]
    lib["main"](*bufs)
    want = reference(x, w, qp, stride, padding, out_dtype)
    assert want.std() > 0  # the requantize does not clip everything to one value
    assert np.array_equal(bufs[-1].numpy(), want)
    # channels last: the same numbers through the NHWC kernel
    lib = tvm.compile(schedule_depthwise_nhwc(depthwise_requant_nhwc(B, H, W, C, KH, KW, stride, padding, x_dtype,
                                                                     out_dtype)).mod, target=TARGET)
    bufs = [tvm.runtime.tensor(np.ascontiguousarray(a)) for a in
            (x.transpose(0, 2, 3, 1), w.transpose(1, 2, 0).astype(np.int8), qp, np.zeros((B, OH, OW, C), out_dtype))]
    lib["main"](*bufs)
    assert np.array_equal(bufs[-1].numpy(), want.transpose(0, 2, 3, 1))


def test_output_size_matches_torch_convention():
    assert output_size(113, 113, 3, 3, (2, 2), (0, 0, 0, 0)) == (56, 56)
    assert output_size(56, 56, 3, 3, (1, 1), (1, 1, 1, 1)) == (56, 56)
    assert output_size(28, 28, 5, 5, (2, 2), (1, 1, 2, 2)) == (14, 14)


@pytest.mark.parametrize("ow,vec,want", [(56, 16, 8), (112, 16, 16), (14, 16, 14), (7, 16, 7), (28, 16, 4),
                                         (30, 16, 15), (13, 4, 1)])
def test_vector_width_divides_the_row(ow, vec, want):
    v = vector_width(ow, vec)
    assert v == want and ow % v == 0 and v <= vec


def test_the_schedule_is_simd_and_parallel():
    """The point of the kernel: the pixel loop is vectorized and (image, channel) is parallel."""
    sch = schedule_depthwise(depthwise_requant(1, 128, 32, 32, 3, 3, (1, 1), (1, 1, 1, 1), "uint8", "int8"))
    text = sch.mod.script()
    assert "in T.parallel(128):" in text  # 1 image x 128 channels
    assert "j_1 in T.vectorized(16):" in text  # the 16 output pixels of a row in one vector
    # the taps' sum is an int32 block of its own: inlined under the requantize's int64 cast, TVM
    # widened every tap to int64
    assert 'compute[' in text and 'T.Cast("int64", compute' in text
    # a small conv (8 channels of 16 x 16, 18 k multiply-adds) stays on the calling thread
    small = schedule_depthwise(depthwise_requant(1, 8, 16, 16, 3, 3, (1, 1), (1, 1, 1, 1), "uint8", "int8"))
    assert "T.parallel" not in small.mod.script()


def test_the_nhwc_schedule_vectorizes_channels():
    sch = schedule_depthwise_nhwc(depthwise_requant_nhwc(1, 64, 64, 48, 3, 3, (1, 1), (1, 1, 1, 1), "uint8", "int8"))
    text = sch.mod.script()
    assert "in T.parallel(64):" in text  # 1 image x 64 output rows
    assert text.count("in T.vectorized(16):") == 2  # the int32 sums and the requantize, 16 channels each
    assert "in T.unroll(4):" in text  # 4 output pixels' sums at once: independent accumulator chains


# ------------------------------------------------------------------------------------- dot-product taps
DOT_CASES = [  # B, C, H, W, KH, KW, stride, out dtype, saturate (clip bounds = the dtype's limits)
    (1, 32, 14, 14, 3, 3, (1, 1), "uint8", True),
    (1, 16, 15, 15, 5, 5, (2, 2), "int8", True),     # runs of 3 + 2 taps, stride 2
    (2, 48, 11, 13, 7, 7, (1, 1), "uint8", False),   # runs of 4 + 3, batch 2, per-channel clip
    (1, 16, 9, 9, 3, 2, (1, 2), "int8", False),      # a rectangular 3 x 2 kernel: one run of 2
]


@pytest.mark.parametrize("case", DOT_CASES, ids=lambda c: f"b{c[0]}c{c[1]}_{c[2]}x{c[3]}_k{c[4]}x{c[5]}_{c[7]}")
def test_dot_product_depthwise_is_bit_exact(case):
    """The VNNI depthwise kernel (taps on vpdpbusd, high-half epilogue) against the int64 NumPy
    reference, with activations at 255 and weights at -128 in one channel (the largest sums)."""
    from targets import kernels as dot
    from targets.kernels.depthwise import depthwise_requant_nhwc_dot, dot_weight, schedule_depthwise_nhwc_dot
    from targets.kernels.x86_vnni import VNNI, host_has_avx512_vnni
    if not host_has_avx512_vnni():
        pytest.skip("needs avx512_vnni")
    B, C, H, W, KH, KW, stride, out_dtype, saturate = case
    rng = np.random.default_rng(C + KW)
    x = rng.integers(0, 256, (B, C, H, W)).astype(np.uint8)
    x[:, 0] = 255
    w = rng.integers(-128, 128, (C, KH, KW)).astype(np.int8)
    w[0] = -128
    qp = _requant_numbers(rng, C, out_dtype)
    qp[3] = rng.integers(34, 40, C)
    qp[2] = np.int64(1) << (qp[3] - 1)
    if not saturate:
        qp[5], qp[6] = np.iinfo(out_dtype).min + 5, np.iinfo(out_dtype).max - 7
    q32 = dot.hi32_rows(qp, 255 * np.abs(w.astype(np.int64)).reshape(C, -1).sum(1))
    assert q32 is not None and dot.saturates(q32, out_dtype) == saturate
    OH, OW = output_size(H, W, KH, KW, stride, (0, 0, 0, 0))
    sch = schedule_depthwise_nhwc_dot(depthwise_requant_nhwc_dot(B, H, W, C, KH, KW, stride, "uint8", out_dtype, VNNI,
                                                                 saturate=saturate), VNNI)
    lib = tvm.compile(sch.mod, target=TARGET)
    bufs = [tvm.runtime.tensor(np.ascontiguousarray(a)) for a in
            (x.transpose(0, 2, 3, 1), dot_weight(w.transpose(1, 2, 0)), q32, np.zeros((B, OH, OW, C), out_dtype))]
    lib["main"](*bufs)
    want = reference(x, w.astype(np.int32), qp, stride, (0, 0, 0, 0), out_dtype)
    assert want.std() > 0
    assert np.array_equal(bufs[-1].numpy(), want.transpose(0, 2, 3, 1))
    from targets import kernel_proof as kp
    assert "vpdpbusd" in kp.library_asm(lib)


def test_tap_runs_and_when_the_dot_kernel_applies():
    from targets.kernels.depthwise import dot_reason, tap_chunks
    from targets.kernels.x86_vnni import VNNI
    assert [tap_chunks(k) for k in (1, 2, 3, 4, 5, 7, 9)] == [[], [2], [3], [4], [3, 2], [4, 3], [4, 3, 2]]
    assert dot_reason(144, 3, 3, (0, 0, 0, 0), "uint8", True, VNNI) == ""
    assert "int8" in dot_reason(144, 3, 3, (0, 0, 0, 0), "int8", True, VNNI)          # VNNI takes uint8
    assert "multiple of 16" in dot_reason(40, 3, 3, (0, 0, 0, 0), "uint8", True, VNNI)
    assert "padding" in dot_reason(144, 3, 3, (1, 1, 1, 1), "uint8", True, VNNI)
    assert "int64" in dot_reason(144, 3, 3, (0, 0, 0, 0), "uint8", False, VNNI)
