"""Reconstruction PTQ benchmark: baseline vs CWAC vs AdaRound vs BRECQ vs WAPS (each reading).

Per model and bit width: the baseline plan (observer chosen on calibration data), then each
method fitted on the first 3/4 of the calibration set. Scored against FP32 on the evaluation split
(top-1 agreement, accuracy for digits, mean cosine for MiniLM) and on the held-out last 1/4 of the
calibration set: the seen-scene / unseen-scene check (photos: calibration and evaluation views
come from different scenes, results/cwac_scene_shift.md; digits: same distribution both ways).
Fit wall time, process peak RSS after the fit, and compiled latency on x86-host (VNNI kernels
where the CPU has them, untuned) next to the baseline's in the same run, with the Relax op and
constant counts compared. Writes results/reconstruction.md (+ .json).

Usage: .venv/bin/python scripts/bench_reconstruction.py [--rows digits:W2A4 ...] [--iters N]
       [--methods baseline cwac adaround brecq waps:in_mixed ...] [--no-latency] [--out PATH]
       [--opt drop_prob=0.5 ...] [--first-last-8bit] [--high-bits-roles depthwise] [--append] [--regenerate [--merge A.json ...]]
       [--wide SPEC]
--wide SPEC (a tensor_groups preset such as res_ln_proj12, or group=bits items: bench_transformer.py's
--wide parser) runs every method on the plan with those activation tensors wide; the row's bits show
the spec (`W4A8 res_ln_proj12`), and such rows stay in the main table.
Rows are written after each method (a long run leaves a partial table); rows with a non-default
option or bit assignment go to the settings table.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import tvmptq  # noqa: E402
from tvmptq.api import AUTO_SELECT_SAMPLES, QuantizedModel, apply_method, select_observer  # noqa: E402
from tvmptq.eval.sets import batches, run_outputs, score, torch_runner  # noqa: E402
from bench_common import latency_ms, load_case, put_row, relax_import  # noqa: E402
from bench_transformer import parse_wide  # noqa: E402
from layer_roles import bits_label, weight_bit_overrides  # noqa: E402
from tvmptq.quant.calibrate import collect_statistics  # noqa: E402
from tvmptq.util import peak_rss_mb  # noqa: E402

ROWS = ["digits_resnet:W4A4", "digits_resnet:W2A4", "efficientnet_lite0:W4A8", "efficientnet_lite0:W4A4",
        "minilm_l6:W4A8"]
METHODS = ["baseline", "cwac", "adaround", "brecq", "waps:out", "waps:in", "waps:in_mixed", "waps:block"]


def _compiled(plan, imported):
    import relay_passes as rp
    from targets.build import compile_integer
    from tvmptq.algorithms.cost import relax_constants
    mod = rp.lowering_passes(plan)(imported)
    return compile_integer(mod, "x86-host", tensorize=True), rp.op_counts(mod), relax_constants(mod)


def bench(name: str, tag: str, args, rows: list, flush) -> None:
    """Append one row per method to ``rows``, calling ``flush()`` after each (partial tables)."""
    case = load_case(name, args.calib_samples, args.eval_samples)
    model, evalset, graph, calib, evals, labels, key = (case.model, case.evalset, case.graph, case.calib,
                                                        case.evals, case.labels, case.key)
    # mixed precision: checked before the (slow) statistics, so an unknown role fails at once
    overrides = weight_bit_overrides(graph, args.high_bits_roles, 8) if args.high_bits_roles else None
    n_fit = len(calib[0]) * 3 // 4
    fit, held = tuple(a[:n_fit] for a in calib), tuple(a[n_fit:] for a in calib)
    ref = run_outputs(torch_runner(graph.gm), evals, 32, "fp32", False)
    ref_held = run_outputs(torch_runner(graph.gm), held, 32, "fp32", False)
    w, a = int(tag[1]), int(tag[3])
    observers, _ = collect_statistics(graph, batches(fit, 32))
    config = tvmptq.make_config(w, a, "minmax", first_last_8bit=args.first_last_8bit, overrides=overrides,
                                tensor_bits=parse_wide(args.wide or "") or None)
    bits = bits_label(graph, tag + (" fl8" if args.first_last_8bit else ""), args.wide, args.high_bits_roles, overrides)
    rule, plan, sim, _ = select_observer(graph, observers, config,
                                         tuple(x[:AUTO_SELECT_SAMPLES] for x in fit), 32, model.name)
    base = QuantizedModel(model, graph, plan, sim)
    imported = None
    if not args.no_latency:
        imported = relax_import(model, 1)
        base_run, base_ops, base_consts = _compiled(base.plan, imported)
    lat_x = tuple(x[:1] for x in evals)
    for method in args.methods:
        meth, _, reading = method.partition(":")
        opts = {"samples": n_fit, "seed": args.seed, **({"iters": args.iters} if args.iters else {}),
                **({"work": args.work} if args.work else {}), **dict(_opt(o) for o in args.opt),
                **({"reading": reading} if reading else {})}
        t0, load0 = time.perf_counter(), os.getloadavg()[0]
        qm = apply_method(base, fit, meth, opts, progress=args.progress)
        seconds = time.perf_counter() - t0
        out = run_outputs(qm.runner(), evals, 32, method, False)
        s = score(evalset.task, ref, out, labels)
        s_held = score(evalset.task, ref_held, run_outputs(qm.runner(), held, 32, method, False))
        label = " ".join([method] + [f"{k}={v}" for k, v in opts.items() if k not in ("samples", "seed", "reading")])
        row = {"command": "scripts/bench_reconstruction.py " + " ".join(sys.argv[1:]), "model": name, "bits": bits,
               "wide": args.wide, "observer": rule,
               "method": label if meth != "baseline" else method, "n_fit": n_fit, "primary": key, **s,
               "held_out": s_held[key], "fit_seconds": seconds, "peak_rss_mb": peak_rss_mb(),
               "load_avg": [load0, os.getloadavg()[0]],
               "fit_rss_growth_mb": qm.plan.run_info.get(meth, {}).get("peak_rss_growth_mb"),
               "block_iters": [b.get("iters") for b in qm.plan.run_info.get(meth, {}).get("blocks", [])]}
        if imported is not None:
            run, ops, consts = (base_run, base_ops, base_consts) if meth == "baseline" else _compiled(qm.plan, imported)
            got = run(*lat_x)
            row.update(same_ops=ops == base_ops, same_constants=consts == base_consts,
                       same_op_count=sum(ops.values()) == sum(base_ops.values()),
                       same_constant_count=sum(consts.values()) == sum(base_consts.values()),
                       diff=counter_diff(base_ops, ops, base_consts, consts),
                       compiled_equals_sim=bool(np.array_equal(got, qm.runner()(*lat_x))),
                       latency_ms=latency_ms(run, lat_x, 20), base_latency_ms=latency_ms(base_run, lat_x, 20))
        put_row(rows, row)
        print(json.dumps(row), flush=True)
        flush()


def counter_diff(base_ops, ops, base_consts, consts) -> dict:
    """What differs between the baseline's and a learned plan's Relax program: op kinds
    (``"<op> -> <dtype>"``) and constants (``dtype shape``) only in one of them, with counts."""
    key = lambda c: {f"{d} {list(s)}": n for (d, s), n in c.items()}  # noqa: E731
    return {"ops_only_baseline": dict(base_ops - ops), "ops_only_learned": dict(ops - base_ops),
            "constants_only_baseline": key(base_consts - consts), "constants_only_learned": key(consts - base_consts)}


def _opt(text: str):
    """``key=value`` of a ReconConfig/WAPSConfig field, the value read as a Python literal."""
    import ast
    key, _, value = text.partition("=")
    try:
        return key, ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return key, value


def _iters(row) -> str:
    its = [i for i in row.get("block_iters") or [] if i is not None]
    return "-" if not its else (str(its[0]) if min(its) == max(its) else f"{min(its)}-{max(its)} (sum {sum(its)})")


def _is_setting(row) -> bool:
    """A row of the settings study (a non-default option or bit assignment), not the main table;
    a --wide spec alone is a main-table row."""
    bits = row["bits"].replace(f" {row['wide']}", "", 1) if row.get("wide") else row["bits"]
    return "=" in row["method"] or " " in bits


def _table(rows) -> list[str]:
    f = lambda v, d=2: "-" if v is None or (isinstance(v, float) and np.isnan(v)) else f"{v:.{d}f}"  # noqa: E731
    lines = ["| model | bits | method | eval | held-out | accuracy | fit s | peak RSS MB | same ops/consts | "
             "compiled == sim | latency ms (baseline) | load (1-min avg, fit start/end) | iterations per block |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        d = 3 if r["primary"] == "cosine_mean" else 1
        lat = f"{f(r.get('latency_ms'), 3)} ({f(r.get('base_latency_ms'), 3)})" if "latency_ms" in r else "-"
        same = f"{r['same_ops']}/{r['same_constants']}" if "same_ops" in r else "-"
        if r.get("same_op_count") and r.get("same_constant_count") and not (r["same_ops"] and r["same_constants"]):
            same += " (same counts: " + ", ".join(f"{k} {v}" for k, v in r["diff"].items() if v) + ")"
        load = "/".join(f"{v:.1f}" for v in r["load_avg"]) if "load_avg" in r else "-"
        lines.append(f"| {r['model']} | {r['bits']} | {r['method']} | {f(r[r['primary']], d)} | {f(r['held_out'], d)} "
                     f"| {f(r.get('accuracy'), 1)} | {f(r['fit_seconds'], 1)} | {f(r['peak_rss_mb'], 0)} | {same} "
                     f"| {r.get('compiled_equals_sim', '-')} | {lat} | {load} | {_iters(r)} |")
    return lines


def write_md(rows, args, path: Path, seconds: float) -> None:
    commands = list(dict.fromkeys(r.get("command", "(an earlier run: see git log)") for r in rows))
    lines = ["# Reconstruction PTQ: AdaRound, BRECQ, WAPS-Quant", "",
             "Rows from " + "; ".join(f"`{c}`" for c in commands) + " (each row's command is in the .json; "
             "`--regenerate` rewrites this file from it). Under load: 2 cores shared by seven agents, so wall "
             "times and latencies are loaded-machine figures and the load column says how loaded. "
             "Methods fitted on the first 3/4 of the calibration set; **eval** is the evaluation split "
             "(primary metric vs FP32: top-1 agreement %, mean cosine for MiniLM); **held-out** is the last "
             "1/4 of the calibration set (seen scenes for photos, unseen scenes = eval), the only score "
             "settings are chosen by. Latency: batch 1, median of 20, x86-host (VNNI) untuned, baseline "
             "compiled in the same run.", ""]
    lines += _table([r for r in rows if not _is_setting(r)])
    settings = [r for r in rows if _is_setting(r)]
    if settings:
        lines += ["", "## Settings (BRECQ's conventions, iterations, samples, mixed precision)", "",
                  "One change at a time against the default row above; `fl8`: first and last conv/linear "
                  "at 8 bits (the plan's `first_last_8bit`, BRECQ's convention; its baseline changes too); "
                  "`<role>@W8`: those layers at 8-bit weights through the plan's per-layer overrides "
                  "(mixed precision; `scripts/layer_roles.py` names the roles), the rest at the row's bits.", ""]
        lines += _table(settings)
    notes = Path(__file__).with_name("reconstruction_notes.md")
    if notes.exists():
        lines += ["", notes.read_text().strip()]
    path.write_text("\n".join(lines) + "\n")
    path.with_suffix(".json").write_text(json.dumps(rows, indent=1))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--rows", nargs="+", default=ROWS)
    p.add_argument("--methods", nargs="+", default=METHODS)
    p.add_argument("--iters", type=int, default=None, help="reconstruction iterations (default: ReconConfig's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--calib-samples", type=int, default=256)
    p.add_argument("--eval-samples", type=int, default=512)
    p.add_argument("--no-latency", action="store_true")
    p.add_argument("--progress", action="store_true")
    p.add_argument("--opt", nargs="*", default=[], help="key=value for ReconConfig / WAPSConfig fields, e.g. drop_prob=0.5")
    p.add_argument("--first-last-8bit", action="store_true", help="first and last conv/linear at 8 bits (BRECQ's convention)")
    p.add_argument("--high-bits-roles", nargs="*", default=[],
                   help="layer roles at 8-bit weights (mixed precision in the plan's per-layer overrides), e.g. depthwise")
    p.add_argument("--wide", default=None, metavar="SPEC",
                   help="wide activation tensors under every method: a preset (res_ln_proj12) or group=bits,... "
                        "(bench_transformer.py's --wide); the rows' bits show the spec")
    p.add_argument("--append", action="store_true", help="keep the rows already in the .json, add these (a row with the same model, bits and method replaces the old one)")
    p.add_argument("--merge", nargs="*", default=[], help="with --regenerate: add the rows of these .json files")
    p.add_argument("--regenerate", action="store_true", help="only rewrite the .md from the .json")
    p.add_argument("--work", type=float, default=None, help="per-block work cap (ReconConfig.work)")
    p.add_argument("--out", default=str(REPO / "results" / "reconstruction.md"))
    args = p.parse_args()
    out = Path(args.out)
    if args.regenerate:                          # the table from the rows already in the .json(s)
        rows = json.loads(out.with_suffix(".json").read_text())
        for extra in args.merge:
            rows += json.loads(Path(extra).read_text())
        keys = [(r.get("command"), r["model"], r["bits"], r["method"]) for r in rows]
        rows = [r for i, r in enumerate(rows) if keys[i] not in keys[:i]]      # merged twice: once
        write_md(rows, args, out, float("nan"))
        return
    t0 = time.perf_counter()
    rows = json.loads(out.with_suffix(".json").read_text()) if args.append else []
    for spec in args.rows:
        name, tag = spec.split(":")
        bench(name, tag, args, rows, lambda: write_md(rows, args, out, time.perf_counter() - t0))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
