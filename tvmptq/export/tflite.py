"""Export a plan's integer program to a fully-integer TFLite model (int8 in, int8 out).

Walks ``plan.program`` in order and emits one TFLite op per integer step, reading every number
from the plan: integer weights (int8 containers on the plan's grid, 4-bit weights stay on
[-7, 7]), per-output-channel weight scales, the int32 bias, the output clip as a fused
activation, and the activation grids. Plan activations on ``[0, 255]`` become int8 with the zero
point shifted by -128 (the same real values); symmetric int8 activations stay as they are.
Activations below 8 bits have no int8 TFLite form without extra clamp ops and are refused by name.

TFLite derives each requantize multiplier from float scales (``s_in * s_w[c] / s_out`` in double,
rounded to a Q31 significand and a shift), so the per-channel "weight scale" written is the one
whose derived multiplier is closest to the plan's ``m / 2^k`` (found among float32 neighbours):
a method that folds into the multiplier (CWAC) exports with no extra op. Where no float32 scale
gives the plan's exact 31-bit multiplier the mismatch is recorded per layer
(:attr:`TFLiteExport.multiplier_mismatch`).

Layout: 4-D values are NHWC in the TFLite graph (logical NCHW in the plan); the model input is
the quantized input, NHWC. Float data movement the program applies to the model input before its
quantize (EfficientNet-Lite's TF-style pad with 0) is replayed on the integers: quantize(0) is the
zero point, so padding commutes with the quantize.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import ModelError
from .tflite_fb import Quant, TFLiteGraph


class TFLiteExportError(ModelError):
    """A plan step with no fully-integer TFLite equivalent (named in the message)."""


# Plan op (ATen name as the program records it) -> how the exporter treats it.
IDENTITY_OPS = {"contiguous.default", "clone.default", "alias.default", "detach.default",
                "dropout.default", "lift_fresh_copy.default"}
RESHAPE_OPS = {"view.default", "reshape.default", "_unsafe_view.default", "flatten.using_ints",
               "squeeze.dim", "squeeze.dims", "squeeze.default", "unsqueeze.default"}
PAD_OPS = {"pad.default", "constant_pad_nd.default"}
IGNORED_OPS = {"sym_size.int", "_assert_tensor_metadata.default"}  # shape bookkeeping, no data
# Fused activations, in order of preference, and the int8 clip range TFLite computes for each
# (CalculateActivationRangeQuantized: zero point + round(bound / scale), clamped to int8).
ACTIVATIONS = {"NONE": (None, None), "RELU": (0.0, None), "RELU6": (0.0, 6.0), "RELU_N1_TO_1": (-1.0, 1.0)}


@dataclass
class TFLiteExport:
    """What was written, for the runners and reports."""

    path: Path | None
    content: bytes
    input_shape: tuple[int, ...]            # NHWC (or the plain shape)
    input_quant: tuple[float, int]          # (scale, int8 zero point)
    input_offset: int                       # int8 = plan integer + offset (-128 or 0)
    output_quant: tuple[float, int]
    output_offset: int
    output_layout: str                      # "nhwc" or "plain"
    ops: list[tuple[str, str]]              # (TFLite op, plan step) in order
    multiplier_mismatch: dict[str, int] = field(default_factory=dict)  # layer -> channels off
    value_tensors: dict[str, str] = field(default_factory=dict)        # plan value -> TFLite tensor
    layer_multipliers: dict = field(default_factory=dict, repr=False)  # layer -> TFLite's (Q31 m, k)
    input_tensor: str = ""                  # the plan tensor whose grid the model input is on

    def op_counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for op, _ in self.ops:
            out[op] = out.get(op, 0) + 1
        return out


@dataclass
class _Value:
    tensor: int
    shape: tuple[int, ...]     # logical (plan, NCHW) shape
    nhwc: bool                 # stored NHWC in the TFLite graph
    quant: object              # TensorQuant


def tflite_multiplier(real: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """TFLite's QuantizeMultiplier: Q31 significands and right shifts (as the plan's ``k``)."""
    mant, exp = np.frexp(np.asarray(real, np.float64))
    q = np.round(mant * 2.0 ** 31).astype(np.int64)  # std::round: half away from zero (mant > 0)
    full = q == 2 ** 31
    return np.where(full, q // 2, q), 31 - np.where(full, exp + 1, exp)


def _normalize(m: np.ndarray, k: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    m, k = np.asarray(m, np.int64), np.asarray(k, np.int64)
    full = m == 2 ** 31
    return np.where(full, m // 2, m), np.where(full, k - 1, k)


def _weight_scales(m, k, s_in: float, s_out: float, hint):
    """Per-channel float32 filter scales whose TFLite multiplier is closest to the plan's
    (m, k); returns them, TFLite's (m, k) from them and the number of channels where that is
    not exactly the plan's."""
    m, k = _normalize(m, k)
    target = m.astype(np.float64) / 2.0 ** k
    best = np.float32(target * s_out / s_in)
    cands = [best] + ([np.asarray(hint, np.float32)] if hint is not None else [])
    for step in range(1, 4):
        cands += [np.nextafter(best, np.float32(np.inf)), np.nextafter(best, np.float32(0))]
        best = cands[-2] if step % 2 else cands[-1]
    cands = [np.broadcast_to(np.asarray(c, np.float32), m.shape) for c in cands]
    errs = []
    for c in cands:
        tm, tk = tflite_multiplier(np.float64(s_in) * c.astype(np.float64) / np.float64(s_out))
        errs.append(np.abs(tm.astype(np.float64) * 2.0 ** -tk - target))
    pick = np.argmin(np.stack(errs), axis=0)
    scales = np.choose(pick, cands).astype(np.float32)
    tm, tk = tflite_multiplier(np.float64(s_in) * scales.astype(np.float64) / np.float64(s_out))
    return scales, (tm, tk), int(np.sum((tm != m) | (tk != k)))


class _Exporter:
    def __init__(self, plan, batch: int):
        self.plan, self.batch = plan, batch
        self.g = TFLiteGraph()
        self.values: dict[str, _Value] = {}
        self.prelude: dict[str, list[dict]] = {}   # float movement on the model input, by value
        self.mismatch: dict[str, int] = {}
        self.multipliers: dict[str, tuple] = {}
        self.shapes = self._shapes()

    def _shapes(self) -> dict[str, tuple]:
        """Every program value's shape at this batch: the NumPy reference on zeros."""
        from ..reference.executor import run_plan_values
        ins = [np.zeros([self.batch] + s["shape"][1:], s["dtype"] or np.float32)
               for s in self.plan.program if s["kind"] == "input"]
        vals = run_plan_values(self.plan, *ins, check_input_ops=False)
        shape = lambda v: tuple(getattr(v, "q", v).shape) if hasattr(getattr(v, "q", v), "shape") else None
        return {k: shape(v) for k, v in vals.items()}

    # -- tensors ----------------------------------------------------------------------------
    @staticmethod
    def _offset(t, where: str) -> int:
        if t.bits != 8:
            raise TFLiteExportError(f"{where}: tensor {t.name!r} has {t.bits}-bit activations; a fully-integer "
                                    "TFLite model (and Vela) needs 8-bit activations")
        if (t.qmin, t.qmax) == (0, 255):
            return -128
        if (t.qmin, t.qmax) == (-128, 127):
            return 0
        raise TFLiteExportError(f"{where}: tensor {t.name!r} grid [{t.qmin}, {t.qmax}] is not an 8-bit grid")

    def _act(self, name: str, t, shape, nhwc: bool) -> _Value:
        z = t.zero_point + self._offset(t, name)
        stored = (shape[0], shape[2], shape[3], shape[1]) if nhwc else shape
        idx = self.g.add_tensor(name, stored, np.int8, quant=Quant(np.float32([t.scale]), np.int64([z])))
        return _Value(idx, tuple(shape), nhwc, t)

    def _const(self, name, data, dtype, quant=None) -> int:
        data = np.asarray(data)
        return self.g.add_tensor(name, data.shape, dtype, data, quant)

    def _zp(self, v: _Value) -> int:
        return v.quant.zero_point + self._offset(v.quant, "")

    # -- steps ------------------------------------------------------------------------------
    def run(self) -> TFLiteExport:
        for step in self.plan.program:
            kind = step["kind"]
            if kind == "input":
                self.prelude[step["name"]] = []
            elif kind == "quantize":
                self._quantize(step)
            elif kind == "layer":
                self._layer(step)
            elif kind == "op":
                self._op(step)
            elif kind == "output":
                self._output(step)
        return self.result

    def _quantize(self, step):
        name = step["name"]
        if name not in self.prelude:
            raise TFLiteExportError(f"quantize step {name!r}: a float value re-enters the integer domain "
                                    "(after a float island); a fully-integer TFLite model has no float ops")
        t = self.plan.tensors[step["tensor"]]
        chain = self.prelude[name]
        src = chain[0]["args"][0]["value"] if chain else name
        shape = self.shapes[src]
        v = self._act(src, t, shape, len(shape) == 4)
        self.g.inputs.append(v.tensor)
        self.input = v
        self.input_tensor = step["tensor"]
        for op in chain:  # replay the float movement on the integers (quantize(0) = zero point)
            v = self._movement(op, v)
        self.values[name] = v

    def _op(self, step):
        op, name = step["op"], step["name"]
        if op in IGNORED_OPS:
            return
        src = step["args"][0].get("value") if step["args"] and isinstance(step["args"][0], dict) else None
        if not step.get("integer"):
            if src in self.prelude and op in PAD_OPS | RESHAPE_OPS | IDENTITY_OPS:
                self.prelude[name] = self.prelude[src] + [step]
                return
            raise TFLiteExportError(f"op {op!r} (step {name!r}) computes in float; a fully-integer TFLite "
                                    "model has no float islands")
        self.values[name] = self._movement(step, self.values[src])

    def _movement(self, step, v: _Value) -> _Value:
        op, name = step["op"], step["name"]
        out_shape = self.shapes[name]
        if op in IDENTITY_OPS:
            return v
        if op in PAD_OPS:
            args = step["args"]
            value = args[3] if len(args) > 3 else (args[2] if op == "constant_pad_nd.default" and len(args) > 2 else 0)
            mode = args[2] if op == "pad.default" and len(args) > 2 else "constant"
            if mode != "constant" or value not in (0, 0.0, None):
                raise TFLiteExportError(f"pad {name!r}: mode {mode!r} value {value}; only zero padding is exported")
            pads = list(args[1]) + [0] * (2 * len(v.shape) - len(args[1]))
            widths = [(0, 0)] * len(v.shape)
            for i in range(len(args[1]) // 2):
                widths[len(v.shape) - 1 - i] = (pads[2 * i], pads[2 * i + 1])
            if v.nhwc:
                widths = [widths[0], widths[2], widths[3], widths[1]]
            out = self._act(name, v.quant, out_shape, v.nhwc)
            paddings = self._const(f"{name}/paddings", np.asarray(widths, np.int32), np.int32)
            self.g.add_op("PAD", [v.tensor, paddings], [out.tensor], "PadOptions", source=name)
            return out
        if op in RESHAPE_OPS:
            if len(out_shape) == 4:
                raise TFLiteExportError(f"reshape {name!r} to 4-D {out_shape}: not exported")
            if v.nhwc and int(np.prod(v.shape[2:])) != 1:  # NCHW element order first
                t = self._act(f"{name}/nchw", v.quant, (v.shape[0],) + tuple(v.shape[1:]), False)
                perm = self._const(f"{name}/perm", np.int32([0, 3, 1, 2]), np.int32)
                self.g.add_op("TRANSPOSE", [v.tensor, perm], [t.tensor], "TransposeOptions", source=name)
                v = t
            out = self._act(name, v.quant, out_shape, False)
            shape = self._const(f"{name}/shape", np.int32(out_shape), np.int32)
            self.g.add_op("RESHAPE", [v.tensor, shape], [out.tensor], "ReshapeOptions", source=name,
                          NewShape=list(out_shape))
            return out
        if op == "max_pool2d.default" and v.nhwc:
            return self._max_pool(step, v, out_shape)
        raise TFLiteExportError(f"integer op {op!r} (step {name!r}) has no TFLite export")

    def _max_pool(self, step, v, out_shape):
        args = step["args"] + [None] * 6
        k = args[1] if isinstance(args[1], list) else [args[1]] * 2
        s = args[2] if args[2] else k
        s = s if isinstance(s, list) else [s] * 2
        p = args[3] or 0
        if (p if isinstance(p, int) else max(p)) != 0 or args[5]:
            raise TFLiteExportError(f"max_pool2d {step['name']!r}: padded or ceil-mode pooling is not exported")
        out = self._act(step["name"], v.quant, out_shape, True)
        self.g.add_op("MAX_POOL_2D", [v.tensor], [out.tensor], "Pool2DOptions", source=step["name"],
                      Padding=1, StrideW=s[1], StrideH=s[0], FilterWidth=k[1], FilterHeight=k[0])
        return out

    def _fused(self, lp, t, where: str) -> int:
        """The fused activation whose TFLite clip range is the plan's clip, else an error."""
        import tflite
        off = self._offset(t, where)
        want = (lp.clip[0] + off, lp.clip[1] + off)
        z, s = t.zero_point + off, np.float32(t.scale)
        first = {"relu": "RELU", "clamp": "RELU6"}.get(lp.activation, "NONE")  # the plan's own, if it fits
        order = [first] + [a for a in ACTIVATIONS if a != first]
        for name in order:
            lo, hi = ACTIVATIONS[name]
            rng = (-128 if lo is None else max(-128, z + int(np.round(np.float32(lo) / s))),
                   127 if hi is None else min(127, z + int(np.round(np.float32(hi) / s))))
            if rng == want:
                return getattr(tflite.ActivationFunctionType, name)
        raise TFLiteExportError(f"layer {lp.name!r}: clip {lp.clip} (activation {lp.activation!r}) is no "
                                "TFLite fused activation range on its output grid")

    def _layer(self, step):
        lp = self.plan.layer(step["layer"])
        name = step["name"]
        if lp.keep_float:
            raise TFLiteExportError(f"layer {lp.name!r} is kept in float; not exportable to integer TFLite")
        if lp.attrs.get("float_branch"):
            raise TFLiteExportError(f"layer {lp.name!r} has a float branch (QwT v1); not exportable to integer TFLite")
        ins = [self.values[n] for n in step["inputs"]]
        t = self.plan.tensors[lp.output]
        fn = {"conv2d": self._conv, "linear": self._linear, "add": self._add, "mean": self._mean,
              "cat": self._cat}.get(lp.kind)
        if fn is None:
            raise TFLiteExportError(f"layer {lp.name!r} of kind {lp.kind!r} has no fully-integer TFLite export")
        self.values[name] = fn(lp, name, ins, t)

    def _weights(self, lp, x: _Value, t):
        a = lp.arrays
        scales, self.multipliers[lp.name], off = _weight_scales(a["multiplier"], a["shift"], x.quant.scale,
                                                                t.scale, a.get("weight_scale"))
        if off:
            self.mismatch[lp.name] = off
        bias_q = Quant(np.float32(x.quant.scale) * scales, np.zeros(len(scales), np.int64), 0)
        bias = self._const(f"{lp.name}/bias", a["bias"].astype(np.int32), np.int32, bias_q)
        return scales, bias

    def _conv(self, lp, name, ins, t):
        x, a, at = ins[0], lp.arrays, lp.attrs
        if not x.nhwc:
            raise TFLiteExportError(f"conv {lp.name!r}: input is not a 4-D map")
        w = a["weight"].astype(np.int8)
        o, cg, kh, kw = w.shape
        c = x.shape[1]
        groups = at["groups"]
        depthwise = groups == c and cg == 1 and groups > 1
        if groups != 1 and not depthwise:
            raise TFLiteExportError(f"conv {lp.name!r}: grouped convolution ({groups} groups) has no TFLite op")
        out_shape = self.shapes[name]
        x, same = self._pad_for_conv(lp, name, x, (kh, kw), out_shape)
        scales, bias = self._weights(lp, x, t)
        out = self._act(name, t, out_shape, True)
        (sh, sw), (dh, dw) = at["stride"], at["dilation"]
        act = self._fused(lp, t, lp.name)
        pad_mode = 0 if same else 1  # Padding.SAME = 0, Padding.VALID = 1 in the schema
        if depthwise:
            filt = w.reshape(o, kh, kw).transpose(1, 2, 0)[None]            # [1, KH, KW, O]
            wq = Quant(scales, np.zeros(o, np.int64), 3)
            wt = self._const(f"{lp.name}/weight", filt, np.int8, wq)
            self.g.add_op("DEPTHWISE_CONV_2D", [x.tensor, wt, bias], [out.tensor], "DepthwiseConv2DOptions",
                          source=lp.name, Padding=pad_mode, StrideW=sw, StrideH=sh, DepthMultiplier=o // c,
                          FusedActivationFunction=act, DilationWFactor=dw, DilationHFactor=dh)
        else:
            filt = w.transpose(0, 2, 3, 1)                                     # OHWI
            wt = self._const(f"{lp.name}/weight", filt, np.int8, Quant(scales, np.zeros(o, np.int64), 0))
            self.g.add_op("CONV_2D", [x.tensor, wt, bias], [out.tensor], "Conv2DOptions", source=lp.name,
                          Padding=pad_mode, StrideW=sw, StrideH=sh, FusedActivationFunction=act,
                          DilationWFactor=dw, DilationHFactor=dh)
        return out

    def _pad_for_conv(self, lp, name, x: _Value, k, out_shape):
        """SAME where TFLite's SAME padding is the plan's, else an explicit PAD (zero point) and VALID."""
        (ph, pw), (sh, sw), (dh, dw) = lp.attrs["padding"], lp.attrs["stride"], lp.attrs["dilation"]
        if (ph, pw) == (0, 0):
            return x, False
        same = True
        for n, kk, p, s, d, o in ((x.shape[2], k[0], ph, sh, dh, out_shape[2]), (x.shape[3], k[1], pw, sw, dw, out_shape[3])):
            total = max((o - 1) * s + (kk - 1) * d + 1 - n, 0)
            same &= -(-n // s) == o and total // 2 == p
        if same:
            return x, True
        padded = (x.shape[0], x.shape[1], x.shape[2] + 2 * ph, x.shape[3] + 2 * pw)
        out = self._act(f"{name}/pad", x.quant, padded, True)
        paddings = self._const(f"{name}/pad/paddings", np.int32([[0, 0], [ph, ph], [pw, pw], [0, 0]]), np.int32)
        self.g.add_op("PAD", [x.tensor, paddings], [out.tensor], "PadOptions", source=lp.name)
        return out, False

    def _linear(self, lp, name, ins, t):
        x = ins[0]
        if x.nhwc or len(x.shape) != 2:
            raise TFLiteExportError(f"linear {lp.name!r}: input of shape {x.shape}; only 2-D inputs are exported")
        w = lp.arrays["weight"].astype(np.int8)
        scales, bias = self._weights(lp, x, t)
        wt = self._const(f"{lp.name}/weight", w, np.int8, Quant(scales, np.zeros(len(w), np.int64), 0))
        out = self._act(name, t, self.shapes[name], False)
        self.g.add_op("FULLY_CONNECTED", [x.tensor, wt, bias], [out.tensor], "FullyConnectedOptions",
                      source=lp.name, FusedActivationFunction=self._fused(lp, t, lp.name))
        return out

    def _add(self, lp, name, ins, t):
        a, b = ins
        if a.shape != b.shape or a.nhwc != b.nhwc:
            raise TFLiteExportError(f"add {lp.name!r}: broadcast add {a.shape} + {b.shape} is not exported")
        out = self._act(name, t, self.shapes[name], a.nhwc)
        self.g.add_op("ADD", [a.tensor, b.tensor], [out.tensor], "AddOptions", source=lp.name,
                      FusedActivationFunction=self._fused(lp, t, lp.name))
        return out

    def _axis(self, v: _Value, dim: int) -> int:
        dim %= len(v.shape)
        return [0, 3, 1, 2][dim] if v.nhwc else dim

    def _mean(self, lp, name, ins, t):
        x = ins[0]
        if tuple(lp.clip) != (t.qmin, t.qmax):
            raise TFLiteExportError(f"mean {lp.name!r}: clipped mean (clip {lp.clip}) has no TFLite op")
        keep = bool(lp.attrs["keepdim"])
        out_shape = self.shapes[name]
        out = self._act(name, t, out_shape, x.nhwc and keep)
        axes = self._const(f"{lp.name}/axes", np.int32(sorted(self._axis(x, d) for d in lp.attrs["dims"])), np.int32)
        self.g.add_op("MEAN", [x.tensor, axes], [out.tensor], "ReducerOptions", source=lp.name, KeepDims=keep)
        return out

    def _cat(self, lp, name, ins, t):
        if len({v.nhwc for v in ins}) != 1:
            raise TFLiteExportError(f"cat {lp.name!r}: inputs of mixed layouts")
        # TFLite's int8 CONCATENATION needs every input on the output's grid: inputs on another
        # grid get a QUANTIZE (int8 -> int8 requantize) first, the plan's own per-input rescale.
        srcs = []
        for i, v in enumerate(ins):
            if (np.float32(v.quant.scale), v.quant.zero_point) != (np.float32(t.scale), t.zero_point):
                r = self._act(f"{name}/requantize{i}", t, v.shape, v.nhwc)
                self.g.add_op("QUANTIZE", [v.tensor], [r.tensor], source=lp.name)
                v = r
            srcs.append(v)
        out = self._act(name, t, self.shapes[name], ins[0].nhwc)
        self.g.add_op("CONCATENATION", [v.tensor for v in srcs], [out.tensor], "ConcatenationOptions",
                      source=lp.name, Axis=self._axis(ins[0], lp.attrs["dim"]),
                      FusedActivationFunction=self._fused(lp, t, lp.name))
        return out

    def _output(self, step):
        vals = step["values"]
        while isinstance(vals, list):
            if len(vals) != 1:
                raise TFLiteExportError(f"the program has {len(vals)} outputs; only one is exported")
            vals = vals[0]
        if not isinstance(vals, dict) or vals.get("value") not in self.values:
            raise TFLiteExportError(f"program output {vals} is not an integer value")
        v = self.values[vals["value"]]
        self.g.outputs.append(v.tensor)
        content = self.g.serialize(f"tvmptq plan {self.plan.model}")
        tin, tout = self.input.quant, v.quant
        inv = {t: k for k, t in ((k, x.tensor) for k, x in self.values.items())}
        self.result = TFLiteExport(
            None, content, self.g.tensors[self.input.tensor].shape,
            (float(tin.scale), self._zp(self.input)), self._offset(tin, ""),
            (float(tout.scale), self._zp(v)), self._offset(tout, ""), "nhwc" if v.nhwc else "plain",
            [(o.op, o.source) for o in self.g.operators], dict(self.mismatch),
            {k: self.g.tensors[x.tensor].name for k, x in self.values.items() if x.tensor in inv},
            dict(self.multipliers), self.input_tensor)


def export_tflite(plan, path=None, batch: int = 1) -> TFLiteExport:
    """Write ``plan`` as a fully-integer TFLite flatbuffer (static ``batch``); ``path`` optional."""
    if plan.config.get("integer_islands"):  # TFLite's SOFTMAX kernel is not the plan's integer softmax
        raise NotImplementedError(f"plan computes {', '.join(plan.config['integer_islands'])} islands in integers "
                                  "(integer_islands); the TFLite export does not write them: quantize without "
                                  "--integer-islands to export")
    result = _Exporter(plan, batch).run()
    if path is not None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(result.content)
        result.path = path
    return result


def quantize_input(plan, export: TFLiteExport, x: np.ndarray) -> np.ndarray:
    """A float model input (NCHW) on the plan's input grid, as the TFLite model's int8 input."""
    from ..reference.executor import quantize
    return to_tflite_input(export, quantize(x, plan.tensors[export.input_tensor]).q)


def to_tflite_input(export: TFLiteExport, q: np.ndarray) -> np.ndarray:
    """Plan integers of the model input (NCHW) -> the TFLite model's int8 input."""
    q = np.asarray(q, np.int64) + export.input_offset
    if q.ndim == 4 and len(export.input_shape) == 4:
        q = q.transpose(0, 2, 3, 1)
    return q.astype(np.int8)


def from_tflite_output(export: TFLiteExport, y: np.ndarray) -> np.ndarray:
    """The TFLite model's int8 output -> plan integers (NCHW for maps)."""
    y = np.asarray(y, np.int64) - export.output_offset
    return y.transpose(0, 3, 1, 2) if export.output_layout == "nhwc" else y
