"""QDQ ONNX export (tvmptq/export/qdq_onnx.py): ONNX Runtime runs tvmptq's quantization.

ORT's fused kernels requantize with float multipliers and round half to even, tvmptq with
integer multipliers and round half up, so outputs may differ by one grid step in rare elements;
the tests measure that in units of the output scale (LSB) and print it.
"""
import copy

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper
from torch import nn

import tvmptq
from tvmptq.export import QDQ_OPSET, export_qdq_onnx, ort_optimized_op_counts
from tvmptq.peers.onnxruntime_peer import OrtRunner, count_ops, weight_scale_axes
from tvmptq.zoo import from_module

SAMPLES = 64


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def digits(digits_graph):
    model, graph = digits_graph
    s = tvmptq.get_set("digits")
    (calib,), (evaluation,) = s.calibration(), s.evaluation()
    return model, graph, calib[:SAMPLES], evaluation[:SAMPLES]


def quantize_digits(digits, wbits, abits, symmetric=False):
    model, graph, calib, _ = digits
    return tvmptq.quantize(model, (calib,), tvmptq.make_config(wbits, abits, "minmax", symmetric=symmetric),
                           graph=graph, progress=False)


def output_scale(plan):
    out = next(st for st in plan.program if st["kind"] == "output")["values"]
    while isinstance(out, list):
        out = out[0]
    return plan.tensors[out["value"]].scale


def compare(qm, path, inputs, tag):
    """(top-1 agreement, LSB histogram) of ORT on the exported file against tvmptq's simulation."""
    sim = qm.runner()(*inputs)
    got = OrtRunner(path, threads=1)(*inputs)
    assert got.shape == sim.shape
    lsb = np.round(np.abs(got - sim) / output_scale(qm.plan)).astype(int)
    agree = float(np.mean(got.argmax(1) == sim.argmax(1)))
    print(f"\n{tag}: {len(sim)} samples, top-1 agreement {agree:.4f}, |ORT - tvmptq| in output LSB: "
          f"max {lsb.max()}, histogram {np.bincount(lsb.ravel()).tolist()}")
    return agree, lsb


# --- digits ResNet W8A8 -----------------------------------------------------------------------
def test_digits_w8a8(digits, tmp_path):
    qm = quantize_digits(digits, 8, 8)
    path = export_qdq_onnx(qm.plan, tmp_path / "digits_w8a8.onnx", batch=16)
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    assert [(o.domain, o.version) for o in model.opset_import] == [("", QDQ_OPSET)]

    ops = count_ops(path)
    assert ops["QuantizeLinear"] >= 1 + len(qm.plan.layers) and ops["DequantizeLinear"] > ops["QuantizeLinear"]
    assert {"Conv", "Gemm", "Add", "GlobalAveragePool", "Flatten"} <= set(ops)
    axes = weight_scale_axes(path)  # per-channel weight (and int32 bias) scales on axis 0
    weights = [k for k in axes if k.endswith("weight_quantized")]
    assert len(weights) == sum(lp.kind in ("conv2d", "linear") for lp in qm.plan.layers)
    assert all(axes[k] == 0 for k in weights)
    init = {t.name: t for t in model.graph.initializer}
    assert all(init[k].data_type == TensorProto.INT8 for k in weights)
    assert init["x_zero_point"].data_type == TensorProto.UINT8

    # What ORT runs: its QDQ fusions turn the whole network into integer kernels.
    fused = ort_optimized_op_counts(path)
    assert fused.get("QLinearConv") == 9 and "Conv" not in fused and fused.get("QGemm") == 1
    print(f"\nORT {ort.__version__} runs: {fused}")

    agree, lsb = compare(qm, path, (digits[3],), "digits W8A8")
    assert agree >= 0.99 and lsb.max() <= 1 and np.mean(lsb == 0) >= 0.99


# --- bits < 8 ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def digits_w4a4(digits):
    return quantize_digits(digits, 4, 4)


def test_digits_w4a4_clip(digits, digits_w4a4, tmp_path):
    """Default: 8-bit containers, the 4-bit grid by Clip between DQ and Q; ORT keeps its integer
    kernels (the Clip runs on grid values)."""
    qm = digits_w4a4
    path = export_qdq_onnx(qm.plan, tmp_path / "w4a4.onnx", batch=16)
    init = {t.name: t for t in onnx.load(str(path)).graph.initializer}
    assert init["x_zero_point"].data_type == TensorProto.UINT8
    assert count_ops(path).get("Clip", 0) >= len(qm.plan.layers)
    fused = ort_optimized_op_counts(path)
    assert fused.get("QLinearConv") == 9 and "Conv" not in fused
    agree, lsb = compare(qm, path, (digits[3],), "digits W4A4, 8-bit containers + Clip")
    assert agree >= 0.99 and lsb.max() <= 1


def test_digits_w4a4_int4_types(digits, digits_w4a4, tmp_path):
    """UINT4/INT4 QuantizeLinear/DequantizeLinear (opset 21): ORT 1.32 loads and runs the model,
    but fuses nothing (no 4-bit QLinearConv): Conv/Gemm/Add run in float on dequantized values."""
    qm = digits_w4a4
    path = export_qdq_onnx(qm.plan, tmp_path / "w4a4_int4.onnx", batch=16, low_bit="int4")
    init = {t.name: t for t in onnx.load(str(path)).graph.initializer}
    assert init["x_zero_point"].data_type == TensorProto.UINT4
    assert init["conv2d_weight_quantized"].data_type == TensorProto.INT4
    fused = ort_optimized_op_counts(path)
    assert "QLinearConv" not in fused and fused.get("Conv") == 9
    agree, lsb = compare(qm, path, (digits[3],), "digits W4A4, UINT4/INT4 Q/DQ")
    assert agree >= 0.99 and lsb.max() <= 1


def test_ort_drops_relu_before_int4_quantize():
    """Why 4-bit containers clip with Max/Min: ORT 1.32 removes a Relu in front of an INT4
    QuantizeLinear with zero point 0 as if it were redundant (it is not: the grid goes to -8)."""
    s = helper.make_tensor("s", TensorProto.FLOAT, [], [1.0])
    z = helper.make_tensor("z", TensorProto.INT4, [], [0])
    nodes = [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("QuantizeLinear", ["r", "s", "z"], ["q"]),
             helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])], [s, z])
    data = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10).SerializeToString()
    x = np.array([-3.0, -1.0, 0.0, 2.0], np.float32)
    plain = ort.SessionOptions()
    plain.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    assert ort.InferenceSession(data, plain).run(None, {"x": x})[0].tolist() == [0, 0, 0, 2]
    optimized = ort.InferenceSession(data).run(None, {"x": x})[0].tolist()
    assert optimized == [-3, -1, 0, 2]


# --- the ops of EfficientNet-Lite0 on a small module ------------------------------------------
class OpsNet(nn.Module):
    """Static-SAME input pad, strided conv + ReLU6 (hardtanh), integer pad, depthwise dilated conv +
    clamp, 1x1 conv, add, mul by a scalar, cat, grouped conv + relu, max pool, mean, flatten, linear."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, stride=2)
        self.dw = nn.Conv2d(8, 8, 3, groups=8, dilation=2)
        self.pw = nn.Conv2d(8, 8, 1)
        self.g = nn.Conv2d(16, 8, 3, groups=2)
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        y = F.hardtanh(self.stem(F.pad(x, (0, 1, 0, 1))), 0.0, 6.0)
        z = torch.clamp(self.dw(F.pad(y, (2, 2, 2, 2))), 0.0, 6.0)
        y = self.pw(z) + y
        y = torch.cat([y, y * 0.37], dim=1)
        y = F.max_pool2d(F.relu(self.g(F.pad(y, (1, 1, 1, 1)))), 2, 2, padding=1)
        return self.fc(torch.flatten(y.mean((2, 3)), 1))


@pytest.fixture(scope="module")
def opsnet():
    torch.manual_seed(0)
    x = torch.randn(32 + SAMPLES, 3, 16, 16)
    return from_module(OpsNet().eval(), (x[:1],)), x[:32].numpy(), x[32:].numpy()


def test_efficientnet_ops(opsnet, tmp_path):
    model, calib, evaluation = opsnet
    qm = tvmptq.quantize(model, (calib,), tvmptq.make_config(8, 8, "minmax"), progress=False)
    path = export_qdq_onnx(qm.plan, tmp_path / "ops.onnx", batch=4)
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    ops = count_ops(path)
    assert {"Pad", "Conv", "Add", "Mul", "Concat", "Relu", "MaxPool", "ReduceMean", "Flatten", "Gemm"} <= set(ops)
    fused = ort_optimized_op_counts(path)
    assert fused.get("QLinearConv") == 4 and fused.get("QLinearConcat") == 1
    agree, lsb = compare(qm, path, (evaluation,), "EfficientNet ops W8A8")
    assert agree >= 0.95 and lsb.max() <= 2 and np.mean(lsb == 0) >= 0.9


def test_efficientnet_ops_int4_types_refused(opsnet, tmp_path):
    """With UINT4 activations ORT 1.32 propagates the DequantizeLinear past MaxPool, leaving a
    MaxPool on uint4, and refuses the graph: low_bit="clip" (the default) is what ORT runs."""
    model, calib, evaluation = opsnet
    qm = tvmptq.quantize(model, (calib,), tvmptq.make_config(4, 4, "minmax"), progress=False)
    path = export_qdq_onnx(qm.plan, tmp_path / "ops_int4.onnx", batch=4, low_bit="int4")
    onnx.checker.check_model(onnx.load(str(path)))
    with pytest.raises(Exception, match="uint4"):
        OrtRunner(path)
    path = export_qdq_onnx(qm.plan, tmp_path / "ops_w4a4.onnx", batch=4)
    agree, lsb = compare(qm, path, (evaluation,), "EfficientNet ops W4A4, 8-bit containers + Clip")
    assert agree >= 0.95 and lsb.max() <= 2


# --- what is not exported -----------------------------------------------------------------------
def test_unsupported_op_is_named(digits, tmp_path):
    qm = quantize_digits(digits, 8, 8)
    plan = copy.deepcopy(qm.plan)
    step = next(st for st in plan.program if st.get("op") == "flatten.using_ints")
    step["op"] = "roll.default"
    with pytest.raises(NotImplementedError, match="roll.default"):
        export_qdq_onnx(plan, tmp_path / "x.onnx")
    plan.layers[0].kind = "conv3d"
    with pytest.raises(NotImplementedError, match="conv3d"):
        export_qdq_onnx(plan, tmp_path / "x.onnx")


class Island(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(6, 4)

    def forward(self, x):
        return torch.sigmoid(self.fc(x))


def test_float_island_is_named(tmp_path):
    torch.manual_seed(0)
    x = torch.randn(16, 6)
    qm = tvmptq.quantize(from_module(Island().eval(), (x[:1],)), (x.numpy(),), tvmptq.make_config(8, 8),
                         progress=False)
    with pytest.raises(NotImplementedError, match="sigmoid"):
        export_qdq_onnx(qm.plan, tmp_path / "island.onnx")
