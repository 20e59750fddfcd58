"""Export a plan as a QDQ ONNX model, so that ONNX Runtime runs tvmptq's quantization.

Files: this one (the entry points and the contract below), qdq_values.py (containers, op sets,
value types), qdq_graph.py (names, initializers, Q/DQ, weights), qdq_movement.py (data movement),
qdq_float_ops.py (float islands as ONNX ops), qdq_program.py (the walk over the program).

The graph is built by walking ``plan.program`` (see :mod:`tvmptq.quant.program`); nothing is
re-calibrated or re-derived: every scale, zero point, integer weight and integer bias is the plan's.

    model input --QuantizeLinear(s, z)--> q --DequantizeLinear--> float op --[Relu]--> QuantizeLinear
    (output tensor's s, z) --> q --DequantizeLinear--> next op ...

Layers (``plan.layers``):
  conv2d   Conv on DequantizeLinear(int8 weight, per-channel scale, axis 0) and
           DequantizeLinear(int32 bias, scale s_x * s_w[c], axis 0): the float bias is bias_int * s_x * s_w.
  linear   Gemm(transB=1) on a 2-D input (weight (O, K), DQ axis 0); MatMul (weight stored (K, O),
           DQ axis 1) + Add for inputs of higher rank.
  matmul   MatMul of two dequantized activations (Transpose of the second for transpose_b).
  add      Add;  mean  GlobalAveragePool (dims H, W, keepdim) or ReduceMean;  mul_const  Mul by the
           constant factor;  cat  Concat.
  A layer kept in float (``keep_float``) uses its float weight and bias initializers directly.
Integer data movement steps (flatten, view/reshape, permute/transpose, pad, max_pool2d, ...) run on
the dequantized values and are followed by QuantizeLinear/DequantizeLinear with the same
parameters, which is exact (the values stay on the grid; zero padding is the real value 0, i.e.
the zero point). Slice/select on integers are Slice/Gather, likewise exact.

Rank-3 linears (``linear_3d``). "gemm" (default): Reshape of the integer input to (N, K), Gemm with the
int32 bias, QuantizeLinear, Reshape of the integer output back to (..., O): ORT fuses the group into
QGemm (requantize inside the kernel). "matmul": MatMul + Add(bias) on the rank-3 tensor; ORT makes
the MatMul a MatMulIntegerToFloat and adds the bias in float before the QuantizeLinear (MiniLM batch 1,
1 thread: ~37 ms vs ~17 ms for "gemm"). ``mul_const`` multiplies by DequantizeLinear(1, scale
|factor|) -- the same float32 factor -- so that ORT fuses it into QLinearMul.

Float islands and auxiliary ops (``integer`` false in the program: MiniLM's embedding gather and
position adds, attention-mask arithmetic, mask add + softmax, LayerNorm, GELU, mean pooling, L2
normalize) become plain ONNX float ops on DequantizeLinear outputs, with ATen's semantics as
tvmptq/reference/ops.py executes them: embedding -> Gather; add/sub/rsub/mul/div -> Add/Sub/Mul/Div
(ATen type promotion: float tensors, then a Python float -> float32, then integer tensors);
layer_norm -> LayerNormalization; softmax -> Softmax; gelu -> Gelu (opset >= 20) or
0.5 x (1 + Erf(x / sqrt 2)); to/_to_copy/type_as -> Cast; sum/mean/amax -> ReduceSum/Mean/Max;
linalg_vector_norm -> ReduceL2/L1; clamp* -> Clip; unsqueeze -> Unsqueeze; expand_as -> Expand of
Shape; where/masked_fill -> Where; exp, sqrt, rsqrt, tanh, sigmoid, silu, hardswish, pow, relu,
*_like, arange, cat, max.dim, getitem, adaptive_avg_pool2d (1x1). Constants (``const/<key>``) are
initializers. Any other op raises NotImplementedError naming the op and its program step.
A quantize step is QuantizeLinear of the island's float output (ORT's own float, so island outputs
may differ from PyTorch's by float32 rounding, and a value near a grid midpoint may land one LSB off).

Batch. ``batch=None`` writes a dynamic batch (input dim "batch"): ``sym_size.int`` becomes
Shape(x, start=d, end=d+1) and the reshapes that use it Concat it with their literal sizes; other
shape-changing ops use a shape with the one batch-dependent dimension as -1 (found by running the
NumPy reference on zeros at batches 2 and 3); a shape that cannot be written so is refused. An int
``batch`` writes static shapes (shapes and symbolic sizes evaluated at that batch).

Fused activations and grids narrower than the container. A layer's output is
``clip(requantize(acc) + z, lo, hi)`` with ``(lo, hi) = layer.clip``. A Relu is put before the
QuantizeLinear where it is the canonical QDQ pattern, i.e. redundant with the Q's saturation
(zero point = container minimum): ORT folds it into its integer kernel. Any bound that the Q's
container does not already enforce -- ReLU6 below the observed range, a relu with a zero point above
the container minimum, and every grid narrower than 8 bits -- is applied *after* the Q as
DequantizeLinear -> Clip(float bounds (lo - z) * s, (hi - z) * s) -> QuantizeLinear (same s, z).
That is exact (the Clip sees grid values, its bounds are grid values) and keeps the
DQ -> op -> Q group intact, so ORT still fuses it into QLinearConv / QGemm / QLinearAdd.

Bits < 8 (``low_bit``):
  "clip" (default)  8-bit containers (uint8/int8 activations, int8 weights) and the narrower grid by
                    the post-Q Clip above. ORT 1.32 loads it and keeps its integer fusions
                    (QLinearConv, QGemm, QLinearAdd, QLinearConcat, QLinearGlobalAveragePool).
  "int4"            UINT4/INT4 QuantizeLinear/DequantizeLinear (ONNX opset 21) for 4-bit (and
                    narrower) activations and weights: the container is the grid. ORT 1.32 runs the
                    digits ResNet this way but fuses nothing (Conv/Gemm/Add in float on dequantized
                    values), and refuses graphs with a MaxPool after a 4-bit DQ (its QDQ
                    propagation leaves a MaxPool on uint4). Clips on 4-bit containers are Max/Min:
                    ORT mishandles Relu/Clip -> 4-bit QuantizeLinear (see the tests).

ONNX Runtime 1.32 facts this module works around or reports (tests/test_qdq_export.py):
  - Pad's opset-18 ``axes`` input is mis-permuted by ORT's NHWC layout transform (wrong Gather,
    runtime error): pads are written for every dimension instead.
  - With symmetric (int8) activations, a Q feeding several consumers (a residual branch) is not
    converted to uint8, so the Convs reading it stay float Conv (still exact up to the rounding
    caveat below); asymmetric uint8 activations fuse everywhere.
  - Opsets 18, 19, 20 and 21 all load and give the same outputs for 8-bit models.

Rounding. QuantizeLinear rounds half to even like tvmptq's float-to-int, so the input quantization
is bit-exact. tvmptq's requantize is the integer ``(acc * m + 2^(k-1)) >> k`` (round half up);
ONNX Runtime's fused kernels (QLinearConv, QGemm, QLinearAdd, QLinearGlobalAveragePool) requantize
with float multipliers and round half to even, and unfused ops compute in float32: outputs differ
from tvmptq's integer program by one step of the grid in rare elements (measured in the tests).
Exact ties are not rare where a layer's real multiplier is a power of two (``x * 0.5`` on an
unchanged scale): there round half up and half to even disagree on every odd input.

MiniLM W8A8 (minmax, 8 calibration sentences; tests/test_qdq_export.py, 8 evaluation sentences):
ORT 1.32 runs all 66 integer layers as integer kernels (36 QGemm, 12 QLinearMatMul, 12 QLinearAdd,
6 QLinearMul) and only the islands in float. Before the attention softmax, ORT's integer tensors
differ from the NumPy reference's by one LSB in ~1e-6..1e-4 of the elements (rounding ties); one
LSB of the attention-score grid (~0.66) is a factor ~1.9 inside softmax (up to 11 LSB of the
softmax output), so a flipped tie there moves the rest of that sentence: 6 of 8 sentences come out
identical (cosine 1.0000), two at cosine 0.961 / 0.931 (max |diff| 0.065 on the unit-norm
embedding). Against FP32 ORT is as good as the simulation (mean cosine 0.8739 vs 0.8736).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx

from .qdq_program import QDQProgram
from .qdq_values import _IR_VERSION, LINEAR_3D_FORMS, LOW_BIT_MODES, QDQ_OPSET

__all__ = ["QDQ_OPSET", "LOW_BIT_MODES", "LINEAR_3D_FORMS", "export_qdq_onnx", "ort_optimized_op_counts", "run_qdq_onnx"]


def export_qdq_onnx(plan, path, batch: int | None = 1, *, low_bit: str = "clip", opset: int = QDQ_OPSET,
                    check: bool = True, linear_3d: str = "gemm") -> Path:
    """Write ``plan`` as a QDQ ONNX model at ``path``; returns the path.

    ``batch``: the fixed batch of the model's inputs, or None for a dynamic batch dimension.
    ``linear_3d``: how linears on rank > 2 inputs are written ("gemm": Reshape + Gemm, ORT QGemm;
    "matmul": MatMul + Add, ORT MatMulIntegerToFloat).

    ``low_bit``: how grids narrower than 8 bits are written ("clip": 8-bit containers and a Clip on
    the grid values; "int4": UINT4/INT4 Q/DQ, opset 21). ``opset``: 21 (default), 20, 19 or 18
    (16- and 4-bit containers need 21). ``check``: run ``onnx.checker.check_model`` on the result.
    Raises NotImplementedError naming the first op or layer kind the export does not cover.
    """
    if plan.config.get("integer_islands"):  # ONNX Softmax is float: it would not be the plan's integer softmax
        raise NotImplementedError(f"plan computes {', '.join(plan.config['integer_islands'])} islands in integers "
                                  "(integer_islands); the QDQ export writes float islands only: quantize without "
                                  "--integer-islands to export")
    if low_bit not in LOW_BIT_MODES:
        raise ValueError(f"low_bit must be one of {LOW_BIT_MODES}, got {low_bit!r}")
    if opset not in _IR_VERSION:
        raise ValueError(f"opset must be one of {sorted(_IR_VERSION)}, got {opset}")
    if low_bit == "int4" and opset < 21:
        raise ValueError("low_bit='int4' needs opset 21 (UINT4/INT4 QuantizeLinear)")
    if batch is not None and (not isinstance(batch, int) or batch < 1):
        raise ValueError(f"batch must be a positive int or None (dynamic), got {batch!r}")
    if linear_3d not in LINEAR_3D_FORMS:
        raise ValueError(f"linear_3d must be one of {LINEAR_3D_FORMS}, got {linear_3d!r}")
    model = QDQProgram(plan, batch, low_bit, opset, linear_3d).build()
    try:
        model = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    except Exception:  # shapes are a convenience for readers; ORT infers its own
        pass
    if check:
        onnx.checker.check_model(model, full_check=False)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def ort_optimized_op_counts(path, level: str = "ORT_ENABLE_ALL") -> dict[str, int]:
    """Node count per op type of the graph ONNX Runtime actually runs (after its QDQ fusions)."""
    import tempfile
    from collections import Counter

    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
    options.log_severity_level = 3  # not the "hardware specific optimizations" warning
    with tempfile.TemporaryDirectory(prefix="tvmptq-ort-") as tmp:
        options.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        model = onnx.load(options.optimized_model_filepath)
    return dict(Counter(n.op_type for n in model.graph.node))


def run_qdq_onnx(plan, *inputs: np.ndarray, path=None, batch: int | None = None, threads: int | None = None,
                 **export_kwargs) -> tuple[np.ndarray, Path]:
    """Export ``plan`` (dynamic batch by default) and run it in ONNX Runtime (CPU) on ``inputs``.

    Returns (the model's first output as float32, the .onnx path). For benchmarks: e.g. MiniLM,
    ``run_qdq_onnx(qm.plan, input_ids, attention_mask, threads=1)`` gives the (N, 384) embeddings
    that ``qm.runner()(input_ids, attention_mask)`` gives, up to the rounding noted in the module
    docstring. ``path``: where to write the model (default: a temporary file, deleted afterwards).
    ``threads``: ORT intra-op threads. Other keywords go to :func:`export_qdq_onnx`. A fixed
    ``batch`` runs the inputs in chunks of that batch (the last one zero-padded).
    """
    import tempfile

    from ..peers.onnxruntime_peer import OrtRunner

    with tempfile.TemporaryDirectory(prefix="tvmptq-qdq-") as tmp:
        target = Path(path) if path is not None else Path(tmp) / f"{plan.model}_qdq.onnx"
        export_qdq_onnx(plan, target, batch, **export_kwargs)
        out = np.asarray(OrtRunner(target, threads=threads)(*inputs), np.float32)
    return out, target
