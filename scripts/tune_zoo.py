"""Tune the committed x86-host databases of the zoo (targets/tuned/<cpu>/), FP32 and int8 with one budget.

A database belongs to the CPU its trials were timed on, so each CPU gets its own folder; on a
machine whose CPU has none, `tvmptq compile` and the benchmarks (with --no-tune) fall back to one
tuned on another x86 CPU and say so.

    python scripts/tune_zoo.py                                  # every model, both variants, BUDGETS
    python scripts/tune_zoo.py --models digits_resnet --variants int8

The modules are exactly those `tvmptq compile` / `tvmptq compare` build for the target (batch 1; int8
with the tensorized VNNI kernels where the target has VNNI), so `make bench-targets`,
`make bench-speed` and `tvmptq compile --target x86-host` find their schedules. Tuning resumes: a run
that stops keeps its finished chunks, and a model already at its budget is skipped in seconds.

Budget per model (targets.tune.ZOO_BUDGETS; FP32 and int8 get the same): every task first gets `cover` trials
(a kernel never measured keeps TVM's unscheduled, single-threaded loop nest), then the largest
tasks are topped up to `chunk` trials each until `trials` are spent. On the 2-core host a trial
costs about 5 s: digits ~5 min, EfficientNet-Lite0 ~20 min, MiniLM ~10 min per variant.
"""
import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from targets.tune import ZOO_BUDGETS  # noqa: E402



def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=list(ZOO_BUDGETS), choices=list(ZOO_BUDGETS))
    p.add_argument("--variants", nargs="+", default=["fp32", "int8"], choices=["fp32", "int8"])
    p.add_argument("--target", default="x86-host")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--db", help="database root (default: the committed targets/tuned; each CPU tunes "
                                "<root>/<cpu>/<target>-<model>-<variant>-b<batch>)")
    a = p.parse_args()

    import targets
    import tvmptq
    from targets.compare import _for_target, _modules, _plan
    from targets.tune import tune
    from targets.tuning_db import SHIPPED, zoo_folder
    from tvmptq.eval.sets import DEFAULT_SET

    t = targets.get(a.target)
    for name in a.models:
        trials, cover, chunk = ZOO_BUDGETS[name]
        model = tvmptq.load(name)
        plan = _plan(model, DEFAULT_SET[name], 64)
        mods = _modules(model, plan, a.batch)
        for var in a.variants:
            mod, kernels = _for_target(mods, var, t, plan)
            folder = zoo_folder(Path(a.db) if a.db else SHIPPED, t.name, name, var, a.batch, t.tvm_target())
            print(f"{name} {var}{' (' + kernels + ')' if kernels else ''}: {trials} trials, cover {cover}, "
                  f"chunk {chunk} -> {folder}", flush=True)
            t0 = time.perf_counter()
            r = tune(mod, t.tvm_target(), folder, trials, chunk, cover=cover)
            print(f"{name} {var}: {r['tasks_tuned']}/{r['tasks']} tasks, {r['trials_run']} trials run now, "
                  f"{r['trials_in_db']} in the database, {r['rejected']} wrong schedule(s) removed, {time.perf_counter() - t0:.0f} s "
                  f"({r['tuning_seconds_total']:.0f} s over all runs)", flush=True)


if __name__ == "__main__":
    main()
