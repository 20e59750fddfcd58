"""Integer lookup tables for unary functions (tvmptq/quant/lut.py, relay_passes/lookup_tables.py).

Each table is checked against its float function on every input code (at most one output step
off), the NumPy reference recomputes every table independently, and a model using every function
compiles to an integer-only program that equals the simulation and the reference bit for bit.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import relay_passes as rp
from targets.build import compile_integer
import tvmptq
from tvmptq.quant import lut
from tvmptq.quant.plan import LayerPlan, TensorQuant
from tvmptq.reference import lut as ref_lut
from tvmptq.reference.executor import run_plan, run_plan_values

FUNCTIONS = [("sigmoid", {}), ("tanh", {}), ("silu", {}), ("hardswish", {}), ("hardsigmoid", {}),
             ("gelu", {"approximate": "none"}), ("gelu", {"approximate": "tanh"}), ("mish", {}),
             ("elu", {"alpha": 1.0, "scale": 1.0, "input_scale": 1.0}), ("elu", {"alpha": 0.5, "scale": 1.0, "input_scale": 1.0}),
             ("leaky_relu", {"negative_slope": 0.1}), ("clamp", {"min": -1.0, "max": 1.0})]


def _grid(name, lo, hi, bits, symmetric=False):
    """A TensorQuant covering [lo, hi] like the minmax observer would."""
    if symmetric:
        qmin, qmax = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
        scale = max(abs(lo), abs(hi)) / qmax
        return TensorQuant(name, scale, 0, bits, qmin, qmax)
    qmin, qmax = 0, 2 ** bits - 1
    scale = (hi - lo) / (qmax - qmin)
    return TensorQuant(name, scale, int(round(-lo / scale)), bits, qmin, qmax)


@pytest.mark.parametrize("bits,symmetric", [(8, False), (8, True), (4, False), (6, True)])
@pytest.mark.parametrize("name,attrs", FUNCTIONS)
def test_table_within_one_step_on_every_code(name, attrs, bits, symmetric):
    tin = _grid("x", -6.0, 4.0, bits, symmetric)
    y = lut.evaluate(name, attrs, torch.linspace(-6.0, 4.0, 1001)).numpy()
    tout = _grid("y", min(float(y.min()), 0.0), max(float(y.max()), 0.0), bits, symmetric)
    clip = (tout.qmin, tout.qmax)
    table = lut.build_table(name, attrs, tin, tout, clip)
    assert table.shape == (tin.qmax - tin.qmin + 1,)
    err = lut.table_error_steps(name, attrs, tin, tout, table)
    assert err.max() <= 1.0, (name, float(err.max()))
    assert err.max() <= 0.5 + 1e-3  # round to nearest: half a step (float32 rounding aside)
    # The NumPy reference's own definitions give the same table.
    lp = LayerPlan("f", "lut", ["x"], "y", clip, attrs={"function": name, "function_attrs": attrs},
                   arrays={"table": table})
    assert np.array_equal(ref_lut.table(lp, tin, tout), table)
    assert np.array_equal(ref_lut.checked_table(lp, tin, tout), table)


def test_reference_refuses_a_wrong_table():
    tin, tout = _grid("x", -4, 4, 8), _grid("y", 0, 1, 8)
    table = lut.build_table("sigmoid", {}, tin, tout, (0, 255))
    bad = table.copy()
    bad[100] += 3
    lp = LayerPlan("sig", "lut", ["x"], "y", (0, 255), attrs={"function": "sigmoid", "function_attrs": {}},
                   arrays={"table": bad})
    with pytest.raises(ValueError, match="3 output steps away from sigmoid at input code 100"):
        ref_lut.checked_table(lp, tin, tout)


class EveryFunction(nn.Module):
    """Each table function once, between convs; x * sigmoid(x) spelled out (how ONNX writes SiLU)."""

    def __init__(self):
        super().__init__()
        self.c1, self.c2, self.c3 = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 1), nn.Conv2d(8, 4, 1)

    def forward(self, x):
        y = F.hardswish(self.c1(x))
        y = F.silu(self.c2(y))
        y = y * torch.sigmoid(y)
        y = F.mish(F.gelu(y))
        y = F.leaky_relu(F.elu(y), 0.1)
        y = F.hardsigmoid(torch.tanh(self.c3(y)))
        y = F.relu(F.max_pool2d(y, 2))  # a clip after data movement: no layer to fuse into
        return y.mean((2, 3))


@pytest.fixture(scope="module")
def every_function():
    torch.manual_seed(0)
    module = EveryFunction().eval()
    model = tvmptq.zoo.from_module(module, (torch.randn(1, 3, 8, 8),))
    x = np.random.default_rng(0).standard_normal((32, 3, 8, 8)).astype(np.float32)
    qm = tvmptq.quantize(model, (x,), tvmptq.make_config(8, 8), progress=False)
    return module, model, qm, x


def test_plan_has_tables_and_no_islands(every_function):
    _, _, qm, _ = every_function
    functions = [lp.attrs["function"] for lp in qm.plan.layers if lp.kind == "lut"]
    assert functions == ["hardswish", "silu", "silu", "gelu", "mish", "elu", "leaky_relu", "tanh",
                         "hardsigmoid", "clamp"]
    assert qm.plan.float_islands == []


def test_compiled_equals_simulation_and_reference(every_function):
    module, model, qm, x = every_function
    with torch.no_grad():
        sim = qm.simulated(torch.as_tensor(x))
    sim = (sim[0] if isinstance(sim, (tuple, list)) else sim).numpy()
    ref = run_plan(qm.plan, x)
    np.testing.assert_array_equal(sim, ref)
    mod = rp.lower(model.build(), model.example_inputs(8), qm.plan)
    assert rp.float_ops(mod) == []  # integer-only: no declared island either
    counts = rp.op_counts(mod)
    assert counts["take -> uint8"] + counts["take -> int8"] == 10
    got = compile_integer(mod, "x86-host", tensorize=True)(x)
    np.testing.assert_array_equal(got, ref)
    fp = module(torch.as_tensor(x)).detach().numpy()
    assert (fp * got).sum() / np.linalg.norm(fp) / np.linalg.norm(got) > 0.999
    # Integer tensors: every table layer's output codes, reference vs simulation.
    values = run_plan_values(qm.plan, x[:4])
    for lp in qm.plan.layers:
        if lp.kind == "lut":
            assert values[lp.output].q.min() >= qm.plan.tensors[lp.output].qmin


def test_float_island_option(every_function):
    """lookup_tables=False keeps the old declared islands (no tables), named in the plan."""
    _, model, _, x = every_function
    qm = tvmptq.quantize(model, (x,), tvmptq.make_config(8, 8, lookup_tables=False), progress=False)
    assert not any(lp.kind == "lut" for lp in qm.plan.layers)
    island_ops = {s["op"] for s in qm.plan.program if s["kind"] == "op" and not s["integer"]}
    assert {"hardswish.default", "silu.default", "sigmoid.default", "mul.Tensor", "gelu.default", "mish.default",
            "elu.default", "leaky_relu.default", "tanh.default", "hardsigmoid.default", "relu.default"} <= island_ops
    sim = qm.runner()(x)
    np.testing.assert_allclose(run_plan(qm.plan, x), sim, atol=1e-5)
    plan = tvmptq.from_plan(model, qm.plan).plan  # the plan says which classification it was made on
    assert plan.config["lookup_tables"] is False
