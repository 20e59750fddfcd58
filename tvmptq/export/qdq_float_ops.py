"""Float-island and auxiliary ops with ATen semantics (as tvmptq/reference/ops.py executes them)
written as ONNX ops: ``FLOAT_OPS[aten op](builder, name, *args, **kwargs) -> value``."""
from __future__ import annotations

import math

import numpy as np
import onnx

from .qdq_values import _DType, _Dim, _Float


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


FLOAT_OPS = {
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
