"""Integer-only LayerNorm (I-BERT style): codes in, codes out, no float at run time.

With ``"layernorm" in QuantConfig.integer_islands`` each LayerNorm over the last axis whose input
is a quantized tensor and whose output is quantized becomes a plan layer of kind ``"layernorm"``
(:func:`convert`, run by build_plan before bias correction); the others stay declared float
islands and are named in ``plan.config["float_layernorms"]`` with the reason. The arithmetic, one
row of N codes ``q`` (input grid s_in, z_in; output grid s_out, z_out), all int64:

    xc  = q - z_in
    S   = sum(xc)                                   the mean is S / N: kept as a fraction
    d   = N * xc - S                                N * (x - mean), exact
    V   = sum(d^2) + E,  E = round(eps N^3 / s_in^2)  N^3 (var + eps) / s_in^2, exact but for E
    t   = #{j in 1..30 : V < 2^(62 - 2j)}           V 4^t in [2^60, 2^62): a normalising shift
    sig = isqrt(V 4^t)                              floor square root, in [2^30, 2^31)
    r   = 2^62 // sig                               fixed-point reciprocal of the std (0 if V = 0)
    n   = (d r + 2^(37 - t)) >> (38 - t)            = d / sqrt(V) in Q24: (x - mean) / std / sqrt(N)
    out = clip(((n m_c + b_c + 2^(k_c - 1)) >> k_c) + z_out)

with per-channel ``m_c / 2^k_c ~= gamma_c sqrt(N) / (s_out 2^24)`` (sign of gamma in m_c) and
``b_c = round(beta_c / s_out * 2^k_c)``: gamma and beta folded into one fixed-point multiply-add
onto the output grid. The only approximations are E's rounding, the floor square root (relative
error < 2^-30), the reciprocal's floor (< 2^-31), n's rounding (2^-25 of its range) and m_c's 31
bits, so the output code is the float LayerNorm's correctly rounded code or one step from it at
a near tie (tests/test_int_layernorm.py bounds it).

Overflow bounds (int64, |values| < 2^63), for a code range R = qmax - qmin:
  |S| <= N R, |d| <= N R; sum(d^2) = N^2 sum((xc - mean)^2) <= N^3 R^2 / 4; the plan refuses a
  layer unless N^3 R^2 / 4 + E < 2^62 (MiniLM N=384: 8-bit 9.2e11, 16-bit 6.2e16; N=768 16-bit
  4.9e17; 2^62 = 4.6e18). |d| <= sqrt(V) gives |d r| <= 2^62 (1 + 2^-30) for every t; |n| <= 2^24 + 1,
  so |n m_c| <= 2^55, and b_c is kept below 2^61 (k_c and m_c lowered together when beta/gamma is
  huge). The NumPy reference (tvmptq/reference/int_layernorm.py) and the Relax kernel
  (relay_passes/int_layernorm.py) compute exactly this; the square root there is a float estimate
  corrected to the exact floor and here the digit-by-digit method, which agree on every integer.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .fixedpoint import quantize_multiplier
from .graph import PASSTHROUGH_OPS
from .plan import LayerPlan, QuantPlan

FRAC_BITS = 24          # n = d / sqrt(V) in Q24
RECIP_BITS = 62         # r = 2^62 // sig
NORM_STEPS = 30         # t in [0, 30]
V_LIMIT = 2 ** 62       # V (and V 4^t) stays below this
BIAS_LIMIT = 2 ** 61
ATEN = "layer_norm.default"
# Data movement that may sit between a LayerNorm and its quantize point (ViT's CLS slice): the
# integer LayerNorm then writes that tensor's grid and the movement runs on codes.
MOVEMENT = {getattr(t, "__name__", str(t)) for t in PASSTHROUGH_OPS} - {
    "pad.default", "max_pool2d.default", "upsample_nearest2d.vec", "upsample_nearest2d.default"}


def normalising_shift(v):
    """t = #{j in 1..30 : V < 2^(62 - 2j)} (works on torch and NumPy int64 arrays)."""
    t = 0
    for j in range(1, NORM_STEPS + 1):
        t = t + (v < (1 << (62 - 2 * j)))
    return t


def output_arrays(gamma: np.ndarray, beta: np.ndarray, n: int, s_out: float) -> dict[str, np.ndarray]:
    """Per-channel multiplier (signed), shift and bias of the output step (see module doc)."""
    gamma, beta = np.asarray(gamma, np.float64), np.asarray(beta, np.float64)
    m, k = quantize_multiplier(np.abs(gamma) * np.sqrt(n) / (float(s_out) * 2.0 ** FRAC_BITS))
    m = m * np.where(gamma < 0, -1, 1)
    b = np.round(beta / float(s_out) * np.ldexp(1.0, k))
    while np.any(big := (np.abs(b) >= BIAS_LIMIT) & (k > 1)):  # beta/gamma huge: fewer bits of m
        m = np.where(big, np.round(m / 2.0).astype(np.int64), m)
        k = np.where(big, k - 1, k)
        b = np.round(beta / float(s_out) * np.ldexp(1.0, k))
    if np.any(np.abs(b) >= BIAS_LIMIT):
        raise ValueError("LayerNorm beta too large for the output grid")
    return {"multiplier": m.astype(np.int64), "shift": k.astype(np.int64), "bias": b.astype(np.int64)}


def _users(steps, name: str) -> int:
    def count(a):
        if isinstance(a, dict):
            return int(a.get("value") == name) + sum(count(v) for k, v in a.items() if k != "value")
        return sum(count(v) for v in a) if isinstance(a, (list, tuple)) else 0
    return sum(count(s.get("args", [])) + count(s.get("kwargs", {})) + count(s.get("inputs", []))
               + count(s.get("values", [])) for s in steps)


def _quantize_point(steps, i: int) -> tuple[list[int], int] | None:
    """(movement step indices, quantize step index) when LayerNorm step ``i``'s value reaches a
    quantize point through single-use data movement only; None otherwise."""
    chain, name, j = [], steps[i]["name"], i + 1
    while j < len(steps):
        s = steps[j]
        if s["kind"] == "quantize" and s["name"] == name:
            return chain, j
        if s["kind"] != "op" or s["op"] not in MOVEMENT or _users(steps[i + 1:], name) != 1 or \
                not (s["args"] and isinstance(s["args"][0], dict) and s["args"][0].get("value") == name):
            return None
        chain.append(j)
        name, j = s["name"], j + 1
    return None


def _why_float(step: dict, plan: QuantPlan, quantized_next: bool) -> str | None:
    args = step["args"]
    x = args[0]
    if not (isinstance(x, dict) and "value" in x and x["value"] in plan.tensors):
        return "its input is not a quantized tensor (data movement or float math before it)"
    if not quantized_next:
        return "its output is not quantized (it feeds float islands or is a model output)"
    if len(args[1]) != 1:
        return f"it normalizes over {len(args[1])} axes (the integer version takes the last axis)"
    return None


def _affine(plan: QuantPlan, arg, n: int, fill: float) -> np.ndarray:
    if arg is None:
        return np.full(n, fill)
    if isinstance(arg, dict) and "const" in arg:
        return np.asarray(plan.constants[arg["const"]], np.float64).reshape(-1)
    raise ValueError(f"LayerNorm affine argument {arg!r} is not a constant")


def layer_plan(step: dict, plan: QuantPlan, output: str | None = None) -> LayerPlan:
    """The integer LayerNorm layer for program step ``step`` (checked by :func:`_why_float`),
    writing tensor ``output`` (default: the step's own value)."""
    args = list(step["args"]) + [None] * (5 - len(step["args"]))
    tin, tout = plan.tensors[args[0]["value"]], plan.tensors[output or step["name"]]
    n = int(args[1][0])
    eps = 1e-5 if args[4] is None else float(args[4])
    e = int(round(eps * n ** 3 / float(tin.scale) ** 2))
    bound = n ** 3 * (tin.qmax - tin.qmin) ** 2 // 4 + e
    if bound >= V_LIMIT:
        raise ValueError(f"integer LayerNorm {step['name']!r}: N^3 R^2/4 + E = {bound:.3g} >= 2^62 "
                         f"(N={n}, {tin.bits}-bit input): int64 would overflow")
    arrays = output_arrays(_affine(plan, args[2], n, 1.0), _affine(plan, args[3], n, 0.0), n, tout.scale)
    attrs = {"n": n, "eps": eps, "eps_term": e, "aten": ATEN, "input_ops": [],
             "frac_bits": FRAC_BITS, "recip_bits": RECIP_BITS}
    return LayerPlan(step["name"], "layernorm", [tin.name], tout.name, (tout.qmin, tout.qmax),
                     attrs=attrs, arrays=arrays)


def convert(plan: QuantPlan) -> QuantPlan:
    """Turn the plan's LayerNorm float islands into integer layers where they qualify (in place)."""
    program, kept, new = [], {}, []
    steps = plan.program
    skip = set()
    for i, step in enumerate(steps):
        if i in skip:
            continue
        if step["kind"] == "op" and step["op"] == ATEN and not step.get("integer"):
            point = _quantize_point(steps, i)
            why = _why_float(step, plan, point is not None)
            if why is None:
                chain, at = point
                lp = layer_plan(step, plan, steps[at]["tensor"])
                new.append(lp)
                program.append({"kind": "layer", "name": lp.name, "layer": lp.name, "inputs": list(lp.inputs)})
                for j in chain:  # the movement now runs on the codes of the LayerNorm's output grid
                    steps[j] = dict(steps[j], integer=True)
                skip.add(at)
                continue
            kept[step["name"]] = why
        program.append(step)
    plan.program = program
    plan.layers = _insert_in_program_order(plan.layers, new, program)
    names = {lp.name for lp in new}
    plan.float_islands = [n for n in plan.float_islands if n not in names]
    plan.config["integer_islands"] = sorted(set(plan.config.get("integer_islands", [])) | {"layernorm"})
    if kept:
        plan.config["float_layernorms"] = kept
    return plan


def _insert_in_program_order(layers, new, program):
    """``layers`` in their order, each new layer right after the layer the program runs before it."""
    by_name, after = {lp.name: lp for lp in new}, {}
    prev = None
    for step in program:
        if step["kind"] != "layer":
            continue
        if step["layer"] in by_name:
            after.setdefault(prev, []).append(by_name[step["layer"]])
        else:
            prev = step["layer"]
    out = list(after.get(None, []))
    for lp in layers:
        out += [lp] + after.get(lp.name, [])
    return out


# --- the PyTorch simulation ----------------------------------------------------------------------
def isqrt_digits(v: torch.Tensor) -> torch.Tensor:
    """floor(sqrt(v)) of int64 v in [0, 2^62), digit by digit (32 steps, shifts and compares)."""
    rem, res = v.clone(), torch.zeros_like(v)
    bit = 1 << 60
    for _ in range(31):  # bit = 2^60, 2^58, ..., 1
        take = rem >= res + bit
        rem = torch.where(take, rem - (res + bit), rem)
        res = torch.where(take, (res >> 1) + bit, res >> 1)
        bit >>= 2
    return res


def normalize_rows(xc: torch.Tensor, eps_term: int) -> torch.Tensor:
    """n = d / sqrt(V) in Q24 for int64 rows ``xc`` (last axis), as in the module doc."""
    n = xc.shape[-1]
    d = n * xc - xc.sum(-1, keepdim=True)
    v = (d * d).sum(-1, keepdim=True) + eps_term
    t = normalising_shift(v)
    sig = isqrt_digits(torch.bitwise_left_shift(v, 2 * t))
    r = torch.where(sig > 0, (1 << RECIP_BITS) // sig.clamp(min=1), torch.zeros_like(sig))
    sh = RECIP_BITS - FRAC_BITS - t
    return torch.bitwise_right_shift(d * r + torch.bitwise_left_shift(torch.ones_like(sh), sh - 1), sh)


class QLayerNorm(nn.Module):
    """The integer LayerNorm of a plan layer on values carried as ``s_in (q - z_in)``."""

    def __init__(self, lp: LayerPlan, tensors):
        super().__init__()
        self.lp, self.tin, self.tout = lp, tensors[lp.inputs[0]], tensors[lp.output]
        for key in ("multiplier", "shift", "bias"):
            self.register_buffer(key, torch.as_tensor(np.asarray(lp.arrays[key], np.int64)))
        self.register_buffer("offset", self.bias + torch.bitwise_left_shift(torch.ones_like(self.shift), self.shift - 1))

    def forward(self, x):
        xc = torch.div(x.double(), self.tin.scale).round_().to(torch.int64)
        n = normalize_rows(xc, int(self.lp.attrs["eps_term"]))
        q = torch.bitwise_right_shift(n * self.multiplier + self.offset, self.shift) + self.tout.zero_point
        q = q.clamp_(*self.lp.clip) - self.tout.zero_point
        return q.to(torch.float32).mul_(self.tout.scale)
