"""Run a plan's integer program with NumPy alone: the independent reference for every backend.

Written from the plan (``plan.program``, ``plan.layers``, ``plan.tensors``, ``plan.constants``)
and the rounding contract in README "Grids and rounding"; it shares no code with the PyTorch
simulation. Integer values are :class:`QValue` (int64 grid values ``q`` and their
:class:`~tvmptq.quant.plan.TensorQuant`); everything else is a NumPy array or a Python scalar.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import edge, int_layernorm, lut, ops
from .int_softmax import integer_softmax, keep_from_mask


@dataclass(frozen=True, eq=False)
class QValue:
    """An integer tensor: real = scale * (q - zero_point)."""

    q: np.ndarray   # int64, on [t.qmin, t.qmax]
    t: object       # TensorQuant

    def dequantize(self) -> np.ndarray:
        return (self.q - self.t.zero_point).astype(np.float32) * np.float32(self.t.scale)


def quantize(x: np.ndarray, t) -> QValue:
    """q = clip(round_half_even(x / s) + z, qmin, qmax), the division in float32."""
    q = np.round(np.asarray(x, np.float32) / np.float32(t.scale)) + np.float32(t.zero_point)
    return QValue(np.clip(q, t.qmin, t.qmax).astype(np.int64), t)


# --- integer layers: each returns the accumulator requantized to the output grid (before z) -----
def _channel(a: np.ndarray, axis: int, ndim: int) -> np.ndarray:
    """Per-channel array shaped to broadcast along ``axis`` (a 1-element array is a scalar)."""
    a = np.asarray(a, np.int64)
    if a.size == 1:
        return a.reshape(())
    shape = [1] * ndim
    shape[axis] = -1
    return a.reshape(shape)


def _kernel(lp, x: np.ndarray) -> np.ndarray:
    a, at = lp.arrays, lp.attrs
    if lp.kind == "conv2d":
        acc = ops.conv2d(x, a["weight"], at["stride"], at["padding"], at["dilation"], at["groups"])
        axis = 1
    else:
        acc, axis = ops.linear(x, a["weight"]), x.ndim - 1
    acc = acc + _channel(a["bias"], axis, acc.ndim)
    return ops.requantize(acc, _channel(a["multiplier"], axis, acc.ndim), _channel(a["shift"], axis, acc.ndim))


def _matmul(lp, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    if lp.attrs.get("transpose_b"):
        b = np.swapaxes(b, -1, -2)
    acc = ops.int_matmul(a, b, ops.absmax(a) * ops.absmax(b) * a.shape[-1])
    return ops.requantize(acc, lp.arrays["multiplier"].reshape(()), lp.arrays["shift"].reshape(()))


def _avg_pool(lp, x: np.ndarray) -> np.ndarray:
    """Window sums of the centred integers (zero padding is the real 0), one requantize."""
    at = lp.attrs
    (kh, kw), (sh, sw), (ph, pw) = at["kernel"], at["stride"], at["padding"]
    n, c, h, w = x.shape
    ho, wo = (ops.max_pool2d(np.zeros((1, 1, h, w)), at["kernel"], at["stride"], at["padding"],
                             ceil_mode=at["ceil_mode"]).shape[-2:])
    xp = np.zeros((n, c, max(h + 2 * ph, (ho - 1) * sh + kh), max(w + 2 * pw, (wo - 1) * sw + kw)), np.int64)
    xp[:, :, ph:ph + h, pw:pw + w] = x
    s = sum(xp[:, :, i:i + sh * (ho - 1) + 1:sh, j:j + sw * (wo - 1) + 1:sw] for i in range(kh) for j in range(kw))
    return ops.requantize(s, lp.arrays["multiplier"].reshape(()), lp.arrays["shift"].reshape(()))


def _mul(lp, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Product of two activations: exact int64 product of the centred integers, one requantize."""
    return ops.requantize(a * b, lp.arrays["multiplier"].reshape(()), lp.arrays["shift"].reshape(()))


def _add(lp, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    m, k = lp.arrays["multiplier"], lp.arrays["shift"][0]
    return ops.requantize(a * m[0] + b * m[1], 1, k)


def _mean(lp, x: np.ndarray) -> np.ndarray:
    at = lp.attrs
    s = x.sum(axis=tuple(at["dims"]), keepdims=at["keepdim"])
    return ops.requantize(s, lp.arrays["multiplier"].reshape(()), lp.arrays["shift"].reshape(()))


def _mul_const(lp, x: np.ndarray) -> np.ndarray:
    return ops.requantize(x, lp.arrays["multiplier"].reshape(()), lp.arrays["shift"].reshape(()))


def _cat(lp, *xs: np.ndarray) -> np.ndarray:
    m, k = lp.arrays["multiplier"], lp.arrays["shift"][0]
    return np.concatenate([ops.requantize(x * m[i], 1, k) for i, x in enumerate(xs)], axis=lp.attrs["dim"])


LAYERS = {"conv2d": _kernel, "linear": _kernel, "matmul": _matmul, "add": _add, "mean": _mean,
          "mul_const": _mul_const, "cat": _cat, "mul": _mul, "avg_pool": _avg_pool,
          "bilinear": edge.bilinear, "prelu": edge.prelu, "layernorm": int_layernorm.run}


def _float_kernel(lp, x: QValue, t) -> np.ndarray:
    """A layer kept in float (override): float weights on dequantized inputs, then quantized."""
    a, at, xf = lp.arrays, lp.attrs, x.dequantize()
    if lp.kind == "conv2d":
        y = ops.conv2d(xf, a["weight_float"], at["stride"], at["padding"], at["dilation"], at["groups"])
        bias_shape = (-1, 1, 1)
    else:
        y, bias_shape = xf.astype(np.float64) @ a["weight_float"].T.astype(np.float64), (-1,)
    y = y.astype(np.float32)
    if "bias_float" in a:
        y = y + a["bias_float"].reshape(bias_shape)
    return np.round(y / np.float32(t.scale)).astype(np.int64)


def _run_layer(plan, lp, inputs: list) -> QValue:
    t = plan.tensors[lp.output]
    for i, v in enumerate(inputs):
        if not isinstance(v, QValue):
            raise TypeError(f"layer {lp.name!r}: input {lp.inputs[i]!r} is not an integer tensor")
    if lp.kind == "lut":  # codes in, codes out (the output zero point is in the table)
        return QValue(np.clip(lut.run(plan, lp, inputs[0]), *lp.clip), t)
    if lp.keep_float:
        y = _float_kernel(lp, inputs[0], t)
    else:
        y = LAYERS[lp.kind](lp, *[v.q - v.t.zero_point for v in inputs])
    return QValue(np.clip(y + t.zero_point, *lp.clip), t)


def _float_branch(lp, x: QValue, y: QValue) -> QValue:
    """``q = clip(round_half_even((y + W x + b) / s) + z)`` in float64, W a 1x1 conv (with the
    block's stride) on conv maps or a linear on token features; see tvmptq.algorithms.qwt."""
    br, a, t = lp.attrs["float_branch"], lp.arrays, y.t
    yf = y.dequantize().astype(np.float64)
    xf = x.dequantize().astype(np.float64)
    if yf.ndim == 4:
        s = br["stride"]
        comp = np.einsum("nchw,oc->nohw", xf[:, :, ::s, ::s], a["branch_weight"].astype(np.float64))
        comp = comp + a["branch_bias"].reshape(-1, 1, 1)
    else:
        comp = xf @ a["branch_weight"].astype(np.float64).T + a["branch_bias"]
    q = np.round((yf + comp) / t.scale) + t.zero_point
    return QValue(np.clip(q, *lp.clip).astype(np.int64), t)


# --- the program ---------------------------------------------------------------------------------
class _Env:
    def __init__(self, plan):
        self.plan, self.values = plan, {}

    def resolve(self, a):
        if isinstance(a, dict):
            if "value" in a:
                return self.values[a["value"]]
            if "const" in a:
                return self.plan.constants[a["const"]]
            if "dtype" in a:
                return _dtype(a["dtype"])
            if "symbolic" in a:
                return a["symbolic"]
            return {k: self.resolve(v) for k, v in a.items()}
        if isinstance(a, (list, tuple)):
            return [self.resolve(v) for v in a]
        return a


def _dtype(name: str) -> np.dtype:
    try:
        return np.dtype(name)
    except TypeError:
        raise NotImplementedError(f"dtype {name!r} has no NumPy equivalent") from None


def _map(fn, a):
    if isinstance(a, (list, tuple)):
        return [_map(fn, v) for v in a]
    if isinstance(a, dict):
        return {k: _map(fn, v) for k, v in a.items()}
    return fn(a)


def _first_qvalue(a):
    if isinstance(a, QValue):
        return a
    if isinstance(a, (list, tuple)):
        for v in a:
            if (found := _first_qvalue(v)) is not None:
                return found
    return None


def _run_op(step: dict, args: list, kwargs: dict):
    op = step["op"]
    if step.get("integer"):
        src = _first_qvalue(args)
        fn = ops.INTEGER_OPS.get(op)
        if fn is None or src is None:
            raise NotImplementedError(f"integer data movement op {op!r} (step {step['name']!r}) "
                                      "is not implemented by the NumPy reference")
        strip = lambda v: v.q if isinstance(v, QValue) else v
        out = fn(*_map(strip, args), zero_point=src.t.zero_point, **_map(strip, kwargs))
        return _map(lambda v: QValue(np.asarray(v), src.t) if isinstance(v, np.ndarray) else v, out)
    fn = ops.OPS.get(op) or lut.ISLAND_OPS.get(op)
    if fn is None:
        raise NotImplementedError(f"op {op!r} (step {step['name']!r}) is not implemented by the NumPy reference")
    real = lambda v: v.dequantize() if isinstance(v, QValue) else v
    return fn(*_map(real, args), **_map(real, kwargs))


def _check_input_ops(lp, step_inputs: list, values: dict) -> None:
    """The layer's recorded input chain, applied to its quantized source tensors, must give the
    values the program's own data-movement steps produced."""
    for src, chain, name in zip(lp.inputs, lp.attrs.get("input_ops", []), step_inputs):
        if not chain:
            continue
        v = values[src]
        q = v.q
        for op in chain:
            args = _batch_sizes(op["op"], op["args"], v.q.shape[0], values)
            fn = ops.INTEGER_OPS.get(op["op"])
            if fn is None:
                raise NotImplementedError(f"input op {op['op']!r} of layer {lp.name!r}")
            q = fn(q, *args, zero_point=v.t.zero_point)
        got = values[name]
        if not (isinstance(got, QValue) and got.q.shape == q.shape and np.array_equal(got.q, q)):
            raise ValueError(f"layer {lp.name!r}: input_ops {chain} applied to {src!r} do not give "
                             f"the program's value {name!r}")


def _batch_sizes(op: str, args: list, batch: int, values: dict) -> list:
    """Symbolic sizes in input_ops: {"symbolic": name} is the program value ``name`` (a sym_size
    step). Plans saved before that recorded -1, which is ambiguous next to a literal -1: there,
    in a shape with several -1, the first is taken as the batch."""
    def resolve(a):
        if isinstance(a, dict) and "symbolic" in a:
            return int(values.get(a["symbolic"], batch))
        return [resolve(x) for x in a] if isinstance(a, list) else a
    args = [resolve(a) for a in args]
    if op in ("view.default", "reshape.default") and args and isinstance(args[0], list) \
            and args[0].count(-1) > 1:
        shape = list(args[0])
        shape[shape.index(-1)] = batch
        return [shape] + list(args[1:])
    return list(args)


def _integer_island(plan, step: dict, env: _Env) -> QValue:
    """A softmax the plan computes in integers (reference/int_softmax.py), from its quantized input
    and the keep/drop mask of the add in front of it (that add's float result is not read)."""
    island = step["integer_island"]
    if island["kind"] != "softmax":
        raise NotImplementedError(f"integer island {island['kind']!r} (step {step['name']!r})")
    x = env.values[island["input"]]
    keep = None if island["mask"] is None else keep_from_mask(env.resolve(island["mask"]), step["name"])
    q = integer_softmax(x.q - x.t.zero_point, keep, island, plan.constants[island["table"]], step["name"])
    return QValue(q, plan.tensors[step["name"]])


def _bind_input(step: dict, inputs: tuple) -> np.ndarray:
    if step["index"] >= len(inputs):
        raise ValueError(f"the plan's program takes input {step['name']!r} (#{step['index']}), "
                         f"only {len(inputs)} input(s) given")
    x = np.asarray(inputs[step["index"]])
    want = step.get("shape") or []
    if want and (x.ndim != len(want) or any(w != -1 and w != s for w, s in zip(want, x.shape))):
        raise ValueError(f"input {step['name']!r} has shape {x.shape}, the plan expects {want} (-1: batch)")
    return x.astype(step["dtype"]) if step.get("dtype") else x


def run_plan_values(plan, *inputs: np.ndarray, check_input_ops: bool = True) -> dict:
    """Every value of the program by name (integer values as :class:`QValue`), plus "__output__".

    ``check_input_ops``: verify that each layer's recorded ``attrs["input_ops"]`` chain, applied to
    its quantized source tensor, gives the value the program's data-movement steps produced."""
    env = _Env(plan)
    values = env.values
    for step in plan.program:
        kind = step["kind"]
        if kind == "input":
            values[step["name"]] = _bind_input(step, inputs)
        elif kind == "quantize":
            v = values[step["name"]]
            values[step["name"]] = quantize(v.dequantize() if isinstance(v, QValue) else v,
                                            plan.tensors[step["tensor"]])
        elif kind == "layer":
            lp = plan.layer(step["layer"])
            if check_input_ops:
                _check_input_ops(lp, step["inputs"], values)
            values[step["name"]] = _run_layer(plan, lp, [values[n] for n in step["inputs"]])
            if lp.attrs.get("float_branch"):  # declared float branch (QwT v1 compensation)
                values[step["name"]] = _float_branch(lp, values[lp.attrs["float_branch"]["input"]],
                                                     values[step["name"]])
        elif kind == "op" and step.get("integer_island"):
            values[step["name"]] = _integer_island(plan, step, env)
        elif kind == "op":
            args = env.resolve(step["args"])
            kwargs = {k: env.resolve(v) for k, v in step.get("kwargs", {}).items()}
            values[step["name"]] = _run_op(step, args, kwargs)
        elif kind == "output":
            values["__output__"] = env.resolve(step["values"])
        else:
            raise NotImplementedError(f"program step kind {kind!r} (step {step.get('name')!r})")
    if not plan.program:
        raise ValueError(f"plan for {plan.model!r} has no program (made by an older version?)")
    return values


def run_plan(plan, *inputs: np.ndarray, batch_size: int | None = None, check_input_ops: bool = True,
             ) -> np.ndarray:
    """The model's first output; an integer output is dequantized to float32. ``batch_size``
    bounds memory by running the inputs in slices along dim 0. A plan whose graph fixes its batch
    (``config["fixed_batch"]``) runs in slices of exactly that size, the last padded by repeating
    its last sample and trimmed."""
    fixed = plan.config.get("fixed_batch")
    if fixed and len(inputs[0]) != fixed:
        n = len(inputs[0])
        outs = []
        for i in range(0, n, fixed):
            chunk = [x[i:i + fixed] for x in inputs]
            short = fixed - len(chunk[0])
            chunk = [np.concatenate([c, np.repeat(c[-1:], short, axis=0)]) if short else c for c in chunk]
            outs.append(run_plan(plan, *chunk, check_input_ops=check_input_ops)[:fixed - short])
        return np.concatenate(outs)
    if batch_size is not None and len(inputs[0]) > batch_size:
        return np.concatenate([run_plan(plan, *(x[i:i + batch_size] for x in inputs),
                                        check_input_ops=check_input_ops)
                               for i in range(0, len(inputs[0]), batch_size)])
    out = run_plan_values(plan, *inputs, check_input_ops=check_input_ops)["__output__"]
    while isinstance(out, (list, tuple)):
        out = out[0]
    return out.dequantize() if isinstance(out, QValue) else np.asarray(out, np.float32)
