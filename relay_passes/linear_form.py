"""Part of pass 1: linear layers in the form the matcher expects, ``matmul(x, W) + b``.

Relax's importer broadcasts the weight of ``nn.MultiheadAttention``'s input projection to the
leading dims of its (L, N, E) input, folded into a 3-D constant of identical slices;
``UnbroadcastWeights`` puts the 2-D matrix back (the same product by broadcasting).

ONNX files spell a linear layer on tokens as MatMul then Add (bias first). Imported through
onnx2torch and torch.export, the 3-D matmul becomes ``reshape(matmul(x2d, W))`` and the bias is
added after the reshape. ``BiasBeforeReshape`` moves such a bias add in front of the reshape when
the bias is a vector over the output features and the reshape keeps them last: the same values,
and the region (matmul + bias add) reads as the PyTorch import's ``linear`` does.
"""
from __future__ import annotations

import tvm
from tvm import relax
from tvm.relax import op as R
from tvm.relax.dpl import is_const, is_op, rewrite_call, wildcard
import numpy as np



def _last_dim(expr) -> int | None:
    try:
        return int(expr.ty.shape[-1])
    except (TypeError, AttributeError, IndexError):
        return None


def bias_before_reshape(func: relax.Function) -> relax.Function:
    mm = is_op("relax.matmul")(wildcard(), is_const())
    reshaped = is_op("relax.reshape")(mm, wildcard())
    bias = is_const()
    pattern = is_op("relax.add")(bias, reshaped) | is_op("relax.add")(reshaped, bias)

    def rewriter(call, m):
        b, y, r = m[bias], m[mm], m[reshaped]
        features = _last_dim(y)
        shape = [int(d) for d in b.ty.shape]
        if features is None or _last_dim(r) != features or shape != [features]:
            return call
        return R.reshape(R.add(y, b), r.args[1])
    return rewrite_call(pattern, rewriter, func)


@tvm.transform.module_pass(opt_level=0, name="tvmptq.BiasBeforeReshape")
class BiasBeforeReshape:
    """``add(b, reshape(matmul(x, W)))`` -> ``reshape(add(matmul(x, W), b))`` for a bias vector."""

    def transform_module(self, mod: tvm.IRModule, ctx) -> tvm.IRModule:
        mod = mod.clone()
        for gv, func in mod.functions_items():
            if isinstance(func, relax.Function):
                mod[gv] = bias_before_reshape(func)
        return mod


def unbroadcast_weights(func: relax.Function) -> relax.Function:
    weight = is_const()
    pattern = is_op("relax.matmul")(wildcard(), weight)

    def rewriter(call, m):
        w = m[weight].value.numpy()
        if w.ndim <= 2:
            return call
        flat = w.reshape(-1, *w.shape[-2:])
        if not (flat == flat[:1]).all():
            return call  # a genuinely batched constant
        return R.matmul(call.args[0], relax.const(flat[0], str(m[weight].ty.dtype)), out_dtype=call.attrs.out_dtype)
    return rewrite_call(pattern, rewriter, func)


@tvm.transform.module_pass(opt_level=0, name="tvmptq.UnbroadcastWeights")
class UnbroadcastWeights:
    """``matmul(x, W)`` with W a constant of identical leading slices -> ``matmul(x, W[0])``."""

    def transform_module(self, mod: tvm.IRModule, ctx) -> tvm.IRModule:
        mod = mod.clone()
        for gv, func in mod.functions_items():
            if isinstance(func, relax.Function):
                mod[gv] = unbroadcast_weights(func)
        return mod
