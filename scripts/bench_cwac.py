"""CWAC (QwT-v2) vs QwT v1 vs baseline PTQ: writes results/cwac.md (and results/cwac.json).

For every zoo model and bit width: the baseline plan (activation observer chosen on calibration
data, bias correction on), QwT v1 (per-block float linear compensation, a declared float branch)
and CWAC (per-channel affine folded into requantize multipliers and int32 biases), scored under
EVAL_PROTOCOL.md against FP32 on the evaluation split. Gap recovery = (method - base) / (fp32 - base)
on the primary metric (top-1 agreement; cosine for sentence embeddings). Costs: non-identity
channels, extra parameters, extra Relax ops (op counts of the lowered programs against the
baseline's: none for CWAC, the float64 branch islands for QwT v1), fit time, fitting state bytes
and peak RSS, and host latency (llvm, untuned) of the compiled programs, next to the PyTorch
simulation's.

Usage: .venv/bin/python scripts/bench_cwac.py [--models ...] [--bits W4A4 ...] [--eval-samples N]
       [--calib-samples N] [--fit-samples N] [--no-latency] [--ablation] [--out results/cwac.md]
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import tvmptq  # noqa: E402
from tvmptq.api import AUTO_SELECT_SAMPLES, QuantizedModel, apply_method, select_observer  # noqa: E402
from tvmptq.eval.sets import DEFAULT_SET, batches, run_outputs, score, torch_runner  # noqa: E402
from tvmptq.quant.calibrate import collect_statistics  # noqa: E402

BITS = {"efficientnet_lite0": ["W8A8", "W6A6", "W4A8", "W4A4"],
        "minilm_l6": ["W8A8", "W6A6", "W4A8", "W4A4"],
        "digits_resnet": ["W8A8", "W6A6", "W4A8", "W4A4", "W2A4"]}
PRIMARY = {"classification": "top1_agreement", "embedding": "cosine_mean"}
ABLATION = {"default (all, fp_stream, all rows)": {},
            "target same_input (QwT convention)": {"target": "same_input"},
            "rows active only": {"rows": "active"},
            "layers: block outputs only": {"layers": "block"},
            "ridge 1.0": {"ridge": 1.0},
            "no fallback": {"fallback": False}}


def _bits(tag: str) -> tuple[int, int]:
    w, a = tag[1:].split("A")
    return int(w), int(a)


def _latency(run, x, repeats=5) -> float:
    run(x)
    t = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        run(x)
        t.append(time.perf_counter() - t0)
    return 1000 * float(np.median(t)) / len(x)


def _compiled(model, plan, imported):
    import relay_passes as rp
    from tvmptq.algorithms.cost import parameter_count
    mod = rp.lowering_passes(plan)(imported)
    return rp.compile_integer(mod), rp.op_counts(mod), parameter_count(mod)


def bench_model(name, bits, args) -> list[dict]:
    model = tvmptq.load(name)
    evalset = tvmptq.get_set(DEFAULT_SET[name])
    graph = tvmptq.prepare(model)
    calib = tuple(a[:args.calib_samples] for a in evalset.calibration())
    evals = tuple(a[:args.eval_samples] for a in evalset.evaluation())
    labels = evalset.labels()[:len(evals[0])] if evalset.labels else None
    ref = run_outputs(torch_runner(graph.gm), evals, args.batch_size, f"{name} fp32")
    fp = score(evalset.task, ref, ref, labels)
    key = PRIMARY[evalset.task]
    observers, _ = collect_statistics(graph, batches(calib, args.batch_size))
    probe = tuple(a[:AUTO_SELECT_SAMPLES] for a in calib)
    imported = None
    if not args.no_latency:
        try:
            import relay_passes as rp
            imported = rp.Canonicalize()(rp.import_model(model.build(), model.example_inputs(args.lat_batch)))
        except Exception as err:  # noqa: BLE001 - reported in the table
            print(f"{name}: no Relax import ({type(err).__name__}: {err})")
    lat_x = tuple(a[:args.lat_batch] for a in evals)
    rows = []
    for tag in bits:
        w, a = _bits(tag)
        cfg = tvmptq.make_config(w, a, "minmax")
        rule, plan, sim, _ = select_observer(graph, observers, cfg, probe, args.batch_size, model.name)
        base = QuantizedModel(model, graph, plan, sim)
        variants = {"baseline": base}
        for method, opts in (("qwt", {"samples": args.fit_samples}), ("cwac", {"samples": args.fit_samples})):
            variants[method] = apply_method(base, calib, method, opts)
        scores = {}
        for method, qm in variants.items():
            out = run_outputs(qm.runner(), evals, args.batch_size, f"{name} {tag} {method}", False)
            scores[method] = score(evalset.task, ref, out, labels)
        base_cost = None
        for method, qm in variants.items():
            s = scores[method]
            gap = fp[key] - scores["baseline"][key]
            st = qm.plan.stats.get(method, {})
            row = {"model": name, "bits": tag, "observer": rule, "method": method, **s,
                   "primary": key, "fp32": fp[key],
                   "gap_recovery": (s[key] - scores["baseline"][key]) / gap if abs(gap) > 1e-12 else float("nan"),
                   "fit_seconds": st.get("fit_seconds", 0.0), "state_bytes": st.get("state_bytes", 0),
                   "peak_rss_mb": st.get("peak_rss_mb", float("nan")),
                   "non_identity": st.get("non_identity_channels", 0), "channels": st.get("channels", 0),
                   "extra_params": st.get("extra_params", 0)}
            if method == "cwac":
                row["layers"] = {k: v["non_identity"] for k, v in st["layers"].items()}
            row["sim_latency_ms"] = _latency(qm.runner(), lat_x[0]) if not args.no_latency else float("nan")
            if imported is not None:
                try:
                    run, ops, params = _compiled(model, qm.plan, imported)
                    row["compiled_latency_ms"] = _latency(run, lat_x[0])
                    row["relax_params"] = params
                    row["relax_ops"] = sum(ops.values())
                    if method == "baseline":
                        base_cost = (ops, params)
                    else:
                        row["extra_int_ops"] = sum((ops - base_cost[0]).values()) + sum((base_cost[0] - ops).values())
                        row["extra_relax_params"] = params - base_cost[1]
                except Exception as err:  # noqa: BLE001
                    row["compiled"] = f"{type(err).__name__}: {str(err)[:120]}"
            rows.append(row)
            print(json.dumps({k: v for k, v in row.items() if k != "layers"}, default=float), flush=True)
        if args.ablation:
            for label, opts in ABLATION.items():
                qm = apply_method(base, calib, "cwac", {"samples": args.fit_samples, **opts})
                out = run_outputs(qm.runner(), evals, args.batch_size, f"{name} {tag} {label}", False)
                s = score(evalset.task, ref, out, labels)
                gap = fp[key] - scores["baseline"][key]
                rows.append({"model": name, "bits": tag, "method": f"cwac ablation: {label}", **s,
                             "primary": key, "gap_recovery": (s[key] - scores["baseline"][key]) / gap if abs(gap) > 1e-12 else float("nan"),
                             "non_identity": qm.plan.stats["cwac"]["non_identity_channels"],
                             "channels": qm.plan.stats["cwac"]["channels"],
                             "fit_seconds": qm.plan.stats["cwac"]["fit_seconds"]})
                print(label, s[key], flush=True)
    return rows


def _fmt(v, d=2):
    if isinstance(v, float):
        return "-" if np.isnan(v) else f"{v:.{d}f}"
    return str(v)


def write_md(rows, args, path: Path, seconds: float):
    lines = ["# CWAC (QwT-v2) vs QwT v1 vs baseline", "",
             f"Command: `.venv/bin/python scripts/bench_cwac.py {' '.join(sys.argv[1:])}` "
             f"({seconds / 60:.1f} min on {platform.node()}, {torch.get_num_threads()} threads). "
             f"Calibration samples {args.calib_samples}, fitting samples {args.fit_samples}, evaluation "
             f"samples {args.eval_samples}. Latency: llvm host, **untuned**, batch {args.lat_batch}, ms per "
             "sample (median of 5); QwT v1 compiles its declared float branches as float64 islands "
             "(counted in extra Relax ops).", "",
             "Gap recovery = (method - baseline) / (fp32 - baseline) on the primary metric "
             "(top-1 agreement with FP32, %; cosine for MiniLM).", "",
             "| model | bits | method | primary | acc | gap recovery | non-identity ch | extra params | "
             "extra Relax ops | fit s | state B | peak RSS MB | compiled ms | sim ms |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append("| " + " | ".join([
            r["model"], r["bits"], r["method"], _fmt(r.get(r["primary"], float("nan")), 4),
            _fmt(r.get("accuracy", float("nan")), 4), _fmt(r.get("gap_recovery", float("nan"))),
            f"{r.get('non_identity', 0)}/{r.get('channels', 0)}" if r["method"].startswith("cwac") else "-",
            str(r.get("extra_relax_params", r.get("extra_params", 0))),  # compiled constants, else the fit's
            str(r.get("extra_int_ops", "-")), _fmt(r.get("fit_seconds", float("nan")), 1),
            str(r.get("state_bytes", "-")), _fmt(r.get("peak_rss_mb", float("nan")), 0),
            _fmt(r.get("compiled_latency_ms", float("nan")), 3) if "compiled" not in r else r["compiled"],
            _fmt(r.get("sim_latency_ms", float("nan")), 3)]) + " |")
    lines += ["", "## Non-identity channels per layer (CWAC)", ""]
    for r in rows:
        if r["method"] == "cwac" and "layers" in r:
            lines.append(f"- {r['model']} {r['bits']}: " + ", ".join(f"{k} {v}" for k, v in r["layers"].items()))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    path.with_suffix(".json").write_text(json.dumps(rows, indent=1, default=float))


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=list(BITS))
    p.add_argument("--bits", nargs="+", default=None)
    p.add_argument("--eval-samples", type=int, default=None)
    p.add_argument("--calib-samples", type=int, default=256)
    p.add_argument("--fit-samples", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lat-batch", type=int, default=8)
    p.add_argument("--no-latency", action="store_true")
    p.add_argument("--ablation", action="store_true", help="CWAC placement/target/ridge ablation rows")
    p.add_argument("--out", default=str(REPO / "results" / "cwac.md"))
    args = p.parse_args()
    t0 = time.perf_counter()
    rows = []
    for name in args.models:
        bits = [b for b in BITS[name] if args.bits is None or b in args.bits]
        rows += bench_model(name, bits, args)
        write_md(rows, args, Path(args.out), time.perf_counter() - t0)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
