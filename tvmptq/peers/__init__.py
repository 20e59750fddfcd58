"""Peer PTQ tools that tvmptq is compared against, run through the same evaluation protocol.

Only ONNX Runtime's static quantization for now (`onnxruntime_peer`).
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

__all__ = [
    "CalibrationStats",
    "OrtRefusedError",
    "OrtRunner",
    "count_ops",
    "export_onnx",
    "ort_quantize_static",
    "ort_quantize_static_with_stats",
    "quantized_tensor_names",
    "weight_scale_axes",
]
