"""QwT v1: closed-form per-block linear compensation as a declared float branch (its Relax
lowering: test_qwt_lowering.py). The fitted digits plan is the session fixture ``digits_qwt``."""
import numpy as np
import pytest

import tvmptq
from tvmptq.algorithms.qwt import branches
from tvmptq.eval.sets import torch_runner
from tvmptq.reference import run_plan


def test_blocks_fitted_and_counted(digits_qwt):
    _, _, _, _, plan, _ = digits_qwt
    blocks = plan.stats["qwt"]["blocks"]
    assert {b["input"] for b in blocks.values()} == {"relu", "relu_2", "relu_4"}  # block inputs
    assert [b["stride"] for b in blocks.values()] == [1, 2, 2]
    on = [name for name, b in blocks.items() if b["enabled"]]
    assert on == branches(plan) and all(blocks[n]["r2"] > 0 for n in on)
    assert plan.stats["qwt"]["extra_params"] == sum(blocks[n]["params"] for n in on) > 0


def test_improves_and_equals_reference(digits_qwt):
    model, graph, x, qm, plan, sim = digits_qwt
    fp = torch_runner(graph.gm)(x)
    out = torch_runner(sim)(x)
    assert np.mean((out - fp) ** 2) < 0.7 * np.mean((qm.runner()(x) - fp) ** 2)
    assert np.array_equal(out, run_plan(plan, x))


def test_saved_plan_and_api(digits_qwt, digits_graph, tmp_path):
    model, graph, x, qm, plan, sim = digits_qwt
    again = tvmptq.from_plan(model, tvmptq.QuantPlan.load(plan.save(tmp_path / "qwt.npz")), graph)
    assert np.array_equal(again.runner()(x), torch_runner(sim)(x))
    calib = tuple(a[:64] for a in tvmptq.get_set("digits").calibration())
    for method in ("qwt", "cwac"):
        got = tvmptq.quantize(model, calib, tvmptq.make_config(4, 4), graph=graph, progress=False,
                              method=method, method_options={"samples": 32})
        assert got.plan.config["method"] == method
    with pytest.raises(tvmptq.errors.ConfigError, match="unknown method"):
        tvmptq.quantize(model, calib, tvmptq.make_config(8, 8), graph=graph, progress=False, method="nope")
