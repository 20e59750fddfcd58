"""Bilinear upsampling and PReLU layers in NumPy, written from the plan and the README contract.

Bilinear: the plan's source rows/columns and integer weights are checked against the sampling
positions recomputed here (exact rationals, PyTorch's ``area_pixel_compute_source_index``), so a
plan whose weights do not interpolate what it claims is refused, as lookup tables are.
"""
from __future__ import annotations

from fractions import Fraction

import numpy as np

from . import ops


def _positions(n_in: int, n_out: int, align_corners: bool, scale) -> list[Fraction]:
    if align_corners:
        return [Fraction(i * (n_in - 1), n_out - 1) if n_out > 1 else Fraction(0) for i in range(n_out)]
    step = 1 / Fraction(scale).limit_denominator(1 << 12) if scale else Fraction(n_in, n_out)
    return [max(Fraction(0), (2 * i + 1) * step / 2 - Fraction(1, 2)) for i in range(n_out)]


def _check_axis(lp, key: str, axis: int) -> tuple[np.ndarray, np.ndarray]:
    at = lp.attrs
    index, weight = np.asarray(lp.arrays[key], np.int64), np.asarray(lp.arrays[f"{key}_weight"], np.int64)
    d = at["denominators"][axis]
    n_in = at["in_size"][axis]
    for i, p in enumerate(_positions(n_in, at["out_size"][axis], at["align_corners"], at["scales"][axis])):
        got = Fraction(int(index[i, 0] * weight[i, 0] + index[i, 1] * weight[i, 1]), d)
        p = min(p, Fraction(n_in - 1))  # past the last pixel both taps read it
        if weight[i].sum() != d or got != p or index[i].min() < 0 or index[i].max() >= n_in:
            raise ValueError(f"layer {lp.name!r}: {key} weights of output {i} sample {got}, not {p}")
    return index, weight


def bilinear(lp, x: np.ndarray) -> np.ndarray:
    """Weighted 2x2 sums of the centred integers (int64), one requantize."""
    (r, wr), (c, wc) = _check_axis(lp, "rows", 0), _check_axis(lp, "cols", 1)
    y = x[:, :, r[:, 0]] * wr[:, :1] + x[:, :, r[:, 1]] * wr[:, 1:]
    y = y[..., c[:, 0]] * wc[:, 0] + y[..., c[:, 1]] * wc[:, 1]
    return ops.requantize(y, lp.arrays["multiplier"].reshape(()), lp.arrays["shift"].reshape(()))


def prelu(lp, x: np.ndarray) -> np.ndarray:
    """x >= 0: the positive multiplier; x < 0: the channel's (dim 1) negative one."""
    a = lp.arrays
    shape = (1, -1) + (1,) * (x.ndim - 2)
    m, k = np.asarray(a["multiplier"], np.int64), np.asarray(a["shift"], np.int64)
    m, k = (m.reshape(()), k.reshape(())) if m.size == 1 else (m.reshape(shape), k.reshape(shape))
    pos = ops.requantize(x, a["multiplier_pos"].reshape(()), a["shift_pos"].reshape(()))
    return np.where(x >= 0, pos, ops.requantize(x, m, k))
