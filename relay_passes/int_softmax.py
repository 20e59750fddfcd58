"""Pass 3b: the plan's integer softmax islands (tvmptq/quant/int_softmax.py) as integer Relax ops.

After QuantizeLayers a softmax the plan computes in integers still reads
``add(dequantize(scores), mask)``; it becomes, with no float op but the mask's compare:

    c    = quantize(scores) - z_in                       int32 (the quantize cancels, CancelQDQ)
    keep = greater(mask, MASK_DROP), all-dropped rows kept
    M    = max(c - (1 - keep) 2^24)                      the kept codes' maximum
    E    = take(table, clip(M - c, 0, L - 1)) * keep     int32
    R    = NUM // sum(E)                                 int64, one per row
    y    = clip((E R + 2^(K-1)) >> K + z_out) -> output container, dequantize (cancels too)

The program's softmax steps (integer and float) pair with the Relax ``nn.softmax`` bindings in
order; the mask add left without users is removed. Parameters come from the step's
``integer_island`` record only (the plan is the source of truth).
"""
from __future__ import annotations

import numpy as np
import tvm
from tvm import relax
from tvm.relax import op as R

from tvmptq.quant.int_softmax import MASK_DROP, SOFTMAX_OPS
from tvmptq.quant.plan import QuantPlan

from .errors import LoweringError
from .integer_ops import Grid, dequantize, quantize
from .match import _Graph, op_name
from .mutate import mutate_functions

DROPPED_OFFSET = 2 ** 24  # larger than any 16-bit grid's span: a dropped code never is the maximum


def _i32(v):
    return relax.const(int(v), "int32")


def _softmax_kernel(q, keep, table, *, axis: int, zero_point: int, island: dict, out_dtype: str):
    """One TE kernel per island, softmax axis last: the row maximum and the row sum are reductions
    over expressions (no full-size intermediates but the table values ``E``), so the CPU schedule
    (targets/cpu_reduction.schedule_row_reductions: DLight's Reduction rule) computes each row in
    one pass of loops, rows in parallel."""
    from tvm import te, tirx
    shape = [int(d) for d in q.shape]
    if axis != len(shape) - 1:
        raise LoweringError(f"integer softmax over axis {axis} of a rank-{len(shape)} tensor: only the last axis")
    n = shape[-1]
    k_shift, last = int(island["shift"]), int(island["table_length"]) - 1

    def code(idx):
        c = q[tuple(idx)].astype("int32")
        return c - zero_point if zero_point else c

    def kept(idx):  # keep broadcasts against q (size-1 axes)
        return keep[tuple(i if int(d) != 1 else 0 for i, d in zip(idx, keep.shape))]

    r = te.reduce_axis((0, n), "key")
    if keep is not None:
        top = te.compute(shape[:-1], lambda *i: te.max(code([*i, r]) - (1 - kept([*i, r])) * DROPPED_OFFSET, axis=r),
                         name="row_max")
    else:
        top = te.compute(shape[:-1], lambda *i: te.max(code([*i, r]), axis=r), name="row_max")

    def exp_of(*i):
        j = tirx.max(tirx.min(top[i[:-1]] - code(i), last), 0)
        e = table[j]
        return e * kept(i) if keep is not None else e
    e = te.compute(shape, exp_of, name="exp_table")
    r2 = te.reduce_axis((0, n), "key2")
    total = te.compute(shape[:-1], lambda *i: te.sum(e[(*i, r2)], axis=r2), name="row_sum")
    recip = te.compute(shape[:-1], lambda *i: tirx.floordiv(tirx.const(int(island["numerator"]), "int64"),
                                                             total[i].astype("int64")), name="reciprocal")
    lo, hi = (int(v) for v in island["clip"])

    def out(*i):
        y = (e[i].astype("int64") * recip[i[:-1]] + tirx.const(1 << (k_shift - 1), "int64")) >> \
            tirx.const(k_shift, "int64")
        y = y + tirx.const(int(island["out_zero_point"]), "int64")
        return tirx.max(tirx.min(y, tirx.const(hi, "int64")), tirx.const(lo, "int64")).astype(out_dtype)
    return te.compute(shape, out, name="softmax_codes")


def lower_softmax(bb: relax.BlockBuilder, scores, mask, island: dict, plan: QuantPlan, name: str):
    gin, gout = Grid.of(plan.tensors[island["input_tensor"]]), Grid.of(plan.tensors[name])
    q = bb.emit(quantize(scores, gin))  # cancels against the scores' dequantize (CancelQDQ)
    keep = None
    if mask is not None:  # keep/drop per key (the mask's shape: small); all-dropped rows keep all
        axis = [int(island["dim"])]
        keep = bb.emit(R.astype(R.greater(mask, relax.const(MASK_DROP, str(mask.ty.dtype))), "int32"))
        keep = bb.emit(R.maximum(keep, R.subtract(_i32(1), R.max(keep, axis, keepdims=True))))
    table = relax.const(np.asarray(plan.constants[island["table"]], np.int32), "int32")
    kw = dict(axis=int(island["dim"]), zero_point=gin.zero_point, island=island, out_dtype=gout.dtype)
    if keep is None:
        y = bb.emit_te(lambda a, t: _softmax_kernel(a, None, t, **kw), q, table, primfunc_name_hint="integer_softmax")
    else:
        y = bb.emit_te(lambda a, m, t: _softmax_kernel(a, m, t, **kw), q, keep, table,
                       primfunc_name_hint="integer_softmax")
    return dequantize(y, gout)


def find_softmaxes(func: relax.Function, plan: QuantPlan) -> dict:
    """softmax binding var -> (step, scores expr, mask expr or None) for the integer islands."""
    g = _Graph(func)
    bindings = [b for b in g.bindings if op_name(b.value) == "relax.nn.softmax"]
    steps = [s for s in plan.program or [] if s["kind"] == "op" and s["op"] in SOFTMAX_OPS]
    if len(bindings) != len(steps):
        raise LoweringError(f"plan has {len(steps)} softmax steps, the Relax graph {len(bindings)} nn.softmax")
    found = {}
    for b, step in zip(bindings, steps):
        island = step.get("integer_island")
        if not island:
            continue
        x = b.value.args[0]
        if not island["mask_step"]:
            found[b.var] = (step, x, None)
            continue
        add = g.value.get(x)
        if op_name(add) != "relax.add" or len(g.users.get(x, [])) != 1:
            raise LoweringError(f"integer softmax {step['name']!r}: its input is not the mask add the plan "
                                f"records ({island['mask_step']!r})")
        a, m = add.args
        if op_name(g.value.get(a)) != "relax.dequantize":
            a, m = m, a
        if op_name(g.value.get(a)) != "relax.dequantize":
            raise LoweringError(f"integer softmax {step['name']!r}: neither operand of {island['mask_step']!r} "
                                "is a quantized value")
        found[b.var] = (step, a, m)
    return found


@relax.expr_functor.mutator
class _Rewriter(relax.PyExprMutator):
    def __init__(self, mod, plan, found):
        super().__init__(mod)
        self.plan, self.found = plan, found

    def visit_var_binding_(self, binding: relax.VarBinding) -> None:
        if binding.var not in self.found:
            return super().visit_var_binding_(binding)
        step, x, m = self.found[binding.var]
        value = lower_softmax(self.builder_, self.visit_expr(x), None if m is None else self.visit_expr(m),
                              step["integer_island"], self.plan, step["name"])
        super().visit_var_binding_(relax.VarBinding(binding.var, value))


@tvm.transform.module_pass(opt_level=0, name="tvmptq.IntegerSoftmax")
class IntegerSoftmax:
    """Rewrite each integer softmax island of the plan to integer ops (see module doc)."""

    def __init__(self, plan: QuantPlan):
        self.plan = plan

    def transform_module(self, mod: tvm.IRModule, ctx) -> tvm.IRModule:
        if not any(s.get("integer_island", {}).get("kind") == "softmax" for s in self.plan.program or []):
            return mod
        found = {}
        for _, func in mod.functions_items():
            if isinstance(func, relax.Function):
                found.update(find_softmaxes(func, self.plan))
        mod = mutate_functions(mod, _Rewriter(mod, self.plan, found))
        out = tvm.IRModule(dict(mod.functions_items()), attrs=mod.attrs)
        for gv, func in mod.functions_items():  # the mask adds are left without users
            if isinstance(func, relax.Function):
                out[gv] = relax.analysis.remove_all_unused(func)
        return out
