"""Does CWAC's W4A4 EfficientNet-Lite0 fit carry across scenes? Writes results/cwac_scene_shift.md.

The protocol's photo views come from 10 calibration scenes and 12 different evaluation scenes
(../shared/EVAL_PROTOCOL.md; view i of a split is from scene i mod #scenes). CWAC (target
fp_stream) is fitted on views of some scenes and scored (top-1 agreement with FP32) on views it
did not see, from the same scenes and from other scenes, next to the baseline on the same views:

  A. fit: calibration views 0-191;  score: calibration views 192-255 (seen scenes; what the
     held-out probe of target="auto" sees), and the evaluation split (12 unseen scenes)
  B. fit: evaluation scenes 0-5;    score: evaluation scenes 6-11 (unseen scenes)
  C. fit: evaluation views 0-191;   score: evaluation views 256-511 (unseen views, seen scenes)

Usage: .venv/bin/python scripts/cwac_scene_shift.py [--bits W4A4] [--samples 192]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import tvmptq  # noqa: E402
from tvmptq.algorithms.cwac import CWACConfig, fit_cwac  # noqa: E402
from tvmptq.api import AUTO_SELECT_SAMPLES, select_observer  # noqa: E402
from tvmptq.eval.sets import DEFAULT_SET, batches, run_outputs, score, torch_runner  # noqa: E402
from tvmptq.quant.calibrate import collect_statistics  # noqa: E402

MODEL = "efficientnet_lite0"


def _views(arrays, keep: np.ndarray):
    return tuple(np.asarray(a)[keep] for a in arrays)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bits", default="W4A4")
    p.add_argument("--samples", type=int, default=192, help="fitting views per experiment (the stepped stream holds them)")
    p.add_argument("--out", default=str(REPO / "results" / "cwac_scene_shift.md"))
    args = p.parse_args()
    t0 = time.perf_counter()
    model, evalset = tvmptq.load(MODEL), tvmptq.get_set(DEFAULT_SET[MODEL])
    graph = tvmptq.prepare(model)
    calib, evals = evalset.calibration(), evalset.evaluation()
    e_scene = np.arange(len(evals[0])) % 12          # EVAL_PROTOCOL: view i is from scene i mod 12
    w, a = (int(v) for v in args.bits[1:].split("A"))
    observers, _ = collect_statistics(graph, batches(calib, 32))
    probe = tuple(x[:AUTO_SELECT_SAMPLES] for x in calib)
    rule, plan, sim, _ = select_observer(graph, observers, tvmptq.make_config(w, a, "minmax"), probe, 32, MODEL)
    fp = torch_runner(graph.gm)
    idx_c, idx_e = np.arange(len(calib[0])), np.arange(len(evals[0]))
    experiments = {
        "A. fit calibration views 0-191": (_views(calib, idx_c < 192), {
            "calibration views 192-255 (unseen views, seen scenes)": _views(calib, idx_c >= 192),
            "evaluation split (12 unseen scenes)": evals}),
        "B. fit evaluation scenes 0-5": (_views(evals, e_scene < 6), {
            "evaluation scenes 6-11 (unseen scenes)": _views(evals, e_scene >= 6)}),
        "C. fit evaluation views 0-191": (_views(evals, idx_e < 192), {
            "evaluation views 256-511 (unseen views, seen scenes)": _views(evals, idx_e >= 256)}),
    }
    rows = []
    for name, (fit_on, scored) in experiments.items():
        cw_plan, cw_sim = fit_cwac(graph, plan, fit_on, CWACConfig(samples=args.samples, target="fp_stream"))
        for label, x in scored.items():
            ref = run_outputs(fp, x, 32, "fp32", False)
            base = score("classification", ref, run_outputs(torch_runner(sim), x, 32, "base", False))["top1_agreement"]
            cwac = score("classification", ref, run_outputs(torch_runner(cw_sim), x, 32, "cwac", False))["top1_agreement"]
            rec = (cwac - base) / (100 - base)
            rows.append((name, min(args.samples, len(fit_on[0])), label, len(x[0]), base, cwac, rec))
            print(rows[-1], flush=True)
    lines = ["# CWAC across scenes: EfficientNet-Lite0 " + args.bits, "",
             f"Command: `.venv/bin/python scripts/cwac_scene_shift.py {' '.join(sys.argv[1:])}` "
             f"({(time.perf_counter() - t0) / 60:.1f} min). Baseline: {rule} observer chosen on calibration "
             "data; CWAC target fp_stream (per-channel least squares, identity fallback). Top-1 agreement "
             "with FP32, %. Gap recovery = (cwac - base) / (100 - base).", "",
             "| experiment | fit views | scored on | views | baseline | CWAC | gap recovery |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {n} | {k} | {lab} | {m} | {b:.1f} | {c:.1f} | {r:.2f} |" for n, k, lab, m, b, c, r in rows]
    Path(args.out).write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
