"""Check that tuned schedules compute what the kernel computes, and drop the records that do not.

Why: a MetaSchedule schedule is meant to change only how a kernel runs, but TVM 0.27 sometimes
builds one that gives wrong results. Found on EfficientNet-Lite0's FP32 kernel
``fused_conv2d3_add2_tir_clip1_pad2`` (a 1x1 conv whose output is padded for the next depthwise
conv): its fastest sampled schedule was off by 4.8 on random inputs, and the tuned model's logits by
0.30. Applying a database picks each kernel's fastest record, so before a record can be picked it
must match the unscheduled kernel (TVM's own loop nest, the reference) on random inputs: integer
outputs bit-exactly, float outputs to a reordering tolerance. A failing record is removed from the
database file, and the next fastest is checked, until one passes (the default record, whose trace
is empty, always does).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .tuning_db import RECORDS, WORKLOADS

FLOAT_RTOL = 1e-4  # of the output's largest magnitude: summation order changes fp32 results by ~1e-6


def random_args(func, seed: int = 0) -> list:
    """Random inputs for a kernel's parameters (and a buffer for its output): floats N(0, 1), int8 and
    uint8 over their whole range, wider integers in {0, 1} because they can be indices (embedding
    lookups) where a random value would read out of bounds."""
    from tvm.s_tir import meta_schedule as ms
    rng = np.random.default_rng(seed)
    args = []
    for info in ms.arg_info.ArgInfo.from_prim_func(func):
        shape, dtype = [int(s) for s in info.shape], str(info.dtype)
        if "float" in dtype:
            args.append(rng.standard_normal(shape).astype(dtype))
        elif dtype in ("int8", "uint8"):
            lo, hi = np.iinfo(dtype).min, np.iinfo(dtype).max
            args.append(rng.integers(lo, hi + 1, shape).astype(dtype))
        else:
            args.append(rng.integers(0, 2, shape).astype(dtype))
    return args


def run_kernel(mod, tvm_target, args) -> list:
    """Build ``mod`` (one PrimFunc ``main``) and return all its buffers after one call."""
    import tvm
    dev = tvm.cpu()
    lib = tvm.compile(mod, target=tvm_target)
    bufs = [tvm.runtime.tensor(a, dev) for a in args]
    lib["main"](*bufs)
    return [b.numpy() for b in bufs]


def same_result(ref: list, got: list) -> bool:
    for a, b in zip(ref, got):
        if a.dtype.kind == "f":
            scale = max(1.0, float(np.max(np.abs(a)))) if a.size else 1.0
            if not np.all(np.isfinite(b)) or float(np.max(np.abs(a.astype(np.float64) - b), initial=0.0)) > FLOAT_RTOL * scale:
                return False
        elif not np.array_equal(a, b):
            return False
    return True


def verify_tasks(folder, tasks, tvm_target, checked: dict, key, log=print) -> int:
    """Check each task's records in the database in ``folder``, fastest first, until one matches the
    unscheduled kernel, and remove the ones that did not from the file. ``checked`` maps
    ``key(task)`` to the number of records that passed the last check, so a task is checked again
    only when tuning added records. Returns how many records were removed."""
    import tvm
    import tvm_ffi
    from tvm.s_tir import meta_schedule as ms
    folder = Path(folder)
    workloads = [ms.database.Workload.from_json(json.loads(line))
                 for line in (folder / WORKLOADS).read_text().splitlines() if line.strip()]
    lines = (folder / RECORDS).read_text().splitlines()
    by_workload: dict[int, list] = {}
    for n, line in enumerate(lines):
        if line.strip():
            w, rec = json.loads(line)
            if rec[1]:  # failed trials have no run times and are never applied
                by_workload.setdefault(w, []).append((sum(map(float, rec[1])) / len(rec[1]), n, rec))
    drop: set[int] = set()
    for task in tasks:
        mod = task.dispatched[0]
        found = [w for w, wl in enumerate(workloads) if w in by_workload and tvm_ffi.structural_equal(wl.mod, mod)]
        candidates = sorted(c for w in found for c in by_workload[w])
        if not candidates or checked.get(key(task)) == len(candidates):
            continue
        args = random_args(mod["main"])
        reference = run_kernel(mod, tvm_target, args)
        bad = []
        for _, n, rec in candidates:
            sch = tvm.s_tir.Schedule(mod)
            ms.database.TuningRecord.from_json(rec, workloads[found[0]]).trace.apply_to_schedule(
                sch, remove_postproc=False)
            try:
                ok = same_result(reference, run_kernel(sch.mod, tvm_target, args))
            except Exception:  # a record that no longer builds is as unusable as a wrong one
                ok = False
            if ok:
                break
            bad.append(n)
        if bad:
            log(f"  {task.task_name}: {len(bad)} tuned schedule(s) gave wrong results; removed from the database")
        drop.update(bad)
        checked[key(task)] = len(candidates) - len(bad)
    if drop:
        (folder / RECORDS).write_text("".join(line + "\n" for n, line in enumerate(lines) if n not in drop))
    return len(drop)
