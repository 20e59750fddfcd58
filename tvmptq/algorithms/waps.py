"""WAPS-Quant: weight-activation product scaling on top of BRECQ (Choi, Lee, Kwak, IEEE Access
2025, Xplore 10982219), in the readings of ../shared/notes/seeds.md section 4.2.

The abstract: alongside weight rounding and step-size adjustment, a learnable scaling of the
weight x activation product compensates the quantization error; channel-wise grouping, shifting
(power-of-two scales) and channel mixing keep its cost low. The exact formula is not in the
stored material, so each reading of seeds.md 4.2 is implemented and measured
(results/reconstruction.md). All of them scale products of one output-channel group ``go`` and
input-channel group ``gi`` by ``gamma = 2^t``, ``t`` an integer (straight-through rounding of a
learned real), trained jointly with AdaRound's ``V`` and the LSQ steps by BRECQ's block loss:

    acc_c = sum_g 2^t[go(c), g] * sum_{k in g} W_int[c, k] x[k]

* ``out`` (reading 1): one ``t`` per group of ``group_size`` output channels. It multiplies the
  accumulator like the requantize multiplier does, so it folds into the shift (``k_c -> k_c -
  t``); weights stay on the b-bit grid. Since per-channel weight scales are already free, it adds
  only what the power-of-two constraint lets the rounding explore.
* ``in`` (reading 2): one ``t`` per group of ``group_size`` input channels (partial sums). With
  integer ``t`` the shifted partial sums are exactly the products of shifted weights:
  ``2^t sum_k W x = sum_k (W << t) x``. Normalising each row by its smallest ``t`` (folded into
  the multiplier) leaves left shifts only, so the layer folds into int8 weights ``W << (t -
  t_min)`` with no run-time work on int8 dot-product kernels, as long as ``qmax * 2^span <=
  127`` (``t`` is kept in ``[-span, 0]``, span = floor(log2(127 / qmax)): 4 for 4-bit weights).
  The stored weights then need ``bits + span`` bits: the plan's ``weight_bits`` says so. An engine
  that stores b-bit weights would instead shift G partial sums at run time (not lowered here: our
  kernels are int8).
* ``in_mixed``: ``in`` with channel mixing: input channels sorted by their weight magnitude
  before being cut into groups, so a group holds channels that want the same shift. On a
  partial-sum engine the permutation folds into the producing layer's output-channel order;
  folded into int8 weights it costs nothing and needs no permutation (recorded as an attribute).
* ``block`` (reading 3): ``t`` per (output group, input group); folds like ``in``.

``t`` starts at the weight-MSE-optimal power of two of its group (closed form over the allowed
range), so the readings differ from BRECQ before any training.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import nn

from .adaround import AdaRoundWeight
from .reconstruction import ReconConfig, reconstruct
from .train_model import round_ste

READINGS = ("out", "in", "in_mixed", "block")


@dataclass(frozen=True)
class WAPSConfig:
    reading: str = "in_mixed"
    group_size: int = 8
    t_lr: float = 1e-2


def _groups(n: int, size: int, order=None) -> np.ndarray:
    """Group index of each of ``n`` channels: consecutive chunks of ``size`` in ``order``."""
    order = np.arange(n) if order is None else order
    g = np.empty(n, np.int64)
    g[order] = np.arange(n) // size
    return g


class WAPSWeight(AdaRoundWeight):
    """AdaRound rounding on the grid ``s_w[c] * 2^t[go(c), gi(k)]``."""

    def __init__(self, w: np.ndarray, s_w: np.ndarray, bits: int, cfg: WAPSConfig):
        super().__init__(w, s_w, bits)
        c_out, c_in = w.shape[:2]
        self.reading, self.lrs = cfg.reading, {"t": cfg.t_lr}
        span = int(np.floor(np.log2(127 / self.qmax)))
        self.t_range = (-2.0, 2.0) if cfg.reading == "out" else (-float(span), 0.0)
        mag = (np.abs(w) / np.asarray(s_w).reshape((-1,) + (1,) * (w.ndim - 1))).reshape(c_out, c_in, -1)
        order = np.argsort(-mag.max(2).mean(0), kind="stable") if cfg.reading == "in_mixed" else None
        self.order = None if order is None else order.tolist()
        go = _groups(c_out, cfg.group_size) if cfg.reading in ("out", "block") else np.zeros(c_out, np.int64)
        gi = _groups(c_in, cfg.group_size, order) if cfg.reading != "out" else np.zeros(c_in, np.int64)
        self.register_buffer("go", torch.as_tensor(go))
        self.register_buffer("gi", torch.as_tensor(gi))
        self.t = nn.Parameter(torch.as_tensor(self._mse_init(go, gi), dtype=torch.float32))
        x = self.w / self.grid()                   # AdaRound starts at nearest on the initial grid
        rest = (x - torch.floor(x)).clamp(1e-4, 1 - 1e-4)
        self.V.data = -torch.log((1.1 + 0.1) / (rest + 0.1) - 1)

    def _mse_init(self, go, gi) -> np.ndarray:
        lo, hi = (int(v) for v in self.t_range)
        w, s = self.w.numpy(), self.s.numpy()
        err = []
        for t in range(lo, hi + 1):
            q = np.clip(np.round(w / (s * 2.0 ** t)), -self.qmax, self.qmax) * s * 2.0 ** t
            e = ((q - w) ** 2).reshape(w.shape[0], w.shape[1], -1).sum(2)          # (c_out, c_in)
            per = np.zeros((go.max() + 1, gi.max() + 1))
            np.add.at(per, (go[:, None], gi[None, :]), e)
            err.append(per)
        return lo + np.argmin(np.stack(err), axis=0).astype(np.float64)

    def log2_gamma(self) -> torch.Tensor:
        t = round_ste(self.t.clamp(*self.t_range))[self.go][:, self.gi]              # (c_out, c_in)
        return t.reshape(t.shape + (1,) * (self.w.ndim - 2))

    def grid(self) -> torch.Tensor:
        return self.s * torch.pow(2.0, self.log2_gamma())

    def integers(self, soft: bool) -> torch.Tensor:
        up = self.h() if soft else (self.V >= 0).float()
        return (torch.floor(self.w / self.grid()).detach() + up).clamp(-self.qmax, self.qmax)

    def forward(self, soft: bool) -> torch.Tensor:
        return self.integers(soft) * self.grid()

    def fold(self):
        with torch.no_grad():
            w_int = self.integers(False).numpy().astype(np.int64)
            t = self.log2_gamma().numpy().astype(np.int64)
        s = self.s.reshape(-1).numpy().astype(np.float64)
        if self.reading == "out":                  # 2^t folds into the requantize shift
            return w_int.astype(np.int8), s * np.ldexp(1.0, t.reshape(len(s), -1)[:, 0]), {"waps": "out"}
        t_min = t.reshape(len(s), -1).min(1)
        shift = t - t_min.reshape((-1,) + (1,) * (t.ndim - 1))
        stored = w_int * (1 << shift)
        assert np.abs(stored).max() <= 127, "shifted weights left the int8 container"
        span = int(shift.max())
        bits = int(np.log2(self.qmax + 1)) + 1 + span
        attrs = {"waps": self.reading, "waps_shift_span": span, "weight_bits": min(8, bits)}
        if self.order is not None:
            attrs["waps_channel_order"] = self.order
        return stored.astype(np.int8), s * np.ldexp(1.0, t_min), attrs


def fit_waps(graph, plan, calibration, cfg: ReconConfig = ReconConfig(), waps: WAPSConfig = WAPSConfig(),
             progress: bool = True):
    """A WAPS-Quant copy of ``plan`` (BRECQ blocks + product scaling) and its simulation."""
    if waps.reading not in READINGS:
        raise ValueError(f"unknown WAPS reading {waps.reading!r}: choose one of {', '.join(READINGS)}")
    if waps.group_size < 1:
        raise ValueError(f"WAPS group size must be at least 1, got {waps.group_size}")

    def make(layer, lp):
        if lp.weight_bits >= 8:                    # no room in the int8 container: plain AdaRound
            return AdaRoundWeight(layer.weight, lp.arrays["weight_scale"], lp.weight_bits)
        return WAPSWeight(layer.weight, lp.arrays["weight_scale"], lp.weight_bits, waps)
    plan, sim = reconstruct(graph, plan, calibration, replace(cfg, granularity="block"), make, "waps", progress)
    plan.config["waps"].update(reading=waps.reading, group_size=waps.group_size)
    return plan, sim
