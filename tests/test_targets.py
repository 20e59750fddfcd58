"""Issue 5: named targets as data, cross-compiling for aarch64 (bit-exact under qemu-user), profiling
locally and through a real RPC tracker on loopback, CUDA builds validated with nvcc, and the tuning
database (corrupt database, resumable tuning in test_targets_tune.py).

Module fixture: one digits W8A8 plan, an x86-host artifact and a cortex-a72 artifact (about 30 s).
aarch64 tests need `make arm-setup` (qemu-user, the cross compiler and build/arm64); CUDA tests need
nvcc. Both are skipped with the reason when missing.
"""
import json
import re
import shutil

import numpy as np
import pytest

import targets
import tvmptq
from test_cli import expect_error, run
from tvmptq.cli import main
from tvmptq.errors import ConfigError

pytest.importorskip("tvm")

MODEL = "digits_resnet"
ISSUE_TARGETS = ["x86-host", "x86-avx2", "cortex-a53", "cortex-a72", "cortex-a76", "neoverse-n1", "neoverse-v1",
                 "jetson-orin-cpu", "sm_80", "sm_86", "sm_87", "sm_89", "sm_90"]


def _arm_missing():
    from targets import qemu
    if shutil.which("aarch64-linux-gnu-gcc") is None:
        return "aarch64-linux-gnu-gcc missing (make arm-setup)"
    return qemu.missing()


needs_arm = pytest.mark.skipif(_arm_missing() is not None, reason=str(_arm_missing()))


# ---------------------------------------------------------------------------------- registry
def test_registry_has_the_issue_targets_with_capabilities():
    table = targets.load()
    assert set(ISSUE_TARGETS) <= set(table)
    assert "dotprod" in table["cortex-a76"].caps() and "i8mm" in table["neoverse-v1"].caps()
    assert "dotprod" not in table["cortex-a72"].caps()
    assert table["cortex-a72"].cross_cc == "aarch64-linux-gnu-gcc" and table["cortex-a72"].arch == "aarch64"
    assert {"dp4a", "tensorcore"} <= set(table["sm_87"].caps())
    for name in ISSUE_TARGETS:  # every entry is a valid TVM target
        t = table[name].tvm_target()
        assert t.kind.name == ("cuda" if name.startswith("sm_") else "llvm")
    assert table["sm_87"].resolved()["host"]["mtriple"] == "aarch64-linux-gnu"  # Orin's host is its ARM CPU


def test_x86_host_is_a_real_cpu_name_never_native(monkeypatch):
    cpu = targets.get("x86-host").resolved()["mcpu"]
    assert cpu not in ("native", "generic", "", "@host")
    assert json.loads(str(targets.get("x86-host").tvm_target()))["mcpu"] == cpu
    # a VM whose LLVM name lacks the AMX that /proc/cpuinfo shows is corrected from the flags
    import tvm
    monkeypatch.delenv("TVMPTQ_HOST_CPU", raising=False)
    monkeypatch.setattr(targets, "_cpu_flags", lambda: {"avx2", "fma", "bmi2", "avx512f", "avx512bw", "avx512vl",
                                                        "avx512_vnni", "amx_tile", "amx_int8"})
    monkeypatch.setattr(tvm.target.codegen, "llvm_get_system_cpu", lambda: "rocketlake")
    targets.host_cpu.cache_clear()
    try:
        assert targets.host_cpu() == "sapphirerapids"
        monkeypatch.setattr(tvm.target.codegen, "llvm_get_system_cpu", lambda: "generic")
        targets.host_cpu.cache_clear()
        assert targets.host_cpu() == "sapphirerapids"
        monkeypatch.setattr(targets, "_cpu_flags", lambda: {"avx2", "fma", "bmi2"})
        monkeypatch.setattr(tvm.target.codegen, "llvm_get_system_cpu", lambda: "znver3")
        targets.host_cpu.cache_clear()
        assert targets.host_cpu() == "znver3"  # trusted when the flags prove nothing more
        monkeypatch.setenv("TVMPTQ_HOST_CPU", "icelake-server")
        targets.host_cpu.cache_clear()
        assert targets.host_cpu() == "icelake-server"
    finally:
        targets.host_cpu.cache_clear()


USER_TOML = """
[my-board]
tvm = { kind = "llvm", mtriple = "aarch64-linux-gnu", mcpu = "cortex-a55", mattr = ["+neon", "+dotprod"] }
cross_cc = "aarch64-linux-gnu-gcc"
capabilities = ["neon", "dotprod"]
rpc_key = "rk3568"
note = "my board"

[x86-avx2]
tvm = { kind = "llvm", mtriple = "x86_64-linux-gnu", mcpu = "skylake" }
capabilities = ["avx2"]
"""


def test_user_targets_from_a_config_file(capsys, tmp_path, monkeypatch):
    f = tmp_path / "targets.toml"
    f.write_text(USER_TOML)
    rc, out, _ = run(capsys, "targets", "--targets-file", f)
    assert rc == 0
    line = next(line for line in out.splitlines() if line.startswith("my-board"))
    assert "cortex-a55" in line and "neon,dotprod" in line and "rk3568" in line and line.endswith("user")
    assert "mcpu=skylake" in next(line for line in out.splitlines() if line.startswith("x86-avx2"))  # override
    assert "sapphirerapids" in out or targets.host_cpu() in out
    # the same file through $TVMPTQ_TARGETS, as JSON
    monkeypatch.setenv("TVMPTQ_TARGETS", str(f))
    rc, out, _ = run(capsys, "targets", "--json")
    entry = next(e for e in json.loads(out) if e["name"] == "my-board")
    assert entry["arch"] == "aarch64" and entry["source"] == str(f) and entry["capabilities"] == ["neon", "dotprod"]
    assert targets.get("my-board").tvm_target().kind.name == "llvm"


def test_targets_lists_capabilities(capsys):
    rc, out, _ = run(capsys, "targets")
    assert rc == 0
    rows = {line.split()[0]: line for line in out.splitlines()[1:] if line.strip() and not line.startswith("built-in")}
    assert set(ISSUE_TARGETS) <= set(rows)
    assert "i8mm" in rows["neoverse-v1"] and "tensorcore" in rows["sm_90"] and "aarch64-linux-gnu-gcc" in rows["cortex-a53"]


@pytest.mark.parametrize("text, code, needle", [
    ("[broken\n", 3, "cannot read targets file"),
    ("[t]\ntvm = { kind = 'llvm' }\nspeed = 3\n", 2, "unknown field"),
    ("[t]\ntvm = { kind = 'llvm', mcpu = 'native' }\n", 2, "native"),
    ("[t]\narch = 'x86_64'\n", 2, "needs tvm"),
])
def test_bad_targets_file_is_a_clear_error(capsys, tmp_path, text, code, needle):
    f = tmp_path / "t.toml"
    f.write_text(text)
    assert needle in expect_error(capsys, code, "targets", "--targets-file", f)


def test_missing_targets_file(capsys, tmp_path):
    assert "not found" in expect_error(capsys, 3, "targets", "--targets-file", tmp_path / "nope.toml")


def test_unknown_target_is_a_clear_error(capsys, tmp_path):
    line = expect_error(capsys, 2, "compile", MODEL, "--plan", tmp_path / "p.npz", "-o", tmp_path / "a",
                        "--target", "cortex-a99")
    assert "cortex-a99" in line and "cortex-a72" in line  # names the known targets
    with pytest.raises(targets.TargetError, match="unknown target 'pi5'"):
        targets.get("pi5")


# ------------------------------------------------------------------ compile, cross-compile, profile
@pytest.fixture(scope="module")
def digits(tmp_path_factory, digits_cli_plan):
    """(tmp folder, plan path, x86-host artifact, evaluation inputs, x86 outputs)."""
    tmp = tmp_path_factory.mktemp("targets")
    plan = digits_cli_plan
    assert main(["compile", MODEL, "--plan", str(plan), "-o", str(tmp / "x86"), "--target", "x86-host",
                 "--untuned"]) == 0
    from tvmptq.deploy import load_artifact
    x = np.array(tvmptq.get_set("digits").evaluation()[0][:20], np.float32)
    return tmp, plan, tmp / "x86", x, load_artifact(tmp / "x86").run(x)


def test_x86_host_artifact_records_the_target(digits):
    m = json.loads((digits[2] / "manifest.json").read_text())
    assert m["target"]["name"] == "x86-host" and m["target"]["arch"] == "x86_64"
    assert json.loads(m["target"]["resolved"])["mcpu"] == targets.host_cpu()
    assert "vnni" in m["target"]["capabilities"] or "avx2" in m["target"]["capabilities"]


def test_x86_host_compile_tensorizes_unless_told_not_to(digits):
    """compile --target x86-host applies the VNNI kernels (the digits linear; its 3x3 and strided
    convs as im2col rows, channels last) and lists every conv/linear with what became of it;
    --no-tensorize builds the plain lowering, whose outputs are the same bit for bit."""
    from tvmptq.deploy import load_artifact
    m = json.loads((digits[2] / "manifest.json").read_text())
    assert len(m["kernels"]) == 10
    report = (digits[2] / "report.md").read_text()
    if "vnni" in m["target"]["capabilities"] and "avx512" in m["target"]["capabilities"]:
        assert m["kernels"][-1].startswith("linear: tensorized (vnni_dense_requant_")
        assert all(k.startswith("conv2d") and ": tensorized (vnni_conv_" in k for k in m["kernels"][:9])
        assert "## Tensorized int8 kernels (10 of 10 conv/matmul layers)" in report
    else:
        assert "lacks the " in m["kernels"][-1] and " capability" in m["kernels"][-1]
        assert all(" (conv2d): not tensorized: " in k for k in m["kernels"][:9])
    plain = digits[0] / "x86_plain"
    assert main(["compile", MODEL, "--plan", str(digits[1]), "-o", str(plain), "--target", "x86-host", "--untuned",
                 "--no-tensorize"]) == 0
    assert json.loads((plain / "manifest.json").read_text())["kernels"] == []
    assert np.array_equal(load_artifact(plain).run(digits[3]), digits[4])


@pytest.fixture(scope="module")
def a72(digits):
    if _arm_missing():
        pytest.skip(_arm_missing())
    out = digits[0] / "a72"
    assert main(["compile", MODEL, "--plan", str(digits[1]), "-o", str(out), "--target", "cortex-a72"]) == 0
    return out


@needs_arm
@pytest.mark.slow
@pytest.mark.parametrize("name", ["neoverse-v1", "cortex-a76", "jetson-orin-cpu"])
def test_other_arm_targets_are_bit_exact_under_qemu(digits, name):
    from targets import qemu
    out = digits[0] / name
    assert main(["compile", MODEL, "--plan", str(digits[1]), "-o", str(out), "--target", name]) == 0
    r = qemu.check_artifact(out, [digits[3]], digits[4])
    assert r["bit_exact"], f"{name}: max abs diff {r['max_abs_diff']}"


@needs_arm
def test_cross_compiled_aarch64_is_bit_exact_under_qemu(capsys, digits, a72):
    from targets import qemu
    lib = (a72 / "model.so").read_bytes()
    assert lib[:4] == b"\x7fELF" and int.from_bytes(lib[18:20], "little") == 183  # EM_AARCH64
    m = json.loads((a72 / "manifest.json").read_text())
    assert m["target"]["cross_cc"] == "aarch64-linux-gnu-gcc" and m["target"]["arch"] == "aarch64"
    x, ref = digits[3], digits[4]
    r = qemu.check_artifact(a72, [x], ref)  # 20 samples: 3 chunks of 8, the last one padded
    assert r["bit_exact"], f"aarch64 outputs differ from x86 (max abs diff {r['max_abs_diff']})"
    # the aarch64 library cannot be loaded on this x86 machine: a clear error, not a crash
    line = expect_error(capsys, 3, "profile", a72)
    assert "cortex-a72" in line and "aarch64" in line


@needs_arm
@pytest.mark.slow
def test_guest_instruction_count_proxy(a72):
    from targets import qemu
    r = qemu.instruction_count(a72 / "model.so", [np.zeros((8, 1, 8, 8), np.float32)], 8, calls=10)
    assert 1e6 < r["guest_insns_per_call"] < 1e9 and "NOT an ARM latency" in r["note"]


def test_profile_locally(capsys, digits):
    rc, out, _ = run(capsys, "profile", digits[2], "--repeat", "5", "--number", "2", "--warmup", "1", "--json")
    assert rc == 0
    r = json.loads(out)
    assert r["where"] == "local" and r["repeat"] == 5 and r["target"] == "x86-host"
    assert 0 < r["min_ms"] <= r["median_ms"] <= r["max_ms"] and r["iqr_ms"] >= 0


def test_profile_through_a_real_rpc_tracker(capsys, digits):
    """A real tracker and server (python -m tvm.exec.rpc_tracker / rpc_server) on 127.0.0.1."""
    from targets.profile import profile_artifact
    from targets.rpc import LoopbackRPC
    with LoopbackRPC() as rpc:
        rpc.add_server("x86-host")
        rc, out, _ = run(capsys, "profile", digits[2], "--rpc-tracker", rpc.tracker, "--repeat", "3",
                         "--number", "2", "--warmup", "1", "--json")
        assert rc == 0
        r = json.loads(out)
        assert r["where"] == f"rpc {rpc.tracker} key=x86-host" and r["median_ms"] > 0
        x, ref = digits[3][:8], digits[4][:8]
        r = profile_artifact(digits[2], repeat=2, number=1, warmup=0, tracker=rpc.tracker, check_outputs=([x], ref))
        assert r["bit_exact"]
        line = expect_error(capsys, 4, "profile", digits[2], "--rpc-tracker", rpc.tracker, "--rpc-key", "nobody")
        assert "nobody" in line


@needs_arm
@pytest.mark.slow
def test_aarch64_rpc_server_under_qemu(digits, a72):
    """The aarch64 TVM wheel behind an RPC server under qemu-user: bit-exact over RPC (emulated timing)."""
    from targets.profile import profile_artifact
    from targets.rpc import LoopbackRPC
    with LoopbackRPC() as rpc:
        rpc.add_server("cortex-a72", qemu=True, timeout=300)
        r = profile_artifact(a72, repeat=2, number=1, warmup=1, tracker=rpc.tracker,
                             check_outputs=([digits[3][:8]], digits[4][:8]))
        assert r["bit_exact"] and r["where"].endswith("key=cortex-a72")


# ---------------------------------------------------------------------------------------- CUDA
def _nvcc_missing():
    from targets.cuda import nvcc_path
    return None if nvcc_path() else "nvcc not installed (CUDA builds are validated with nvcc when present)"


@pytest.mark.skipif(_nvcc_missing() is not None, reason=str(_nvcc_missing()))
@pytest.mark.parametrize("arch", ["sm_90", pytest.param("sm_87", marks=needs_arm),
                                  pytest.param("sm_80", marks=pytest.mark.slow),
                                  pytest.param("sm_86", marks=pytest.mark.slow),
                                  pytest.param("sm_89", marks=pytest.mark.slow)])
def test_cuda_build_validated_with_nvcc(digits, arch):
    from targets.cuda import validate
    out = digits[0] / arch
    assert main(["compile", MODEL, "--plan", str(digits[1]), "-o", str(out), "--target", arch]) == 0
    m = json.loads((out / "manifest.json").read_text())
    assert m["target"]["kind"] == "cuda" and m["cuda_source"]["arch"] == arch
    src = (out / "kernels.cu").read_text()
    assert "__global__" in src and "__dp4a(*(int*)" in src  # the classifier runs in a dp4a kernel
    r = validate(out / "kernels.cu", arch)
    assert r["ok"] and r["cubin_bytes"] > 1000


@pytest.mark.skipif(_nvcc_missing() is not None, reason=str(_nvcc_missing()))
def test_cuda_build_survives_a_dlight_rule_that_asserts(tmp_path):
    """A 1x1 conv whose fused consumers end in a pad (EfficientNet-Lite0 has nine): TVM's own CUDA
    pipeline fails on it (DLight's Matmul rule asserts); targets.cuda.schedule_gpu passes the kernel
    on to the next rule, and the source compiles with nvcc."""
    import torch
    import tvm

    import relay_passes as rp
    import targets
    from targets.build import compile_module
    from targets.cuda import cuda_source, schedule_gpu, validate

    class ConvPad(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(16, 96, 1)

        def forward(self, x):
            return torch.nn.functional.pad(torch.clamp(self.conv(x), 0, 6), (0, 1, 0, 1))

    mod = rp.Canonicalize()(rp.import_model(ConvPad().eval(), (torch.randn(1, 16, 28, 28),)))
    target = targets.get("sm_90").tvm_target()
    with pytest.raises(Exception, match="not properly inlined"):
        tvm.compile(mod, target=target)
    assert schedule_gpu(mod, target)[1] == ["Matmul"]
    (tmp_path / "k.cu").write_text(cuda_source(compile_module(mod, target)))
    assert validate(tmp_path / "k.cu", "sm_90")["ok"]


# ------------------------------------------------------------------------------ tuning database
def test_corrupt_tuning_database_is_a_clear_error(capsys, digits, tmp_path):
    from targets.tuning_db import RECORDS, WORKLOADS
    db = tmp_path / "db" / "x86-host"
    db.mkdir(parents=True)
    (db / WORKLOADS).write_text('["123", "abc"]\n')
    (db / RECORDS).write_text('[0, [["trace"], [0.1], {"kind": "llvm"}, []]]\nthis is not json\n[0, [1, 2, 3]]\n')
    line = expect_error(capsys, 3, "compile", MODEL, "--plan", digits[1], "-o", tmp_path / "a", "--target",
                        "x86-host", "--db", tmp_path / "db")
    assert "corrupt tuning database" in line and "line 2" in line and RECORDS in line


def test_truncated_last_record_is_dropped_not_fatal(tmp_path):
    from targets.tuning_db import RECORDS, _check_lines, _is_record
    f = tmp_path / RECORDS
    f.write_text('[0, [["t"], [0.1], {"kind": "llvm"}, []]]\n[1, [["t"], [0.2], {"ki')  # killed mid-write
    with pytest.warns(UserWarning, match="truncated"):
        _check_lines(f, "tuning record", _is_record)
    assert f.read_text().count("\n") == 1 and f.read_text().startswith("[0,")


def test_compare_writes_a_table_and_a_chart(capsys, tmp_path):
    names = ["x86-host"] + (["sm_90"] if _nvcc_missing() is None else [])
    out = tmp_path / "cmp.md"
    rc, stdout, _ = run(capsys, "compare", MODEL, "--targets", *names, "--repeat", "3", "--number", "1",
                        "--warmup", "1", "-o", out)
    assert rc == 0
    text = out.read_text()
    assert "| digits_resnet | fp32 | x86-host |" in text
    # int8 on x86-host is what `tvmptq compile` builds: its linear tensorized where the CPU has VNNI
    assert re.search(r"\| digits_resnet \| int8 \((vnni 10/10|no dot-product kernels)\) \| x86-host \|", text)
    assert out.with_suffix(".png").stat().st_size > 1000 and "![x86 latency](cmp.png)" in text
    if len(names) > 1:
        assert "| digits_resnet | int8 (dp4a 1/10) | sm_90 | ok (" in text and "not measured (no GPU)" in text


@pytest.mark.parametrize("name, needle", [("cortex-a72", "qemu are not ARM times"), ("sm_90", "needs a GPU"),
                                          ("nope", "unknown target")])
def test_tune_refuses_what_it_cannot_measure(capsys, tmp_path, name, needle):
    line = expect_error(capsys, 2, "tune", MODEL, "--plan", tmp_path / "p.npz", "--target", name, "--trials", "1")
    assert needle in line


def test_committed_database_is_used_only_for_the_target_it_was_tuned_for(tmp_path):
    from targets.tuning_db import META, RECORDS, SHIPPED, usable_database, with_cores
    t = targets.get("x86-host").tvm_target()
    folder = tmp_path / "x86-host-digits_resnet-int8-b1"
    assert "no tuning records" in usable_database(folder, t)
    # the reason reaches results/speed.md: a folder outside the repository is named without its absolute path
    assert usable_database(folder, t) == f"no tuning records in {tmp_path.name}/x86-host-digits_resnet-int8-b1"
    assert usable_database(SHIPPED / "nocpu" / "x", t) == "no tuning records in targets/tuned/nocpu/x"
    folder.mkdir()
    (folder / RECORDS).write_text("[0, [[], [0.001], {}, []]]\n")
    assert "missing or unreadable" in usable_database(folder, t)
    (folder / META).write_text(json.dumps({"target": str(with_cores(t))}))
    assert usable_database(folder, t) is None
    (folder / META).write_text(json.dumps({"target": str(with_cores(t, 64))}))
    assert "was tuned for" in usable_database(folder, t)


def test_databases_are_kept_per_cpu_and_transferred_within_an_architecture(tmp_path):
    """One folder per CPU (tuning never mixes two CPUs' measurements); reading schedules of another
    CPU of the same architecture is allowed, of another architecture or for tuning it is refused."""
    from targets.tuning_db import META, RECORDS, TuneDatabaseError, open_database, target_cpu, transferable_database, with_cores, zoo_folder
    t = with_cores(targets.get("x86-host").tvm_target())
    here = target_cpu(t)
    assert zoo_folder(tmp_path, "x86-host", "m", "int8", 1, t) == tmp_path / here / "x86-host-m-int8-b1"
    assert transferable_database(tmp_path, "x86-host", "m", "int8", 1, t) is None

    def make(cpu, records, **changes):
        folder = tmp_path / cpu / "x86-host-m-int8-b1"
        folder.mkdir(parents=True)
        (folder / RECORDS).write_text("[0, [[], [0.001], {}, []]]\n" * records)
        (folder / META).write_text(json.dumps({"target": json.dumps({**json.loads(str(t)), "mcpu": cpu, **changes})}))
        return folder

    make("armcpu", 9, mtriple="aarch64-linux-gnu")              # another architecture: never a candidate
    small, big = make("cpu_a", 1), make("cpu_b", 3)
    assert transferable_database(tmp_path, "x86-host", "m", "int8", 1, t) == (big, "cpu_b")   # the fullest
    assert transferable_database(tmp_path, "x86-host", "m", "fp32", 1, t) is None
    (small / RECORDS).write_text("")                           # (MetaSchedule would reject the fake record)
    open_database(small, t)                                    # reading its schedules: allowed
    with pytest.raises(TuneDatabaseError, match="was made for target"):
        open_database(small, t, create=True)                   # tuning into it: refused
    with pytest.raises(TuneDatabaseError, match="was made for target"):
        open_database(tmp_path / "armcpu" / "x86-host-m-int8-b1", t)


def test_trial_allocation_covers_every_task_then_deepens_the_largest():
    from targets.tune import allocate
    assert allocate(5, 8, 4) == [(0, 4), (1, 4)]                       # largest tasks only
    order = allocate(5, 20, 8, cover=2)
    assert order[:5] == [(i, 2) for i in range(5)]                     # every task measured first
    assert order[5:] == [(0, 8), (1, 6)]                               # then the largest, up to the budget
    assert sum(w - dict(order[:5]).get(i, 0) for i, w in order[5:]) + 10 == 20
    assert allocate(3, 100, 4, cover=8) == [(0, 8), (1, 8), (2, 8)]    # chunk below cover: nothing more
    with pytest.raises(ConfigError, match="--cover"):
        allocate(3, 10, 4, cover=-1)
