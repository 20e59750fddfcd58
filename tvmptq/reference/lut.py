"""Lookup-table layers (kind "lut") in NumPy: the table gathered, checked against its function.

The plan's table (output code per input code, index ``q - qmin``) is what every executor runs,
like a layer's integer weights. This module has its own float64 definitions of the functions
(NumPy/SciPy, no PyTorch) and recomputes each table from the plan's grids following the README
rounding contract; a plan whose table is more than one output step away from its function on
any code is refused (a corrupt or mislabelled table), so the reference checks what it runs.
"""
from __future__ import annotations

import math

import numpy as np
from scipy.special import erf


def _sigmoid(x):
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def _softplus(x):
    return np.logaddexp(0.0, x)


def _gelu(x, approximate="none"):
    if approximate == "tanh":
        return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))
    return 0.5 * x * (1 + erf(x / math.sqrt(2)))


def _elu(x, alpha=1.0, scale=1.0, input_scale=1.0):
    return np.where(x > 0, scale * x, scale * alpha * np.expm1(np.minimum(x, 0) * input_scale))


def _clamp(x, min=None, max=None):
    return np.clip(x, -np.inf if min is None else min, np.inf if max is None else max)


FUNCTIONS = {
    "sigmoid": _sigmoid,
    "tanh": np.tanh,
    "silu": lambda x: x * _sigmoid(x),
    "hardswish": lambda x: x * np.clip(x + 3.0, 0.0, 6.0) / 6.0,
    "hardsigmoid": lambda x: np.clip(x + 3.0, 0.0, 6.0) / 6.0,
    "gelu": _gelu,
    "mish": lambda x: x * np.tanh(_softplus(x)),
    "elu": _elu,
    "leaky_relu": lambda x, negative_slope=0.01: np.where(x >= 0, x, x * negative_slope),
    "clamp": _clamp,
}


def evaluate(lp, x: np.ndarray) -> np.ndarray:
    """The layer's function on float32 ``x``: float64 inside, rounded once to float32."""
    fn = FUNCTIONS.get(lp.attrs["function"])
    if fn is None:
        raise NotImplementedError(f"lookup-table function {lp.attrs['function']!r} (layer {lp.name!r}) "
                                  "is not defined in the NumPy reference")
    return np.asarray(fn(x.astype(np.float64), **lp.attrs.get("function_attrs", {}))).astype(np.float32)


def _quantize_out(y: np.ndarray, tout, clip) -> np.ndarray:
    q = np.round(y / np.float32(tout.scale)) + tout.zero_point
    return np.clip(q, *clip).astype(np.int64)


def table(lp, tin, tout) -> np.ndarray:
    """The table recomputed from the grids: code per input code, index q - tin.qmin."""
    codes = np.arange(tin.qmin, tin.qmax + 1, dtype=np.int64)
    x = (codes - tin.zero_point).astype(np.float32) * np.float32(tin.scale)
    return _quantize_out(evaluate(lp, x), tout, lp.clip)


def checked_table(lp, tin, tout) -> np.ndarray:
    got = np.asarray(lp.arrays["table"], np.int64)
    want = table(lp, tin, tout)
    if got.shape != want.shape:
        raise ValueError(f"layer {lp.name!r}: table has {got.size} entries, input grid "
                         f"[{tin.qmin}, {tin.qmax}] has {want.size} codes")
    worst = int(np.abs(got - want).max(initial=0))
    if worst > 1:
        raise ValueError(f"layer {lp.name!r}: table is {worst} output steps away from "
                         f"{lp.attrs['function']} at input code {tin.qmin + int(np.abs(got - want).argmax())}")
    return got


def run(plan, lp, x):
    """Output codes of lookup-table layer ``lp`` on QValue ``x`` (before the layer clip)."""
    tin, tout = plan.tensors[lp.inputs[0]], plan.tensors[lp.output]
    if lp.keep_float:  # the declared float version: the function on the dequantized input
        return _quantize_out(evaluate(lp, x.dequantize()), tout, lp.clip)
    return checked_table(lp, tin, tout)[x.q - tin.qmin]


def _island(name, **fixed):
    """ATen op (float island, lookup tables off) -> f(x, *args) with ATen's argument order."""
    order = {"elu": ("alpha", "scale", "input_scale"), "leaky_relu": ("negative_slope",)}.get(name, ())

    def op(x, *args, **kw):
        attrs = dict(zip(order, args)) | kw
        y = FUNCTIONS[name](np.asarray(x).astype(np.float64), **attrs)
        return np.asarray(y).astype(x.dtype if x.dtype.kind == "f" else np.float32)
    return op


# Unary functions the ATen op table (ops.OPS) lacks, for plans made with lookup tables off.
ISLAND_OPS = {"hardsigmoid.default": _island("hardsigmoid"), "mish.default": _island("mish"),
              "elu.default": _island("elu"), "leaky_relu.default": _island("leaky_relu")}
