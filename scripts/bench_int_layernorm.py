"""Integer LayerNorm island (issue 21): digits_vit accuracy with float vs integer LayerNorms, and
the integer kernel's latency at MiniLM's shape.

For each activation spec (8-bit residual sums, ``res16``) and each LayerNorm kind (the float64
island, ``QuantConfig.integer_islands=("layernorm",)``): one W8A8 plan on the calibration split,
its bit-exact simulation scored on the 540 evaluation images (top-1 accuracy, top-1 agreement with
FP32), how many LayerNorms are integer, and a NumPy reference check on the first images (integer
rows: must equal the simulation bit for bit). Then the compiled integer LayerNorm kernel alone
(targets/kernels/int_layernorm.py) on 128 x 384 uint8 codes, median of repeated calls.

    PYTHONPATH=$PWD nice -n 19 python scripts/bench_int_layernorm.py
"""
from __future__ import annotations

import argparse
import dataclasses
import shlex
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import tvmptq  # noqa: E402
from tvmptq.eval.sets import run_outputs, score  # noqa: E402
from tvmptq.quant.tensor_groups import PRESETS  # noqa: E402
from tvmptq.reference.executor import run_plan  # noqa: E402


def vit_rows(args) -> tuple[list[dict], dict]:
    model = tvmptq.load("digits_vit")
    evalset = tvmptq.get_set("digits")
    calib = tuple(np.asarray(a[:args.calib]) for a in evalset.calibration())
    evals = tuple(np.asarray(a) for a in evalset.evaluation())
    labels = np.asarray(evalset.labels())
    graph = tvmptq.prepare(model)
    ref = tvmptq.api.fp32_outputs(model, evals, graph, progress=False)
    fp32 = score("classification", ref, ref, labels)
    rows = []
    for wide in ("none", "res16"):
        for islands in ((), ("layernorm",)):
            cfg = tvmptq.make_config(8, 8, args.observer, tensor_bits=PRESETS[wide] if wide != "none" else None)
            cfg = dataclasses.replace(cfg, integer_islands=islands)
            qm = tvmptq.quantize(model, calib, cfg, graph, progress=False)
            out = run_outputs(qm.runner(), evals, 32, "sim", False)
            s = score("classification", ref, out, labels)
            lns = sum(lp.kind == "layernorm" for lp in qm.plan.layers)
            floats = sum(n.startswith("layer_norm") for n in qm.plan.float_islands)
            head = tuple(a[:args.check] for a in evals)
            exact = bool(np.array_equal(run_plan(qm.plan, *head), out[:args.check]))
            rows.append(dict(wide=wide, ln="integer" if islands else "float64", n_int=lns, n_float=floats,
                             exact=exact, **s))
            print(rows[-1], flush=True)
    return rows, fp32


def kernel_latency(rows=128, n=384, reps=200) -> float:
    import tvm

    import targets
    from targets.kernels.int_layernorm import int_layer_norm
    from tvmptq.quant.int_layernorm import output_arrays
    rng = np.random.RandomState(0)
    lib = tvm.compile(int_layer_norm(rows, n, "uint8", "uint8").with_attr("global_symbol", "main"),
                      target=targets.get("x86-host").tvm_target()).jit()
    a = output_arrays(rng.uniform(0.5, 2, n), rng.uniform(-1, 1, n), n, 8 / 255)
    dev = tvm.cpu()
    mk = tvm.runtime.tensor
    args = [mk(rng.randint(0, 256, (rows, n)).astype("uint8"), dev)] + [
        mk(np.asarray(a[k], np.int64), dev) for k in ("multiplier", "shift", "bias")] + [
        mk(np.array([128, 50, 128, 0, 255], np.int64), dev), mk(np.zeros((rows, n), "uint8"), dev)]
    timer = lib.time_evaluator("main", dev, number=reps, repeat=5)
    return float(np.median(timer(*args).results)) * 1e3


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--calib", type=int, default=256)
    ap.add_argument("--observer", default="mse")
    ap.add_argument("--check", type=int, default=64, help="evaluation images checked against the NumPy reference")
    ap.add_argument("--threads", type=int, default=1, help="TVM_NUM_THREADS for the kernel timing")
    ap.add_argument("--out", default="results/int_layernorm.md")
    args = ap.parse_args(argv)
    import os
    os.environ["TVM_NUM_THREADS"] = str(args.threads)  # read when TVM's thread pool starts (first timed call)
    cmd = "PYTHONPATH=$PWD nice -n 19 python " + " ".join(
        shlex.quote(x) for x in ["scripts/bench_int_layernorm.py", *(argv if argv is not None else sys.argv[1:])])
    t0 = time.time()
    rows, fp32 = vit_rows(args)
    ms = kernel_latency()
    md = ["# Integer LayerNorm island (issue 21)", "", f"Command: `{cmd}`", "",
          f"digits_vit W8A8 ({args.observer} observer), {args.calib} calibration images (plans, bias correction), "
          f"the 540 evaluation images (metrics: the bit-exact simulation). FP32 top-1 {fp32['accuracy']:.2f} %. "
          "`LN integer / float`: LayerNorms computed by the integer kernel / left as float64 islands. "
          f"`== NumPy`: the NumPy reference equals the simulation on the first {args.check} images.", "",
          "| residual | LayerNorm | LN integer / float | top-1 % | top-1 agreement % | == NumPy |",
          "|---|---|---|---|---|---|"]
    for r in rows:
        md.append(f"| {r['wide']} | {r['ln']} | {r['n_int']} / {r['n_float']} | {r['accuracy']:.2f} | "
                  f"{r['top1_agreement']:.2f} | {'yes' if r['exact'] else '**no**'} |")
    md += ["", f"Integer LayerNorm kernel alone, 128 x 384 uint8 codes (MiniLM's shape), one call: {ms:.3f} ms "
           f"(median; compiled for x86-host, {args.threads} thread(s), run under `nice -n 19` on the shared 2-core host, so an upper bound).",
           "", f"Wall time {time.time() - t0:.0f} s."]
    out = REPO / args.out
    out.write_text("\n".join(md) + "\n")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
