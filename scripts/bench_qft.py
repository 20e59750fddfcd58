"""QFT / CLE benchmark: baseline vs CLE vs CWAC vs QFT (= CLE + QFT) vs CWAC+QFT vs the best
reconstruction method + QFT, per model and bit width. Writes results/qft.md (+ .json).

As scripts/bench_reconstruction.py: the baseline plan (observer chosen on calibration data), every
method fitted on the first 3/4 of the calibration set (QFT holds out its own share of those for
early stopping), scored against FP32 on the evaluation split (top-1 agreement %; mean cosine for
MiniLM) and on the last 1/4 of the calibration set, never used for fitting: the seen-scene /
unseen-scene check (photos: calibration and evaluation views come from different scenes; digits:
one distribution). Fit wall time (total, and QFT's own part: the 20-minute budget excludes the
initialising method), process peak RSS. With --compile: the plan lowered to Relax and compiled for
x86-host, op and constant counts against the baseline's, compiled == simulation on a batch.
With --wide SPEC (a tensor_groups preset such as res_ln_proj12, or group=bits items, as
bench_transformer.py's --wide takes): every method runs on the plan with those activation tensors
wide; the row's bits read e.g. `W4A8 res_ln_proj12`. --high-bits-roles puts whole layer roles
(scripts/layer_roles.py: qkv, attn_out, ffn1, ffn2 on a transformer) at 8-bit weights.

Usage: .venv/bin/python scripts/bench_qft.py [--rows digits_resnet:W4A8 ...] [--methods ...]
       [--qft-iters N] [--recon brecq] [--compile] [--wide SPEC] [--high-bits-roles ROLE ...] [--out PATH]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import tvmptq  # noqa: E402
from tvmptq.api import AUTO_SELECT_SAMPLES, QuantizedModel, apply_method, select_observer  # noqa: E402
from tvmptq.eval.sets import DEFAULT_SET, batches, run_outputs, score, torch_runner  # noqa: E402
from tvmptq.quant.calibrate import collect_statistics  # noqa: E402
from tvmptq.util import peak_rss_mb  # noqa: E402
from bench_common import put_row  # noqa: E402
from bench_transformer import parse_wide  # noqa: E402
from layer_roles import bits_label, weight_bit_overrides  # noqa: E402

ROWS = ["digits_resnet:W4A8", "digits_resnet:W4A4", "digits_resnet:W2A4", "efficientnet_lite0:W4A8",
        "efficientnet_lite0:W8A8", "efficientnet_lite0:W4A4", "minilm_l6:W4A8"]
METHODS = ["baseline", "cle", "cwac", "qft", "cwac+qft", "RECON+qft"]
PRIMARY = {"classification": "top1_agreement", "embedding": "cosine_mean"}


def _compiled(plan, imported):
    import relay_passes as rp
    from targets.build import compile_integer
    from tvmptq.algorithms.cost import relax_constants
    mod = rp.lowering_passes(plan)(imported)
    return compile_integer(mod, "x86-host"), rp.op_counts(mod), relax_constants(mod)


def bench(name: str, tag: str, args, sink) -> list[dict]:
    model = tvmptq.load(name)
    evalset = tvmptq.get_set(DEFAULT_SET[name])
    graph = tvmptq.prepare(model)
    calib = tuple(np.asarray(a[:args.calib_samples]) for a in evalset.calibration())
    n_fit = len(calib[0]) * 3 // 4
    fit, held = tuple(a[:n_fit] for a in calib), tuple(a[n_fit:] for a in calib)
    evals = tuple(a[:args.eval_samples] for a in evalset.evaluation())
    labels = evalset.labels()[:len(evals[0])] if evalset.labels else None
    key = PRIMARY[evalset.task]
    ref = run_outputs(torch_runner(graph.gm), evals, 32, "fp32", False)
    ref_held = run_outputs(torch_runner(graph.gm), held, 32, "fp32", False)
    w, a = int(tag[1]), int(tag[3])
    overrides = weight_bit_overrides(graph, args.high_bits_roles, 8) if args.high_bits_roles else None
    bits = bits_label(graph, tag, args.wide, args.high_bits_roles, overrides)
    observers, _ = collect_statistics(graph, batches(fit, 32), False)
    config = tvmptq.make_config(w, a, "minmax", tensor_bits=parse_wide(args.wide or "") or None, overrides=overrides)
    rule, plan, sim, _ = select_observer(graph, observers, config,
                                         tuple(x[:AUTO_SELECT_SAMPLES] for x in fit), 32, model.name)
    base = QuantizedModel(model, graph, plan, sim)
    imported = base_ops = None
    if args.compile:
        import relay_passes as rp
        imported = rp.Canonicalize()(rp.import_model(model.build(), model.example_inputs(8)))
        _, base_ops, base_consts = _compiled(base.plan, imported)
    rows, cache = [], {}
    for method in args.methods:
        method = method.replace("RECON", args.recon)
        opts = {"samples": n_fit, "seed": args.seed, **({"qft_iters": args.qft_iters} if args.qft_iters else {}),
                **({"iters": args.recon_iters} if args.recon_iters else {}),
                **({"qft_holdout_groups": args.qft_holdout_groups} if args.qft_holdout_groups is not None else {})}
        t0 = time.perf_counter()
        head = "cle" if method == "qft" else method[:-len("+qft")] if method.endswith("+qft") else None
        if head in cache:                          # the initialising method's plan, fitted in this run
            start, start_s = cache[head]
            qm = _qft_on(start, fit, opts, args.progress)
            seconds = start_s + time.perf_counter() - t0
        else:
            qm = apply_method(base, fit, method, opts, progress=args.progress)
            seconds = time.perf_counter() - t0
            cache[method] = (qm, seconds)
        out = run_outputs(qm.runner(), evals, 32, method, False)
        s = score(evalset.task, ref, out, labels)
        s_held = score(evalset.task, ref_held, run_outputs(qm.runner(), held, 32, method, False))
        q = qm.plan.stats.get("qft")
        row = {"command": "scripts/bench_qft.py " + " ".join(sys.argv[1:]), "model": name, "bits": bits, "observer": rule, "method": method, "primary": key, **s,
               "held_out": s_held[key], "fit_seconds": seconds,
               "qft_seconds": qm.plan.run_info.get("qft", {}).get("fit_seconds"), "peak_rss_mb": peak_rss_mb(),
               "qft": None if q is None else {k: q[k] for k in ("iterations", "best_iteration", "stopped_early",
                                                                "held_out_loss_start", "held_out_loss_best",
                                                                "cle_pairs_learned")},
               "cle": qm.plan.stats.get("cle", {}) and {k: qm.plan.stats["cle"][k] for k in ("pairs", "skipped", "max_factor")}}
        if imported is not None:
            run, ops, consts = _compiled(qm.plan, imported)
            x = tuple(v[:8] for v in evals)
            row.update(same_ops=ops == base_ops, same_constants=consts == base_consts,
                       compiled_equals_sim=bool(np.array_equal(run(*x), qm.runner()(*x))))
        if "qft" in qm.plan.config:
            row["qft_config"] = {k: qm.plan.config["qft"][k] for k in ("qft_iters", "batch_size", "samples")}
            row["qft_config"]["qft_holdout_groups"] = qm.plan.config["qft"].get("qft_holdout_groups", 0)
        rows.append(row)
        sink(row)
        print(json.dumps({k: v for k, v in row.items() if k != "cle"}), flush=True)
        if args.integer_islands:
            rows.append(_island_row(row, qm, args.integer_islands, evals, held, ref, ref_held, labels, key, evalset))
            sink(rows[-1])
            print(json.dumps({k: v for k, v in rows[-1].items() if k != "cle"}), flush=True)
    return rows


def with_islands(qm: QuantizedModel, names) -> QuantizedModel:
    """A copy of the fitted ``qm`` whose plan computes the islands ``names`` in integers (``qm`` unchanged)."""
    import copy
    from tvmptq.api import simulated_plan
    from tvmptq.quant.calibrate import add_integer_islands
    plan = copy.deepcopy(qm.plan)
    add_integer_islands(plan, qm.graph, tuple(names))
    return QuantizedModel(qm.model, qm.graph, plan, simulated_plan(qm.graph, plan))


def _island_row(row: dict, qm: QuantizedModel, names: list[str], evals, held, ref, ref_held, labels, key, evalset) -> dict:
    """The fitted plan with integer islands ``names`` added after fitting (the methods train through the
    float islands; the islands replace them in the finished plan, its other parameters unchanged), scored
    the same way; its bits label ends in ' int:<names>'."""
    island = with_islands(qm, names)
    plan = island.plan
    s = score(evalset.task, ref, run_outputs(island.runner(), evals, 32, "islands", False), labels)
    s_held = score(evalset.task, ref_held, run_outputs(island.runner(), held, 32, "islands", False))
    out = {**row, **s, "bits": f"{row['bits']} int:{'+'.join(names)}", "held_out": s_held[key],
           "integer_islands_float": plan.config.get("integer_islands_float", [])}
    for k in ("same_ops", "same_constants", "compiled_equals_sim"):
        out.pop(k, None)                    # not compiled: the row above checks the fitted plan
    return out


def _qft_on(start: QuantizedModel, fit, opts, progress):
    """QFT on a plan already fitted in this run (its own fit time is added by the caller)."""
    from tvmptq.algorithms.qft import QFTConfig, fit_qft
    from tvmptq.api import _fields
    plan, sim = fit_qft(start.graph, start.plan, fit, QFTConfig(**_fields(QFTConfig, opts)), progress)
    plan.config["method"] = f"{start.plan.config.get('method', 'baseline')}+qft"
    return QuantizedModel(start.model, start.graph, plan, sim)


# Rows measured before rows recorded their command line.
LEGACY_COMMANDS = {
    "digits_resnet": "scripts/bench_qft.py --rows digits_resnet:W4A8 digits_resnet:W4A4 digits_resnet:W2A4 --compile",
    "efficientnet_lite0": "scripts/bench_qft.py --append --rows efficientnet_lite0:W4A8 --methods baseline cle qft cwac cwac+qft"}


def write_md(rows, path: Path, seconds: float) -> None:
    commands = list(dict.fromkeys(r.get("command") or LEGACY_COMMANDS.get(r["model"], "scripts/bench_qft.py (command not recorded)")
                                  for r in rows))
    lines = ["# QFT and CLE", "", "Rows written by " + "; ".join(f"`{c}`" for c in commands)
             + (f" (this run: {seconds / 60:.1f} min)" if seconds is not None else "") + ", run with `nice` on a 2-core "
             "machine shared by seven agents: wall times are loaded-machine figures. Methods fitted on the first 3/4 "
             "of the calibration set (QFT early-stops on its own held-out share of those); **eval**: evaluation split "
             "vs FP32 (top-1 agreement %, mean cosine for MiniLM); **held-out**: the last 1/4 of the calibration set, "
             "never fitted on (photos: seen scenes, eval = unseen scenes). `qft` is `cle+qft`; **fit s** is the "
             "whole method (initialising method included), **QFT s** QFT's own part; **QFT early-stops on**: a random "
             "share of its fit samples (seen scenes) or whole groups i mod G (G = 10: scenes it never trains on).", "",
             "| model | bits | method | eval | held-out | accuracy | fit s | QFT s | QFT its (best) | QFT early-stops on "
             "| peak RSS MB | same ops/consts | compiled == sim |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    f = lambda v, d=2: "-" if v is None or (isinstance(v, float) and np.isnan(v)) else f"{v:.{d}f}"  # noqa: E731
    for r in rows:
        d = 3 if r["primary"] == "cosine_mean" else 1
        q = r.get("qft")
        its = f"{q['iterations']} ({q['best_iteration']})" if q else "-"
        same = f"{r['same_ops']}/{r['same_constants']}" if "same_ops" in r else "-"
        groups = (r.get("qft_config") or {}).get("qft_holdout_groups", 0)
        stops = "-" if not q else f"groups i mod {groups}" if groups else "random views"
        lines.append(f"| {r['model']} | {r['bits']} | {r['method']} | {f(r[r['primary']], d)} | {f(r['held_out'], d)} "
                     f"| {f(r.get('accuracy'), 1)} | {f(r['fit_seconds'], 1)} | {f(r.get('qft_seconds'), 1)} | {its} | {stops} "
                     f"| {f(r['peak_rss_mb'], 0)} | {same} | {r.get('compiled_equals_sim', '-')} |")
    cle = {(r["model"], r["bits"]): r["cle"] for r in rows if r.get("cle")}
    if cle:
        lines += ["", "CLE pairs (closed form, through identity/ReLU only):", ""]
        for (m, b), c in cle.items():
            reasons = sorted({s["reason"] for s in c["skipped"]})
            lines.append(f"- {m} {b}: {len(c['pairs'])} pairs equalized (largest |log factor| {c['max_factor']:.2f}), "
                         f"{len(c['skipped'])} skipped" + (f" ({'; '.join(reasons)})" if reasons else ""))
    old = sorted({f"{r['model']} {r['bits']}" for r in rows if r.get("qft") and "qft_config" not in r})
    if old:
        lines += ["", f"QFT settings: {', '.join(old)} ran at 300 iterations, batch 16 (the defaults when they ran); "
                  "other rows at QFTConfig's defaults (150 iterations, batch 8) unless the command says otherwise."]
    done = {(r["model"], r["bits"], r["method"]) for r in rows}
    missing = [f"{spec.replace(':', ' ')} {m.replace('RECON', 'brecq')}" for spec in ROWS for m in METHODS
               if (*spec.split(":"), m.replace("RECON", "brecq")) not in done]
    if missing:
        lines += ["", "Not run (the 2-core time budget of the session that wrote this file; `make bench-qft` runs "
                  "them): " + ", ".join(missing) + "."]
    path.write_text(keep_prose(path, "\n".join(lines) + "\n"))
    path.with_suffix(".json").write_text(json.dumps(rows, indent=1))


# The table block write_md regenerates; the hand-written analysis around it stays as it is.
GENERATED_START = "<!-- generated by scripts/bench_qft.py from here -->"
GENERATED_END = "<!-- generated by scripts/bench_qft.py up to here; text below is hand-written -->"


def keep_prose(path: Path, generated: str) -> str:
    """`generated` between the two markers, the text outside them in the existing file kept;
    a file without both markers is replaced whole."""
    old = path.read_text() if path.exists() else ""
    before, after = "", "\n"
    if GENERATED_START in old and GENERATED_END in old:
        before = old.split(GENERATED_START, 1)[0]
        after = old.split(GENERATED_END, 1)[1]
    return f"{before}{GENERATED_START}\n{generated}\n{GENERATED_END}{after}"


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--rows", nargs="+", default=ROWS)
    p.add_argument("--methods", nargs="+", default=METHODS)
    p.add_argument("--recon", default="brecq", help="the reconstruction method QFT starts from in RECON+qft")
    p.add_argument("--qft-iters", type=int, default=None, help="QFT iterations (default: QFTConfig's)")
    p.add_argument("--qft-holdout-groups", type=int, default=None,
                   help="QFT early-stops on whole groups i mod G (10: the photo views' scenes); default: QFTConfig's")
    p.add_argument("--recon-iters", type=int, default=None, help="reconstruction iterations per block")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--wide", default=None, metavar="SPEC",
                   help="wide activation tensors under every method: a preset (res_ln_proj12) or group=bits,... "
                        "(bench_transformer.py's --wide); the rows' bits show the spec")
    p.add_argument("--high-bits-roles", nargs="*", default=[],
                   help="layer roles at 8-bit weights (scripts/layer_roles.py), e.g. ffn2 attn_out")
    p.add_argument("--calib-samples", type=int, default=256)
    p.add_argument("--eval-samples", type=int, default=512)
    p.add_argument("--integer-islands", nargs="*", default=[], metavar="NAME",
                   help="also score each fitted plan with these integer islands added after fitting (softmax layernorm)")
    p.add_argument("--compile", action="store_true", help="lower, compile and check each plan (slow on big models)")
    p.add_argument("--progress", action="store_true")
    p.add_argument("--append", action="store_true",
                   help="keep the rows already in --out's .json (all but the --rows x --methods being rerun)")
    p.add_argument("--out", default=str(REPO / "results" / "qft.md"))
    p.add_argument("--md-only", action="store_true", help="rewrite --out from its .json, run nothing")
    args = p.parse_args()
    out = Path(args.out)
    if args.md_only:
        write_md(json.loads(out.with_suffix(".json").read_text()), out, None)
        return
    t0 = time.perf_counter()
    rows = json.loads(out.with_suffix(".json").read_text()) if args.append and out.with_suffix(".json").exists() else []
    for spec in args.rows:
        name, tag = spec.split(":")
        def sink(row):
            put_row(rows, row)
            write_md(rows, out, time.perf_counter() - t0)
        bench(name, tag, args, sink)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
