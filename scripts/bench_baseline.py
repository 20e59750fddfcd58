"""Baseline PTQ benchmark: writes results/baseline.md.

For every zoo model, FP32 and each bit width (W8A8, W6A6, W4A8, W4A4; W2A4 for digits) with each
activation observer (minmax, percentile, mse), scored under EVAL_PROTOCOL.md against FP32 on the
evaluation split. One streaming calibration pass per model feeds every configuration (statistics do
not depend on the bit width); a configuration's calibration time is that pass plus building its plan.
The "auto" column marks the observer tvmptq would pick on calibration data alone. ONNX Runtime's
quantize_static rows for EfficientNet-Lite0 come from scripts/peer_ort_efficientnet.py in the same run.

Usage: .venv/bin/python scripts/bench_baseline.py [--models ...] [--eval-samples N] [--no-ort] [--resume]

--resume keeps the models already in --json (each section keeps the command, commit and date that
produced it) and runs only the others; a kept EfficientNet section also keeps the ONNX Runtime peer
section from results/ort_efficientnet.md unless the peer is rerun.
"""
from __future__ import annotations

import argparse
import json
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import tvmptq  # noqa: E402
from tvmptq.api import AUTO_SELECT_SAMPLES, OBSERVERS  # noqa: E402
from tvmptq.eval.metrics import sqnr_db  # noqa: E402
from tvmptq.eval.sets import DEFAULT_SET, batches, run_outputs, score, torch_runner  # noqa: E402
from tvmptq.quant.calibrate import build_plan, collect_statistics  # noqa: E402
from tvmptq.quant.simulate import simulate  # noqa: E402
from tvmptq.util import peak_rss_mb  # noqa: E402
from bench_common import PROTOCOL_BITS  # noqa: E402

COLUMNS = {"classification": [("top1_agreement", "top-1 agr %", 1), ("top5_contains_ref_top1", "top-5 %", 1),
                              ("kl_mean", "KL", 4), ("sqnr_db", "SQNR dB", 2)],
           "embedding": [("cosine_mean", "cosine", 4), ("spearman", "Spearman", 4),
                         ("nn_agreement", "NN agr %", 1)]}


def bench_model(name: str, eval_samples: int | None, batch_size: int) -> dict:
    model = tvmptq.load(name)
    evalset = tvmptq.get_set(DEFAULT_SET[name])
    graph = tvmptq.prepare(model)
    calib = evalset.calibration()
    evals = evalset.evaluation()
    if eval_samples:
        evals = tuple(a[:eval_samples] for a in evals)
    labels = evalset.labels()[:len(evals[0])] if evalset.labels else None
    ref = run_outputs(torch_runner(graph.gm), evals, batch_size, f"{name} fp32")
    rows = [{"config": "FP32", "observer": "-", **score(evalset.task, ref, ref, labels)}]

    rss0 = peak_rss_mb()
    t0 = time.perf_counter()
    observers, samples = collect_statistics(graph, batches(calib, batch_size))
    stats_s = time.perf_counter() - t0
    state_kb = sum(o.counts.nbytes for o in observers.values()) / 1024
    probe = tuple(a[:AUTO_SELECT_SAMPLES] for a in calib)
    probe_ref = run_outputs(torch_runner(graph.gm), probe, batch_size, progress=False)
    for bits in PROTOCOL_BITS[name]:
        w, a = (int(v) for v in bits[1:].split("A"))
        probe_sqnr = {}
        for rule in OBSERVERS:
            t1 = time.perf_counter()
            plan = build_plan(graph, observers, tvmptq.make_config(w, a, rule), name, calib, batch_size)
            sim = simulate(graph, plan)
            plan_s = time.perf_counter() - t1
            probe_sqnr[rule] = sqnr_db(probe_ref, run_outputs(torch_runner(sim), probe, batch_size, progress=False))
            out = run_outputs(torch_runner(sim), evals, batch_size, f"{name} {bits} {rule}")
            rows.append({"config": bits, "observer": rule, **score(evalset.task, ref, out, labels),
                         "calib_s": stats_s + plan_s, "peak_rss_mb": peak_rss_mb(),
                         "calib_probe_sqnr": probe_sqnr[rule]})
            print(name, bits, rule, {k: round(v, 3) for k, v in rows[-1].items() if isinstance(v, float)}, flush=True)
        chosen = max(probe_sqnr, key=probe_sqnr.get)
        for r in rows:
            if r["config"] == bits:
                r["auto"] = r["observer"] == chosen
    return {"name": name, "task": evalset.task, "rows": rows, "samples": samples,
            "eval_samples": len(evals[0]), "stats_s": stats_s, "observer_state_kb": state_kb,
            "rss_before_calib_mb": rss0, "layers": len(graph.layers), "islands": len(graph.islands)}


def table(result: dict) -> str:
    cols = COLUMNS[result["task"]] + ([("accuracy", "accuracy %", 2)] if "accuracy" in result["rows"][0] else [])
    head = "| config | observer | auto | " + " | ".join(c[1] for c in cols) + " | calib s | peak RSS MB |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in result["rows"]:
        vals = " | ".join(f"{r[k]:.{d}f}" for k, _, d in cols)
        auto = "**yes**" if r.get("auto") else ""
        calib = f"{r['calib_s']:.1f}" if "calib_s" in r else "-"
        rss = f"{r['peak_rss_mb']:.0f}" if "peak_rss_mb" in r else "-"
        lines.append(f"| {r['config']} | {r['observer']} | {auto} | {vals} | {calib} | {rss} |")
    return "\n".join(lines)


def _git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _command(argv) -> str:
    return "$ .venv/bin/python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *(argv or sys.argv[1:])])


def _write(args, argv, results, ort_md, complete: bool) -> Path:
    command = _command(argv)
    commands = list(dict.fromkeys([*(r["command"] for r in results if r.get("command")), command]))
    md = ["# Baseline PTQ (tvmptq) under EVAL_PROTOCOL.md", "", "```", *commands, "```", "",
          f"Machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, 2 threads. "
          "Weights per-output-channel symmetric on the narrow grid (MSE range search), activations per "
          "tensor asymmetric, empirical bias correction on 64 calibration samples; no layer kept at higher "
          "precision; every conv/linear/add/pool/logits tensor quantized. Metrics are the integer-exact "
          "simulation against FP32 on the evaluation split. "
          f"`auto` marks the observer chosen by output SQNR on {AUTO_SELECT_SAMPLES} calibration samples "
          "(the evaluation split is never used to choose). Calibration s = one streaming statistics pass "
          "shared by all configurations + building that configuration's plan (bias correction included); "
          "peak RSS is the process's.", ""]
    if not complete:
        md += ["**Run in progress: sections below are complete, the rest is still running.**", ""]
    for r in results:
        md += [f"## {r['name']}", "",
               f"Run from commit {r.get('commit', '?')}, finished {r.get('date', '?')}"
               f"{' by `' + r['command'][2:] + '`' if r.get('command') else ''}. {r['layers']} integer "
               f"layers, {r['islands']} float-island ops; {r['samples']} calibration samples, "
               f"{r['eval_samples']} evaluation samples; statistics pass {r['stats_s']:.1f} s; observer state "
               f"{r['observer_state_kb']:.0f} KiB (fixed: histograms of 2048 bins, independent of the number "
               "of samples).", "", table(r), ""]
    if ort_md:
        md += ["## ONNX Runtime quantize_static peer (EfficientNet-Lite0)", "", ort_md.split("\n", 1)[1].strip(), ""]
    out = REPO / args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(md) + "\n")
    (REPO / args.json).write_text(json.dumps(results, indent=1, default=float))
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default="efficientnet_lite0,minilm_l6,digits_resnet,digits_vit")
    p.add_argument("--eval-samples", type=int, help="score only the first N evaluation samples")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--no-ort", action="store_true", help="skip the ONNX Runtime peer rows")
    p.add_argument("--resume", action="store_true",
                   help="keep models already in --json (each section states its commit and date)")
    p.add_argument("--out", default="results/baseline.md")
    p.add_argument("--json", default="results/baseline.json")
    args = p.parse_args(argv)
    torch.set_num_threads(2)

    # The ONNX Runtime peer runs in its own process from the start: it overlaps with our models
    # (the full benchmark takes well over an hour on 2 cores). --single-pass: ORT's default
    # one-pass Percentile calibration, its best W8A8 figure.
    ort = None
    ort_out = REPO / "results" / "ort_efficientnet.md"
    if not args.no_ort and "efficientnet_lite0" in args.models:
        ort = subprocess.Popen([sys.executable, str(REPO / "scripts" / "peer_ort_efficientnet.py"),
                                "--out", str(ort_out), "--single-pass"])
    previous = {}
    if args.resume and (REPO / args.json).is_file():
        previous = {r["name"]: r for r in json.loads((REPO / args.json).read_text())}
    results = []
    commit = _git_commit()  # the code this process runs (later commits do not change it)
    for name in [n for n in args.models.split(",") if n]:
        if name in previous:
            results.append(previous[name])
            continue
        result = bench_model(name, args.eval_samples, args.batch_size)
        result.update(commit=commit, date=time.strftime("%Y-%m-%d %H:%M"), command=_command(argv))
        results.append(result)
        _write(args, argv, results, None, complete=False)  # a section lands as soon as it is done
    ort_md = None
    if ort is not None:
        if ort.wait() != 0:
            raise SystemExit("the ONNX Runtime peer script failed")
        ort_md = ort_out.read_text()
    elif "efficientnet_lite0" in previous and ort_out.is_file():
        ort_md = ort_out.read_text()  # the kept EfficientNet section's peer rows, from their own run
    print(f"wrote {_write(args, argv, results, ort_md, complete=True)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
