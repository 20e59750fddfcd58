"""Relax lowering on every zoo model and bit width: writes results/lowering.md (+ .json).

For each model: Relax op counts before and after lowering, the float islands, and for each bit
width the metrics (vs FP32) of the PyTorch simulation, the compiled integer TVM program and ONNX
Runtime on tvmptq's exported QDQ model, plus how far simulation and compiled program agree
(identical outputs, top-1 / nearest-neighbour agreement). With --reference the compiled program
is also checked bit for bit against the independent NumPy executor (all evaluation samples).

Usage: .venv/bin/python scripts/bench_lowering.py [--models a,b] [--eval-samples N] [--no-reference]
       .venv/bin/python scripts/bench_lowering.py --from-json a.json,b.json   (models run separately,
       e.g. in parallel, rendered into one report)

results/lowering.md is rendered that way from results/lowering.json (digits_resnet, EfficientNet),
results/lowering_minilm.json and results/lowering_vit.json (each run with --models <one> and its
own --out; each file records the command and commit that produced it):
    .venv/bin/python scripts/bench_lowering.py \
        --from-json results/lowering.json,results/lowering_minilm.json,results/lowering_vit.json
"""
from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import relay_passes as rp  # noqa: E402
from targets.build import compile_integer  # noqa: E402
import tvmptq  # noqa: E402
from bench_common import calibrated  # noqa: E402
from tvmptq.eval.sets import run_outputs, score, torch_runner  # noqa: E402
from tvmptq.export.qdq_onnx import run_qdq_onnx  # noqa: E402
from tvmptq.quant.calibrate import build_plan  # noqa: E402
from tvmptq.quant.simulate import simulate  # noqa: E402
from tvmptq.reference import run_plan  # noqa: E402

BITS = {"digits_resnet": ["W8A8", "W6A6", "W4A8", "W4A4", "W2A4"],
        "efficientnet_lite0": ["W8A8", "W6A6", "W4A8", "W4A4"],
        "minilm_l6": ["W8A8", "W6A6", "W4A8", "W4A4"],
        "digits_vit": ["W8A8", "W6A6", "W4A8", "W4A4", "W2A4"]}
OBSERVER = "mse"      # one activation rule for every row (the best W8A8 rule in results/baseline.md)
BATCH = {"digits_resnet": 32, "efficientnet_lite0": 16, "minilm_l6": 8, "digits_vit": 32}  # static batch compiled
REFERENCE_BITS = {"W8A8", "W4A4"}  # the NumPy executor is slow: the two widths


TIE = 1e-6  # cosine differences below this are float noise: such neighbours are ties


def agreement(task, sim, comp) -> dict:
    """How far the compiled program reproduces the simulation. For embeddings, "top-1" is the
    nearest other sentence; where the simulation has several neighbours within TIE of its best
    (collapsed low-bit models map many sentences to the same vector: exact ties), choosing any
    of them agrees. The strict argmax agreement is reported too."""
    out = {"identical_outputs_pct": 100.0 * float(np.mean(sim == comp))}
    if task == "classification":
        out["top1_agreement_pct"] = 100.0 * float(np.mean(sim.argmax(1) == comp.argmax(1)))
        return out
    unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)  # noqa: E731
    s, c = unit(sim.astype(np.float64)), unit(comp.astype(np.float64))
    ss, cs = s @ s.T, c @ c.T
    np.fill_diagonal(ss, -np.inf)
    np.fill_diagonal(cs, -np.inf)
    rows, choice = np.arange(len(ss)), cs.argmax(1)
    out["top1_agreement_pct"] = 100.0 * float(np.mean(ss[rows, choice] >= ss.max(1) - TIE))
    out["strict_nn_agreement_pct"] = 100.0 * float(np.mean(ss.argmax(1) == choice))
    out["tied_rows"] = int(np.sum(np.sort(ss, 1)[:, -2] >= ss.max(1) - TIE))
    out["min_cosine"] = float(np.sum(s * c, 1).min())
    return out


def bench_model(name: str, args, log) -> dict:
    c = calibrated(name, args.eval_samples)
    model, evalset, graph, calib, evals, ref, observers = c.model, c.evalset, c.graph, c.calib, c.evals, c.ref, c.observers
    imported = rp.Canonicalize()(rp.import_model(model.build(), model.example_inputs(BATCH[name])))
    result = {"model": name, "samples": len(evals[0]), "task": evalset.task, "rows": [],
              "ops_before": dict(rp.op_counts(imported))}
    for bits in BITS[name]:
        w, a = (int(v) for v in bits[1:].split("A"))
        plan = build_plan(graph, observers, tvmptq.make_config(w, a, OBSERVER), name, calib)
        t0 = time.time()
        mod = rp.lowering_passes(plan)(imported)
        run = compile_integer(mod)
        compile_s = time.time() - t0
        if bits == "W8A8":
            result["ops_after"] = dict(rp.op_counts(mod))
            result["islands"] = dict(rp.plan_islands(plan))
            result["island_steps"] = dict(Counter(s["op"] for s in plan.program
                                                  if s["kind"] == "op" and not s.get("integer")
                                                  and s["op"] in rp.islands.ATEN_TO_RELAX))
        sim = run_outputs(torch_runner(simulate(graph, plan)), evals, 32, f"{bits} simulation")
        t0 = time.time()
        comp = run_outputs(run, evals, BATCH[name], f"{bits} compiled")
        run_s = (time.time() - t0) / len(evals[0])
        ort, _ = run_qdq_onnx(plan, *evals, threads=2)
        labels = evalset.labels()[:len(evals[0])] if evalset.labels else None
        row = {"bits": bits, "compile_s": compile_s, "compiled_ms_per_sample_untuned": 1e3 * run_s,
               "simulation": score(evalset.task, ref, sim, labels), "compiled": score(evalset.task, ref, comp, labels),
               "ort_qdq": score(evalset.task, ref, ort, labels), "sim_vs_compiled": agreement(evalset.task, sim, comp),
               "ort_vs_compiled": agreement(evalset.task, ort, comp)}
        if args.reference and bits in REFERENCE_BITS and evalset.task == "classification":
            t0 = time.time()
            numpy_ref = run_plan(plan, *evals, batch_size=16)
            row["reference_bit_exact"] = bool(np.array_equal(numpy_ref, comp))
            row["reference_identical_pct"] = 100.0 * float(np.mean(numpy_ref == comp))
            row["reference_s"] = time.time() - t0
        result["rows"].append(row)
        log(f"{name} {bits}: {json.dumps(row)}")
    return result


def _fmt(m: dict, keys) -> str:
    return " | ".join(f"{m[k]:.3f}" if isinstance(m.get(k), float) else str(m.get(k, "-")) for k in keys)


def render(results: list[dict]) -> str:
    runs = sorted({(r["command"], r["commit"]) for r in results})
    lines = ["# Relax lowering: op counts, float islands, compiled integer program vs simulation vs ORT", "",
             "Produced by", "", "```"] + [f"$ {c}   # at commit {k}" for c, k in runs] + [
             "```", "", "(the commit is the code that ran).",
             "Every row: the same plan (observer `mse`, per-channel MSE weights, bias correction) run three "
             "ways: the PyTorch simulation, the compiled integer-only TVM program (llvm, untuned; "
             "`relay_passes.lowering_passes` + `compile_integer`), and ONNX Runtime on tvmptq's QDQ export of "
             "the plan. Metrics are against FP32 on the evaluation set.", ""]
    for r in results:
        task = r["task"]
        keys = (["top1_agreement", "top5_contains_ref_top1", "kl_mean", "sqnr_db", "accuracy"] if task == "classification"
                else ["cosine_mean", "spearman", "nn_agreement"])
        keys = [k for k in keys if k in r["rows"][0]["simulation"]] or list(r["rows"][0]["simulation"])
        lines += [f"## {r['model']} ({r['samples']} evaluation samples)", "",
                  "| bits | variant | " + " | ".join(keys) + " |", "|---|---|" + "---|" * len(keys)]
        for row in r["rows"]:
            for variant, label in (("simulation", "simulation"), ("compiled", "TVM integer program"),
                                   ("ort_qdq", "ORT on QDQ export")):
                lines.append(f"| {row['bits']} | {label} | {_fmt(row[variant], keys)} |")
        lines += ["", "Simulation vs compiled program (and ORT vs compiled):", "",
                  "| bits | identical outputs % | top-1 agreement % | ORT identical % | ORT top-1 agreement % | "
                  "NumPy reference bit-exact | compile s | ms/sample (untuned) |", "|---" * 8 + "|"]
        for row in r["rows"]:
            s, o = row["sim_vs_compiled"], row["ort_vs_compiled"]
            refcell = ("-" if "reference_bit_exact" not in row else
                       f"{'yes' if row['reference_bit_exact'] else 'NO'} ({row['reference_identical_pct']:.3f} %)")
            top1 = f"{s['top1_agreement_pct']:.2f}" + (
                f" (strict {s['strict_nn_agreement_pct']:.2f}, {s['tied_rows']} tied, min cos {s['min_cosine']:.7f})"
                if "strict_nn_agreement_pct" in s else "")
            lines.append(f"| {row['bits']} | {s['identical_outputs_pct']:.2f} | {top1} | "
                         f"{o['identical_outputs_pct']:.2f} | {o['top1_agreement_pct']:.2f} | {refcell} | "
                         f"{row['compile_s']:.0f} | {row['compiled_ms_per_sample_untuned']:.1f} |")
        before, after = Counter(r["ops_before"]), Counter(r.get("ops_after", {}))
        lines += ["", "Relax ops before and after lowering (W8A8; op -> result dtype):", "", "```",
                  rp.format_op_counts(before, after), "```", ""]
        if r.get("island_steps"):
            lines += ["Float islands declared by the plan (ATen op: count) and the Relax float ops they allow:", "",
                      "- " + ", ".join(f"`{k}` x{v}" for k, v in sorted(r["island_steps"].items())),
                      "- " + ", ".join(f"`{k}` x{v}" for k, v in sorted(r["islands"].items())), ""]
        else:
            lines += ["Float islands: none (integer from the input quantize to the output dequantize).", ""]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default="digits_resnet,efficientnet_lite0,minilm_l6,digits_vit")
    p.add_argument("--eval-samples", type=int)
    p.add_argument("--no-reference", dest="reference", action="store_false")
    p.add_argument("--out", default="results/lowering.md")
    p.add_argument("--from-json", help="render these result files (comma-separated) instead of running")
    args = p.parse_args(argv)
    out_md = REPO / args.out
    if args.from_json:
        results = [r for f in args.from_json.split(",") for r in json.loads(Path(f).read_text())]
        out_md.write_text(render(results))
        print(f"wrote {out_md}")
        return 0
    torch.set_num_threads(2)
    command = ".venv/bin/python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *(argv or sys.argv[1:])])
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                            text=True).stdout.strip()
    out_md.parent.mkdir(parents=True, exist_ok=True)
    results = []
    for name in args.models.split(","):
        results.append(bench_model(name, args, lambda msg: print(msg, flush=True)))
        results[-1].update(command=command, commit=commit)
        out_md.with_suffix(".json").write_text(json.dumps(results, indent=1))
        out_md.write_text(render(results))  # after every model: partial runs are kept
    worst = min(row["sim_vs_compiled"]["top1_agreement_pct"] for r in results for row in r["rows"])
    print(f"wrote {out_md}; lowest simulation-vs-compiled top-1 agreement {worst:.2f} %")
    return 0 if worst >= 99.5 else 1


if __name__ == "__main__":
    sys.exit(main())
