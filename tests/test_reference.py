"""The NumPy reference executor (written from the plan alone) equals the PyTorch simulation.

Integer-only models must agree bit for bit. Models with float islands (MiniLM: LayerNorm, softmax,
GELU) compute those in float32 in both, where NumPy and PyTorch may differ in the last ulp and
so, rarely, flip the rounding of a quantized value: there we measure how many integers agree.
"""
import copy

import numpy as np
import pytest
import threadpoolctl
import torch
from torch import nn

import tvmptq
from tvmptq.eval.sets import batches
from tvmptq.quant.calibrate import build_plan, collect_statistics
from tvmptq.quant.fixedpoint import requantize_np
from tvmptq.quant.plan import QuantPlan
from tvmptq.quant.simulate import simulate
from tvmptq.reference import QValue, ops, run_plan, run_plan_values
from tvmptq.zoo import from_module


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # Multi-threaded OpenBLAS and torch spin badly on a busy 2-core machine (up to 10x slower).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with threadpoolctl.threadpool_limits(1, user_api="blas"):
            yield
    finally:
        torch.set_num_threads(threads)


def simulated_integers(qm, inputs) -> dict[str, np.ndarray]:
    """Grid values q of every quantized tensor in the PyTorch simulation (forward hooks)."""
    seen, hooks = {}, []
    for mod in qm.simulated.modules():
        t = getattr(mod, "tout", None) or getattr(mod, "t", None)
        if t is not None:
            hooks.append(mod.register_forward_hook(lambda m, i, o, t=t: seen.__setitem__(
                t.name, (torch.round(o.double() / t.scale) + t.zero_point).long().numpy())))
    try:
        with torch.no_grad():
            out = qm.simulated(*(torch.from_numpy(np.array(a)) for a in inputs))
    finally:
        for h in hooks:
            h.remove()
    seen["__output__"] = (out[0] if isinstance(out, (tuple, list)) else out).float().numpy()
    return seen


def run_plan_output(values: dict) -> np.ndarray:
    out = values["__output__"]
    out = out[0] if isinstance(out, (tuple, list)) else out
    return out.dequantize() if isinstance(out, QValue) else out


def integer_agreement(qm, inputs):
    """Fraction of identical integers over all quantized tensors, the first tensor that differs,
    and the model outputs of the simulation and of the reference."""
    sim, ref = simulated_integers(qm, inputs), run_plan_values(qm.plan, *inputs)
    same = total = 0
    first = None
    for step in qm.plan.program:
        name = step.get("name")
        if name in sim and isinstance(ref.get(name), QValue):
            eq = sim[name] == ref[name].q
            same, total = same + int(eq.sum()), total + eq.size
            if first is None and not eq.all():
                first = f"{name}: {int((~eq).sum())} of {eq.size} differ"
    assert total > 0
    return same / total, first, sim["__output__"], run_plan_output(ref)


def assert_bit_exact(qm, inputs, batch_size=None):
    sim = qm.runner()(*inputs)
    ref = run_plan(qm.plan, *inputs, batch_size=batch_size)
    if not np.array_equal(sim, ref):
        frac, first, _, _ = integer_agreement(qm, tuple(a[:4] for a in inputs))
        pytest.fail(f"reference != simulation: {np.mean(sim != ref):.4%} of outputs differ; "
                    f"integer agreement {frac:.6f}, first difference {first}")
    return ref


# --- digits ResNet: W8A8, W4A4, W2A4, asymmetric and symmetric activations ------------------
@pytest.fixture(scope="module")
def digits_data():
    s = tvmptq.get_set("digits")
    return s.calibration(), s.evaluation()


@pytest.mark.parametrize("symmetric", [False, True], ids=["asym", "sym"])
@pytest.mark.parametrize("wbits,abits", [(8, 8), (4, 4), (2, 4)])
def test_digits_bit_exact(digits_graph, digits_data, wbits, abits, symmetric):
    model, graph = digits_graph
    (calib,), (evaluation,) = digits_data
    qm = tvmptq.quantize(model, (calib,), tvmptq.make_config(wbits, abits, "mse", symmetric=symmetric),
                         graph=graph, progress=False)
    assert_bit_exact(qm, (evaluation,))


def test_int64_only_accumulation_agrees(digits_graph, digits_data, monkeypatch):
    """The float32/float64 BLAS shortcut (used when a bound proves it exact) changes nothing."""
    model, graph = digits_graph
    (calib,), (evaluation,) = digits_data
    qm = tvmptq.quantize(model, (calib,), tvmptq.make_config(8, 8), graph=graph, progress=False)
    fast = run_plan(qm.plan, evaluation[:64])
    monkeypatch.setattr(ops, "INT64_ONLY", True)
    assert np.array_equal(fast, run_plan(qm.plan, evaluation[:64]))


def test_requantize_matches_fixedpoint_definition():
    rng = np.random.default_rng(0)
    acc = rng.integers(-2 ** 31, 2 ** 31, 10_000)
    m, k = rng.integers(2 ** 30, 2 ** 31, 10_000), rng.integers(1, 40, 10_000)
    assert np.array_equal(ops.requantize(acc, m, k), requantize_np(acc, m, k))
    assert ops.requantize(np.array([-3, -1, 1, 3]), 1, 1).tolist() == [-1, 0, 1, 2]  # half up


# --- integer pad with a non-zero zero point, max pooling, input_ops -------------------------
class PadNet(nn.Module):
    """conv (no activation: signed output, zero point != 0) -> pad -> conv -> max pool -> linear."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 6, 3)
        self.b = nn.Conv2d(6, 4, 3, stride=2, dilation=1, groups=2)
        self.fc = nn.Linear(4 * 3 * 4, 5)

    def forward(self, x):
        y = nn.functional.pad(self.a(x), (1, 2, 0, 1))
        y = nn.functional.max_pool2d(self.b(y), 2, 2, padding=1)
        return self.fc(torch.flatten(y, 1))


def test_integer_pad_uses_zero_point():
    torch.manual_seed(0)
    x = torch.randn(24, 3, 12, 12)
    model = from_module(PadNet().eval(), (x[:1],))
    qm = tvmptq.quantize(model, (x[:16].numpy(),), tvmptq.make_config(8, 8), progress=False)
    pads = [st for st in qm.plan.program if st["kind"] == "op" and st["op"] == "pad.default"]
    assert pads and pads[0]["integer"]
    assert qm.plan.tensors[pads[0]["args"][0]["value"]].zero_point != 0
    assert_bit_exact(qm, (x[16:].numpy(),))


# --- EfficientNet-Lite0 ------------------------------------------------------------------
@pytest.fixture(scope="module")
def effnet():
    """The model, its graph, calibration statistics (32 views, shared by all configs) and views."""
    from tvmptq.data import calibration_views, evaluation_views, preprocess_imagenet

    model = tvmptq.load("efficientnet_lite0")
    graph = tvmptq.prepare(model)
    # The "photos" set's arrays, preprocessed only as far as needed (per view, as get_set does).
    calib = preprocess_imagenet(calibration_views()[:32])
    observers, _ = collect_statistics(graph, batches((calib,), 8), progress=False)
    return model, graph, observers, preprocess_imagenet(evaluation_views()[:32])


def _effnet_check(effnet, wbits, abits, views):
    model, graph, observers, evaluation = effnet
    # tvmptq.quantize = collect_statistics + build_plan + simulate. Min-max weight scales: the MSE
    # weight search costs seconds and changes nothing the executors do with the integer weights.
    plan = build_plan(graph, observers, tvmptq.make_config(wbits, abits, weight_rule="minmax"), model.name)
    qm = tvmptq.QuantizedModel(model, graph, plan, simulate(graph, plan))
    assert not plan.float_islands
    assert_bit_exact(qm, (evaluation[:views],), batch_size=8)


@pytest.mark.parametrize("wbits,abits", [(8, 8), (4, 4)])
def test_efficientnet_bit_exact(effnet, wbits, abits):
    _effnet_check(effnet, wbits, abits, 8)


@pytest.mark.slow
@pytest.mark.parametrize("wbits,abits", [(8, 8), (4, 4)])
def test_efficientnet_bit_exact_32_views(effnet, wbits, abits):
    _effnet_check(effnet, wbits, abits, 32)


# --- MiniLM: float islands ------------------------------------------------------------------
def test_minilm_close_to_simulation(tmp_path):
    model = tvmptq.load("minilm_l6")
    s = tvmptq.get_set("sentences")
    calib = tuple(a[:8] for a in s.calibration())
    evaluation = tuple(a[:8] for a in s.evaluation())
    qm = tvmptq.quantize(model, calib, tvmptq.make_config(8, 8, weight_rule="minmax"), progress=False)
    qm.plan = QuantPlan.load(qm.plan.save(tmp_path / "minilm.npz"))  # constants survive the file
    frac, first, sim, ref = integer_agreement(qm, evaluation)
    cos = np.sum(sim * ref, 1) / (np.linalg.norm(sim, axis=1) * np.linalg.norm(ref, axis=1))
    print(f"\nMiniLM W8A8, {len(sim)} sentences: identical integers {frac:.6f} (first difference: "
          f"{first}); identical float outputs {np.mean(sim == ref):.4f}, max |diff| "
          f"{np.abs(sim - ref).max():.3g}, min cosine {cos.min():.8f}")
    assert cos.min() > 0.999 and frac > 0.95


# --- plan files and errors ------------------------------------------------------------------
def test_saved_plan_runs_the_same(digits_graph, digits_data, tmp_path):
    model, graph = digits_graph
    (calib,), (evaluation,) = digits_data
    qm = tvmptq.quantize(model, (calib,), tvmptq.make_config(4, 4, "mse"), graph=graph, progress=False)
    loaded = QuantPlan.load(qm.plan.save(tmp_path / "plan.npz"))
    out = run_plan(loaded, evaluation)
    assert np.array_equal(out, run_plan(qm.plan, evaluation))
    assert np.array_equal(out, qm.runner()(evaluation))


def test_unknown_op_is_refused(digits_graph, digits_data):
    model, graph = digits_graph
    (calib,), (evaluation,) = digits_data
    plan = tvmptq.quantize(model, (calib[:32],), tvmptq.make_config(8, 8), graph=graph, progress=False).plan
    bad = copy.deepcopy(plan)
    step = next(st for st in bad.program if st["kind"] == "op" and st["integer"])
    step["op"] = "frobnicate.default"
    with pytest.raises(NotImplementedError, match=f"frobnicate.default.*{step['name']}"):
        run_plan(bad, evaluation[:2])
    bad = copy.deepcopy(plan)
    first = bad.program[0]["name"]
    bad.program.insert(1, {"kind": "op", "name": "mystery", "op": "cumsum.default",
                           "args": [{"value": first}, 1], "kwargs": {}, "integer": False})
    with pytest.raises(NotImplementedError, match="cumsum.default.*mystery"):
        run_plan(bad, evaluation[:2])


# --- the op table follows ATen (shapes, dtypes, values to float32 rounding) ------------------
def _aten_cases():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 5, 6)).astype(np.float32)
    mask, ids = rng.random(x.shape) > 0.5, rng.integers(0, 10, (2, 4))
    table, pos = rng.standard_normal((10, 4)).astype(np.float32), np.abs(x) + 0.5
    return [
        ("softmax.int", (x, -1)), ("gelu.default", (x,)), ("sigmoid.default", (x,)), ("silu.default", (x,)),
        ("hardswish.default", (x,)), ("rsqrt.default", (pos,)), ("pow.Tensor_Scalar", (pos, 0.5)),
        ("layer_norm.default", (x, [6], pos[0, 0, 0], x[0, 0, 0], 1e-5)),
        ("sum.dim_IntList", (x, [1], True)), ("mean.dim", (x, [-1])), ("amax.default", (x, [2, 3])),
        ("linalg_vector_norm.default", (x, 2, [1], True)), ("clamp.default", (x, -0.5, 0.5)),
        ("rsub.Scalar", (x, 1.0)), ("add.Tensor", (x, x[0])), ("div.Tensor", (x, pos)),
        ("where.self", (mask, x, 2 * x)), ("masked_fill.Scalar", (x, mask, -1e4)),
        ("embedding.default", (table, ids)), ("to.dtype", (ids, torch.float32)), ("mul.Tensor", (ids, 0.5)),
        ("div.Tensor", (ids, ids + 1)), ("sum.dim_IntList", (ids, [1])), ("cat.default", ([x, x], 1)),
        ("permute.default", (x, [0, 2, 3, 1])), ("unflatten.int", (x, 3, [2, 3])), ("select.int", (x, 1, -1)),
        ("slice.Tensor", (x, 2, 1, 2 ** 63 - 1)), ("expand.default", (x[:, :1], [2, 3, 5, 6])),
        ("pad.default", (x, [1, 2, 0, 1], "constant", 0.0)), ("max_pool2d.default", (x, [3, 3], [2, 2], [1, 1])),
        ("max_pool2d.default", (x, [2, 2], [2, 2], [0, 0], [1, 1], True)), ("split.Tensor", (x, 2, 1)),
    ]


@pytest.mark.parametrize("name,args", _aten_cases(), ids=lambda v: v if isinstance(v, str) else "")
def test_op_table_follows_aten(name, args):
    packet, overload = name.rsplit(".", 1)
    to_torch = lambda a: (torch.from_numpy(a) if isinstance(a, np.ndarray) else
                          [to_torch(v) for v in a] if isinstance(a, list) and isinstance(a[0], np.ndarray) else a)
    to_numpy = lambda a: np.dtype(str(a).removeprefix("torch.")) if isinstance(a, torch.dtype) else a
    want = getattr(getattr(torch.ops.aten, packet), overload)(*map(to_torch, args))
    got = ops.OPS[name](*map(to_numpy, args))
    for w, g in zip(*((want, got) if isinstance(want, (list, tuple)) else ([want], [got]))):
        w = w.numpy()
        assert g.shape == w.shape and g.dtype == w.dtype
        np.testing.assert_allclose(g, w, rtol=2e-6, atol=1e-6)
