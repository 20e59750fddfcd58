"""Pass 4: let integers flow from layer to layer.

After QuantizeLayers each layer ends in ``dequantize`` and the next one starts with ``quantize``,
possibly with data movement (pad, reshape, max pool, ...) in between. Three local rewrites,
each exact, remove the float round trip:

* SinkDequantize:   op(dequantize(q))  -> dequantize(op(q))   for data movement ops
* HoistQuantize:    quantize(op(x))    -> op(quantize(x))     likewise (moves the model-input
                    quantize in front of float padding, so only ``quantize(input)`` stays float)
* CancelQuantizeDequantize: quantize(dequantize(q)) -> q       same scale, zero point and dtype

Why exact: quantize/dequantize are elementwise, so they commute with ops that only move or copy
elements; a constant pad value v becomes quantize(v) (or, sinking, the integer whose dequantized
value is exactly v, else the rewrite is skipped); max pool commutes because both maps are
monotone non-decreasing. ``round((n * s) / s) == n`` in float32 for the small integers involved
(relative error 2^-23), which is also what the simulation relies on between layers.
RemoveRedundantClip finally drops grid clips that a value's known integer range makes no-ops
(including the cast of a float value clipped to integer bounds, which ends a float branch).
"""
from __future__ import annotations

import math

import numpy as np
import tvm
import tvm_ffi
from tvm import relax
from tvm.relax import op as R
from tvm.relax.dpl import is_const, is_op, rewrite_call, wildcard

from .integer_ops import dtype_range
from .match import MOVEMENT_OPS, is_movement, op_name
from .mutate import mutate_functions

MAX_ROUNDS = 64


def _params(call):
    """(scale, zero point, integer dtype) of a quantize/dequantize call with constant parameters."""
    dtype = call.attrs.out_dtype if op_name(call) == "relax.quantize" else call.args[0].ty.dtype
    return call.args[1].value.numpy().astype(np.float32), call.args[2].value.numpy().astype(np.int64), str(dtype)


def _same(a, b) -> bool:
    return a[0].shape == b[0].shape and np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == b[2]


def _scalar(params) -> bool:
    return params[0].size == 1 and params[1].size == 1


def _quantize_value(v: float, params) -> int:
    s, z, dtype = params
    lo, hi = dtype_range(dtype)
    return int(np.clip(np.round(np.float32(v) / s.reshape(())) + z.reshape(()), lo, hi))


def _moved(call, x, pad_value=None):
    """``call`` (a data movement op) applied to ``x`` instead of its original operand."""
    if op_name(call) == "relax.nn.pad":
        at = call.attrs
        return R.nn.pad(x, [int(p) for p in at.pad_width], str(at.pad_mode),
                        at.pad_value if pad_value is None else pad_value)
    return relax.Call(call.op, [x] + list(call.args[1:]), call.attrs)


def _repeat(rewrite, func):
    for _ in range(MAX_ROUNDS):
        new = rewrite(func)
        if tvm_ffi.structural_equal(new, func):
            return new
        func = new
    return func


def _movement_pattern(inner):
    ops = sorted(MOVEMENT_OPS)
    pat = is_op(ops[0])(inner, varg_default_wildcard=True)
    for name in ops[1:]:
        pat = pat | is_op(name)(inner, varg_default_wildcard=True)
    return pat


def sink_dequantize(func: relax.Function) -> relax.Function:
    q = wildcard()
    deq = is_op("relax.dequantize")(q, is_const(), is_const())
    pattern = _movement_pattern(deq)

    def rewriter(call, m):
        params = _params(m[deq])
        if not _scalar(params) or not is_movement(call):
            return call
        pad_value = None
        if op_name(call) == "relax.nn.pad" and str(call.attrs.pad_mode) == "constant":
            v = float(call.attrs.pad_value)
            pad_value = _quantize_value(v, params)
            s, z, _ = params
            if np.float32(pad_value - z.reshape(())) * s.reshape(()) != np.float32(v):
                return call  # v is not on the grid: leave this pad in float
        return R.dequantize(_moved(call, m[q], pad_value), m[deq].args[1], m[deq].args[2], axis=-1,
                            out_dtype="float32")
    return _repeat(lambda f: rewrite_call(pattern, rewriter, f), func)


def hoist_quantize(func: relax.Function) -> relax.Function:
    x = wildcard()
    mv = _movement_pattern(x)
    pattern = is_op("relax.quantize")(mv, is_const(), is_const())

    def rewriter(call, m):
        params, move = _params(call), m[mv]
        if not _scalar(params) or not is_movement(move):
            return call
        inner = R.quantize(m[x], call.args[1], call.args[2], axis=-1, out_dtype=str(call.attrs.out_dtype))
        pad_value = None
        if op_name(move) == "relax.nn.pad" and str(move.attrs.pad_mode) == "constant":
            pad_value = _quantize_value(float(move.attrs.pad_value), params)
        return _moved(move, inner, pad_value)
    return _repeat(lambda f: rewrite_call(pattern, rewriter, f), func)


def cancel_pairs(func: relax.Function) -> relax.Function:
    q = wildcard()
    deq = is_op("relax.dequantize")(q, is_const(), is_const())
    pattern = is_op("relax.quantize")(deq, is_const(), is_const())

    def rewriter(call, m):
        return m[q] if _same(_params(call), _params(m[deq])) else call
    return rewrite_call(pattern, rewriter, func)


@relax.expr_functor.mutator
class _ClipRemover(relax.PyExprMutator):
    """Drops ``clip(x, lo, hi)`` when x is known to lie in [lo, hi] already."""

    def value_range(self, expr):
        if isinstance(expr, relax.Var):
            bound = self.lookup_binding(expr)
            if bound is not None:
                return self.value_range(bound)
        dtype = str(expr.ty.dtype) if isinstance(expr.ty, relax.TensorType) else ""
        if "int" not in dtype:
            return None
        full = dtype_range(dtype)
        name = op_name(expr)
        if name == "relax.clip":
            inner = self.value_range(expr.args[0]) or full
            return max(inner[0], int(expr.args[1].value)), min(inner[1], int(expr.args[2].value))
        if name == "relax.astype":
            inner = self.value_range(expr.args[0]) or self._float_clip_range(expr.args[0])
            return inner if inner and full[0] <= inner[0] and inner[1] <= full[1] else full
        if name in MOVEMENT_OPS and is_movement(expr):
            inner = self.value_range(expr.args[0]) or full
            if name == "relax.nn.pad":
                v = int(float(expr.attrs.pad_value))
                return min(inner[0], v), max(inner[1], v)
            return inner
        return full

    def _float_clip_range(self, expr):
        """A float value clipped to [lo, hi] (a float branch's end) casts to integers in
        [ceil(lo), floor(hi)]: the cast truncates towards zero."""
        if isinstance(expr, relax.Var):
            expr = self.lookup_binding(expr)
        if op_name(expr) != "relax.clip" or "float" not in str(expr.ty.dtype):
            return None
        lo, hi = (float(a.value) for a in expr.args[1:3])
        return math.ceil(lo), math.floor(hi)

    def visit_call_(self, call):
        call = super().visit_call_(call)
        if op_name(call) == "relax.clip":
            known = self.value_range(call.args[0])
            if known and int(call.args[1].value) <= known[0] and known[1] <= int(call.args[2].value):
                return call.args[0]
        return call


@tvm.transform.module_pass(opt_level=0, name="tvmptq.CancelQDQ")
class CancelQDQ:
    def transform_module(self, mod: tvm.IRModule, ctx) -> tvm.IRModule:
        mod = mod.clone()  # a pass must not change its input module
        for gv, func in mod.functions_items():
            if isinstance(func, relax.Function):
                func = cancel_pairs(hoist_quantize(cancel_pairs(sink_dequantize(func))))
                mod[gv] = func
        remover = _ClipRemover(mod)
        return relax.transform.DeadCodeElimination()(mutate_functions(mod, remover))
