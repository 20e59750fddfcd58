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
       [--calib-samples N] [--fit-samples N] [--no-latency] [--ablation] [--out results/cwac.md] [--merge]

--merge keeps the rows of the models not run now from the --out json (results/cwac.json) and adds
this run's: each row records the run that produced it ("run": command, minutes, sample counts), and
the header lists every run with its models.
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
from tvmptq.eval.sets import batches, run_outputs, score, torch_runner  # noqa: E402
from bench_common import PROTOCOL_BITS, latency_ms, load_case, relax_import  # noqa: E402
from tvmptq.quant.calibrate import collect_statistics  # noqa: E402

# Ablations are variations of the FP32-stream fit (the default before target="auto"), so each
# row changes one thing; the two target rows are the candidates "auto" chooses between.
FP = {"target": "fp_stream"}
ABLATION = {"target fp_stream (all layers, all rows)": FP,
            "target same_input (QwT convention)": {"target": "same_input"},
            "rows active only": {**FP, "rows": "active"},
            "layers: block outputs only": {**FP, "layers": "block"},
            "ridge 1.0": {**FP, "ridge": 1.0},
            "no fallback": {**FP, "fallback": False},
            "solver moments (match mean and sd, no OLS shrinkage)": {**FP, "solver": "moments"},
            "target same_input + solver moments": {"target": "same_input", "solver": "moments"},
            "auto, chosen by the task metric on held-out calibration (not SQNR)": {"select_by": "task"},
            # not a method: fitted on the very samples it is scored on, the most a per-layer
            # closed-form affine can do with this baseline
            "oracle: fp_stream fitted on 256 of the scored evaluation samples": {"oracle": True}}


def _bits(tag: str) -> tuple[int, int]:
    w, a = tag[1:].split("A")
    return int(w), int(a)


def _gap_recovery(score: float, base: float, fp32: float) -> float:
    """(method - baseline) / (fp32 - baseline); NaN where the baseline already matches FP32."""
    gap = fp32 - base
    return (score - base) / gap if abs(gap) > 1e-12 else float("nan")


def _compiled(model, plan, imported, build: bool):
    """Lowered op counts and parameter count; the compiled callable too when ``build``."""
    import relay_passes as rp
    from targets.build import compile_integer
    from tvmptq.algorithms.cost import parameter_count
    mod = rp.lowering_passes(plan)(imported)
    return compile_integer(mod) if build else None, rp.op_counts(mod), parameter_count(mod)


def _layer_mse_drop(st: dict) -> float:
    """Median over CWAC layers of the calibration MSE removed by the fitted affine (percent):
    how much of each layer's error is a per-channel gain/offset at all."""
    drops = [1 - r["clipped_mse_after"] / r["clipped_mse_before"] for r in st.get("layers", {}).values()
             if r.get("clipped_mse_before", 0) > 0]
    return 100 * float(np.median(drops)) if drops else float("nan")


def bench_model(name, bits, args) -> list[dict]:
    case = load_case(name, args.calib_samples, args.eval_samples)
    model, evalset, graph, calib, evals, labels, key = (case.model, case.evalset, case.graph, case.calib,
                                                        case.evals, case.labels, case.key)
    ref = run_outputs(torch_runner(graph.gm), evals, args.batch_size, f"{name} fp32")
    fp = score(evalset.task, ref, ref, labels)
    observers, _ = collect_statistics(graph, batches(calib, args.batch_size))
    probe = tuple(a[:AUTO_SELECT_SAMPLES] for a in calib)
    imported = None
    if not args.no_latency:
        try:
            imported = relax_import(model, args.lat_batch)
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
            st = qm.plan.stats.get(method, {})
            row = {"model": name, "bits": tag, "observer": rule, "method": method, **s,
                   "primary": key, "fp32": fp[key],
                   "gap_recovery": _gap_recovery(s[key], scores["baseline"][key], fp[key]),
                   "fit_seconds": st.get("fit_seconds", 0.0), "state_bytes": st.get("state_bytes", 0),
                   "peak_rss_mb": st.get("peak_rss_mb", float("nan")),
                   "non_identity": st.get("non_identity_channels", 0), "channels": st.get("channels", 0),
                   "extra_params": st.get("extra_params", 0)}
            if method == "cwac":
                row["layers"] = {k: v["non_identity"] for k, v in st["layers"].items()}
                row["selection"] = st.get("selection")
                row["layer_mse_drop"] = _layer_mse_drop(st)
            timed = not args.no_latency and (args.latency_bits is None or tag in args.latency_bits)
            row["sim_latency_ms"] = latency_ms(qm.runner(), lat_x, 5) if timed else float("nan")
            if imported is not None:
                try:
                    timed = args.latency_bits is None or tag in args.latency_bits
                    run, ops, params = _compiled(model, qm.plan, imported, build=timed)
                    if timed:
                        row["compiled_latency_ms"] = latency_ms(run, lat_x, 5)
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
        if args.ablation and (args.ablation_bits is None or tag in args.ablation_bits
                              or f"{name}:{tag}" in args.ablation_bits):
            if args.ablation_set != "select":
                rows.append(_sqnr_profile(name, tag, graph, variants, evals, args))
                rows += _stronger_base_rows(name, tag, graph, observers, probe, model, calib, evals, ref, labels,
                                            evalset.task, key, fp, args)
            if args.ablation_set == "all" and args.calib_samples > args.fit_samples:
                rows.append(_qwt_all_samples(name, tag, base, calib, evals, ref, labels, evalset.task, key,
                                             scores["baseline"][key], fp, args))
            chosen = {"all": ABLATION, "bases": {},
                      "select": {k: v for k, v in ABLATION.items() if "select_by" in v}}[args.ablation_set]
            for label, opts in chosen.items():
                if opts.get("oracle"):
                    seen = tuple(a[:256] for a in evals)       # 256: the stepped stream holds them all
                    qm = apply_method(base, seen, "cwac", {"samples": 256, **FP})
                else:
                    qm = apply_method(base, calib, "cwac", {"samples": args.fit_samples, **opts})
                out = run_outputs(qm.runner(), evals, args.batch_size, f"{name} {tag} {label}", False)
                s = score(evalset.task, ref, out, labels)
                sel = qm.plan.stats["cwac"].get("selection")
                label += f" [chose {sel['chosen']}]" if sel else ""
                rows.append({"model": name, "bits": tag, "method": f"cwac ablation: {label}", **s,
                             "primary": key, "gap_recovery": _gap_recovery(s[key], scores["baseline"][key], fp[key]),
                             "non_identity": qm.plan.stats["cwac"]["non_identity_channels"],
                             "channels": qm.plan.stats["cwac"]["channels"],
                             "fit_seconds": qm.plan.stats["cwac"]["fit_seconds"],
                             "layer_mse_drop": _layer_mse_drop(qm.plan.stats["cwac"])})
                print(label, s[key], flush=True)
    return rows


def _qwt_all_samples(name, tag, base, calib, evals, ref, labels, task, key, base_score, fp, args) -> dict:
    """QwT v1 fitted on every calibration sample instead of ``--fit-samples``: whether its full
    C_out x C_in maps are starved of rows (its R^2 safeguard is measured on the fitting rows)."""
    qm = apply_method(base, calib, "qwt", {"samples": len(calib[0])})
    s = score(task, ref, run_outputs(qm.runner(), evals, args.batch_size, f"{name} {tag} qwt all", False), labels)
    st = qm.plan.stats["qwt"]
    print("qwt on all calibration samples", s[key], flush=True)
    return {"model": name, "bits": tag, "method": f"qwt ablation: fitted on all {len(calib[0])} calibration samples",
            **s, "primary": key, "gap_recovery": _gap_recovery(s[key], base_score, fp[key]),
            "fit_seconds": st["fit_seconds"], "extra_params": st["extra_params"]}


def _sqnr_profile(name, tag, graph, variants, evals, args, samples=32) -> dict:
    """Per-layer SQNR (dB) of each conv/linear output against the FP32 model on evaluation
    samples, for the baseline and CWAC: where the quantized stream loses the signal."""
    from tvmptq.quant.report import layer_sqnr
    x = tuple(a[:samples] for a in evals)
    prof = {}
    for method in ("baseline", "cwac"):
        qm = variants[method]
        reps = layer_sqnr(graph, qm.simulated, qm.plan, batches(x, args.batch_size))
        got = {r.layer: r.sqnr_db for r in reps if r.kind in ("conv2d", "linear")}
        prof[method] = {lay.name: got[lay.name] for lay in graph.layers if lay.name in got}  # program order
    return {"model": name, "bits": tag, "method": "sqnr profile", "profile": prof, "primary": "-", "samples": samples}


def _depthwise_w8(graph) -> dict:
    """Overrides putting every depthwise conv's weights at 8 bits (their 9 weights per channel
    are where 4-bit rounding hurts most)."""
    return {lay.name: {"weight_bits": 8} for lay in graph.layers
            if lay.kind == "conv2d" and lay.attrs.get("groups", 1) > 1}


def _stronger_base_rows(name, tag, graph, observers, probe, model, calib, evals, ref, labels, task, key, fp, args):
    """CWAC on stronger baselines of the same width: first and last layer at 8 bits (QwT's ResNet
    baseline does this) and, where the model has them, depthwise weights at 8 bits. Gap recovery
    is against each row's own baseline."""
    w, a = _bits(tag)
    bases = {"first/last layer 8-bit": tvmptq.make_config(w, a, "minmax", first_last_8bit=True)}
    if w < 8:  # how much of the gap is the weights': all weights at 8 bits, activations unchanged
        bases[f"all weights 8-bit (W8A{a})"] = tvmptq.make_config(8, a, "minmax")
    if _depthwise_w8(graph):
        bases["depthwise weights 8-bit"] = tvmptq.make_config(w, a, "minmax", overrides=_depthwise_w8(graph))
    out = []
    for base_label, cfg in bases.items():
        _, plan, sim, _ = select_observer(graph, observers, cfg, probe, args.batch_size, model.name)
        base = QuantizedModel(model, graph, plan, sim)
        cwac = apply_method(base, calib, "cwac", {"samples": args.fit_samples})
        pair = []
        for label, qm in ((f"baseline, {base_label}", base), (f"cwac on baseline, {base_label}", cwac)):
            s = score(task, ref, run_outputs(qm.runner(), evals, args.batch_size, f"{name} {tag} {label}", False), labels)
            pair.append({"model": name, "bits": tag, "method": label, **s, "primary": key})
        pair[1]["gap_recovery"] = _gap_recovery(pair[1][key], pair[0][key], fp[key])
        st = cwac.plan.stats["cwac"]
        pair[1].update(non_identity=st["non_identity_channels"], channels=st["channels"],
                       fit_seconds=st["fit_seconds"], layer_mse_drop=_layer_mse_drop(st))
        print(base_label, [r[key] for r in pair], flush=True)
        out += pair
    return out


def _fmt(v, d=2):
    if isinstance(v, float):
        return "-" if np.isnan(v) else f"{v:.{d}f}"
    return str(v)


def write_md(rows, args, path: Path, seconds: float):
    this_run = (f"`.venv/bin/python scripts/bench_cwac.py {' '.join(sys.argv[1:])}` "
                f"({seconds / 60:.1f} min on {platform.node()}, {torch.get_num_threads()} threads). "
                f"Calibration samples {args.calib_samples}, fitting samples {args.fit_samples}, evaluation "
                f"samples {args.eval_samples}. Latency: llvm host, **untuned**, batch {args.lat_batch}, ms per "
                "sample (median of 5); QwT v1 compiles its declared float branches as float64 islands "
                "(counted in extra Relax ops). Compiled and timed widths: "
                f"{', '.join(args.latency_bits) if args.latency_bits else 'all'} (the other widths lower to the "
                "same op structure; their op and parameter counts are still taken).")
    rows = [{**r, "run": r.get("run", this_run)} for r in rows]  # this run's rows carry its line
    runs = {}
    for r in rows:
        runs.setdefault(r["run"], []).append(r["model"])
    lines = ["# CWAC (QwT-v2) vs QwT v1 vs baseline", ""]
    for run, models in runs.items():
        lines += [f"Command ({', '.join(dict.fromkeys(models))}): {run}", ""]
    lines += [
             "Layer MSE drop = median over CWAC layers of the calibration MSE (to the FP32 activation) that "
             "the fitted per-channel affine removes: the share of a layer's error that is a gain/offset at all.", "",
             *([f"Note: {args.note}", ""] if args.note else []),
             "Gap recovery = (method - baseline) / (fp32 - baseline) on the primary metric "
             "(top-1 agreement with FP32, %; cosine for MiniLM).", "",
             "| model | bits | method | primary | acc | gap recovery | non-identity ch | layer MSE drop % | extra params | "
             "extra Relax ops | fit s | state B | peak RSS MB | compiled ms | sim ms |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    profiles = [r for r in rows if r["method"] == "sqnr profile"]
    rows = [r for r in rows if r["method"] != "sqnr profile"]
    for r in rows:
        lines.append("| " + " | ".join([
            r["model"], r["bits"], r["method"], _fmt(r.get(r["primary"], float("nan")), 4),
            _fmt(r.get("accuracy", float("nan")), 4), _fmt(r.get("gap_recovery", float("nan"))),
            f"{r.get('non_identity', 0)}/{r.get('channels', 0)}" if r["method"].startswith("cwac") else "-",
            _fmt(r.get("layer_mse_drop", float("nan")), 1),
            str(r.get("extra_relax_params", r.get("extra_params", 0))),  # compiled constants, else the fit's
            str(r.get("extra_int_ops", "-")), _fmt(r.get("fit_seconds", float("nan")), 1),
            str(r.get("state_bytes", "-")), _fmt(r.get("peak_rss_mb", float("nan")), 0),
            _fmt(r.get("compiled_latency_ms", float("nan")), 3) if "compiled" not in r else r["compiled"],
            _fmt(r.get("sim_latency_ms", float("nan")), 3)]) + " |")
    lines += ["", "## CWAC target chosen on held-out calibration data (default `target=\"auto\"`)", "",
              "Model-output SQNR (dB) against FP32 of each candidate on calibration samples the fit did not "
              "see; the best one is kept (identity = the baseline's requantize parameters, unchanged).", "",
              "| model | bits | chosen | fp_stream | same_input | identity | task metric fp_stream / same_input / identity "
              "| fit / probe samples |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        sel = r.get("selection") if r["method"] == "cwac" else None
        if sel:
            q = sel["probe_sqnr_db"]
            m = sel.get("probe_metric") or {}
            task = " / ".join(f"{m[k]:.4g}" for k in ("fp_stream", "same_input", "identity")) if m else "-"
            lines.append(f"| {r['model']} | {r['bits']} | {sel['chosen']} | {q['fp_stream']:.2f} | {q['same_input']:.2f} | "
                         f"{q['identity']:.2f} | {task} | {sel['fit_samples']} / {sel['probe_samples']} |")
    lines += ["", "## Non-identity channels per layer (CWAC)", ""]
    for r in rows:
        if r["method"] == "cwac" and "layers" in r:
            lines.append(f"- {r['model']} {r['bits']}: " + ", ".join(f"{k} {v}" for k, v in r["layers"].items()))
    for r in profiles:
        b, c = r["profile"]["baseline"], r["profile"]["cwac"]
        lines += ["", f"## Per-layer SQNR, {r['model']} {r['bits']} ({r['samples']} evaluation samples, dB vs FP32)", "",
                  "| layer | baseline | CWAC | change |", "|---|---|---|---|"]
        lines += [f"| {k} | {b[k]:.2f} | {c[k]:.2f} | {c[k] - b[k]:+.2f} |" for k in b if k in c]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    path.with_suffix(".json").write_text(json.dumps(rows + profiles, indent=1, default=float))


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=list(PROTOCOL_BITS))
    p.add_argument("--bits", nargs="+", default=None)
    p.add_argument("--eval-samples", type=int, default=None)
    p.add_argument("--calib-samples", type=int, default=256)
    p.add_argument("--fit-samples", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lat-batch", type=int, default=8)
    p.add_argument("--no-latency", action="store_true")
    p.add_argument("--ablation", action="store_true", help="CWAC placement/target/ridge ablation rows")
    p.add_argument("--ablation-bits", nargs="+", default=None, help="widths (W4A4) or model:width pairs (efficientnet_lite0:W4A4) that get ablation rows; default all")
    p.add_argument("--ablation-set", choices=["all", "bases", "select"], default="all",
                   help="bases: only the stronger-baseline rows and the SQNR profile; select: only the "
                        "task-metric selection row (no profile or bases)")
    p.add_argument("--latency-bits", nargs="+", default=None,
                   help="widths whose compiled programs are built and timed (default all; op counts always)")
    p.add_argument("--note", default="", help="a line for the report header (e.g. machine load)")
    p.add_argument("--out", default=str(REPO / "results" / "cwac.md"))
    p.add_argument("--merge", action="store_true", help="keep the other models' rows from the --out json")
    args = p.parse_args()
    t0 = time.perf_counter()
    kept = []
    if args.merge and Path(args.out).with_suffix(".json").is_file():
        kept = [r for r in json.loads(Path(args.out).with_suffix(".json").read_text()) if r["model"] not in args.models]
    rows = []
    for name in args.models:
        bits = [b for b in PROTOCOL_BITS[name] if args.bits is None or b in args.bits]
        rows += bench_model(name, bits, args)
        write_md(kept + rows, args, Path(args.out), time.perf_counter() - t0)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
