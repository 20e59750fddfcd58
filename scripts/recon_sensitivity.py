"""Per-layer weight-bit sensitivity of a baseline plan: which layers at low weight bits cost most.

For ``model:WxAy`` (e.g. efficientnet_lite0:W4A8): the baseline plan with every layer at W8 except
one at the low width (the isolated cost of that layer, sorted), and the full low-width plan with
groups of layers put back at 8 bits (depthwise convs, first/last conv/linear, 1x1 expand, 1x1
project), each with the same activation observer (the one the low-width plan selects on calibration
data). Rankings and any choice use only the held-out last 1/4 of the calibration set (the bench's
split); the group rows also show the evaluation split, for the record. No fitting: these are
baseline plans, so the numbers say where rounding error enters before any reconstruction.

Usage: .venv/bin/python scripts/recon_sensitivity.py efficientnet_lite0:W4A8 [--out results/recon_sensitivity.md]
       [--settings depthwise all_high ...] [--no-layers] [--append]
Writes the .md and a .json next to it. ``--settings`` runs only the named group settings (keys:
all_low, first_last, depthwise_first_last, all_high and the role names with spaces as underscores:
depthwise, 1x1_expand, 1x1_project, head, ...); ``--append`` keeps the rows already in the .json
(each row records its calibration-sample count and command).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import tvmptq  # noqa: E402
from tvmptq.api import AUTO_SELECT_SAMPLES, select_observer, simulated_plan  # noqa: E402
from tvmptq.eval.metrics import sqnr_db  # noqa: E402
from tvmptq.eval.sets import batches, run_outputs, score, torch_runner  # noqa: E402
from tvmptq.quant.calibrate import build_plan, collect_statistics  # noqa: E402
from bench_common import load_case  # noqa: E402
from bench_transformer import parse_wide  # noqa: E402
from layer_roles import kernels_of, roles_of  # noqa: E402


def main():
    p = argparse.ArgumentParser()
    p.add_argument("row", help="model:WxAy, e.g. efficientnet_lite0:W4A8")
    p.add_argument("--calib-samples", type=int, default=256)
    p.add_argument("--eval-samples", type=int, default=512)
    p.add_argument("--high-bits", type=int, default=8, help="width of the layers not under test")
    p.add_argument("--out", default=str(REPO / "results" / "recon_sensitivity.md"))
    p.add_argument("--settings", nargs="*", default=None, help="only these group settings (keys: see the docstring)")
    p.add_argument("--no-layers", action="store_true", help="skip the one-layer-at-low-width ranking")
    p.add_argument("--append", action="store_true", help="keep the rows already in the .json, add these")
    p.add_argument("--wide", default=None, metavar="SPEC",
                   help="wide activation tensors in every plan (bench_transformer.py's --wide: res_ln_proj12, group=bits,...)")
    p.add_argument("--combos", nargs="*", default=[],
                   help="extra settings: roles joined by '+' put back at high bits together, e.g. ffn2+attn_out")
    args = p.parse_args()
    wide = parse_wide(args.wide or "") or None
    name, tag = args.row.split(":")
    w, a = int(tag[1]), int(tag[3])
    t0 = time.perf_counter()
    case = load_case(name, args.calib_samples, args.eval_samples)
    graph, calib, evals, key, task = case.graph, case.calib, case.evals, case.key, case.evalset.task
    n_fit = len(calib[0]) * 3 // 4
    fit, held = tuple(x[:n_fit] for x in calib), tuple(x[n_fit:] for x in calib)
    probe = tuple(x[:AUTO_SELECT_SAMPLES] for x in fit)
    ref_held = run_outputs(torch_runner(graph.gm), held, 32, "fp32", False)
    ref_eval = run_outputs(torch_runner(graph.gm), evals, 32, "fp32", False)
    observers, _ = collect_statistics(graph, batches(fit, 32))
    rule, _, _, _ = select_observer(graph, observers, tvmptq.make_config(w, a, "minmax", tensor_bits=wide), probe, 32, name)

    def run(overrides, on_eval=False, **kw):
        cfg = tvmptq.make_config(args.high_bits if kw.pop("high", False) else w, a, rule, overrides=overrides,
                                 tensor_bits=wide, **kw)
        plan = build_plan(graph, observers, cfg, name, probe, 32)
        sim = simulated_plan(graph, plan)
        out = run_outputs(torch_runner(sim), held, 32, "sens", False)
        res = {"held_out": score(task, ref_held, out)[key], "held_sqnr_db": sqnr_db(ref_held, out)}
        if on_eval:
            oe = run_outputs(torch_runner(sim), evals, 32, "sens", False)
            res["eval"] = score(task, ref_eval, oe, case.labels)[key]
        return res

    kernels = kernels_of(graph)
    roles = roles_of(graph)
    groups = {}
    for lay in kernels:
        groups.setdefault(roles[lay.name], []).append(lay.name)
    hi = {"weight_bits": args.high_bits}
    dw = {n: hi for n in groups.get("depthwise", [])}
    # Most telling first (a cut-off run keeps these): the low-width plan, BRECQ's first/last
    # convention, depthwise back at 8 bits, then the other roles and the all-high reference.
    settings = [("all_low", f"all layers W{w}", {}, {}),
                ("first_last", f"W{w}, first/last at 8 bits (first_last_8bit: weights and their inputs/output)", {},
                 {"first_last_8bit": True}),
                ("depthwise_first_last", f"W{w}, depthwise at W{args.high_bits} + first_last_8bit", dw,
                 {"first_last_8bit": True})]
    settings += [(g.replace(" ", "_"), f"W{w}, {g} at W{args.high_bits} ({len(ns)} layers)", {n: hi for n in ns}, {})
                 for g, ns in groups.items()]
    for combo in args.combos:
        parts = [c if c in groups else c.replace("_", " ") for c in combo.split("+")]
        if any(c not in groups for c in parts):
            raise SystemExit(f"unknown role in --combos {combo!r}: this model has {sorted(groups)}")
        ns = [n for c in parts for n in groups[c]]
        settings.append((combo, f"W{w}, {combo} at W{args.high_bits} ({len(ns)} layers)", {n: hi for n in ns}, {}))
    settings += [("all_high", "all layers W%d" % args.high_bits, {}, {"high": True})]
    setting_keys = [k for k, *_ in settings]
    unknown = sorted(set(args.settings or []) - set(setting_keys))
    if unknown:
        raise SystemExit(f"unknown --settings {unknown}: choose from {setting_keys}")
    old = json.loads(Path(args.out).with_suffix(".json").read_text()) if args.append else {}
    group_rows, layer_rows = old.get("groups", []), old.get("layers", [])
    command = "scripts/recon_sensitivity.py " + " ".join(sys.argv[1:])
    for skey, label, ovr, kw in settings:
        if args.settings is not None and skey not in args.settings:
            continue
        group_rows.append({"setting": label, "calib_samples": args.calib_samples, "command": command,
                           **run(ovr, on_eval=True, **kw)})
        print(json.dumps(group_rows[-1]), flush=True)
        write(args, name, tag, rule, group_rows, layer_rows, time.perf_counter() - t0, partial=True)
    if args.no_layers:
        write(args, name, tag, rule, group_rows, layer_rows, time.perf_counter() - t0)
        return
    base8 = next(r for r in reversed(group_rows) if r["setting"].startswith("all layers W%d" % args.high_bits))
    for lay in kernels:
        ovr = {n: hi for n in roles if n != lay.name}
        r = run(ovr, high=False)
        layer_rows.append({"layer": lay.name, "role": roles[lay.name], **r,
                           "drop_held": base8["held_out"] - r["held_out"],
                           "sqnr_drop_db": base8["held_sqnr_db"] - r["held_sqnr_db"]})
        print(json.dumps(layer_rows[-1]), flush=True)
        write(args, name, tag, rule, group_rows, layer_rows, time.perf_counter() - t0, partial=True)
    seconds = time.perf_counter() - t0
    write(args, name, tag, rule, group_rows, layer_rows, seconds)


def write(args, name, tag, rule, group_rows, layer_rows, seconds, partial=False):
    """The tables so far; ``partial``: written after each row, so a cut-off run leaves its rows."""
    out = Path(args.out)
    command = "scripts/recon_sensitivity.py " + " ".join(sys.argv[1:])
    old = json.loads(out.with_suffix(".json").read_text()) if args.append and out.with_suffix(".json").exists() else {}
    commands = list(dict.fromkeys(old.get("commands", [old["command"]] if "command" in old else []) + [command]))
    doc = {"partial": partial, "command": command, "wide": args.wide, "commands": commands, "model": name, "bits": tag,
           "observer": rule, "groups": group_rows, "layers": layer_rows, "seconds": seconds}
    d = 4 if name.startswith("minilm") else 1
    lines = [f"# Weight-bit sensitivity: {name} {tag}" + (f" {args.wide}" if args.wide else "") + " (baseline plans, no fitting)", "",
             (f"**Partial: the run was still going or was cut off after {len(group_rows)} group rows and "
              f"{len(layer_rows)} single-layer rows.** " if partial else "") +
             "; ".join(f"`{c}`" for c in commands) + f" (this run {seconds:.0f} s; each row's calibration-sample count "
             f"and command are in the .json). Activation observer `{rule}` (selected for the {tag} plan "
             "on calibration data). **held-out**: top-1 agreement % (mean cosine for MiniLM) with FP32 on the last 1/4 of the "
             "calibration set (seen scenes: the only column choices are made on); **eval**: the "
             "evaluation split (unseen scenes), for the record. Output SQNR vs FP32 on held-out.", "",
             "## Groups of layers put back at 8-bit weights", "",
             "| setting | calib samples (held-out) | held-out | held-out SQNR dB | eval |", "|---|---|---|---|---|"]
    for r in group_rows:
        n = r.get("calib_samples", 256)
        lines.append(f"| {r['setting']} | {n} ({n - n * 3 // 4}) | {r['held_out']:.{d}f} | {r['held_sqnr_db']:.2f} | {r['eval']:.{d}f} |")
    lines += ["", f"## One layer at W{tag[1]}, every other at W{args.high_bits} (sorted by output SQNR loss)", "",
              "| layer | role | held-out | drop (points) | output SQNR loss dB |", "|---|---|---|---|---|"]
    for r in sorted(layer_rows, key=lambda r: -r["sqnr_drop_db"]):
        lines.append(f"| {r['layer']} | {r['role']} | {r['held_out']:.{d}f} | {r['drop_held']:.{d}f} | {r['sqnr_drop_db']:.2f} |")
    by_role = {}
    for r in layer_rows:
        by_role.setdefault(r["role"], []).append(r["sqnr_drop_db"])
    lines += ["", "## Output SQNR loss by role (sum and mean over the role's layers, dB)", "",
              "| role | layers | sum dB | mean dB |", "|---|---|---|---|"]
    for role, v in sorted(by_role.items(), key=lambda kv: -sum(kv[1])):
        lines.append(f"| {role} | {len(v)} | {sum(v):.2f} | {sum(v) / len(v):.2f} |")
    out.write_text("\n".join(lines) + "\n")
    out.with_suffix(".json").write_text(json.dumps(doc, indent=1, default=float))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
