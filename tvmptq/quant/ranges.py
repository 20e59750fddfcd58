"""Range rules: from observed statistics to (scale, zero point) on an integer grid.

* ``minmax``: the observed range.
* ``percentile``: clip both tails (or |x| for symmetric grids) at the given percentile.
* ``mse``: the clipping range that minimises the expected squared quantization error of the
  observed histogram (grid search over shrink factors of each end).
Weights use per-output-channel symmetric ranges, ``minmax`` (max |w|) or ``mse``.
"""
from __future__ import annotations

import numpy as np

from .observers import HistogramObserver
from .spec import ActivationSpec, WeightSpec

_SHRINK = np.linspace(0.2, 1.0, 81)


def affine_params(lo: float, hi: float, qmin: int, qmax: int, symmetric: bool) -> tuple[np.float32, int]:
    """Scale and zero point covering [lo, hi] (always including 0, so zero is exact)."""
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    if symmetric:
        bound = max(-lo, hi)
        scale = np.float32(bound / qmax if bound > 0 else 1.0)
        return scale, 0
    span = hi - lo
    scale = np.float32(span / (qmax - qmin) if span > 0 else 1.0)
    zero = int(np.clip(np.round(qmin - lo / float(scale)), qmin, qmax))
    return scale, zero


def _quant_error(centers, counts, scale, zero, qmin, qmax) -> float:
    q = np.clip(np.round(centers / scale) + zero, qmin, qmax)
    return float(np.sum(counts * (centers - (q - zero) * scale) ** 2))


def activation_range(obs: HistogramObserver, spec: ActivationSpec, bits: int) -> tuple[np.float32, int, int, int]:
    """(scale, zero_point, qmin, qmax) for one tensor under ``spec`` at ``bits``."""
    sym = spec.symmetric
    qmin, qmax = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if sym else (0, 2 ** bits - 1)
    lo, hi = obs.min, obs.max
    centers, counts = obs.centers_and_counts()
    if spec.rule == "percentile":
        cdf = np.cumsum(counts) / max(counts.sum(), 1)
        tail = 1.0 - spec.percentile / 100.0
        if sym:
            # smallest t with P(|x| <= t) >= percentile
            ts = np.abs(centers)
            order = np.argsort(ts)
            acc = np.cumsum(counts[order]) / max(counts.sum(), 1)
            t = ts[order][min(np.searchsorted(acc, 1.0 - tail), len(ts) - 1)]
            lo, hi = -t, t
        else:
            lo = float(np.interp(tail, cdf, centers)) if lo < 0 else lo
            hi = float(np.interp(1.0 - tail, cdf, centers))
    elif spec.rule == "mse":
        best = None
        his = hi * _SHRINK if hi > 0 else np.array([hi])
        los = lo * _SHRINK if lo < 0 else np.array([lo])
        if sym:
            pairs = [(-b, b) for b in max(-lo, hi) * _SHRINK]
        else:
            pairs = [(a, b) for a in los[::4] for b in his]
        for a, b in pairs:
            s, z = affine_params(a, b, qmin, qmax, sym)
            err = _quant_error(centers, counts, float(s), z, qmin, qmax)
            if best is None or err < best[0]:
                best = (err, a, b)
        _, lo, hi = best
    scale, zero = affine_params(lo, hi, qmin, qmax, sym)
    return scale, zero, qmin, qmax


def weight_scales(w: np.ndarray, spec: WeightSpec, bits: int) -> np.ndarray:
    """Per-output-channel symmetric scales (float32) on the narrow grid [-qmax, qmax]."""
    qmax = 2 ** (bits - 1) - 1
    flat = w.reshape(w.shape[0], -1).astype(np.float64)
    amax = np.abs(flat).max(axis=1)
    amax = np.where(amax > 0, amax, 1.0)
    if spec.rule == "minmax":
        return (amax / qmax).astype(np.float32)
    best_err = np.full(len(amax), np.inf)
    best = amax / qmax
    for f in _SHRINK:
        s = amax * f / qmax
        q = np.clip(np.round(flat / s[:, None]), -qmax, qmax)
        err = ((flat - q * s[:, None]) ** 2).sum(axis=1)
        better = err < best_err
        best_err = np.where(better, err, best_err)
        best = np.where(better, s, best)
    return best.astype(np.float32)
