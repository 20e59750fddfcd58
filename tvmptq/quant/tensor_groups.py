"""Named groups of a transformer's quantized tensors, by the role each plays in the graph.

The fidelity study of issue 21 (scripts/bench_transformer.py) asks which group of tensors costs a
BERT-style encoder its accuracy when quantized, and widens just those (``QuantConfig.tensor_bits``).
Roles are read from the graph's structure, not from names, so any encoder a user brings (ONNX or
PyTorch) gets the same groups:

* ``residual``: outputs of integer adds (the residual sums that feed the LayerNorms);
* ``ln_out``: LayerNorm outputs (the inputs of Q/K/V and FFN1, and the residual path);
* ``ffn_act``: outputs of lookup-table activations (GELU: the FFN2 input);
* ``ffn_pre``: inputs of those activations (FFN1 outputs);
* ``proj_out``: linear outputs that go into a residual add (attention output and FFN2 projections);
* ``qkv``: linear outputs that feed an activation x activation matmul;
* ``attention``: attention scores, their scaling, the softmax and the context matmul.
"""
from __future__ import annotations

import torch

from ..errors import ConfigError

from .graph import LayerGraph

GROUPS = ("residual", "ln_out", "ffn_act", "ffn_pre", "proj_out", "qkv", "attention")
# Named sets of widened groups for ``tvmptq quantize --wide NAME``. res16: the residual sums, the
# group whose 8-bit grid alone cost most in the first measurement (notes in results/transformer.md
# are still to be written by scripts/bench_transformer.py).
# res_ln_proj12: the three groups whose 8-bit grid costs MiniLM W8A8 most when every other group is at
# 12 bits (results/transformer_screen.md, scripts/screen_transformer_groups.py: fitted on calibration
# sentences 0..63, scored on calibration sentences 64..191; the evaluation split chose nothing):
# residual (cosine 0.9988 -> 0.941 at 8 bits), proj_out (-> 0.964), ln_out (-> 0.990); attention,
# qkv, ffn_pre, ffn_act at 8 cost <= 0.002 each. 12 bits, not 16: a 16-bit input to a 1536-deep linear
# may overflow its int32 accumulator (refused by the lowering); 12-bit grids never do. Run-time cost:
# the Q/K/V, FFN1 linears (12-bit input) run on the int16 x int8 dot-product kernel (x86: vpdpwssd)
# and attention-output, FFN2 (12-bit output) on the int8 one with an int16 store
# (results/wide_kernels.md); results/transformer.md has the fidelity rows.
# res_ln_proj_ffn12: res_ln_proj12 plus the FFN's GELU input and output (ffn_pre, ffn_act) at 12 bits,
# 48 of 90 tensors: the cheapest spec that reached mean cosine >= 0.99 and NN agreement >= 95 % on the
# calibration split (results/transformer_budget.md, scripts/budget_transformer_nn.py: fitted on
# calibration sentences 0..63, scored on 64..255; 0.9982 / 95.3 % against res_ln_proj12's 0.9951 /
# 93.2 %). It widens no further linear input or output (res_ln_proj12 already widens an input or the
# output of all 36) and keeps the 12 attention matmuls 8-bit. The error budget there: 8-bit weights
# with every activation at 16 bits reach only 96.4 % NN (0.9994), so the activations must be near
# lossless for 95 %.
PRESETS = {"res16": {"residual": 16},
           "res_ln_proj12": {"residual": 12, "ln_out": 12, "proj_out": 12},
           "res_ln_proj_ffn12": {"residual": 12, "ln_out": 12, "proj_out": 12, "ffn_pre": 12, "ffn_act": 12}}
_SOFTMAX = {torch.ops.aten.softmax.int, torch.ops.aten._softmax.default}


def tensor_groups(graph: LayerGraph) -> dict[str, list[str]]:
    """Group name -> quantized tensor names (graph order); a tensor belongs to one group at most."""
    by_out = {graph.tensor_of(layer.out_node): layer for layer in graph.layers}
    consumers: dict[str, list] = {}
    for layer in graph.layers:
        for a in layer.inputs:
            consumers.setdefault(graph.tensor_of(a), []).append(layer)
    groups: dict[str, list[str]] = {g: [] for g in GROUPS}
    for name, node in graph.quant_points.items():
        layer = by_out.get(name)
        users = {c.kind for c in consumers.get(name, [])}
        if layer is None:
            role = ("ln_out" if node.target == torch.ops.aten.layer_norm.default else
                    "attention" if node.target in _SOFTMAX else None)
        elif layer.kind == "add":
            role = "residual"
        elif layer.kind == "lut":
            role = "ffn_act"
        elif layer.kind in ("matmul", "mul_const"):
            role = "attention"
        elif layer.kind == "linear":
            role = ("ffn_pre" if "lut" in users else "qkv" if "matmul" in users else
                    "proj_out" if "add" in users else None)
        else:
            role = None
        if role is not None:
            groups[role].append(name)
    return groups


def expand_tensor_bits(graph: LayerGraph, items) -> dict[str, int]:
    """``QuantConfig.tensor_bits`` (keys: tensor names or group names, a tensor name first) as
    tensor name -> bits; a key that is neither fails, naming both lists."""
    groups = None
    out: dict[str, int] = {}
    for key, bits in dict(items).items():
        if key in graph.quant_points:
            continue                               # set below, over any group that holds it
        groups = groups if groups is not None else tensor_groups(graph)
        if key not in groups:
            points = list(graph.quant_points)
            raise ConfigError(f"activation bit width for unknown tensor or group {key!r}: groups are "
                              f"{', '.join(GROUPS)}; quantized tensors are {', '.join(points[:12])}"
                              f"{', ...' if len(points) > 12 else ''}")
        for name in groups[key]:
            out.setdefault(name, bits)
    # tensor names win over the groups that contain them, whatever the order given
    out.update({k: b for k, b in dict(items).items() if k in graph.quant_points})
    return out
