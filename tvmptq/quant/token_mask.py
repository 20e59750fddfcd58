"""Statistics over real tokens only: padding positions never reach a transformer's output.

In a BERT-style encoder a padding token's row is computed like any other, but nothing that the
model returns depends on it: as a key it is masked out of every softmax (the additive mask bias),
and the pooling multiplies it by zero. A padded batch of short sentences is mostly padding
(MiniLM's calibration sentences: about 85 % of the 128 positions), so ranges observed over all
positions are set by values that do not matter, and error measures counted over all positions are
dominated by them (the negative SQNR of the attention matmuls in results/minilm_error_profile.md).

The mask is the model input named ``attention_mask`` (the Hugging Face / ONNX convention), shape
``[N, T]`` with 1 for real tokens. A tensor's token axes are its axes after the batch whose size is
``T``: ``[N, T, C]`` (hidden states), ``[N, H, T, D]`` (heads), ``[N, H, T, T]`` (scores and
probabilities: queries and keys). A hidden size equal to ``T`` would be read as a key axis too; the
only effect is that the range is taken over fewer (still real) entries.
"""
from __future__ import annotations

import torch

MASK_INPUT = "attention_mask"


def mask_from_inputs(input_names: list[str], batch: tuple) -> torch.Tensor | None:
    """The boolean ``[N, T]`` real-token mask of a batch, or None (no mask input, or no padding)."""
    if MASK_INPUT not in input_names:
        return None
    m = torch.as_tensor(batch[input_names.index(MASK_INPUT)])
    if m.ndim != 2:
        return None
    m = m != 0
    if bool(m.all()) or not bool(m.any(dim=1).all()):  # no padding, or an all-padding row: keep all
        return None
    return m


def real_token_entries(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """The entries of ``x`` at real tokens on every token axis (flattened), or ``x`` unchanged
    when it has no token axis."""
    if mask is None or x.ndim < 2 or x.shape[0] != mask.shape[0]:
        return x
    n, t = mask.shape
    keep = None
    for d in range(1, x.ndim):
        if x.shape[d] == t:
            shape = [n] + [1] * (x.ndim - 1)
            shape[d] = t
            m = mask.reshape(shape)
            keep = m if keep is None else keep & m
    if keep is None:
        return x
    return x[keep.expand(x.shape)]


def real_token_rows(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """``x[N, T, ...]`` -> ``[real tokens, ...]`` (per-channel statistics of hidden states), or ``x``
    unchanged when its first two axes are not the mask's."""
    if mask is None or x.ndim < 3 or tuple(x.shape[:2]) != tuple(mask.shape):
        return x
    return x[mask]
