"""targets.verify: tuned schedules must compute what the kernel computes. The fixture is a real case,
EfficientNet-Lite0's FP32 kernel fused_conv2d3_add2_tir_clip1_pad2 (1x1 conv, bias, ReLU6, then the
pad of the next depthwise conv) with the four schedules MetaSchedule sampled for it; the two fastest
leave part of the output unwritten (the logits of the tuned model were off by 0.30)."""
import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

pytest.importorskip("tvm")
FIXTURE = Path(__file__).parent / "data" / "wrong_schedule"


def _target():
    import tvm
    return tvm.target.Target({"kind": "llvm", "mcpu": "x86-64", "num-cores": 2})  # runs on any x86 CI machine


def _task(folder):
    from tvm.s_tir import meta_schedule as ms
    line = (folder / "database_workload.json").read_text().splitlines()[0]
    return SimpleNamespace(task_name="fused_conv2d3_add2_tir_clip1_pad2",
                           dispatched=[ms.database.Workload.from_json(json.loads(line)).mod])


def _mean_secs(line):
    secs = [float(s) for s in json.loads(line)[1][1]]
    return sum(secs) / len(secs)


def test_wrong_schedules_are_removed_fastest_first(tmp_path):
    import tvm
    from tvm.s_tir import meta_schedule as ms

    from targets.verify import random_args, run_kernel, same_result, verify_tasks
    folder = tmp_path / "db"
    shutil.copytree(FIXTURE, folder)
    before = (folder / "database_tuning_record.json").read_text().splitlines()
    task, checked, log = _task(folder), {}, []
    removed = verify_tasks(folder, [task], _target(), checked, lambda t: t.task_name, log.append)
    after = (folder / "database_tuning_record.json").read_text().splitlines()
    assert removed == len(before) - len(after) >= 1
    assert "gave wrong results" in log[0]
    # the removed ones were the fastest; the fastest left is the one applying the database picks, and it is right
    assert max(_mean_secs(l) for l in before if l not in after) < min(_mean_secs(l) for l in after)
    mod = task.dispatched[0]
    best = min(after, key=_mean_secs)
    sch = tvm.s_tir.Schedule(mod)
    wl = ms.database.Workload(mod)
    ms.database.TuningRecord.from_json(json.loads(best)[1], wl).trace.apply_to_schedule(sch, remove_postproc=False)
    args = random_args(mod["main"], seed=1)
    assert same_result(run_kernel(mod, _target(), args), run_kernel(sch.mod, _target(), args))
    # checked again only when tuning adds records: nothing to do now
    assert checked == {task.task_name: len(after)}
    assert verify_tasks(folder, [task], _target(), checked, lambda t: t.task_name, log.append) == 0
    assert (folder / "database_tuning_record.json").read_text().splitlines() == after


def test_same_result_is_exact_for_integers_and_tolerant_to_float_reordering():
    from targets.verify import same_result
    a = np.arange(12, dtype=np.float32).reshape(3, 4) * 10
    assert same_result([a], [a + 1e-4])  # summation order: ~1e-6 of the largest magnitude
    assert not same_result([a], [a + np.eye(3, 4, dtype=np.float32)])
    assert not same_result([a], [np.where(a == 0, np.nan, a)])
    i = np.arange(12, dtype=np.int8)
    assert same_result([i], [i.copy()]) and not same_result([i], [i + np.int8(1) * (i == 3)])
