"""BRECQ: block reconstruction (Li et al., "BRECQ: Pushing the Limit of Post-Training
Quantization by Block Reconstruction", ICLR 2021), with QDrop's option.

The second-order analysis of the task loss says that layer-wise reconstruction ignores the
interactions between layers of a block and network-wise reconstruction over-fits the few
calibration samples; the block (a residual block, an MBConv block, a transformer layer) is the
granularity in between. For each block in order:

    min_{V, s}  E || f_block^Q(x^Q; V, s) - f_block^FP(x^FP) ||_p^p  +  lambda * f_reg(V)

with ``x^Q`` the block input on the already reconstructed quantized stream, ``x^FP`` the FP32
model's, AdaRound's rounding variables ``V`` (:mod:`.adaround`) for every conv/linear of the block
and the LSQ step sizes ``s`` of the activations the block produces. BRECQ's Fisher-diagonal
weighting of the loss (``(pred - tgt)^2 grad^2``) is NOT implemented yet: ``loss="fisher"`` is
refused with an error. ``drop_prob`` is QDrop's (Wei et al., ICLR 2022) option: during reconstruction
each activation element keeps its FP value with that probability, so the rounding does not over-fit
the activation noise of the calibration samples; 0 (plain BRECQ) by default.

The blocks, caching, schedule and folding are the shared engine's (:mod:`.reconstruction`);
its ``ReconConfig`` states the defaults and how they were scaled for 2 CPU cores.
"""
from __future__ import annotations

from dataclasses import replace

from .adaround import adaround_weight
from .reconstruction import ReconConfig, reconstruct


def fit_brecq(graph, plan, calibration, cfg: ReconConfig = ReconConfig(), progress: bool = True):
    """A BRECQ copy of ``plan`` and its simulation."""
    return reconstruct(graph, plan, calibration, replace(cfg, granularity="block"), adaround_weight,
                       "brecq", progress)
