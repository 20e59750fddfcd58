"""scripts/bench_speed.py --peers-only: LiteRT int8 next to TVM int8, timed in one run, into the
peers section of results/speed.md (targets/speed_peers.py); the main tables are left as they are."""
from __future__ import annotations

import platform
import sys
import time
from pathlib import Path

from bench_speed_builds import T0, add_litert, bit_exact, host_stamp, log, measure_jobs, tvm_build


def run_peers(args) -> int:
    """--peers-only: LiteRT int8 and the TVM int8 programs it is compared with, timed in this one run;
    written as the peers section of <out> (targets/speed_peers.py), the main tables untouched."""
    import tvm
    from ai_edge_litert import __version__ as litert_version

    from targets.speed_peers import PEER_ENGINES, write_peers
    work = Path(args.work)
    peers = {"command": " ".join(["scripts/bench_speed.py"] + sys.argv[1:]), **host_stamp(),
             "versions": {"tvm": tvm.__version__, "ai_edge_litert": litert_version, "python": platform.python_version()},
             "tune": False, "repeat": args.repeat, "number": args.number, "warmup": args.warmup,
             "threads": args.threads, "calib_samples": args.calib_samples, "models": {}, "refused": {}}
    specs = {}
    for name in args.models:
        log(f"== {name}: preparing (peers)")
        res = {}
        got = prepare_peers(name, args, work, res)
        if got is None:
            peers["refused"][name] = res["refused"]
            log(f"  {name}: refused by the TFLite export, skipped: {res['refused']['error']}")
            continue
        peers["models"][name], specs[name] = res, got
    jobs = [(th, n, k) for th in args.threads for n in specs for k, _ in PEER_ENGINES]
    measure_jobs(jobs, specs, peers["models"], work)
    peers["seconds"] = time.perf_counter() - T0
    log(f"wrote the peers section of {write_peers(peers, Path(args.out))} ({peers['seconds'] / 60:.1f} min)")
    return 0


def prepare_peers(name: str, args, work: Path, res: dict) -> dict | None:
    """The W8A8 plan, its fully-integer TFLite export and the two TVM int8 builds (untuned, and tuned
    from the databases on disk) as worker specs; ``None`` with ``res["refused"]`` when the export
    refuses the model (nothing is built in TVM for it)."""
    import targets
    from targets.build import compile_module
    from targets.compare import prepare_batch1, zoo_plan
    from targets.speed_peers import tflite_or_refusal
    t = targets.get("x86-host")
    T = t.tvm_target()
    d = work / name
    d.mkdir(parents=True, exist_ok=True)
    model, plan = zoo_plan(name, args.calib_samples)
    tfl, refusal = tflite_or_refusal(plan, d / "tvmptq_int8.tflite")
    if tfl is None:
        res["refused"] = refusal
        return None
    prep = prepare_batch1(name, args.calib_samples, d, t, planned=(model, plan))
    tens, evaluation = prep.tensorized, prep.evaluation
    base = {"repeat": args.repeat, "number": args.number, "warmup": args.warmup, "profile_dir": str(d / "profiles")}
    specs = {}
    add_litert(specs, plan, tfl, evaluation, d, base, args, res)
    tuning: dict = {}
    ex = {"tvm_int8_untuned": compile_module(tens, T),
          "tvm_int8_tuned": tvm_build(tens, T, Path(args.db), args, "int8", tuning, name)}
    res["tuning"] = tuning
    res["bit_exact"] = bit_exact({"untuned": ex["tvm_int8_untuned"], "tuned": ex["tvm_int8_tuned"]}, plan,
                                 prep.samples(args.exact_samples))
    for key, e in ex.items():
        e.export_library(str(d / f"{key}.so"))
        specs[key] = {**base, "engine": key, "kind": "tvm", "path": str(d / f"{key}.so"), "inputs": str(d / "inputs.npz")}
    eq = res["litert_vs_reference"]
    log(f"{name}: TFLite export, LiteRT check ({eq['equal']}/{eq['total']} equal) and TVM builds ready")
    return specs
