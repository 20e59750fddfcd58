"""Attention as users write it, rewritten into the ops the classifier already knows.

``F.scaled_dot_product_attention`` (timm's and Hugging Face's default attention, and
``nn.MultiheadAttention`` with ``need_weights=False``) and ``Tensor.unbind`` reach the quantizer
as single ATen ops. ``ExportedProgram.run_decompositions`` with the small table below rewrites them
into exactly the graph MiniLM's hand-written attention has: ``matmul(q, k^T)`` (an integer
activation x activation kernel), a multiply by the scale (an integer requantize), the mask as a
float island (additive float mask: an add; boolean or causal mask: ``masked_fill(-inf)``),
``softmax`` (float island) and ``matmul(p, v)``; ``unbind`` becomes ``select`` (data movement).
One attention implementation thus serves MiniLM and these models in the simulation, the NumPy
reference and the Relax lowering. Every other op is left as captured (the table is restricted).
"""
from __future__ import annotations

import math

import torch

from ..errors import UnsupportedOpError

aten = torch.ops.aten


def scaled_dot_product_attention(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False,
                                 scale=None, enable_gqa=False):
    """``softmax(q k^T * scale + mask) v``, PyTorch's documented semantics: a boolean mask keeps
    the positions that are True, a float mask is added to the scores, ``is_causal`` keeps the lower
    triangle (top-left aligned, as PyTorch's reference implementation)."""
    if dropout_p:
        raise UnsupportedOpError(f"scaled_dot_product_attention with dropout_p={dropout_p}: attention "
                                 "dropout is random; export the model in eval mode with dropout_p=0")
    if enable_gqa and query.shape[-3] != key.shape[-3]:
        raise UnsupportedOpError("scaled_dot_product_attention with enable_gqa (grouped-query attention, "
                                 f"{query.shape[-3]} query heads, {key.shape[-3]} key heads) is not supported")
    if is_causal and attn_mask is not None:
        raise UnsupportedOpError("scaled_dot_product_attention with both attn_mask and is_causal")
    factor = scale if scale is not None else 1.0 / math.sqrt(query.shape[-1])
    scores = torch.matmul(query, key.transpose(-2, -1)) * factor
    if is_causal:
        keep = torch.ones(query.shape[-2], key.shape[-2], dtype=torch.bool).tril()
        scores = scores.masked_fill(keep.logical_not(), float("-inf"))
    elif attn_mask is not None and attn_mask.dtype == torch.bool:
        scores = scores.masked_fill(attn_mask.logical_not(), float("-inf"))
    elif attn_mask is not None:
        scores = scores + attn_mask
    return torch.matmul(torch.softmax(scores, dim=-1), value)


def unbind(x, dim=0):
    """``unbind`` as one ``select`` per index: each output is data movement on the input's grid."""
    return [x.select(dim, i) for i in range(x.shape[dim])]


DECOMPOSITIONS = {
    aten.scaled_dot_product_attention.default: scaled_dot_product_attention,
    aten.unbind.int: unbind,
}


def needs_decomposition(ep: torch.export.ExportedProgram) -> bool:
    return any(n.op == "call_function" and n.target in DECOMPOSITIONS for n in ep.graph.nodes)


def decompose(ep: torch.export.ExportedProgram) -> torch.export.ExportedProgram:
    """The program with the table's ops rewritten (unchanged when it has none of them)."""
    return ep.run_decompositions(DECOMPOSITIONS) if needs_decomposition(ep) else ep
