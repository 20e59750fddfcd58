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
from tvmptq.export import QDQ_OPSET, export_qdq_onnx, ort_optimized_op_counts, run_qdq_onnx
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


def test_float_island_sigmoid_and_unsupported_op_named(tmp_path):
    """A float island becomes a plain ONNX float op between DQ and Q (fixed and dynamic batch); an op
    without an ONNX form is refused with its name and step."""
    torch.manual_seed(0)
    x = torch.randn(16, 6)
    qm = tvmptq.quantize(from_module(Island().eval(), (x[:1],)), (x.numpy(),),
                         tvmptq.make_config(8, 8, lookup_tables=False), progress=False)  # sigmoid: an island
    sim = qm.runner()(x.numpy())
    for batch in (4, None):
        path = export_qdq_onnx(qm.plan, tmp_path / f"island_{batch}.onnx", batch=batch)
        assert count_ops(path).get("Sigmoid") == 1
        got = OrtRunner(path, threads=1)(x.numpy())
        np.testing.assert_allclose(got, sim, atol=1e-6)
    plan = copy.deepcopy(qm.plan)
    step = next(st for st in plan.program if st.get("op") == "sigmoid.default")
    step["op"] = "erfinv.default"
    with pytest.raises(NotImplementedError, match=rf"erfinv\.default.*step {step['name']!r}"):
        export_qdq_onnx(plan, tmp_path / "island.onnx")


class Tables(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(6, 8), nn.Linear(8, 4)

    def forward(self, x):
        return self.fc2(F.gelu(torch.sigmoid(self.fc1(x))))


def test_lookup_tables_export_as_gather(tmp_path):
    """Lookup-table layers (the default for unary functions) export as Gather on the plan's table:
    ONNX Runtime's integer tensors equal the NumPy reference's (fixed and dynamic batch)."""
    from tvmptq.reference import run_plan
    torch.manual_seed(0)
    x = torch.randn(32, 6)
    qm = tvmptq.quantize(from_module(Tables().eval(), (x[:1],)), (x.numpy(),), tvmptq.make_config(8, 8),
                         progress=False)
    assert [lp.kind for lp in qm.plan.layers].count("lut") == 2
    want = run_plan(qm.plan, x.numpy())
    for batch in (4, None):
        path = export_qdq_onnx(qm.plan, tmp_path / f"tables_{batch}.onnx", batch=batch)
        ops = count_ops(path)
        assert ops.get("Gather") == 2 and "Sigmoid" not in ops and "Erf" not in ops and "Gelu" not in ops
        got = OrtRunner(path, threads=1)(x.numpy())
        step = output_scale(qm.plan)
        assert np.abs(got - want).max() <= step * 1.01  # ORT's float requantize of the linears: one step at most


# --- MiniLM: float islands (embeddings, masks, LayerNorm, softmax, GELU, pooling), x*x matmuls ----
MINILM_SENTENCES = 8


@pytest.fixture(scope="module")
def minilm():
    model = tvmptq.load("minilm_l6")
    s = tvmptq.get_set("sentences")
    qm = tvmptq.quantize(model, tuple(a[:8] for a in s.calibration()),
                         tvmptq.make_config(8, 8, weight_rule="minmax", lookup_tables=False), progress=False)
    inputs = tuple(a[:MINILM_SENTENCES] for a in s.evaluation())
    return model, qm, inputs, qm.runner()(*inputs)


def cosine(a, b):
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def test_minilm_w8a8(minilm, tmp_path):
    """Dynamic-batch QDQ export of MiniLM: ORT runs every integer layer as an integer kernel and
    matches tvmptq's simulation up to rounding ties (which softmax amplifies, see below)."""
    model, qm, inputs, sim = minilm
    got, path = run_qdq_onnx(qm.plan, *inputs, path=tmp_path / "minilm.onnx", threads=1)
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    assert [d.dim_param for d in onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim] == ["batch", ""]

    ops = count_ops(path)
    assert {"Gather", "LayerNormalization", "Softmax", "Gelu", "ReduceSum", "ReduceL2", "Cast", "Unsqueeze",
            "Clip", "Div", "Expand"} <= set(ops)
    assert ops["QuantizeLinear"] >= len(qm.plan.layers) + sum(st["kind"] == "quantize" for st in qm.plan.program)
    kinds = {k: sum(lp.kind == k for lp in qm.plan.layers) for k in ("linear", "matmul", "add", "mul_const")}
    assert kinds == {"linear": 36, "matmul": 12, "add": 12, "mul_const": 6}
    # What ORT runs: each of the 66 integer layers is an integer kernel with its requantize inside;
    # only the float islands compute in float.
    fused = ort_optimized_op_counts(path)
    print(f"\nMiniLM W8A8, ORT {ort.__version__} runs: {fused}")
    assert fused.get("QGemm") == kinds["linear"] and fused.get("QLinearMatMul") == kinds["matmul"]
    assert fused.get("QLinearAdd") == kinds["add"] and fused.get("QLinearMul") == kinds["mul_const"]
    assert not {"MatMul", "Gemm", "MatMulIntegerToFloat"} & set(fused)

    # Fidelity. The first differences are single-LSB rounding ties (ORT requantizes in float, half
    # to even; tvmptq in fixed point, half up); one LSB of the attention scores' grid (~0.66) is a
    # factor ~1.9 in softmax, so a tie flipped there moves the rest of that sentence. Most sentences
    # come out identical; ORT is as close to FP32 as the simulation is.
    fp32 = tvmptq.fp32_outputs(model, inputs, progress=False)
    cos, diff = cosine(got, sim), np.abs(got - sim).max()
    print(f"ORT vs tvmptq cosine per sentence {np.round(cos, 4).tolist()}, max |diff| {diff:.4f}; "
          f"cosine to FP32: ORT {cosine(got, fp32).mean():.4f}, tvmptq {cosine(sim, fp32).mean():.4f}")
    assert got.shape == sim.shape == (MINILM_SENTENCES, 384)
    assert np.median(cos) > 0.9999 and cos.min() > 0.9 and np.mean(cos > 0.9999) >= 0.5
    assert abs(cosine(got, fp32).mean() - cosine(sim, fp32).mean()) < 0.02

    # Dynamic batch: any batch size, each sentence independent of the others.
    runner = OrtRunner(path, threads=1)
    np.testing.assert_allclose(runner(*(a[:1] for a in inputs)), got[:1], atol=1e-5)
    np.testing.assert_allclose(runner(*(a[3:6] for a in inputs)), got[3:6], atol=1e-5)


def test_minilm_fixed_batch_opset18_and_matmul_form(minilm, tmp_path):
    """Fixed batch (static shapes), opset 18 (GELU written with Erf) and the MatMul + Add form of
    rank-3 linears (ORT: MatMulIntegerToFloat, float bias add, then QuantizeLinear) all give the
    dynamic-batch model's outputs."""
    _, qm, inputs, sim = minilm
    ref, _ = run_qdq_onnx(qm.plan, *inputs, threads=1)
    path = export_qdq_onnx(qm.plan, tmp_path / "minilm_b4.onnx", batch=4, opset=18)
    assert "Gelu" not in count_ops(path) and count_ops(path).get("Erf") == 6
    assert onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim[0].dim_value == 4
    np.testing.assert_allclose(OrtRunner(path, threads=1)(*inputs), ref, atol=2e-3)
    path = export_qdq_onnx(qm.plan, tmp_path / "minilm_matmul.onnx", batch=None, linear_3d="matmul")
    fused = ort_optimized_op_counts(path)
    assert fused.get("MatMulIntegerToFloat") == 36 and "QGemm" not in fused
    got = OrtRunner(path, threads=1)(*inputs)
    assert np.median(cosine(got, sim)) > 0.9999


def test_minilm_unsupported_op_named(minilm, tmp_path):
    _, qm, _, _ = minilm
    plan = copy.copy(qm.plan)
    plan.program = copy.deepcopy(qm.plan.program)
    step = next(st for st in plan.program if st.get("op") == "softmax.int")
    step["op"] = "_log_softmax.default"
    with pytest.raises(NotImplementedError, match=r"_log_softmax\.default.*step 'softmax'"):
        export_qdq_onnx(plan, tmp_path / "x.onnx", batch=None)
