"""Pass 5: prove a lowered module integer-only, or list what is still float.

Allowed float ops: ``quantize`` of a function parameter (the model input enters the integer
domain), ``dequantize`` whose result is only returned (the model output leaves it), and ops in
the declared islands (e.g. ``nn.softmax`` for transformers, later). Every other op that reads or
writes a float tensor is reported with its op name and binding var.
"""
from __future__ import annotations

import tvm
from tvm import relax

from .errors import IntegerOnlyError
from .match import _Graph, op_name


def _has_float(ty) -> bool:
    if isinstance(ty, relax.TensorType):
        return "float" in str(ty.dtype) or "bfloat" in str(ty.dtype)
    if isinstance(ty, relax.TupleType):
        return any(_has_float(f) for f in ty.fields)
    return False


def _short(name: str) -> str:
    return name.removeprefix("relax.")


def float_ops(mod: tvm.IRModule, islands=()) -> list[str]:
    """``"<func>: <var> = <op> (<dtype>)"`` for every float op outside the allowed boundary."""
    islands = {_short(i) for i in islands}
    found = []
    for gv, func in mod.functions_items():
        if not isinstance(func, relax.Function):
            continue
        g = _Graph(func)
        for b in g.bindings:
            call = b.value
            if not isinstance(call, relax.Call):
                continue
            touches = [call] + [a for a in call.args if isinstance(a, relax.Expr) and hasattr(a, "ty")]
            if not any(_has_float(e.ty) for e in touches):
                continue
            name = op_name(call) or str(call.op)
            if name == "relax.quantize" and call.args[0] in g.params:
                continue  # the model input enters the integer domain
            if name == "relax.dequantize" and g.only_returned(b.var):
                continue  # the model output leaves it
            if _short(name) in islands:
                continue
            dtype = getattr(call.ty, "dtype", "tuple")
            found.append(f"{gv.name_hint}: {b.var.name} = {_short(name)} ({dtype})")
    return found


@tvm.transform.module_pass(opt_level=0, name="tvmptq.VerifyIntegerOnly")
class VerifyIntegerOnly:
    """Raises IntegerOnlyError listing the float ops; returns the module unchanged otherwise."""

    def __init__(self, islands=()):
        self.islands = tuple(islands)

    def transform_module(self, mod: tvm.IRModule, ctx) -> tvm.IRModule:
        found = float_ops(mod, self.islands)
        if found:
            raise IntegerOnlyError(f"{len(found)} float op(s) between input quantize and output dequantize:\n  "
                                   + "\n  ".join(found))
        return mod
