"""Export a plan as a QDQ ONNX model, so that ONNX Runtime runs tvmptq's quantization.

The graph is built by walking ``plan.program`` (see :mod:`tvmptq.quant.program`); nothing is
re-calibrated or re-derived: every scale, zero point, integer weight and integer bias is the plan's.

    model input --QuantizeLinear(s, z)--> q --DequantizeLinear--> float op --[Relu]--> QuantizeLinear
    (output tensor's s, z) --> q --DequantizeLinear--> next op ...

Layers (``plan.layers``):
  conv2d   Conv on DequantizeLinear(int8 weight, per-channel scale, axis 0) and
           DequantizeLinear(int32 bias, scale s_x * s_w[c], axis 0): the float bias is bias_int * s_x * s_w.
  linear   Gemm(transB=1) on a 2-D input (weight (O, K), DQ axis 0); MatMul (weight stored (K, O),
           DQ axis 1) + Add for inputs of higher rank.
  matmul   MatMul of two dequantized activations (Transpose of the second for transpose_b).
  add      Add;  mean  GlobalAveragePool (dims H, W, keepdim) or ReduceMean;  mul_const  Mul by the
           constant factor;  cat  Concat.
  A layer kept in float (``keep_float``) uses its float weight and bias initializers directly.
Integer data movement steps (flatten, view/reshape, permute/transpose, pad, max_pool2d, ...) run on
the dequantized values and are followed by QuantizeLinear/DequantizeLinear with the same
parameters, which is exact (the values stay on the grid; zero padding is the real value 0, i.e.
the zero point). Slice/select on integers are Slice/Gather, likewise exact.

Rank-3 linears (``linear_3d``). "gemm" (default): Reshape of the integer input to (N, K), Gemm with the
int32 bias, QuantizeLinear, Reshape of the integer output back to (..., O): ORT fuses the group into
QGemm (requantize inside the kernel). "matmul": MatMul + Add(bias) on the rank-3 tensor; ORT makes
the MatMul a MatMulIntegerToFloat and adds the bias in float before the QuantizeLinear (MiniLM batch 1,
1 thread: ~37 ms vs ~17 ms for "gemm"). ``mul_const`` multiplies by DequantizeLinear(1, scale
|factor|) -- the same float32 factor -- so that ORT fuses it into QLinearMul.

Float islands and auxiliary ops (``integer`` false in the program: MiniLM's embedding gather and
position adds, attention-mask arithmetic, mask add + softmax, LayerNorm, GELU, mean pooling, L2
normalize) become plain ONNX float ops on DequantizeLinear outputs, with ATen's semantics as
tvmptq/reference/ops.py executes them: embedding -> Gather; add/sub/rsub/mul/div -> Add/Sub/Mul/Div
(ATen type promotion: float tensors, then a Python float -> float32, then integer tensors);
layer_norm -> LayerNormalization; softmax -> Softmax; gelu -> Gelu (opset >= 20) or
0.5 x (1 + Erf(x / sqrt 2)); to/_to_copy/type_as -> Cast; sum/mean/amax -> ReduceSum/Mean/Max;
linalg_vector_norm -> ReduceL2/L1; clamp* -> Clip; unsqueeze -> Unsqueeze; expand_as -> Expand of
Shape; where/masked_fill -> Where; exp, sqrt, rsqrt, tanh, sigmoid, silu, hardswish, pow, relu,
*_like, arange, cat, max.dim, getitem, adaptive_avg_pool2d (1x1). Constants (``const/<key>``) are
initializers. Any other op raises NotImplementedError naming the op and its program step.
A quantize step is QuantizeLinear of the island's float output (ORT's own float, so island outputs
may differ from PyTorch's by float32 rounding, and a value near a grid midpoint may land one LSB off).

Batch. ``batch=None`` writes a dynamic batch (input dim "batch"): ``sym_size.int`` becomes
Shape(x, start=d, end=d+1) and the reshapes that use it Concat it with their literal sizes; other
shape-changing ops use a shape with the one batch-dependent dimension as -1 (found by running the
NumPy reference on zeros at batches 2 and 3); a shape that cannot be written so is refused. An int
``batch`` writes static shapes (shapes and symbolic sizes evaluated at that batch).

Fused activations and grids narrower than the container. A layer's output is
``clip(requantize(acc) + z, lo, hi)`` with ``(lo, hi) = layer.clip``. A Relu is put before the
QuantizeLinear where it is the canonical QDQ pattern, i.e. redundant with the Q's saturation
(zero point = container minimum): ORT folds it into its integer kernel. Any bound that the Q's
container does not already enforce -- ReLU6 below the observed range, a relu with a zero point above
the container minimum, and every grid narrower than 8 bits -- is applied *after* the Q as
DequantizeLinear -> Clip(float bounds (lo - z) * s, (hi - z) * s) -> QuantizeLinear (same s, z).
That is exact (the Clip sees grid values, its bounds are grid values) and keeps the
DQ -> op -> Q group intact, so ORT still fuses it into QLinearConv / QGemm / QLinearAdd.

Bits < 8 (``low_bit``):
  "clip" (default)  8-bit containers (uint8/int8 activations, int8 weights) and the narrower grid by
                    the post-Q Clip above. ORT 1.32 loads it and keeps its integer fusions
                    (QLinearConv, QGemm, QLinearAdd, QLinearConcat, QLinearGlobalAveragePool).
  "int4"            UINT4/INT4 QuantizeLinear/DequantizeLinear (ONNX opset 21) for 4-bit (and
                    narrower) activations and weights: the container is the grid. ORT 1.32 runs the
                    digits ResNet this way but fuses nothing (Conv/Gemm/Add in float on dequantized
                    values), and refuses graphs with a MaxPool after a 4-bit DQ (its QDQ
                    propagation leaves a MaxPool on uint4). Clips on 4-bit containers are Max/Min:
                    ORT mishandles Relu/Clip -> 4-bit QuantizeLinear (see the tests).

ONNX Runtime 1.32 facts this module works around or reports (tests/test_qdq_export.py):
  - Pad's opset-18 ``axes`` input is mis-permuted by ORT's NHWC layout transform (wrong Gather,
    runtime error): pads are written for every dimension instead.
  - With symmetric (int8) activations, a Q feeding several consumers (a residual branch) is not
    converted to uint8, so the Convs reading it stay float Conv (still exact up to the rounding
    caveat below); asymmetric uint8 activations fuse everywhere.
  - Opsets 18, 19, 20 and 21 all load and give the same outputs for 8-bit models.

Rounding. QuantizeLinear rounds half to even like tvmptq's float-to-int, so the input quantization
is bit-exact. tvmptq's requantize is the integer ``(acc * m + 2^(k-1)) >> k`` (round half up);
ONNX Runtime's fused kernels (QLinearConv, QGemm, QLinearAdd, QLinearGlobalAveragePool) requantize
with float multipliers and round half to even, and unfused ops compute in float32: outputs differ
from tvmptq's integer program by one step of the grid in rare elements (measured in the tests).
Exact ties are not rare where a layer's real multiplier is a power of two (``x * 0.5`` on an
unchanged scale): there round half up and half to even disagree on every odd input.

MiniLM W8A8 (minmax, 8 calibration sentences; tests/test_qdq_export.py, 8 evaluation sentences):
ORT 1.32 runs all 66 integer layers as integer kernels (36 QGemm, 12 QLinearMatMul, 12 QLinearAdd,
6 QLinearMul) and only the islands in float. Before the attention softmax, ORT's integer tensors
differ from the NumPy reference's by one LSB in ~1e-6..1e-4 of the elements (rounding ties); one
LSB of the attention-score grid (~0.66) is a factor ~1.9 inside softmax (up to 11 LSB of the
softmax output), so a flipped tie there moves the rest of that sentence: 6 of 8 sentences come out
identical (cosine 1.0000), two at cosine 0.961 / 0.931 (max |diff| 0.065 on the unit-norm
embedding). Against FP32 ORT is as good as the simulation (mean cosine 0.8739 vs 0.8736).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

QDQ_OPSET = 21
_IR_VERSION = {18: 8, 19: 9, 20: 9, 21: 10}

# name, elem type, grid range, first opset whose QuantizeLinear/DequantizeLinear accept it
_CONTAINERS = {
    "uint4": (TensorProto.UINT4, 0, 15, 21),
    "int4": (TensorProto.INT4, -8, 7, 21),
    "uint8": (TensorProto.UINT8, 0, 255, 13),
    "int8": (TensorProto.INT8, -128, 127, 13),
    "uint16": (TensorProto.UINT16, 0, 65535, 21),
    "int16": (TensorProto.INT16, -32768, 32767, 21),
}
_ONNX_INPUT_TYPES = {"float32": TensorProto.FLOAT, "float64": TensorProto.DOUBLE,
                     "float16": TensorProto.FLOAT16, "int64": TensorProto.INT64,
                     "int32": TensorProto.INT32, "uint8": TensorProto.UINT8, "bool": TensorProto.BOOL}
LOW_BIT_MODES = ("clip", "int4")
LINEAR_3D_FORMS = ("gemm", "matmul")

# Data movement that changes nothing: the value is aliased, no node is written.
_IDENTITY_OPS = {"contiguous.default", "clone.default", "alias.default", "detach.default",
                 "dropout.default", "lift_fresh_copy.default"}
# Data movement written as Reshape to the step's static output shape.
_RESHAPE_OPS = {"view.default", "reshape.default", "_unsafe_view.default", "unflatten.int",
                "squeeze.dim", "squeeze.dims", "squeeze.default", "unsqueeze.default"}
_MOVEMENT_OPS = _IDENTITY_OPS | _RESHAPE_OPS | {
    "flatten.using_ints", "expand.default", "permute.default", "transpose.int", "t.default",
    "slice.Tensor", "select.int", "pad.default", "constant_pad_nd.default", "max_pool2d.default"}
# Steps that compute nothing the graph needs.
_NO_OPS = {"_assert_tensor_metadata.default"}
_INT64_MAX = 2 ** 63 - 1
_ONNX_TYPES = {"float32": TensorProto.FLOAT, "float64": TensorProto.DOUBLE, "float16": TensorProto.FLOAT16,
               "bfloat16": TensorProto.BFLOAT16, "int64": TensorProto.INT64, "int32": TensorProto.INT32,
               "int16": TensorProto.INT16, "int8": TensorProto.INT8, "uint8": TensorProto.UINT8,
               "bool": TensorProto.BOOL}


def _onnx_type(dtype: str) -> int:
    if str(dtype) not in _ONNX_TYPES:
        raise NotImplementedError(f"dtype {dtype!r} has no ONNX tensor type here")
    return _ONNX_TYPES[str(dtype)]


@dataclass(frozen=True)
class _Int:
    """An integer value of the program: the QuantizeLinear output ``name`` with params ``t``."""

    name: str
    t: object          # TensorQuant
    container: str
    rank: int


@dataclass(frozen=True)
class _Float:
    """A float tensor (float-island value, model input, auxiliary tensor; ``dtype`` may be an
    integer or bool type for masks and indices)."""

    name: str
    rank: int
    dtype: str = "float32"


@dataclass(frozen=True, eq=False)
class _Dim:
    """A symbolic size (``sym_size.int``) of a dynamic-batch export: dimension ``dim`` of ``src``."""

    src: object        # _Int | _Float
    dim: int


@dataclass(frozen=True)
class _Const:
    """A constant of the program, ``plan.constants[key]`` (an initializer once used)."""

    key: str


@dataclass(frozen=True)
class _DType:
    name: str


class _Builder:
    def __init__(self, plan, batch: int | None, low_bit: str, opset: int, linear_3d: str = "gemm"):
        self.plan, self.batch, self.low_bit, self.opset = plan, batch, low_bit, opset
        self.linear_3d = linear_3d
        self.nodes, self.inits, self.inputs, self.outputs = [], [], [], []
        self.used: set[str] = set()
        self.values: dict = {}
        self._qparams: dict = {}
        self._static: dict = {}
        self._consts: dict = {}
        self._dims: dict = {}
        self.containers_used: set[str] = set()

    # -- names, initializers, nodes --------------------------------------------------------
    def fresh(self, base: str) -> str:
        base = base.replace("/", "_")
        name, i = base, 1
        while name in self.used:
            name, i = f"{base}_{i}", i + 1
        self.used.add(name)
        return name

    def init(self, base: str, array=None, *, elem=None, dims=None, vals=None) -> str:
        name = self.fresh(base)
        if array is not None:
            self.inits.append(onnx.numpy_helper.from_array(np.asarray(array), name))
        else:
            self.inits.append(helper.make_tensor(name, elem, dims, vals))
        return name

    def node(self, op: str, inputs: list[str], base: str, **attrs) -> str:
        out = self.fresh(base)
        self.nodes.append(helper.make_node(op, inputs, [out], name=self.fresh(f"{op}_{base}"), **attrs))
        return out

    def scalar_f32(self, base: str, value: float) -> str:
        return self.init(base, np.array(value, np.float32))

    # -- quantization ----------------------------------------------------------------------
    def container(self, qmin: int, qmax: int, what: str) -> str:
        names = (["uint4", "int4"] if self.low_bit == "int4" else []) + ["uint8", "int8", "uint16", "int16"]
        for c in names:
            elem, lo, hi, opset = _CONTAINERS[c]
            if lo <= qmin and qmax <= hi:
                if opset > self.opset:
                    raise ValueError(f"{what}: grid [{qmin}, {qmax}] needs {c} QuantizeLinear, "
                                     f"which ONNX has from opset {opset} (exporting opset {self.opset})")
                return c
        raise ValueError(f"{what}: grid [{qmin}, {qmax}] fits no QuantizeLinear type")

    def qparams(self, t, c: str) -> tuple[str, str]:
        key = (t.name, c)
        if key not in self._qparams:
            elem = _CONTAINERS[c][0]
            s = self.scalar_f32(f"{t.name}_scale", t.scale)
            z = self.init(f"{t.name}_zero_point", elem=elem, dims=[], vals=[int(t.zero_point)])
            self._qparams[key] = (s, z)
        return self._qparams[key]

    def dq(self, v) -> str:
        """The float tensor of a value (a fresh DequantizeLinear per use, as QDQ consumers expect)."""
        if isinstance(v, _Float):
            return v.name
        if not isinstance(v, _Int):
            raise TypeError(f"expected a tensor value, got {type(v).__name__}")
        s, z = self.qparams(v.t, v.container)
        return self.node("DequantizeLinear", [v.name, s, z], f"{v.name}_dq")

    def q(self, x: str, t, rank: int, base: str, clip: tuple[int, int] | None = None) -> _Int:
        """QuantizeLinear with t's params, then the part of ``clip`` (default: t's grid) that the
        container does not enforce, as DQ -> Relu/Clip -> Q on grid values."""
        c = self.container(t.qmin, t.qmax, f"tensor {t.name!r}")
        self.containers_used.add(c)
        s, z = self.qparams(t, c)
        v = _Int(self.node("QuantizeLinear", [x, s, z], f"{base}_q"), t, c, rank)
        lo, hi = clip if clip is not None else (t.qmin, t.qmax)
        _, cmin, cmax, _ = _CONTAINERS[c]
        if lo > cmin or hi < cmax:
            y = self.dq(v)
            lo_f = lambda: self.scalar_f32(f"{base}_clip_min", np.float32(t.scale) * np.float32(lo - t.zero_point))  # noqa: E731
            hi_f = lambda: self.scalar_f32(f"{base}_clip_max", np.float32(t.scale) * np.float32(hi - t.zero_point))  # noqa: E731
            if c in ("uint4", "int4"):
                # ONNX Runtime 1.32's Relu/Clip -> QuantizeLinear fusions mishandle 4-bit zero points
                # (Clip: the session refuses to load; Relu before an int4 Q with z = 0: dropped, though
                # not redundant). Max/Min are not fused and compute the same clip.
                if lo > cmin:
                    y = self.node("Max", [y, lo_f()], f"{base}_max")
                if hi < cmax:
                    y = self.node("Min", [y, hi_f()], f"{base}_min")
            elif lo == t.zero_point and hi >= cmax:
                y = self.node("Relu", [y], f"{base}_relu")
            else:
                y = self.node("Clip", [y, lo_f() if lo > cmin else "", hi_f() if hi < cmax else ""],
                              f"{base}_clip")
            v = _Int(self.node("QuantizeLinear", [y, s, z], f"{base}_q"), t, c, rank)
        return v

    # -- weights ---------------------------------------------------------------------------
    def weight_dq(self, lp, w_int: np.ndarray, axis: int) -> str:
        bits = lp.weight_bits or 8
        c = "int4" if self.low_bit == "int4" and bits <= 4 else "int8"
        self.container(-(2 ** (bits - 1) - 1), 2 ** (bits - 1) - 1, f"weight of layer {lp.name!r}")
        elem = _CONTAINERS[c][0]
        scale = np.asarray(lp.arrays["weight_scale"], np.float32).reshape(-1)
        if c == "int8":
            w = self.init(f"{lp.name}_weight_quantized", w_int.astype(np.int8))
            zp = self.init(f"{lp.name}_weight_zero_point", np.zeros(scale.shape, np.int8))
        else:
            w = self.init(f"{lp.name}_weight_quantized", elem=elem, dims=list(w_int.shape),
                          vals=w_int.astype(np.int64).reshape(-1).tolist())
            zp = self.init(f"{lp.name}_weight_zero_point", elem=elem, dims=list(scale.shape),
                           vals=[0] * scale.size)
        s = self.init(f"{lp.name}_weight_scale", scale)
        return self.node("DequantizeLinear", [w, s, zp], f"{lp.name}_weight", axis=axis)

    def bias_dq(self, lp, s_x: float) -> str:
        """int32 bias on the accumulator grid s_x * s_w[c] (what ORT's QLinearConv/QGemm fusion takes)."""
        scale = np.float32(s_x) * np.asarray(lp.arrays["weight_scale"], np.float32).reshape(-1)
        b = self.init(f"{lp.name}_bias_quantized", np.asarray(lp.arrays["bias"], np.int32).reshape(-1))
        s = self.init(f"{lp.name}_bias_scale", scale.astype(np.float32))
        zp = self.init(f"{lp.name}_bias_zero_point", np.zeros(scale.shape, np.int32))
        return self.node("DequantizeLinear", [b, s, zp], f"{lp.name}_bias", axis=0)

    # -- layers ----------------------------------------------------------------------------
    def layer(self, step: dict) -> None:
        lp = self.plan.layer(step["layer"])
        ins = [self.values[n] for n in step["inputs"]]
        for name, v in zip(step["inputs"], ins):
            if not isinstance(v, _Int):
                raise TypeError(f"layer {lp.name!r}: input {name!r} is not an integer tensor")
        t = self.plan.tensors[lp.output]
        base = step["name"]
        kind, at = lp.kind, lp.attrs
        unflatten = None
        if kind == "conv2d":
            x = self.dq(ins[0])
            ph, pw = at["padding"]
            conv = dict(strides=list(at["stride"]), pads=[ph, pw, ph, pw],
                        dilations=list(at["dilation"]), group=int(at["groups"]))
            if lp.keep_float:
                w = self.init(f"{lp.name}_weight", lp.arrays["weight_float"].astype(np.float32))
                b = ([self.init(f"{lp.name}_bias", lp.arrays["bias_float"].astype(np.float32))]
                     if "bias_float" in lp.arrays else [])
                conv["kernel_shape"] = list(lp.arrays["weight_float"].shape[2:])
            else:
                w, b = self.weight_dq(lp, lp.arrays["weight"], 0), [self.bias_dq(lp, ins[0].t.scale)]
                conv["kernel_shape"] = list(lp.arrays["weight"].shape[2:])
            y, rank = self.node("Conv", [x, w] + b, f"{base}_conv", **conv), 4
        elif kind == "linear" and ins[0].rank > 2 and not lp.keep_float and self.linear_3d == "gemm":
            # (..., K) -> (N, K) on the integer tensor, Gemm (ORT: QGemm, requantize in the kernel),
            # back to (..., O) on the integer output: Reshape moves grid values, exact.
            x, k = ins[0], lp.arrays["weight"].shape[1]
            flat = _Int(self.node("Reshape", [x.name, self.ints(f"{base}_flat", [-1, k])], f"{base}_flat"),
                        x.t, x.container, 2)
            y, rank, unflatten = self._linear(lp, flat, base), 2, x
        elif kind == "linear":
            y, rank = self._linear(lp, ins[0], base), ins[0].rank
        elif kind == "matmul":
            a, b = self.dq(ins[0]), self.dq(ins[1])
            if at.get("transpose_b"):
                r = ins[1].rank
                b = self.node("Transpose", [b], f"{base}_bT",
                              perm=list(range(r - 2)) + [r - 1, r - 2])
            y, rank = self.node("MatMul", [a, b], f"{base}_matmul"), max(ins[0].rank, ins[1].rank)
        elif kind == "add":
            y = self.node("Add", [self.dq(ins[0]), self.dq(ins[1])], f"{base}_add")
            rank = max(v.rank for v in ins)
        elif kind == "mean":
            r = ins[0].rank
            dims = sorted(d % r for d in at["dims"])
            if r == 4 and dims == [2, 3] and at["keepdim"]:
                y = self.node("GlobalAveragePool", [self.dq(ins[0])], f"{base}_mean")
            else:
                axes = self.init(f"{base}_axes", np.array(dims, np.int64))
                y = self.node("ReduceMean", [self.dq(ins[0]), axes], f"{base}_mean",
                              keepdims=int(bool(at["keepdim"])))
            rank = r if at["keepdim"] else r - len(dims)
        elif kind == "mul_const":
            # The factor as DequantizeLinear(int8 +-1, scale |factor|): the same float32 factor, in the
            # DQ -> Mul <- DQ -> Q form that ORT fuses into QLinearMul.
            fac = float(at["factor"])
            ct = np.uint8 if ins[0].container == "uint8" and fac >= 0 else np.int8
            one = self.init(f"{base}_factor_quantized", np.array(1 if fac >= 0 else -1, ct))
            fs = self.scalar_f32(f"{base}_factor_scale", abs(fac))
            fz = self.init(f"{base}_factor_zero_point", np.array(0, ct))
            f = self.node("DequantizeLinear", [one, fs, fz], f"{base}_factor")
            y, rank = self.node("Mul", [self.dq(ins[0]), f], f"{base}_mul"), ins[0].rank
        elif kind == "cat":
            rank = ins[0].rank
            y = self.node("Concat", [self.dq(v) for v in ins], f"{base}_cat", axis=int(at["dim"]) % rank)
        else:
            raise NotImplementedError(f"layer kind {kind!r} (layer {lp.name!r}) has no QDQ ONNX export")
        lo, hi = lp.clip
        c = self.container(t.qmin, t.qmax, f"tensor {t.name!r}")
        if lp.activation == "relu" and lo == t.zero_point == _CONTAINERS[c][1]:
            y = self.node("Relu", [y], f"{base}_relu")  # canonical QDQ pattern; redundant with the Q
        out = self.q(y, t, rank, base, (lo, hi))
        if unflatten is not None:
            lead = self.node("Shape", [unflatten.name], f"{base}_lead", start=0, end=unflatten.rank - 1)
            shape = self.node("Concat", [lead, self.ints(f"{base}_out_features", [lp.arrays["weight"].shape[0]])],
                              f"{base}_out_shape", axis=0)
            out = _Int(self.node("Reshape", [out.name, shape], f"{base}_unflat"), out.t, out.container,
                       unflatten.rank)
        self.values[step["name"]] = out

    def _linear(self, lp, x: _Int, base: str) -> str:
        xf = self.dq(x)
        if lp.keep_float:
            w = self.init(f"{lp.name}_weight_t", np.ascontiguousarray(lp.arrays["weight_float"].T, np.float32))
            y = self.node("MatMul", [xf, w], f"{base}_matmul")
            if "bias_float" in lp.arrays:
                y = self.node("Add", [y, self.init(f"{lp.name}_bias", lp.arrays["bias_float"].astype(np.float32))],
                              f"{base}_bias")
            return y
        if x.rank == 2:
            return self.node("Gemm", [xf, self.weight_dq(lp, lp.arrays["weight"], 0),
                                      self.bias_dq(lp, x.t.scale)], f"{base}_gemm", transB=1)
        w = self.weight_dq(lp, np.ascontiguousarray(lp.arrays["weight"].T), 1)
        y = self.node("MatMul", [xf, w], f"{base}_matmul")
        return self.node("Add", [y, self.bias_dq(lp, x.t.scale)], f"{base}_bias")

    # -- op steps --------------------------------------------------------------------------
    def resolve(self, a):
        if isinstance(a, dict):
            if "value" in a:
                return self.values[a["value"]]
            if "const" in a:
                return _Const(a["const"])
            if "dtype" in a:
                return _DType(a["dtype"])
            if "symbolic" in a:
                return a  # layouts, memory formats: ignored by every op written here
            return {k: self.resolve(v) for k, v in a.items()}
        if isinstance(a, (list, tuple)):
            return [self.resolve(v) for v in a]
        return a

    def static_values(self, batch: int) -> dict:
        """The program's values on zero inputs of batch ``batch`` (shapes, symbolic sizes)."""
        if batch not in self._static:
            from ..reference import run_plan_values
            zeros = [np.zeros([batch] + list(st["shape"][1:]), st.get("dtype") or "float32")
                     for st in sorted((s for s in self.plan.program if s["kind"] == "input"),
                                      key=lambda s: s["index"])]
            self._static[batch] = run_plan_values(self.plan, *zeros, check_input_ops=False)
        return self._static[batch]

    def static_value(self, name: str):
        return self.static_values(self.batch or 2)[name]

    def op(self, step: dict) -> None:
        op, name = step["op"], step["name"]
        if op in _NO_OPS:
            self.values[name] = None
            return
        args = self.resolve(step["args"])
        kwargs = {k: self.resolve(v) for k, v in step.get("kwargs", {}).items()}
        tensors = [a for a in _leaves([args, kwargs]) if isinstance(a, (_Int, _Float))]
        src = args[0] if args else None
        movement = op in _MOVEMENT_OPS and len(tensors) == 1 and src is tensors[0]
        if step.get("integer"):
            if not (movement and isinstance(src, _Int)):
                raise NotImplementedError(f"integer data movement op {op!r} (step {name!r}) has no "
                                          "QDQ ONNX export")
            y, rank = self._movement(op, self.dq(src), src.rank, args[1:], kwargs, name)
            # data movement keeps the grid: re-quantize with the same parameters, exact, no Clip
            self.values[name] = (src if y is None else
                                 self.q(y, src.t, rank, name, clip=_container_range(src.container)))
            return
        if movement:  # on a float tensor (a model input, a float-island value)
            y, rank = self._movement(op, self.tensor(src), src.rank, args[1:], kwargs, name)
            self.values[name] = src if y is None else _Float(y, rank, self.dtype_of(src))
            return
        fn = _FLOAT_OPS.get(op)
        if fn is None:
            if not tensors and not any(isinstance(a, _Dim) for a in _leaves([args, kwargs])):
                value = self.static_value(name)  # arithmetic on literals: a constant
                if not isinstance(value, np.ndarray) and not hasattr(value, "q"):
                    self.values[name] = value
                    return
            raise NotImplementedError(f"op {op!r} (step {name!r}, a float-island or auxiliary op) has "
                                      "no QDQ ONNX export")
        self.values[name] = fn(self, name, *args, **kwargs)

    # -- values of float ops: ONNX names, dtypes, ranks ------------------------------------
    def const(self, key: str) -> str:
        if key not in self._consts:
            self._consts[key] = self.init(f"const_{key}", np.asarray(self.plan.constants[key]))
        return self._consts[key]

    def dim(self, d: "_Dim") -> str:
        """A symbolic size as a 1-D int64 tensor of one element: Shape(src, start=d, end=d+1)."""
        key = (id(d.src), d.dim)
        if key not in self._dims:
            src = d.src.name  # Shape reads the quantized tensor as well as a float one
            self._dims[key] = self.node("Shape", [src], f"{src}_dim{d.dim}", start=d.dim, end=d.dim + 1)
        return self._dims[key]

    def dtype_of(self, v) -> str | None:
        if isinstance(v, _Int):
            return "float32"
        if isinstance(v, _Float):
            return v.dtype
        if isinstance(v, _Const):
            return str(np.asarray(self.plan.constants[v.key]).dtype)
        if isinstance(v, _Dim):
            return "int64"
        return None

    def rank_of(self, v) -> int:
        if isinstance(v, (_Int, _Float)):
            return v.rank
        if isinstance(v, _Const):
            return np.ndim(self.plan.constants[v.key])
        return 0

    def result_dtype(self, *vals) -> str:
        """ATen type promotion, the common cases: float tensors win, then a Python float (float32),
        then integer tensors, then Python ints (int64)."""
        dts = [self.dtype_of(v) for v in vals if self.dtype_of(v) is not None]
        floats = [d for d in dts if np.dtype(d).kind == "f"]
        if floats:
            return str(np.result_type(*floats))
        if any(isinstance(v, float) for v in vals):
            return "float32"
        if dts:
            return str(np.result_type(*dts))
        return "bool" if all(isinstance(v, bool) for v in vals) else "int64"

    def tensor(self, v, dtype: str | None = None) -> str:
        """The ONNX name of ``v`` (a value, a constant, a symbolic size or a Python scalar), cast to
        ``dtype`` where given."""
        if isinstance(v, (_Int, _Float, _Const, _Dim)):
            have = self.dtype_of(v)
            name = (self.dq(v) if isinstance(v, _Int) else v.name if isinstance(v, _Float)
                    else self.const(v.key) if isinstance(v, _Const) else self.dim(v))
            if dtype is not None and np.dtype(dtype) != np.dtype(have):
                name = self.node("Cast", [name], f"{name}_{dtype}", to=_onnx_type(dtype))
            return name
        if isinstance(v, (bool, int, float, np.number)):
            kind = np.asarray(v).dtype.kind
            dt = dtype or ("bool" if kind == "b" else "float32" if kind == "f" else "int64")
            return self.init("scalar", np.array(v, dtype=dt))
        raise NotImplementedError(f"argument of type {type(v).__name__} where a tensor is expected")

    def ints(self, base: str, parts: list) -> str:
        """A 1-D int64 tensor from Python ints and symbolic sizes (Concat where any is symbolic)."""
        if all(isinstance(p, (int, np.integer)) for p in parts):
            return self.init(base, np.array([int(p) for p in parts], np.int64))
        pieces, run = [], []
        for p in parts:
            if isinstance(p, _Dim):
                if run:
                    pieces.append(self.init(base, np.array(run, np.int64)))
                    run = []
                pieces.append(self.dim(p))
            elif isinstance(p, (int, np.integer)):
                run.append(int(p))
            else:
                raise NotImplementedError(f"{base}: size {p!r} is neither an int nor a symbolic size")
        if run:
            pieces.append(self.init(base, np.array(run, np.int64)))
        return self.node("Concat", pieces, base, axis=0)

    def fnode(self, op: str, inputs: list[str], base: str, rank: int, dtype: str, **attrs) -> "_Float":
        return _Float(self.node(op, inputs, base, **attrs), rank, dtype)

    def unary(self, onnx_op: str, name: str, x, **attrs) -> "_Float":
        dt = self.result_dtype(x)
        dt = dt if np.dtype(dt).kind == "f" else "float32"
        return self.fnode(onnx_op, [self.tensor(x, dt)], name, self.rank_of(x), dt, **attrs)

    def binary(self, onnx_op: str, name: str, a, b, dtype: str | None = None) -> "_Float":
        dt = dtype or self.result_dtype(a, b)
        return self.fnode(onnx_op, [self.tensor(a, dt), self.tensor(b, dt)], name,
                          max(self.rank_of(a), self.rank_of(b)), dt)

    # -- data movement (integer values between DQ and Q, or float values) ------------------
    def _movement(self, op: str, x: str, r: int, rest: list, kwargs: dict, name: str):
        """(output name, rank), or (None, r) where the op changes nothing."""
        if op in _IDENTITY_OPS:
            return None, r
        if op == "flatten.using_ints":
            start = (rest[0] if rest else kwargs.get("start_dim", 0)) % r
            end = (rest[1] if len(rest) > 1 else kwargs.get("end_dim", -1)) % r
            if start == 1 and end == r - 1:
                return self.node("Flatten", [x], f"{name}_flatten", axis=1), 2
            if start == end:
                return None, r
            return self._reshape(x, name)
        if op in ("view.default", "reshape.default", "_unsafe_view.default") and self.batch is None:
            shape = list(rest[0] if rest else kwargs["shape"] if "shape" in kwargs else kwargs["size"])
            if any(isinstance(s, (int, np.integer)) and s == 0 for s in shape):
                raise NotImplementedError(f"reshape (step {name!r}) to a zero-size dimension")
            return self.node("Reshape", [x, self.ints(f"{name}_shape", shape)], f"{name}_reshape"), len(shape)
        if op == "unsqueeze.default":
            d = (rest[0] if rest else kwargs["dim"]) % (r + 1)
            return self.node("Unsqueeze", [x, self.ints(f"{name}_axes", [d])], f"{name}_unsqueeze"), r + 1
        if op in ("squeeze.dim", "squeeze.dims", "squeeze.default"):
            dims = rest[0] if rest else kwargs.get("dim")
            shape = self._static_shape_in(name, x)
            axes = [d % r for d in (range(r) if dims is None else dims if isinstance(dims, (list, tuple))
                                    else [dims]) if shape[d % r] == 1]
            if not axes:
                return None, r
            return self.node("Squeeze", [x, self.ints(f"{name}_axes", axes)], f"{name}_squeeze"), r - len(axes)
        if op in _RESHAPE_OPS:
            return self._reshape(x, name)
        if op == "expand.default":
            size = list(rest[0] if rest else kwargs["size"])
            if self.batch is None:  # Expand broadcasts: a kept dimension (-1) is written as 1
                shape = self.ints(f"{name}_shape", [1 if isinstance(s, int) and s == -1 else s for s in size])
            else:
                shape = self.init(f"{name}_shape", np.array(self._static_shape(name), np.int64))
            return self.node("Expand", [x, shape], f"{name}_expand"), len(size)
        if op in ("permute.default", "transpose.int", "t.default"):
            if op == "permute.default":
                perm = [d % r for d in (rest[0] if rest else kwargs["dims"])]
            elif op == "transpose.int":
                perm = list(range(r))
                a, b = rest[0] % r, rest[1] % r
                perm[a], perm[b] = perm[b], perm[a]
            else:
                perm = [1, 0][:r]
            return self.node("Transpose", [x], f"{name}_transpose", perm=perm), r
        if op == "slice.Tensor":
            p = {**dict(zip(["dim", "start", "end", "step"], rest)), **kwargs}
            dim, start, end, stp = p.get("dim", 0) % r, p.get("start"), p.get("end"), p.get("step", 1)
            if start in (None, 0) and stp == 1 and (end is None or (isinstance(end, int) and end >= _INT64_MAX)):
                return None, r
            starts = self.ints(f"{name}_starts", [0 if start is None else start])
            ends = self.ints(f"{name}_ends", [_INT64_MAX if end is None else end])
            return self.node("Slice", [x, starts, ends, self.ints(f"{name}_axes", [dim]),
                                       self.ints(f"{name}_steps", [stp])], f"{name}_slice"), r
        if op == "select.int":
            p = {**dict(zip(["dim", "index"], rest)), **kwargs}
            idx = self.init(f"{name}_index", np.array(int(p["index"]), np.int64))
            return self.node("Gather", [x, idx], f"{name}_select", axis=p["dim"] % r), r - 1
        if op in ("pad.default", "constant_pad_nd.default"):
            return self._pad(op, x, r, rest, kwargs, name), r
        if op == "max_pool2d.default":
            return self._max_pool(x, rest, kwargs, name), r
        raise AssertionError(op)  # pragma: no cover - _MOVEMENT_OPS lists exactly the branches above

    def _static_shape(self, name: str) -> list[int]:
        """The output shape of step ``name``: fixed at the export batch, or with the one dimension
        that follows the batch written as -1 (dynamic batch)."""
        shape = lambda b: list(np.shape(getattr(v := self.static_values(b)[name], "q", v)))  # noqa: E731
        if self.batch is not None:
            return shape(self.batch)
        a, b = shape(2), shape(3)
        varying = [i for i, (m, n) in enumerate(zip(a, b)) if m != n]
        if len(a) != len(b) or len(varying) > 1:
            raise NotImplementedError(f"step {name!r}: output shape {a} (batch 2) / {b} (batch 3) cannot "
                                      "be written for a dynamic batch; export with a fixed batch")
        return [-1 if i in varying else n for i, n in enumerate(a)]

    def _static_shape_in(self, name: str, x: str) -> list[int]:
        """The input shape of the op of step ``name`` at the export batch (2 if dynamic)."""
        step = next(s for s in self.plan.program if s.get("name") == name and s["kind"] == "op")
        v = self.static_values(self.batch or 2)[step["args"][0]["value"]]
        return list(np.shape(getattr(v, "q", v)))

    def _reshape(self, x: str, name: str) -> tuple[str, int]:
        shape = self._static_shape(name)
        return self.node("Reshape", [x, self.init(f"{name}_shape", np.array(shape, np.int64))],
                         f"{name}_reshape"), len(shape)

    def _pad(self, op: str, x: str, rank: int, rest: list, kwargs: dict, name: str) -> str:
        widths = list(rest[0] if rest else kwargs["pad"])
        if op == "pad.default":
            mode = rest[1] if len(rest) > 1 else kwargs.get("mode", "constant")
            value = rest[2] if len(rest) > 2 else kwargs.get("value")
        else:
            mode, value = "constant", rest[1] if len(rest) > 1 else kwargs.get("value", 0)
        if mode != "constant" or value not in (None, 0, 0.0):
            raise NotImplementedError(f"pad (step {name!r}) mode={mode!r} value={value!r}: only zero "
                                      "constant padding")
        if any(w < 0 for w in widths):
            raise NotImplementedError(f"pad (step {name!r}) with negative widths (cropping)")
        # torch lists (begin, end) from the last dimension backwards. Pads for every dimension, not
        # the opset-18 `axes` input: ORT 1.32's NHWC layout transform mis-permutes Pad axes.
        begin, end = [0] * rank, [0] * rank
        for i in range(len(widths) // 2):
            begin[rank - 1 - i], end[rank - 1 - i] = widths[2 * i], widths[2 * i + 1]
        return self.node("Pad", [x, self.init(f"{name}_pads", np.array(begin + end, np.int64)),
                                 self.scalar_f32(f"{name}_value", 0.0)], f"{name}_pad", mode="constant")

    def _max_pool(self, x: str, rest: list, kwargs: dict, name: str) -> str:
        names = ["kernel_size", "stride", "padding", "dilation", "ceil_mode"]
        defaults = {"stride": (), "padding": 0, "dilation": 1, "ceil_mode": False}
        p = {**defaults, **dict(zip(names, rest)), **kwargs}
        pair = lambda v: [v[0], v[-1]] if isinstance(v, (list, tuple)) else [v, v]  # noqa: E731
        k = pair(p["kernel_size"])
        s = pair(p["stride"]) if p["stride"] not in ((), [], None) else k
        ph, pw = pair(p["padding"])
        return self.node("MaxPool", [x], f"{name}_maxpool", kernel_shape=k, strides=s,
                         pads=[ph, pw, ph, pw], dilations=pair(p["dilation"]),
                         ceil_mode=int(bool(p["ceil_mode"])))

    # -- program ---------------------------------------------------------------------------
    def build(self) -> onnx.ModelProto:
        for step in self.plan.program:
            kind = step["kind"]
            if kind == "input":
                self._input(step)
            elif kind == "quantize":
                v = self.values[step["name"]]
                t = self.plan.tensors[step["tensor"]]
                rank = v.rank if isinstance(v, (_Int, _Float)) else 0
                self.values[step["name"]] = self.q(self.dq(v), t, rank, f"{step['name']}_in")
            elif kind == "layer":
                self.layer(step)
            elif kind == "op":
                self.op(step)
            elif kind == "output":
                self._outputs(self.resolve(step["values"]))
            else:
                raise NotImplementedError(f"program step kind {kind!r} (step {step.get('name')!r})")
        if not self.plan.program:
            raise ValueError(f"plan for {self.plan.model!r} has no program (made by an older version?)")
        graph = helper.make_graph(self.nodes, f"{self.plan.model}_qdq", self.inputs, self.outputs, self.inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", self.opset)],
                                  producer_name="tvmptq", ir_version=_IR_VERSION[self.opset])
        helper.set_model_props(model, {
            "tvmptq.model": self.plan.model,
            "tvmptq.config": json.dumps(self.plan.config, default=str),
            "tvmptq.low_bit": self.low_bit,
            "tvmptq.containers": ",".join(sorted(self.containers_used)),
        })
        return model

    def _input(self, step: dict) -> None:
        dtype = step.get("dtype") or "float32"
        if dtype not in _ONNX_INPUT_TYPES:
            raise NotImplementedError(f"model input {step['name']!r} of dtype {dtype!r}")
        shape = [self.batch or "batch"] + list(step["shape"][1:])
        name = self.fresh(step["name"])
        self.inputs.append(helper.make_tensor_value_info(name, _ONNX_INPUT_TYPES[dtype], shape))
        self.values[step["name"]] = _Float(name, len(shape), dtype)

    def _outputs(self, values) -> None:
        leaves = list(_leaves(values))
        for i, v in enumerate(leaves):
            if not isinstance(v, (_Int, _Float)):
                raise NotImplementedError(f"model output #{i} is not a tensor ({type(v).__name__})")
            x = self.dq(v)
            name = self.fresh("output" if len(leaves) == 1 else f"output_{i}")
            self.nodes.append(helper.make_node("Identity", [x], [name], name=self.fresh(f"Identity_{name}")))
            self.outputs.append(helper.make_tensor_value_info(name, _onnx_type(self.dtype_of(v)), None))


def _container_range(c: str) -> tuple[int, int]:
    return _CONTAINERS[c][1], _CONTAINERS[c][2]


def _leaves(a):
    if isinstance(a, (list, tuple)):
        for v in a:
            yield from _leaves(v)
    elif isinstance(a, dict) and not ({"const", "symbolic", "dtype"} & set(a)):
        for v in a.values():
            yield from _leaves(v)
    else:
        yield a


# --- float-island and auxiliary ops: ATen semantics (tvmptq/reference/ops.py) as ONNX ops ----------
def _f_embedding(b, name, weight, indices, *_, **__):
    return b.fnode("Gather", [b.tensor(weight), b.tensor(indices)], name,
                   b.rank_of(indices) + b.rank_of(weight) - 1, b.dtype_of(weight), axis=0)


def _alpha(b, name, x, alpha):
    return x if alpha == 1 else b.binary("Mul", f"{name}_alpha", x, alpha)


def _f_add(b, name, x, other, alpha=1):
    return b.binary("Add", name, x, _alpha(b, name, other, alpha), b.result_dtype(x, other))


def _f_sub(b, name, x, other, alpha=1):
    return b.binary("Sub", name, x, _alpha(b, name, other, alpha), b.result_dtype(x, other))


def _f_rsub(b, name, x, other, alpha=1):
    return b.binary("Sub", name, other, _alpha(b, name, x, alpha), b.result_dtype(x, other))


def _f_mul(b, name, x, other):
    return b.binary("Mul", name, x, other)


def _f_div(b, name, x, other, rounding_mode=None):
    dt = b.result_dtype(x, other)
    if rounding_mode is None:
        return b.binary("Div", name, x, other, dt if np.dtype(dt).kind == "f" else "float32")
    if rounding_mode == "floor" and np.dtype(dt).kind == "f":
        q = b.binary("Div", f"{name}_div", x, other, dt)
        return b.fnode("Floor", [q.name], name, q.rank, dt)
    raise NotImplementedError(f"div.Tensor (step {name!r}) with rounding_mode={rounding_mode!r} on {dt}")


def _clip(b, name, x, lo, hi):
    dt = b.result_dtype(x, *(v for v in (lo, hi) if v is not None))
    ins = [b.tensor(x, dt)] + [b.tensor(v, dt) if v is not None else "" for v in (lo, hi)]
    while ins[-1] == "":
        ins.pop()
    return b.fnode("Clip", ins, name, b.rank_of(x), dt)


def _f_softmax(b, name, x, dim, *rest, dtype=None):
    dt = dtype.name if isinstance(dtype, _DType) else b.result_dtype(x)
    return b.fnode("Softmax", [b.tensor(x, dt)], name, b.rank_of(x), dt, axis=int(dim))


def _f_layer_norm(b, name, x, shape, weight=None, bias=None, eps=1e-5, *_, **__):
    dt, r = b.result_dtype(x), b.rank_of(x)
    w = (b.tensor(weight, dt) if weight is not None
         else b.init(f"{name}_ones", np.ones(list(shape), dtype=dt)))
    ins = [b.tensor(x, dt), w] + ([b.tensor(bias, dt)] if bias is not None else [])
    return b.fnode("LayerNormalization", ins, name, r, dt, axis=-len(shape), epsilon=float(eps))


def _f_gelu(b, name, x, approximate="none"):
    dt = b.result_dtype(x)
    xs = b.tensor(x, dt)
    if b.opset >= 20:
        return b.fnode("Gelu", [xs], name, b.rank_of(x), dt, approximate=approximate)
    if approximate != "none":
        raise NotImplementedError(f"gelu (step {name!r}) approximate={approximate!r} below opset 20")
    c = lambda v: b.init(f"{name}_c", np.array(v, dt))  # noqa: E731  0.5 * x * (1 + erf(x / sqrt(2)))
    e = b.node("Erf", [b.node("Div", [xs, c(math.sqrt(2.0))], f"{name}_scaled")], f"{name}_erf")
    h = b.node("Mul", [xs, b.node("Add", [e, c(1.0)], f"{name}_1p")], f"{name}_x1p")
    return b.fnode("Mul", [h, c(0.5)], name, b.rank_of(x), dt)


def _f_silu(b, name, x):
    s = b.unary("Sigmoid", f"{name}_sigmoid", x)
    return b.fnode("Mul", [b.tensor(x, s.dtype), s.name], name, s.rank, s.dtype)


def _f_rsqrt(b, name, x):
    s = b.unary("Sqrt", f"{name}_sqrt", x)
    return b.fnode("Reciprocal", [s.name], name, s.rank, s.dtype)


def _axes(dim, r):
    if dim is None or (isinstance(dim, (list, tuple)) and len(dim) == 0):
        return list(range(r))
    return sorted(d % r for d in (dim if isinstance(dim, (list, tuple)) else [dim]))


def _reduce(onnx_op: str, float_only: bool = False):
    def op(b, name, x, dim=None, keepdim=False, *, dtype=None):
        r = b.rank_of(x)
        dt = dtype.name if isinstance(dtype, _DType) else b.result_dtype(x)
        if np.dtype(dt).kind != "f":
            dt = "float32" if float_only else "int64"  # ATen sums integers and bools in int64
        axes = _axes(dim, r)
        return b.fnode(onnx_op, [b.tensor(x, dt), b.ints(f"{name}_axes", axes)], name,
                       r if keepdim else r - len(axes), dt, keepdims=int(bool(keepdim)))
    return op


def _f_vector_norm(b, name, x, ord=2, dim=None, keepdim=False, *, dtype=None):
    ops = {2: "ReduceL2", 1: "ReduceL1"}  # 2.0 and 1.0 hash to the same keys
    if ord == float("inf"):
        x = b.unary("Abs", f"{name}_abs", x)
        return _reduce("ReduceMax", True)(b, name, x, dim, keepdim, dtype=dtype)
    if ord not in ops:
        raise NotImplementedError(f"linalg_vector_norm (step {name!r}) with ord={ord!r}")
    return _reduce(ops[ord], True)(b, name, x, dim, keepdim, dtype=dtype)


def _f_max_dim(b, name, x, dim, keepdim=False):
    d = dim % b.rank_of(x)
    vals = _reduce("ReduceMax")(b, f"{name}_values", x, [d], keepdim)
    idx = b.fnode("ArgMax", [b.tensor(x)], f"{name}_indices", vals.rank, "int64", axis=d,
                  keepdims=int(bool(keepdim)), select_last_index=0)
    return [vals, idx]


def _f_to(b, name, x, dtype=None, *_, **kw):
    dtype = dtype if isinstance(dtype, _DType) else kw.get("dtype")
    if not isinstance(dtype, _DType):
        return x  # a device or memory-format change
    return _Float(b.tensor(x, dtype.name), b.rank_of(x), dtype.name)


def _f_type_as(b, name, x, other):
    dt = b.dtype_of(other)
    return _Float(b.tensor(x, dt), b.rank_of(x), dt)


def _f_expand_as(b, name, x, other):
    shape = b.node("Shape", [b.tensor(other)], f"{name}_shape")
    return b.fnode("Expand", [b.tensor(x), shape], name, b.rank_of(other), b.result_dtype(x))


def _f_where(b, name, cond, x, other):
    dt = b.result_dtype(x, other)
    return b.fnode("Where", [b.tensor(cond, "bool"), b.tensor(x, dt), b.tensor(other, dt)], name,
                   max(b.rank_of(cond), b.rank_of(x), b.rank_of(other)), dt)


def _f_masked_fill(b, name, x, mask, value):
    dt = b.result_dtype(x)
    return b.fnode("Where", [b.tensor(mask, "bool"), b.tensor(value, dt), b.tensor(x)], name,
                   max(b.rank_of(x), b.rank_of(mask)), dt)


def _like(fill):
    def op(b, name, x, *args, dtype=None, **_):
        value = fill if fill is not None else args[0]
        dt = dtype.name if isinstance(dtype, _DType) else b.dtype_of(x)
        shape = b.node("Shape", [b.tensor(x)], f"{name}_shape")
        return b.fnode("ConstantOfShape", [shape], name, b.rank_of(x), dt,
                       value=onnx.numpy_helper.from_array(np.array([value], dt)))
    return op


def _f_arange(b, name, *args, dtype=None, **_):
    nums = [a for a in args if isinstance(a, (int, float, _Dim))]
    start, end, stp = (0, nums[0], 1) if len(nums) == 1 else (nums[0], nums[1], nums[2] if len(nums) > 2 else 1)
    dt = dtype.name if isinstance(dtype, _DType) else (
        "float32" if any(isinstance(v, float) for v in (start, end, stp)) else "int64")
    scalar = lambda v: (b.node("Squeeze", [b.tensor(v, dt)], f"{name}_scalar")  # noqa: E731
                        if isinstance(v, _Dim) else b.tensor(v, dt))
    return b.fnode("Range", [scalar(start), scalar(end), scalar(stp)], name, 1, dt)


def _f_cat(b, name, xs, dim=0):
    dt = b.result_dtype(*xs)
    r = b.rank_of(xs[0])
    return b.fnode("Concat", [b.tensor(x, dt) for x in xs], name, r, dt, axis=dim % r)


def _f_getitem(b, name, seq, index):
    if not isinstance(seq, (list, tuple)):
        raise NotImplementedError(f"getitem (step {name!r}) on a {type(seq).__name__}")
    return seq[index]


def _f_adaptive_avg_pool2d(b, name, x, size):
    if list(size) != [1, 1]:
        raise NotImplementedError(f"adaptive_avg_pool2d (step {name!r}) to {size}")
    return b.fnode("GlobalAveragePool", [b.tensor(x, "float32")], name, 4, "float32")


def _f_sym_size(b, name, x, dim=0):
    if b.batch is not None:
        return int(b.static_value(name))  # fixed batch: a constant
    return _Dim(x, dim % b.rank_of(x))


def _unary(onnx_op: str):
    return lambda b, name, x: b.unary(onnx_op, name, x)


_FLOAT_OPS = {
    "sym_size.int": _f_sym_size,
    "embedding.default": _f_embedding,
    "add.Tensor": _f_add, "add.Scalar": _f_add, "sub.Tensor": _f_sub,
    "rsub.Scalar": _f_rsub, "rsub.Tensor": _f_rsub,
    "mul.Tensor": _f_mul, "mul.Scalar": _f_mul, "div.Tensor": _f_div,
    "clamp.default": lambda b, name, x, min=None, max=None: _clip(b, name, x, min, max),
    "clamp_min.default": lambda b, name, x, v: _clip(b, name, x, v, None),
    "clamp_max.default": lambda b, name, x, v: _clip(b, name, x, None, v),
    "hardtanh.default": lambda b, name, x, lo=-1.0, hi=1.0: _clip(b, name, x, lo, hi),
    "relu.default": lambda b, name, x: b.fnode("Relu", [b.tensor(x)], name, b.rank_of(x), b.dtype_of(x)),
    "softmax.int": _f_softmax, "_softmax.default": lambda b, name, x, dim, half=False: _f_softmax(b, name, x, dim),
    "layer_norm.default": _f_layer_norm, "gelu.default": _f_gelu,
    "exp.default": _unary("Exp"), "sqrt.default": _unary("Sqrt"), "tanh.default": _unary("Tanh"),
    "sigmoid.default": _unary("Sigmoid"), "hardswish.default": _unary("HardSwish"),
    "rsqrt.default": _f_rsqrt, "silu.default": _f_silu,
    "pow.Tensor_Scalar": lambda b, name, x, e: b.binary("Pow", name, x, e, b.result_dtype(x, e)),
    "linalg_vector_norm.default": _f_vector_norm,
    "sum.dim_IntList": _reduce("ReduceSum"), "sum.default": _reduce("ReduceSum"),
    "mean.dim": _reduce("ReduceMean", True), "mean.default": _reduce("ReduceMean", True),
    "amax.default": _reduce("ReduceMax"), "max.dim": _f_max_dim,
    "to.dtype": _f_to, "_to_copy.default": _f_to, "type_as.default": _f_type_as,
    "expand_as.default": _f_expand_as, "where.self": _f_where, "masked_fill.Scalar": _f_masked_fill,
    "ones_like.default": _like(1), "zeros_like.default": _like(0), "full_like.default": _like(None),
    "arange.start": _f_arange, "arange.default": _f_arange, "arange.start_step": _f_arange,
    "cat.default": _f_cat, "getitem": _f_getitem, "adaptive_avg_pool2d.default": _f_adaptive_avg_pool2d,
}


def export_qdq_onnx(plan, path, batch: int | None = 1, *, low_bit: str = "clip", opset: int = QDQ_OPSET,
                    check: bool = True, linear_3d: str = "gemm") -> Path:
    """Write ``plan`` as a QDQ ONNX model at ``path``; returns the path.

    ``batch``: the fixed batch of the model's inputs, or None for a dynamic batch dimension.
    ``linear_3d``: how linears on rank > 2 inputs are written ("gemm": Reshape + Gemm, ORT QGemm;
    "matmul": MatMul + Add, ORT MatMulIntegerToFloat).

    ``low_bit``: how grids narrower than 8 bits are written ("clip": 8-bit containers and a Clip on
    the grid values; "int4": UINT4/INT4 Q/DQ, opset 21). ``opset``: 21 (default), 20, 19 or 18
    (16- and 4-bit containers need 21). ``check``: run ``onnx.checker.check_model`` on the result.
    Raises NotImplementedError naming the first op or layer kind the export does not cover.
    """
    if low_bit not in LOW_BIT_MODES:
        raise ValueError(f"low_bit must be one of {LOW_BIT_MODES}, got {low_bit!r}")
    if opset not in _IR_VERSION:
        raise ValueError(f"opset must be one of {sorted(_IR_VERSION)}, got {opset}")
    if low_bit == "int4" and opset < 21:
        raise ValueError("low_bit='int4' needs opset 21 (UINT4/INT4 QuantizeLinear)")
    if batch is not None and (not isinstance(batch, int) or batch < 1):
        raise ValueError(f"batch must be a positive int or None (dynamic), got {batch!r}")
    if linear_3d not in LINEAR_3D_FORMS:
        raise ValueError(f"linear_3d must be one of {LINEAR_3D_FORMS}, got {linear_3d!r}")
    model = _Builder(plan, batch, low_bit, opset, linear_3d).build()
    try:
        model = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    except Exception:  # shapes are a convenience for readers; ORT infers its own
        pass
    if check:
        onnx.checker.check_model(model, full_check=False)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def ort_optimized_op_counts(path, level: str = "ORT_ENABLE_ALL") -> dict[str, int]:
    """Node count per op type of the graph ONNX Runtime actually runs (after its QDQ fusions)."""
    import tempfile
    from collections import Counter

    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
    options.log_severity_level = 3  # not the "hardware specific optimizations" warning
    with tempfile.TemporaryDirectory(prefix="tvmptq-ort-") as tmp:
        options.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        model = onnx.load(options.optimized_model_filepath)
    return dict(Counter(n.op_type for n in model.graph.node))


def run_qdq_onnx(plan, *inputs: np.ndarray, path=None, batch: int | None = None, threads: int | None = None,
                 **export_kwargs) -> tuple[np.ndarray, Path]:
    """Export ``plan`` (dynamic batch by default) and run it in ONNX Runtime (CPU) on ``inputs``.

    Returns (the model's first output as float32, the .onnx path). For benchmarks: e.g. MiniLM,
    ``run_qdq_onnx(qm.plan, input_ids, attention_mask, threads=1)`` gives the (N, 384) embeddings
    that ``qm.runner()(input_ids, attention_mask)`` gives, up to the rounding noted in the module
    docstring. ``path``: where to write the model (default: a temporary file, deleted afterwards).
    ``threads``: ORT intra-op threads. Other keywords go to :func:`export_qdq_onnx`. A fixed
    ``batch`` runs the inputs in chunks of that batch (the last one zero-padded).
    """
    import tempfile

    from ..peers.onnxruntime_peer import OrtRunner

    with tempfile.TemporaryDirectory(prefix="tvmptq-qdq-") as tmp:
        target = Path(path) if path is not None else Path(tmp) / f"{plan.model}_qdq.onnx"
        export_qdq_onnx(plan, target, batch, **export_kwargs)
        out = np.asarray(OrtRunner(target, threads=threads)(*inputs), np.float32)
    return out, target
