"""The program walk: each step of ``plan.program`` (inputs, layers, ops, outputs) written as QDQ
ONNX nodes on top of the graph, movement and float-op writers."""
from __future__ import annotations

import json

import numpy as np
import onnx
from onnx import helper

from .qdq_float_ops import FLOAT_OPS as _FLOAT_OPS
from .qdq_movement import QDQMovement
from .qdq_values import (_CONTAINERS, _IR_VERSION, _MOVEMENT_OPS, _NO_OPS, _ONNX_INPUT_TYPES, _Const, _DType, _Dim,
                         _Float, _Int, _container_range, _leaves, _onnx_type)


class QDQProgram(QDQMovement):
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
        if kind == "lut":  # codes in, codes out: Gather on the plan's table, exact
            self.values[step["name"]] = self._lookup(lp, ins[0], t, base)
            return
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

    def _lookup(self, lp, x: _Int, t, base: str) -> _Int:
        """A lookup-table layer (tvmptq/quant/lut.py): ``T[q - qmin]`` with Gather; the table holds
        output codes, clipped to the layer's bounds, in the output's container."""
        if lp.keep_float:
            raise NotImplementedError(f"lookup-table layer {lp.name!r} kept in float has no QDQ ONNX export")
        c = self.container(t.qmin, t.qmax, f"tensor {t.name!r}")
        if c not in ("uint8", "int8", "uint16", "int16"):
            raise NotImplementedError(f"lookup-table layer {lp.name!r}: a {c} table (ONNX Gather takes no 4-bit data)")
        dtype = {"uint8": np.uint8, "int8": np.int8, "uint16": np.uint16, "int16": np.int16}[c]
        table = self.init(f"{lp.name}_table", np.clip(lp.arrays["table"], *lp.clip).astype(dtype))
        idx = self.node("Cast", [x.name], f"{base}_codes", to=onnx.TensorProto.INT32)
        start = self.init(f"{base}_qmin", np.array(x.t.qmin, np.int32))
        idx = self.node("Sub", [idx, start], f"{base}_index")
        self.containers_used.add(c)
        return _Int(self.node("Gather", [table, idx], f"{base}_lookup", axis=0), t, c, x.rank)

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
        if op in _MOVEMENT_OPS and not tensors and isinstance(src, _Const) and not step.get("integer") and any(
                isinstance(a, _Dim) for a in _leaves([args, kwargs])):
            # a constant moved to a symbolic size (a ViT's CLS token, cls.expand(batch, 1, -1)): a
            # float Expand/Reshape of the initializer, as on any float tensor
            y, rank = self._movement(op, self.tensor(src), self.rank_of(src), args[1:], kwargs, name)
            self.values[name] = _Float(y, rank, self.dtype_of(src)) if y is not None else src
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
