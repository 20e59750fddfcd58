"""ONNX route: Relax's ONNX frontend import lowers with the same passes as the torch.export import."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import tvmptq

tvm = pytest.importorskip("tvm")
import relay_passes as rp  # noqa: E402  (needs tvm)
from targets.build import compile_integer  # noqa: E402
from tvmptq.peers.onnxruntime_peer import export_onnx  # noqa: E402


class ClipNet(nn.Module):
    """ReLU6, a two-sided clamp and a one-sided clamp: ONNX Clip with tensor bounds."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 4, 1)

    def forward(self, x):
        y = torch.clamp(F.relu6(self.a(x)) - 1.0, max=2.5)
        return torch.clamp(self.b(y), -1.0, 1.5)


def test_clip_from_tir_restores_one_clip_op(tmp_path):
    torch.manual_seed(0)
    x = torch.randn(2, 3, 8, 8)
    path = export_onnx(ClipNet().eval(), (x,), tmp_path / "clip.onnx", ["input"], preprocess=False)
    mod = rp.Canonicalize()(rp.import_onnx(path))
    counts = rp.op_counts(mod)
    assert counts["clip -> float32"] == 3 and not any(k.startswith("call_tir") for k in counts), counts
    bounds = sorted((float(b.value.args[1].value), float(b.value.args[2].value))
                    for b in mod["main"].body.blocks[0].bindings if rp.match.op_name(b.value) == "relax.clip")
    assert bounds == [(float("-inf"), 2.5), (-1.0, 1.5), (0.0, 6.0)]
    np.testing.assert_allclose(compile_integer(mod)(x.numpy()), _onnx_reference(path, x.numpy()), atol=1e-5)


def _onnx_reference(path, x):
    import onnxruntime as ort
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]


# --- EfficientNet-Lite0 through ONNX ---------------------------------------------------------------
@pytest.fixture(scope="module")
def effnet_onnx(tmp_path_factory):
    model = tvmptq.load("efficientnet_lite0")
    path = export_onnx(model.build(), model.example_inputs(1), tmp_path_factory.mktemp("effnet") / "lite0.onnx",
                       ["input"], preprocess=False)
    photos = tvmptq.get_set("photos")
    onnx_model = tvmptq.load(str(path))  # the plan is made on the onnx2torch module
    config = tvmptq.make_config(8, 8, bias_correction=False)  # biases do not matter to the lowering
    qm = tvmptq.quantize(onnx_model, tuple(a[:4] for a in photos.calibration()), config, progress=False)
    x = photos.evaluation()[0][:2]
    return model, path, qm, x, qm.runner()(x)


def test_efficientnet_onnx_route_equals_simulation(effnet_onnx):
    _, path, qm, x, ref = effnet_onnx
    mod = rp.lowering_passes(qm.plan)(rp.import_onnx(path))  # static batch 1, as exported
    counts = rp.op_counts(mod)
    assert counts["nn.conv2d -> int32"] == 49 and counts["matmul -> int32"] == 1 and not rp.float_ops(mod)
    assert np.array_equal(compile_integer(mod)(x), ref)  # identical dequantized floats, hence integers


def test_efficientnet_same_plan_through_torch_export(effnet_onnx):
    """The ONNX file's plan also lowers on the zoo model's torch.export import, to the same integers:
    both imports list the same layers; every number comes from the plan."""
    model, _, qm, x, ref = effnet_onnx
    mod = rp.lower(model.build(), model.example_inputs(1), qm.plan)
    assert np.array_equal(compile_integer(mod)(x), ref)
