"""Folded methods export to fully-integer TFLite with no extra ops (issue 22): CWAC changes only the
requantize parameters, so its flatbuffer has the baseline's operators and tensors."""
import numpy as np

import tvmptq
from targets.npu.litert import compare_outputs
from tvmptq.algorithms.cwac import CWACConfig, fit_cwac
from tvmptq.export.tflite import export_tflite


def test_cwac_plan_exports_with_the_baseline_ops(digits_graph):
    model, graph = digits_graph
    s = tvmptq.get_set("digits")
    calib = tuple(a[:64] for a in s.calibration())
    qm = tvmptq.quantize(model, calib, tvmptq.make_config(8, 8, "minmax"), graph=graph, progress=False)
    plan, _ = fit_cwac(graph, qm.plan, calib, CWACConfig(samples=64))
    assert plan.stats["cwac"]["layers"]  # the fit changed something to export
    base, cwac = export_tflite(qm.plan), export_tflite(plan)
    assert cwac.op_counts() == base.op_counts() and cwac.ops == base.ops
    assert cwac.content != base.content  # same graph, other multipliers / biases
    xs = np.asarray(s.evaluation()[0][:8])
    r = compare_outputs(plan, cwac, xs, resolvers=("BUILTIN_REF",))[0]
    assert r.max_abs <= 2 and r.top1_equal >= 7
