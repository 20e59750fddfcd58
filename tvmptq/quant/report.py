"""Per-layer report: each quantized tensor's SQNR against FP32, worst first.

Both models run on the same inputs (with an ``attention_mask`` input, over real tokens only:
token_mask.py); FP32 values are taken at the float graph's quantization
points, simulated values at the outputs of the integer modules. Signal and noise energies are
accumulated batch by batch, so memory stays flat.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.fx as fx

from .graph import LayerGraph
from .plan import QuantPlan
from .simulate import QuantizeTensor, _IntLayer
from .token_mask import mask_from_inputs, real_token_entries


@dataclass
class LayerReport:
    tensor: str
    layer: str          # producing layer, or "input"/"island" for quantize points
    kind: str
    bits: str           # e.g. "W4A8"
    sqnr_db: float


class _Capture(fx.Interpreter):
    def __init__(self, gm, names, store):
        super().__init__(gm)
        self.names, self.store = names, store

    def run_node(self, n):
        out = super().run_node(n)
        if n.name in self.names:
            self.store[n.name] = out
        return out


def layer_sqnr(graph: LayerGraph, sim: fx.GraphModule, plan: QuantPlan, batches,
               real_tokens: bool = True) -> list[LayerReport]:
    signal = {name: 0.0 for name in plan.tensors}
    noise = {name: 0.0 for name in plan.tensors}
    names = set(plan.tensors)
    captured_q = {}
    hooks = []
    for mod in sim.modules():
        if isinstance(mod, QuantizeTensor):
            name = mod.t.name
        elif isinstance(mod, _IntLayer):
            name = mod.lp.output
        else:
            continue
        hooks.append(mod.register_forward_hook(
            lambda m, i, o, name=name: captured_q.__setitem__(name, o)))
    placeholders = [n.name for n in graph.gm.graph.nodes if n.op == "placeholder"]
    try:
        with torch.no_grad():
            for batch in batches:
                batch = tuple(torch.as_tensor(b) for b in batch)
                ref = {}
                _Capture(graph.gm, names, ref).run(*batch)
                captured_q.clear()
                sim(*batch)
                mask = mask_from_inputs(placeholders, batch) if real_tokens else None  # padding never reaches the output
                for name in names:
                    r = real_token_entries(ref[name].double(), mask)
                    q = real_token_entries(captured_q[name].double(), mask)
                    signal[name] += float((r ** 2).sum())
                    noise[name] += float(((r - q) ** 2).sum())
    finally:
        for h in hooks:
            h.remove()
    producer = {lp.output: lp for lp in plan.layers}
    rows = []
    for name in plan.tensors:
        lp = producer.get(name)
        t = plan.tensors[name]
        bits = f"W{lp.weight_bits}A{t.bits}" if lp is not None and lp.weight_bits else f"A{t.bits}"
        if lp is not None and lp.keep_float:
            bits = "float"
        sq = 10 * np.log10(signal[name] / noise[name]) if noise[name] > 0 else float("inf")
        rows.append(LayerReport(name, lp.name if lp else "quantize", lp.kind if lp else "quantize",
                                bits, float(sq)))
    return sorted(rows, key=lambda r: r.sqnr_db)


def format_report(rows: list[LayerReport], plan: QuantPlan, limit: int | None = None) -> str:
    lines = ["| tensor | layer | kind | bits | SQNR dB |", "|---|---|---|---|---|"]
    for r in rows[:limit]:
        lines.append(f"| {r.tensor} | {r.layer} | {r.kind} | {r.bits} | {r.sqnr_db:.1f} |")
    if plan.float_islands:
        lines.append("")
        lines.append(f"Float islands ({len(plan.float_islands)}, kept in float on purpose): "
                     + ", ".join(plan.float_islands))
    if plan.float_layers:
        lines.append(f"Layers left in float by request ({len(plan.float_layers)}): "
                     + ", ".join(plan.float_layers))
    return "\n".join(lines)
