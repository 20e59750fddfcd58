"""A TFLite graph (tensors, buffers, operators) written as a flatbuffer with the `tflite` schema
package's generated builders and `flatbuffers`: no hand-rolled bytes.

:class:`TFLiteGraph` collects the model as data (what :mod:`tvmptq.export.tflite` builds from a
plan); :meth:`TFLiteGraph.serialize` writes it. One subgraph, schema version 3.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import flatbuffers
import numpy as np
import tflite

TENSOR_TYPES = {np.dtype(np.int8): tflite.TensorType.INT8, np.dtype(np.int32): tflite.TensorType.INT32,
                np.dtype(np.int64): tflite.TensorType.INT64, np.dtype(np.float32): tflite.TensorType.FLOAT32,
                np.dtype(np.uint8): tflite.TensorType.UINT8}

# Operator versions for int8 kernels (the TFLite runtime's op version table, per-channel int8).
OP_VERSIONS = {"CONV_2D": 3, "DEPTHWISE_CONV_2D": 3, "FULLY_CONNECTED": 5, "ADD": 2, "MEAN": 2,
               "CONCATENATION": 2, "PAD": 2, "RESHAPE": 1, "TRANSPOSE": 2, "MAX_POOL_2D": 2,
               "AVERAGE_POOL_2D": 2, "QUANTIZE": 2}


@dataclass
class Quant:
    """Affine quantization: real = scale * (q - zero_point), per tensor or along ``axis``."""

    scale: np.ndarray
    zero_point: np.ndarray
    axis: int = 0


@dataclass
class Tensor:
    name: str
    shape: tuple[int, ...]
    dtype: np.dtype
    data: np.ndarray | None = None   # constant (weights, bias, shapes) or None for activations
    quant: Quant | None = None


@dataclass
class Operator:
    op: str                     # BuiltinOperator name, e.g. "CONV_2D"
    inputs: list[int]
    outputs: list[int]
    options: str | None = None  # BuiltinOptions name, e.g. "Conv2DOptions"
    attrs: dict = field(default_factory=dict)  # fields of the options table, e.g. {"StrideW": 2}
    source: str = ""            # the plan step it comes from (for reports)


@dataclass
class TFLiteGraph:
    tensors: list[Tensor] = field(default_factory=list)
    operators: list[Operator] = field(default_factory=list)
    inputs: list[int] = field(default_factory=list)
    outputs: list[int] = field(default_factory=list)

    def add_tensor(self, name, shape, dtype, data=None, quant=None) -> int:
        if data is not None:
            data = np.ascontiguousarray(data, dtype=dtype)
            assert tuple(data.shape) == tuple(shape), (name, data.shape, shape)
        self.tensors.append(Tensor(name, tuple(int(s) for s in shape), np.dtype(dtype), data, quant))
        return len(self.tensors) - 1

    def add_op(self, op, inputs, outputs, options=None, source="", **attrs) -> Operator:
        self.operators.append(Operator(op, list(inputs), list(outputs), options, attrs, source))
        return self.operators[-1]

    # -- flatbuffer ------------------------------------------------------------------------
    def serialize(self, description: str = "tvmptq") -> bytes:
        b = flatbuffers.Builder(1 << 16)
        buffers = [_buffer(b, None)]           # buffer 0: the empty buffer, by convention
        tensor_offsets = []
        for t in self.tensors:
            index = 0
            if t.data is not None:
                buffers.append(_buffer(b, t.data))
                index = len(buffers) - 1
            tensor_offsets.append(_tensor(b, t, index))
        codes = sorted({o.op for o in self.operators}, key=[o.op for o in self.operators].index)
        op_offsets = [_operator(b, o, codes.index(o.op)) for o in self.operators]

        name = b.CreateString("main")
        sub_tensors = _vector(b, tflite.SubGraphStartTensorsVector, tensor_offsets)
        sub_ops = _vector(b, tflite.SubGraphStartOperatorsVector, op_offsets)
        sub_in = b.CreateNumpyVector(np.asarray(self.inputs, np.int32))
        sub_out = b.CreateNumpyVector(np.asarray(self.outputs, np.int32))
        tflite.SubGraphStart(b)
        tflite.SubGraphAddTensors(b, sub_tensors)
        tflite.SubGraphAddOperators(b, sub_ops)
        tflite.SubGraphAddInputs(b, sub_in)
        tflite.SubGraphAddOutputs(b, sub_out)
        tflite.SubGraphAddName(b, name)
        subgraph = tflite.SubGraphEnd(b)

        code_offsets = []
        for op in codes:
            code = getattr(tflite.BuiltinOperator, op)
            tflite.OperatorCodeStart(b)
            tflite.OperatorCodeAddDeprecatedBuiltinCode(b, min(code, 127))  # placeholder above 127
            tflite.OperatorCodeAddBuiltinCode(b, code)
            tflite.OperatorCodeAddVersion(b, OP_VERSIONS.get(op, 1))
            code_offsets.append(tflite.OperatorCodeEnd(b))
        model_codes = _vector(b, tflite.ModelStartOperatorCodesVector, code_offsets)
        model_subgraphs = _vector(b, tflite.ModelStartSubgraphsVector, [subgraph])
        model_buffers = _vector(b, tflite.ModelStartBuffersVector, buffers)
        desc = b.CreateString(description)
        tflite.ModelStart(b)
        tflite.ModelAddVersion(b, 3)
        tflite.ModelAddOperatorCodes(b, model_codes)
        tflite.ModelAddSubgraphs(b, model_subgraphs)
        tflite.ModelAddDescription(b, desc)
        tflite.ModelAddBuffers(b, model_buffers)
        b.Finish(tflite.ModelEnd(b), file_identifier=b"TFL3")
        return bytes(b.Output())


def _vector(b, start, offsets) -> int:
    start(b, len(offsets))
    for off in reversed(offsets):
        b.PrependUOffsetTRelative(off)
    return b.EndVector()


def _buffer(b, data: np.ndarray | None) -> int:
    raw = None
    if data is not None:
        raw_bytes = np.frombuffer(data.astype(data.dtype.newbyteorder("<")).tobytes(), np.uint8)
        b.Prep(16, raw_bytes.size)  # data 16-byte aligned, as the TFLite converter writes it
        raw = b.CreateNumpyVector(raw_bytes)
    tflite.BufferStart(b)
    if raw is not None:
        tflite.BufferAddData(b, raw)
    return tflite.BufferEnd(b)


def _tensor(b, t: Tensor, buffer: int) -> int:
    name = b.CreateString(t.name)
    shape = b.CreateNumpyVector(np.asarray(t.shape, np.int32))
    quant = None
    if t.quant is not None:
        scale = b.CreateNumpyVector(np.asarray(t.quant.scale, np.float32).reshape(-1))
        zp = b.CreateNumpyVector(np.asarray(t.quant.zero_point, np.int64).reshape(-1))
        tflite.QuantizationParametersStart(b)
        tflite.QuantizationParametersAddScale(b, scale)
        tflite.QuantizationParametersAddZeroPoint(b, zp)
        tflite.QuantizationParametersAddQuantizedDimension(b, t.quant.axis)
        quant = tflite.QuantizationParametersEnd(b)
    tflite.TensorStart(b)
    tflite.TensorAddShape(b, shape)
    tflite.TensorAddType(b, TENSOR_TYPES[t.dtype])
    tflite.TensorAddBuffer(b, buffer)
    tflite.TensorAddName(b, name)
    if quant is not None:
        tflite.TensorAddQuantization(b, quant)
    return tflite.TensorEnd(b)


def _options(b, o: Operator) -> int | None:
    if o.options is None:
        return None
    vectors = {k: b.CreateNumpyVector(np.asarray(v, np.int32)) for k, v in o.attrs.items()
               if isinstance(v, (list, tuple))}
    getattr(tflite, f"{o.options}Start")(b)
    for k, v in o.attrs.items():
        getattr(tflite, f"{o.options}Add{k}")(b, vectors.get(k, v))
    return getattr(tflite, f"{o.options}End")(b)


def _operator(b, o: Operator, code_index: int) -> int:
    options = _options(b, o)
    ins = b.CreateNumpyVector(np.asarray(o.inputs, np.int32))
    outs = b.CreateNumpyVector(np.asarray(o.outputs, np.int32))
    tflite.OperatorStart(b)
    tflite.OperatorAddOpcodeIndex(b, code_index)
    tflite.OperatorAddInputs(b, ins)
    tflite.OperatorAddOutputs(b, outs)
    if options is not None:
        tflite.OperatorAddBuiltinOptionsType(b, getattr(tflite.BuiltinOptions, o.options))
        tflite.OperatorAddBuiltinOptions(b, options)
    return tflite.OperatorEnd(b)
