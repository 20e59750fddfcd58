"""ORT quantize_static QDQ models lowered to TVM integer programs vs ORT's own execution.

For EfficientNet-Lite0 on the photos protocol (and digits on its split): export FP32 ONNX,
quantize_static (MinMax, QDQ, per-channel int8/int4 weights, uint8 activations) on the calibration
views, import the QDQ file as a tvmptq plan (tvmptq/peers/qdq_import.py), lower and compile it with
relay_passes, and compare with ONNX Runtime on the evaluation views: top-1 agreement and logit
differences in output LSBs. Also checks that the compiled program equals the plan's simulation.

With --ort-floor it also runs the QDQ file in ORT with graph optimizations disabled (float
DequantizeLinear -> op -> QuantizeLinear, the reference semantics of QDQ) and compares ORT's
optimized run (fused integer kernels) with it: how far ORT is from itself, the noise floor that
any other rounding of the same quantized model shows as well.

    python scripts/qdq_vs_ort.py [--model efficientnet_lite0] [--views 512] [--calib 64] [--bits 8 4]
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import tvmptq  # noqa: E402
from tvmptq.peers import OrtRunner, export_onnx, ort_quantize_static  # noqa: E402
from targets.build import compile_qdq  # noqa: E402
from tvmptq.peers.qdq_import import compare_with_ort  # noqa: E402


def _ort_unoptimized(path, x) -> np.ndarray:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return np.concatenate([sess.run(None, {"input": x[i : i + 1]})[0] for i in range(len(x))])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="efficientnet_lite0")
    ap.add_argument("--views", type=int, default=512, help="evaluation samples compared")
    ap.add_argument("--calib", type=int, default=64, help="calibration samples for quantize_static")
    ap.add_argument("--bits", type=int, nargs="+", default=[8], help="weight bits (activations uint8)")
    ap.add_argument("--ort-floor", action="store_true", help="also compare ORT optimized vs unoptimized")
    args = ap.parse_args()
    model = tvmptq.load(args.model)
    data = tvmptq.get_set("photos" if args.model == "efficientnet_lite0" else "digits")
    calib, evals = data.calibration()[0][: args.calib], data.evaluation()[0][: args.views]
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = export_onnx(model.build(), (torch.from_numpy(np.array(calib[:1])),), Path(tmp) / "fp32.onnx", ["input"])
        for wbits in args.bits:
            qdq = ort_quantize_static(fp32, Path(tmp) / f"w{wbits}a8.onnx",
                                      [{"input": calib[i : i + 1]} for i in range(len(calib))], weight_bits=wbits)
            start = time.perf_counter()
            run, qm = compile_qdq(qdq)
            ours, ort_opt = run(evals), OrtRunner(qdq)(evals)
            result = compare_with_ort(qdq, evals, lambda _: ours, qm, ort_opt)
            result["equals_simulation"] = bool(np.array_equal(ours[:8], qm.runner()(evals[:8])))
            if args.ort_floor:
                unopt = _ort_unoptimized(qdq, evals)
                result["ours_vs_ort_unoptimized"] = compare_with_ort(qdq, evals, lambda _: ours, qm, unopt)
                result["ort_vs_ort_unoptimized"] = compare_with_ort(qdq, evals, lambda _: ort_opt, qm, unopt)
            result["seconds"] = round(time.perf_counter() - start, 1)
            print(json.dumps({"model": args.model, "config": f"W{wbits}A8", "calib": len(calib), **result}))


if __name__ == "__main__":
    main()
