"""Pass 1b: the plan's lookup-table layers (sigmoid, SiLU, GELU, ...) as integer gathers.

A unary function of one quantized tensor is a table from input code to output code
(tvmptq/quant/lut.py); in Relax it is ``take(table, q - qmin)``, no float op at all:

    quantize(x) -> astype int32 -> subtract qmin -> take(table) -> dequantize

The quantize/dequantize at its ends cancel against the neighbouring layers' (CancelQDQ), so
codes flow through the table like through any integer layer.

Where: the torch frontend spells each ATen op as a fixed run of consecutive Relax bindings
(``SIGNATURES``: SiLU is ``sigmoid, multiply``; hardswish ``add, clip, clip, multiply, divide``),
computed from one input and constants only. The plan's program lists its unary steps (table
layers, and float islands when tables are off) in the order the graph computes them; each is
paired with the next run of its signature in binding order, so a hardswish's ``divide`` by 6 is
never taken for a constant multiply. Runs this pass cannot find are refused by name.
This pass runs before MatchPlanLayers, which then no longer sees the rewritten regions.
"""
from __future__ import annotations

import numpy as np
import tvm
from tvm import relax
from tvm.relax import op as R

from tvmptq.quant.plan import QuantPlan

from .errors import LayerMatchError, LoweringError
from .integer_ops import Grid, container_dtype, dequantize, quantize
from .islands import UNARY_SIGNATURES as SIGNATURES
from .match import _Graph, _is_const, _operand_vars, op_name
from .mutate import mutate_functions

def _unary_steps(plan: QuantPlan) -> list[tuple[str, object]]:
    """(ATen op, LayerPlan or step name) for every unary step of the program, in order."""
    layers = {lp.name: lp for lp in plan.layers}
    steps = []
    for step in plan.program or []:
        if step["kind"] == "layer" and layers[step["layer"]].kind == "lut":
            lp = layers[step["layer"]]
            steps.append((lp.attrs["aten"], lp))
        elif step["kind"] == "op" and not step.get("integer") and step["op"] in SIGNATURES:
            args = step.get("args") or []
            if args and isinstance(args[0], dict) and "value" in args[0]:
                steps.append((step["op"], step["name"]))
    return steps


def run_at(g: _Graph, i: int, names: tuple[str, ...]):
    """(input var, bindings) if bindings i.. are a run of ``names`` computed from one input."""
    run = g.bindings[i:i + len(names)]
    if len(run) < len(names) or any(op_name(b.value) != "relax." + n for b, n in zip(run, names)):
        return None
    inside = {b.var for b in run}
    outside = {v for b in run for v in _operand_vars(b.value) if v not in inside}
    if len(outside) != 1 or not all(isinstance(a, relax.Var) or _is_const(a) or not isinstance(a, relax.Expr)
                                    for b in run for a in b.value.args):
        return None
    if any(u not in inside for b in run[:-1] for u in g.users.get(b.var, [])) or \
            any(b.var in g.returned for b in run[:-1]):
        return None
    return next(iter(outside)), run


def find_regions(func: relax.Function, plan: QuantPlan) -> list[tuple[object, relax.Var, list]]:
    """(LayerPlan or island step name, input var, bindings) per unary step, in program order."""
    g = _Graph(func)
    found, i = [], 0
    for aten, what in _unary_steps(plan):
        names = SIGNATURES[aten]
        while i < len(g.bindings) and run_at(g, i, names) is None:
            i += 1
        if i >= len(g.bindings):
            label = what.name if hasattr(what, "name") else what
            raise LayerMatchError(f"unary step {label!r} ({aten}) has no Relax run "
                                  f"{'/'.join(names)} after the previous one; the frontend spells it "
                                  "differently (add its signature to lookup_tables.SIGNATURES)")
        x, run = run_at(g, i, names)
        found.append((what, x, run))
        i += len(names)
    return found


def table_take(bb: relax.BlockBuilder, x: relax.Expr, lp, plan: QuantPlan) -> relax.Expr:
    """``dequantize(take(table, quantize(x) - qmin))``: the layer's table on ``x``'s codes."""
    gin, gout = Grid.of(plan.tensors[lp.inputs[0]]), Grid.of(plan.tensors[lp.output])
    table = np.asarray(lp.arrays["table"], np.int64)
    if table.size != gin.qmax - gin.qmin + 1:
        raise LoweringError(f"layer {lp.name!r}: table has {table.size} entries for input grid "
                            f"[{gin.qmin}, {gin.qmax}]")
    if table.min() < gout.qmin or table.max() > gout.qmax:
        raise LoweringError(f"layer {lp.name!r}: table codes leave the output grid [{gout.qmin}, {gout.qmax}]")
    q = bb.emit(quantize(x, gin))
    index = bb.emit(R.astype(q, "int32"))
    if gin.qmin:
        index = bb.emit(R.subtract(index, relax.const(gin.qmin, "int32")))
    dtype = container_dtype(int(table.min()), int(table.max()))
    dtype = gout.dtype if dtype != gout.dtype and _fits(table, gout.dtype) else dtype
    y = bb.emit(R.take(relax.const(table.astype(dtype), dtype), index, axis=0))
    return dequantize(y, gout)


def _fits(table, dtype) -> bool:
    info = np.iinfo(np.dtype(dtype))
    return info.min <= table.min() and table.max() <= info.max


@relax.expr_functor.mutator
class RunRewriter(relax.PyExprMutator):
    """Replaces each region's run of bindings (``(layer, input var, bindings)``, as ``find_regions``
    returns them) by ``lower(builder, input, layer, plan)`` at the run's last binding; the run's
    other bindings are dropped. Shared by the lookup-table and PReLU passes."""

    def __init__(self, mod, plan: QuantPlan, regions, lower):
        super().__init__(mod)
        self.plan, self.lower = plan, lower
        self.at_end = {run[-1].var: (lp, x) for lp, x, run in regions}
        self.interior = {b.var for _, _, run in regions for b in run[:-1]}

    def visit_var_binding_(self, binding: relax.VarBinding) -> None:
        if binding.var in self.interior:
            return
        if binding.var not in self.at_end:
            return super().visit_var_binding_(binding)
        lp, x = self.at_end[binding.var]
        value = self.lower(self.builder_, self.visit_expr(x), lp, self.plan)
        super().visit_var_binding_(relax.VarBinding(binding.var, value))


def _table_layer(bb: relax.BlockBuilder, x: relax.Expr, lp, plan: QuantPlan) -> relax.Expr:
    if lp.keep_float:
        raise LoweringError(f"layer {lp.name!r} ({lp.attrs['function']}) is kept in float by the plan; "
                            "float layers are not lowered yet (quantize with lookup tables off for a "
                            "declared float island)")
    return table_take(bb, x, lp, plan)


@tvm.transform.module_pass(opt_level=0, name="tvmptq.LookupTables")
class LookupTables:
    """Replace each lookup-table layer's Relax run by an integer gather (see module doc)."""

    def __init__(self, plan: QuantPlan):
        self.plan = plan

    def transform_module(self, mod: tvm.IRModule, ctx) -> tvm.IRModule:
        if not any(lp.kind == "lut" for lp in self.plan.layers):
            return mod
        regions = [r for r in find_regions(mod["main"], self.plan) if not isinstance(r[0], str)]
        return mutate_functions(mod, RunRewriter(mod, self.plan, regions, _table_layer))
