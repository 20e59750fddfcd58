"""MetaSchedule tuning (XGBoost cost model) with a database on disk, resumable chunk by chunk.

Layout: ``<root>/<target name>/`` holds MetaSchedule's JSON database (``database_workload.json``,
keyed inside by the structural hash of each workload, and ``database_tuning_record.json``, one
record per measured trial, appended as soon as it is measured) and ``target.json`` (the resolved
TVM target it was tuned for). So the database is keyed by target (folder) and workload (hash).

Chunks: the program's tuning tasks are tuned one chunk at a time (``chunk`` trials of one task per
MetaSchedule call); after every call the records are on disk. A killed run loses at most the trials
of the chunk in flight; the next run counts each task's records in the database and only tunes
what is missing. A truncated last line (killed while writing) is dropped with a warning; any other
damage is a ``TuneDatabaseError`` naming the file and line.
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from tvmptq.errors import ConfigError

from .tuning_db import RECORDS, SECONDS, TuneDatabaseError, _count_lines, _seconds, has_records, open_database, with_cores

def prepare(mod, tvm_target):
    """The module as it is tuned and compiled: legalized and fused (one task per fused kernel)."""
    import tvm
    from tvm import relax
    seq = tvm.transform.Sequential([relax.transform.LegalizeOps(), relax.transform.AnnotateTIROpPattern(),
                                    relax.transform.FoldConstant(), relax.transform.FuseOps(),
                                    relax.transform.FuseTIR()])
    with tvm_target, tvm.transform.PassContext(opt_level=3):
        return seq(mod)


def tuning_tasks(mod, tvm_target) -> list:
    """MetaSchedule's tasks for ``mod`` (the fused kernels of :func:`prepare`), largest first.

    Not tasks: hand-scheduled kernels (the tensorized int8 ones; extract_tasks keeps them, and
    MetaSchedule's own "already scheduled" check looks at the module's attributes, not the
    function's, so it would try to tune, and fail to count the flops of, them) and pure reshapes
    (the build turns them into free views, RewriteDataflowReshape; the tensorized program has one
    around every kernel, and measuring them would eat the budget of real kernels)."""
    from tvm import relax
    from tvm.s_tir import meta_schedule as ms
    extracted = [t for t in ms.relax_integration.extract_tasks(prepare(mod, tvm_target), tvm_target)
                 if not _scheduled(t) and not relax.analysis.has_reshape_pattern(t.dispatched[0]["main"])]
    return sorted(extracted, key=lambda t: -t.weight * _flops(t))


def _scheduled(task) -> bool:
    """Whether the task's function is hand-scheduled (``tirx.is_scheduled``, e.g. a VNNI kernel)."""
    import tvm
    return any(isinstance(f, tvm.tirx.PrimFunc) and f.attrs is not None and bool(f.attrs.get("tirx.is_scheduled"))
               for _, f in task.dispatched[0].functions_items())


def _flops(task) -> float:
    try:
        from tvm.s_tir.analysis import estimate_tir_flops
        return float(estimate_tir_flops(task.dispatched[0]))
    except Exception:
        return 0.0


PROGRESS = "progress.json"
BUILD_TIMEOUT_S, RUN_TIMEOUT_S = 300.0, 120.0


def _progress(folder: Path) -> dict:
    """Trials finished per workload hash (tasks whose search space ran out early count as done), and
    per ``<hash>+default`` whether the default schedule was stored as a record (1) or not (0)."""
    path = folder / PROGRESS
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text())
        assert isinstance(data, dict) and all(isinstance(v, int) for v in data.values())
        return data
    except (OSError, ValueError, AssertionError):
        raise TuneDatabaseError(f"corrupt tuning database {folder}: {PROGRESS} is unreadable") from None


def _save_progress(folder: Path, data: dict) -> None:
    _save_json(folder / PROGRESS, data)


def _save_json(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)  # atomic: a kill never leaves half a file


def _search(trials: int):
    """A smaller evolutionary search for tiny budgets (the default population of 512 costs minutes
    per task on two cores before the first trial is measured)."""
    from tvm.s_tir import meta_schedule as ms
    if trials > 32:
        return "evolutionary"
    return ms.search_strategy.EvolutionarySearch(population_size=64, init_min_unmeasured=16, genetic_num_iters=2)


def _records_for(db, mod) -> int:
    if not db.has_workload(mod):
        return 0
    return len(db.get_top_k(db.commit_workload(mod), 1 << 30))


# The committed x86-host databases (targets/tuned) were tuned with these budgets, FP32 and int8 alike:
# model -> (trials, cover, chunk) of tune(). scripts/tune_zoo.py tunes them; the benchmarks report them.
ZOO_BUDGETS = {"digits_resnet": (64, 4, 16), "efficientnet_lite0": (256, 4, 16), "minilm_l6": (128, 4, 16)}


def allocate(n_tasks: int, trials: int, chunk: int, cover: int = 0) -> list[tuple[int, int]]:
    """The order of tuning chunks: (task index, trials wanted for it in total so far), tasks in the
    order given (largest first). With ``cover``, every task first gets ``cover`` trials; then tasks
    are topped up to ``chunk`` each; both stop when ``trials`` are spent."""
    if cover < 0:
        raise ConfigError(f"--cover must be 0 or more, got {cover}")
    budget, wanted, order = trials, {}, []
    for per_task in ([cover] if cover else []) + [chunk]:
        for i in range(n_tasks):
            n = min(per_task - wanted.get(i, 0), budget)
            if n > 0:
                wanted[i] = wanted.get(i, 0) + n
                order.append((i, wanted[i]))
                budget -= n
    return order


def tune(mod, tvm_target, folder, trials: int, chunk: int = 8, seed: int = 0, tracker: str | None = None,
         key: str | None = None, num_trials_per_iter: int | None = None, cover: int = 0, log=print) -> dict:
    """Tune ``mod`` (a Relax module, e.g. the lowered integer program) for ``tvm_target`` with at most
    ``trials`` measured trials in total, in chunks of ``chunk`` trials of one task, largest tasks
    first. ``cover`` > 0 first gives every task ``cover`` trials (largest first, within the budget),
    then tops the largest tasks up to ``chunk`` each with what is left. Why: a kernel MetaSchedule
    never measured keeps TVM's unscheduled loop nest (single-threaded, scalar), so on a model with
    50 kernels a budget spent only on the largest ones leaves the rest 10-100x slower than even a
    few sampled schedules. Returns {"tasks", "tasks_tuned", "trials_run", "trials_in_db", "folder",
    "tuning_seconds_total"}."""
    from tvm.s_tir import meta_schedule as ms

    if trials < 1 or chunk < 1:
        raise ConfigError(f"--trials and --chunk must be at least 1, got {trials} and {chunk}")
    logging.getLogger("tvm.s_tir.meta_schedule").setLevel(logging.WARNING)
    tvm_target = with_cores(tvm_target)
    folder = Path(folder)
    db = open_database(folder, tvm_target, create=True)
    extracted = tuning_tasks(mod, tvm_target)
    # Generous timeouts: on a loaded 2-core machine one build can take over the default 30 s,
    # and a timed-out trial is stored as a failure (1e10 s), not retried.
    builder = ms.builder.LocalBuilder(timeout_sec=BUILD_TIMEOUT_S)
    runner = ms.runner.LocalRunner(timeout_sec=RUN_TIMEOUT_S)
    if tracker:
        from .rpc import parse_tracker
        host, port = parse_tracker(tracker)
        runner = ms.runner.RPCRunner(ms.runner.RPCConfig(tracker_host=host, tracker_port=port, tracker_key=key,
                                                         session_timeout_sec=RUN_TIMEOUT_S * 5))
    ran = 0
    plan = [(extracted[i], want) for i, want in allocate(len(extracted), trials, chunk, cover)]
    import tvm_ffi
    progress = _progress(folder)
    spent = _seconds(folder)
    def task_key(t):
        return f"{t.task_name}:{tvm_ffi.structural_hash(t.dispatched[0]) & 0xFFFFFFFFFFFF:012x}"

    for t, want in plan:
        wkey = task_key(t)
        if wkey + DEFAULT_MARK not in progress:  # once per task, not counted as a trial of the budget
            t0 = time.perf_counter()
            progress[wkey + DEFAULT_MARK] = int(measure_default(t, db, tvm_target, builder, runner, log))
            _save_progress(folder, progress)
            spent += time.perf_counter() - t0
            _save_json(folder / SECONDS, {"tuning_seconds": spent})
        have = max(_records_for(db, t.dispatched[0]) - progress[wkey + DEFAULT_MARK], progress.get(wkey, 0))
        todo = want - have
        if todo <= 0:
            log(f"  {t.task_name}: {have} record(s) on disk, skipped")
            continue
        log(f"  {t.task_name}: tuning {todo} trial(s) ({have} on disk)")
        t0 = time.perf_counter()
        contexts, weights = ms.relax_integration.extracted_tasks_to_tune_contexts(
            [t], str(folder), strategy=_search(trials), seed=seed)
        ms.tune_tasks(tasks=contexts, task_weights=weights, work_dir=str(folder), max_trials_global=todo,
                      num_trials_per_iter=num_trials_per_iter or min(todo, 8), builder=builder, runner=runner, database=db,
                      cost_model="xgb")
        ran += todo
        progress[wkey] = want  # this chunk is finished (its records are already on disk)
        _save_progress(folder, progress)
        spent += time.perf_counter() - t0
        _save_json(folder / SECONDS, {"tuning_seconds": spent})
    from .verify import verify_tasks
    checked = {k[: -len(VERIFIED_MARK)]: v for k, v in progress.items() if k.endswith(VERIFIED_MARK)}
    t0 = time.perf_counter()
    rejected = verify_tasks(folder, extracted, tvm_target, checked, task_key, log)
    progress.update({k + VERIFIED_MARK: v for k, v in checked.items()})
    _save_progress(folder, progress)
    spent += time.perf_counter() - t0  # tuning time includes measuring the defaults and verifying
    _save_json(folder / SECONDS, {"tuning_seconds": spent})
    return {"tasks": len(extracted), "tasks_tuned": len({id(t) for t, _ in plan}), "trials_run": ran,
            "trials_in_db": len(db.get_all_tuning_records()) - sum(v for k, v in progress.items() if k.endswith(DEFAULT_MARK)),
            "rejected": rejected, "folder": str(folder),
            "tuning_seconds_total": spent}


DEFAULT_TRACE = [[["GetSBlock", [], ["root", "main"], ["b0"]]], []]  # a default record's trace, as stored
DEFAULT_MARK = "+default"   # progress.json: the task's default schedule was measured (1) or failed to (0)
VERIFIED_MARK = "+verified"  # progress.json: how many of the task's records passed targets.verify last time


def measure_default(task, db, tvm_target, builder, runner, log=print) -> bool:
    """Measure the task's kernel as the default build compiles it (no schedule: TVM's loop nest, which
    LLVM vectorizes but nobody parallelizes) and store it as a record with an empty trace, so that
    applying the database picks it wherever no sampled schedule beat it (its trace only looks up the root
block, see DEFAULT_TRACE). Why: with a few trials per
    task, MetaSchedule's best sample can be slower than the default, most of all for tiny kernels
    where a parallel loop costs more than it saves (the digits ResNet's int8 program got 1.6x slower
    from tuning before this). Measured as MetaSchedule's runner measures (its evaluator settings);
    in this process for the local runner (its worker processes cost ~20 s of start-up per call),
    through the runner for remote devices. Returns whether the measurement succeeded."""
    import tvm
    from tvm.s_tir import meta_schedule as ms
    mod = task.dispatched[0]
    args_info = ms.arg_info.ArgInfo.from_prim_func(mod["main"])
    try:
        if isinstance(runner, ms.runner.LocalRunner):
            from .verify import random_args
            cfg, dev = runner.evaluator_config, tvm.cpu()
            lib = tvm.compile(mod, target=tvm_target)
            bufs = [tvm.runtime.tensor(a, dev) for a in random_args(mod["main"])]
            secs = list(lib.jit().time_evaluator("main", dev, number=cfg.number, repeat=cfg.repeat,
                                           min_repeat_ms=cfg.min_repeat_ms)(*bufs).results)
        else:
            built = builder.build([ms.builder.BuilderInput(mod, tvm_target)])[0]
            if built.error_msg:
                raise RuntimeError(built.error_msg)
            device = {"llvm": "cpu"}.get(tvm_target.kind.name, tvm_target.kind.name)  # a device name
            result = runner.run([ms.runner.RunnerInput(built.artifact_path, device, args_info)])[0].result()
            if result.error_msg:
                raise RuntimeError(result.error_msg)
            secs = [float(x) for x in result.run_secs]
    except Exception as err:  # noqa: BLE001 - a default that cannot run is simply not a candidate
        log(f"  {task.task_name}: default schedule not measured ({str(err).strip().splitlines()[-1][:200]})")
        return False
    sch = tvm.s_tir.Schedule(mod)
    sch.get_sblock("root")  # a record needs one instruction to count as valid (TuningRecord::IsValid)
    db.commit_tuning_record(ms.database.TuningRecord(sch.trace, db.commit_workload(mod), secs, tvm_target, args_info))
    log(f"  {task.task_name}: default schedule {1e3 * sum(secs) / len(secs):.4f} ms, stored as a candidate")
    return True


def database_summary(folder) -> dict:
    """What a database holds, as tune() reports it: measured trials (the stored default schedules
    not counted) and the tuning time summed over all runs."""
    folder = Path(folder)
    defaults = sum(v for k, v in _progress(folder).items() if k.endswith(DEFAULT_MARK))
    trials = _count_lines(folder / RECORDS) if has_records(folder) else 0
    return {"trials_in_db": trials - defaults, "tuning_seconds_total": _seconds(folder)}


def apply_database(mod, tvm_target, folder):
    """Compile ``mod`` with the tuned schedules of the database in ``folder`` (untuned kernels keep
    the default schedule: cpu_defaults.schedule_elementwise for fused elementwise ones on CPUs)."""
    import tvm
    from tvm import relax
    tvm_target = with_cores(tvm_target)
    db = open_database(folder, tvm_target)
    prepared = prepare(mod, tvm_target)
    with tvm_target, db, tvm.transform.PassContext(opt_level=3):
        tuned = relax.transform.MetaScheduleApplyDatabase(enable_warning=False)(prepared)
    from .cpu_defaults import schedule_elementwise_kernels
    if tvm_target.kind.name == "llvm":  # kernels the database does not cover (tuned ones are marked scheduled)
        tuned, _ = schedule_elementwise_kernels(tuned, tvm_target)
    return tvm.compile(tuned, target=tvm_target)
