"""Bring-your-own quantized model (issue 23): QDQ ONNX files from ONNX Runtime's quantize_static and
from PyTorch's PT2E flow, through the command line with no plan; the default compile target; the
bad-input cases found by trying the CLI as a new user.

The model is tests/qdq_models.SmallCNN trained for a few steps on the digits labels (not a zoo
model), its QDQ files made in the test. One CLI compile (default target) is shared by the module.
"""
import json

import numpy as np
import onnx
import pytest

import tvmptq
from tvmptq.cli import main

pytest.importorskip("tvm")
import targets  # noqa: E402  (needs tvm)
from tvmptq.deploy import load_artifact  # noqa: E402
from tvmptq.peers import OrtRunner  # noqa: E402
from targets.build import compile_qdq  # noqa: E402
from tvmptq.peers.qdq_import import compare_with_ort, plan_from_qdq  # noqa: E402

import qdq_models as qm_  # noqa: E402
from test_cli import error_line, expect_error, run  # noqa: E402

CALIB = 128  # calibration samples given to quantize_static


@pytest.fixture(scope="module")
def cnn(tmp_path_factory):
    """(folder, trained torch module, fp32 ONNX path, ORT QDQ path, calibration, evaluation arrays)."""
    tmp = tmp_path_factory.mktemp("qdq_cli")
    calib, evaluation = qm_.digits()
    model = qm_.trained_cnn()
    fp32 = qm_.float_onnx(model, tmp / "cnn_fp32.onnx")
    qdq = qm_.ort_qdq(fp32, tmp / "cnn_qdq.onnx", calib[:CALIB])
    return tmp, model, fp32, qdq, calib, evaluation


def _host_has_vnni() -> bool:
    return {"vnni", "avx512"} <= set(targets.host_capabilities())


@pytest.fixture(scope="module")
def compiled(cnn):
    """`tvmptq compile cnn_qdq.onnx -o art` with no --plan and no --target: (rc, stdout, artifact)."""
    import contextlib
    import io
    tmp, qdq = cnn[0], cnn[3]
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(["compile", str(qdq), "-o", str(tmp / "art")])
    assert rc == 0, err.getvalue()
    return out.getvalue(), tmp / "art"


def test_ort_qdq_compiles_with_no_plan_and_agrees_with_ort(cnn, compiled):
    """The acceptance case: ORT's own run of the file vs the compiled artifact, all 540 digits."""
    qdq, x = cnn[3], cnn[5]
    assert "plan read from the Q/DQ nodes of cnn_qdq.onnx: W8A8" in compiled[0]
    ours = load_artifact(compiled[1]).run(x)
    theirs = OrtRunner(qdq)(x)
    agreement = float(np.mean(ours.argmax(1) == theirs.argmax(1)))
    assert len(x) == 540 and agreement >= 0.99, agreement
    _, qm = plan_from_qdq(qdq)  # and the artifact is the plan's program, bit for bit
    assert np.array_equal(ours[:64], qm.runner()(x[:64]))


def test_default_target_uses_the_hosts_kernels(compiled):
    m = json.loads((compiled[1] / "manifest.json").read_text())
    k = m["layer_kernels"]
    assert k["layers"] == 6 and m["float_ops"] == []
    name, _ = targets.default_target()
    assert m["target"]["requested"] == name
    if _host_has_vnni():  # this CPU (znver4 here): x86-host, every conv/linear on vpdpbusd
        assert name == "x86-host" and m["target"]["resolved"].find(targets.host_cpu()) >= 0
        assert k["instruction"] == "vpdpbusd" and k["dot_kernels"] == 6
        assert "6/6 conv/linear layers in vpdpbusd kernels, 0 float ops" in compiled[0]
        assert sum(": tensorized (vnni_" in line for line in m["kernels"]) == 6
    else:  # another machine: its registry entry or plain llvm, and the summary says what ran where
        assert k["dot_kernels"] + k["simd_kernels"] + k["generic_loops"] == 6
        assert f"/6 conv/linear layers in" in compiled[0]


def test_run_and_evaluate_work_on_the_qdq_model(capsys, cnn, compiled):
    tmp, x = cnn[0], cnn[5]
    np.save(tmp / "x.npy", x[:20])
    rc, out, err = run(capsys, "run", compiled[1], "--input", tmp / "x.npy", "-o", tmp / "y.npy", "--show", "1")
    assert rc == 0, err
    assert np.array_equal(np.load(tmp / "y.npy"), load_artifact(compiled[1]).run(x[:20]))
    rc, out, err = run(capsys, "evaluate", cnn[3], "--set", "digits")
    assert rc == 0, err
    top1 = float(next(line.split()[1] for line in out.splitlines() if line.strip().startswith("top1_agreement")))
    assert top1 >= 95.0, out  # the QDQ plan's simulation vs its float graph


@pytest.mark.parametrize("variant", ["int8_per_tensor", "w4_com_microsoft", "w4_opset21"])
def test_other_ort_qdq_forms_agree_with_ort(cnn, variant):
    tmp, fp32, calib, x = cnn[0], cnn[2], cnn[4][:CALIB], cnn[5]
    if variant == "int8_per_tensor":
        path = qm_.ort_qdq(fp32, tmp / "s8.onnx", calib, activation="int8", per_channel=False)
        zp_types, domains = {onnx.TensorProto.INT8}, {""}
    elif variant == "w4_com_microsoft":
        path = qm_.ort_qdq(fp32, tmp / "w4ms.onnx", calib, weight="int4")
        zp_types, domains = {onnx.TensorProto.UINT8, onnx.TensorProto.INT4}, {"com.microsoft"}
    else:
        fp21 = qm_.float_onnx(cnn[1], tmp / "fp32_opset21.onnx", opset=21)
        path = qm_.ort_qdq(fp21, tmp / "w4_21.onnx", calib, weight="int4", extra={"UseQDQContribOps": False})
        zp_types, domains = {onnx.TensorProto.UINT8, onnx.TensorProto.INT4}, {""}
    model = onnx.load(str(path))
    init = {t.name: t for t in model.graph.initializer}
    qdq = [n for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    assert {n.domain for n in qdq} == domains
    assert {init[n.input[2]].data_type for n in qdq if n.input[2] in init} - {onnx.TensorProto.INT32} == zp_types
    run_, qm = compile_qdq(path)
    r = compare_with_ort(path, x, run_, qm)
    assert r["top1_agreement"] >= 0.99, r
    if variant != "int8_per_tensor":
        assert {lp.weight_bits for lp in qm.plan.layers if lp.weight_bits} == {4}


def test_quantize_reports_an_already_quantized_model(capsys, cnn, tmp_path):
    rc, out, err = run(capsys, "quantize", cnn[3], "--out", tmp_path / "p.npz")
    assert rc == 0, err
    assert "cnn_qdq.onnx is already quantized" in out and f"tvmptq compile {cnn[3]} -o OUT" in out
    assert "--requantize" in out and "calibrate" not in err
    plan = tvmptq.QuantPlan.load(tmp_path / "p.npz")  # the plan read from the file
    assert plan.config["source"] == "QDQ ONNX" and plan.model == "cnn_qdq"


def test_requantize_from_the_float_weights(capsys, cnn, tmp_path):
    """--requantize calibrates the dequantized float graph; the ReLUs ORT folded into the uint8 grids
    are restored, so that graph classifies like the trained float model (without them it would not)."""
    import torch
    tmp, model, qdq, calib, x = cnn[0], cnn[1], cnn[3], cnn[4], cnn[5]
    np.save(tmp_path / "c.npy", calib[:64])
    rc, out, err = run(capsys, "quantize", qdq, "--requantize", "--calib", tmp_path / "c.npy", "--observer", "minmax",
                       "--report", "0", "--wbits", "4", "--out", tmp_path / "rq.npz")
    assert rc == 0, err
    assert "requantizing" in out and "W4A8" in out
    rc, out, err = run(capsys, "evaluate", qdq, "--plan", tmp_path / "rq.npz", "--set", "digits")
    assert rc == 0, err
    from tvmptq.peers.qdq_import import float_model_from_qdq
    _, fmodel, _ = float_model_from_qdq(qdq)
    with torch.no_grad():
        want = model(torch.from_numpy(x)).argmax(1).numpy()
        got = fmodel.build()(torch.from_numpy(x)).argmax(1).numpy()
    assert np.mean(got == want) >= 0.98
    assert sum(n.op_type == "Relu" for n in onnx.load(str(qdq)).graph.node) == 0  # ORT removed all of them


def test_pt2e_qdq_gets_a_clear_error_naming_the_node(capsys, cnn, tmp_path):
    """PT2E (torchao X86InductorQuantizer) leaves the residual add's inputs, the pooling input and
    the logits in float: not an integer-only program. The error names the node and the way out."""
    pytest.importorskip("torchao")
    path = qm_.pt2e_qdq(cnn[1], tmp_path / "pt2e.onnx", cnn[4][:64])
    assert any(n.op_type == "DequantizeLinear" for n in onnx.load(str(path)).graph.node)
    line = expect_error(capsys, 4, "compile", path, "-o", tmp_path / "art")
    assert "node 'node_" in line and "without a QuantizeLinear/DequantizeLinear" in line and "--requantize" in line
    assert not (tmp_path / "art").exists()
    rc, out, err = run(capsys, "quantize", path, "--requantize", "--calib", "digits", "--calib-samples", "32",
                       "--observer", "minmax", "--report", "0")
    assert rc == 0 and "W8A8" in out, err


# --------------------------------------------------------------------------------------------
# Refused QDQ forms and bad input: one clear line, the documented exit code


def test_blocked_quantization_is_refused_naming_the_node(capsys, cnn, tmp_path):
    model = onnx.load(str(cnn[3]))
    node = next(n for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[0].endswith("_quantized"))
    node.attribute.append(onnx.helper.make_attribute("block_size", 4))
    onnx.save(model, tmp_path / "blocked.onnx")
    line = expect_error(capsys, 4, "compile", tmp_path / "blocked.onnx", "-o", tmp_path / "art")
    assert node.name in line and "block_size" in line


def test_compile_of_a_float_model_needs_a_plan(capsys, cnn, tmp_path):
    line = expect_error(capsys, 2, "compile", cnn[2], "-o", tmp_path / "art")
    assert "--plan" in line and "cnn_fp32.onnx" in line
    line = expect_error(capsys, 2, "quantize", cnn[2], "--requantize", "--calib", "digits")
    assert "--requantize" in line


def test_int64_calibration_data_for_a_float_model(capsys, cnn, tmp_path):
    calib = np.round(cnn[4][:32] * 16).astype(np.int64)  # digits' original 0..16 pixel counts
    np.save(tmp_path / "c.npy", calib)
    rc, out, err = run(capsys, "quantize", cnn[2], "--calib", tmp_path / "c.npy", "--observer", "minmax", "--report", "2")
    assert rc == 0 and "Traceback" not in err, err  # converted to float32 (exact: |values| < 2^24)
    np.save(tmp_path / "big.npy", calib * 2 ** 30)
    line = expect_error(capsys, 3, "quantize", cnn[2], "--calib", tmp_path / "big.npy", "--observer", "minmax")
    assert "input" in line and "int64" in line and "float32" in line


def test_output_folder_that_cannot_be_created(capsys, cnn, tmp_path):
    (tmp_path / "file").write_text("not a folder")
    line = expect_error(capsys, 3, "compile", cnn[3], "-o", tmp_path / "file" / "art")
    assert str(tmp_path / "file" / "art") in line
    line = expect_error(capsys, 3, "quantize", cnn[2], "--calib", "digits", "--out", tmp_path / "file" / "p.npz")
    assert str(tmp_path / "file") in line


def test_unknown_layer_is_refused_before_calibration(capsys, cnn):
    rc, _, err = run(capsys, "quantize", cnn[2], "--calib", "digits", "--layer", "no_such_layer=float",
                     "--observer", "minmax")
    assert rc == 2 and "no_such_layer" in error_line(err)
    assert "calibrate" not in err  # no calibration progress bar: refused before the pass
