"""targets.kernels's high-half requantize epilogue: exactly the plan's int64 requantize.

The NumPy emulation of the kernel's int32 arithmetic and the compiled dense kernel are both checked
against ``requantize_int64`` over accumulators at the ends of their range, multipliers up to 2^31,
shifts 33..62, zero points folded into the rounding term, constant channels, and the cases the
epilogue must refuse."""
import numpy as np
import pytest
import tvm

import targets
from targets import kernels as dot
from targets.kernels.x86_vnni import VNNI, host_has_avx512_vnni


def _emulate(q32: np.ndarray, a: np.ndarray) -> np.ndarray:
    """The kernel's arithmetic: int32 a (acc + bias), high word of a * m, then int32 only."""
    bias, mult, rnd, shift, _, lo, hi = q32.astype(np.int64)
    a = a.astype(np.int64) + bias
    assert np.abs(a).max() < 2 ** 31
    h = (a * mult) >> 32
    v = (h + rnd) >> shift
    assert np.abs(h + rnd).max() < 2 ** 31
    return np.clip(v, lo, hi)


def _rows(rng, n, shift_lo=33, shift_hi=62):
    shift = rng.integers(shift_lo, shift_hi + 1, n)
    mult = rng.integers(1 << 30, (1 << 31) + 1, n)  # 2^31 included: halved with shift - 1
    mult[0] = 1 << 31
    return np.stack([rng.integers(-20000, 20000, n), mult, np.int64(1) << (shift - 1), shift,
                     rng.integers(-128, 128, n), np.full(n, -128), np.full(n, 127)]).astype(np.int64)


def test_hi32_rows_are_exact_at_the_ends_of_the_range():
    rng = np.random.default_rng(0)
    qp = _rows(rng, 64, 33, 45)
    bound = 1 << 22
    q32 = dot.hi32_rows(qp, bound)
    assert q32 is not None and q32.dtype == np.int32
    acc = np.concatenate([rng.integers(-bound, bound + 1, (4000, 64)), np.full((1, 64), bound), np.full((1, 64), -bound),
                          np.zeros((1, 64), np.int64)])
    assert np.array_equal(_emulate(q32, acc), dot.requantize_int64(qp, acc))


def test_constant_channels_are_folded_and_exact():
    """A channel whose bias is at the int32 limit (a dead channel) outputs one value: folded, exact."""
    rng = np.random.default_rng(1)
    qp = _rows(rng, 16, 36, 40)
    qp[0, 3], qp[3, 3], qp[2, 3] = 2 ** 31 - 1, 62, 1 << 61  # acc + bias could leave int32
    q32 = dot.hi32_rows(qp, 1 << 20)
    assert q32 is not None and q32[1, 3] == 0
    acc = rng.integers(-(1 << 20), (1 << 20) + 1, (2000, 16))
    assert np.array_equal(_emulate(q32, acc), dot.requantize_int64(qp, acc))


@pytest.mark.parametrize("change,why", [
    (lambda q: q.__setitem__((3, 0), 32), "shift below 33"),
    (lambda q: q.__setitem__((2, 1), 12345), "rounding term other than 2^(s-1)"),
    (lambda q: q.__setitem__((1, 2), 1 << 32), "multiplier beyond int32"),
    (lambda q: q.__setitem__((0, 4), 2 ** 31 - 10), "acc + bias may leave int32 (not constant)"),
])
def test_hi32_rows_refuse_what_they_cannot_compute_exactly(change, why):
    rng = np.random.default_rng(2)
    qp = _rows(rng, 8, 34, 36)
    qp[1] = 1 << 30
    qp[3, 4], qp[4, 4] = 55, 0  # channel 4: (2^31 - 10) * 2^30 >> 55 = 64, and the accumulator moves it by +-2
    change(qp)
    qp[2] = np.where(np.arange(8) == 1, qp[2], np.int64(1) << (np.maximum(qp[3], 1) - 1))
    assert dot.hi32_rows(qp, 1 << 26) is None, why


@pytest.mark.skipif(not host_has_avx512_vnni(), reason="needs avx512_vnni")
@pytest.mark.parametrize("out_dtype,saturate", [("uint8", True), ("int8", True), ("int8", False)])
def test_dense_kernel_hi32_equals_int64(out_dtype, saturate):
    rng = np.random.default_rng(3)
    M, N, K = 21, 48, 40
    x = rng.integers(0, 256, (M, K)).astype(np.uint8)
    x[0] = 255
    w = rng.integers(-128, 128, (N, K)).astype(np.int8)
    w[0] = -128
    qp = _rows(rng, N, 34, 42)
    info = np.iinfo(out_dtype)
    qp[4] = rng.integers(info.min, info.max + 1, N)
    qp[5], qp[6] = (info.min, info.max) if saturate else (info.min + 3, info.max - 9)
    q32 = dot.hi32_rows(qp, 255 * np.abs(w.astype(np.int64)).sum(1))
    assert q32 is not None and dot.saturates(q32, out_dtype) == saturate
    T = targets.get("x86-host").tvm_target()
    f = tvm.compile(dot.schedule_dense(dot.dense_requant(M, N, K, "uint8", out_dtype, VNNI, hi32=True,
                                                         saturate=saturate), VNNI, 7, 2, 256).mod, target=T)
    out = tvm.runtime.tensor(np.zeros((M, N), out_dtype))
    f["main"](tvm.runtime.tensor(x), tvm.runtime.tensor(dot.pack_weight(w, 16)), tvm.runtime.tensor(q32), out)
    want = dot.requantize_int64(qp, x.astype(np.int64) @ w.astype(np.int64).T)
    assert want.std() > 0
    assert np.array_equal(out.numpy(), want.astype(out_dtype))
