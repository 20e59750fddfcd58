"""Part of pass 1: a linear layer's bias add next to its matmul, as the matcher expects it.

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
