"""Fully-integer TFLite export (tvmptq/export/tflite.py), LiteRT against the NumPy reference
(targets/npu/litert.py) and Arm Vela for the Ethos-U NPUs (targets/npu/ethos_u.py), issue 22."""
import numpy as np
import pytest
import tflite
import torch
import torch.nn.functional as F
from torch import nn

import tvmptq
from targets.npu.ethos_u import compile_vela, npu_targets
from targets.npu.litert import attribute, compare_outputs
from tvmptq.export.tflite import TFLiteExportError, export_tflite
from tvmptq.zoo import from_module


class AllOps(nn.Module):
    """conv (stride 2, padding TFLite's SAME cannot express: explicit PAD), depthwise, 1x1, add,
    zero-point pad, concat of two grids, mean, flatten, linear; ReLU6 and ReLU fused."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.pw = nn.Conv2d(8, 8, 1)
        self.b = nn.Conv2d(8, 4, 3)
        self.fc = nn.Linear(12, 5)

    def forward(self, x):
        y = torch.clamp(self.stem(x), 0, 6)
        a = y + self.pw(F.relu(self.dw(y)))
        c = torch.cat([self.b(F.pad(a, (1, 1, 1, 1))), a], dim=1)
        return self.fc(torch.flatten(c.mean(dim=(2, 3), keepdim=True), 1))


@pytest.fixture(scope="module")
def allops():
    torch.manual_seed(0)
    x = torch.randn(64, 3, 16, 16)
    model = from_module(AllOps().eval(), (x[:2],))
    qm = tvmptq.quantize(model, (x.numpy(),), tvmptq.make_config(8, 8, "minmax"), progress=False)
    return model, qm, x.numpy()


def _read(content):
    m = tflite.Model.GetRootAs(content, 0)
    g = m.Subgraphs(0)
    codes = [m.OperatorCodes(i).BuiltinCode() for i in range(m.OperatorCodesLength())]
    names = {v: k for k, v in vars(tflite.BuiltinOperator).items() if not k.startswith("_")}
    ops = [names[codes[g.Operators(i).OpcodeIndex()]] for i in range(g.OperatorsLength())]
    return m, g, ops


def test_export_every_op_kind(allops, tmp_path):
    _, qm, _ = allops
    ex = export_tflite(qm.plan, tmp_path / "allops.tflite")
    m, g, ops = _read(ex.path.read_bytes())
    for op in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "ADD", "MEAN", "CONCATENATION", "PAD", "RESHAPE"):
        assert op in ops, (op, ops)
    assert ops.count("PAD") == 2  # the stride-2 stem and the model's own F.pad
    tensors = {g.Tensors(i).Name().decode(): g.Tensors(i) for i in range(g.TensorsLength())}
    for lp in qm.plan.layers:
        if lp.kind not in ("conv2d", "linear"):
            continue
        w, b = tensors[f"{lp.name}/weight"], tensors[f"{lp.name}/bias"]
        assert w.Type() == tflite.TensorType.INT8 and b.Type() == tflite.TensorType.INT32
        assert w.Quantization().ScaleLength() == len(lp.arrays["bias"])  # per output channel
        raw = m.Buffers(w.Buffer()).DataAsNumpy().view(np.int8)
        assert sorted(raw.tolist()) == sorted(lp.arrays["weight"].astype(np.int8).ravel().tolist())
        raw_b = m.Buffers(b.Buffer()).DataAsNumpy().view(np.int32)
        assert np.array_equal(raw_b, lp.arrays["bias"].astype(np.int32))
    # zero-point padding: the F.pad output keeps the grid of its input (a nonzero zero point)
    pad_out = tensors[ex.value_tensors["pad"]]
    t = qm.plan.tensors[qm.plan.layer("add").output]
    assert t.zero_point != 0 and pad_out.Quantization().ZeroPoint(0) == t.zero_point - 128
    assert ex.multiplier_mismatch == {}  # the baseline's multipliers come back exactly


def test_litert_round_trip_every_difference_explained(allops):
    _, qm, x = allops
    ex = export_tflite(qm.plan)
    rows = {r.resolver: r for r in compare_outputs(qm.plan, ex, x[:16])}
    ref = rows["BUILTIN_REF"]
    assert ref.max_abs <= 1 and ref.top1_equal == 16
    for d in attribute(qm.plan, ex, x[:16]):
        assert d.max_abs <= 1, d
        if d.explained is None:
            assert d.differ == 0, d  # add, concat: no formula checked, so none may differ
        else:
            assert d.explained == d.differ, d  # TFLite's double rounding reproduces each one


def test_digits_litert_and_vela(digits_cli_plan, tmp_path):
    plan = tvmptq.QuantPlan.load(digits_cli_plan) if hasattr(tvmptq, "QuantPlan") else None
    if plan is None:
        from tvmptq.quant.plan import QuantPlan
        plan = QuantPlan.load(digits_cli_plan)
    ex = export_tflite(plan, tmp_path / "digits.tflite")
    xs = tvmptq.get_set("digits").evaluation()[0][:32]
    ref = compare_outputs(plan, ex, xs, resolvers=("BUILTIN_REF",))[0]
    assert ref.top1_equal >= 31 and ref.max_abs <= 2
    for d in attribute(plan, ex, xs):
        assert d.explained is None and d.differ == 0 or d.explained == d.differ, d
    names = [t.name for t in npu_targets()]
    assert names == ["ethos-u55-128", "ethos-u65-256", "ethos-u85-256"]
    for t in npu_targets():
        e = compile_vela(ex.path, t, tmp_path / t.name)
        assert e.cpu_ops == () and e.npu_ops > 0 and e.cycles_total > 0
        assert e.inference_time_s == pytest.approx(e.cycles_total / e.core_clock_hz, rel=1e-3)


def test_vela_names_ops_left_on_the_cpu(digits_cli_plan, tmp_path):
    from tvmptq.quant.plan import QuantPlan
    ex = export_tflite(QuantPlan.load(digits_cli_plan), tmp_path / "d2.tflite", batch=2)
    e = compile_vela(ex.path, "ethos-u55-128", tmp_path / "u55")
    assert any("adaptive_avg_pool2d" in op for op in e.cpu_ops), e.cpu_ops  # MEAN: batch must be 1


class SoftmaxHead(nn.Module):
    """A linear + softmax: the softmax is a float island, which a fully-integer TFLite model cannot hold."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(6, 4)

    def forward(self, x):
        return torch.softmax(self.fc(x), -1)


def quantized_softmax_head():
    """SoftmaxHead quantized W8A8 (seeded): the export must refuse it, naming the softmax."""
    torch.manual_seed(0)
    xs = torch.randn(16, 6)
    return tvmptq.quantize(from_module(SoftmaxHead().eval(), (xs[:2],)), (xs.numpy(),),
                           tvmptq.make_config(8, 8), progress=False)


def test_refusals_name_the_problem(allops):
    model, _, x = allops
    low = tvmptq.quantize(model, (x,), tvmptq.make_config(8, 4, "minmax"), progress=False)
    with pytest.raises(TFLiteExportError, match=r"tensor '\w+' has 4-bit activations"):
        export_tflite(low.plan)

    qm = quantized_softmax_head()
    with pytest.raises(TFLiteExportError, match="softmax"):
        export_tflite(qm.plan)
