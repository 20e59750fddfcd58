"""`tvmptq tune`: MetaSchedule + XGBoost, a database on disk keyed by target and workload, tuned in
chunks. The test kills a real run after its first chunk, resumes it (finished records kept, the
finished chunk skipped), then compiles with the database and checks the outputs are unchanged.
About 4-5 minutes on 2 cores (8 trials), hence slow."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import tvmptq
from tvmptq.cli import main

pytest.importorskip("tvm")
pytestmark = pytest.mark.slow
MODEL = "digits_resnet"


def _tune_cmd(plan, db):
    return [sys.executable, "-m", "tvmptq", "tune", MODEL, "--plan", str(plan), "--target", "x86-host",
            "--trials", "8", "--chunk", "4", "--batch", "1", "--db", str(db)]


def test_tune_killed_then_resumed_then_reused_by_compile(tmp_path, capsys, monkeypatch):
    plan, db = tmp_path / "plan.npz", tmp_path / "db"
    assert main(["quantize", MODEL, "--calib-samples", "64", "--observer", "minmax", "--report", "0",
                 "--out", str(plan)]) == 0
    folder = db / "x86-host"
    proc = subprocess.Popen(_tune_cmd(plan, db), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    t0 = time.time()
    try:
        while time.time() - t0 < 900:  # wait for the first chunk to be finished, then kill the run
            progress = folder / "progress.json"
            # "<task>+default" (the default schedule, measured first) is not a chunk
            if progress.exists() and any(not k.endswith("+default") for k in json.loads(progress.read_text())):
                break
            assert proc.poll() is None, proc.stdout.read()
            time.sleep(1)
        else:
            pytest.fail("the first chunk did not finish in 15 minutes")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    records = (folder / "database_tuning_record.json").read_text().splitlines()
    assert len(records) >= 4, "the finished chunk's records must be on disk"

    res = subprocess.run(_tune_cmd(plan, db), capture_output=True, text=True, timeout=1200)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "4 record(s) on disk, skipped" in res.stdout  # the finished chunk is not tuned again
    after = (folder / "database_tuning_record.json").read_text().splitlines()
    assert after[:len(records)] == records and len(after) >= 8  # nothing lost, the rest added
    # every task tuned also holds its default schedule (a trace that changes nothing) as a measured candidate
    from targets.tune import DEFAULT_TRACE
    progress = json.loads((folder / "progress.json").read_text())
    defaults = [json.loads(r) for r in after if json.loads(r)[1][0] == DEFAULT_TRACE]
    assert len(defaults) == sum(v for k, v in progress.items() if k.endswith("+default")) >= 2
    assert all(0 < float(s) < 1.0 for r in defaults for s in r[1][1])
    assert json.loads((folder / "target.json").read_text())["target"]

    # compile reuses the database (keyed by target name and workload) and computes the same integers
    x = np.array(tvmptq.get_set("digits").evaluation()[0][:4], np.float32)
    from tvmptq.deploy import load_artifact
    for name, extra in (("tuned", []), ("untuned", ["--untuned"])):
        assert main(["compile", MODEL, "--plan", str(plan), "-o", str(tmp_path / name), "--batch", "1",
                     "--target", "x86-host", "--db", str(db)] + extra) == 0
    out = capsys.readouterr().out
    assert out.count("using tuned schedules from") == 1
    m = json.loads((tmp_path / "tuned" / "manifest.json").read_text())
    assert m["target"]["tuning_database"] == str(folder)
    assert np.array_equal(load_artifact(tmp_path / "tuned").run(x), load_artifact(tmp_path / "untuned").run(x))
    assert json.loads((folder / "seconds.json").read_text())["tuning_seconds"] > 0  # summed over both runs

    # a committed database (targets/tuned/<cpu>/<target>-<model>-int8-b<batch>) is used when the user has none
    import shutil

    import targets.tune
    shipped = tmp_path / "shipped"
    here = targets.tune.target_cpu(targets.get("x86-host").tvm_target())
    shutil.copytree(folder, shipped / here / "x86-host-digits_resnet-int8-b1")
    monkeypatch.setattr(targets.tune, "SHIPPED", shipped)
    cmd = ["compile", MODEL, "--plan", str(plan), "--batch", "1", "--target", "x86-host", "--db", str(tmp_path / "none")]
    assert main(cmd + ["-o", str(tmp_path / "shipped_tuned")]) == 0
    assert "using the committed tuned schedules from" in capsys.readouterr().out
    assert np.array_equal(load_artifact(tmp_path / "shipped_tuned").run(x), load_artifact(tmp_path / "untuned").run(x))

    # only one tuned on another x86 CPU: its schedules are applied, and the compile says so
    other = shipped / "othercpu" / "x86-host-digits_resnet-int8-b1"
    shutil.move(shipped / here, shipped / "othercpu")
    meta = json.loads((other / "target.json").read_text())
    t = json.loads(meta["target"])
    (other / "target.json").write_text(json.dumps({"target": json.dumps({**t, "mcpu": "othercpu"})}))
    assert main(cmd + ["-o", str(tmp_path / "other_cpu")]) == 0
    out = capsys.readouterr().out
    assert "schedules tuned on othercpu" in out and f"this CPU ({here})" in out, out
    m = json.loads((tmp_path / "other_cpu" / "manifest.json").read_text())
    assert m["target"]["tuning_database"] == str(other)
    assert np.array_equal(load_artifact(tmp_path / "other_cpu").run(x), load_artifact(tmp_path / "untuned").run(x))

    # one tuned for another architecture is never used
    (other / "target.json").write_text(json.dumps({"target": json.dumps({**t, "mtriple": "aarch64-linux-gnu"})}))
    assert main(cmd + ["-o", str(tmp_path / "other_arch")]) == 0
    out = capsys.readouterr().out
    assert "not using the committed tuning databases" in out and "compiling untuned" in out, out
    assert json.loads((tmp_path / "other_arch" / "manifest.json").read_text())["target"]["tuning_database"] is None


def test_tune_measures_on_a_remote_device_through_the_tracker(tmp_path):
    """`tune --rpc-tracker`: MetaSchedule's RPC runner asks a real tracker on loopback for a server
    with the key and times every trial there (the server's log shows the sessions)."""
    from targets.rpc import LoopbackRPC
    plan, db = tmp_path / "plan.npz", tmp_path / "db"
    assert main(["quantize", MODEL, "--calib-samples", "32", "--observer", "minmax", "--report", "0",
                 "--out", str(plan)]) == 0
    cmd = [sys.executable, "-m", "tvmptq", "tune", MODEL, "--plan", str(plan), "--target", "x86-host",
           "--trials", "2", "--chunk", "2", "--batch", "1", "--db", str(db)]
    with LoopbackRPC() as rpc:
        rpc.add_server("remote-x86", log=tmp_path / "server.log")
        res = subprocess.run(cmd + ["--rpc-tracker", rpc.tracker, "--rpc-key", "remote-x86"],
                             capture_output=True, text=True, timeout=1200)
        assert res.returncode == 0, res.stdout + res.stderr
    records = [json.loads(r) for r in (db / "x86-host" / "database_tuning_record.json").read_text().splitlines()]
    assert len(records) >= 2
    run_secs = [float(s) for r in records for s in r[1][1]]
    assert run_secs and max(run_secs) < 1.0, run_secs          # real timings, not the failure value 1e10
    served = (tmp_path / "server.log").read_text()
    assert served.count("connected from") >= 1, served           # the server ran the measurements

