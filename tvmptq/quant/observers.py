"""Streaming activation statistics, kept separate from the rule that turns them into a range.

One observer per tensor records the running min/max and a histogram whose range grows with the
data (old counts are re-binned by interpolating their cumulative distribution). Memory is fixed
(``bins`` counts) whatever the number of calibration samples, and every range rule (min/max,
percentile, MSE) can be applied to the same statistics after a single calibration pass.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from ..errors import DataError


class HistogramObserver:
    def __init__(self, name: str, bins: int = 2048):
        self.name = name
        self.bins = bins
        self.lo = self.hi = None
        self.counts = np.zeros(bins, dtype=np.float64)
        self.samples = 0

    @property
    def edges(self) -> np.ndarray:
        return np.linspace(self.lo, self.hi, self.bins + 1)

    def _regrid(self, lo: float, hi: float) -> None:
        cdf = np.concatenate([[0.0], np.cumsum(self.counts)])
        new_edges = np.linspace(lo, hi, self.bins + 1)
        self.counts = np.diff(np.interp(new_edges, self.edges, cdf))
        self.lo, self.hi = lo, hi

    def update(self, x: torch.Tensor) -> None:
        x = x.detach().float().reshape(-1)
        if x.numel() == 0:
            return
        lo, hi = (float(v) for v in torch.aminmax(x))
        if not (math.isfinite(lo) and math.isfinite(hi)):  # NaN or Inf anywhere shows in min/max
            bad = int((~torch.isfinite(x)).sum())
            raise DataError(f"tensor '{self.name}' has {bad} NaN/Inf values during calibration")
        if self.lo is None:
            pad = 1e-6 if hi == lo else 0.0
            self.lo, self.hi = lo - pad, hi + pad
        elif lo < self.lo or hi > self.hi:
            self._regrid(min(lo, self.lo), max(hi, self.hi))
        self.counts += torch.histc(x, self.bins, self.lo, self.hi).double().numpy()
        self.samples += x.numel()

    @property
    def min(self) -> float:
        return self.lo

    @property
    def max(self) -> float:
        return self.hi

    def centers_and_counts(self) -> tuple[np.ndarray, np.ndarray]:
        e = self.edges
        return (e[:-1] + e[1:]) / 2, self.counts
