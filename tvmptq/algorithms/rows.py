"""Which regression rows count: padded tokens carry no signal.

A sentence encoder computes hidden states for every position of its fixed-length input, padding
included, and its pooling ignores the padded ones. MiniLM's sentences are padded to 128 tokens and
most are far shorter, so without a mask most least-squares rows would be padding, whose values
never reach the output: fitted on them, CWAC and QwT correct the wrong thing (measured in
results/cwac.md). The mask is read from the graph input named ``attention_mask`` (the Hugging
Face convention, kept by ONNX exports of transformers); models without one use every row.
"""
from __future__ import annotations

import torch
from torch import fx

MASK_INPUT = "attention_mask"


def mask_input_index(gm: fx.GraphModule) -> int | None:
    names = [n.name for n in gm.graph.nodes if n.op == "placeholder"]
    return names.index(MASK_INPUT) if MASK_INPUT in names else None


def token_rows(mask: torch.Tensor | None, value: torch.Tensor) -> torch.Tensor | None:
    """Bool per row of ``value`` (N, T, C) flattened to (N*T, C): True where the token is real.
    None when there is no mask or ``value`` is not laid out (N, T, C) like the mask."""
    if mask is None or value.dim() != 3 or tuple(value.shape[:2]) != tuple(mask.shape):
        return None
    return mask.reshape(-1) != 0
