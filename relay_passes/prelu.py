"""Pass 1c: the plan's PReLU layers as integer ops (two requantize multipliers).

The torch frontend spells ``prelu(x, alpha)`` as ``greater(x, 0)``, ``multiply(alpha, x)``,
``where``: three consecutive bindings computed from ``x`` and constants. Each is paired, in order,
with the plan's next PReLU layer and replaced by

    c = quantize(x) - z_in;  y = where(c >= 0, (c m+ + r+) >> k+, (c m-_ch + r-_ch) >> k-_ch)

in int64, then ``+ z_out``, clip, cast (integer_ops.requantize_finish): the same arithmetic as
the simulation's QPrelu and the NumPy reference's ``edge.prelu``. A PReLU layer without such a
run is refused by name. Runs before MatchPlanLayers, like LookupTables.
"""
from __future__ import annotations

import numpy as np
import tvm
from tvm import relax
from tvm.relax import op as R

from tvmptq.quant.plan import QuantPlan

from .errors import LayerMatchError
from .integer_ops import Grid, _per_axis, dequantize, quantize, requantize_finish
from .lookup_tables import RunRewriter, run_at
from .match import _Graph
from .mutate import mutate_functions

SIGNATURE = ("greater", "multiply", "where")


def find_prelus(func: relax.Function, plan: QuantPlan) -> list[tuple[object, relax.Var, list]]:
    g = _Graph(func)
    layers = [plan.layer(s["layer"]) for s in plan.program if s["kind"] == "layer" and plan.layer(s["layer"]).kind == "prelu"]
    found, i = [], 0
    for lp in layers:
        while i < len(g.bindings) and run_at(g, i, SIGNATURE) is None:
            i += 1
        if i >= len(g.bindings):
            raise LayerMatchError(f"PReLU layer {lp.name!r} has no Relax run {'/'.join(SIGNATURE)} after the "
                                  "previous one (the frontend spells it differently)")
        x, run = run_at(g, i, SIGNATURE)
        found.append((lp, x, run))
        i += len(SIGNATURE)
    return found


def _requant64(bb, c, m, k, ndim):
    m, k = np.asarray(m, np.int64).reshape(-1), np.asarray(k, np.int64).reshape(-1)
    y = bb.emit(R.multiply(c, _per_axis(m, "int64", 1, ndim)))
    y = bb.emit(R.add(y, _per_axis(np.left_shift(np.int64(1), k - 1), "int64", 1, ndim)))
    return bb.emit(R.right_shift(y, _per_axis(k, "int64", 1, ndim)))


def prelu_integer(bb: relax.BlockBuilder, x: relax.Expr, lp, plan: QuantPlan) -> relax.Expr:
    gin, gout = Grid.of(plan.tensors[lp.inputs[0]]), Grid.of(plan.tensors[lp.output])
    a, ndim = lp.arrays, len(x.ty.shape)
    q = bb.emit(quantize(x, gin))
    c = bb.emit(R.astype(q, "int64"))
    if gin.zero_point:
        c = bb.emit(R.subtract(c, relax.const(gin.zero_point, "int64")))
    pos = _requant64(bb, c, a["multiplier_pos"], a["shift_pos"], ndim)
    neg = _requant64(bb, c, a["multiplier"], a["shift"], ndim)
    y = bb.emit(R.where(R.greater_equal(c, relax.const(0, "int64")), pos, neg))
    return dequantize(requantize_finish(bb, y, "int64", gout, lp.clip), gout)


@tvm.transform.module_pass(opt_level=0, name="tvmptq.PReLUs")
class PReLUs:
    """Replace each PReLU layer's Relax run by its integer form (see module doc)."""

    def __init__(self, plan: QuantPlan):
        self.plan = plan

    def transform_module(self, mod: tvm.IRModule, ctx) -> tvm.IRModule:
        if not any(lp.kind == "prelu" for lp in self.plan.layers):
            return mod
        return mutate_functions(mod, RunRewriter(mod, self.plan, find_prelus(mod["main"], self.plan), prelu_integer))
