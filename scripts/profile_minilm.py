"""Per-kernel profile of MiniLM-L6 int8 (tensorized, untuned) on x86-host, batch 1, seq 128.

Builds the W8A8 plan and the tensorized Relax module as ``tvmptq compile`` does
(targets.compare._for_target), compiles it untuned, and times it in a fresh subprocess with
targets.speed.measure_in_subprocess in both modes: "latency" (the bench_speed protocol) and
"profile" (the VM instrument: mean ms per inference of every kernel and VM builtin). Writes the
top kernels to a Markdown file.

    PYTHONPATH=$PWD python scripts/profile_minilm.py --out results/minilm_profile.md --threads 1
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def build(work: Path, calib: int, integer_islands=()):
    import targets
    from targets.build import compile_module
    from targets.compare import prepare_batch1
    t = targets.get("x86-host")
    # integer_islands: the same W8A8 plan with integer islands (tvmptq/quant/int_softmax.py, int_layernorm.py)
    prep = prepare_batch1("minilm_l6", calib, work, t, integer_islands=integer_islands)
    ex = compile_module(prep.tensorized, t.tvm_target())
    ex.export_library(str(work / "int8.so"))
    return prep.kernels


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="results/minilm_profile.md")
    p.add_argument("--work", default="/tmp/minilm_profile")
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--calib-samples", type=int, default=64)
    p.add_argument("--runs", type=int, default=20)
    p.add_argument("--top", type=int, default=20)
    p.add_argument("--label", default="", help="a name for this build in the report")
    p.add_argument("--append", action="store_true", help="append to --out instead of overwriting it")
    p.add_argument("--integer-islands", default="", help="comma-separated integer islands (e.g. softmax)")
    p.add_argument("--build-only", action="store_true", help="build into --work and stop (run it under nice)")
    p.add_argument("--reuse", action="store_true", help="time the build already in --work (made by --build-only)")
    args = p.parse_args(argv)
    from targets.speed import measure_in_subprocess
    work = Path(args.work)
    t0 = time.perf_counter()
    islands = tuple(n for n in args.integer_islands.split(",") if n)
    if args.reuse:
        note = (work / "note.txt").read_text()
    else:
        note = build(work, args.calib_samples, islands) + (f", integer islands: {','.join(islands)}" if islands else "")
        (work / "note.txt").write_text(note)
    build_s = time.perf_counter() - t0
    if args.build_only:
        print(f"built {work / 'int8.so'} in {build_s:.0f} s ({note})")
        return 0
    base = {"inputs": str(work / "inputs.npz"), "engine": "tvm_int8_untuned", "kind": "tvm",
            "path": str(work / "int8.so"), "warmup": 5, "profile_dir": str(work / "profiles")}
    lines = [f"## MiniLM-L6 int8 untuned, tensorized ({note}) {args.label}\n",
             f"`PYTHONPATH=$PWD python scripts/profile_minilm.py {' '.join(argv if argv is not None else sys.argv[1:])}`"
             f" (build {build_s:.0f} s)\n"]
    result = {}
    for th in args.threads:
        lat = measure_in_subprocess({**base, "mode": "latency", "repeat": 10, "number": 5}, th, work / "workers")
        prof = measure_in_subprocess({**base, "mode": "profile", "repeat": args.runs, "number": 1}, th, work / "workers")
        result[th] = {"latency": lat, "profile": prof}
        if "error" in lat or "error" in prof:
            lines.append(f"{th} thread(s): error {lat.get('error') or prof.get('error')}\n")
            continue
        ks = sorted(prof["kernels"], key=lambda k: -k["ms"])
        total = sum(k["ms"] for k in ks)
        lines += [f"### {th} thread(s): latency median {lat['median_ms']:.2f} ms; profiled wall "
                  f"{prof['wall_ms']:.2f} ms, sum of kernels {total:.2f} ms\n",
                  "| kernel | ms | calls | share |", "|---|---:|---:|---:|"]
        lines += [f"| {k['name']} | {k['ms']:.3f} | {k['calls']:.0f} | {100 * k['ms'] / total:.1f} % |"
                  for k in ks[: args.top]]
        lines.append("")
        print(f"{th} thread(s): median {lat['median_ms']:.2f} ms", flush=True)
    out = Path(args.out)
    text = "\n".join(lines) + "\n"
    if args.append and out.exists():
        text = out.read_text() + "\n" + text
    out.write_text(text)
    (work / "result.json").write_text(json.dumps(result, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
