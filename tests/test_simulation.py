"""The PyTorch simulation equals an independent NumPy integer computation from the plan."""
import numpy as np
import pytest
import torch
from torch import nn

import tvmptq
from tvmptq.errors import UnsupportedOpError
from tvmptq.quant.fixedpoint import requantize_np
from tvmptq.quant.plan import QuantPlan
from tvmptq.zoo import from_module


class TinyNet(nn.Module):
    """conv-BN-ReLU6, depthwise conv-ReLU, 1x1 conv + residual add, avg pool, linear."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU6())
        self.dw = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.ReLU())
        self.pw = nn.Conv2d(8, 8, 1)
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        y = self.stem(x)
        y = torch.relu(self.pw(self.dw(y)) + y)
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(y, 1), 1))


def _tiny():
    torch.manual_seed(0)
    net = TinyNet().eval()
    with torch.no_grad():  # non-trivial batch-norm statistics
        net.stem[1].running_mean.uniform_(-0.5, 0.5)
        net.stem[1].running_var.uniform_(0.5, 2.0)
    x = torch.randn(40, 3, 16, 16)
    return from_module(net, (x[:1],)), x.numpy()


# --- an independent integer executor for the ops of TinyNet, written from the plan only -----------
def _conv_int(x, w, stride, pad, groups):
    n, c, h, wd = x.shape
    o, cg, kh, kw = w.shape
    x = np.pad(x, ((0, 0), (0, 0), (pad[0], pad[0]), (pad[1], pad[1])))
    ho = (h + 2 * pad[0] - kh) // stride[0] + 1
    wo = (wd + 2 * pad[1] - kw) // stride[1] + 1
    out = np.zeros((n, o, ho, wo), dtype=np.int64)
    og = o // groups
    for g in range(groups):
        xs = x[:, g * cg:(g + 1) * cg]
        for i in range(kh):
            for j in range(kw):
                patch = xs[:, :, i:i + stride[0] * ho:stride[0], j:j + stride[1] * wo:stride[1]]
                out[:, g * og:(g + 1) * og] += np.einsum("nchw,oc->nohw", patch, w[g * og:(g + 1) * og, :, i, j].astype(np.int64))
    return out


def numpy_integer_run(plan: QuantPlan, x: np.ndarray) -> np.ndarray:
    t_in = plan.tensors[plan.inputs[0]]
    q = {plan.inputs[0]: np.clip(np.round(x.astype(np.float32) / np.float32(t_in.scale)) + t_in.zero_point,
                                 t_in.qmin, t_in.qmax).astype(np.int64)}
    for lp in plan.layers:
        ins = [q[i] - plan.tensors[i].zero_point for i in lp.inputs]
        for k, ops in enumerate(lp.attrs["input_ops"]):
            for op in ops:
                assert op["op"] == "flatten.using_ints"
                ins[k] = ins[k].reshape(ins[k].shape[0], -1)
        a, out = lp.arrays, plan.tensors[lp.output]
        if lp.kind == "conv2d":
            acc = _conv_int(ins[0], a["weight"], lp.attrs["stride"], lp.attrs["padding"], lp.attrs["groups"])
            y = requantize_np(acc + a["bias"][None, :, None, None], a["multiplier"][None, :, None, None],
                              a["shift"][None, :, None, None])
        elif lp.kind == "linear":
            acc = ins[0] @ a["weight"].astype(np.int64).T + a["bias"]
            y = requantize_np(acc, a["multiplier"], a["shift"])
        elif lp.kind == "add":
            y = requantize_np(ins[0] * a["multiplier"][0] + ins[1] * a["multiplier"][1], 1, a["shift"][0])
        elif lp.kind == "mean":
            y = requantize_np(ins[0].sum(axis=(2, 3), keepdims=True), a["multiplier"], a["shift"])
        else:
            raise AssertionError(lp.kind)
        q[lp.output] = np.clip(y + out.zero_point, *lp.clip)
    last = plan.tensors[plan.layers[-1].output]
    return (q[last.name] - last.zero_point) * np.float32(last.scale)


@pytest.mark.parametrize("wbits,abits,symmetric", [(8, 8, False), (4, 4, False), (2, 4, False), (6, 6, True)])
def test_simulation_is_bit_exact_against_numpy(wbits, abits, symmetric):
    model, x = _tiny()
    qm = tvmptq.quantize(model, (x[:32],), tvmptq.make_config(wbits, abits, "mse", symmetric=symmetric),
                         progress=False)
    sim = qm.runner()(x[32:])
    ref = numpy_integer_run(qm.plan, x[32:])
    assert np.array_equal(sim, ref.astype(np.float32))
    assert len(qm.plan.layers) == 6 and not qm.plan.float_islands


def test_every_tensor_lies_on_its_grid():
    model, x = _tiny()
    qm = tvmptq.quantize(model, (x[:32],), tvmptq.make_config(4, 4, "percentile"), progress=False)
    seen = {}
    for mod in qm.simulated.modules():
        if hasattr(mod, "tout"):
            mod.register_forward_hook(lambda m, i, o: seen.__setitem__(m.tout.name, (m.tout, m.lp.clip, o)))
    qm.simulated(torch.from_numpy(x[32:]))
    for name, (t, clip, out) in seen.items():
        q = out.double() / t.scale + t.zero_point
        assert torch.allclose(q, q.round(), atol=1e-3), name
        assert q.min() >= clip[0] - 1e-3 and q.max() <= clip[1] + 1e-3 and clip[1] - clip[0] <= 2 ** t.bits - 1


def test_weights_and_bias_follow_documented_grid():
    model, x = _tiny()
    plan = tvmptq.quantize(model, (x[:32],), tvmptq.make_config(2, 8), progress=False).plan
    for lp in plan.layers:
        if "weight" in lp.arrays:
            assert set(np.unique(lp.arrays["weight"])) <= {-1, 0, 1}
            assert lp.arrays["bias"].dtype == np.int32 and lp.weight_bits == 2


def test_plan_roundtrip_gives_identical_simulation(tmp_path):
    model, x = _tiny()
    qm = tvmptq.quantize(model, (x[:32],), tvmptq.make_config(4, 8), progress=False)
    path = qm.plan.save(tmp_path / "plan.npz")
    again = tvmptq.from_plan(model, QuantPlan.load(path))
    assert np.array_equal(qm.runner()(x[32:]), again.runner()(x[32:]))


def test_overrides_first_last_and_float_layer():
    model, x = _tiny()
    cfg = tvmptq.make_config(4, 4, first_last_8bit=True, overrides={"conv2d_2": {"keep_float": True}})
    plan = tvmptq.quantize(model, (x[:32],), cfg, progress=False).plan
    kernels = [lp for lp in plan.layers if lp.kind in ("conv2d", "linear")]
    assert kernels[0].weight_bits == 8 and kernels[-1].weight_bits == 8
    assert plan.tensors[kernels[0].inputs[0]].bits == 8
    assert plan.float_layers == ["conv2d_2"]
    assert plan.tensors[kernels[1].inputs[0]].bits == 4


def test_statistics_reused_across_configs_match_fresh_calibration():
    from tvmptq.eval.sets import batches
    from tvmptq.quant.calibrate import build_plan, collect_statistics
    model, x = _tiny()
    qm = tvmptq.quantize(model, (x[:32],), tvmptq.make_config(4, 8, "mse"), progress=False)
    obs, n = collect_statistics(qm.graph, batches((x[:32],), 8), progress=False)
    assert n == 32
    plan = build_plan(qm.graph, obs, tvmptq.make_config(4, 8, "mse"), model.name)
    for name, t in plan.tensors.items():  # batch size must not change the statistics much
        assert t.scale == pytest.approx(qm.plan.tensors[name].scale, rel=0.02)


def test_unsupported_op_is_named():
    class Sorts(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 2, 1)

        def forward(self, x):
            return torch.cumsum(self.conv(x), dim=1)
    model = from_module(Sorts(), (torch.randn(1, 1, 4, 4),))
    with pytest.raises(UnsupportedOpError, match="cumsum"):
        tvmptq.prepare(model)


def test_digits_w8a8_keeps_accuracy(digits_graph):
    model, graph = digits_graph
    s = tvmptq.get_set("digits")
    qm = tvmptq.quantize(model, s.calibration(), tvmptq.make_config(8, 8, "minmax"), graph=graph, progress=False)
    ref = tvmptq.fp32_outputs(model, s.evaluation(), graph, progress=False)
    _, m = tvmptq.evaluate(qm.runner(), s, ref, progress=False)
    fp = tvmptq.evaluate(tvmptq.eval.sets.torch_runner(graph.gm), s, progress=False)[1]["accuracy"]
    assert m["top1_agreement"] >= 99.0 and abs(m["accuracy"] - fp) <= 1.0
