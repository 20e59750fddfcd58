"""ORT quantize_static QDQ models as tvmptq plans, lowered to integer-only TVM programs."""
import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

import tvmptq
from tvmptq.peers import OrtRunner, export_onnx, ort_quantize_static
from targets.build import compile_qdq
from tvmptq.peers.qdq_import import QdqImportError, compare_with_ort, plan_from_qdq

pytest.importorskip("tvm")
import relay_passes as rp  # noqa: E402  (needs tvm)


def _qdq_models(model, calib, folder, bits=(8,)):
    fp32 = export_onnx(model.build(), (torch.from_numpy(np.array(calib[:1])),), folder / "fp32.onnx", ["input"])
    batches = [{"input": calib[i:i + 1]} for i in range(len(calib))]
    return {b: ort_quantize_static(fp32, folder / f"w{b}a8.onnx", batches, weight_bits=b) for b in bits}


@pytest.fixture(scope="module")
def digits_qdq(tmp_path_factory):
    s = tvmptq.get_set("digits")
    paths = _qdq_models(tvmptq.load("digits_resnet"), s.calibration()[0][:64], tmp_path_factory.mktemp("qdq"), (8, 4))
    return paths, s.evaluation()[0]


def test_digits_plan_holds_ort_numbers(digits_qdq):
    path = digits_qdq[0][8]
    _, qm = plan_from_qdq(path)
    init = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer}
    conv_w = [k for k in init if k.endswith("weight_quantized") and init[k].ndim == 4]
    stored = {init[k].tobytes() for k in conv_w}
    biases = {init[k].tobytes() for k in init if k.endswith("bias_quantized")}  # int32 on s_x * s_w
    convs = [lp for lp in qm.plan.layers if lp.kind == "conv2d"]
    assert all(lp.arrays["weight"].tobytes() in stored and lp.arrays["bias"].tobytes() in biases for lp in convs)
    x = qm.plan.tensors[qm.plan.inputs[0]]
    assert (np.float32(x.scale), x.zero_point) == (init["input_scale"], int(init["input_zero_point"]))
    # ORT folded the ReLUs into the uint8 grids; the importer restores them (fused, so the clip is the same)
    assert {lp.activation for lp in qm.plan.layers} <= {"none", "relu"}


@pytest.mark.parametrize("bits", [8, 4])
def test_digits_qdq_compiles_and_agrees_with_ort(digits_qdq, bits):
    paths, x = digits_qdq
    if bits == 4:  # QInt4 weights: ORT writes every Q/DQ as a com.microsoft contrib op
        domains = {n.domain for n in onnx.load(str(paths[4])).graph.node if "Quantize" in n.op_type}
        assert domains == {"com.microsoft"}
    run, qm = compile_qdq(paths[bits])
    assert np.array_equal(run(x[:64]), qm.runner()(x[:64]))  # the compiled program is the plan's
    assert {lp.weight_bits for lp in qm.plan.layers if lp.weight_bits} == {bits}
    r = compare_with_ort(paths[bits], x, run, qm)
    assert r["samples"] == 540 and r["top1_agreement"] >= 0.99
    assert r["max_lsb"] <= 2 and r["identical_samples"] >= 0.95, r


def test_integer_only_module(digits_qdq):
    float_path, qm = plan_from_qdq(digits_qdq[0][8])
    mod = rp.lowering_passes(qm.plan)(rp.import_onnx(float_path))
    assert rp.op_counts(mod)["nn.conv2d -> int32"] == 9 and not rp.float_ops(mod)


def test_unsupported_qdq_is_named(digits_qdq, tmp_path):
    model = onnx.load(str(digits_qdq[0][8]))
    node = next(n for n in model.graph.node if n.op_type == "QuantizeLinear")
    node.domain = "com.example"
    onnx.save(model, tmp_path / "bad.onnx")
    with pytest.raises(QdqImportError, match=rf"{node.name}.*com\.example"):
        plan_from_qdq(tmp_path / "bad.onnx")
    node.domain = ""
    node.attribute.append(onnx.helper.make_attribute("block_size", 4))
    onnx.save(model, tmp_path / "blocked.onnx")
    with pytest.raises(QdqImportError, match=rf"{node.name}.*block_size"):
        plan_from_qdq(tmp_path / "blocked.onnx")


@pytest.mark.slow
def test_efficientnet_w8a8_qdq_agrees_with_ort(tmp_path):
    """32 evaluation views (scripts/qdq_vs_ort.py runs all 512). Bit-exact against the plan's
    simulation; against ORT, top-1 agreement is not 100 %: ORT requantizes in float (round half to
    even), the plan in fixed point (round half up), and this model amplifies single-LSB flips on
    its coarse projection outputs. ORT's own optimized and unoptimized runs of the same file differ
    as much (scripts/qdq_vs_ort.py --ort-floor), so the bound is a noise floor, not a tolerance."""
    photos = tvmptq.get_set("photos")
    path = _qdq_models(tvmptq.load("efficientnet_lite0"), photos.calibration()[0][:32], tmp_path)[8]
    run, qm = compile_qdq(path)
    x = photos.evaluation()[0][:32]
    ours = run(x)
    assert np.array_equal(ours[:8], qm.runner()(x[:8]))
    r = compare_with_ort(path, x, lambda _: ours, qm, OrtRunner(path)(x))
    assert r["top1_agreement"] >= 0.9 and r["max_lsb"] <= 8, r
