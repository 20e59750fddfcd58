"""Exports of a quantization plan to formats other runtimes execute."""
from .qdq_onnx import QDQ_OPSET, export_qdq_onnx, ort_optimized_op_counts, run_qdq_onnx

__all__ = ["QDQ_OPSET", "export_qdq_onnx", "ort_optimized_op_counts", "run_qdq_onnx"]
