"""Pass 3: rewrite every matched layer region to integer ops.

Each region (kernel/requantized op + bias add + fused activation) becomes

    quantize(float inputs) -> integer op (int32 accumulator) -> requantize -> dequantize

so the module stays runnable, with float values between layers. Pass 4 (cancel_qdq) then
removes the dequantize -> quantize pairs so that integers flow from layer to layer. All numbers
(int weights, int32 bias, multipliers, shifts, clip bounds) come from the plan; the Relax ops
only say where each layer is and how its operands are laid out.

A layer with a declared float branch (QwT v1 compensation, ``attrs["float_branch"]``) gets it
after its integer output: a float64 island (ops in islands.FLOAT_BRANCH_OPS) that replaces the
integer output before the final dequantize, exactly as tvmptq.algorithms.qwt.branch_output.
"""
from __future__ import annotations

import numpy as np
import tvm
from tvm import relax
from tvm.relax import op as R

from tvmptq.quant.plan import QuantPlan

from .errors import LoweringError
from .integer_ops import (
    Grid,
    dequantize,
    pad_with,
    quantize,
    requantize,
    requantize_finish,
    weight_dtype,
    weight_l1,
)
from .islands import float_branch_ops
from .match import LayerMatch, _Graph, _source, match_layers
from .mutate import mutate_functions

REQUANTIZE_MODES = ("int64", "fixed_point_multiply")


@relax.expr_functor.mutator
class _LayerRewriter(relax.PyExprMutator):
    def __init__(self, mod, plan: QuantPlan, matches: list[LayerMatch], mode: str):
        super().__init__(mod)
        self.plan, self.mode = plan, mode
        self.by_output = {m.output: m for m in matches}
        self.interior = {v for m in matches for v in m.interior}
        # Plan tensor name -> the Relax value that holds it (float; quantized where it is used):
        # layer outputs, and the sources of layer operands (model inputs, float island results).
        g = _Graph(mod["main"])
        self.tensors = {name: _source(g, x) for m in matches for x, name in zip(m.inputs, m.layer.inputs)}
        self.tensors.update({m.layer.output: m.output for m in matches})
        # Float island results the plan quantizes (a pre-LN residual stream, say): every user,
        # the float ones (the next LayerNorm) included, reads the quantized value, as in the
        # simulation; the integer users' quantize(dequantize(q)) pairs cancel in CancelQDQ.
        layer_outputs = {m.layer.output for m in matches}
        params = set(mod["main"].params)
        self.quantized_islands = {v: name for name, v in self.tensors.items()
                                  if name not in layer_outputs and isinstance(v, relax.Var) and v not in params}

    def visit_var_binding_(self, binding: relax.VarBinding) -> None:
        if binding.var in self.interior:
            return  # recomputed in integers when the region's output binding is reached
        if binding.var in self.quantized_islands:
            grid = Grid.of(self.plan.tensors[self.quantized_islands[binding.var]])
            value = self.builder_.emit(self.visit_expr(binding.value))
            fake = dequantize(self.builder_.emit(quantize(value, grid)), grid)
            return super().visit_var_binding_(relax.VarBinding(binding.var, fake))
        match = self.by_output.get(binding.var)
        if match is None:
            return super().visit_var_binding_(binding)
        value = self._integer_layer(match)
        # Same float type as before, so the original var (and its users) stay valid.
        super().visit_var_binding_(relax.VarBinding(binding.var, value))

    # -- one layer -------------------------------------------------------------------------
    def _integer_layer(self, m: LayerMatch) -> relax.Expr:
        lp, bb = m.layer, self.builder_
        if lp.keep_float:
            raise LoweringError(f"layer {lp.name!r} is kept in float by the plan; float layers are not lowered yet")
        grids_in = [Grid.of(self.plan.tensors[t]) for t in lp.inputs]
        out = Grid.of(self.plan.tensors[lp.output])
        qs = [bb.emit(quantize(self.visit_expr(x), g)) for x, g in zip(m.inputs, grids_in)]
        build = getattr(self, f"_{lp.kind}", None)
        if build is None:
            raise LoweringError(f"layer {lp.name!r}: kind {lp.kind!r} is not lowered yet")
        y = build(m, qs, grids_in, out)
        if lp.attrs.get("float_branch"):
            y = self._float_branch(m, y, out)
        return dequantize(y, out)

    def _float_branch(self, m, y, out: Grid) -> relax.Expr:
        """Declared float branch (QwT v1): ``clip(round_half_even((y + W x + b) / s) + z)`` in
        float64, with y (this layer's integer output) and x (the branch's input tensor)
        dequantized in float32 as the simulation does, then widened; W a 1x1 conv with the
        block's stride on conv maps, a linear on token features. Returns the new integer output."""
        lp, bb = m.layer, self.builder_
        ops, br, a = float_branch_ops(lp), lp.attrs["float_branch"], lp.arrays
        src = self.tensors.get(br["input"])
        if src is None:
            raise LoweringError(f"layer {lp.name!r}: float branch input {br['input']!r} is not a tensor of "
                                "the matched Relax graph")
        gx = Grid.of(self.plan.tensors[br["input"]])
        qx = bb.emit(quantize(self.visit_expr(src), gx))  # cancels against x's dequantize (CancelQDQ)
        w, b = a["branch_weight"].astype(np.float64), np.asarray(a["branch_bias"], np.float64)
        shape = [int(d) for d in y.ty.shape]
        if ops[0] == "matmul" and [int(d) for d in qx.ty.shape] != shape[:-1] + [w.shape[1]]:
            qx = bb.emit(R.reshape(qx, shape[:-1] + [w.shape[1]]))  # x's rows as y's (a linear's 2-D form)
        xf = bb.emit(R.astype(bb.emit(dequantize(qx, gx)), "float64"))
        yf = bb.emit(R.astype(bb.emit(dequantize(y, out)), "float64"))
        if ops[0] == "nn.conv2d":
            s = int(br["stride"])
            comp = bb.emit(R.nn.conv2d(xf, relax.const(w[:, :, None, None], "float64"), strides=[s, s],
                                       padding=[0, 0, 0, 0], out_dtype="float64"))
            b = b.reshape(1, -1, 1, 1)
        else:
            comp = bb.emit(R.matmul(xf, relax.const(np.ascontiguousarray(w.T), "float64"), out_dtype="float64"))
        if [int(d) for d in comp.ty.shape] != shape:
            raise LoweringError(f"layer {lp.name!r}: float branch on {br['input']!r} gives shape "
                                f"{[int(d) for d in comp.ty.shape]}, the layer's output is {shape}")
        comp = bb.emit(R.add(comp, relax.const(b, "float64")))
        v = bb.emit(R.add(yf, comp))
        # The plan's scale as the simulation and the reference divide by it (float64).
        v = bb.emit(R.divide(v, relax.const(np.float64(self.plan.tensors[lp.output].scale), "float64")))
        v = bb.emit(R.round(v))  # legalizes to nearbyint: half to even, as np.round
        v = bb.emit(R.add(v, relax.const(np.float64(out.zero_point), "float64")))
        v = bb.emit(R.clip(v, float(lp.clip[0]), float(lp.clip[1])))
        return bb.emit(R.astype(v, out.dtype))

    def _input_bits(self, lp) -> str:
        """Names the wide (> 8-bit, ``QuantConfig.tensor_bits``) inputs that make an int32
        accumulator unprovable: such a layer is refused, never run in float."""
        wide = [f"{t} ({self.plan.tensors[t].bits}-bit)" for t in lp.inputs if self.plan.tensors[t].bits > 8]
        return (f"; its input tensor {', '.join(wide)} is wider than 8 bits: int32 accumulation of wide "
                "inputs is not lowered, quantize that tensor to 8 bits") if wide else ""

    def _kernel(self, m, acc, q_grid: Grid, w, out, axis):
        a = m.layer.arrays
        # sum w (q - z) + bias == sum w q + (bias - z sum w): the zero point folds into the bias.
        bias = a["bias"].astype(np.int64) - q_grid.zero_point * w.astype(np.int64).reshape(w.shape[0], -1).sum(1)
        bound = q_grid.max_abs * weight_l1(w)
        if bound >= 2 ** 31:
            raise LoweringError(f"layer {m.layer.name!r}: int32 accumulator may overflow (bound {bound:.3g})"
                                + self._input_bits(m.layer))
        return requantize(self.builder_, acc, a["multiplier"], a["shift"], out, m.layer.clip, axis=axis,
                          bias=bias, acc_bound=bound, mode=self.mode)

    def _conv2d(self, m, qs, grids, out):
        at, w, q, g = m.call.attrs, m.layer.arrays["weight"], qs[0], grids[0]
        padding = [int(p) for p in at.padding]
        if g.zero_point != 0 and any(padding):  # padded positions must hold z (real 0), not 0
            q, padding = pad_with(self.builder_, q, padding, g.zero_point), [0, 0, 0, 0]
        acc = self.builder_.emit(R.nn.conv2d(
            q, relax.const(w, weight_dtype(w)), strides=[int(s) for s in at.strides], padding=padding,
            dilation=[int(d) for d in at.dilation], groups=int(at.groups), out_dtype="int32"))
        return self._kernel(m, acc, g, w, out, axis=1)

    def _linear(self, m, qs, grids, out):
        w = m.layer.arrays["weight"]  # (out, in); matmul takes it transposed
        acc = self.builder_.emit(R.matmul(qs[0], relax.const(np.ascontiguousarray(w.T), weight_dtype(w)),
                                          out_dtype="int32"))
        return self._kernel(m, acc, grids[0], w, out, axis=len(acc.ty.shape) - 1)

    def _matmul(self, m, qs, grids, out):
        """QMatmul (activation x activation, e.g. attention): sum_k (a - za)(b - zb), requantized.

        Symmetric operands (z == 0) multiply as stored, int8 x int8 -> int32. Otherwise both are
        widened to int32 and centred first: exact and simple; the cross-term expansion
        ``ab - za*sum b - zb*sum a + K za zb`` that keeps int8 inputs is an optimisation for later."""
        bb = self.builder_
        depth = int(m.call.args[0].ty.shape[-1])
        bound = depth * grids[0].max_abs_centered * grids[1].max_abs_centered
        if bound >= 2 ** 31:
            raise LoweringError(f"layer {m.layer.name!r}: int32 accumulator may overflow (bound {bound:.3g})"
                                + self._input_bits(m.layer))
        if any(g.zero_point for g in grids) or {g.dtype for g in grids} not in ({"int8"}, {"uint8"}):
            qs = [bb.emit(R.subtract(R.astype(q, "int32"), relax.const(g.zero_point, "int32")))
                  for q, g in zip(qs, grids)]
        acc = bb.emit(R.matmul(qs[0], qs[1], out_dtype="int32"))
        a = m.layer.arrays
        return requantize(bb, acc, a["multiplier"], a["shift"], out, m.layer.clip, axis=len(acc.ty.shape) - 1,
                          acc_bound=bound, mode=self.mode)

    def _avg_pool(self, m, qs, grids, out):
        """QAvgPool: window sums as a depthwise conv with a ones kernel (int32), the input padded
        with z (the real 0), minus count * z, times s_in / (s_out * divisor)."""
        at, bb, g, lp = m.call.attrs, self.builder_, grids[0], m.layer
        padding = [int(p) for p in at.padding]
        if [int(k) for k in at.pool_size] != lp.attrs["kernel"] or [int(s) for s in at.strides] != lp.attrs["stride"]:
            raise LoweringError(f"layer {lp.name!r}: Relax {m.anchor.name} pools {list(at.pool_size)} / "
                                f"{list(at.strides)}, the plan {lp.attrs['kernel']} / {lp.attrs['stride']}")
        q = qs[0]
        kh, kw = lp.attrs["kernel"]
        shape = [int(d) for d in q.ty.shape]
        extra = [0, 0]
        if bool(at.ceil_mode):  # whole windows only (checked when planned): pad the overhang too
            for i, (n, k, s) in enumerate(zip(shape[2:], (kh, kw), lp.attrs["stride"])):
                p = lp.attrs["padding"][i]
                span = n + 2 * p - k
                o = -(-span // s) + 1
                o -= (o - 1) * s >= n + p
                extra[i] = max(0, (o - 1) * s + k - (n + 2 * p))
        if any(padding) or any(extra):
            top, left, bottom, right = padding
            q = bb.emit(R.nn.pad(q, [0, 0, 0, 0, top, bottom + extra[0], left, right + extra[1]], pad_value=g.zero_point))
        c = shape[1]
        ones = relax.const(np.ones((c, 1, kh, kw), np.int8), "int8")
        acc = bb.emit(R.nn.conv2d(q, ones, strides=lp.attrs["stride"], groups=c, out_dtype="int32"))
        count = kh * kw
        a = lp.arrays
        return requantize(bb, acc, a["multiplier"], a["shift"], out, lp.clip, bias=-count * g.zero_point,
                          acc_bound=count * g.max_abs, mode=self.mode)

    def _bilinear(self, m, qs, grids, out):
        """QBilinear: rows then columns of ``w0 (q0 - z) + w1 (q1 - z)`` (take + multiply in int32,
        the plan's integer weights), one requantize by s_in / (s_out Dh Dw)."""
        at, bb, g, lp = m.call.attrs, self.builder_, grids[0], m.layer
        mode = "align_corners" if lp.attrs["align_corners"] else "half_pixel"
        size = [int(v) for v in m.call.ty.shape][-2:]
        if str(at.coordinate_transformation_mode) != mode or size != lp.attrs["out_size"]:
            raise LoweringError(f"layer {lp.name!r}: Relax {m.anchor.name} resizes to {size} with "
                                f"{at.coordinate_transformation_mode}, the plan to {lp.attrs['out_size']} with {mode}")
        a = lp.arrays
        y = bb.emit(R.astype(qs[0], "int32"))
        if g.zero_point:
            y = bb.emit(R.subtract(y, relax.const(g.zero_point, "int32")))
        for key, axis in (("rows", 2), ("cols", 3)):
            index, weight = a[key].astype(np.int32), a[f"{key}_weight"].astype(np.int32)
            shape = (-1, 1) if axis == 2 else (-1,)
            taps = [bb.emit(R.multiply(bb.emit(R.take(y, relax.const(index[:, t]), axis=axis, mode="clip")),
                                       relax.const(weight[:, t].reshape(shape)))) for t in (0, 1)]
            y = bb.emit(R.add(taps[0], taps[1]))
        dh, dw = lp.attrs["denominators"]
        return requantize(bb, y, a["multiplier"], a["shift"], out, lp.clip, acc_bound=dh * dw * g.max_abs_centered,
                          mode=self.mode)

    def _mul(self, m, qs, grids, out):
        """QMul: (a - za)(b - zb) in int32 (|product| < 2^16 for 8-bit grids), one requantize."""
        bb = self.builder_
        bound = grids[0].max_abs_centered * grids[1].max_abs_centered
        cs = [bb.emit(R.subtract(R.astype(q, "int32"), relax.const(g.zero_point, "int32"))) if g.zero_point
              else bb.emit(R.astype(q, "int32")) for q, g in zip(qs, grids)]
        prod = bb.emit(R.multiply(cs[0], cs[1]))
        a = m.layer.arrays
        return requantize(bb, prod, a["multiplier"], a["shift"], out, m.layer.clip, axis=len(prod.ty.shape) - 1,
                          acc_bound=bound, mode=self.mode)

    def _add(self, m, qs, grids, out):
        """QAdd: (a - za) * ma + (b - zb) * mb, one shared shift (multiplier 1)."""
        a, bb = m.layer.arrays, self.builder_
        mults = [int(v) for v in a["multiplier"]]
        terms = [bb.emit(R.multiply(R.astype(q, "int64"), relax.const(mult, "int64"))) for q, mult in zip(qs, mults)]
        total = bb.emit(R.add(terms[0], terms[1]))
        offset = -sum(g.zero_point * mult for g, mult in zip(grids, mults))
        return requantize(bb, total, 1, a["shift"], out, m.layer.clip, bias=offset)

    def _cat(self, m, qs, grids, out):
        """QCat: each input rescaled to the output grid, (q - z) * mult_i, one shared shift."""
        a, bb = m.layer.arrays, self.builder_
        k = int(a["shift"][0])
        parts = []
        for q, g, mult in zip(qs, grids, (int(v) for v in a["multiplier"])):
            scaled = bb.emit(R.multiply(R.astype(q, "int64"), relax.const(mult, "int64")))
            offset = relax.const((1 << (k - 1)) - g.zero_point * mult, "int64")
            parts.append(bb.emit(R.right_shift(R.add(scaled, offset), relax.const(k, "int64"))))
        y = bb.emit(R.concat(parts, axis=int(m.call.attrs.axis)))
        return requantize_finish(bb, y, "int64", out, m.layer.clip)

    def _mul_const(self, m, qs, grids, out):
        """QMulConst: (q - z) times the constant's fixed-point multiplier s_in * c / s_out."""
        a, g = m.layer.arrays, grids[0]
        q = self.builder_.emit(R.astype(qs[0], "int32"))
        return requantize(self.builder_, q, a["multiplier"], a["shift"], out, m.layer.clip, bias=-g.zero_point,
                          acc_bound=g.max_abs, mode=self.mode)

    def _mean(self, m, qs, grids, out):
        """QMean: integer sum, minus count * z, times s_in / (s_out * count) as fixed point."""
        a, bb, g = m.layer.arrays, self.builder_, grids[0]
        axes = [int(x) for x in m.call.attrs.axis]
        shape = [int(d) for d in qs[0].ty.shape]
        count = int(np.prod([shape[x] for x in axes]))
        if count != int(m.layer.attrs["count"]):
            raise LoweringError(f"layer {m.layer.name!r}: plan averages {m.layer.attrs['count']} values, "
                                f"Relax {m.anchor.name} averages {count}")
        total = bb.emit(R.sum(R.astype(qs[0], "int32"), axis=axes, keepdims=bool(m.call.attrs.keepdims)))
        return requantize(bb, total, a["multiplier"], a["shift"], out, m.layer.clip, bias=-count * g.zero_point,
                          acc_bound=count * g.max_abs, mode=self.mode)


@tvm.transform.module_pass(opt_level=0, name="tvmptq.QuantizeLayers")
class QuantizeLayers:
    """Rewrite the plan's layers to integer ops. ``leave_float`` names layers to leave as they are
    (for debugging and for testing the integer-only check)."""

    def __init__(self, plan: QuantPlan, requantize: str = "int64", leave_float=()):
        if requantize not in REQUANTIZE_MODES:
            raise ValueError(f"requantize must be one of {REQUANTIZE_MODES}, got {requantize!r}")
        self.plan, self.mode, self.leave_float = plan, requantize, set(leave_float)

    def transform_module(self, mod: tvm.IRModule, ctx) -> tvm.IRModule:
        unknown = self.leave_float - {lp.name for lp in self.plan.layers}
        if unknown:
            raise LoweringError(f"leave_float names unknown layers: {', '.join(sorted(unknown))}")
        matches = [m for m in match_layers(mod["main"], self.plan) if m.layer.name not in self.leave_float]
        rewriter = _LayerRewriter(mod, self.plan, matches, self.mode)
        return mutate_functions(mod, rewriter)
