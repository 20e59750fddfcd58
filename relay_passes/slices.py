"""Part of pass 1: selections of activations as slices, the data movement the matcher follows.

Attention blocks read q, k and v out of one fused projection: timm's ``qkv.unbind(0)`` (a
``select`` per head group), torchvision's ``unflatten`` + ``select``, or ``split`` / ``chunk``.
Relax imports a ``select`` as ``take(x, k, axis)`` with a scalar constant index and a ``split`` as
a tuple of which each part is read by ``TupleGetItem``. ``SelectsAsSlices`` rewrites both into
``strided_slice`` (and ``squeeze`` for a select), ops that only move elements: the integer grid
passes through them, so the matcher traces an attention matmul's operands back to the projection
layer and CancelQDQ moves the integers through, exactly as for a reshape. Gathers with tensor
indices (embeddings) are left alone.
"""
from __future__ import annotations

import tvm
from tvm import relax
from tvm.relax import op as R

from .match import op_name
from .mutate import mutate_functions


def _shape(expr) -> list[int] | None:
    ty = expr.ty
    if not isinstance(ty, relax.TensorType) or ty.shape is None:
        return None
    try:
        return [int(d) for d in ty.shape]
    except TypeError:
        return None


def _split_bounds(call) -> list[tuple[int, int]] | None:
    """(begin, end) along the split axis of each part of ``relax.split``."""
    shape = _shape(call.args[0])
    if shape is None:
        return None
    axis = int(call.attrs.axis) % len(shape)
    sections = call.attrs.indices_or_sections
    size = shape[axis]
    if isinstance(sections, (int, tvm.tirx.IntImm)):
        n = int(sections)
        step = -(-size // n)
        cuts = [min(i * step, size) for i in range(1, n)]
    else:
        cuts = [int(c) for c in sections]
    edges = [0] + cuts + [size]
    return [(edges[i], edges[i + 1]) for i in range(len(edges) - 1)], axis


@relax.expr_functor.mutator
class _SliceRewriter(relax.PyExprMutator):
    def visit_call_(self, call):
        call = super().visit_call_(call)
        if op_name(call) != "relax.take" or isinstance(call.args[0], tvm.ir.expr.Constant):
            return call
        index = call.args[1]
        shape = _shape(call.args[0])
        if not isinstance(index, tvm.ir.expr.Constant) or index.value.numpy().ndim != 0 or shape is None:
            return call
        axis = int(call.attrs.axis) % len(shape)
        k = int(index.value.numpy()) % shape[axis]
        return R.squeeze(R.strided_slice(call.args[0], [axis], [k], [k + 1]), [axis])

    def visit_tuple_getitem_(self, op):
        op = super().visit_tuple_getitem_(op)
        source = op.tuple_value
        if isinstance(source, relax.Var):
            source = self.lookup_binding(source)
        if op_name(source) != "relax.split":
            return op
        found = _split_bounds(source)
        if found is None:
            return op
        bounds, axis = found
        begin, end = bounds[int(op.index)]
        return R.strided_slice(source.args[0], [axis], [begin], [end])


@tvm.transform.module_pass(opt_level=0, name="tvmptq.SelectsAsSlices")
class SelectsAsSlices:
    """``take`` with a constant scalar index -> ``squeeze(strided_slice)``; each part of a ``split``
    -> ``strided_slice`` (the split itself is then dead code)."""

    def transform_module(self, mod: tvm.IRModule, ctx) -> tvm.IRModule:
        return relax.transform.DeadCodeElimination()(mutate_functions(mod, _SliceRewriter(mod)))
