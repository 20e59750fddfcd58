"""Fixed-point requantize: a real multiplier M becomes an integer ``m`` and a right shift ``k``.

``requant(acc) = (acc * m + 2^(k-1)) >> k`` (arithmetic shift: round half up), computed in int64.
With ``|acc| < 2^31`` and ``m < 2^31`` the product stays below 2^62, so int64 never overflows.
This is the single definition of the rounding: the PyTorch simulation, the NumPy reference and
the Relax lowering all compute exactly this.
"""
from __future__ import annotations

import numpy as np

MAX_SHIFT = 62
MULT_BITS = 31  # m lies in [2^30, 2^31] for normal multipliers


def quantize_multiplier(real: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
    """Return (m, k) int64 arrays with ``m / 2^k ~= real`` to 31 significant bits."""
    real = np.atleast_1d(np.asarray(real, dtype=np.float64))
    if np.any(real < 0) or not np.all(np.isfinite(real)):
        raise ValueError("requantize multipliers must be finite and non-negative")
    mant, exp = np.frexp(real)  # real = mant * 2^exp, mant in [0.5, 1)
    k = MULT_BITS - exp.astype(np.int64)
    m = np.round(mant * 2.0 ** MULT_BITS).astype(np.int64)
    # Tiny multipliers would need shifts above 62: keep the shift, drop low bits of m instead.
    over = k > MAX_SHIFT
    m = np.where(over, np.round(np.ldexp(mant, MULT_BITS - (k - MAX_SHIFT).clip(0))).astype(np.int64), m)
    k = np.minimum(k, MAX_SHIFT)
    if np.any(k < 1):
        raise ValueError(f"requantize multiplier too large: {real.max()}")
    zero = real == 0
    return np.where(zero, 0, m), np.where(zero, 1, k)


def shared_shift_multipliers(reals: list[float]) -> tuple[np.ndarray, int]:
    """Multipliers for several inputs summed before one shift (integer add, concat rescale)."""
    reals = np.asarray(reals, dtype=np.float64)
    _, exp = np.frexp(reals.max())
    k = int(min(MULT_BITS - exp, MAX_SHIFT))
    if k < 1:
        raise ValueError(f"rescale multiplier too large: {reals.max()}")
    return np.round(reals * 2.0 ** k).astype(np.int64), k


def requantize_np(acc: np.ndarray, m: np.ndarray, k: np.ndarray) -> np.ndarray:
    """NumPy version (int64 in, int64 out); m and k broadcast against acc."""
    acc = acc.astype(np.int64)
    return (acc * m + (np.int64(1) << (k - 1))) >> k
