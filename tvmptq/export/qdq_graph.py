"""The graph under construction: fresh names, initializers and nodes, the quantize/dequantize pairs
of the plan's grids, integer weights and biases as DequantizeLinear, and the helpers that write
float ops on program values (their ONNX names, dtypes and ranks)."""
from __future__ import annotations


import numpy as np
import onnx
from onnx import helper

from .qdq_values import _CONTAINERS, _Const, _Dim, _Float, _Int, _onnx_type


class QDQGraph:
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
