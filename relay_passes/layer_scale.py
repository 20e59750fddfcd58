"""A constant per-feature scale after a linear layer (layer scale: ConvNeXt, timm) folded into it.

``multiply(gamma, [reshape](add(matmul(x, W), b)))`` -> ``[reshape](add(matmul(x, W gamma), b gamma))``,
as tvmptq/quant/edge_ops.fold_layer_scale does on the PyTorch graph, so the matcher sees the
plan's linear layer and no float multiply after it. The float values only locate the layer.
"""
from __future__ import annotations

import numpy as np
import tvm
from tvm import relax
from tvm.relax import op as R

from .match import _Graph, _is_const, op_name
from .mutate import mutate_functions


@relax.expr_functor.mutator
class _LayerScaleRewriter(relax.PyExprMutator):
    def __init__(self, mod, users):
        super().__init__(mod)
        self.users = users

    def _single(self, var) -> bool:
        return isinstance(var, relax.Var) and len(self.users.get(var, [])) == 1

    def visit_call_(self, call):
        call = super().visit_call_(call)
        if op_name(call) != "relax.multiply" or sum(_is_const(a) for a in call.args) != 1:
            return call
        gamma, v = (call.args[0], call.args[1]) if _is_const(call.args[0]) else (call.args[1], call.args[0])
        reshape = self.lookup_binding(v) if self._single(v) else None
        add_var = reshape.args[0] if op_name(reshape) == "relax.reshape" else v
        add = self.lookup_binding(add_var) if self._single(add_var) else None
        if op_name(add) != "relax.add" or sum(_is_const(a) for a in add.args) != 1:
            return call
        b_first = _is_const(add.args[0])
        bias, mm_var = (add.args[0], add.args[1]) if b_first else (add.args[1], add.args[0])
        mm = self.lookup_binding(mm_var) if self._single(mm_var) else None
        if op_name(mm) != "relax.matmul" or not _is_const(mm.args[1]) or len(mm.args[1].ty.shape) != 2:
            return call
        g, w, b = gamma.value.numpy(), mm.args[1].value.numpy(), bias.value.numpy()
        n = w.shape[1]
        if g.size != n or any(s != 1 for s in g.shape[:-1]) or b.size != n:
            return call
        g = g.reshape(-1).astype(np.float64)
        bb = self.builder_
        y = bb.emit(relax.Call(mm.op, [mm.args[0], relax.const((w * g).astype(w.dtype))], mm.attrs))
        scaled = relax.const((b.reshape(-1) * g).astype(b.dtype).reshape(b.shape))
        y = bb.emit(R.add(scaled, y) if b_first else R.add(y, scaled))
        return R.reshape(y, reshape.args[1]) if op_name(reshape) == "relax.reshape" else y


@tvm.transform.module_pass(opt_level=0, name="tvmptq.FoldLayerScale")
class FoldLayerScale:
    """``gamma * (x @ W + b)`` with constant per-feature gamma -> ``x @ (W gamma) + b gamma``."""

    def transform_module(self, mod: tvm.IRModule, ctx) -> tvm.IRModule:
        users = {v: u for gv, f in mod.functions_items() if isinstance(f, relax.Function)
                 for v, u in _Graph(f).users.items()}
        return relax.transform.DeadCodeElimination()(mutate_functions(mod, _LayerScaleRewriter(mod, users)))
