"""End to end: quantize a USER ONNX file (exported here from a seeded CNN) through the CLI and the
Python API, and check the W8A8 simulation against the FP32 ONNX model run by ONNX Runtime.

The CNN has the patterns real vision models have: conv-BN-ReLU, depthwise conv with ReLU6, a
residual add, global average pooling and a linear head. It is exported the way users export
(``torch.onnx.export(dynamo=True, opset_version=18)``, static batch 1), so the ONNX graph goes
through onnx2torch, our converters, torch.export and the layer classifier.

Two heads are tested: ``flatten`` (``torch.flatten(pool(x), 1)``, which the exporter writes as a
Reshape to the constant shape [1, 16]: the batch-1 constant must not stop torch.export's dynamic
batch) and ``mean`` (``x.mean((2, 3))``, no Reshape).
"""
import numpy as np
import pytest
import torch
from torch import nn

import tvmptq
from tvmptq.cli import main
from tvmptq.peers.onnxruntime_peer import OrtRunner, export_onnx

IMAGE = (3, 16, 16)
SAMPLES = 64



class UserCNN(nn.Module):
    def __init__(self, head: str):
        super().__init__()
        self.head_kind = head
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.depthwise = nn.Sequential(
            nn.Conv2d(16, 16, 3, padding=1, groups=16, bias=False), nn.BatchNorm2d(16), nn.ReLU6())
        self.project = nn.Sequential(nn.Conv2d(16, 16, 1, bias=False), nn.BatchNorm2d(16))
        self.head = nn.Linear(16, 10)

    def forward(self, x):
        x = self.stem(x)
        x = torch.relu(x + self.project(self.depthwise(x)))  # residual add
        if self.head_kind == "flatten":
            x = torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1)
        else:
            x = x.mean((2, 3))
        return self.head(x)


def _seeded_model(head: str) -> UserCNN:
    torch.manual_seed(0)
    model = UserCNN(head).eval()
    with torch.no_grad():  # non-trivial batch-norm statistics, so BN folding matters
        for bn in (m for m in model.modules() if isinstance(m, nn.BatchNorm2d)):
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.2, 0.2)
    return model


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    calib = rng.standard_normal((SAMPLES, *IMAGE)).astype(np.float32)
    evals = rng.standard_normal((SAMPLES, *IMAGE)).astype(np.float32)
    return calib, evals


@pytest.fixture(scope="module")
def exported(tmp_path_factory, data):
    """head -> (path of the FP32 ONNX file, its ONNX Runtime logits on the evaluation samples)."""
    calib, evals = data
    tmp = tmp_path_factory.mktemp("user_onnx")
    out = {}
    for head in ("flatten", "mean"):
        model = _seeded_model(head)
        # preprocess=False: exactly torch.onnx.export(dynamo=True, opset_version=18), no ORT rewrites.
        path = export_onnx(model, (torch.from_numpy(calib[:1]),), tmp / f"user_{head}.onnx",
                           input_names=["input"], preprocess=False)
        ref = OrtRunner(path)(evals)
        with torch.no_grad():  # the export itself is faithful
            np.testing.assert_allclose(ref, model(torch.from_numpy(evals)).numpy(), rtol=1e-4, atol=1e-4)
        out[head] = (path, ref)
    return out


@pytest.fixture(scope="module")
def calib_npy(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("calib") / "calib.npy"
    np.save(path, data[0])
    return path


def sqnr_db(ref: np.ndarray, out: np.ndarray) -> float:
    return float(10 * np.log10(np.sum(ref.astype(np.float64) ** 2) / np.sum((ref - out).astype(np.float64) ** 2)))


HEADS = ["flatten", "mean"]


@pytest.mark.parametrize("head", HEADS)
def test_cli_quantizes_user_onnx(capsys, tmp_path, exported, calib_npy, head):
    path, _ = exported[head]
    plan_path = tmp_path / "plan.npz"
    rc = main(["quantize", str(path), "--calib", str(calib_npy), "--wbits", "8", "--abits", "8",
               "--out", str(plan_path), "--observer", "minmax", "--report", "0"])
    out, err = capsys.readouterr()
    assert rc == 0, err[-2000:]
    assert f"quantized user_{head} at W8A8" in out
    assert f"calibration samples {SAMPLES}" in out
    assert plan_path.is_file()
    plan = tvmptq.QuantPlan.load(plan_path)
    assert plan.model == f"user_{head}"
    kinds = {layer.name.rstrip("_0123456789") for layer in plan.layers}
    assert {"conv2d", "add", "linear"} <= kinds, kinds


@pytest.mark.parametrize("head", HEADS)
def test_api_w8a8_matches_onnxruntime_fp32(exported, data, head):
    path, ref = exported[head]
    calib, evals = data
    model = tvmptq.load(str(path))
    qm = tvmptq.quantize(model, (calib,), tvmptq.make_config(8, 8, "minmax"), progress=False)
    assert not qm.plan.float_layers
    out = qm.runner()(evals)
    assert out.shape == ref.shape == (SAMPLES, 10)
    agreement = float(np.mean(out.argmax(1) == ref.argmax(1)))
    assert agreement >= 0.9, agreement
    assert sqnr_db(ref, out) > 20.0, sqnr_db(ref, out)

    # The saved plan rebuilds the same simulation.
    qm2 = tvmptq.from_plan(model, qm.plan, qm.graph)
    np.testing.assert_allclose(qm2.runner()(evals[:8]), out[:8], rtol=0, atol=1e-5)


def test_cli_dynamic_batch_onnx_needs_no_flag_and_takes_input_shape(capsys, tmp_path, data, calib_npy):
    """A dynamic-batch export (flatten head): exit 0 without --input-shape (a dynamic batch needs no
    flag) and with it."""
    import contextlib
    import io

    model = _seeded_model("flatten")
    path = tmp_path / "user_dynamic.onnx"
    with torch.no_grad(), contextlib.redirect_stdout(io.StringIO()):
        torch.onnx.export(model, (torch.from_numpy(data[0][:2]),), str(path), input_names=["input"],
                          output_names=["output"], opset_version=18, dynamo=True, external_data=False,
                          dynamic_shapes=({0: torch.export.Dim("batch")},))
    common = ["quantize", str(path), "--calib", str(calib_npy), "--observer", "minmax", "--report", "0"]
    rc = main(common)
    out, err = capsys.readouterr()
    assert rc == 0, err[-2000:]
    assert "quantized user_dynamic at W8A8" in out

    rc = main(common + ["--input-shape", "input=1,3,16,16", "--out", str(tmp_path / "plan.npz")])
    out, err = capsys.readouterr()
    assert rc == 0, err[-2000:]
    assert "quantized user_dynamic at W8A8" in out
    assert (tmp_path / "plan.npz").is_file()


class UpsampleCNN(nn.Module):
    """A U-Net-like skip: max-pool, nearest x2 upsample (ONNX Resize), add."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, padding=1)
        self.head = nn.Linear(16, 10)

    def forward(self, x):
        x = torch.relu(self.conv(x))
        x = x + nn.functional.interpolate(nn.functional.max_pool2d(x, 2), scale_factor=2, mode="nearest")
        return self.head(x.mean((2, 3)))


def test_api_user_onnx_with_resize(tmp_path, data):
    calib, evals = data
    torch.manual_seed(0)
    path = export_onnx(UpsampleCNN().eval(), (torch.from_numpy(calib[:1]),), tmp_path / "upsample.onnx",
                       input_names=["input"], preprocess=False)
    ref = OrtRunner(path)(evals)
    model = tvmptq.load(str(path))
    qm = tvmptq.quantize(model, (calib,), tvmptq.make_config(8, 8, "minmax"), progress=False)
    out = qm.runner()(evals)
    assert float(np.mean(out.argmax(1) == ref.argmax(1))) >= 0.9
    assert sqnr_db(ref, out) > 20.0


@pytest.mark.parametrize("method", ["cwac", "qwt"])
def test_cli_compensation_methods_on_user_onnx(capsys, tmp_path, exported, calib_npy, method):
    """`--method cwac|qwt` on a user's ONNX file: the plan records the fit, and CWAC keeps the
    baseline's arrays except requantize parameters (it folds in)."""
    path, _ = exported["mean"]
    plans = {}
    for m in ("baseline", method):
        plans[m] = tmp_path / f"{m}.npz"
        rc = main(["quantize", str(path), "--calib", str(calib_npy), "--wbits", "4", "--abits", "4",
                   "--out", str(plans[m]), "--observer", "minmax", "--report", "0", "--method", m,
                   "--method-samples", "32"])
        out, err = capsys.readouterr()
        assert rc == 0, err[-2000:]
    base, fitted = (tvmptq.QuantPlan.load(plans[m]) for m in ("baseline", method))
    assert fitted.config["method"] == method
    if method == "cwac":
        assert fitted.stats["cwac"]["non_identity_channels"] > 0
        assert [set(lp.arrays) for lp in base.layers] == [set(lp.arrays) for lp in fitted.layers]
    else:
        assert fitted.stats["qwt"]["blocks"], "the residual block was not found"
        assert "qwt_v1" in {lp.attrs.get("float_branch", {}).get("kind") for lp in fitted.layers} \
            or not any(b["enabled"] for b in fitted.stats["qwt"]["blocks"].values())
