"""Peer PTQ tools that tvmptq is compared against, run through the same evaluation protocol.

Only ONNX Runtime's static quantization for now (`onnxruntime_peer`); `qdq_import` reads the QDQ
models it writes back as tvmptq plans, so they lower to the same integer programs.
"""

from .onnxruntime_peer import (
    CalibrationStats,
    OrtRefusedError,
    OrtRunner,
    count_ops,
    export_onnx,
    ort_quantize_static,
    ort_quantize_static_with_stats,
    quantized_tensor_names,
    weight_scale_axes,
)
from .qdq_import import QdqImportError, compare_with_ort, plan_from_qdq

__all__ = [
    "CalibrationStats",
    "QdqImportError",
    "compare_with_ort",
    "plan_from_qdq",
    "OrtRefusedError",
    "OrtRunner",
    "count_ops",
    "export_onnx",
    "ort_quantize_static",
    "ort_quantize_static_with_stats",
    "quantized_tensor_names",
    "weight_scale_axes",
]
