"""Op counts of a Relax module, before and after lowering (op name and result dtype)."""
from __future__ import annotations

from collections import Counter

import tvm
from tvm import relax

from .match import op_name


def op_counts(mod: tvm.IRModule) -> Counter:
    """Counter of ``"<op> -> <dtype>"`` over all Relax functions (call_tir shows as call_tir)."""
    counts = Counter()
    for _, func in mod.functions_items():
        if not isinstance(func, relax.Function):
            continue
        for block in func.body.blocks:
            for b in block.bindings:
                if isinstance(b.value, relax.Call):
                    name = (op_name(b.value) or "call").removeprefix("relax.")
                    counts[f"{name} -> {getattr(b.value.ty, 'dtype', 'tuple')}"] += 1
    return counts


def format_op_counts(before: Counter, after: Counter) -> str:
    keys = sorted(set(before) | set(after))
    width = max([len(k) for k in keys] + [10])
    lines = [f"{'op -> result dtype':<{width}}  before  after"]
    lines += [f"{k:<{width}}  {before.get(k, 0):>6}  {after.get(k, 0):>5}" for k in keys]
    return "\n".join(lines)
