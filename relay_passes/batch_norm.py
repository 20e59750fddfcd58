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

from .match import _Graph, _is_const, op_name
from .mutate import mutate_functions


def affine_of(gamma, beta, mean, var, eps: float):
    """(scale g, shift b) of eval-mode batch norm, float32 (computed in float64)."""
    g = gamma.astype(np.float64) / np.sqrt(var.astype(np.float64) + eps)
    return g.astype(np.float32), (beta.astype(np.float64) - mean.astype(np.float64) * g).astype(np.float32)


@relax.expr_functor.mutator
class _BatchNormRewriter(relax.PyExprMutator):
    def __init__(self, mod, users):
        super().__init__(mod)
        self.users = users  # var -> its users in the input function (a fold needs the only use)

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
        folded = self._fold_into_biased_conv(x, g, b)
        if folded is not None:
            return folded
        y = self.builder_.emit(R.nn.conv2d(x, relax.const(g.reshape(c, 1, 1, 1)), groups=c))
        return R.add(y, relax.const(b.reshape(1, c, 1, 1)))


    def _fold_into_biased_conv(self, x, g, b):
        """``conv2d + const bias`` -> batch norm: FoldBatchnormToConv2D only folds a conv feeding the
        batch norm directly, graph.fold_batch_norm folds this one too: fold it here as well."""
        add = self.lookup_binding(x) if isinstance(x, relax.Var) else None
        if op_name(add) != "relax.add" or not _is_const(add.args[1]) or len(self.users.get(x, [])) != 1 \
                or len(self.users.get(add.args[0], [])) != 1:
            return None
        conv = self.lookup_binding(add.args[0]) if isinstance(add.args[0], relax.Var) else None
        if op_name(conv) != "relax.nn.conv2d" or not _is_const(conv.args[1]):
            return None
        w = conv.args[1].value.numpy()
        if w.shape[0] != g.size:
            return None
        bias = add.args[1].value.numpy().reshape(-1)
        new_w = relax.const((w * g.reshape(-1, 1, 1, 1)).astype(np.float32))
        y = self.builder_.emit(relax.Call(conv.op, [conv.args[0], new_w], conv.attrs))
        return R.add(y, relax.const((bias * g + b).astype(np.float32).reshape(1, -1, 1, 1)))


@tvm.transform.module_pass(opt_level=0, name="tvmptq.BatchNormAsConv")
class BatchNormAsConv:
    """``batch_norm(x)[0]`` on NCHW with constant statistics -> depthwise 1x1 conv + bias add."""

    def transform_module(self, mod: tvm.IRModule, ctx) -> tvm.IRModule:
        users = {v: u for gv, f in mod.functions_items() if isinstance(f, relax.Function)
                 for v, u in _Graph(f).users.items()}
        return relax.transform.DeadCodeElimination()(mutate_functions(mod, _BatchNormRewriter(mod, users)))
