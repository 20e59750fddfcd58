"""The one loop every rewriting pass runs: a Relax mutator over each function of a module."""
from __future__ import annotations

import tvm
from tvm import relax


def mutate_functions(mod: tvm.IRModule, mutator: relax.PyExprMutator) -> tvm.IRModule:
    """``mutator`` (built on ``mod``) applied to every Relax function; the rewritten module."""
    for gv, func in mod.functions_items():
        if isinstance(func, relax.Function):
            mutator.builder_.update_func(gv, mutator.visit_expr(func))
    return mutator.builder_.get()
