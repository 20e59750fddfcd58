"""Standalone batch norm (not after a conv: pre-activation ResNets, DenseNet) as a depthwise 1x1 conv.

Eval-mode batch norm is a per-channel affine map ``g_c x + b_c``. tvmptq/quant/graph.py rewrites
it into a depthwise 1x1 conv on the PyTorch graph, so the plan quantizes it like any conv
(per-channel integer weight, int32 bias, per-channel requantize); this pass does the same on the
Relax import, where the frontend leaves ``R.nn.batch_norm(...)[0]``, so that the matcher finds the
conv the plan names. The float values only locate the layer: the integers come from the plan.
"""
from __future__ import annotations

import numpy as np
import tvm
from tvm import relax
from tvm.relax import op as R

from .match import _is_const, op_name
from .mutate import mutate_functions


def affine_of(gamma, beta, mean, var, eps: float):
    """(scale g, shift b) of eval-mode batch norm, float32 (computed in float64)."""
    g = gamma.astype(np.float64) / np.sqrt(var.astype(np.float64) + eps)
    return g.astype(np.float32), (beta.astype(np.float64) - mean.astype(np.float64) * g).astype(np.float32)


@relax.expr_functor.mutator
class _BatchNormRewriter(relax.PyExprMutator):
    def visit_tuple_getitem_(self, item):
        item = super().visit_tuple_getitem_(item)
        bn = self.lookup_binding(item.tuple_value) if isinstance(item.tuple_value, relax.Var) else None
        if item.index != 0 or op_name(bn) != "relax.nn.batch_norm" or int(bn.attrs.axis) != 1:
            return item
        x, *params = bn.args
        if len(x.ty.shape) != 4 or not all(_is_const(p) for p in params):
            return item
        gamma, beta, mean, var = (p.value.numpy() for p in params)
        g, b = affine_of(gamma, beta, mean, var, float(bn.attrs.epsilon))
        c = g.size
        y = self.builder_.emit(R.nn.conv2d(x, relax.const(g.reshape(c, 1, 1, 1)), groups=c))
        return R.add(y, relax.const(b.reshape(1, c, 1, 1)))


@tvm.transform.module_pass(opt_level=0, name="tvmptq.BatchNormAsConv")
class BatchNormAsConv:
    """``batch_norm(x)[0]`` on NCHW with constant statistics -> depthwise 1x1 conv + bias add."""

    def transform_module(self, mod: tvm.IRModule, ctx) -> tvm.IRModule:
        return relax.transform.DeadCodeElimination()(mutate_functions(mod, _BatchNormRewriter(mod)))
