import os
import warnings

import pytest
import torch

torch.set_num_threads(min(2, os.cpu_count() or 1))
warnings.filterwarnings("ignore", category=FutureWarning)


@pytest.fixture(scope="session")
def digits_graph():
    import tvmptq
    model = tvmptq.load("digits_resnet")
    return model, tvmptq.prepare(model)


@pytest.fixture(scope="session")
def digits_relax(digits_graph):
    """digits as the lowering tests use it: (model, graph, 128 calibration samples, 64 evaluation
    samples, the Relax import at static batch 8). Imported and canonicalized once; each plan then
    only runs the plan-specific passes on it."""
    import relay_passes as rp
    import tvmptq
    model, graph = digits_graph
    s = tvmptq.get_set("digits")
    imported = rp.Canonicalize()(rp.import_model(model.build(), model.example_inputs(8)))
    return model, graph, tuple(a[:128] for a in s.calibration()), s.evaluation()[0][:64], imported


@pytest.fixture(scope="session")
def digits_w2a4(digits_graph):
    """The digits W2A4 baseline plan (128 calibration samples) that CWAC and QwT start from,
    with the calibration and 64 evaluation samples."""
    import tvmptq
    model, graph = digits_graph
    s = tvmptq.get_set("digits")
    calib = tuple(a[:128] for a in s.calibration())
    qm = tvmptq.quantize(model, calib, tvmptq.make_config(2, 4, "mse"), graph=graph, progress=False)
    return model, graph, calib, s.evaluation()[0][:64], qm


@pytest.fixture(scope="session")
def digits_qwt(digits_w2a4):
    """QwT v1 fitted on the digits W2A4 baseline (64 samples): (model, graph, 64 evaluation
    samples, baseline QuantizedModel, QwT plan, its simulation)."""
    from tvmptq.algorithms.qwt import QwTConfig, fit_qwt
    model, graph, calib, evaluation, qm = digits_w2a4
    plan, sim = fit_qwt(graph, qm.plan, calib, QwTConfig(samples=64))
    return model, graph, evaluation, qm, plan, sim


@pytest.fixture(scope="session")
def digits_cli_plan(tmp_path_factory):
    """A digits W8A8 plan made by `tvmptq quantize` (64 calibration samples, minmax): the plan the
    artifact and target tests compile."""
    from tvmptq.cli import main
    plan = tmp_path_factory.mktemp("digits_cli_plan") / "plan.npz"
    assert main(["quantize", "digits_resnet", "--calib-samples", "64", "--observer", "minmax", "--report", "0",
                 "--out", str(plan)]) == 0
    return plan
