"""Pass 5: prove a lowered module integer-only, or list what is still float.

Allowed float ops:
* ``quantize`` of a function parameter or of an island's result (a value enters the integer
  domain), never of a ``dequantize`` (that would be a float round trip between integer layers);
* ``dequantize`` whose result is returned or feeds islands (a value leaves the integer domain);
* the declared islands: a Counter of Relax op names (from ``islands.plan_islands``, e.g. six
  ``nn.softmax`` and six mask ``add`` for MiniLM, plus the float64 ops of each declared float
  branch), or a plain list of names, each unlimited;
* float data movement (reshape, permute, ...), which computes nothing.
Every other float op is reported with its op name and binding var; when an island op occurs
more often than declared, all its bindings are listed, since the extra one cannot be told apart.
"""
from __future__ import annotations

from collections import Counter

import tvm
from tvm import relax

from .errors import IntegerOnlyError
from .islands import FLOAT_MOVEMENT
from .match import _Graph, op_name


def _has_float(ty) -> bool:
    if isinstance(ty, relax.TensorType):
        return "float" in str(ty.dtype) or "bfloat" in str(ty.dtype)
    if isinstance(ty, relax.TupleType):
        return any(_has_float(f) for f in ty.fields)
    return False


def _short(name: str) -> str:
    return name.removeprefix("relax.")


def _through_movement(g: _Graph, expr):
    while isinstance(expr, relax.Var) and _short(op_name(g.value.get(expr))) in FLOAT_MOVEMENT:
        expr = g.value[expr].args[0]
    return expr


def float_ops(mod: tvm.IRModule, islands=()) -> list[str]:
    """``"<func>: <var> = <op> (<dtype>)"`` for every float op outside the allowed boundary."""
    if isinstance(islands, (dict, Counter)):
        allowed = Counter({_short(k): v for k, v in islands.items()})
    else:
        allowed = Counter({_short(k): float("inf") for k in islands})
    found = []
    for gv, func in mod.functions_items():
        if not isinstance(func, relax.Function):
            continue
        g = _Graph(func)
        seen: dict[str, list[str]] = {}
        for b in g.bindings:
            call = b.value
            if not isinstance(call, relax.Call):
                continue
            touches = [call] + [a for a in call.args if isinstance(a, relax.Expr) and hasattr(a, "ty")]
            if not any(_has_float(e.ty) for e in touches):
                continue
            name = _short(op_name(call) or str(call.op))
            line = f"{gv.name_hint}: {b.var.name} = {name} ({getattr(call.ty, 'dtype', 'tuple')})"
            if name in FLOAT_MOVEMENT:
                continue
            if name == "quantize":
                src = _through_movement(g, call.args[0])
                if src in g.params or (isinstance(src, relax.Var) and op_name(g.value.get(src)) != "relax.dequantize"):
                    continue  # a model input or an island result enters the integer domain
                found.append(line + " <- dequantize: float round trip")
                continue
            if name == "astype" and all(_has_float(e.ty) for e in touches):
                continue  # float32 <-> float64 around an island or float branch: no arithmetic
            if name == "dequantize":
                continue  # leaving the integer domain; what it feeds is checked op by op
            seen.setdefault(name, []).append(line)
        for name, lines in seen.items():
            if len(lines) <= allowed.get(name, 0):
                continue
            if allowed.get(name, 0):
                found.append(f"{gv.name_hint}: {len(lines)} float {name} ops, {allowed[name]} declared as islands:")
            found.extend(lines)
    return found


@tvm.transform.module_pass(opt_level=0, name="tvmptq.VerifyIntegerOnly")
class VerifyIntegerOnly:
    """Raises IntegerOnlyError listing the float ops; returns the module unchanged otherwise."""

    def __init__(self, islands=()):
        self.islands = islands if isinstance(islands, dict) else tuple(islands)

    def transform_module(self, mod: tvm.IRModule, ctx) -> tvm.IRModule:
        found = float_ops(mod, self.islands)
        if found:
            raise IntegerOnlyError(f"{len(found)} float op(s) between input quantize and output dequantize:\n  "
                                   + "\n  ".join(found))
        return mod
