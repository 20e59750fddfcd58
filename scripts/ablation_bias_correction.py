"""Bias correction on and off, same statistics, same plan otherwise: writes results/bias_correction.md.

Usage: .venv/bin/python scripts/ablation_bias_correction.py [--model efficientnet_lite0] [--eval-samples N]
"""
from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import tvmptq  # noqa: E402
from bench_common import calibrated  # noqa: E402
from tvmptq.eval.sets import run_outputs, score, torch_runner  # noqa: E402
from tvmptq.quant.calibrate import build_plan  # noqa: E402
from tvmptq.quant.simulate import simulate  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="efficientnet_lite0")
    p.add_argument("--configs", default="W8A8:percentile,W4A8:mse,W4A4:mse")
    p.add_argument("--eval-samples", type=int)
    p.add_argument("--out", default="results/bias_correction.md")
    args = p.parse_args(argv)
    torch.set_num_threads(2)
    c = calibrated(args.model, args.eval_samples)
    evalset, graph, calib, evals, ref, observers = c.evalset, c.graph, c.calib, c.evals, c.ref, c.observers
    lines = ["# Bias correction ablation", "", "```", "$ .venv/bin/python " + " ".join(
        shlex.quote(a) for a in [sys.argv[0], *(argv or sys.argv[1:])]), "```", "",
        f"{args.model}, {len(evals[0])} evaluation samples, metrics vs FP32 (integer-exact simulation).", ""]
    rows = []
    for item in args.configs.split(","):
        bits, rule = item.split(":")
        w, a = (int(v) for v in bits[1:].split("A"))
        for bc in (False, True):
            plan = build_plan(graph, observers, tvmptq.make_config(w, a, rule, bias_correction=bc),
                              args.model, calib)
            out = run_outputs(torch_runner(simulate(graph, plan)), evals, 32, f"{bits} bc={bc}")
            m = score(evalset.task, ref, out)
            rows.append((bits, rule, "on" if bc else "off", m))
            print(rows[-1], flush=True)
    keys = list(rows[0][3])
    lines += ["| config | observer | bias correction | " + " | ".join(keys) + " |",
              "|" + "---|" * (3 + len(keys))]
    lines += [f"| {b} | {r} | {bc} | " + " | ".join(f"{m[k]:.3f}" for k in keys) + " |" for b, r, bc, m in rows]
    out_path = REPO / args.out
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text("\n".join(lines) + "\n")
    print(f"wrote {out_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
