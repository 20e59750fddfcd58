"""Pass 1c: the plan's integer LayerNorm layers (kind "layernorm") as one integer kernel each.

The torch frontend spells every LayerNorm as one ``relax.nn.layer_norm`` binding; the program
lists its LayerNorms (integer layers and float islands) in the order the graph computes them,
so the k-th binding is the k-th LayerNorm step. Each integer one becomes

    codes -> reshape [rows, N] -> call_tir(int_layer_norm, codes, m, k, b, params) -> reshape -> dequantize

with targets/kernels/int_layernorm.py's kernel (int64 arithmetic only, parallel rows, vector
lanes). It runs after QuantizeLayers, when the LayerNorm's input is the ``dequantize`` of its
producer's codes (a layer output, or the quantize point QuantizeLayers puts on a float island
result): the kernel reads those codes directly, so a 16-bit input needs no float quantize into an
int32 container (Relax has none); otherwise the input is quantized here. The output's dequantize
cancels against the consumers' quantize (CancelQDQ). Float LayerNorms are left alone (declared
islands); MatchPlanLayers skips these layers (islands.PRELOWERED_KINDS).
"""
from __future__ import annotations

import numpy as np
import tvm
from tvm import relax
from tvm.relax import op as R

from tvmptq.quant.plan import QuantPlan

from .errors import LayerMatchError, LoweringError
from .integer_ops import Grid, dequantize, quantize
from .lookup_tables import RunRewriter
from .match import _Graph, op_name
from .mutate import mutate_functions

ATEN = "layer_norm.default"


def _layer_norm_steps(plan: QuantPlan) -> list:
    """LayerPlan (integer) or step name (float island) per LayerNorm of the program, in order."""
    layers = {lp.name: lp for lp in plan.layers}
    out = []
    for step in plan.program or []:
        if step["kind"] == "layer" and layers[step["layer"]].kind == "layernorm":
            out.append(layers[step["layer"]])
        elif step["kind"] == "op" and step["op"] == ATEN and not step.get("integer"):
            out.append(step["name"])
    return out


def find_regions(func: relax.Function, plan: QuantPlan) -> list:
    """(LayerPlan, input var, [binding]) for every integer LayerNorm."""
    g = _Graph(func)
    bindings = [b for b in g.bindings if op_name(b.value) == "relax.nn.layer_norm"]
    steps = _layer_norm_steps(plan)
    if len(bindings) != len(steps):
        raise LayerMatchError(f"the plan's program has {len(steps)} LayerNorms, the Relax module "
                              f"{len(bindings)} nn.layer_norm bindings")
    regions = []
    for lp, b in zip(steps, bindings):
        if isinstance(lp, str):
            continue
        x = b.value.args[0]
        src = g.value.get(x) if isinstance(x, relax.Var) else None
        if op_name(src) == "relax.dequantize":
            grid = Grid.of(plan.tensors[lp.inputs[0]])
            scale, zero = (float(a.value.numpy()) for a in src.args[1:3])
            if np.float32(scale) != grid.scale or int(zero) != grid.zero_point:
                raise LayerMatchError(f"integer LayerNorm {lp.name!r}: its Relax input is dequantized with "
                                      f"scale {scale}, zero point {zero}; the plan's input grid has "
                                      f"{grid.scale}, {grid.zero_point}")
            x = src.args[0]
        regions.append((lp, x, [b]))
    return regions


def _static(shape, name: str) -> list[int]:
    try:
        return [int(s) for s in shape]
    except TypeError:
        raise LoweringError(f"integer LayerNorm {name!r}: input shape {shape} is not static "
                            "(the kernel is compiled per shape)") from None


class _Kernels:
    """One PrimFunc per (rows, N, dtypes), added to the module once."""

    def __init__(self):
        self.funcs: dict[tuple, relax.GlobalVar] = {}

    def __call__(self, bb: relax.BlockBuilder, x: relax.Expr, lp, plan: QuantPlan) -> relax.Expr:
        from targets.kernels.int_layernorm import FRAC_BITS, RECIP_BITS, int_layer_norm, kernel_name
        at = lp.attrs
        if (int(at["frac_bits"]), int(at["recip_bits"])) != (FRAC_BITS, RECIP_BITS):
            raise LoweringError(f"integer LayerNorm {lp.name!r}: plan uses Q{at['frac_bits']} / 2^{at['recip_bits']}, "
                                f"the kernel Q{FRAC_BITS} / 2^{RECIP_BITS}")
        gin, gout = Grid.of(plan.tensors[lp.inputs[0]]), Grid.of(plan.tensors[lp.output])
        shape = _static(x.ty.shape, lp.name)
        n = int(at["n"])
        if shape[-1] != n:
            raise LoweringError(f"integer LayerNorm {lp.name!r}: rows of {shape[-1]}, the plan normalizes {n}")
        rows = int(np.prod(shape[:-1]))
        key = (rows, n, gin.dtype, gout.dtype)
        if key not in self.funcs:
            self.funcs[key] = bb.add_func(int_layer_norm(*key), kernel_name(*key))
        if "float" in str(x.ty.dtype):
            if gin.dtype == "int32":
                raise LoweringError(f"integer LayerNorm {lp.name!r}: its {plan.tensors[lp.inputs[0]].bits}-bit input "
                                    "is a float value here, and Relax has no quantize into int32")
            x = bb.emit(quantize(x, gin))
        elif str(x.ty.dtype) != gin.dtype:
            x = bb.emit(R.astype(x, gin.dtype))
        q2 = bb.emit(R.reshape(x, [rows, n]))
        a = lp.arrays
        const = lambda v: relax.const(np.asarray(v, np.int64).reshape(-1), "int64")  # noqa: E731
        params = [gin.zero_point, int(at["eps_term"]), gout.zero_point, int(lp.clip[0]), int(lp.clip[1])]
        y = bb.emit(relax.call_tir(self.funcs[key], [q2, const(a["multiplier"]), const(a["shift"]),
                                                      const(a["bias"]), const(params)],
                                   relax.TensorType([rows, n], gout.dtype)))
        return dequantize(bb.emit(R.reshape(y, shape)), gout)


@tvm.transform.module_pass(opt_level=0, name="tvmptq.IntegerLayerNorms")
class IntegerLayerNorms:
    """Replace each integer LayerNorm's ``nn.layer_norm`` by its integer kernel (see module doc)."""

    def __init__(self, plan: QuantPlan):
        self.plan = plan

    def transform_module(self, mod: tvm.IRModule, ctx) -> tvm.IRModule:
        if not any(lp.kind == "layernorm" for lp in self.plan.layers):
            return mod
        regions = find_regions(mod["main"], self.plan)
        return mutate_functions(mod, RunRewriter(mod, self.plan, regions, _Kernels()))
