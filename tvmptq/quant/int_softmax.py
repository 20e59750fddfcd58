"""Integer softmax island (``QuantConfig.integer_islands=("softmax",)``): softmax of a quantized
tensor in integer arithmetic only, straight onto the plan's output grid.

The input is a quantized tensor (centred codes ``c = q - z``, scale ``s``), optionally plus an
additive attention mask. Per row (along the softmax axis):

    M     = max of c over kept positions
    d     = M - c                                  in [0, qmax - qmin]
    E     = T[min(d, L - 1)]   (kept), 0 (masked)  T[j] = round_half_even(2^F exp(-s j)), int32
    S     = sum E                                  int32: N 2^F < 2^31 (F = FRAC_BITS bounded by N)
    R     = floor(NUM / S)                         one int64 division per row, NUM = round(2^K / s_out)
    y     = (E R + 2^(K-1)) >> K                   int64, round half up
    code  = clip(y + z_out, clip)

Why a table: ``exp(s * (c - M))`` depends only on the integer ``d``, so ``2^F exp(-s d)`` for every
``d`` is exact up to its one rounding (the same argument as tvmptq/quant/lut.py). The table stops
at the first entry that rounds to 0 (``L`` entries, at most the input grid's span), so 16-bit
inputs need no bigger table than 8-bit ones of the same real range; I-BERT's shift + polynomial
i-exp is not needed. ``F = min(20, 30 - ceil(log2 N))`` keeps ``S <= N 2^F < 2^31`` for rows of
``N`` keys. ``K`` is the largest shift with ``NUM < 2^61``: ``E R <= NUM`` (``E <= S``), so the
int64 product never overflows, and ``R`` carries ``NUM / S >= 2^30`` significant levels.

Error against the float softmax ``p = exp(s(c - M)) / sum``: each ``T`` entry is off by at most
1/2 of ``2^-F``, so ``|E/S - p| <= N 2^-(F+1)`` (MiniLM, N = 128, F = 20: 6e-5, 0.03 of its
output step), plus ``< 2^-30`` from ``R`` and the final rounding; the output code is within one
step of the correctly rounded float softmax, and equals it away from rounding ties.

Masks: the add ``c s + m`` in front of the softmax is read as keep (``m > MASK_DROP``) or drop
(``m <= MASK_DROP``, ``exp`` of it is 0 in float64 as well, so float and integer islands agree);
a kept position must have ``m == 0`` (Hugging Face's ``(1 - mask) * min`` masks, SDPA's boolean
masks): any other additive bias is refused (DataError), never silently dropped. Dropped
positions are exactly 0 on the output grid. A row with every position dropped (an all-padding
sentence) keeps all of them, which is what the float softmax of ``c s + constant`` gives.

This module is the simulation's definition (PyTorch); tvmptq/reference/int_softmax.py is the
independent NumPy one, relay_passes/int_softmax.py the Relax lowering, all three reading the
parameters the plan stores in the softmax step's ``integer_island`` record (``island_params``).
"""
from __future__ import annotations

import math

import numpy as np
import torch

from ..errors import DataError

MASK_DROP = -1000.0     # additive mask values at or below this drop the position
MAX_FRAC_BITS = 20
NUM_LIMIT = 2 ** 61
SOFTMAX_OPS = ("softmax.int", "_softmax.default")


def frac_bits(row_length: int) -> int:
    """F with ``row_length * 2^F < 2^31`` (the int32 row sum)."""
    return max(1, min(MAX_FRAC_BITS, 30 - math.ceil(math.log2(max(row_length, 1)))))


def exp_table(scale: float, span: int, frac: int) -> np.ndarray:
    """``round_half_even(2^F exp(-scale j))`` for j = 0.. up to the first 0 entry (or ``span`` + 1
    entries: d never exceeds the grid's span), int32."""
    j = np.arange(span + 1, dtype=np.float64)
    table = np.round(np.ldexp(np.exp(-float(scale) * j), frac)).astype(np.int64)
    zeros = np.flatnonzero(table == 0)
    return (table[:zeros[0] + 1] if zeros.size else table).astype(np.int32)


def output_shift(out_scale: float) -> tuple[int, int]:
    """(K, NUM) with NUM = round(2^K / out_scale) the largest below NUM_LIMIT."""
    k = min(62, int(math.floor(math.log2(NUM_LIMIT * float(out_scale)))) - 1)
    if k < 1:
        raise ValueError(f"softmax output scale {out_scale} too small for the integer softmax")
    return k, int(round(2.0 ** k / float(out_scale)))


def island_params(tin, tout, clip, row_length: int) -> tuple[dict, np.ndarray]:
    """The softmax step's integer parameters (JSON) and its exp table (stored as a plan constant)."""
    frac = frac_bits(row_length)
    table = exp_table(tin.scale, int(tin.qmax - tin.qmin), frac)
    k, num = output_shift(tout.scale)
    return {"row_length": int(row_length), "frac_bits": frac, "shift": k, "numerator": num,
            "table_length": int(table.size), "out_zero_point": int(tout.zero_point),
            "clip": [int(clip[0]), int(clip[1])]}, table


def check_mask(mask: torch.Tensor, where: str) -> torch.Tensor:
    """Keep (True) / drop (False) from an additive mask; any other bias is refused by name."""
    keep = mask > MASK_DROP
    if bool((keep & (mask != 0)).any()):
        bad = float(mask[keep & (mask != 0)].flatten()[0])
        raise DataError(f"integer softmax {where!r}: additive mask value {bad} is neither 0 (keep) nor "
                        f"<= {MASK_DROP} (drop); quantize with the float softmax island for additive biases")
    return keep


def softmax_codes(codes: torch.Tensor, keep: torch.Tensor | None, dim: int, p: dict,
                  table: torch.Tensor, where: str = "softmax") -> torch.Tensor:
    """Output codes (int64) of the integer softmax of centred input codes ``codes`` (int64)."""
    if codes.shape[dim] > p["row_length"]:
        raise DataError(f"integer softmax {where!r}: rows of {codes.shape[dim]} exceed the {p['row_length']} "
                        "the plan's int32 row sum was sized for")
    if keep is None:
        keep = torch.ones_like(codes, dtype=torch.bool)
    else:
        keep = keep.expand(codes.shape)
        keep = keep | ~keep.any(dim=dim, keepdim=True)  # all dropped: keep the whole row
    low = torch.iinfo(torch.int64).min
    row_max = torch.where(keep, codes, torch.full_like(codes, low)).amax(dim=dim, keepdim=True)
    index = (row_max - codes).clamp_(0, p["table_length"] - 1)
    e = torch.where(keep, table[index], torch.zeros_like(index))
    total = e.sum(dim=dim, keepdim=True)
    recip = torch.div(torch.full_like(total, p["numerator"]), total, rounding_mode="floor")
    k = p["shift"]
    y = (e * recip + (1 << (k - 1))) >> k
    return (y + p["out_zero_point"]).clamp_(*p["clip"])


def _integer_values(program: list[dict]) -> dict[str, str]:
    """Program value name -> the quantized tensor it holds (integer layers, quantize points and
    the data movement on them)."""
    tensor_of = {}
    for step in program:
        if step["kind"] in ("layer", "quantize"):
            tensor_of[step["name"]] = step.get("tensor", step["name"])
        elif step["kind"] == "op" and step.get("integer"):
            src = next((a["value"] for a in step.get("args") or [] if isinstance(a, dict) and "value" in a), None)
            if src in tensor_of:
                tensor_of[step["name"]] = tensor_of[src]
    return tensor_of


def _value_uses(program: list[dict]) -> dict[str, int]:
    uses: dict[str, int] = {}

    def walk(a):
        if isinstance(a, dict):
            if "value" in a:
                uses[a["value"]] = uses.get(a["value"], 0) + 1
            for v in a.values():
                walk(v) if isinstance(v, (dict, list)) else None
        elif isinstance(a, list):
            for v in a:
                walk(v)
    for step in program:
        walk(step.get("args"))
        walk(step.get("kwargs"))
        walk(step.get("values"))
        for name in step.get("inputs", []):
            uses[name] = uses.get(name, 0) + 1
    return uses


def _scores_and_mask(step, by_name, tensor_of, uses):
    """(scores value, mask argument or None, mask add step name or None), or None when the softmax
    input is neither a quantized value nor ``quantized + mask`` with the add used only here."""
    x = (step.get("args") or [{}])[0]
    x = x.get("value") if isinstance(x, dict) else None
    if x in tensor_of:
        return x, None, None
    add = by_name.get(x)
    if add is None or add["kind"] != "op" or add["op"] != "add.Tensor" or add.get("integer") or uses.get(x) != 1:
        return None
    args = add.get("args") or []
    if len(args) != 2 or add.get("kwargs"):
        return None
    for i in (0, 1):
        a, m = args[i], args[1 - i]
        if isinstance(a, dict) and a.get("value") in tensor_of and isinstance(m, dict) and \
                (m.get("value") not in tensor_of if "value" in m else "const" in m):
            return a["value"], m, x
    return None


def add_integer_softmax(plan, graph) -> list[str]:
    """Record the integer softmax on every softmax step of ``plan``'s program that reads a quantized
    tensor (plus a keep/drop mask) and whose result is quantized; returns the softmax steps left
    as float islands (the caller reports them by name)."""
    program = plan.program
    by_name = {s["name"]: s for s in program if "name" in s}
    tensor_of, uses = _integer_values(program), _value_uses(program)
    quantized = {s["name"] for s in program if s["kind"] == "quantize"}
    nodes = {n.name: n for n in graph.gm.graph.nodes}
    left, islands = [], set()
    for step in program:
        if step["kind"] != "op" or step["op"] not in SOFTMAX_OPS:
            continue
        found = _scores_and_mask(step, by_name, tensor_of, uses)
        val = nodes[step["name"]].meta.get("val") if step["name"] in nodes else None
        args = step.get("args") or []
        dim = args[1] if len(args) > 1 else step.get("kwargs", {}).get("dim")
        if found is None or step["name"] not in quantized or val is None or not isinstance(dim, int):
            left.append(step["name"])
            continue
        dim = dim % val.dim()
        try:
            row_length = int(val.shape[dim])
        except (TypeError, ValueError):  # a symbolic row length: the int32 sum bound is unknown
            left.append(step["name"])
            continue
        scores, mask, mask_step = found
        tout = plan.tensors[step["name"]]
        params, table = island_params(plan.tensors[tensor_of[scores]], tout, (tout.qmin, tout.qmax), row_length)
        key = f"integer_softmax/{step['name']}"
        plan.constants[key] = table
        step["integer_island"] = {"kind": "softmax", "input": scores, "input_tensor": tensor_of[scores],
                                  "mask": mask, "mask_step": mask_step, "dim": dim, "table": key, **params}
        islands.update({step["name"], mask_step})
    plan.float_islands = [n for n in plan.float_islands if n not in islands]
    return left
