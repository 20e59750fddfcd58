"""The plan's fixed-point requantize as the kernels' epilogues compute it: the int64 rows, the
exact high-half int32 form (:func:`hi32_rows`, with its proof), and their TE expressions."""
from __future__ import annotations

import numpy as np

REQUANT_ROWS = ("bias", "mult", "rnd", "shift", "zero_point", "lo", "hi")   # rows of the kernels' qp argument
# rows of the int32 qp argument of the high-half epilogue (:func:`hi32_rows`); rnd_hi carries the
# zero point, and the zero_point row is kept for the record only (the kernels do not read it)
REQUANT_ROWS_HI32 = ("bias", "mult", "rnd_hi", "shift_hi", "zero_point", "lo", "hi")


def hi32_rows(qp: np.ndarray, acc_bound) -> np.ndarray | None:
    """The int32 rows (:data:`REQUANT_ROWS_HI32`) of the high-half epilogue, or None where it is not
    exact for these numbers.

    The plan's requantize is ``((a * m + 2^(s-1)) >> s)`` in int64, ``a = acc + bias``. Write the
    exact product as ``a * m = H * 2^32 + L`` (``H`` its signed high word, ``0 <= L < 2^32``). For
    ``s >= 33``, ``a * m + 2^(s-1) = (H + 2^(s-33)) * 2^32 + L``, and since ``L / 2^32`` lies in
    [0, 1) it cannot carry past a multiple of ``2^(s-32)``::

        (a * m + 2^(s-1)) >> s  ==  (H + 2^(s-33)) >> (s - 32)          (exactly)

    so the kernel needs only the high word of a 32 x 32-bit product (two ``vpmuldq`` per 16 lanes
    on AVX-512) and int32 arithmetic after it, instead of sign-extending every accumulator to two
    int64 halves (``vpmullq``, 64-bit shift, add, min, max). Exact when:

    * ``|acc| + |bias| < 2^31`` (``acc_bound``: a bound on ``|acc|``, scalar or per channel), so
      ``a`` is the int32 sum;
    * ``m`` fits int32 (``m = 2^31`` is halved with ``s - 1``: the same value) and ``rnd = 2^(s-1)``;
    * ``33 <= s <= 62``, so that ``s - 32`` is a valid int32 shift.

    The zero point is folded into the rounding term: ``((H + r) >> t) + z == (H + r + z * 2^t) >> t``
    (adding a multiple of ``2^t`` before an arithmetic shift), one add fewer per vector; exact when
    ``|H| + |r + z * 2^t| < 2^31``, checked with ``|H| <= (max|a| * |m|) >> 32 + 1``.
    """
    qp = _constant_channels(np.asarray(qp, np.int64), acc_bound)
    bias, mult, rnd, shift, zp, lo, hi = qp
    if (shift < 1).any() or (rnd != np.left_shift(np.int64(1), np.maximum(shift, 1) - 1)).any():
        return None
    top = mult == (1 << 31)
    mult, shift = np.where(top, mult >> 1, mult), np.where(top, shift - 1, shift)
    if (shift < 33).any() or (shift > 62).any() or (mult < -(1 << 31)).any() or (mult >= (1 << 31)).any():
        return None
    a_max = np.asarray(acc_bound, np.int64) + np.abs(bias)
    if (a_max >= (1 << 31)).any():
        return None
    rnd_hi = np.left_shift(np.int64(1), shift - 33) + np.left_shift(zp, shift - 32)
    h_max = ((a_max * np.abs(mult)) >> 32) + 1
    if (h_max + np.abs(rnd_hi) >= (1 << 31)).any():
        return None
    if any((r < -(1 << 31)).any() or (r >= (1 << 31)).any() for r in (zp, lo, hi)):
        return None
    return np.stack([bias, mult, rnd_hi, shift - 32, zp, lo, hi]).astype(np.int32)


def saturates(rows: np.ndarray, out_dtype: str) -> bool:
    """Whether every channel's clip bounds (rows 5, 6 of :data:`REQUANT_ROWS` or
    :data:`REQUANT_ROWS_HI32`) are ``out_dtype``'s own limits: the kernel's narrowing conversion
    then clips by saturating (``vpmaxsd`` + ``vpmovusdb`` for uint8, ``vpmovsdb`` for int8) instead
    of a per-channel min and max (EfficientNet-Lite0: every layer, ReLU6 included)."""
    info = np.iinfo(out_dtype)
    return bool((rows[5] == info.min).all() and (rows[6] == info.max).all())


def requantize_int64(qp: np.ndarray, acc: np.ndarray) -> np.ndarray:
    """NumPy: the plan's int64 requantize of ``acc`` (``[..., N]``) by the rows of ``qp``."""
    bias, mult, rnd, shift, zp, lo, hi = np.asarray(qp, np.int64)
    return np.clip((((np.asarray(acc, np.int64) + bias) * mult + rnd) >> shift) + zp, lo, hi)


def _constant_channels(qp: np.ndarray, acc_bound) -> np.ndarray:
    """``qp`` with every channel whose output is one value for all ``|acc| <= acc_bound`` rewritten
    as that constant (bias 0, multiplier 0, zero point = the value, exact by construction).

    Why: channels whose weights quantized to (nearly) nothing carry int32 biases near the int32
    limit (the float bias over a tiny weight scale, clipped) and shifts up to 62; their output is
    a clipped constant, but ``acc + bias`` does not provably fit int32, which would keep the whole
    layer on the int64 epilogue (most of EfficientNet-Lite0's expand and depthwise convs). The
    requantize is monotone in ``acc``, so equal values at both ends of the range mean constant."""
    bound = np.broadcast_to(np.asarray(acc_bound, np.int64), qp.shape[1:])
    ends = requantize_int64(qp, np.stack([-bound, bound]))
    const = ends[0] == ends[1]
    if not const.any():
        return qp
    qp = qp.copy()
    qp[0, const], qp[1, const], qp[2, const], qp[3, const] = 0, 0, 1 << 32, 33
    qp[4, const] = ends[0, const]
    return qp


def _requantize_hi32(q, out_dtype: str, saturate: bool = False):
    """``f(a, j)``: the requantize of the int32 ``a = acc + bias`` of channel ``j`` from the rows of
    ``q`` (:func:`hi32_rows`). The product's high word is written as int64 multiply, shift and
    narrowing of two sign-extended int32 values, which LLVM turns into its multiply-high lowering.
    ``saturate``: the clip bounds are the output dtype's limits (:func:`saturates`), written as
    constants so that LLVM emits a saturating narrowing."""
    from tvm import te
    _, mult, rnd, shift, _, lo, hi = range(len(REQUANT_ROWS_HI32))
    info = np.iinfo(out_dtype)

    def f(a, j):
        h = ((a.astype("int64") * q[mult, j].astype("int64")) >> 32).astype("int32")
        v = (h + q[rnd, j]) >> q[shift, j]
        if saturate:
            return te.max(te.min(v, int(info.max)), int(info.min)).astype(out_dtype)
        return te.max(te.min(v, q[hi, j]), q[lo, j]).astype(out_dtype)
    return f


def _requantize(qp, out_dtype: str):
    """``f(acc, j)``: the fixed-point requantize of output channel ``j`` from the rows of ``qp``."""
    from tvm import te
    bias, mult, rnd, shift, zp, lo, hi = range(len(REQUANT_ROWS))

    def f(a, j):
        v = (((a.astype("int64") + qp[bias, j]) * qp[mult, j] + qp[rnd, j]) >> qp[shift, j]) + qp[zp, j]
        return te.max(te.min(v, qp[hi, j]), qp[lo, j]).astype(out_dtype)
    return f

