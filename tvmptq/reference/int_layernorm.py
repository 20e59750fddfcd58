"""Integer LayerNorm layers (kind "layernorm") in NumPy, written from the arithmetic contract in
tvmptq/quant/int_layernorm.py's docstring (it shares no code with the simulation).

The one step that differs in method: the floor square root is a float64 estimate corrected to
the exact integer floor (``s*s <= v < (s+1)^2`` checked in int64), not the digit-by-digit loop the
simulation and the Relax kernel use; both are the exact ``isqrt`` of every integer below 2^62.
"""
from __future__ import annotations

import numpy as np


def isqrt(v: np.ndarray) -> np.ndarray:
    """Exact floor(sqrt(v)) for int64 v in [0, 2^62)."""
    s = np.floor(np.sqrt(v.astype(np.float64))).astype(np.int64)
    for _ in range(2):  # the float estimate is within one of the floor for v < 2^62
        s = np.where(s * s > v, s - 1, s)
        s = np.where((s + 1) * (s + 1) <= v, s + 1, s)
    if np.any(s * s > v) or np.any((s + 1) * (s + 1) <= v):
        raise ArithmeticError("integer square root did not converge")
    return s


def run(lp, xc: np.ndarray) -> np.ndarray:
    """Output codes minus z_out for centred input codes ``xc`` (rows along the last axis)."""
    at, a = lp.attrs, lp.arrays
    n, frac, recip = int(at["n"]), int(at["frac_bits"]), int(at["recip_bits"])
    if xc.shape[-1] != n:
        raise ValueError(f"layer {lp.name!r}: rows of {xc.shape[-1]} elements, the plan normalizes {n}")
    xc = xc.astype(np.int64)
    d = n * xc - xc.sum(-1, keepdims=True)
    v = np.einsum("...i,...i->...", d, d)[..., None] + np.int64(at["eps_term"])
    if np.any(v >= 2 ** 62) or np.any(v < 0):
        raise OverflowError(f"layer {lp.name!r}: variance term leaves [0, 2^62)")
    t = sum((v < (np.int64(1) << (62 - 2 * j))).astype(np.int64) for j in range(1, 31))
    sig = isqrt(v << (2 * t))
    r = np.where(sig > 0, (np.int64(1) << recip) // np.maximum(sig, 1), 0)
    sh = recip - frac - t
    norm = (d * r + (np.int64(1) << (sh - 1))) >> sh
    m, k, b = (np.asarray(a[key], np.int64) for key in ("multiplier", "shift", "bias"))
    return (norm * m + b + (np.int64(1) << (k - 1))) >> k
