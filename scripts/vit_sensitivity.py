"""Why digits_vit loses accuracy at W4A4: which activation tensors cost it (results/vit_sensitivity.md).

W4A8 keeps FP32's accuracy (results/vit.md), so the loss at W4A4 comes from 4-bit activations.
The quantized tensors are grouped by what produces them (the model input, the patch conv, the
qkv / projection / MLP linears, the attention matmuls and their scale, the softmax, the
LayerNorms, GELU, the residual adds, the CLS concat, ...). For each group: accuracy on the
evaluation split with W4 weights, every activation at 4 bits except that group at 8 ("only this
group at 8") and every activation at 8 bits except that group at 4 ("only this group at 4").
The baseline plan is used as ``make_config`` builds it (observer fixed to the one the benchmark
chose at W4A4, bias correction on the calibration images); statistics and the observer come from
the first 192 calibration images only. Per-tensor bits are set through the public
``make_config(..., tensor_bits=...)`` (tensor name -> bits); nothing else changes.

Usage: .venv/bin/python scripts/vit_sensitivity.py [--observer mse] [--out results/vit_sensitivity.md]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import tvmptq  # noqa: E402
from tvmptq.eval.sets import batches, run_outputs, torch_runner  # noqa: E402
from tvmptq.quant.calibrate import build_plan, collect_statistics  # noqa: E402
from tvmptq.quant.simulate import simulate  # noqa: E402


def groups(graph) -> dict[str, list[str]]:
    """Quantized tensor names grouped by the op that produces them."""
    by_layer = {lay.out_node.name: lay for lay in graph.layers}
    linears = [lay.name for lay in graph.layers if lay.kind == "linear"]
    out = defaultdict(list)
    for name, node in graph.quant_points.items():
        lay = by_layer.get(name)
        if node.op == "placeholder":
            g = "model input"
        elif lay is not None and lay.kind == "linear":
            i = linears.index(lay.name)
            g = "head linear" if i == len(linears) - 1 else ("qkv", "attn proj", "fc1", "fc2")[i % 4] + " linear"
        elif lay is not None and lay.kind == "lut":
            g = f"{lay.attrs['function']} (table)"
        elif lay is not None:
            g = {"matmul": "attention matmuls (q k^T, p v)", "mul_const": "attention scale",
                 "add": "residual adds", "cat": "CLS concat", "conv2d": "patch conv"}.get(lay.kind, lay.kind)
        else:
            g = str(getattr(node.target, "__name__", node.target)).split(".")[0] + " (float island output)"
        out[g].append(name)
    return dict(out)


def write_md(result: dict, args) -> None:
    table = sorted(result["groups"], key=lambda r: r["only_this_at_4"])
    best = max(table, key=lambda r: r["only_this_at_8"])
    worst = table[0]
    lines = ["# digits_vit at W4A4: which 4-bit activations cost accuracy", "",
             f"`{result['command']}`, {result['minutes']:.1f} min. "
             f"Observer {args.observer} (the benchmark's choice at W4A4), statistics from the first 192 "
             "calibration images, accuracy (%) on the 540 test images, PyTorch simulation of the plan.", "",
             f"FP32 {result['fp32']:.1f}; W4A8 {result['W4A8']:.1f}; W8A4 {result['W8A4']:.1f}; "
             f"W4A4 {result['W4A4']:.1f}.", "",
             "| tensors produced by | count | W4A4, only these at A8 | W4A8, only these at A4 |", "|---|---|---|---|"]
    lines += [f"| {r['group']} | {r['tensors']} | {r['only_this_at_8']:.1f} | {r['only_this_at_4']:.1f} |" for r in table]
    lines += ["", f"Reading: 8-bit weights do not help at 4-bit activations (W8A4 {result['W8A4']:.1f} vs W4A4 "
              f"{result['W4A4']:.1f}) and 4-bit weights cost nothing at 8-bit activations (W4A8 "
              f"{result['W4A8']:.1f}): the loss is the 4-bit activation grids. No single group explains it: "
              f"alone at 4 bits the worst group ({worst['group']}) costs {result['W4A8'] - worst['only_this_at_4']:.1f} pt, "
              f"and putting the best single group back at 8 bits ({best['group']}) recovers only "
              f"{best['only_this_at_8'] - result['W4A4']:.1f} pt. The error is spread over the residual stream "
              "(per-tensor 4-bit grids on a 48-wide stream whose LayerNorm, position-embedding and attention "
              "tensors each cost about 2 pt), which is why methods that adjust weights (CWAC, AdaRound, WAPS) or "
              "per-tensor step sizes (BRECQ/QDrop) stay 6 pt or more below FP32 in results/vit.md."]
    Path(args.out).write_text("\n".join(lines) + "\n")
    Path(args.out).with_suffix(".json").write_text(json.dumps(result, indent=1))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--observer", default="mse")
    p.add_argument("--out", default=str(REPO / "results" / "vit_sensitivity.md"))
    p.add_argument("--from-json", action="store_true", help="rewrite the .md from the .json (no runs)")
    args = p.parse_args()
    if args.from_json:
        write_md(json.loads(Path(args.out).with_suffix(".json").read_text()), args)
        return
    t0 = time.perf_counter()
    model = tvmptq.load("digits_vit")
    digits = tvmptq.get_set("digits")
    fit = tuple(np.asarray(a[:192]) for a in digits.calibration())
    evals, labels = tuple(np.asarray(a) for a in digits.evaluation()), np.asarray(digits.labels())
    graph = tvmptq.prepare(model)
    observers, _ = collect_statistics(graph, batches(fit, 32))
    ref = run_outputs(torch_runner(graph.gm), evals, 32, "fp32", False)

    def accuracy(w, a, bits_for: dict[str, int]) -> float:
        config = tvmptq.make_config(w, a, args.observer, tensor_bits=bits_for)
        plan = build_plan(graph, observers, config, model.name, fit, 32)
        out = run_outputs(torch_runner(simulate(graph, plan)), evals, 32, "sim", False)
        return 100.0 * float((out.argmax(1) == labels).mean())

    fp32 = 100.0 * float((ref.argmax(1) == labels).mean())
    rows = {"W4A4": accuracy(4, 4, {}), "W4A8": accuracy(4, 8, {}), "W8A4": accuracy(8, 4, {})}
    table = []
    for g, names in groups(graph).items():
        up = accuracy(4, 4, {n: 8 for n in names})
        down = accuracy(4, 8, {n: 4 for n in names})
        table.append({"group": g, "tensors": len(names), "only_this_at_8": up, "only_this_at_4": down})
        print(json.dumps(table[-1]), flush=True)
    write_md({"command": " ".join(["scripts/vit_sensitivity.py", *sys.argv[1:]]),
              "minutes": (time.perf_counter() - t0) / 60, "fp32": fp32, **rows, "groups": table}, args)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
