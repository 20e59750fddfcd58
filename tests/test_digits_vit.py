"""The zoo's digits_vit: shipped weights, timm's spelling, and the integer path end to end."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import tvmptq
from tvmptq.zoo.registry import get_model, list_models

REPO = Path(__file__).resolve().parents[1]


def test_weights_are_small_and_reproduce_recorded_accuracy():
    from tvmptq.data.digits import load_digits_split
    from tvmptq.zoo.digits_resnet import count_correct
    from tvmptq.zoo.digits_vit import WEIGHTS_FILE, recorded_training

    assert "digits_vit" in list_models()
    assert WEIGHTS_FILE.stat().st_size < 400_000
    record = recorded_training()
    _, _, x_test, y_test = (torch.tensor(np.array(a)) for a in load_digits_split())
    correct = count_correct(get_model("digits_vit").build(), x_test, y_test)
    assert correct == record["test_correct"] and len(x_test) == record["test_images"] == 540
    assert record["test_accuracy"] > 0.9


def test_written_as_timm_writes_it():
    """The captured graph holds what the issue asks for: unbind, SDPA, the CLS token expand."""
    model = get_model("digits_vit").build()
    ep = torch.export.export(model, get_model("digits_vit").example_inputs(2))
    ops = {str(n.target) for n in ep.graph.nodes if n.op == "call_function"}
    assert {"aten.unbind.int", "aten.scaled_dot_product_attention.default", "aten.expand.default",
            "aten.cat.default", "aten.gelu.default", "aten.layer_norm.default"} <= ops, ops


def test_w8a8_compiles_bit_exact():
    from targets.build import compile_integer

    import relay_passes as rp
    from tvmptq.reference.executor import run_plan

    model = tvmptq.load("digits_vit")
    digits = tvmptq.get_set("digits")
    calib = tuple(np.asarray(a[:64]) for a in digits.calibration())
    qm = tvmptq.quantize(model, calib, tvmptq.make_config(8, 8, "minmax"), progress=False)
    kinds = [lp.kind for lp in qm.plan.layers]
    assert kinds.count("matmul") == 4 and kinds.count("linear") == 9  # 2 blocks x (qkv, proj, fc1, fc2) + head
    x = np.asarray(digits.evaluation()[0][:8])
    mod = rp.lowering_passes(qm.plan)(rp.Canonicalize()(rp.import_model(model.build(), model.example_inputs(8))))
    compiled = compile_integer(mod, "x86-host", tensorize=True)(x)
    assert np.array_equal(compiled, run_plan(qm.plan, x))
    assert np.allclose(compiled, qm.runner()(x), atol=1e-5)


@pytest.mark.slow
def test_training_is_reproducible(tmp_path):
    from tvmptq.zoo.digits_vit import recorded_training

    subprocess.run([sys.executable, str(REPO / "scripts" / "train_digits.py"), "--model", "digits_vit",
                    "--out-dir", str(tmp_path)], check=True, cwd=REPO, timeout=1800)
    retrained = json.loads((tmp_path / "digits_vit.json").read_text())
    assert abs(retrained["test_accuracy"] - recorded_training()["test_accuracy"]) <= 0.005


def test_reconstruction_runs_on_the_vit_and_folds_zero_cost():
    """AdaRound (layer-wise: its blocks read the batch size and the CLS token from other blocks) and
    BRECQ (blocks holding GELU tables) fit on the ViT and fold into a plan that lowers to the same
    Relax op and constant counts as the baseline, compiled == simulation == NumPy reference."""
    from targets.build import compile_integer

    import relay_passes as rp
    from tvmptq.algorithms.cost import relax_constants
    from tvmptq.api import apply_method
    from tvmptq.reference.executor import run_plan

    model = tvmptq.load("digits_vit")
    digits = tvmptq.get_set("digits")
    calib = tuple(np.asarray(a[:32]) for a in digits.calibration())
    x = np.asarray(digits.evaluation()[0][:4])
    base = tvmptq.quantize(model, calib, tvmptq.make_config(4, 4, "minmax"), progress=False)
    imported = rp.Canonicalize()(rp.import_model(model.build(), model.example_inputs(4)))
    lowered = rp.lowering_passes(base.plan)(imported)
    for method in ("adaround", "brecq"):
        qm = apply_method(base, calib, method, {"samples": 32, "iters": 10})
        assert any(not np.array_equal(a.arrays["weight"], b.arrays["weight"])
                   for a, b in zip(qm.plan.layers, base.plan.layers) if "weight" in a.arrays)  # it learned
        mod = rp.lowering_passes(qm.plan)(imported)
        assert rp.op_counts(mod) == rp.op_counts(lowered) and relax_constants(mod) == relax_constants(lowered)
        simulated = qm.runner()(x)
        assert np.array_equal(simulated, run_plan(qm.plan, x))
    assert np.array_equal(compile_integer(mod, "x86-host", tensorize=True)(x), simulated)
