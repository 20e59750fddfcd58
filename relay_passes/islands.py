"""Float islands: what the plan declares as float, in the vocabulary of Relax.

A plan's program lists every ATen op it leaves in float ("op" steps that are not integer data
movement): softmax, LayerNorm, GELU, the attention-mask arithmetic, the embedding gather, the
pooling head of a sentence encoder. Two passes need them in Relax terms:

* matching (``expected_anchors``): a float op such as the attention-mask ``add`` looks exactly
  like a quantizable op in Relax, so the matcher walks the program and the Relax graph side by
  side and skips the anchors the program declares float;
* verification (``plan_islands``): the Relax float ops allowed in a lowered module, counted per
  op name, so that one integer add left in float is caught even though six float mask adds are
  allowed. Declared float branches (QwT v1 compensation on a residual add, ``FLOAT_BRANCH_OPS``)
  add their float64 ops, per branch.

The tables are data: one ATen op becomes the multiset of Relax ops the torch frontend emits for
it (``linalg_vector_norm`` is abs, power, sum, power). An ATen op missing here maps to nothing,
so a Relax float op it produces is reported by the verifier instead of silently allowed.
"""
from __future__ import annotations

from collections import Counter

import numpy as np
import tvm
from tvm import relax
from tvm.relax import op as R

from tvmptq.quant.plan import LayerPlan, QuantPlan

from .errors import LoweringError
from .mutate import mutate_functions

# ATen op (program spelling) -> Relax ops (without the "relax." prefix) the frontend emits.
ATEN_TO_RELAX: dict[str, tuple[str, ...]] = {
    "add.Tensor": ("add",), "sub.Tensor": ("subtract",), "rsub.Scalar": ("subtract",),
    "mul.Tensor": ("multiply",), "div.Tensor": ("divide",),
    "softmax.int": ("nn.softmax",), "_softmax.default": ("nn.softmax",),
    "layer_norm.default": ("nn.layer_norm",), "gelu.default": ("nn.gelu",),
    "sigmoid.default": ("sigmoid",), "tanh.default": ("tanh",), "silu.default": ("nn.silu",),
    "hardswish.default": ("nn.hardswish",), "exp.default": ("exp",), "sqrt.default": ("sqrt",),
    "rsqrt.default": ("rsqrt",), "pow.Tensor_Scalar": ("power",),
    "embedding.default": ("take",), "to.dtype": ("astype",), "_to_copy.default": ("astype",),
    "type_as.default": ("astype",), "sum.dim_IntList": ("sum",), "mean.dim": ("mean",),
    "clamp.default": ("clip",), "clamp_min.default": ("clip",), "clamp_max.default": ("clip",),
    "linalg_vector_norm.default": ("abs", "power", "sum", "power"),
    "where.self": ("where",), "amax.default": ("max",),
    "log_softmax.int": ("nn.log_softmax",), "_log_softmax.default": ("nn.log_softmax",),
}
# ATen op (program spelling; "+" joins a fused pair) -> the Relax ops the torch frontend emits.
UNARY_SIGNATURES: dict[str, tuple[str, ...]] = {
    "sigmoid.default": ("sigmoid",),
    "tanh.default": ("tanh",),
    "silu.default": ("sigmoid", "multiply"),
    "sigmoid.default+mul.Tensor": ("sigmoid", "multiply"),
    "hardswish.default": ("add", "clip", "clip", "multiply", "divide"),
    "hardsigmoid.default": ("add", "clip", "clip", "divide"),
    "gelu.default": ("nn.gelu",),
    "gelu.default+erf": ("divide", "erf", "add", "multiply", "multiply"),  # ONNX before opset 20
    "mish.default": ("exp", "add", "log", "greater", "where", "tanh", "multiply"),
    "elu.default": ("exp", "subtract", "nn.relu", "multiply", "nn.relu", "add"),
    "leaky_relu.default": ("nn.leakyrelu",),
    "leaky_relu_.default": ("nn.leakyrelu",),
    "relu.default": ("nn.relu",),
    "relu_.default": ("nn.relu",),
    "hardtanh.default": ("clip",),
    "hardtanh_.default": ("clip",),
    "clamp.default": ("clip",),
    "clamp_min.default": ("clip",),
    "clamp_max.default": ("clip",),
}
# The same runs are what the islands compute with lookup tables off.
ATEN_TO_RELAX.update({op: ops for op, ops in UNARY_SIGNATURES.items() if "+" not in op})
# Float steps whose Relax spelling holds ops that look like quantizable anchors (hardswish's divide
# by 6 looks like a constant multiply): the matcher skips them as it skips the step itself.
ISLAND_ANCHOR_KINDS = {"hardswish.default": ("mul", "mul_const"), "hardsigmoid.default": ("mul_const",),
                       "elu.default": ("add",), "silu.default": ("mul",), "mish.default": ("mul",)}
# Relax ops that only move or copy float elements: allowed around islands (no arithmetic).
FLOAT_MOVEMENT = {"reshape", "permute_dims", "expand_dims", "squeeze", "broadcast_to", "flatten",
                  "strided_slice", "concat", "split"}


def _is_value(arg) -> bool:
    return isinstance(arg, dict) and "value" in arg


def _is_number_or_const(arg) -> bool:
    return isinstance(arg, (int, float)) and not isinstance(arg, bool) or (isinstance(arg, dict) and "const" in arg)


def float_step_anchor_kind(step: dict) -> str | None:
    """The anchor kind (see match.anchor_key) a float program op shows as in Relax, if any."""
    op, args = step["op"], step.get("args") or []
    if op == "add.Tensor" and len(args) >= 2 and _is_value(args[0]) and _is_value(args[1]):
        return "add"
    if op in ("mul.Tensor", "div.Tensor") and len(args) >= 2 and _is_value(args[0]) and _is_number_or_const(args[1]):
        return "mul_const"
    if op == "mul.Tensor" and len(args) >= 2 and _is_value(args[0]) and _is_value(args[1]):
        return "mul"  # a float product (e.g. a pooling mask): in Relax a multiply of two values
    if op in ("matmul.default", "bmm.default", "mm.default") and all(_is_value(a) for a in args[:2]):
        return "matmul"
    if op in ("mean.dim", "adaptive_avg_pool2d.default"):
        return "mean"
    if op == "avg_pool2d.default":
        return "avg_pool"
    if op == "cat.default":
        return "cat"
    return None


# Layer kinds rewritten before matching (lookup_tables.LookupTables): no anchor in the Relax graph.
PRELOWERED_KINDS = {"lut", "prelu", "layernorm"}  # prelu: prelu.PReLUs; layernorm: int_layernorm.IntegerLayerNorms


def expected_anchors(plan: QuantPlan) -> list[tuple[str, LayerPlan | str]]:
    """Relax anchors the program predicts, in order: ``(kind, LayerPlan)`` for an integer layer,
    ``(kind, step name)`` for a float op that looks like one. Plans without a program: layers."""
    if not plan.program:
        return [(lp.kind, lp) for lp in plan.layers]
    layers = {lp.name: lp for lp in plan.layers}
    expected = []
    for step in plan.program:
        if step["kind"] == "layer":
            lp = layers[step["layer"]]
            if lp.kind not in PRELOWERED_KINDS:
                expected.append((lp.kind, lp))
        elif step["kind"] == "op" and not step.get("integer"):
            for kind in ISLAND_ANCHOR_KINDS.get(step["op"], (float_step_anchor_kind(step),)):
                if kind is not None:
                    expected.append((kind, step["name"]))
    return expected


# Declared float branch (layer attrs["float_branch"]: kind, features) -> the Relax float ops
# QuantizeLayers emits for one branch, in order: W x (1x1 conv with the block's stride, or a
# linear), + b, + y, / s, round (half to even), + z, clip, cast to the output container; all in
# float64. Not listed because verify.py allows them anyway: the quantize/dequantize at the
# branch's boundary and the float32 -> float64 casts (no arithmetic).
FLOAT_BRANCH_OPS: dict[tuple[str, str], tuple[str, ...]] = {
    ("qwt_v1", "conv1x1"): ("nn.conv2d", "add", "add", "divide", "round", "add", "clip", "astype"),
    ("qwt_v1", "linear"): ("matmul", "add", "add", "divide", "round", "add", "clip", "astype"),
}


def float_branch_key(lp: LayerPlan) -> tuple:
    br = lp.attrs["float_branch"]
    return br.get("kind"), br.get("features")


def float_branch_ops(lp: LayerPlan) -> tuple[str, ...]:
    """The Relax float ops of layer ``lp``'s declared float branch (empty without one)."""
    if not lp.attrs.get("float_branch"):
        return ()
    if float_branch_key(lp) not in FLOAT_BRANCH_OPS:
        kind, features = float_branch_key(lp)
        raise LoweringError(f"layer {lp.name!r} has a float branch of kind {kind!r} (features {features!r}) "
                            f"that the Relax lowering does not know")
    return FLOAT_BRANCH_OPS[float_branch_key(lp)]


def branch_islands(plan: QuantPlan) -> Counter:
    """Relax float ops of the plan's declared float branches, counted per op name."""
    counts = Counter()
    for lp in plan.layers:
        counts.update(float_branch_ops(lp))
    return counts


def plan_islands(plan: QuantPlan, branches: bool = True) -> Counter:
    """Relax float ops the plan declares, counted per op name: its program's float ops (see
    ATEN_TO_RELAX) and, with ``branches``, its float branches (see FLOAT_BRANCH_OPS)."""
    counts = Counter()
    # integer islands (relay_passes/int_softmax.py): the softmax and its mask add become integer
    # ops; a masked one keeps one float compare of the mask
    islands = [s["integer_island"] for s in plan.program or [] if s.get("integer_island")]
    integer = {s["name"] for s in plan.program or [] if s.get("integer_island")} | \
        {i["mask_step"] for i in islands if i.get("mask_step")}
    counts.update({"greater": sum(1 for i in islands if i.get("mask_step"))} if islands else {})
    for step in plan.program or []:
        if step["kind"] == "op" and not step.get("integer") and step["name"] not in integer:
            counts.update(ATEN_TO_RELAX.get(step["op"], ()))
    if branches:
        counts.update(branch_islands(plan))
    return counts


# Island ops whose TVM float32 kernels are visibly less accurate than PyTorch's (TVM's layer_norm
# is off by ~3e-5 on MiniLM's residual stream where torch is off by ~1e-6): a value near a
# rounding boundary then quantizes differently, and a transformer amplifies that one-LSB
# difference layer after layer. Computing them in float64 and rounding once to float32 makes
# the island match PyTorch's to float32 rounding, as the NumPy reference does.
PRECISE_ISLAND_OPS = {"relax.nn.layer_norm", "relax.nn.softmax", "relax.nn.gelu", "relax.nn.log_softmax"}


@relax.expr_functor.mutator
class _Float64Islands(relax.PyExprMutator):
    def visit_call_(self, call):
        call = super().visit_call_(call)
        if not (isinstance(call.op, tvm.ir.Op) and call.op.name in PRECISE_ISLAND_OPS
                and str(call.ty.dtype) == "float32"):
            return call
        args = [self._f64(a) for a in call.args]
        if call.op.name == "relax.nn.layer_norm":  # TOPI's layer_norm is float32/16 only
            y = self._layer_norm(*args, [int(a) for a in call.attrs.axes], float(call.attrs.epsilon))
        else:
            y = self.builder_.emit(relax.Call(call.op, args, call.attrs))
        return R.astype(y, "float32")

    def _layer_norm(self, x, gamma, beta, axes, eps):
        """Two-pass LayerNorm: mean, then the mean of squared deviations (no E[x^2] - E[x]^2)."""
        bb = self.builder_
        centered = bb.emit(R.subtract(x, R.mean(x, axes, keepdims=True)))
        var = bb.emit(R.mean(R.multiply(centered, centered), axes, keepdims=True))
        normed = bb.emit(R.divide(centered, R.sqrt(R.add(var, relax.const(eps, "float64")))))
        return bb.emit(R.add(R.multiply(normed, gamma), beta))

    def _f64(self, arg):
        if isinstance(arg, tvm.ir.expr.Constant):
            return relax.const(arg.value.numpy().astype(np.float64), "float64")
        return self.builder_.emit(R.astype(arg, "float64"))


@tvm.transform.module_pass(opt_level=0, name="tvmptq.Float64Islands")
class Float64Islands:
    """Compute LayerNorm, softmax and GELU islands in float64, results rounded to float32.

    Runs after VerifyIntegerOnly: it only changes how declared islands compute (LayerNorm is
    decomposed into float64 mean/subtract/... since TOPI has no float64 LayerNorm)."""

    def transform_module(self, mod: tvm.IRModule, ctx) -> tvm.IRModule:
        mutator = _Float64Islands(mod)
        return mutate_functions(mod, mutator)
