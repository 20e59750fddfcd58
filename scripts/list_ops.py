"""Every ATen op the classifier knows and how it runs: writes results/ops.md from the tables
(tvmptq/quant/graph.py, tvmptq/quant/lut.py), so the file cannot drift from the code.

    python scripts/list_ops.py [--out results/ops.md]
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from tvmptq.quant import edge_ops, graph, lut

HOW = {
    "conv2d": "integer kernel (int8 x int8 -> int32, per-channel requantize)",
    "linear": "integer kernel (int8 x int8 -> int32, per-channel requantize)",
    "matmul": "integer kernel (activation x activation or constant, int32, requantize)",
    "add": "integer requantize (both inputs rescaled, one shared shift)",
    "mean": "integer requantize (int32 sum, one multiplier)",
    "mul_const": "integer requantize (by a Python scalar; a tensor product of two activations: 'mul')",
    "cat": "integer requantize (each input rescaled to the output grid)",
    "avg_pool": "integer requantize (int32 window sum, one multiplier; per-position divisors refused)",
    "bilinear": ("integer requantize (2x2 integer weights on a 1/D grid per axis, int32 sum, one multiplier; "
                 "half-pixel and align_corners; grids finer than 1/64 refused by name)"),
    "prelu": "integer requantize (two multipliers: x >= 0 shared, x < 0 per channel, slope sign included)",
}


def name(op) -> str:
    return f"aten.{op.__name__}" if isinstance(op, torch._ops.OpOverload) else f"operator.{op.__name__}"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="results/ops.md")
    args = ap.parse_args()
    rows = {}
    for op in graph.FLOAT_ISLAND_OPS:
        rows[name(op)] = "float island (declared, named in the plan)"
    for op in graph.PASSTHROUGH_OPS:
        rows[name(op)] = "data movement (grid passes through)"
    rows["aten.pad.default"] = ("data movement (zero constant padding; reflect and replicate: copies); "
                                "other values/modes refused")
    for op in graph.FUSABLE_ACTIVATIONS:
        rows[name(op)] = "fused into the output clip of the op before it; otherwise a lookup table"
    for op, kind in {**graph.KERNEL_OPS, **graph.REQUANT_OPS}.items():
        rows[name(op)] = HOW[kind]
    rows["aten.mul.Tensor"] = ("integer requantize: by a scalar (mul_const), or the product of two quantized "
                               "activations (int32 product, one requantize); else a float island")
    for op, (fn, _) in lut.FUNCTIONS.items():
        if op not in graph.FUSABLE_ACTIVATIONS:
            rows[name(op)] = (f"lookup table ({fn}: input code -> output code) on a quantized input; float island "
                              "with --float-activations or on float-island outputs")
    rows["aten.conv_transpose2d.input"] = ("integer kernel: zero insertion + padding (data movement) and a stride-1 "
                                           "conv2d (int8 x int8 -> int32, per-channel requantize; im2col + dot-product "
                                           "kernel when groups=1 and undilated)")
    rows["aten.erf.default"] = ("with the ONNX GELU spelling around it (div by sqrt 2, +1, mul, mul 0.5): one GELU "
                                "lookup table; alone: refused")
    rows["aten.batch_norm.default"] = "folded into the conv before it; otherwise a depthwise 1x1 integer conv"
    rows["aten.log_softmax.int"] = rows["aten._log_softmax.default"] = "float island (float64, declared)"
    lines = ["# Operators: how each ATen op runs in the integer program", "",
             "`python scripts/list_ops.py` (from the classifier tables). Any op not listed is refused with "
             "`UnsupportedOpError` naming the node and the op.", "",
             "Refused by name with what would be needed (`tvmptq/quant/edge_ops.py` NEEDS): "
             + "; ".join(f"`{op}`: {why}" for op, why in sorted(edge_ops.NEEDS.items()))
             + "; avg_pool2d with per-position divisors (count_include_pad=False with padding, ceil_mode partial windows).",
             "", "ONNX files (onnx2torch, tvmptq/zoo/onnx_converters.py): `Resize` with constant scales or sizes becomes "
             "`upsample_nearest2d` (mode nearest, asymmetric + floor) or `upsample_bilinear2d` (linear: half_pixel, "
             "pytorch_half_pixel, align_corners); other Resize modes are refused naming the node. `HardSigmoid` "
             "(alpha 1/6, beta 1/2) is `hardsigmoid`; GELU spelled with `Erf` (opset < 20) is one `gelu` table.",
             "", "| ATen op | how it runs |", "|---|---|"]
    lines += [f"| `{k}` | {v} |" for k, v in sorted(rows.items())]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines) + "\n")
    print(f"{len(rows)} ops -> {args.out}")


if __name__ == "__main__":
    main()
