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
the zero point). Float-island ops (MiniLM's softmax, LayerNorm, GELU, masks, embeddings) are not
exported yet: they raise NotImplementedError naming the op.

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
"""
from __future__ import annotations

import json
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

# Data movement that changes nothing: the value is aliased, no node is written.
_IDENTITY_OPS = {"contiguous.default", "clone.default", "alias.default", "detach.default",
                 "dropout.default", "lift_fresh_copy.default"}
# Data movement written as Reshape to the step's static output shape.
_RESHAPE_OPS = {"view.default", "reshape.default", "_unsafe_view.default", "unflatten.int",
                "squeeze.dim", "squeeze.dims", "squeeze.default", "unsqueeze.default"}
_MOVEMENT_OPS = _IDENTITY_OPS | _RESHAPE_OPS | {
    "flatten.using_ints", "expand.default", "permute.default", "transpose.int", "t.default",
    "pad.default", "constant_pad_nd.default", "max_pool2d.default"}
# Steps that compute nothing the graph needs.
_NO_OPS = {"_assert_tensor_metadata.default"}


@dataclass(frozen=True)
class _Int:
    """An integer value of the program: the QuantizeLinear output ``name`` with params ``t``."""

    name: str
    t: object          # TensorQuant
    container: str
    rank: int


@dataclass(frozen=True)
class _Float:
    name: str
    rank: int


class _Builder:
    def __init__(self, plan, batch: int, low_bit: str, opset: int):
        self.plan, self.batch, self.low_bit, self.opset = plan, batch, low_bit, opset
        self.nodes, self.inits, self.inputs, self.outputs = [], [], [], []
        self.used: set[str] = set()
        self.values: dict = {}
        self._qparams: dict = {}
        self._static = None
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
            f = self.scalar_f32(f"{base}_factor", float(at["factor"]))
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
        self.values[step["name"]] = self.q(y, t, rank, base, (lo, hi))

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
            if "const" in a or "symbolic" in a or "dtype" in a:
                return a  # only float-island and auxiliary ops use these
            return {k: self.resolve(v) for k, v in a.items()}
        if isinstance(a, (list, tuple)):
            return [self.resolve(v) for v in a]
        return a

    def static_value(self, name: str):
        """A value of the program on zero inputs of the export batch (shapes, symbolic sizes)."""
        if self._static is None:
            from ..reference import run_plan_values
            zeros = [np.zeros([self.batch] + list(st["shape"][1:]), st.get("dtype") or "float32")
                     for st in sorted((s for s in self.plan.program if s["kind"] == "input"),
                                      key=lambda s: s["index"])]
            self._static = run_plan_values(self.plan, *zeros, check_input_ops=False)
        return self._static[name]

    def op(self, step: dict) -> None:
        op, name = step["op"], step["name"]
        args = self.resolve(step["args"])
        kwargs = {k: self.resolve(v) for k, v in step.get("kwargs", {}).items()}
        tensors = [a for a in _leaves([args, kwargs]) if isinstance(a, (_Int, _Float))]
        if op in _NO_OPS:
            self.values[name] = None
            return
        src = args[0] if args else None
        movement = op in _MOVEMENT_OPS and len(tensors) == 1 and src is tensors[0]
        if step.get("integer"):
            if not (movement and isinstance(src, _Int)):
                raise NotImplementedError(f"integer data movement op {op!r} (step {name!r}) has no "
                                          "QDQ ONNX export")
        elif not (movement and isinstance(src, _Float)):  # data movement on a float model input is fine
            if not tensors or op == "sym_size.int":
                value = self.static_value(name)  # shape arithmetic: a constant at a fixed batch
                if not isinstance(value, np.ndarray) and not hasattr(value, "q"):
                    self.values[name] = value
                    return
            raise NotImplementedError(f"op {op!r} (step {name!r}) is a float-island or auxiliary op: "
                                      "the QDQ ONNX export does not cover it yet")
        if op in _IDENTITY_OPS:
            self.values[name] = src
            return
        x, r, rest = self.dq(src), src.rank, args[1:]
        if op == "flatten.using_ints":
            start = (rest[0] if rest else kwargs.get("start_dim", 0)) % r
            end = (rest[1] if len(rest) > 1 else kwargs.get("end_dim", -1)) % r
            if start == 1 and end == r - 1:
                y, rank = self.node("Flatten", [x], f"{name}_flatten", axis=1), 2
            else:
                y, rank = self._reshape(x, name)
        elif op in _RESHAPE_OPS:
            y, rank = self._reshape(x, name)
        elif op == "expand.default":
            shape = self._static_shape(name)
            y = self.node("Expand", [x, self.init(f"{name}_shape", np.array(shape, np.int64))], f"{name}_expand")
            rank = len(shape)
        elif op in ("permute.default", "transpose.int", "t.default"):
            if op == "permute.default":
                perm = [d % r for d in (rest[0] if rest else kwargs["dims"])]
            elif op == "transpose.int":
                perm = list(range(r))
                a, b = rest[0] % r, rest[1] % r
                perm[a], perm[b] = perm[b], perm[a]
            else:
                perm = [1, 0][:r]
            y, rank = self.node("Transpose", [x], f"{name}_transpose", perm=perm), r
        elif op in ("pad.default", "constant_pad_nd.default"):
            y, rank = self._pad(op, x, r, rest, kwargs, name), r
        elif op == "max_pool2d.default":
            y, rank = self._max_pool(x, rest, kwargs, name), r
        else:  # pragma: no cover - _MOVEMENT_OPS lists exactly the branches above
            raise AssertionError(op)
        if isinstance(src, _Float):
            self.values[name] = _Float(y, rank)
        else:  # data movement keeps the grid: re-quantize with the same parameters, exact, no Clip
            self.values[name] = self.q(y, src.t, rank, name, clip=_container_range(src.container))

    def _static_shape(self, name: str) -> list[int]:
        v = self.static_value(name)
        return list(np.shape(v.q if hasattr(v, "q") else v))

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
        shape = [self.batch] + list(step["shape"][1:])
        name = self.fresh(step["name"])
        self.inputs.append(helper.make_tensor_value_info(name, _ONNX_INPUT_TYPES[dtype], shape))
        self.values[step["name"]] = _Float(name, len(shape))

    def _outputs(self, values) -> None:
        leaves = list(_leaves(values))
        for i, v in enumerate(leaves):
            if not isinstance(v, (_Int, _Float)):
                raise NotImplementedError(f"model output #{i} is not a tensor ({type(v).__name__})")
            x = self.dq(v)
            name = self.fresh("output" if len(leaves) == 1 else f"output_{i}")
            self.nodes.append(helper.make_node("Identity", [x], [name], name=self.fresh(f"Identity_{name}")))
            self.outputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))


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


def export_qdq_onnx(plan, path, batch: int = 1, *, low_bit: str = "clip", opset: int = QDQ_OPSET,
                    check: bool = True) -> Path:
    """Write ``plan`` as a QDQ ONNX model at ``path`` (fixed batch ``batch``); returns the path.

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
    if not isinstance(batch, int) or batch < 1:
        raise ValueError(f"batch must be a positive int, got {batch!r}")
    model = _Builder(plan, batch, low_bit, opset).build()
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
