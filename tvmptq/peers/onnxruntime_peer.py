"""ONNX Runtime static quantization (QDQ, per-channel) as a peer baseline for tvmptq.

The pipeline is the one ORT documents for CPU:
  torch module --dynamo exporter (opset 18)--> FP32 ONNX --quant_pre_process--> FP32 ONNX ready for quantization
  --quantize_static(QDQ, per_channel, u8 activations / s8 weights)--> QDQ ONNX, run by `OrtRunner`.

Batch convention: models are exported with a fixed batch dimension (the batch of `example_inputs`; batch 1
in the protocol scripts, because the latency protocol is batch 1 and TVM imports static shapes).
`OrtRunner` therefore splits any number of samples into chunks of the model's batch and pads the last
chunk, so callers never care which batch the model was exported with. Calibration batches must have
exactly the model's input shapes.

4-bit in ORT 1.32 (measured, see tests/test_ort_peer.py): quantize_static accepts QInt4/QUInt4 in QDQ
format and emits com.microsoft QuantizeLinear/DequantizeLinear contrib ops (the model stays at opset 18).
  - W4A8 (per-channel int4 weights, uint8 activations) and W4A4 load and run in an InferenceSession.
  - W8A4 is written but the session refuses it at the default optimization level: the QDQ->QLinearConv
    fusion produces a QLinearConv with a uint4 input, which is an invalid graph. `ort_quantize_static`
    checks this by loading the result and raises `OrtRefusedError` with ORT's own message.
  - Relu/Clip kept in the graph (Distribution, see METHOD_EXTRA_OPTIONS) with 4-bit activations: refused at
    load time too (the Relu/Clip->QuantizeLinear fusion rejects the uint4 zero point).
"""

from __future__ import annotations

import contextlib
import io
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)
from onnxruntime.quantization.preprocess import quant_pre_process

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

CALIBRATION_METHODS = ("MinMax", "Entropy", "Percentile", "Distribution")

# Bit width -> ORT quant type. Weights are signed (ORT quantizes them symmetrically), activations unsigned
# (asymmetric, so ReLU/ReLU6 outputs use the whole range and ORT can drop the Clip/Relu nodes).
WEIGHT_TYPES = {8: QuantType.QInt8, 4: QuantType.QInt4}
ACTIVATION_TYPES = {8: QuantType.QUInt8, 4: QuantType.QUInt4}

# ORT's QDQ quantizer deletes Relu/Clip nodes whose range the asymmetric activation quantization already
# clips to. The Distribution calibrator (meant for float8) returns symmetric ranges [-t, t], so the deleted
# Relu/Clip no longer clip anything and negative values leak through: out of the box, Distribution gives
# 0 % top-1 agreement on EfficientNet-Lite0 (and SQNR ~3 dB on the test CNN). Keeping the activations in the
# graph restores it; callers can still pass {"QDQKeepRemovableActivations": False} to see ORT as is.
# With 4-bit activations the kept Relu/Clip make ORT refuse the model instead (its Relu/Clip->QuantizeLinear
# fusion does not accept a uint4 zero point), so Distribution has no working A4 configuration in ORT 1.32.
METHOD_EXTRA_OPTIONS = {"Distribution": {"QDQKeepRemovableActivations": True}}

# The names QuantizeLinear/DequantizeLinear are used by both the ONNX domain (8-bit) and com.microsoft
# (4-bit contrib ops); everything below matches on op_type only.
QUANTIZE_OPS = ("QuantizeLinear",)
DEQUANTIZE_OPS = ("DequantizeLinear",)


class OrtRefusedError(RuntimeError):
    """ONNX Runtime refused a quantization configuration (in quantize_static or when loading its result)."""


# --------------------------------------------------------------------------------------------------------
# Export


def export_onnx(
    module,
    example_inputs: tuple,
    path,
    input_names: Sequence[str],
    output_names: Sequence[str] = ("output",),
    preprocess: bool = True,
) -> Path:
    """Export `module` with the dynamo exporter (opset 18) to one self-contained ONNX file at `path`.

    The dynamo exporter folds EfficientNet's static-SAME pads into Conv (the legacy exporter leaves dynamic
    Pad nodes). Weights are embedded (external_data=False): the models here are far below protobuf's 2 GB
    limit and one file is simpler to pass around (TVM's from_onnx, ORT, quantize_static).

    With `preprocess`, the export goes through ORT's `quant_pre_process` (symbolic + ONNX shape inference
    and ORT's basic graph optimizations), which ORT recommends before static quantization: it gives every
    tensor a shape (a tensor without one cannot be quantized) and marks the model as pre-processed.
    Measured on EfficientNet-Lite0 and the test CNN: it neither helps nor hurts, because the dynamo exporter
    already folds BatchNorm and gives every shape (same 94 nodes, identical quantized metrics); it costs
    about a second and silences ORT's "please pre-process" warnings. Kept because ORT recommends it and
    other models may need the shapes.
    """
    import torch  # only export needs torch; keep the rest of the module importable without it

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    module = module.eval()
    with tempfile.TemporaryDirectory(prefix="tvmptq-export-") as tmp:
        raw_path = Path(tmp) / "exported.onnx"
        # The exporter narrates each step on stdout; only its exceptions matter here.
        with torch.no_grad(), contextlib.redirect_stdout(io.StringIO()):
            torch.onnx.export(
                module,
                tuple(example_inputs),
                str(raw_path),
                input_names=list(input_names),
                output_names=list(output_names),
                opset_version=18,
                dynamo=True,
                external_data=False,
            )
        if preprocess:
            try:
                quant_pre_process(str(raw_path), str(path))
            except TypeError:
                # ORT's symbolic shape inference fails on the Expand of MiniLM's attention mask
                # ("object of type 'NoneType' has no len()"); ONNX's own shape inference, which
                # quant_pre_process runs next, gives the shapes there, so skip only the symbolic pass
                quant_pre_process(str(raw_path), str(path), skip_symbolic_shape=True)
        else:
            onnx.save(onnx.load(str(raw_path)), str(path))
    return path


# --------------------------------------------------------------------------------------------------------
# Static quantization


@dataclass
class CalibrationStats:
    """What one quantize_static call cost. `seconds` covers calibration and the QDQ rewrite; calibration
    dominates (the rewrite of EfficientNet-Lite0 takes a few seconds). `calibrated` is False when the
    ranges came from an existing calibration cache (then `seconds` is the rewrite alone)."""

    method: str
    weight_bits: int
    activation_bits: int
    num_batches: int
    stride: int  # batches whose intermediate outputs the calibrator holds at once
    seconds: float
    rss_before_mb: float
    peak_rss_mb: float  # process peak RSS during the call
    peak_rss_method: str  # "VmHWM" (kernel high-water mark, reset before the call) or "sampled"
    calibrated: bool

    def as_dict(self) -> dict:
        return asdict(self)


class _BatchReader(CalibrationDataReader):
    """Calibration reader over a list of input dicts.

    `set_range` is what quantize_static's CalibStridedMinMax option calls: it collects (and, for the
    histogram calibrators, folds into histograms) one stride of batches at a time, instead of keeping the
    outputs of every intermediate tensor for every batch alive until the end. Despite its name the option
    works for all four calibrators.
    """

    def __init__(self, batches: list[dict[str, np.ndarray]]):
        self.batches = batches
        self._iter = iter(batches)

    def get_next(self):
        return next(self._iter, None)

    def __len__(self):
        return len(self.batches)

    def set_range(self, start_index: int, end_index: int):
        self._iter = iter(self.batches[start_index:end_index])


def _largest_divisor_at_most(n: int, limit: int) -> int:
    """CalibStridedMinMax requires the stride to divide the number of batches."""
    for d in range(max(1, min(n, limit)), 0, -1):
        if n % d == 0:
            return d
    return 1


def _check_batches(batches: list[dict[str, np.ndarray]], model_path: Path) -> None:
    if not batches:
        raise ValueError("calibration_batches is empty")
    sess = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    expected = {i.name: i.shape for i in sess.get_inputs()}
    for k, batch in enumerate(batches):
        if set(batch) != set(expected):
            raise ValueError(f"calibration batch {k} has inputs {sorted(batch)}, the model wants {sorted(expected)}")
        for name, shape in expected.items():
            got = batch[name].shape
            if len(got) != len(shape) or any(isinstance(s, int) and s != g for s, g in zip(shape, got)):
                raise ValueError(f"calibration batch {k}: input {name!r} has shape {got}, the model wants {shape}")


def _rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def _read_vm_hwm_mb() -> float | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


class _PeakRss:
    """Peak RSS of this process over a `with` block.

    On Linux, writing "5" to /proc/self/clear_refs resets the kernel's high-water mark (VmHWM), which then
    gives the exact peak of the block. Elsewhere a thread samples RSS every 20 ms (can miss short spikes).
    """

    def __enter__(self):
        self.before_mb = _rss_mb()
        self.method = "VmHWM"
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            if _read_vm_hwm_mb() is None:
                raise OSError("no VmHWM")
        except OSError:
            self.method = "sampled"
            self._samples = [self.before_mb]
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self):
        while not self._stop.wait(0.02):
            self._samples.append(_rss_mb())

    def __exit__(self, *exc):
        if self.method == "VmHWM":  # the reset sets the mark to the RSS of that moment, which pages freed
            # between the reading of before_mb and the reset can put below before_mb: the block's peak is both
            self.peak_mb = max(_read_vm_hwm_mb(), self.before_mb)
        else:
            self._stop.set()
            self._thread.join()
            self.peak_mb = max(self._samples + [_rss_mb()])
        return False


def _quant_types(weight_bits: int, activation_bits: int) -> tuple[QuantType, QuantType]:
    if weight_bits not in WEIGHT_TYPES or activation_bits not in ACTIVATION_TYPES:
        raise ValueError(
            f"W{weight_bits}A{activation_bits}: this peer supports weight and activation bits in "
            f"{sorted(WEIGHT_TYPES)} (ORT QuantType QInt8/QUInt8 and QInt4/QUInt4)"
        )
    return WEIGHT_TYPES[weight_bits], ACTIVATION_TYPES[activation_bits]


def ort_quantize_static_with_stats(
    fp32_onnx_path,
    out_path,
    calibration_batches: Iterable[dict[str, np.ndarray]],
    method: str = "MinMax",
    weight_bits: int = 8,
    activation_bits: int = 8,
    calibration_stride: int = 32,
    extra_options: dict | None = None,
    calibration_cache_path=None,
) -> tuple[Path, CalibrationStats]:
    """`ort_quantize_static`, also returning the time and peak RSS of the quantize_static call."""
    if method not in CALIBRATION_METHODS:
        raise ValueError(f"method must be one of {CALIBRATION_METHODS}, got {method!r}")
    weight_type, activation_type = _quant_types(weight_bits, activation_bits)
    fp32_onnx_path, out_path = Path(fp32_onnx_path), Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)

    # The inputs themselves are small (256 EfficientNet views are 150 MB); it is the calibrator's copies
    # of every intermediate tensor that need bounding, which the stride does.
    batches = list(calibration_batches)
    cache_hit = calibration_cache_path is not None and Path(calibration_cache_path).is_file()
    if not cache_hit:
        _check_batches(batches, fp32_onnx_path)
    stride = _largest_divisor_at_most(max(1, len(batches)), calibration_stride)
    options = {"CalibStridedMinMax": stride, **METHOD_EXTRA_OPTIONS.get(method, {}), **(extra_options or {})}

    tag = f"W{weight_bits}A{activation_bits} {method}"
    start = time.perf_counter()
    # The histogram calibrators print progress lines on stdout; keep the caller's output readable.
    with _PeakRss() as rss, contextlib.redirect_stdout(io.StringIO()):
        try:
            quantize_static(
                str(fp32_onnx_path),
                str(out_path),
                _BatchReader(batches),
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                activation_type=activation_type,
                weight_type=weight_type,
                calibrate_method=getattr(CalibrationMethod, method),
                extra_options=options,
                calibration_cache_path=calibration_cache_path,
            )
        except Exception as e:  # ORT raises plain ValueError/RuntimeError/etc. for configurations it rejects
            raise OrtRefusedError(f"onnxruntime {ort.__version__} quantize_static refused {tag}: {e}") from e
    seconds = time.perf_counter() - start

    # A QDQ model that ORT writes is not necessarily one it can load: check with the default optimization
    # level, which is what OrtRunner uses and where ORT's QDQ fusions run.
    try:
        ort.InferenceSession(str(out_path), providers=["CPUExecutionProvider"])
    except Exception as e:
        raise OrtRefusedError(
            f"onnxruntime {ort.__version__} wrote the {tag} QDQ model to {out_path} but refused to load it "
            f"with its default graph optimizations: {e}"
        ) from e

    stats = CalibrationStats(
        method=method,
        weight_bits=weight_bits,
        activation_bits=activation_bits,
        num_batches=len(batches),
        stride=stride,
        seconds=seconds,
        rss_before_mb=rss.before_mb,
        peak_rss_mb=rss.peak_mb,
        peak_rss_method=rss.method,
        calibrated=not cache_hit,
    )
    return out_path, stats


def ort_quantize_static(
    fp32_onnx_path,
    out_path,
    calibration_batches: Iterable[dict[str, np.ndarray]],
    method: str = "MinMax",
    weight_bits: int = 8,
    activation_bits: int = 8,
    calibration_stride: int = 32,
    extra_options: dict | None = None,
    calibration_cache_path=None,
) -> Path:
    """Quantize an FP32 ONNX model with ORT's quantize_static: QDQ format, per-channel weights.

    Weights: QInt8 (QInt4 for 4 bits), symmetric, per output channel. Activations: QUInt8 (QUInt4),
    asymmetric, per tensor, ranges from `method` ("MinMax", "Entropy", "Percentile", "Distribution") with
    ORT's default settings for each (except that Distribution keeps Relu/Clip, see METHOD_EXTRA_OPTIONS).
    Each calibration batch is a dict input name -> array with the model's input shapes.

    `calibration_stride` bounds how many batches' intermediate outputs the calibrator holds at once. MinMax
    results do not depend on it. The histogram methods merge histograms per stride, which moves their
    thresholds a little: on EfficientNet-Lite0, Percentile W8A8 gives 86.9 % top-1 agreement with stride 32
    (2.6 GB peak RSS) and 87.1 % in ORT's default single pass over 256 views (16.4 GB).

    `calibration_cache_path`: ORT's JSON cache of the calibrated ranges, written on the first call and read
    (skipping calibration) on later ones. The ranges do not depend on the bit widths, so one cache per
    (model, method, data, stride) serves W8A8, W4A8 and W4A4 alike.

    Raises `OrtRefusedError` if ORT rejects the configuration, in quantize_static or when loading the result.
    """
    path, _ = ort_quantize_static_with_stats(
        fp32_onnx_path,
        out_path,
        calibration_batches,
        method=method,
        weight_bits=weight_bits,
        activation_bits=activation_bits,
        calibration_stride=calibration_stride,
        extra_options=extra_options,
        calibration_cache_path=calibration_cache_path,
    )
    return path


# --------------------------------------------------------------------------------------------------------
# Running


class OrtRunner:
    """`runner(*arrays) -> np.ndarray`: the model's first output for any number of samples.

    Positional arrays follow the model's input order. The model's fixed batch dimension b (1 for the
    protocol exports) is honoured by running chunks of b samples and zero-padding the last chunk; a
    symbolic batch dimension runs everything in one call.
    """

    def __init__(self, onnx_path, threads: int | None = None):
        options = ort.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1  # the graphs here are chains; parallelism is inside the ops
        self.session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
        self.inputs = self.session.get_inputs()
        self.input_names = [i.name for i in self.inputs]
        batch = self.inputs[0].shape[0] if self.inputs[0].shape else None
        self.batch_size = batch if isinstance(batch, int) else None

    def __call__(self, *arrays) -> np.ndarray:
        if len(arrays) != len(self.inputs):
            raise ValueError(f"expected {len(self.inputs)} inputs {self.input_names}, got {len(arrays)}")
        arrays = [np.asarray(a, dtype=_numpy_dtype(i.type)) for a, i in zip(arrays, self.inputs)]
        n = arrays[0].shape[0]
        if self.batch_size is None:
            return self.session.run(None, dict(zip(self.input_names, arrays)))[0]
        b = self.batch_size
        outputs = []
        for start in range(0, n, b):
            chunk = [a[start : start + b] for a in arrays]
            real = chunk[0].shape[0]
            if real < b:
                chunk = [np.concatenate([c, np.zeros((b - real, *c.shape[1:]), c.dtype)]) for c in chunk]
            outputs.append(self.session.run(None, dict(zip(self.input_names, chunk)))[0][:real])
        return np.concatenate(outputs)


_ORT_TYPES = {
    "tensor(float)": np.float32,
    "tensor(double)": np.float64,
    "tensor(float16)": np.float16,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(uint8)": np.uint8,
    "tensor(int8)": np.int8,
    "tensor(bool)": np.bool_,
}


def _numpy_dtype(ort_type: str):
    return _ORT_TYPES.get(ort_type)


# --------------------------------------------------------------------------------------------------------
# Inspecting a QDQ model


def count_ops(path) -> dict[str, int]:
    """Node count per op_type (domains merged: 4-bit QDQ uses com.microsoft QuantizeLinear/DequantizeLinear)."""
    model = onnx.load(str(path), load_external_data=False)
    return dict(Counter(node.op_type for node in model.graph.node))


def quantized_tensor_names(qdq_onnx_path, include_weights: bool = False) -> list[str]:
    """Tensors ORT quantized, in graph order.

    Activations are the inputs of QuantizeLinear nodes. ORT stores weights and biases already quantized
    (initializer `<name>_quantized` feeding a DequantizeLinear, no QuantizeLinear); with `include_weights`
    their original float names are listed too.
    """
    model = onnx.load(str(qdq_onnx_path), load_external_data=False)
    initializers = {t.name for t in model.graph.initializer}
    names: dict[str, None] = {}  # ordered set
    for node in model.graph.node:
        if node.op_type in QUANTIZE_OPS:
            names[node.input[0]] = None
        elif include_weights and node.op_type in DEQUANTIZE_OPS and node.input[0] in initializers:
            names[node.input[0].removesuffix("_quantized")] = None
    return list(names)


def weight_scale_axes(qdq_onnx_path) -> dict[str, int | None]:
    """For each quantized weight initializer: the axis of its DequantizeLinear (None for per-tensor)."""
    model = onnx.load(str(qdq_onnx_path), load_external_data=False)
    initializers = {t.name: t for t in model.graph.initializer}
    axes = {}
    for node in model.graph.node:
        if node.op_type in DEQUANTIZE_OPS and node.input[0] in initializers:
            scale = initializers.get(node.input[1])
            per_channel = scale is not None and len(scale.dims) == 1 and scale.dims[0] > 1
            axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
            axes[node.input[0]] = axis if per_channel else None
    return axes

