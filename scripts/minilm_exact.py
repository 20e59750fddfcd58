"""Compiled MiniLM vs the NumPy reference on every integer tensor (issue 21, "bit-exact").

For each plan (config x wide preset x islands) the lowering returns every integer value of the
program as well (relay_passes/probes.py), compiled with the normal build for the target (x86-host:
the VNNI kernels, as bench_speed builds it; llvm: the generic kernels), and targets/exact.py
compares each value with tvmptq.reference.run_plan_values on the same evaluation sentences:
equal or not, differing elements, largest difference in LSB of the value's grid, and where a
difference starts (``origin``: all integer inputs of the step equal). Calibration: the first
--calib sentences of the calibration split (as results/transformer.md); compared: the first
--samples evaluation sentences.

    PYTHONPATH=$PWD OMP_NUM_THREADS=1 TVM_NUM_THREADS=1 nice -n 19 python scripts/minilm_exact.py \\
        --runs W8A8:none:softmax,layernorm W8A8:none:none --out results/minilm_exact.md

A run is CONFIG:WIDE:ISLANDS (WIDE: none or a tensor_groups preset such as res_ln_proj12; ISLANDS:
none or a comma list of QuantConfig.integer_islands). Rows are merged into --out by run and target.
"""
from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

import relay_passes as rp  # noqa: E402
import tvmptq  # noqa: E402
from targets.exact import compare_integer_tensors  # noqa: E402
from tvmptq.eval.sets import batches  # noqa: E402
from tvmptq.quant.calibrate import build_plan, collect_statistics  # noqa: E402
from tvmptq.quant.tensor_groups import PRESETS  # noqa: E402


def parse_run(spec: str):
    try:
        bits, wide, islands = spec.split(":")
        w, a = (int(v) for v in bits[1:].split("A"))
    except ValueError:
        raise SystemExit(f"bad run {spec!r}: expected CONFIG:WIDE:ISLANDS, e.g. W8A8:none:softmax,layernorm")
    if wide != "none" and wide not in PRESETS:
        raise SystemExit(f"unknown wide preset {wide!r}: none or one of {', '.join(PRESETS)}")
    return bits, w, a, wide, tuple(i for i in islands.split(",") if i and i != "none")


def summarize(r: dict) -> dict:
    t = r["tensors"]
    bad = [d for d in t if not d.equal]
    worst = max(bad, key=lambda d: d.max_lsb, default=None)
    return {"probed": len(t), "equal": len(t) - len(bad), "skipped": r["skipped"],
            "differing_elements": sum(d.differing for d in t), "elements": sum(d.elements for d in t),
            "max_lsb": worst.max_lsb if worst else 0, "worst": worst.name if worst else "",
            "origins": [d.row() for d in bad if d.origin], "first": bad[0].row() if bad else None,
            "by_kind": _by_kind(t), "outputs": r["outputs"], "samples": r["samples"], "batch": r["batch"],
            "rows": [d.row() for d in t]}


def _by_kind(t) -> dict:
    out = {}
    for d in t:
        k = out.setdefault(d.what, {"values": 0, "differing_values": 0, "max_lsb": 0, "max_fraction": 0.0})
        k["values"] += 1
        k["differing_values"] += not d.equal
        k["max_lsb"] = max(k["max_lsb"], d.max_lsb)
        k["max_fraction"] = max(k["max_fraction"], d.fraction)
    return out


def render(results: list[dict], commands: list[str]) -> str:
    lines = ["# Compiled MiniLM vs the NumPy reference on every integer tensor (issue 21)", "",
             "Produced by (merged rows; each run records its commit):", "", "```"]
    lines += [f"$ {c}" for c in commands] + ["```", "",
              "Every integer value of the plan's program (layer outputs, quantize points, integer islands; "
              "integer data movement only moves these) is returned by the compiled program as well "
              "(`relay_passes/probes.py`, `lowering_passes(plan, probes=...)`), built with the normal build "
              "for the target (`x86-host`: the VNNI kernels of `relay_passes.tensorize`, as "
              "`scripts/bench_speed.py` builds MiniLM; `llvm`: generic kernels), and compared element by element "
              "with `tvmptq.reference.run_plan_values` on the same evaluation sentences (`targets/exact.py`). "
              "LSB: one step of the value's grid. `origin`: a differing value whose integer inputs were all "
              "equal, i.e. where a difference starts; the other differing values inherit it. Run with "
              "`nice -n 19`, `OMP_NUM_THREADS=1 TVM_NUM_THREADS=1`, `torch.set_num_threads(1)`.", "",
              "| config | wide | islands | target | sentences | integer values equal | differing elements | "
              "max diff (LSB) | where differences start | final output (float) max abs diff | commit |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        s = r["summary"]
        starts = ", ".join(f"`{o['name']}` ({o['what']}, {o['differing']} el., {o['max_lsb']} LSB)"
                           for o in s["origins"][:6]) or "-"
        if len(s["origins"]) > 6:
            starts += f", ... ({len(s['origins'])} in all)"
        outs = "; ".join(f"{o['max_abs']:.3g} ({o['differing']}/{o['elements']} differ)" for o in s["outputs"])
        frac = s["differing_elements"] / s["elements"] if s["elements"] else 0
        lines.append(f"| {r['config']} | {r['wide']} | {r['islands']} | {r['target']} | {s['samples']} | "
                     f"**{s['equal']}/{s['probed']}** | {s['differing_elements']} of {s['elements']} ({100 * frac:.4f} %) | "
                     f"{s['max_lsb']} | {starts} | {outs} | {r['commit']} |")
    lines += [""]
    for r in results:
        s = r["summary"]
        if s["equal"] == s["probed"] and not s["skipped"]:
            continue
        lines += [f"### {r['config']} / {r['wide']} / {r['islands']} / {r['target']}", ""]
        if s["skipped"]:
            lines += ["Not probed: " + "; ".join(f"`{k}`: {v}" for k, v in s["skipped"].items()), ""]
        lines += ["Per kind of value (values, differing values, max LSB, largest differing fraction):", "",
                  "| produced by | values | differing | max LSB | max fraction |", "|---|---|---|---|---|"]
        for k, v in sorted(s["by_kind"].items()):
            lines.append(f"| {k} | {v['values']} | {v['differing_values']} | {v['max_lsb']} | "
                         f"{100 * v['max_fraction']:.4f} % |")
        lines += ["", "Differing values in program order (first 25):", "",
                  "| value | produced by | differing elements | fraction | max LSB | origin |", "|---|---|---|---|---|---|"]
        for d in [d for d in s["rows"] if not d["equal"]][:25]:
            lines.append(f"| `{d['name']}` | {d['what']} | {d['differing']} | {100 * d['fraction']:.4f} % | "
                         f"{d['max_lsb']} | {'yes' if d['origin'] else ''} |")
        lines.append("")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--runs", nargs="+", default=["W8A8:none:softmax,layernorm", "W8A8:none:none"])
    p.add_argument("--targets", default="x86-host", help="comma list: x86-host (VNNI kernels), llvm")
    p.add_argument("--calib", type=int, default=64)
    p.add_argument("--samples", type=int, default=8)
    p.add_argument("--batch", type=int, default=4, help="static batch compiled")
    p.add_argument("--observer", default="mse")
    p.add_argument("--out", default="results/minilm_exact.md")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    runs = [parse_run(s) for s in args.runs]
    command = "PYTHONPATH=$PWD OMP_NUM_THREADS=1 TVM_NUM_THREADS=1 nice -n 19 python " + " ".join(
        shlex.quote(a) for a in [sys.argv[0], *(argv or sys.argv[1:])])
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                            text=True).stdout.strip()
    model = tvmptq.load("minilm_l6")
    sset = tvmptq.get_set("sentences")
    calib = tuple(a[:args.calib] for a in sset.calibration())
    evald = tuple(a[:args.samples] for a in sset.evaluation())
    graph = tvmptq.prepare(model)
    observers, _ = collect_statistics(graph, batches(calib, 32), False)
    imported = rp.Canonicalize()(rp.import_model(model.build(), model.example_inputs(args.batch)))
    out_md, out_json = REPO / args.out, (REPO / args.out).with_suffix(".json")
    saved = json.loads(out_json.read_text()) if out_json.exists() else {"results": [], "commands": []}
    worst = 0
    for bits, w, a, wide, islands in runs:
        cfg = tvmptq.make_config(w, a, args.observer, tensor_bits=PRESETS.get(wide), integer_islands=islands)
        plan = build_plan(graph, observers, cfg, model.name, calib, 32)
        for target in args.targets.split(","):
            t0 = time.time()
            print(f"{bits} {wide} {islands or 'float islands'} {target}: compiling ...", flush=True)
            r = compare_integer_tensors(plan, imported, evald, target=target, tensorize=target != "llvm",
                                        log=lambda m: print(m, flush=True))
            s = summarize(r)
            row = {"config": bits, "wide": wide, "islands": ",".join(islands) or "float", "target": target,
                   "commit": commit, "seconds": round(time.time() - t0), "summary": s,
                   "float_islands_left": plan.config.get("integer_islands_float", [])}
            print(f"  {s['equal']}/{s['probed']} integer values equal, max {s['max_lsb']} LSB, "
                  f"outputs {s['outputs']}, {row['seconds']} s", flush=True)
            for o in s["origins"]:
                print(f"  origin {o['name']} ({o['what']}): {o['differing']} el., {o['max_lsb']} LSB", flush=True)
            key = (row["config"], row["wide"], row["islands"], row["target"])
            saved["results"] = [x for x in saved["results"]
                                if (x["config"], x["wide"], x["islands"], x["target"]) != key] + [row]
            saved["commands"] = [c for c in saved["commands"] if c != command] + [command]
            out_json.write_text(json.dumps(saved, indent=1))
            out_md.write_text(render(saved["results"], saved["commands"]))
            if islands and set(islands) >= {"softmax", "layernorm"}:
                worst = max(worst, s["probed"] - s["equal"])
    print(f"wrote {out_md}")
    return 0 if worst == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
