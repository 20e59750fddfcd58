"""``tvmptq compile --target ethos-u55-128`` (any registry row with an ``npu`` table): the NPU
artifact of targets/npu/artifact.py, kept out of cli.py, which stays the entry point."""
from __future__ import annotations

import time
from pathlib import Path


def is_npu_target(name: str, targets_file=()) -> bool:
    import targets
    return bool(name) and targets.is_name(name, targets_file) and targets.get(name, targets_file).is_npu


def add_compile_flags(p) -> None:
    p.add_argument("--allow-cpu-fallback", action="store_true",
                   help="NPU targets: write the artifact even when some ops would run on the CPU (they are "
                        "listed); without it such ops are an error (exit 4) naming each one")


def compile_npu(args, model, plan, plan_file, source: str) -> int:
    from targets.npu.artifact import compile_npu_artifact
    if args.batch != 1:
        print(f"note: NPU artifacts are batch 1 (Vela runs MEAN and most ops at batch 1), not --batch {args.batch}")
    t0 = time.perf_counter()
    m = compile_npu_artifact(model, plan, args.out, args.target, plan_file=plan_file, source=source,
                             allow_cpu_fallback=args.allow_cpu_fallback)
    v, p = m["vela_estimate"], m["partition"]
    print(f"compiled {model.name} {m['plan']['config']} for {args.target} in {time.perf_counter() - t0:.1f} s: "
          f"{p['npu_ops']} NPU operator(s), CPU: {', '.join(p['cpu_ops']) or 'none'}; partitioned program "
          f"bit-exact on llvm: {p['bit_exact_llvm']}")
    print(f"Vela estimate (not a measurement): {v['cycles_total']} cycles, {v['estimated_ms']:.4f} ms at "
          f"{v['core_clock_hz'] / 1e6:.0f} MHz ({v['system_config']}, {v['memory_mode']})")
    print(f"artifact written to {Path(args.out)}/ (model.tflite, vela/, partition.txt, manifest.json, report.md)")
    return 0
