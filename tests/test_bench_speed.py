"""scripts/bench_speed.py's pieces: the kernel proof (targets/kernel_proof.py: MAC share, standalone
requantize kernels, dot-product instructions per kernel in the assembly), targets/speed.py (worker
process, ORT profile summary) and targets/speed_report.py (report writer on a synthetic result)."""
import json
import warnings

import numpy as np
import pytest

import tvmptq

tvm = pytest.importorskip("tvm")
from tvm import relax  # noqa: E402
from tvm.relax import op as R  # noqa: E402

import relay_passes as rp  # noqa: E402
import targets  # noqa: E402
from targets import kernel_proof as kp  # noqa: E402
from targets import speed, speed_report  # noqa: E402
from targets.kernels.x86_vnni import host_has_avx512_vnni  # noqa: E402

HAS_VNNI = host_has_avx512_vnni()
BATCH = 8
DIGITS_MACS_PER_SAMPLE = 763520  # digits ResNet: 9 convs and the linear, from their shapes


@pytest.fixture(scope="module")
def digits(digits_relax):
    model, graph, calib, x, imported = digits_relax
    qm = tvmptq.quantize(model, calib, tvmptq.make_config(8, 8, "minmax"), graph=graph, progress=False)
    base = rp.lowering_passes(qm.plan)(imported)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the layers it leaves are listed in the report
        tens = rp.lowering_passes(qm.plan, target="x86-host")(imported)
    return qm.plan, base, tens, x


# --- MAC share ---------------------------------------------------------------------------------------
def test_mac_share_untensorized_is_zero(digits):
    _, base, _, _ = digits
    layers = kp.layer_macs(base)
    assert [r["op"] for r in layers].count("conv2d") == 9 and [r["op"] for r in layers].count("matmul") == 1
    assert all(r["dtype"] == "int32" for r in layers)
    share = kp.mac_share(base)
    assert share["total_macs"] == BATCH * DIGITS_MACS_PER_SAMPLE
    assert share["share"] == 0 and share["tensorized_layers"] == 0 and share["consistent"]


def test_mac_share_tensorized_on_this_host(digits):
    """x86-host tensorizes every layer (the linear; the convs as 1x1 or im2col rows, channels last)
    only where this CPU has avx512_vnni."""
    _, base, tens, _ = digits
    share = kp.mac_share(base, tens)
    assert share["consistent"] and share["layers"] == 10
    assert (share["share"] > 0) == HAS_VNNI
    if HAS_VNNI:
        assert share["tensorized_layers"] == 10 and share["tensorized_macs"] == share["total_macs"]
        assert share["total_macs"] == BATCH * DIGITS_MACS_PER_SAMPLE and share["share"] == 1.0
        assert f"vnni_dense_requant_u8_u8_{BATCH}x10x64" in share["kernels"]
        assert sum(k.startswith("vnni_conv_im2col_requant") for k in share["kernels"]) >= 3
    recs = kp.tensorize_records(tens)
    assert len(recs) == 10 and sum(r["tensorized"] for r in recs) == share["tensorized_layers"]
    assert all(r["reason"] for r in recs if not r["tensorized"])


def test_mac_share_of_a_synthetic_report():
    """Layers sharing one kernel each count; the report's M N K are the MACs."""
    lines = ["a: tensorized (vnni_dense_requant_u8_u8_4x8x16, M N K = 4 8 16)",
             "b: tensorized (vnni_dense_requant_u8_u8_4x8x16, M N K = 4 8 16)",
             "c (conv2d): not tensorized: a 3x3 conv2d: only 1x1 convs are tensorized"]
    from relay_passes.tensorize import REPORT_ATTR
    mod = tvm.IRModule({}).with_attr(REPORT_ATTR, lines)
    recs = kp.tensorize_records(mod)
    assert [r["macs"] for r in recs if r["tensorized"]] == [512, 512]
    assert recs[2] == {"layer": "c", "tensorized": False, "kind": "conv2d",
                       "reason": "a 3x3 conv2d: only 1x1 convs are tensorized"}


# --- standalone requantize kernels -----------------------------------------------------------------
def _requant_module(with_matmul: bool):
    from relay_passes.integer_ops import Grid, requantize
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType([4, 16], "uint8") if with_matmul else relax.TensorType([4, 8], "int32"))
    w = np.random.default_rng(0).integers(-127, 128, (16, 8)).astype(np.int8)
    with bb.function("main", [x]):
        with bb.dataflow():
            acc = bb.emit(R.matmul(x, relax.const(w), out_dtype="int32")) if with_matmul else x
            y = requantize(bb, acc, np.full(8, 1 << 20), np.full(8, 30), Grid(np.float32(1), 3, 0, 255, "uint8"),
                           (0, 255), axis=1, bias=np.arange(8))
            gv = bb.emit_output(y)
        bb.emit_func_output(gv)
    return bb.get()


def test_requantize_fused_with_its_matmul_is_not_standalone():
    T = targets.get("x86-avx2").tvm_target()
    fused = kp.fused(_requant_module(True), T)
    table = kp.kernel_table(fused)
    assert sum(s["macs"] for s in table.values()) == 4 * 8 * 16
    assert kp.standalone_requantize(fused) == []


def test_requantize_alone_is_counted():
    T = targets.get("x86-avx2").tvm_target()
    lone = kp.standalone_requantize(kp.fused(_requant_module(False), T))
    assert len(lone) == 1 and lone[0]["producer"] == "input" and not lone[0]["after_conv_matmul"]


def test_digits_requantize_kernels(digits):
    """After fusion every conv/matmul carries its requantize; the one left is the mean's (after its
    int32 sum), in the plain and in the tensorized program alike."""
    _, base, tens, _ = digits
    T = targets.get("x86-host").tvm_target()
    for mod in (base, tens):
        lone = kp.standalone_requantize(kp.fused(mod, T))
        assert [r["after_conv_matmul"] for r in lone] == [False]
        assert lone[0]["producer"] == "sum"


def test_kernel_category():
    assert kp.kernel_category({"dot_intrinsic": True}).startswith("tensorized")
    assert kp.kernel_category({"macs": 9, "mac_block_names": ["DepthwiseConv2d"]}).startswith("depthwise")
    assert kp.kernel_category({"macs": 9, "mac_block_names": ["conv2d_nchw"]}) == "conv"
    assert kp.kernel_category({"macs": 9, "mac_block_names": ["matmul"]}) == "matmul / dense"
    assert kp.kernel_category({"int64_shift": True}).startswith("requantize")
    assert kp.kernel_category({}, "dw_requant_b1_u8_u8_672x18x18_k5x5").startswith("depthwise conv (SIMD kernel")
    assert kp.kernel_category({"dot_intrinsic": True}, "vnni_depthwise_requant_b1_u8_u8_nhwc_672x18x18_k5x5") \
        .startswith("depthwise conv (dot-product kernel")


# --- assembly ---------------------------------------------------------------------------------------
SYNTHETIC_ASM = """\t.text
\t.type\t__tvm_ffi_k1,@function
__tvm_ffi_k1:
\tcallq\tk1_compute_
\t.type\tk1_compute_,@function
k1_compute_:
\tleaq\t.L__tvm_parallel_lambda.7(%rip), %rdi
\tcallq\tTVMBackendParallelLaunch@PLT
\t.type\tk2_compute_,@function
k2_compute_:
\tvpaddd\t%zmm0, %zmm1, %zmm2
\t.type\t.L__tvm_parallel_lambda.7,@function
.L__tvm_parallel_lambda.7:
\tvpdpbusd\t(%rbp), %zmm0, %zmm1
\t{vex}\tvpdpbusd\t%xmm3, %xmm2, %xmm4
"""


def test_kernel_code_follows_parallel_lambdas():
    funcs = kp.asm_functions(SYNTHETIC_ASM)
    assert set(funcs) == {"__tvm_ffi_k1", "k1_compute_", "k2_compute_", ".L__tvm_parallel_lambda.7"}
    counts = kp.kernel_mnemonics(SYNTHETIC_ASM, ["k1", "k2", "k3"], ("vpdpbusd",))
    assert counts == {"k1": {"vpdpbusd": 2}, "k2": {"vpdpbusd": 0}, "k3": None}
    assert kp.count_mnemonics("sdot v0.4s, v1.16b, v2.4b[0]\nusdot v0.4s\nsdot.x", ("sdot", "usdot")) == \
        {"sdot": 1, "usdot": 1}


@pytest.mark.skipif(not HAS_VNNI, reason="host CPU lacks avx512_vnni: x86-host has no VNNI kernels")
def test_tensorized_kernel_has_vpdpbusd_in_the_library(digits):
    plan, _, tens, x = digits
    T = targets.get("x86-host").tvm_target()
    from targets.build import compile_module
    ex = compile_module(tens, T)
    kernels = [r["kernel"] for r in kp.tensorize_records(tens) if r["tensorized"]]
    counts = kp.kernel_mnemonics(kp.library_asm(ex), kernels, ("vpdpbusd",))
    assert kernels and all(c and c["vpdpbusd"] > 0 for c in counts.values())
    from tvmptq.reference import run_plan
    out = relax.VirtualMachine(ex, tvm.cpu())["main"](tvm.runtime.tensor(np.ascontiguousarray(x[:BATCH])))
    out = out if hasattr(out, "numpy") else out[0]
    assert np.array_equal(out.numpy(), run_plan(plan, x[:BATCH]))


# --- speed.py: worker, profiles, report -------------------------------------------------------------
def test_worker_process_sets_threads(tmp_path):
    import onnx
    from onnx import TensorProto, helper
    g = helper.make_graph([helper.make_node("Add", ["x", "x"], ["y"])], "add",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])
    m.ir_version = 9
    onnx.save(m, tmp_path / "add.onnx")
    np.savez(tmp_path / "in.npz", in0=np.ones((1, 4), np.float32))
    spec = {"engine": "ort_fp32", "kind": "ort", "path": str(tmp_path / "add.onnx"), "inputs": str(tmp_path / "in.npz"),
            "repeat": 3, "number": 2, "warmup": 1}
    r = speed.measure_in_subprocess(spec, 1, tmp_path / "w")
    assert r["threads"] == 1 and r["repeat"] == 3 and r["median_ms"] > 0
    bad = speed.measure_in_subprocess({**spec, "path": str(tmp_path / "missing.onnx")}, 1, tmp_path / "w")
    assert "error" in bad
    assert not list((tmp_path / "w").iterdir())  # spec and result files are cleaned up


def test_ort_profile_summary_skips_warmup(tmp_path):
    ev = []
    for run, t in enumerate((0, 1000, 2000)):
        ev.append({"cat": "Session", "name": "model_run", "ts": t, "dur": 900})
        ev.append({"cat": "Node", "name": "conv_kernel_time", "ts": t + 10, "dur": 100 * (run + 1),
                   "args": {"op_name": "QLinearConv"}})
        ev.append({"cat": "Node", "name": "conv_fence_before", "ts": t + 5, "dur": 1})
    (tmp_path / "p.json").write_text(json.dumps(ev))
    s = speed.ort_profile_summary(tmp_path / "p.json", skip_runs=1)
    assert s["profiled_runs"] == 2 and s["nodes"] == [{"name": "conv", "op": "QLinearConv", "ms": 0.25}]


def _lat(ms):
    return {"median_ms": ms, "iqr_ms": ms / 10}


def synthetic_result():
    lat = {"torch_fp32": _lat(20.0), "ort_fp32": _lat(10.0), "ort_int8": _lat(6.0), "ort_tvmptq_qdq": _lat(7.0),
           "tvm_fp32_tuned": _lat(8.0), "tvm_int8_untuned": _lat(9.0), "tvm_int8_tuned": _lat(4.0),
           "tvm_int8_plain": {"error": "worker exit 1: boom"}}
    proof = {"layers": 50, "tensorized_layers": 33, "share": 0.6, "consistent": True, "total_macs": 100,
             "confirmed": {"untuned": {"kernels": 20, "with_dot": 20, "missing": []},
                           "tuned": {"kernels": 20, "with_dot": 19, "missing": ["vnni_conv1x1_x"]}},
             "asm_share": {"untuned": {"share": 0.7}, "tuned": {"share": 0.65}},
             "requantize": [{"kernel": "fused_mean_rq", "producer": "sum", "after_conv_matmul": False}]}
    return {"cpu_model": "Test CPU", "host_cpu": "sapphirerapids", "cores": 2, "date": "2026-01-01 00:00",
            "seconds": 600, "versions": {"tvm": "0.27", "onnxruntime": "1.32", "torch": "2.13"},
            "budgets": {"efficientnet_lite0": {"trials": 256, "cover": 4, "chunk": 16}}, "tune": True, "repeat": 30, "number": 5, "warmup": 5,
            "threads": [1, 2], "engines": [list(e) for e in speed.ENGINES],
            "ort_int8_config": "QDQ, activations uint8",
            "models": {"efficientnet_lite0": {
                "latency": {"1": lat, "2": {k: (v if "error" in v else _lat(v["median_ms"] / 2)) for k, v in lat.items()}},
                "tuning": {"fp32": {"records": 256}, "int8": {"records": 250}},
                "kernel_proof": {"int8 tensorized": proof},
                "bit_exact": [{"variant": "tuned (tensorized)", "samples": 8, "bit_exact": True, "max_abs_diff": 0.0}]}},
            "arm": [{"model": "efficientnet_lite0", "target": "cortex-a76", "fp32_minsns": 400.0, "int8_minsns": 300.0,
                     "tensorized": "33/50", "share": 0.6, "objdump": {"sdot": 120, "smmla": 0}},
                    {"model": "efficientnet_lite0", "target": "neoverse-v1", "error": "qemu failed"}],
            "profile": {"model": "efficientnet_lite0", "threads": 1,
                        "tvm": {"engine": "tvm_int8_tuned", "wall_ms": 4.2,
                                "kernels": [{"name": "vnni_conv1x1_a", "ms": 2.0, "calls": 1, "category": "tensorized"},
                                            {"name": "fused_dw", "ms": 1.0, "calls": 1, "category": "depthwise"}]},
                        "ort": {"engine": "ort_int8", "error": "engine not available"}}}


def test_report_writer(tmp_path):
    out = speed_report.write_report(synthetic_result(), tmp_path / "speed.md")
    text = out.read_text()
    assert text.count("## Latency, ") == 2
    assert "| efficientnet_lite0 | 20.000 (2.000) | 10.000 (1.000) | 6.000 (0.600) |" in text
    assert "failed" in text and "boom" in text
    assert "TVM FP32 tuned / TVM int8 tuned = 2.00x; ORT int8 / TVM int8 tuned = 1.50x" in text
    assert "TVM int8 tuned beats both TVM FP32 tuned and ORT int8" in text
    assert "| efficientnet_lite0 | int8 tensorized | 50 | 33 | 60.0 % | True | 20/20 / 19/20 | 70.0 % / 65.0 % | 0 / 1 |" \
        in text
    assert "`vnni_conv1x1_x`" in text and "after `sum`" in text
    assert "| efficientnet_lite0 | tuned (tensorized) | 8 | yes | 0 |" in text
    assert "| efficientnet_lite0 | cortex-a76 | 400.0 | 300.0 | 0.75x | 33/50 (60.0 %) | 120 | 0 | - |" in text
    assert "failed: qemu failed" in text and "proxy" in text
    assert "| `vnni_conv1x1_a` | tensorized | 2.000 | 66.7 % |" in text and "profile failed" in text
    assert (tmp_path / "speed.png").stat().st_size > 0
    assert json.loads((tmp_path / "speed.json").read_text())["models"]["efficientnet_lite0"]["tuning"]["int8"] == \
        {"records": 250}


def test_report_says_when_int8_does_not_win(tmp_path):
    r = synthetic_result()
    r["models"]["efficientnet_lite0"]["latency"]["2"]["tvm_int8_tuned"] = _lat(50.0)
    text = speed_report.write_report(r, tmp_path / "speed.md").read_text()
    assert "does **not** beat" in text and "per-layer profile" in text


def test_report_names_the_cpu_a_database_was_tuned_on(tmp_path):
    r = synthetic_result()
    r["models"]["efficientnet_lite0"]["tuning"] = {
        "fp32": {"trials_in_db": 256, "tuned_on": "sapphirerapids", "tuning_seconds_total": 1200.0},
        "int8": {"trials_in_db": 250, "tuned_on": "znver4", "tuning_seconds_total": 1800.0}}
    text = speed_report.write_report(r, tmp_path / "speed.md").read_text()
    line = next(x for x in text.splitlines() if x.startswith("Tuning databases:"))
    assert "fp32: 256 trials tuned on `sapphirerapids` in 20 min;" in line
    assert "int8: 250 trials tuned on `znver4` in 30 min (**not this host's CPU**" in line
    assert line.count("not this host's CPU") == 1
