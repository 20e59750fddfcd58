"""Lookup tables against float islands on x86-host: the same model, the same plan grids.

Model: conv 1x1 -> f -> conv 1x1 (64 channels, 56x56, batch 1), W8A8, compiled for x86-host with
its VNNI kernels, once with f as an integer lookup table (the default) and once as a declared
float island (``lookup_tables=False``). Reports the median latency of each build and the
difference, which is the cost of f itself (table: one gather; island: dequantize, float f,
quantize). Writes results/lut_speed.md.

    python scripts/bench_lut.py [--repeat 50] [--out results/lut_speed.md]
"""
from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import relay_passes as rp
from targets.build import compile_integer
import tvmptq

FUNCTIONS = {"sigmoid": torch.sigmoid, "tanh": torch.tanh, "silu": F.silu, "hardswish": F.hardswish,
             "gelu": F.gelu}


class Block(nn.Module):
    def __init__(self, f, channels=64):
        super().__init__()
        self.f, self.a, self.b = f, nn.Conv2d(channels, channels, 1), nn.Conv2d(channels, channels, 1)

    def forward(self, x):
        return self.b(self.f(self.a(x)))


def median_ms(run, x, repeat):
    run(x)
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        run(x)
        times.append(time.perf_counter() - t0)
    return 1e3 * float(np.median(times)), 1e3 * float(np.subtract(*np.percentile(times, [75, 25])))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=50)
    ap.add_argument("--size", type=int, default=56)
    ap.add_argument("--out", default="results/lut_speed.md")
    args = ap.parse_args()
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    calib = rng.standard_normal((16, 64, args.size, args.size)).astype(np.float32)
    x = calib[:1]
    rows = []
    for name, f in FUNCTIONS.items():
        model = tvmptq.zoo.from_module(Block(f).eval(), (torch.as_tensor(x),))
        res = {}
        for tables in (True, False):
            qm = tvmptq.quantize(model, (calib,), tvmptq.make_config(8, 8, lookup_tables=tables), progress=False)
            mod = rp.lower(model.build(), model.example_inputs(1), qm.plan)
            run = compile_integer(mod, "x86-host", tensorize=True)
            res[tables] = (median_ms(run, x, args.repeat),
                           sum(v for k, v in rp.op_counts(mod).items() if "float" in k.split("->")[-1]))
        (lut_ms, lut_iqr), lut_float = res[True]
        (isl_ms, isl_iqr), isl_float = res[False]
        rows.append((name, lut_ms, lut_iqr, isl_ms, isl_iqr, lut_float, isl_float))
        print(f"{name}: table {lut_ms:.3f} ms, island {isl_ms:.3f} ms")
    cpu = platform.processor() or platform.machine()
    lines = ["# Lookup tables vs float islands on x86-host", "",
             f"`python scripts/bench_lut.py --repeat {args.repeat} --size {args.size}`; conv1x1 -> f -> conv1x1, "
             f"64 channels, {args.size}x{args.size}, batch 1, W8A8, VNNI kernels for the convs; "
             f"median (IQR) of {args.repeat} calls, TVM's default threads, on {os.cpu_count()} cores ({cpu}), "
             "a machine shared with other jobs (noisy).", "",
             "| f | table ms (IQR) | float island ms (IQR) | island / table | float-output Relax ops: table / island |",
             "|---|---|---|---|---|"]
    for name, lm, li, im, ii, lf, isf in rows:
        lines.append(f"| {name} | {lm:.3f} ({li:.3f}) | {im:.3f} ({ii:.3f}) | {im / lm:.2f}x | {lf} / {isf} |")
    lines += ["", "Float-output Relax ops counts every op whose result is float in the lowered module "
              "(the input quantize and output dequantize included, so 1 means integer-only inside)."]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
