"""Baseline PTQ on the real zoo models: coverage (no float shortcuts) and streaming memory."""
import psutil
import pytest

import tvmptq
from tvmptq.eval.sets import batches
from tvmptq.quant.calibrate import collect_statistics


@pytest.fixture(scope="module")
def efficientnet():
    model = tvmptq.load("efficientnet_lite0")
    return model, tvmptq.prepare(model)


def test_efficientnet_every_op_is_integer(efficientnet):
    """Every tensor ONNX Runtime's QDQ quantizes (conv, add, pool, gemm inputs/outputs) is
    quantized here too, with batch norm folded and ReLU6 fused: no float shortcuts."""
    _, graph = efficientnet
    kinds = [layer.kind for layer in graph.layers]
    assert kinds.count("conv2d") == 49 and kinds.count("add") == 9
    assert kinds.count("mean") == 1 and kinds.count("linear") == 1
    assert graph.islands == []
    assert sum(layer.activation == "clamp" for layer in graph.layers) == 33


def test_efficientnet_w8a8_fidelity(efficientnet):
    model, graph = efficientnet
    photos = tvmptq.get_set("photos")
    calib = tuple(a[:64] for a in photos.calibration())
    evals = tuple(a[:32] for a in photos.evaluation())
    qm = tvmptq.quantize(model, calib, tvmptq.make_config(8, 8, "percentile"), graph=graph, progress=False)
    ref = tvmptq.fp32_outputs(model, evals, graph, progress=False)
    from tvmptq.eval.sets import run_outputs, score
    metrics = score("classification", ref, run_outputs(qm.runner(), evals, progress=False))
    assert metrics["top1_agreement"] >= 75.0 and metrics["sqnr_db"] > 10.0
    assert len(qm.plan.layers) == 60 and not qm.plan.float_layers


def test_minilm_keeps_only_declared_islands():
    model = tvmptq.load("minilm_l6")
    assert [layer.attrs["function"] for layer in tvmptq.prepare(model).layers if layer.kind == "lut"] == ["gelu"] * 6
    graph = tvmptq.prepare(model, lookup_tables=False)  # GELU as a declared float island
    kinds = [layer.kind for layer in graph.layers]
    assert kinds.count("linear") == 36          # q, k, v, out, ffn in/out per block, 6 blocks
    assert kinds.count("matmul") == 12          # scores and context per block
    island_ops = {n.target.__name__.split(".")[0] for n in graph.islands}
    assert {"layer_norm", "softmax", "gelu"} <= island_ops
    assert island_ops <= {"layer_norm", "softmax", "gelu", "embedding", "add", "mul", "sub", "rsub", "div",
                          "sum", "clamp", "clamp_min", "linalg_vector_norm", "expand_as", "to", "_to_copy",
                          "unsqueeze", "arange", "mean", "sqrt", "where", "masked_fill", "pow"}


def test_calibration_memory_is_flat_in_samples():
    """Streaming: eight times the samples must not grow memory (batches come from a generator)."""
    model = tvmptq.load("digits_resnet")
    graph = tvmptq.prepare(model)
    x = tvmptq.get_set("digits").calibration()[0]

    def stream(repeats):
        for _ in range(repeats):
            yield from batches((x,), 32)

    proc = psutil.Process()
    collect_statistics(graph, stream(1), progress=False)
    before = proc.memory_info().rss
    obs, n = collect_statistics(graph, stream(8), progress=False)
    grown_mb = (proc.memory_info().rss - before) / 2 ** 20
    assert n == 8 * len(x) and grown_mb < 20
    assert all(o.counts.shape == (2048,) for o in obs.values())
