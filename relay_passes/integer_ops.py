"""Relax integer building blocks with the plan's exact semantics (see tvmptq/quant/simulate.py).

Values between layers live in integer *containers*: the smallest of uint8/int8/int16/int32 that
holds the tensor's grid [qmin, qmax]; sub-8-bit grids live in 8-bit containers and the clip
bounds carry the bit width. A tensor's real value is ``scale * (q - zero_point)``.

Zero points: kernels run on the containers themselves (``q``, not ``q - z``), as int8 hardware
does, and the zero point is folded into the bias: ``sum w (q - z) = sum w q - z sum w``. This is
exact only if padded positions hold ``z`` (real 0), so a conv with implicit padding and ``z != 0``
gets an explicit ``R.nn.pad(q, pad_value=z)`` and no conv padding. With ``z == 0`` (every
ReLU/ReLU6 output) the conv keeps its own zero padding.

Requantize is ``(acc * m + 2^(k-1)) >> k`` in int64 (:mod:`tvmptq.quant.fixedpoint`), then
``+ z_out``, clip to the layer's bounds (fused ReLU/ReLU6), cast to the output container.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from tvm import relax, topi
from tvm.relax import op as R

from tvmptq.quant.plan import TensorQuant

from .errors import LoweringError

INT32_LIMIT = 2 ** 31


def container_dtype(lo: int, hi: int) -> str:
    """Smallest integer dtype that holds [lo, hi]."""
    for dtype, (a, b) in (("uint8", (0, 255)), ("int8", (-128, 127)), ("int16", (-2 ** 15, 2 ** 15 - 1)),
                          ("int32", (-2 ** 31, 2 ** 31 - 1))):
        if a <= lo and hi <= b:
            return dtype
    raise LoweringError(f"integer range [{lo}, {hi}] does not fit int32")


def dtype_range(dtype: str) -> tuple[int, int]:
    info = np.iinfo(np.dtype(dtype))
    return int(info.min), int(info.max)


@dataclass(frozen=True)
class Grid:
    """How one quantized tensor is stored."""

    scale: np.float32
    zero_point: int
    qmin: int
    qmax: int
    dtype: str

    @classmethod
    def of(cls, t: TensorQuant) -> "Grid":
        return cls(np.float32(t.scale), int(t.zero_point), int(t.qmin), int(t.qmax),
                   container_dtype(int(t.qmin), int(t.qmax)))

    @property
    def max_abs(self) -> int:
        return max(abs(self.qmin), abs(self.qmax))

    @property
    def max_abs_centered(self) -> int:
        """Largest |q - z| on the grid."""
        return max(self.qmax - self.zero_point, self.zero_point - self.qmin)


def quantize(x: relax.Expr, g: Grid) -> relax.Expr:
    """float -> container: clip(round_half_even(float32 x / s) + z, qmin, qmax).

    ``R.quantize`` legalizes to exactly this with float32 division and ``round`` -> nearbyint
    (half to even), clipped to the container; the extra clip narrows sub-8-bit grids."""
    q = R.quantize(x, relax.const(g.scale, "float32"), relax.const(g.zero_point, "int32"), axis=-1,
                   out_dtype=g.dtype)
    return q if (g.qmin, g.qmax) == dtype_range(g.dtype) else R.clip(q, g.qmin, g.qmax)


def dequantize(q: relax.Expr, g: Grid) -> relax.Expr:
    """container -> float32: float32(q - z) * float32(s), as the simulation computes it."""
    return R.dequantize(q, relax.const(g.scale, "float32"), relax.const(g.zero_point, "int32"), axis=-1,
                        out_dtype="float32")


def _per_axis(values: np.ndarray, dtype: str, axis: int, ndim: int) -> relax.Expr:
    """A constant that broadcasts along ``axis`` of an ndim tensor (a scalar if it has one value)."""
    values = np.asarray(values).astype(dtype).reshape(-1)
    if values.size == 1:
        return relax.const(values.reshape(()), dtype)  # dtype given: relax.const would narrow int64
    shape = [1] * ndim
    shape[axis] = values.size
    return relax.const(values.reshape(shape), dtype)


def requantize(bb: relax.BlockBuilder, acc: relax.Expr, m, k, out: Grid, clip: tuple[int, int], *,
               axis: int = 1, bias=None, acc_bound: float = float("inf"), mode: str = "int64") -> relax.Expr:
    """``clip(((acc + bias) * m + 2^(k-1)) >> k + z_out)`` cast to the output container.

    acc: int32 or int64 tensor; bias, m, k: per-channel along ``axis`` (or scalars), numpy int64.
    acc_bound bounds |acc| over the whole input grid; it decides whether int32 arithmetic is exact.
    mode "fixed_point_multiply" uses TOPI's q_multiply_shift_per_axis (Q31, round half up), which
    equals the int64 definition bit for bit when its int32 input and output cannot overflow;
    layers where that is not proven fall back to int64.
    """
    ndim = len(acc.ty.shape)
    m, k = np.asarray(m, np.int64).reshape(-1), np.asarray(k, np.int64).reshape(-1)
    bias = np.zeros(1, np.int64) if bias is None else np.asarray(bias, np.int64).reshape(-1)
    total_bound = acc_bound + float(np.abs(bias).max())
    if acc.ty.dtype == "int32" and total_bound < INT32_LIMIT:
        if np.any(bias):  # the int32 sum cannot overflow: add the bias before widening
            acc = bb.emit(R.add(acc, _per_axis(bias, "int32", axis, ndim)))
        bias = np.zeros(1, np.int64)
        if mode == "fixed_point_multiply":
            y = _fixed_point_multiply(bb, acc, m, k, axis, total_bound)
            if y is not None:
                return requantize_finish(bb, y, "int32", out, clip)
    acc = bb.emit(R.astype(acc, "int64")) if acc.ty.dtype != "int64" else acc
    if np.any(bias):
        acc = bb.emit(R.add(acc, _per_axis(bias, "int64", axis, ndim)))
    if np.any(m != 1):
        acc = bb.emit(R.multiply(acc, _per_axis(m, "int64", axis, ndim)))
    rounding = np.left_shift(np.int64(1), k - 1)
    y = bb.emit(R.right_shift(R.add(acc, _per_axis(rounding, "int64", axis, ndim)), _per_axis(k, "int64", axis, ndim)))
    return requantize_finish(bb, y, "int64", out, clip)


def requantize_finish(bb, y, dtype, out: Grid, clip) -> relax.Expr:
    """y (requantized, centered) + z_out, clipped to the layer's bounds, in the output container."""
    if out.zero_point:
        y = bb.emit(R.add(y, relax.const(out.zero_point, dtype)))
    return bb.emit(R.astype(R.clip(y, int(clip[0]), int(clip[1])), out.dtype))


def _fixed_point_multiply(bb, acc, m, k, axis, bound):
    """TOPI's per-axis Q31 multiply, or None where it is not provably exact."""
    m, k = m.copy(), k.copy()
    top = m == 2 ** 31  # m must fit int32: (acc * 2^31 + 2^(k-1)) >> k == (acc * 2^30 + 2^(k-2)) >> (k-1)
    m[top] //= 2
    k[top] -= 1
    lshift, rshift = np.maximum(31 - k, 0), np.maximum(k - 31, 0)
    # q_multiply_shift shifts the int32 input left first and casts its result to int32.
    if bound * 2.0 ** int(lshift.max()) >= INT32_LIMIT or bound * float((m / 2.0 ** k).max()) + 1 >= INT32_LIMIT:
        return None
    channels = int(acc.ty.shape[axis])
    full = lambda a: relax.const(np.broadcast_to(a, (channels,)).astype(np.int32))  # noqa: E731
    return bb.emit_te(topi.fixed_point_multiply_per_axis, acc, full(m), full(lshift), full(rshift),
                      int(lshift.any()), int(rshift.any()), [axis])


def pad_with(bb, q: relax.Expr, pad_hw: list[int], value: int) -> relax.Expr:
    """NCHW pad of H and W; pad_hw = [top, left, bottom, right] (Relax conv2d padding order)."""
    top, left, bottom, right = pad_hw
    return bb.emit(R.nn.pad(q, [0, 0, 0, 0, top, bottom, left, right], pad_value=value))


def weight_dtype(w: np.ndarray) -> str:
    """int8 for weights of up to 8 bits (narrow grid [-127, 127]), else int16/int32."""
    return container_dtype(min(int(w.min()), -1), int(w.max()))


def weight_l1(w: np.ndarray) -> float:
    """max over output channels of sum |w|: bounds |sum w x| per unit of |x|."""
    return float(np.abs(w.astype(np.int64)).reshape(w.shape[0], -1).sum(1).max())
