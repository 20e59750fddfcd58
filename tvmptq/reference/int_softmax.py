"""NumPy reference of the integer softmax island (README "Grids and rounding"; the definition is
tvmptq/quant/int_softmax.py's docstring, this file shares no code with it): per row, the kept
codes' maximum, the plan's exp table at ``max - code``, an int64 row sum, one floor division of
the plan's numerator by it, then ``(E R + 2^(K-1)) >> K + z_out`` clipped."""
from __future__ import annotations

import numpy as np

DROP_AT_OR_BELOW = -1000.0   # additive mask values that remove a key (the plan's convention)


def keep_from_mask(mask: np.ndarray, name: str) -> np.ndarray:
    mask = np.asarray(mask)
    keep = mask > DROP_AT_OR_BELOW
    if np.any(keep & (mask != 0)):
        raise ValueError(f"integer softmax {name!r}: the additive mask holds values other than 0 and "
                         f"<= {DROP_AT_OR_BELOW}")
    return keep


def integer_softmax(codes: np.ndarray, keep: np.ndarray | None, island: dict, table: np.ndarray,
                    name: str) -> np.ndarray:
    """Output grid values (int64) for centred input codes ``codes`` (int64)."""
    axis = island["dim"]
    if codes.shape[axis] > island["row_length"]:
        raise ValueError(f"integer softmax {name!r}: row of {codes.shape[axis]} > {island['row_length']}")
    keep = np.ones(codes.shape, bool) if keep is None else np.broadcast_to(keep, codes.shape)
    keep = np.logical_or(keep, ~np.any(keep, axis=axis, keepdims=True))
    top = np.max(np.where(keep, codes, np.iinfo(np.int64).min), axis=axis, keepdims=True)
    steps = np.minimum(np.maximum(top - codes, 0), len(table) - 1)
    e = np.where(keep, np.asarray(table, np.int64)[steps], 0)
    total = np.sum(e, axis=axis, keepdims=True)
    if total.max() >= 2 ** 31:
        raise ValueError(f"integer softmax {name!r}: row sum {total.max()} leaves int32")
    recip = np.int64(island["numerator"]) // total
    k = island["shift"]
    y = (e * recip + (np.int64(1) << np.int64(k - 1))) >> np.int64(k)
    lo, hi = island["clip"]
    return np.clip(y + island["out_zero_point"], lo, hi)
