"""Integer lookup tables for unary functions of one quantized tensor (sigmoid, SiLU, GELU, ...).

A unary function ``f`` of a tensor on a ``b``-bit grid (``b <= 8``) takes at most 256 distinct
inputs, so the integer program computes it exactly as a table from input code to output code,
built once from the plan's two grids (TFLite's LOGISTIC/TANH int8 kernels do the same):

    x_q   = float32(q - z_in) * float32(s_in)                  (the dequantized input, as the
                                                               simulation carries it)
    y_q   = float32(f(float64(x_q)))                           (f in float64, rounded once)
    T[q]  = clip(round_half_even(y_q / float32(s_out)) + z_out, clip)

so a lookup gives exactly what the float island gives on the same integer input: the table is
the island evaluated on every code. ``FUNCTIONS`` is the table of functions (ATen op -> name and
its float64 definition in PyTorch); the NumPy reference has its own definitions
(tvmptq/reference/lut.py) and the Relax lowering gathers the plan's table (relay_passes/lookup_tables.py).
With ``QuantConfig.lookup_tables=False`` these ops stay declared float islands (graph.classify).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

aten = torch.ops.aten


def _arg(args, kwargs, i, name, default):
    return args[i] if len(args) > i else kwargs.get(name, default)


def _num(v):
    """A clamp bound: a Python number (a tensor bound is not a unary function of the input)."""
    if v is not None and not isinstance(v, (int, float)):
        raise TypeError(f"clamp bound {v!r} is not a number")
    return None if v is None else float(v)


# ATen op -> (function name, attrs from the node's scalar arguments). Attrs must be JSON-friendly:
# they are saved with the plan and read by every executor.
FUNCTIONS = {
    aten.sigmoid.default: ("sigmoid", lambda a, k: {}),
    aten.tanh.default: ("tanh", lambda a, k: {}),
    aten.silu.default: ("silu", lambda a, k: {}),
    aten.hardswish.default: ("hardswish", lambda a, k: {}),
    aten.hardsigmoid.default: ("hardsigmoid", lambda a, k: {}),
    aten.gelu.default: ("gelu", lambda a, k: {"approximate": _arg(a, k, 0, "approximate", "none")}),
    aten.mish.default: ("mish", lambda a, k: {}),
    aten.elu.default: ("elu", lambda a, k: {"alpha": float(_arg(a, k, 0, "alpha", 1.0)),
                                           "scale": float(_arg(a, k, 1, "scale", 1.0)),
                                           "input_scale": float(_arg(a, k, 2, "input_scale", 1.0))}),
    aten.leaky_relu.default: ("leaky_relu", lambda a, k: {"negative_slope": float(_arg(a, k, 0, "negative_slope", 0.01))}),
    aten.leaky_relu_.default: ("leaky_relu", lambda a, k: {"negative_slope": float(_arg(a, k, 0, "negative_slope", 0.01))}),
    # A clip that no integer op before it could absorb (after data movement, or a second clip):
    # the table is the clip itself.
    aten.relu.default: ("clamp", lambda a, k: {"min": 0.0, "max": None}),
    aten.relu_.default: ("clamp", lambda a, k: {"min": 0.0, "max": None}),
    aten.hardtanh.default: ("clamp", lambda a, k: {"min": float(_arg(a, k, 0, "min_val", -1.0)),
                                                   "max": float(_arg(a, k, 1, "max_val", 1.0))}),
    aten.hardtanh_.default: ("clamp", lambda a, k: {"min": float(_arg(a, k, 0, "min_val", -1.0)),
                                                    "max": float(_arg(a, k, 1, "max_val", 1.0))}),
    aten.clamp.default: ("clamp", lambda a, k: {"min": _num(_arg(a, k, 0, "min", None)),
                                                "max": _num(_arg(a, k, 1, "max", None))}),
    aten.clamp_min.default: ("clamp", lambda a, k: {"min": _num(_arg(a, k, 0, "min", None)), "max": None}),
    aten.clamp_max.default: ("clamp", lambda a, k: {"min": None, "max": _num(_arg(a, k, 0, "max", None))}),
}

# name -> float64 PyTorch definition, f(x, **attrs)
DEFINITIONS = {
    "sigmoid": lambda x: torch.sigmoid(x),
    "tanh": lambda x: torch.tanh(x),
    "silu": lambda x: F.silu(x),
    "hardswish": lambda x: F.hardswish(x),
    "hardsigmoid": lambda x: F.hardsigmoid(x),
    "gelu": lambda x, approximate="none": F.gelu(x, approximate=approximate),
    "mish": lambda x: F.mish(x),
    "elu": lambda x, alpha=1.0, scale=1.0, input_scale=1.0: torch.ops.aten.elu(x, alpha, scale, input_scale),
    "leaky_relu": lambda x, negative_slope=0.01: F.leaky_relu(x, negative_slope),
    "clamp": lambda x, min=None, max=None: torch.clamp(x, min, max),
}


def function_attrs(node) -> tuple[str, dict]:
    """(function name, attrs) of an fx node whose target is in FUNCTIONS."""
    name, attrs = FUNCTIONS[node.target]
    return name, attrs(list(node.args[1:]), dict(node.kwargs))


def evaluate(name: str, attrs: dict, x: torch.Tensor) -> torch.Tensor:
    """f(x) computed in float64 and rounded once to float32 (the island's arithmetic)."""
    return DEFINITIONS[name](x.double(), **attrs).float()


def input_codes(t) -> np.ndarray:
    """Every code of tensor ``t``'s grid, in table order (qmin first)."""
    return np.arange(t.qmin, t.qmax + 1, dtype=np.int64)


def build_table(name: str, attrs: dict, tin, tout, clip: tuple[int, int]) -> np.ndarray:
    """Output code for every input code of ``tin``'s grid (index = q - tin.qmin), int32."""
    q = torch.as_tensor(input_codes(tin))
    x = (q - tin.zero_point).to(torch.float32) * torch.tensor(tin.scale, dtype=torch.float32)
    y = evaluate(name, attrs, x)
    code = torch.round(y / torch.tensor(tout.scale, dtype=torch.float32)) + tout.zero_point
    return code.clamp_(*clip).to(torch.int32).numpy()


def table_error_steps(name: str, attrs: dict, tin, tout, table: np.ndarray) -> np.ndarray:
    """|dequantized table - f(x)| in output steps, per input code, with f(x) clipped to the output
    grid's real range (values outside it cannot be represented by any table)."""
    codes = input_codes(tin)
    x = (codes - tin.zero_point) * float(tin.scale)
    exact = DEFINITIONS[name](torch.as_tensor(x, dtype=torch.float64), **attrs).numpy()
    lo, hi = (tout.qmin - tout.zero_point) * tout.scale, (tout.qmax - tout.zero_point) * tout.scale
    got = (table.astype(np.int64) - tout.zero_point) * float(tout.scale)
    return np.abs(got - np.clip(exact, lo, hi)) / float(tout.scale)
