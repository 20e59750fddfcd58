"""Which integer kernels of a zoo model run in the target's dot-product kernels, with wide activation
tensors (``--wide``, tvmptq/cli_wide.py: a preset of tvmptq/quant/tensor_groups.PRESETS or NAME=BITS).

Builds the W8A8 plan (first ``--calib-samples`` calibration samples) with those tensors widened, the
batch-1 integer module and TensorizeDot's report for ``--target`` (relay_passes/tensorize), as
``tvmptq compile`` and scripts/bench_speed.py build it; prints the count of tensorized kernels per
kind and every reason a kernel was left out, and with ``--out`` writes that as a Markdown section
(replacing a section of the same heading). With ``--exact-samples N`` the tensorized module is also
compiled (untuned) and its output compared with the NumPy reference executor on N evaluation
samples, and with the build without dot kernels (the same integer program on TVM's own schedules).
Times nothing.

    PYTHONPATH=$PWD python scripts/wide_kernel_report.py --wide res_ln_proj12 --exact-samples 2 \\
        --out results/wide_kernels.md
"""
from __future__ import annotations

import argparse
import re
import sys
import time
import warnings
from collections import Counter
from pathlib import Path

import numpy as np


REPO = Path(__file__).resolve().parents[1]


def report(model_name: str, tensor_bits, calib_samples: int, target_name: str, work: Path, exact_samples: int,
           integer_islands=()):
    import targets
    from relay_passes.tensorize import TensorizeDot
    from targets.compare import prepare_batch1
    t = targets.get(target_name)
    prep = prepare_batch1(model_name, calib_samples, work, t, integer_islands=integer_islands, tensor_bits=tensor_bits)
    tensorize = TensorizeDot(t, prep.plan, warn=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        tensorize(prep.mods["int8"])
    out = {"records": tensorize.report, "kernels": prep.kernels,
           "wide": {n: tq.bits for n, tq in prep.plan.tensors.items() if tq.bits > 8}}
    if exact_samples:
        from bench_speed_builds import _run_vm, _vm, bit_exact
        from targets.build import compile_module
        samples = prep.samples(exact_samples)
        builds = {"tensorized": compile_module(prep.tensorized, t.tvm_target()),
                  "no dot kernels": compile_module(prep.mods["int8"], t.tvm_target())}
        out["bit_exact"] = bit_exact(builds, prep.plan, samples)
        outs = {k: [_run_vm(_vm(ex), x) for x in samples] for k, ex in builds.items()}
        out["same_as_plain"] = all(np.array_equal(a, b) for a, b in zip(*outs.values()))
    return out


def _family(kernel: str) -> str:
    """A kernel's name up to its shape: vnni16_dense_requant_i16_u8_128x384x384 -> vnni16_dense_requant_i16_u8."""
    parts = kernel.split("_")
    cut = next((i for i, t in enumerate(parts) if re.fullmatch(r"\d+(x\d+)+", t)), len(parts))
    return "_".join(parts[:cut])


def markdown(heading: str, cmd: str, res: dict, seconds: float) -> list[str]:
    recs = res["records"]
    kinds = Counter(r.kind for r in recs)
    done = Counter(r.kind for r in recs if r.tensorized)
    lines = [heading, "", f"`{cmd}` ({seconds:.0f} s, {time.strftime('%Y-%m-%d')}; times nothing)", "",
             f"Wide tensors: {len(res['wide'])} ({', '.join(f'{b}-bit' for b in sorted(set(res['wide'].values()))) or 'none'}). "
             f"TensorizeDot: {res['kernels']}.", "",
             "| kind | kernels | tensorized |", "|---|---:|---:|"]
    lines += [f"| {k} | {kinds[k]} | {done[k]} |" for k in sorted(kinds)]
    by_kernel = Counter(_family(r.kernel) for r in recs if r.tensorized)
    if by_kernel:
        lines += ["", "Kernels (name up to its shape: count): "
                  + ", ".join(f"`{k}` {n}" for k, n in sorted(by_kernel.items()))]
    reasons = Counter((r.kind, r.reason) for r in recs if not r.tensorized)
    if reasons:
        lines += ["", "Not tensorized, by reason:", ""]
        lines += [f"* {n} x {kind}: {why}" for (kind, why), n in sorted(reasons.items(), key=lambda kv: -kv[1])]
    if "bit_exact" in res:
        lines += ["", "Compiled (untuned) vs the NumPy reference executor (`tvmptq.reference.run_plan`), "
                  + "; ".join(f"{b['variant']}: {b['samples']} evaluation samples, bit-exact {b['bit_exact']}, "
                              f"max abs diff {b['max_abs_diff']:.3g}" for b in res["bit_exact"])
                  + f". Tensorized output equal, element for element, to the build without dot kernels: "
                  f"{res['same_as_plain']}."]
    return lines + [""]


def merge_section(path: Path, heading: str, lines: list[str]) -> str:
    """``path``'s text with the section under ``heading`` (up to the next ``## ``) replaced by ``lines``."""
    old = path.read_text().splitlines() if path.exists() else []
    out, skip = [], False
    for line in old:
        if line.startswith("## "):
            skip = line == heading
        if not skip:
            out.append(line)
    while out and not out[-1].strip():
        out.pop()
    return "\n".join(([*out, ""] if out else []) + lines)


def main(argv=None) -> int:
    from tvmptq import cli_wide
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="minilm_l6")
    cli_wide.add_arguments(p)
    p.add_argument("--calib-samples", type=int, default=64)
    p.add_argument("--target", default="x86-host")
    p.add_argument("--exact-samples", type=int, default=0)
    p.add_argument("--integer-islands", nargs="+", default=[], choices=["softmax", "layernorm"],
                   help="QuantConfig.integer_islands, as scripts/bench_speed.py --integer-islands")
    p.add_argument("--label", default="", help="added to the section heading (e.g. 'before')")
    p.add_argument("--work", default=str(REPO / "build" / "wide_kernel_report"))
    p.add_argument("--out", default=None, help="Markdown file to merge this run's section into")
    args = p.parse_args(argv)
    tensor_bits = cli_wide.tensor_bits(args)
    t0 = time.perf_counter()
    res = report(args.model, tensor_bits, args.calib_samples, args.target, Path(args.work), args.exact_samples,
                 tuple(args.integer_islands))
    for r in res["records"]:
        print(r)
    spec = " ".join(args.wide or []) or "none"
    islands = f", integer islands {'+'.join(args.integer_islands)}" if args.integer_islands else ""
    heading = f"## {args.model}, --wide {spec}{islands}, {args.target}" + (f" ({args.label})" if args.label else "")
    cmd = "PYTHONPATH=$PWD python scripts/wide_kernel_report.py " + " ".join(argv if argv is not None else sys.argv[1:])
    lines = markdown(heading, cmd, res, time.perf_counter() - t0)
    print("\n".join(lines))
    if args.out:
        Path(args.out).write_text(merge_section(Path(args.out), heading, lines))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    sys.exit(main())
