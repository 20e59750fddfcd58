"""Where MiniLM's W8A8 error comes from (issue 21, step 1): measured, calibration data only.

Three views of one W8A8 plan (calibration sentences only; nothing here is fitted on evaluation data):
1. per-tensor SQNR of the plan against FP32 (``qm.report``), worst first;
2. outlier channels of every linear's input: per-channel max |x| over tokens, and the ratio of the
   largest channel to the median channel (a per-tensor grid spends its levels on the largest one);
3. attribution: the embedding cosine to FP32 when one role of linear (Q/K/V, attention output,
   FFN1, FFN2, over all 6 blocks) is left in float, so the gap each role closes is its share.

    PYTHONPATH=$PWD nice -n 10 python scripts/minilm_error_profile.py --calib 32 --eval 64
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

import tvmptq
from tvmptq.quant.report import _Capture

ROLES = ("q", "k", "v", "attn_out", "ffn1", "ffn2")   # order of the 6 linears in each BERT block


def cosine(a, b):
    a, b = a.reshape(len(a), -1), b.reshape(len(b), -1)
    return float(np.mean(np.sum(a * b, 1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--calib", type=int, default=32)
    ap.add_argument("--eval", type=int, default=64)
    ap.add_argument("--observer", default="percentile")
    ap.add_argument("--out", default="results/minilm_error_profile.md")
    args = ap.parse_args()
    t0 = time.time()
    model = tvmptq.load("minilm_l6")
    sset = tvmptq.get_set("sentences")
    calib = tuple(a[:args.calib] for a in sset.calibration())
    evald = tuple(a[:args.eval] for a in sset.evaluation())
    graph = tvmptq.prepare(model)
    ref = tvmptq.fp32_outputs(model, evald, graph, progress=False)
    cfg = tvmptq.make_config(8, 8, observer=args.observer)
    qm = tvmptq.quantize(model, calib, cfg, graph, progress=False)
    base = cosine(ref, tvmptq.api.run_outputs(qm.runner(), evald, 32, "sim", False))
    lines = [f"# MiniLM W8A8 error profile ({args.observer} observer, {args.calib} calibration / "
             f"{args.eval} evaluation sentences)", "",
             f"Command: `PYTHONPATH=$PWD nice -n 10 python scripts/minilm_error_profile.py "
             f"--calib {args.calib} --eval {args.eval} --observer {args.observer}`", "",
             f"Baseline W8A8 mean cosine to FP32 on these sentences: {base:.4f}", "",
             "## Worst 20 tensors by SQNR (calibration sentences)", "",
             "\n".join(qm.report(calib, max_samples=16).split("\n")[:22]), ""]

    # outlier channels of each linear's input, on FP32 activations of calibration sentences
    linears = [l for l in graph.layers if l.kind == "linear"]
    names = {l.inputs[0].name for l in linears}
    store: dict = {}
    with torch.no_grad():
        _Capture(graph.gm, names, store).run(*(torch.as_tensor(a[:16]) for a in calib))
    lines += ["## Outlier channels of linear inputs (FP32, 16 calibration sentences)", "",
              "| layer | role | input | max |x| | median channel max | ratio | top channels |",
              "|---|---|---|---|---|---|---|"]
    for i, l in enumerate(linears):
        x = store[l.inputs[0].name].double().reshape(-1, store[l.inputs[0].name].shape[-1]).abs()
        cmax = x.amax(0).numpy()
        top = np.argsort(cmax)[::-1][:3]
        lines.append(f"| {l.name} | {ROLES[i % 6]} | {l.inputs[0].name} | {cmax.max():.2f} | "
                     f"{np.median(cmax):.2f} | {cmax.max() / np.median(cmax):.1f} | "
                     f"{', '.join(str(c) for c in top)} |")

    # attribution: one role of linear in float at a time
    lines += ["", "## Cosine to FP32 with one role of linear kept in float (all 6 blocks)", "",
              "| kept in float | mean cosine | gap closed |", "|---|---|---|",
              f"| nothing (W8A8 baseline) | {base:.4f} | 0.00 |"]
    for r, role in enumerate(ROLES):
        ovr = {l.name: {"keep_float": True} for i, l in enumerate(linears) if i % 6 == r}
        q = tvmptq.quantize(model, calib, tvmptq.make_config(8, 8, observer=args.observer,
                                                             overrides=ovr), graph, progress=False)
        c = cosine(ref, tvmptq.api.run_outputs(q.runner(), evald, 32, "sim", False))
        lines.append(f"| {role} ({', '.join(ovr)}) | {c:.4f} | {(c - base) / (1 - base):.2f} |")
        print(role, c, flush=True)
    lines += ["", f"Wall time {time.time() - t0:.0f} s on the shared 2-core host (six agents, under load)."]
    open(args.out, "w").write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
