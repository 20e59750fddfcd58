"""AdaRound: learned per-weight rounding (Nagel et al., "Up or Down? Adaptive Rounding for
Post-Training Quantization", ICML 2020), layer by layer.

Each weight is rounded down or up, not to nearest. The choice is relaxed to a continuous
variable ``V`` through the rectified sigmoid

    h(V) = clip(sigmoid(V) (zeta - gamma) + gamma, 0, 1),     zeta = 1.1, gamma = -0.1

so ``W_int = clip(floor(w / s_w) + h(V), -qmax, qmax)``, and ``V`` is trained to reconstruct the
layer's output on calibration data, with the regulariser

    f_reg(V) = sum_i 1 - |2 h(V_i) - 1|^beta,     beta annealed 20 -> 2

that pushes every ``h`` to 0 or 1 (after a 20 % warm-up without it). ``V`` starts where
``h(V)`` equals the fractional part of ``w / s_w``, i.e. at round-to-nearest. Afterwards the
hard rounding ``floor + [V >= 0]`` is the plan's integer weights: only ``weight`` (and the
requantize of any activation step learned with it) changes, so the integer program keeps its ops.
Code facts from the BRECQ reference (yhhhli/BRECQ quant/adaptive_rounding.py): the constants,
the initialisation and the regulariser above. Layer-wise reconstruction here is the engine's
``granularity="layer"``: each conv/linear's quantized output on the quantized stream matched to
the FP32 layer output on the FP32 stream (BRECQ's layer reconstruction), weights only.
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch
from torch import nn

from .reconstruction import ReconConfig, reconstruct

ZETA, GAMMA = 1.1, -0.1


class AdaRoundWeight(nn.Module):
    """Per-weight learned rounding on the plan's per-output-channel grid ``s_w``."""

    def __init__(self, w: np.ndarray, s_w: np.ndarray, bits: int):
        super().__init__()
        self.qmax = 2 ** (bits - 1) - 1
        shape = (-1,) + (1,) * (w.ndim - 1)
        self.register_buffer("w", torch.as_tensor(w, dtype=torch.float32))
        self.register_buffer("s", torch.as_tensor(np.asarray(s_w, np.float32).reshape(shape)))
        x = self.w / self.s
        rest = (x - torch.floor(x)).clamp(1e-4, 1 - 1e-4)
        self.V = nn.Parameter(-torch.log((ZETA - GAMMA) / (rest - GAMMA) - 1))

    def h(self) -> torch.Tensor:
        return (torch.sigmoid(self.V) * (ZETA - GAMMA) + GAMMA).clamp(0, 1)

    def integers(self, soft: bool) -> torch.Tensor:
        up = self.h() if soft else (self.V >= 0).float()
        return (torch.floor(self.w / self.s) + up).clamp(-self.qmax, self.qmax)

    def forward(self, soft: bool) -> torch.Tensor:
        return self.integers(soft) * self.s

    def regulariser(self, beta: float) -> torch.Tensor:
        return (1 - (2 * self.h() - 1).abs().pow(beta)).sum()

    def fold(self):
        with torch.no_grad():
            w = self.integers(False).numpy().astype(np.int8)
        return w, self.s.reshape(-1).numpy().astype(np.float64), {}


def adaround_weight(layer, lp) -> AdaRoundWeight:
    return AdaRoundWeight(layer.weight, lp.arrays["weight_scale"], lp.weight_bits)


ADAROUND_DEFAULTS = ReconConfig(granularity="layer", learn_act=False)


def fit_adaround(graph, plan, calibration, cfg: ReconConfig = ADAROUND_DEFAULTS, progress: bool = True):
    """An AdaRound copy of ``plan`` and its simulation (layer-wise, weights only)."""
    return reconstruct(graph, plan, calibration, replace(cfg, granularity="layer"), adaround_weight,
                       "adaround", progress)
