"""What a compiled variant costs: Relax op counts and parameters (constants) of a lowered module."""
from __future__ import annotations

from collections import Counter

import numpy as np


def relax_constants(mod) -> Counter:
    """Counter of ``(dtype, shape)`` over every tensor constant of the module's Relax functions
    (not the integer immediates of shapes and type annotations, which the visitor also reaches)."""
    from tvm import ir, relax

    found = Counter()

    def visit(e):
        if isinstance(e, ir.expr.Constant) and hasattr(e.value, "numpy"):
            arr = e.value.numpy()
            found[(str(arr.dtype), tuple(arr.shape))] += 1

    for _, func in mod.functions_items():
        if isinstance(func, relax.Function):
            relax.analysis.post_order_visit(func.body, visit)
    return found


def parameter_count(mod) -> int:
    """Total number of constant elements (weights, biases, multipliers, shifts, zero points)."""
    return int(sum(int(np.prod(shape)) * n for (_, shape), n in relax_constants(mod).items()))
