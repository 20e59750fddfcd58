"""QwT v1 float branches lowered to declared float64 islands: the compiled program equals the
PyTorch simulation (QwTBranch included) and the NumPy reference bit for bit, adds exactly the
branch's ops per branch, and the verifier allows exactly those.

The fitted digits W2A4 plan is the session fixture ``digits_qwt`` (conftest.py, shared with
test_qwt.py)."""
import copy
import json
from collections import Counter

import numpy as np
import pytest
import torch
from torch import nn

import tvmptq
from tvmptq.algorithms.qwt import QwTConfig, branches, fit_qwt
from tvmptq.eval.sets import torch_runner
from tvmptq.reference import run_plan
from tvmptq.zoo import from_module

tvm = pytest.importorskip("tvm")
import relay_passes as rp  # noqa: E402  (needs tvm)
from targets.build import compile_integer  # noqa: E402
from relay_passes.islands import FLOAT_BRANCH_OPS  # noqa: E402

BATCH = 8
# What one conv1x1 branch adds to the lowered digits module (op -> result dtype): its declared
# float ops (FLOAT_BRANCH_OPS) and, at its boundary, the float32 dequantize of x and y and their
# casts to float64 (allowed without declaration: no arithmetic beyond the integer program's).
BRANCH_OPS = Counter({"nn.conv2d -> float64": 1, "add -> float64": 3, "divide -> float64": 1, "round -> float64": 1,
                      "clip -> float64": 1, "astype -> uint8": 1})
BOUNDARY_OPS = Counter({"dequantize -> float32": 2, "astype -> float64": 2})


@pytest.fixture(scope="module")
def lowered(digits_qwt):
    """(imported float module, lowered baseline, lowered QwT plan)."""
    model, _, _, qm, plan, _ = digits_qwt
    imported = rp.Canonicalize()(rp.import_model(model.build(), model.example_inputs(BATCH)))
    return imported, rp.lowering_passes(qm.plan)(imported), rp.lowering_passes(plan)(imported)


def test_compiled_qwt_equals_simulation_and_reference(digits_qwt, lowered):
    _, _, _, qm, plan, sim = digits_qwt
    x = tvmptq.get_set("digits").evaluation()[0]
    assert len(x) == 540 and len(branches(plan)) == 3
    got = compile_integer(lowered[2])(x)
    assert np.array_equal(got, torch_runner(sim)(x))
    assert np.array_equal(got, run_plan(plan, x))
    assert not np.array_equal(got, qm.runner()(x))  # the branches do change the outputs


def test_ops_differ_from_the_baseline_by_the_branch_ops(digits_qwt, lowered):
    qm, plan = digits_qwt[3], digits_qwt[4]
    _, base, mod = lowered
    n = len(branches(plan))
    assert {plan.layer(b).attrs["float_branch"]["features"] for b in branches(plan)} == {"conv1x1"}
    added, removed = rp.op_counts(mod) - rp.op_counts(base), rp.op_counts(base) - rp.op_counts(mod)
    per_branch = BRANCH_OPS + BOUNDARY_OPS
    assert added == Counter({k: n * v for k, v in per_branch.items()}) and not removed
    # x's quantize cancelled against its producer's dequantize; no other op (clip, quantize) added
    assert Counter(k.split(" -> ")[0] for k in BRANCH_OPS.elements()) == Counter(FLOAT_BRANCH_OPS["qwt_v1", "conv1x1"])
    assert not rp.plan_islands(qm.plan)
    declared = Counter(FLOAT_BRANCH_OPS["qwt_v1", "conv1x1"])
    assert rp.plan_islands(plan) == Counter({op: n * c for op, c in declared.items()})


def test_verifier_allows_exactly_the_declared_branch_ops(digits_qwt, lowered):
    plan = digits_qwt[4]
    imported, _, mod = lowered
    assert rp.float_ops(mod, rp.plan_islands(plan)) == []
    with pytest.raises(rp.IntegerOnlyError) as err:  # branches not declared: every branch op is named
        rp.VerifyIntegerOnly(rp.plan_islands(plan, branches=False))(mod)
    for op in ("nn.conv2d (float64)", "add (float64)", "divide (float64)", "round (float64)", "clip (float64)",
               "astype (uint8)"):
        assert str(err.value).count(op) == 3 * FLOAT_BRANCH_OPS["qwt_v1", "conv1x1"].count(op.split()[0]), op
    fewer = rp.plan_islands(plan)
    fewer["divide"] -= 1
    with pytest.raises(rp.IntegerOnlyError, match="3 float divide ops, 2 declared"):
        rp.VerifyIntegerOnly(fewer)(mod)
    # a layer left in float is still caught next to the declared branches
    leaky = rp.lowering_passes(plan, leave_float=["conv2d_4"], verify=False)(imported)
    with pytest.raises(rp.IntegerOnlyError, match=r"nn\.conv2d \(float32\)"):
        rp.VerifyIntegerOnly(rp.plan_islands(plan))(leaky)


def test_round_is_half_to_even_in_float64():
    """The branch's R.round must round ties like np.round (to even), not away from zero."""
    x = np.concatenate([np.arange(-8, 8) + 0.5, [0.49999999999999994, 2.5000000000000004, -0.0]])[None]
    bb = tvm.relax.BlockBuilder()
    param = tvm.relax.Var("x", tvm.relax.TensorType(x.shape, "float64"))
    with bb.function("main", [param]):
        with bb.dataflow():
            out = bb.emit_output(tvm.relax.op.round(param))
        bb.emit_func_output(out)
    assert np.array_equal(compile_integer(bb.get())(x), np.round(x))


class _Tokens(nn.Module):
    """A residual block on token features (batch, tokens, channels): the linear branch."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.inp, self.fc1, self.fc2 = nn.Linear(8, 16), nn.Linear(16, 32), nn.Linear(32, 16)
        self.head = nn.Linear(16, 4)

    def forward(self, x):
        h = self.inp(x)
        return self.head(self.fc2(self.fc1(h)) + h)


def test_token_features_branch_is_a_float64_matmul():
    x = np.random.default_rng(0).normal(size=(200, 6, 8)).astype(np.float32)
    model = from_module(_Tokens(), (torch.from_numpy(x[:1]),))
    graph = tvmptq.prepare(model)
    qm = tvmptq.quantize(model, (x[:64],), tvmptq.make_config(4, 4, "minmax"), graph=graph, progress=False)
    plan, sim = fit_qwt(graph, qm.plan, (x[:64],), QwTConfig(samples=64))
    assert [plan.layer(b).attrs["float_branch"]["features"] for b in branches(plan)] == ["linear"]
    mod = rp.lower(model.build(), model.example_inputs(4), plan)
    counts = rp.op_counts(mod)
    assert counts["matmul -> float64"] == 1 and counts["nn.conv2d -> float64"] == 0
    got = compile_integer(mod)(x[64:])
    assert np.array_equal(got, torch_runner(sim)(x[64:])) and np.array_equal(got, run_plan(plan, x[64:]))


def test_unknown_branch_kind_is_refused_by_name(digits_qwt):
    plan = copy.deepcopy(digits_qwt[4])
    plan.layer("add_1").attrs["float_branch"]["kind"] = "qwt_v9"
    del plan.layer("add_2").attrs["float_branch"]["features"]
    with pytest.raises(rp.LoweringError, match=r"at add_1 \(qwt_v9, features conv1x1\), add_2 \(qwt_v1, "
                                               r"features None\).*qwt_v1/conv1x1"):
        rp.lowering_passes(plan)


def test_compile_lists_the_float_branches(digits_qwt, tmp_path):
    from tvmptq.cli import main
    from tvmptq.deploy import load_artifact
    plan = digits_qwt[4]
    path = plan.save(tmp_path / "qwt.npz")
    assert main(["compile", "digits_resnet", "--plan", str(path), "-o", str(tmp_path / "art"), "--batch", "8",
                 "--target", "llvm"]) == 0
    m = json.loads((tmp_path / "art" / "manifest.json").read_text())
    assert [(b["layer"], b["input"], b["stride"]) for b in m["float_branches"]] == \
        [("add", "relu", 1), ("add_1", "relu_2", 2), ("add_2", "relu_4", 2)]
    assert all(b["relax_ops"] == list(FLOAT_BRANCH_OPS["qwt_v1", "conv1x1"]) for b in m["float_branches"])
    assert m["op_counts"]["after"]["nn.conv2d -> float64"] == 3
    report = (tmp_path / "art" / "report.md").read_text()
    assert "Declared float branches (3)" in report and "- add_1: qwt_v1 conv1x1 on `relu_2` (stride 2" in report
    x = digits_qwt[2][:20]
    assert np.array_equal(load_artifact(tmp_path / "art").run(x), torch_runner(digits_qwt[5])(x))
