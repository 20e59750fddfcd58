"""ONNX Runtime static quantization as a peer baseline (tvmptq.peers.onnxruntime_peer)."""

import numpy as np
import onnx
import onnx.numpy_helper
import pytest
import torch
import torch.nn as nn

from tvmptq.peers import (
    OrtRefusedError,
    OrtRunner,
    count_ops,
    export_onnx,
    ort_quantize_static,
    ort_quantize_static_with_stats,
    quantized_tensor_names,
    weight_scale_axes,
)

IMAGE = (3, 16, 16)


class TinyCNN(nn.Module):
    """conv-bn-relu, depthwise conv, residual add, average pool, linear: the patterns EfficientNet has."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.depthwise = nn.Sequential(
            nn.Conv2d(16, 16, 3, padding=1, groups=16, bias=False), nn.BatchNorm2d(16), nn.ReLU6()
        )
        self.project = nn.Sequential(nn.Conv2d(16, 16, 1, bias=False), nn.BatchNorm2d(16))
        self.head = nn.Linear(16, 10)

    def forward(self, x):
        x = self.stem(x)
        x = torch.relu(x + self.project(self.depthwise(x)))
        return self.head(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """Seeded model (with non-trivial BN statistics), seeded data, FP32 export and FP32 reference logits."""
    torch.manual_seed(0)
    model = TinyCNN().eval()
    with torch.no_grad():
        for bn in (m for m in model.modules() if isinstance(m, nn.BatchNorm2d)):
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.uniform_(0.5, 1.5)
    rng = np.random.default_rng(0)
    calib = rng.standard_normal((64, *IMAGE)).astype(np.float32)
    evals = rng.standard_normal((64, *IMAGE)).astype(np.float32)
    with torch.no_grad():
        ref = model(torch.from_numpy(evals)).numpy()
    tmp = tmp_path_factory.mktemp("ort_peer")
    fp32 = export_onnx(model, (torch.from_numpy(calib[:1]),), tmp / "tiny.onnx", input_names=["input"])
    batches = [{"input": calib[i : i + 1]} for i in range(len(calib))]
    return {"fp32": fp32, "batches": batches, "evals": evals, "ref": ref, "tmp": tmp}


def sqnr_db(ref, q):
    return 10 * np.log10(np.sum(ref**2) / np.sum((ref - q) ** 2))


def test_fp32_export_matches_torch(tiny):
    out = OrtRunner(tiny["fp32"], threads=1)(tiny["evals"])
    np.testing.assert_allclose(out, tiny["ref"], atol=1e-4, rtol=1e-4)
    # The exporter folds BN into the convolutions, so ORT sees plain Conv.
    assert "BatchNormalization" not in count_ops(tiny["fp32"])


def test_w8a8_minmax_qdq(tiny):
    qpath = ort_quantize_static(tiny["fp32"], tiny["tmp"] / "tiny_w8a8.onnx", tiny["batches"], method="MinMax")
    ops = count_ops(qpath)
    assert ops["QuantizeLinear"] > 0 and ops["DequantizeLinear"] > ops["QuantizeLinear"]

    # Per-channel weights: every conv/linear weight has a scale vector on its output-channel axis 0.
    axes = weight_scale_axes(qpath)
    weights = {n: a for n, a in axes.items() if not n.endswith("bias_quantized")}
    assert len(weights) == 4 and all(a == 0 for a in weights.values()), axes

    # Activations are uint8; the model input and the residual sum are among the quantized tensors.
    model = onnx.load(str(qpath))
    q_nodes = [n for n in model.graph.node if n.op_type == "QuantizeLinear"]
    zero_points = {t.name: t for t in model.graph.initializer}
    assert all(zero_points[n.input[2]].data_type == onnx.TensorProto.UINT8 for n in q_nodes)
    acts = quantized_tensor_names(qpath)
    assert "input" in acts and len(acts) >= 4
    assert set(quantized_tensor_names(qpath, include_weights=True)) > set(acts)

    q = OrtRunner(qpath, threads=1)(tiny["evals"])
    agreement = np.mean(q.argmax(1) == tiny["ref"].argmax(1))
    assert agreement >= 0.9 or sqnr_db(tiny["ref"], q) > 20, (agreement, sqnr_db(tiny["ref"], q))


def test_runner_is_batch_agnostic(tiny, tmp_path):
    # Exported with batch 4: 10 samples run as 4 + 4 + 2 (padded), same result as the batch-1 model.
    x = tiny["evals"][:10]
    b4 = export_onnx(TinyCNN().eval(), (torch.zeros(4, *IMAGE),), tmp_path / "b4.onnx", ["input"])
    runner = OrtRunner(b4)
    assert runner.batch_size == 4 and runner(x).shape == (10, 10)
    assert OrtRunner(tiny["fp32"]).batch_size == 1


def test_4bit_combos(tiny):
    """ORT 1.32: W4A8 and W4A4 run (com.microsoft QDQ ops); W8A4, and A4 with Relu/Clip kept, are refused."""
    for wbits, abits in [(4, 8), (4, 4)]:
        qpath = ort_quantize_static(
            tiny["fp32"], tiny["tmp"] / f"tiny_w{wbits}a{abits}.onnx", tiny["batches"][:16],
            weight_bits=wbits, activation_bits=abits,
        )
        model = onnx.load(str(qpath))
        weights = [t for t in model.graph.initializer if t.name.endswith("weight_quantized")]
        assert weights and all(t.data_type == onnx.TensorProto.INT4 for t in weights)
        assert set(weight_scale_axes(qpath).values()) >= {0}
        q = OrtRunner(qpath, threads=1)(tiny["evals"])
        assert np.isfinite(q).all() and sqnr_db(tiny["ref"], q) > 0
    with pytest.raises(OrtRefusedError, match="W8A4.*refused to load"):
        ort_quantize_static(tiny["fp32"], tiny["tmp"] / "tiny_w8a4.onnx", tiny["batches"][:16], activation_bits=4)
    # Distribution keeps Relu/Clip (its ranges are symmetric); ORT's Relu/Clip fusion rejects uint4 zero points.
    with pytest.raises(OrtRefusedError, match="W4A4 Distribution.*y_zero_point"):
        ort_quantize_static(
            tiny["fp32"], tiny["tmp"] / "tiny_dist_w4a4.onnx", tiny["batches"][:16], method="Distribution",
            weight_bits=4, activation_bits=4,
        )
    with pytest.raises(ValueError, match="W2A8"):
        ort_quantize_static(tiny["fp32"], tiny["tmp"] / "x.onnx", tiny["batches"][:4], weight_bits=2)


def test_distribution_keeps_relu_clip(tiny):
    """ORT's Distribution ranges are symmetric, so the Relu/Clip that ORT deletes by default must stay."""
    sqnr = {}
    for keep in (True, False):
        qpath = ort_quantize_static(
            tiny["fp32"], tiny["tmp"] / f"dist_{keep}.onnx", tiny["batches"][:16], method="Distribution",
            extra_options=None if keep else {"QDQKeepRemovableActivations": False},
        )
        ops = count_ops(qpath)
        assert (ops.get("Relu", 0) + ops.get("Clip", 0) == 3) == keep
        sqnr[keep] = sqnr_db(tiny["ref"], OrtRunner(qpath, threads=1)(tiny["evals"]))
    assert sqnr[True] > 20 and sqnr[False] < 10, sqnr


def test_calibration_cache_is_reused_across_bit_widths(tiny):
    """The script calibrates once per method and quantizes W8A8/W4A8/W4A4 from ORT's range cache."""
    tmp, batches = tiny["tmp"], tiny["batches"][:16]
    cache = tmp / "percentile_ranges.json"
    _, first = ort_quantize_static_with_stats(
        tiny["fp32"], tmp / "c_w8a8.onnx", batches, method="Percentile", calibration_cache_path=cache
    )
    cached, second = ort_quantize_static_with_stats(
        tiny["fp32"], tmp / "c_w4a8.onnx", batches, method="Percentile", weight_bits=4, calibration_cache_path=cache
    )
    fresh = ort_quantize_static(tiny["fp32"], tmp / "f_w4a8.onnx", batches, method="Percentile", weight_bits=4)
    assert first.calibrated and not second.calibrated
    assert first.peak_rss_mb >= first.rss_before_mb > 0
    init = lambda p: {t.name: onnx.numpy_helper.to_array(t) for t in onnx.load(str(p)).graph.initializer}
    a, b = init(cached), init(fresh)
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_efficientnet_lite0_w8a8_percentile(tmp_path):
    """The real protocol data: EfficientNet-Lite0, 256 calibration views, 512 evaluation views."""
    from tvmptq.data.vision import make_views, preprocess_imagenet
    from tvmptq.eval.metrics import classification_fidelity
    from tvmptq.zoo import get_model

    model = get_model("efficientnet_lite0").build().eval()
    calib_u8, eval_u8 = make_views()
    calib, evals = preprocess_imagenet(calib_u8), preprocess_imagenet(eval_u8)
    with torch.no_grad():
        ref = torch.cat([model(torch.from_numpy(evals[i : i + 64])) for i in range(0, len(evals), 64)]).numpy()
    fp32 = export_onnx(model, (torch.from_numpy(calib[:1]),), tmp_path / "effnet.onnx", ["input"])
    qpath = ort_quantize_static(
        fp32, tmp_path / "effnet_w8a8.onnx", [{"input": calib[i : i + 1]} for i in range(len(calib))],
        method="Percentile",
    )
    fidelity = classification_fidelity(ref, OrtRunner(qpath)(evals))
    # Protocol note: ORT 1.32 W8A8 Percentile gives 87.1 % top-1 agreement.
    assert fidelity["top1_agreement"] == pytest.approx(87.1, abs=1.5), fidelity
