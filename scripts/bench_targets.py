"""Writes results/targets.md (issue 5): EfficientNet-Lite0 and digits, FP32 and int8 (W8A8 integer-only
program; on x86-host with the tensorized VNNI kernels, as `tvmptq compile` builds it), untuned and
MetaSchedule-tuned x86-host latency, two ARM targets under qemu-user (bit-exact vs x86 + guest
instruction counts, a proxy), two CUDA archs validated with nvcc (no GPU latency).

    python scripts/bench_targets.py                      # full: both models, each at its ZOO_BUDGETS
    python scripts/bench_targets.py --models digits_resnet --trials 8 --out results/targets_digits.md
    python scripts/bench_targets.py --npu-only           # redo only the Ethos-U rows, keep the rest of the JSON

Tuning goes into this CPU's committed databases (targets/tuned/<cpu>/) and resumes there (`--no-tune`:
time what is on disk, a database tuned on another x86 CPU where this one has none, named in the table): with them at their
budgets (scripts/tune_zoo.py) the run measures only. Ethos-U rows (issue 22): the W8A8 and W4A8 plans
exported to TFLite, compiled by Vela for each NPU (estimates, labelled so), LiteRT vs the NumPy
reference, the TVM-side partition and its llvm bit-exact check (targets/npu/compare_rows.py);
`--npu-only` recomputes just those rows (a few minutes) and merges them into the existing
results/targets.json, the other rows staying as they were measured (the report says when each ran). Needs `make arm-setup` (qemu-user, aarch64
cross compiler, build/arm64) and nvcc for the CUDA rows. On 2 cores, with the databases tuned:
about 30 min (qemu runs of EfficientNet take ~5 min each); tuning from scratch adds the
tune_zoo times (about 5 s a trial: EfficientNet-Lite0 256 trials ~20-25 min per variant).

    python scripts/bench_targets.py --models digits_vit --no-tune --merge   # add one model's rows

--merge keeps the rows of the other models from the --out json and adds this run's; the report
lists each run (command, date, minutes, its models) under the header.
"""
import datetime
import json
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from targets.compare import run_compare, write_report  # noqa: E402
from targets.tune import ZOO_BUDGETS  # noqa: E402
from targets.tuning_db import SHIPPED


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["digits_resnet", "efficientnet_lite0"])
    p.add_argument("--targets", nargs="+", default=["x86-host", "cortex-a72", "neoverse-v1", "sm_87", "sm_90",
                                                    "ethos-u55-128", "ethos-u65-256", "ethos-u85-256"])
    p.add_argument("--trials", type=int, default=None,
                   help="trials per model and variant (default: each model's targets.tune.ZOO_BUDGETS, "
                        "the budget the committed databases were tuned with)")
    p.add_argument("--chunk", type=int, default=16)
    p.add_argument("--cover", type=int, default=0, help="trials every task gets first (targets.tune.tune)")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--out", default="results/targets.md")
    p.add_argument("--db", default=str(SHIPPED),
                   help="tuning database root (default: the committed targets/tuned, so that tuning resumes "
                        "where the last run stopped and `tvmptq compile` starts tuned)")
    p.add_argument("--no-tune", dest="tune", action="store_false",
                   help="time what the databases hold (one tuned on another CPU of the same architecture "
                        "when this CPU has none; the report names it) instead of topping them up first")
    p.add_argument("--npu-only", action="store_true",
                   help="recompute only the NPU rows (the --targets that are Ethos-U) and merge them into the "
                        "existing <out>.json, keeping its other rows; rewrites the report and charts")
    p.add_argument("--merge", action="store_true", help="keep the other models' rows from the --out json")
    a = p.parse_args()
    out = Path(a.out)
    if a.npu_only:
        return npu_only(a, out)
    r = run_compare(a.models, a.targets, Path("build") / "bench_targets", a.trials or 0, a.chunk, a.batch,
                    out_md=None if a.merge else out,
                    db_root=a.db, cover=a.cover, budgets=None if a.trials is not None else ZOO_BUDGETS,
                    tune_first=a.tune)
    if a.merge:
        run = {"command": "python scripts/bench_targets.py " + " ".join(sys.argv[1:]), "models": a.models,
               "date": datetime.datetime.now().strftime("%Y-%m-%d %H:%M"), "minutes": round(r["seconds"] / 60, 1),
               "tuned_now": r["tuned_now"]}
        old = json.loads(out.with_suffix(".json").read_text()) if out.with_suffix(".json").is_file() else {"rows": []}
        kept = [row for row in old["rows"] if row["model"] not in a.models]
        prev_runs = old.get("runs") or [{"command": "python scripts/bench_targets.py (the run of the header)",
                                         "models": list(dict.fromkeys(row["model"] for row in kept)),
                                         "minutes": round(old.get("seconds", 0) / 60, 1),
                                         "tuned_now": old.get("tuned_now", True)}]
        merged = {**old, "rows": kept + r["rows"], "budget": {**old.get("budget", {}), **r["budget"]},
                  "runs": [x for x in prev_runs if set(x["models"]) - set(a.models)] + [run]}
        write_report(merged, out)
    print(f"wrote {out} ({len(r['rows'])} rows, {r['seconds'] / 60:.1f} min)")


def npu_only(a, out: Path) -> None:
    import json
    import time

    import targets
    import tvmptq
    from targets.compare import _plan, write_report
    from targets.npu.compare_rows import npu_rows
    from tvmptq.eval.sets import DEFAULT_SET
    data = json.loads(out.with_suffix(".json").read_text())
    npus = [targets.get(n) for n in a.targets if targets.get(n).is_npu]
    t0 = time.perf_counter()
    rows = []
    for name in a.models:
        model = tvmptq.load(name)
        rows += npu_rows(model, _plan(model, DEFAULT_SET[name], 64), DEFAULT_SET[name], npus,
                         Path("build") / "bench_targets" / "npu", 64)
    done = {(r["model"], r["target"]) for r in rows}
    data["rows"] = [r for r in data["rows"] if (r["model"], r["target"]) not in done] + rows
    data["npu_seconds"] = time.perf_counter() - t0
    data["npu_run"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    write_report(data, out)
    print(f"wrote {out} ({len(rows)} NPU rows merged, {data['npu_seconds'] / 60:.1f} min)")


if __name__ == "__main__":
    main()
