"""The vocabulary of the QDQ ONNX export (tvmptq/export/qdq_onnx.py): containers and ONNX types,
the ATen op sets it treats as data movement, and the values a program step produces."""
from __future__ import annotations

from dataclasses import dataclass

from onnx import TensorProto

QDQ_OPSET = 21
_IR_VERSION = {18: 8, 19: 9, 20: 9, 21: 10}

# name, elem type, grid range, first opset whose QuantizeLinear/DequantizeLinear accept it
_CONTAINERS = {
    "uint4": (TensorProto.UINT4, 0, 15, 21),
    "int4": (TensorProto.INT4, -8, 7, 21),
    "uint8": (TensorProto.UINT8, 0, 255, 13),
    "int8": (TensorProto.INT8, -128, 127, 13),
    "uint16": (TensorProto.UINT16, 0, 65535, 21),
    "int16": (TensorProto.INT16, -32768, 32767, 21),
}
_ONNX_INPUT_TYPES = {"float32": TensorProto.FLOAT, "float64": TensorProto.DOUBLE,
                     "float16": TensorProto.FLOAT16, "int64": TensorProto.INT64,
                     "int32": TensorProto.INT32, "uint8": TensorProto.UINT8, "bool": TensorProto.BOOL}
LOW_BIT_MODES = ("clip", "int4")
LINEAR_3D_FORMS = ("gemm", "matmul")

# Data movement that changes nothing: the value is aliased, no node is written.
_IDENTITY_OPS = {"contiguous.default", "clone.default", "alias.default", "detach.default",
                 "dropout.default", "lift_fresh_copy.default"}
# Data movement written as Reshape to the step's static output shape.
_RESHAPE_OPS = {"view.default", "reshape.default", "_unsafe_view.default", "unflatten.int",
                "squeeze.dim", "squeeze.dims", "squeeze.default", "unsqueeze.default"}
_MOVEMENT_OPS = _IDENTITY_OPS | _RESHAPE_OPS | {
    "flatten.using_ints", "expand.default", "permute.default", "transpose.int", "t.default",
    "slice.Tensor", "select.int", "pad.default", "constant_pad_nd.default", "max_pool2d.default"}
# Steps that compute nothing the graph needs.
_NO_OPS = {"_assert_tensor_metadata.default"}
_INT64_MAX = 2 ** 63 - 1
_ONNX_TYPES = {"float32": TensorProto.FLOAT, "float64": TensorProto.DOUBLE, "float16": TensorProto.FLOAT16,
               "bfloat16": TensorProto.BFLOAT16, "int64": TensorProto.INT64, "int32": TensorProto.INT32,
               "int16": TensorProto.INT16, "int8": TensorProto.INT8, "uint8": TensorProto.UINT8,
               "bool": TensorProto.BOOL}


def _onnx_type(dtype: str) -> int:
    if str(dtype) not in _ONNX_TYPES:
        raise NotImplementedError(f"dtype {dtype!r} has no ONNX tensor type here")
    return _ONNX_TYPES[str(dtype)]


@dataclass(frozen=True)
class _Int:
    """An integer value of the program: the QuantizeLinear output ``name`` with params ``t``."""

    name: str
    t: object          # TensorQuant
    container: str
    rank: int


@dataclass(frozen=True)
class _Float:
    """A float tensor (float-island value, model input, auxiliary tensor; ``dtype`` may be an
    integer or bool type for masks and indices)."""

    name: str
    rank: int
    dtype: str = "float32"


@dataclass(frozen=True, eq=False)
class _Dim:
    """A symbolic size (``sym_size.int``) of a dynamic-batch export: dimension ``dim`` of ``src``."""

    src: object        # _Int | _Float
    dim: int


@dataclass(frozen=True)
class _Const:
    """A constant of the program, ``plan.constants[key]`` (an initializer once used)."""

    key: str


@dataclass(frozen=True)
class _DType:
    name: str


def _container_range(c: str) -> tuple[int, int]:
    return _CONTAINERS[c][1], _CONTAINERS[c][2]


def _leaves(a):
    if isinstance(a, (list, tuple)):
        for v in a:
            yield from _leaves(v)
    elif isinstance(a, dict) and not ({"const", "symbolic", "dtype"} & set(a)):
        for v in a.values():
            yield from _leaves(v)
    else:
        yield a
