"""Relax lowering: the compiled integer-only TVM program equals the PyTorch simulation bit for bit."""
import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import tvmptq
from tvmptq.zoo import from_module

tvm = pytest.importorskip("tvm")
import relay_passes as rp  # noqa: E402  (needs tvm)
from targets.build import compile_integer  # noqa: E402

BATCH = 8  # static batch of the compiled digits modules


def _lower_and_run(imported, plan, x, **kw):
    mod = rp.lowering_passes(plan, **kw)(imported)
    return mod, compile_integer(mod)(x)


def _assert_integer_only(mod, convs):
    counts = rp.op_counts(mod)
    assert counts["nn.conv2d -> int32"] == convs and counts["nn.conv2d -> float32"] == 0
    floats = {k for k in counts if k.endswith("float32")}
    assert floats == {"dequantize -> float32"}, floats  # plus quantize(input), which yields an int
    assert not rp.float_ops(mod)


# --- rounding: the Relax building blocks against the plan's definitions -------------------------
def _run_relax(build, *arrays):
    bb = tvm.relax.BlockBuilder()
    params = [tvm.relax.Var(f"a{i}", tvm.relax.TensorType(a.shape, str(a.dtype))) for i, a in enumerate(arrays)]
    with bb.function("main", params):
        with bb.dataflow():
            out = bb.emit_output(build(bb, *params))
        bb.emit_func_output(out)
    return compile_integer(bb.get())(*arrays)


@pytest.mark.parametrize("mode", ["int64", "fixed_point_multiply"])
def test_requantize_is_the_plan_definition_on_ties(mode):
    from relay_passes.integer_ops import Grid, requantize
    from tvmptq.quant.fixedpoint import quantize_multiplier, requantize_np
    rng = np.random.default_rng(1)
    reals = np.concatenate([rng.uniform(1e-4, 0.99, 12), [0.5, 0.25, 1.0 - 1e-12, 3.7]])  # 2^31 mantissa, > 1
    m, k = quantize_multiplier(reals)
    assert (m == 2 ** 31).any()
    acc = rng.integers(-2 ** 16, 2 ** 16, size=(2, 16, 40)).astype(np.int32)
    acc[:, 12, :] = np.arange(-40, 40).reshape(2, 40) * 2 + 1  # x.5 exactly, negative and positive
    out = Grid(np.float32(1), 3, -128, 127, "int8")
    got = _run_relax(lambda bb, a: requantize(bb, a, m, k, out, (-100, 120), acc_bound=2 ** 17, mode=mode), acc)
    want = np.clip(requantize_np(acc, m[None, :, None], k[None, :, None]) + 3, -100, 120)
    assert np.array_equal(got, want)  # round half up: -2.5 -> -2, 2.5 -> 3


def test_input_quantize_rounds_half_to_even_with_float32_division():
    from relay_passes.integer_ops import Grid, quantize
    s = np.float32(0.25)
    x = np.concatenate([(np.arange(-20, 20) + 0.5) * s, np.random.default_rng(0).normal(size=500)]).astype(np.float32)
    g = Grid(s, 7, 0, 15, "uint8")  # 4-bit grid in a uint8 container
    got = _run_relax(lambda bb, a: quantize(a, g), x)
    assert np.array_equal(got, np.clip(np.round(x / s) + 7, 0, 15))  # np.round: half to even


# --- digits ResNet -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def digits(digits_relax):
    assert int(digits_relax[4]["main"].params[0].ty.shape[0]) == BATCH  # the shared import's static batch
    return digits_relax


def _digits_plan(digits, w, a, observer="minmax"):
    model, graph, calib, _, _ = digits
    return tvmptq.quantize(model, calib, tvmptq.make_config(w, a, observer), graph=graph, progress=False)


@pytest.mark.parametrize("w,a,requantize", [(8, 8, "int64"), (4, 4, "int64"), (2, 4, "int64"),
                                            (8, 8, "fixed_point_multiply")])
def test_digits_compiled_equals_simulation(digits, w, a, requantize):
    qm = _digits_plan(digits, w, a, "minmax" if w == 8 else "mse")
    x, imported = digits[3], digits[4]
    mod, got = _lower_and_run(imported, qm.plan, x, requantize=requantize)
    ref = qm.runner()(x)
    assert got.dtype == np.float32 and np.array_equal(got, ref)  # identical dequantized floats
    out = qm.plan.tensors[qm.plan.layers[-1].output]  # hence identical integers
    assert np.array_equal(np.round(got / np.float32(out.scale)), np.round(ref / np.float32(out.scale)))
    _assert_integer_only(mod, convs=9)
    if requantize == "fixed_point_multiply":
        assert rp.op_counts(mod)["call_tir -> int32"] > 0  # TOPI's q_multiply_shift_per_axis was used


def test_canonical_float_module_still_computes_the_model(digits):
    model, _, _, x, imported = digits
    run = compile_integer(imported)  # any module compiles; this one is still float
    with torch.no_grad():
        ref = model.build()(torch.from_numpy(np.array(x[:16]))).numpy()
    np.testing.assert_allclose(run(x[:16]), ref, atol=1e-4)
    counts = rp.op_counts(imported)
    assert counts["nn.conv2d -> float32"] == 9 and not any("batch_norm" in k for k in counts)


def test_verify_lists_a_layer_left_float(digits):
    qm = _digits_plan(digits, 8, 8)
    mod = rp.lowering_passes(qm.plan, leave_float=["conv2d_4"], verify=False)(digits[4])
    found = rp.float_ops(mod)
    assert any("nn.conv2d (float32)" in f for f in found) and any("nn.relu (float32)" in f for f in found)
    with pytest.raises(rp.IntegerOnlyError, match=r"main: lv\w* = nn\.conv2d \(float32\)"):
        rp.VerifyIntegerOnly()(mod)
    assert rp.float_ops(mod, islands=["nn.conv2d", "add", "nn.relu", "quantize", "dequantize"]) == []


def test_match_error_names_the_first_layer_that_does_not_fit(digits):
    qm = _digits_plan(digits, 8, 8)
    plan = copy.deepcopy(qm.plan)
    plan.layer("conv2d_4").arrays["weight"] = plan.layer("conv2d_4").arrays["weight"][:, :8]
    with pytest.raises(rp.LayerMatchError, match=r"'conv2d_4' \(conv2d, weight \(32, 8, 3, 3\)\) does not match"):
        rp.lowering_passes(plan)(digits[4])
    plan = copy.deepcopy(qm.plan)
    plan.layer("conv2d_2").activation = "relu"
    with pytest.raises(rp.LayerMatchError, match="'conv2d_2' fuses activation 'relu'"):
        rp.MatchPlanLayers(plan)(digits[4])
    plan = copy.deepcopy(qm.plan)
    plan.layer("add").inputs = plan.layer("add").inputs[::-1]  # operands swapped
    with pytest.raises(rp.LayerMatchError, match="'add' input 0 is tensor 'relu'"):
        rp.MatchPlanLayers(plan)(digits[4])


def test_onnx_file_through_relax_onnx_frontend(digits, tmp_path):
    from tvmptq.peers.onnxruntime_peer import export_onnx
    model, x = digits[0], digits[3]
    path = export_onnx(model.build(), (torch.from_numpy(np.array(x[:1])),), tmp_path / "digits.onnx", ["input"],
                       preprocess=False)
    onnx_model = tvmptq.load(str(path))  # the plan is made on the onnx2torch module
    qm = tvmptq.quantize(onnx_model, (digits[2][0][:64],), tvmptq.make_config(8, 8), progress=False)
    mod = rp.lowering_passes(qm.plan)(rp.import_onnx(path))  # static batch 1, as exported
    assert np.array_equal(compile_integer(mod)(x[:16]), qm.runner()(x[:16]))
    _assert_integer_only(mod, convs=9)


# --- zero points that reach padding, depthwise, max pool, symmetric grids -------------------------
class PadNet(nn.Module):
    """Padded convs whose inputs have non-zero zero points (no ReLU before them)."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)                 # model input: z != 0, implicit padding
        self.dw = nn.Conv2d(8, 8, 3, stride=2, groups=8)         # explicit F.pad before it
        self.c3 = nn.Conv2d(8, 8, 3, padding=1, bias=False)      # after max pool, z != 0
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        t = self.c1(x)
        a = F.hardtanh(self.dw(F.pad(t, (0, 1, 0, 1))), 0.0, 6.0)  # ReLU6
        b = self.c3(F.max_pool2d(t, 2))
        y = torch.relu(a + b)
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(y, 1), 1))


@pytest.mark.parametrize("w,a,symmetric", [(8, 8, False), (4, 4, False), (6, 6, True)])
def test_zero_points_in_padding_are_exact(w, a, symmetric):
    torch.manual_seed(0)
    x = (torch.randn(24, 3, 16, 16) + 0.5).numpy()
    model = from_module(PadNet().eval(), (torch.from_numpy(x[:1]),))
    qm = tvmptq.quantize(model, (x[:16],), tvmptq.make_config(w, a, "minmax", symmetric=symmetric), progress=False)
    mod = rp.lower(model.build(), model.example_inputs(4), qm.plan)
    got, ref = compile_integer(mod)(x[16:]), qm.runner()(x[16:])
    assert np.array_equal(got, ref)
    _assert_integer_only(mod, convs=3)
    counts = rp.op_counts(mod)
    assert counts["nn.max_pool2d -> " + ("int8" if symmetric else "uint8")] == 1
    if not symmetric:  # conv padding moved into pad ops that hold the input zero point
        pads = [b.value for b in mod["main"].body.blocks[0].bindings if rp.match.op_name(b.value) == "relax.nn.pad"]
        zps = {int(qm.plan.tensors[t].zero_point) for t in ("x", "conv2d")}
        assert {int(float(p.attrs.pad_value)) for p in pads} == zps and 0 not in zps


class CatNet(nn.Module):
    """Concatenation and multiplication by a constant, both requantized in integers."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(3, 6, 1)
        self.fc = nn.Linear(10, 3)

    def forward(self, x):
        y = torch.cat([self.a(x) * 0.75, torch.relu(self.b(x))], dim=1)
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(y, 1), 1))


def test_cat_and_constant_multiply_are_exact(w=4, a=4):
    torch.manual_seed(1)
    x = torch.randn(12, 3, 8, 8).numpy()
    model = from_module(CatNet().eval(), (torch.from_numpy(x[:1]),))
    qm = tvmptq.quantize(model, (x[:8],), tvmptq.make_config(w, a, "minmax"), progress=False)
    assert {lp.kind for lp in qm.plan.layers} >= {"cat", "mul_const"}
    mod = rp.lower(model.build(), model.example_inputs(4), qm.plan)
    assert np.array_equal(compile_integer(mod)(x[8:]), qm.runner()(x[8:]))
    _assert_integer_only(mod, convs=2)


# --- EfficientNet-Lite0 ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def effnet():
    from tvmptq.eval.sets import batches
    from tvmptq.quant.calibrate import collect_statistics
    model = tvmptq.load("efficientnet_lite0")
    s = tvmptq.get_set("photos")
    graph = tvmptq.prepare(model)
    # Calibrate once (4 views); every bit width's plan is built from the same statistics.
    observers, _ = collect_statistics(graph, batches(tuple(a[:4] for a in s.calibration()), 4), progress=False)
    imported = rp.Canonicalize()(rp.import_model(model.build(), model.example_inputs(4)))
    return model, graph, observers, s.evaluation()[0], imported


def _effnet_check(effnet, w, a, views):
    from tvmptq.eval.sets import torch_runner
    from tvmptq.quant.calibrate import build_plan
    from tvmptq.quant.simulate import simulate
    from tvmptq.reference import run_plan
    model, graph, observers, evaluation, imported = effnet
    plan = build_plan(graph, observers, tvmptq.make_config(w, a), model.name)
    mod = rp.lowering_passes(plan)(imported)
    _assert_integer_only(mod, convs=49)
    x = evaluation[:views]
    got = compile_integer(mod)(x)
    # Identical to the independent NumPy integer executor (written from the plan, not from TVM)
    # and to the PyTorch simulation.
    assert np.array_equal(got, run_plan(plan, x, batch_size=8))
    assert np.array_equal(got, torch_runner(simulate(graph, plan))(x))


@pytest.mark.parametrize("w,a", [(8, 8), (4, 4)])
def test_efficientnet_compiled_equals_reference_32_views(effnet, w, a):
    _effnet_check(effnet, w, a, views=32)  # the benchmark (scripts/bench_lowering.py) runs all 512


# --- MiniLM: float islands, activation x activation matmuls, token inputs -------------------------
@pytest.fixture(scope="module")
def minilm():
    model = tvmptq.load("minilm_l6")
    s = tvmptq.get_set("sentences")
    imported = rp.Canonicalize()(rp.import_model(model.build(), model.example_inputs(4)))
    return model, tuple(a[:8] for a in s.calibration()), tuple(a[:8] for a in s.evaluation()), imported


def _cosines(a, b):
    return np.sum(a * b, 1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.mark.parametrize("symmetric", [False, True])
def test_minilm_compiled_matches_simulation(minilm, symmetric):
    model, calib, evaluation, imported = minilm
    qm = tvmptq.quantize(model, calib, tvmptq.make_config(8, 8, weight_rule="minmax", symmetric=symmetric),
                         progress=False)
    mod = rp.lowering_passes(qm.plan)(imported)
    counts = rp.op_counts(mod)
    assert counts["matmul -> int32"] == 48 and counts["matmul -> float32"] == 0  # 36 linears + 12 attention
    # Asymmetric operands are centred in int32 before the attention matmuls; symmetric ones are not
    # (their 6 GELU tables index q - qmin = q + 128 instead).
    assert counts["subtract -> int32"] == (6 if symmetric else 24)
    islands = rp.plan_islands(qm.plan)
    assert islands["nn.softmax"] == 6 and islands["nn.layer_norm"] == 13 and islands["nn.gelu"] == 0
    assert [lp.attrs["function"] for lp in qm.plan.layers if lp.kind == "lut"] == ["gelu"] * 6  # integer tables
    assert islands["add"] == 8  # 2 embedding adds + 6 attention-mask adds; 12 residual adds are integer
    assert counts["add -> float64"] == 0 or counts["nn.layer_norm -> float32"] == 0  # islands in float64
    got, ref = compile_integer(mod)(*evaluation), qm.runner()(*evaluation)
    # Float islands cannot be bit-exact across libraries; computed in float64 they differ from
    # PyTorch's only by float32 rounding, and the embeddings agree to ~1e-7.
    assert _cosines(got, ref).min() > 0.99999, _cosines(got, ref)


def test_minilm_verify_counts_island_ops(minilm):
    model, calib, _, imported = minilm
    qm = tvmptq.quantize(model, calib, tvmptq.make_config(8, 8, weight_rule="minmax"), progress=False)
    mod = rp.lowering_passes(qm.plan, leave_float=["add_3"], verify=False, precise_islands=False)(imported)
    with pytest.raises(rp.IntegerOnlyError, match="9 float add ops, 8 declared as islands"):
        rp.VerifyIntegerOnly(rp.plan_islands(qm.plan))(mod)
    plan = copy.deepcopy(qm.plan)  # a plan whose program does not declare the softmax islands
    plan.program = [s for s in plan.program if s.get("op") != "softmax.int"]
    with pytest.raises(rp.IntegerOnlyError, match=r"= nn\.softmax \(float32\)"):
        rp.lowering_passes(plan)(imported)
