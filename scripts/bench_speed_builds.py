"""What scripts/bench_speed.py's main run and its --peers-only run (bench_speed_peers.py) share: the
run's clock and log, the host's stamp in the report header, the TVM builds with the tuning databases,
the bit-exactness check against the NumPy reference, the LiteRT worker spec, and the latency loop
(each measurement in a fresh process, targets/speed.py)."""
from __future__ import annotations

import datetime
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

T0 = time.perf_counter()


def log(msg: str) -> None:
    print(f"[{time.perf_counter() - T0:7.0f} s] {msg}", flush=True)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def host_stamp() -> dict:
    """The date and host fields of a report header (in the order the reports have always had)."""
    import targets
    return {"date": datetime.datetime.now().strftime("%Y-%m-%d %H:%M"), "cpu_model": _cpu_model(),
            "host_cpu": targets.host_cpu(), "cores": len(os.sched_getaffinity(0))}


def measure_jobs(jobs, specs: dict, models: dict, work: Path) -> None:
    """Time every (threads, model, engine) of ``jobs`` in a fresh process with ``specs[model][engine]``,
    into ``models[model]["latency"][str(threads)][engine]``."""
    from tqdm import tqdm

    from targets.speed import measure_in_subprocess
    log(f"== latency: {len(jobs)} measurements, each in a fresh process")
    for th, name, key in tqdm(jobs, desc="latency", file=sys.stderr, dynamic_ncols=True):
        r = measure_in_subprocess(specs[name][key], th, work / "workers")
        models[name].setdefault("latency", {}).setdefault(str(th), {})[key] = r
        log(f"  {name} {key} {th}t: " + (r["error"] if "error" in r else f"{r['median_ms']:.3f} ms (IQR {r['iqr_ms']:.3f})"))


def budget(name: str, args) -> tuple[int, int, int]:
    """(trials, cover, chunk) of one model: targets.tune.ZOO_BUDGETS unless given on the command line."""
    from targets.tune import ZOO_BUDGETS
    trials, cover, chunk = ZOO_BUDGETS.get(name, (64, 4, 16))
    return (args.trials or trials, cover if args.cover is None else args.cover, args.chunk or chunk)


def tvm_build(mod, T, root, args, variant: str, tuning: dict, name: str):
    """Compile ``mod`` for the x86 target, tuned with this CPU's database under ``root`` (topped up to
    the model's budget first unless --no-tune; with --no-tune and none for this CPU, the one tuned on
    another CPU of the same architecture, named in the report: tuning_db.zoo_database chooses);
    records what it holds in ``tuning``."""
    from targets.build import compile_module
    from targets.tune import apply_database, database_summary, tune
    from targets.tuning_db import shown, target_cpu, zoo_database, zoo_folder
    info = {}
    if args.tune:
        folder = zoo_folder(root, "x86-host", name, variant, 1, T)
        trials, cover, chunk = budget(name, args)
        log(f"  tuning {variant}: top up {shown(folder)} to {trials} trials (cover {cover}, chunk {chunk})")
        info["trials_run"] = tune(mod, T, folder, trials, chunk, cover=cover, log=lambda m: log("  " + m))["trials_run"]
    folder, cpu, why = zoo_database(root, "x86-host", name, variant, 1, T)
    if folder is None:
        ex = compile_module(mod, T)
        info.update(folder=shown(zoo_folder(root, "x86-host", name, variant, 1, T)), trials_in_db=0,
                    note=f"built untuned: {why}")
    else:
        if cpu != target_cpu(T):
            log(f"  {variant}: schedules tuned on {cpu} ({shown(folder)}), applied on {target_cpu(T)}")
        ex = apply_database(mod, T, folder)
        info.update(database_summary(folder), tuned_on=cpu, folder=shown(folder))
    tuning[variant] = info
    return ex


def _vm(ex):
    import tvm
    from tvm import relax
    return relax.VirtualMachine(ex, tvm.cpu())


def _run_vm(vm, xs):
    import tvm
    out = vm["main"](*[tvm.runtime.tensor(np.ascontiguousarray(x)) for x in xs])
    out = out if hasattr(out, "numpy") else out[0]
    return out.numpy()


def bit_exact(builds: dict, plan, samples: list[list[np.ndarray]]) -> list[dict]:
    """Every TVM int8 build against the NumPy reference executor, one batch-1 call per sample."""
    from tvmptq.reference import run_plan
    refs = [run_plan(plan, *s) for s in samples]
    rows = []
    for variant, ex in builds.items():
        vm = _vm(ex)
        outs = [_run_vm(vm, s) for s in samples]
        same = all(np.array_equal(o, r) for o, r in zip(outs, refs))
        diff = max(float(np.max(np.abs(o.astype(np.float64) - np.asarray(r, np.float64)))) for o, r in zip(outs, refs))
        rows.append({"variant": variant, "samples": len(samples), "bit_exact": bool(same), "max_abs_diff": diff})
    return rows


def add_litert(specs: dict, plan, tfl, evaluation, d: Path, base: dict, args, res: dict) -> None:
    """The LiteRT worker spec of the exported ``tfl`` (fed its int8 input) into ``specs``, then
    LiteRT's outputs against the NumPy reference into ``res["litert_vs_reference"]``."""
    from targets.npu.litert import compare_outputs
    from tvmptq.export.tflite import quantize_input
    np.savez(d / "litert_inputs.npz", in0=quantize_input(plan, tfl, np.asarray(evaluation[0][:1])))
    specs["litert_int8"] = {**base, "engine": "litert_int8", "kind": "litert", "path": str(tfl.path),
                            "inputs": str(d / "litert_inputs.npz")}
    eq = compare_outputs(plan, tfl, np.asarray(evaluation[0][:args.exact_samples]), resolvers=("AUTO",))[0]
    res["litert_vs_reference"] = {"kernels": eq.resolver, "equal": eq.equal, "total": eq.total,
                                  "max_abs": eq.max_abs, "top1_equal": eq.top1_equal, "samples": eq.samples}
