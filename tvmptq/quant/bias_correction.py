"""Empirical bias correction: remove each integer conv/linear's own mean output error.

Quantizing weights and inputs shifts the mean of a layer's output (the error does not average
out: clipped inputs, rounding of small depthwise kernels). On calibration data, per output
channel, we compare the mean FP32 output of each conv/linear with the mean output of its integer
version fed the *same FP32 input* quantized to the layer's input grid, and fold the difference,
in accumulator units, into the int32 bias. Using the FP32 input isolates each layer's own error,
so all layers are corrected from one FP32 pass without compensating twice for upstream errors
(the scheme of NNCF's fast bias correction). Only int32 biases change: the integer program keeps
its ops and costs.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.fx as fx
import torch.nn.functional as F

from .graph import LayerGraph
from .plan import QuantPlan
from .token_mask import mask_from_inputs, real_token_rows

INT32 = (-(2 ** 31), 2 ** 31 - 1)
SAMPLES = 64  # calibration samples used; the per-channel means settle well before that


def _channel_sums(y: torch.Tensor, conv: bool) -> np.ndarray:
    """Per-channel sums (channel axis 1 for conv maps; last for linear layers, also on 4-D
    channels-last tensors such as ConvNeXt's) and the element count."""
    flat = y.double().movedim(1, -1) if conv else y.double()
    flat = flat.reshape(-1, flat.shape[-1])
    return np.append(flat.sum(0).numpy(), flat.shape[0])


class _LayerErrors(fx.Interpreter):
    """Runs the FP32 graph; at each integer kernel also runs its integer version on the same input."""

    def __init__(self, graph: LayerGraph, plan: QuantPlan, fp_sums: dict, int_sums: dict):
        super().__init__(graph.gm)
        self.plan, self.fp_sums, self.int_sums = plan, fp_sums, int_sums
        self.kernels = {layer.node.name: plan.layer(layer.name) for layer in graph.layers
                        if "weight" in plan.layer(layer.name).arrays}
        self.token_mask = None

    def run_node(self, n):
        out = super().run_node(n)
        lp = self.kernels.get(n.name)
        if lp is not None:
            x = self.env[n.args[0]]
            t = self.plan.tensors[lp.inputs[0]]
            xc = torch.div(x.float(), t.scale).round_().clamp_(t.qmin - t.zero_point, t.qmax - t.zero_point)
            w = torch.as_tensor(lp.arrays["weight"], dtype=torch.float32)
            reach = max(t.qmax - t.zero_point, t.zero_point - t.qmin) * float(w.abs().flatten(1).sum(1).max())
            if reach >= 2 ** 24:  # float32 sums of integers are exact below 2^24 only
                xc, w = xc.double(), w.double()
            if lp.kind == "conv2d":
                at = lp.attrs
                acc = F.conv2d(xc, w, None, at["stride"], at["padding"], at["dilation"], at["groups"])
            else:
                acc = F.linear(xc, w)
            conv = lp.kind == "conv2d"
            fp = out
            if not conv:  # padding tokens never reach the output: means over real tokens only
                acc, fp = real_token_rows(acc, self.token_mask), real_token_rows(out, self.token_mask)
            self.int_sums[lp.name] = self.int_sums.get(lp.name, 0) + _channel_sums(acc, conv)
            self.fp_sums[lp.name] = self.fp_sums.get(lp.name, 0) + _channel_sums(fp, conv)
        return out


def correct_biases(graph: LayerGraph, plan: QuantPlan, batches, real_tokens_only: bool = False) -> QuantPlan:
    """Adjust the plan's int32 biases in place and return it (rebuild its simulation after).
    ``real_tokens_only``: output means over real tokens only (token_mask.py)."""
    fp_sums, int_sums = {}, {}
    interp = _LayerErrors(graph, plan, fp_sums, int_sums)
    placeholders = [n.name for n in graph.gm.graph.nodes if n.op == "placeholder"]
    with torch.no_grad():
        for batch in batches:
            interp.token_mask = mask_from_inputs(placeholders, batch) if real_tokens_only else None
            interp.run(*(torch.as_tensor(b) for b in batch))
    for name, fp in fp_sums.items():
        lp, acc = plan.layer(name), int_sums[name]
        n = fp[-1]
        acc_scale = plan.tensors[lp.inputs[0]].scale * lp.arrays["weight_scale"].astype(np.float64)
        # bias (accumulator units) that makes the mean integer output equal the mean FP32 output
        new_bias = np.round(fp[:-1] / n / acc_scale - acc[:-1] / n)
        lp.arrays["bias"] = np.clip(new_bias, *INT32).astype(np.int32)
        lp.attrs["bias_corrected"] = True
    plan.config["bias_correction"] = True
    return plan
