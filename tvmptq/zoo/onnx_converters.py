"""Extra onnx2torch converters, so that converted ONNX models pass through `torch.export`.

onnx2torch turns shape-like operands (Reshape's shape, Slice's starts/ends, Pad's pads, ...) into
tensor inputs that its modules read at run time (`torch.Size(shape)`, `.tolist()`, `.numpy()`).
Under `torch.export` those tensors are fake, so export fails with data-dependent-guard errors even
though the values are constants in the ONNX file. When the operands are constants (initializers
or Constant nodes, which is the norm once the graph is constant-folded), the converters below
build modules that hold them as Python ints instead (a Reshape that keeps the batch dim copies it
from its input, so the module stays valid at other batch sizes). Otherwise they fall back to
onnx2torch's own converter. They also add the opset-18 forms of the Reduce* ops (axes moved from an attribute to
an input) and Gelu (an op since opset 20), which onnx2torch 1.5 lacks and torch's exporters emit.

onnx2torch 1.5 also stops at about opset 17, while torch 2.13 exports opset 20 by default, where
many ops (Shape, Cast, Constant, ...) have newer versions that only widen the accepted types or add
optional inputs and attributes. `alias_newer_versions()` lets such nodes use the newest older
converter, after checking the schemas and that the node does not use anything new.

Both functions edit onnx2torch's converter table in place and are idempotent.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn


class _NotConstant(Exception):
    pass


def _constant(node, graph, index: int) -> Optional[torch.Tensor]:
    """The constant value of input `index` of `node`, None when that optional input is absent."""
    from onnx2torch.utils.common import get_const_value

    if index >= len(node.input_values) or not node.input_values[index]:
        return None
    try:
        value = get_const_value(node.input_values[index], graph)
    except KeyError:
        raise _NotConstant from None
    return value if isinstance(value, torch.Tensor) else torch.tensor(value)


def _is_constant(node, graph, index: int) -> bool:
    try:
        return _constant(node, graph, index) is not None
    except _NotConstant:
        return False


def _ints(value: Optional[torch.Tensor]) -> Optional[list[int]]:
    return None if value is None else [int(v) for v in value.flatten().tolist()]


def _result(module: nn.Module, node, data_inputs: int = 1):
    """A converter result whose module takes only the first `data_inputs` (non-constant) inputs."""
    from onnx2torch.utils.common import OnnxMapping, OperationConverterResult

    return OperationConverterResult(
        torch_module=module,
        onnx_mapping=OnnxMapping(inputs=tuple(node.input_values[:data_inputs]), outputs=node.output_values),
    )


# ---- modules with constant operands ------------------------------------------------------------


class StaticReshape(nn.Module):
    def __init__(self, shape: list[int], copied_dims: set[int]):
        super().__init__()
        self.shape, self.copied_dims = shape, copied_dims

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = [x.shape[i] if i in self.copied_dims else d for i, d in enumerate(self.shape)]
        return torch.reshape(x, shape)


class StaticExpand(nn.Module):
    def __init__(self, shape: list[int]):
        super().__init__()
        self.shape = shape

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # ONNX Expand broadcasts both ways, e.g. (3,1) with shape (2,1,6) -> (2,3,6).
        return x.expand(torch.broadcast_shapes(tuple(x.shape), tuple(self.shape)))


class StaticSplit(nn.Module):
    """ONNX Split with constant sizes (or equal parts): plain ints, so torch.export sees static
    part sizes (onnx2torch reads the sizes with ``Tensor.tolist()``, data-dependent under export,
    and a following Squeeze of a part then cannot tell that its dim is 1)."""

    def __init__(self, sizes: Optional[list[int]], parts: int, axis: int):
        super().__init__()
        self.sizes, self.parts, self.axis = sizes, parts, axis

    def forward(self, x: torch.Tensor):
        sizes = self.sizes or -(-x.shape[self.axis] // self.parts)  # ONNX: equal parts, the last smaller
        return torch.split(x, sizes, dim=self.axis)


class StaticSelect(nn.Module):
    """ONNX Gather with a constant scalar index (a ViT's CLS token, ``x[:, 0]``): ``select`` with a
    Python int, which torch.export keeps static (onnx2torch indexes with the tensor's ``item()``)."""

    def __init__(self, axis: int, index: int):
        super().__init__()
        self.axis, self.index = axis, index

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.select(self.axis, self.index)


class TableLookup(nn.Module):
    """ONNX Gather of rows of a constant float table by run-time indices (a word embedding):
    ``F.embedding``, as a PyTorch model spells it, so the gathered rows are activations the
    quantizer sees (onnx2torch's ``index`` of a buffer reads as auxiliary data). Indices are
    non-negative token ids (ONNX also allows negative ones; embedding refuses them)."""

    def __init__(self, table: torch.Tensor):
        super().__init__()
        self.register_buffer("weight", table)

    def forward(self, indices: torch.Tensor) -> torch.Tensor:
        return F.embedding(indices.long(), self.weight)


class StaticSlice(nn.Module):
    def __init__(self, starts: list[int], ends: list[int], axes: Optional[list[int]], steps: Optional[list[int]]):
        super().__init__()
        self.slices = list(zip(starts, ends, axes or range(len(starts)), steps or [1] * len(starts)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        index = [slice(None)] * x.dim()
        flip_dims = []
        for start, end, axis, step in self.slices:
            axis = axis % x.dim()
            if step < 0:
                # Same approach as onnx2torch: slice the flipped tensor with a positive step.
                flip_dims.append(axis)
                start, end, step = -start - 1, -end - 1, -step
            index[axis] = slice(start, end, step)
        if flip_dims:
            x = torch.flip(x, dims=flip_dims)
        return x[tuple(index)]


class StaticPad(nn.Module):
    _TORCH_MODES = {"constant": "constant", "reflect": "reflect", "edge": "replicate", "wrap": "circular"}

    def __init__(self, pads: list[int], axes: Optional[list[int]], mode: str, value: float):
        super().__init__()
        if mode not in self._TORCH_MODES:
            raise NotImplementedError(f'Pad mode "{mode}" is not implemented')
        self.pads, self.axes, self.mode, self.value = pads, axes, self._TORCH_MODES[mode], value

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ndim = x.dim()
        axes = [a % ndim for a in (self.axes if self.axes is not None else range(ndim))]
        begins = dict(zip(axes, self.pads[: len(axes)]))
        ends = dict(zip(axes, self.pads[len(axes) :]))
        torch_pads = []  # F.pad lists (begin, end) pairs from the last dim backwards
        for dim in reversed(range(ndim)):
            torch_pads += [begins.get(dim, 0), ends.get(dim, 0)]
        if self.mode == "constant":
            return F.pad(x, torch_pads, mode="constant", value=self.value)
        while torch_pads and torch_pads[-2:] == [0, 0]:  # non-constant modes only pad trailing dims
            torch_pads = torch_pads[:-2]
        return F.pad(x, torch_pads, mode=self.mode)


class StaticTile(nn.Module):
    def __init__(self, repeats: list[int]):
        super().__init__()
        self.repeats = repeats

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.repeat(self.repeats)


class StaticConstant(nn.Module):
    """A constant result (ConstantOfShape with a constant shape)."""

    def __init__(self, value: torch.Tensor):
        super().__init__()
        self.register_buffer("value", value)

    def forward(self) -> torch.Tensor:
        return self.value.clone()


class StaticResize(nn.Module):
    """Resize with constant scales or sizes: F.interpolate with Python numbers (onnx2torch's OnnxResize
    reads them with ``.tolist()`` at run time, which torch.export cannot trace)."""

    def __init__(self, mode: str, size: Optional[list[int]], scale: Optional[list[float]], align_corners):
        super().__init__()
        self.mode, self.size, self.scale, self.align_corners = mode, size, scale, align_corners

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, size=self.size, scale_factor=self.scale, mode=self.mode,
                             align_corners=self.align_corners)


# ---- converters -----------------------------------------------------------------------------------


def _static_dims(graph, value_name: str) -> Optional[list[Optional[int]]]:
    """The shape ONNX shape inference found for an activation (None for unknown dims)."""
    info = graph.value_info.get(value_name)
    if info is None or not info.type.HasField("tensor_type") or not info.type.tensor_type.HasField("shape"):
        return None
    return [d.dim_value if d.HasField("dim_value") else None for d in info.type.tensor_type.shape.dim]


def _reshape(node, graph):
    shape = _ints(_constant(node, graph, 1))
    # ONNX: a 0 copies the input's dim unless allowzero=1.
    copied = set() if node.attributes.get("allowzero", 0) else {i for i, d in enumerate(shape) if d == 0}
    # The graph was specialised to one batch size, so a reshape that keeps the batch reads e.g.
    # (1,64,3,3) -> [1, 576]. Copying dim 0 from the input instead gives the same result at that
    # batch size and keeps the module valid for other batch sizes (torch.export with a dynamic batch).
    data = node.input_values[0]
    dims = None if data in graph.initializers else _static_dims(graph, data)
    if dims and shape and dims[0] is not None and shape[0] == dims[0]:
        copied.add(0)
    return _result(StaticReshape(shape, copied), node)


def _expand(node, graph):
    return _result(StaticExpand(_ints(_constant(node, graph, 1))), node)


def _slice(node, graph):
    starts, ends, axes, steps = (_ints(_constant(node, graph, i)) for i in (1, 2, 3, 4))
    return _result(StaticSlice(starts, ends, axes, steps), node)


def _split(node, graph):
    sizes = _ints(_constant(node, graph, 1)) or node.attributes.get("split")
    module = StaticSplit(list(sizes) if sizes else None, len(node.output_values), node.attributes.get("axis", 0))
    return _result(module, node)


def _gather(node, graph):
    data = node.input_values[0]
    if data in graph.initializers:
        table = graph.initializers[data].to_torch()
        if node.attributes.get("axis", 0) != 0 or table.dim() != 2 or not table.is_floating_point() \
                or _is_constant(node, graph, 1):
            raise _NotConstant  # another lookup in a constant (it folds): onnx2torch's own converter
        from onnx2torch.utils.common import OnnxMapping, OperationConverterResult

        # The module reads only the indices; the table is its weight.
        return OperationConverterResult(torch_module=TableLookup(table), onnx_mapping=OnnxMapping(
            inputs=(node.input_values[1],), outputs=node.output_values))
    index = _constant(node, graph, 1)
    if index is None or index.dim() != 0:
        raise _NotConstant
    return _result(StaticSelect(node.attributes.get("axis", 0), int(index)), node)


def _pad(node, graph):
    value = _constant(node, graph, 2)
    module = StaticPad(
        pads=_ints(_constant(node, graph, 1)),
        axes=_ints(_constant(node, graph, 3)),
        mode=node.attributes.get("mode", "constant"),
        value=0.0 if value is None or value.numel() == 0 else value.item(),
    )
    return _result(module, node)


def _tile(node, graph):
    return _result(StaticTile(_ints(_constant(node, graph, 1))), node)


def _constant_of_shape(node, graph):
    shape = _ints(_constant(node, graph, 0))
    fill = node.attributes["value"].to_torch() if "value" in node.attributes else torch.zeros(1)
    return _result(StaticConstant(torch.full(shape, fill.item(), dtype=fill.dtype)), node, data_inputs=0)


def _squeeze(node, graph):
    from onnx2torch.node_converters.squeeze import OnnxSqueezeStaticAxes

    return _result(OnnxSqueezeStaticAxes(axes=_ints(_constant(node, graph, 1))), node)


def _reduce_with_axes_input(node, graph):
    from onnx2torch.node_converters.reduce import OnnxReduceStaticAxes

    axes = _ints(_constant(node, graph, 1))
    if not axes and node.attributes.get("noop_with_empty_axes", 0):
        return _result(nn.Identity(), node)
    module = OnnxReduceStaticAxes(node.operation_type, axes=axes or None, keepdims=node.attributes.get("keepdims", 1))
    return _result(module, node)


def _gelu(node, graph):
    # Gelu became an ONNX op at opset 20; torch's exporters emit it from opset 20 (their default) on.
    return _result(nn.GELU(approximate=node.attributes.get("approximate", "none")), node)


# ONNX (mode, coordinate_transformation_mode) -> (F.interpolate mode, align_corners): the pairs
# whose sampling positions are PyTorch's; nearest needs nearest_mode "floor" too.
_RESIZE_MODES = {("nearest", "asymmetric"): ("nearest", None), ("linear", "half_pixel"): ("bilinear", False),
                 ("linear", "pytorch_half_pixel"): ("bilinear", False), ("linear", "align_corners"): ("bilinear", True)}


def _resize(node, graph):
    a = node.attributes
    mode, coords = a.get("mode", "nearest"), a.get("coordinate_transformation_mode", "half_pixel")
    scales, sizes = _constant(node, graph, 2), _constant(node, graph, 3)
    scales = None if scales is None or scales.numel() == 0 else [float(v) for v in scales.flatten().tolist()]
    sizes = _ints(None if sizes is None or sizes.numel() == 0 else sizes)
    if (scales or sizes) is None or len(scales or sizes) != 4:
        raise _NotConstant  # not a constant 4-D resize: onnx2torch's own converter
    if mode == "nearest" and a.get("nearest_mode", "round_prefer_floor") != "floor" or (mode, coords) not in _RESIZE_MODES:
        raise NotImplementedError(f"Resize mode={mode!r} coordinate_transformation_mode={coords!r} nearest_mode="
                                  f"{a.get('nearest_mode', 'round_prefer_floor')!r}: only PyTorch's sampling (nearest: "
                                  "asymmetric + floor; linear: half_pixel, pytorch_half_pixel, align_corners) is converted")
    if a.get("antialias", 0) or a.get("axes") is not None or (scales and scales[:2] != [1.0, 1.0]):
        raise NotImplementedError("Resize with antialias, axes or a batch/channel scale is not converted")
    torch_mode, align = _RESIZE_MODES[mode, coords]
    if coords == "pytorch_half_pixel" and sizes and min(sizes[2:]) == 1:
        raise NotImplementedError("Resize pytorch_half_pixel to a size of 1 samples differently from half_pixel")
    module = StaticResize(torch_mode, sizes[2:] if sizes else None, None if sizes else scales[2:], align)
    return _result(module, node)


def _hard_sigmoid(node, graph):
    """PyTorch's hardsigmoid (alpha 1/6, beta 1/2) as nn.Hardsigmoid, one op the classifier turns into
    a lookup table (onnx2torch spells it as multiply, add, clip); other slopes: onnx2torch's."""
    alpha, beta = node.attributes.get("alpha", 0.2), node.attributes.get("beta", 0.5)
    if abs(alpha - 1 / 6) > 1e-6 or abs(beta - 0.5) > 1e-6:
        raise _NotConstant
    return _result(nn.Hardsigmoid(), node)


_REDUCE_OPS_18 = ("ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceMax", "ReduceMean",
                  "ReduceMin", "ReduceProd", "ReduceSumSquare")  # ReduceSum took axes as an input at 13

# (op type, opset versions, converter for constant operands). Versions onnx2torch does not register
# (Reshape 19/21, Pad 18/19/21, ConstantOfShape 20/21, Reduce* 18/20) differ from the previous
# version only in accepted types or in what we handle here (Pad axes, wrap mode).
_STATIC_CONVERTERS: list[tuple[str, tuple[int, ...], Callable]] = [
    ("Reshape", (5, 13, 14, 19, 21), _reshape),
    ("Expand", (8, 13), _expand),
    ("Slice", (10, 11, 13), _slice),
    ("Pad", (11, 13, 18, 19, 21), _pad),
    ("Tile", (6, 13), _tile),
    ("ConstantOfShape", (9, 20, 21), _constant_of_shape),
    ("Squeeze", (13, 21), _squeeze),
    ("Split", (13, 18), _split),
    ("Gather", (1, 11, 13), _gather),
    ("Resize", (11, 13, 18, 19), _resize),
    ("HardSigmoid", (6,), _hard_sigmoid),
    *((op, (18,), _reduce_with_axes_input) for op in _REDUCE_OPS_18),
    ("ReduceMax", (20,), _reduce_with_axes_input),
    ("ReduceMin", (20,), _reduce_with_axes_input),
    ("Gelu", (20,), _gelu),
]


def _with_fallback(op_type: str, version: int, static_converter: Callable, original: Optional[Callable]):
    def converter(node, graph):
        try:
            return static_converter(node, graph)
        except _NotConstant:
            if original is None:
                raise NotImplementedError(
                    f"{op_type}-{version} with a non-constant shape/axes operand is not implemented"
                ) from None
            return original(node, graph)

    converter.tvmptq_static = True
    return converter


# Ops whose signature stayed the same while their meaning changed; never alias these.
_SEMANTIC_CHANGES = {"GroupNormalization"}


def _newly_optional_features(op_type: str, old_version: int, new_version: int) -> Optional[tuple[dict, set]]:
    """What ai.onnx op `op_type` gained between two versions: ({new attribute: default}, {new input index}).

    None when some change is not of that kind (renamed or removed inputs/attributes, new required
    attributes, changed outputs), i.e. when the old converter cannot stand in for the new version.
    """
    from onnx import defs

    versions = sorted(
        {schema.since_version for schema in defs.get_all_schemas_with_history()
         if schema.name == op_type and schema.domain == "" and old_version <= schema.since_version <= new_version}
    )
    new_attributes: dict = {}
    new_inputs: set = set()
    for before, after in zip(versions, versions[1:]):
        old, new = defs.get_schema(op_type, before), defs.get_schema(op_type, after)
        old_inputs = [(i.name, i.option) for i in old.inputs]
        new_inputs_list = [(i.name, i.option) for i in new.inputs]
        outputs_same = [(o.name, o.option) for o in old.outputs] == [(o.name, o.option) for o in new.outputs]
        if new_inputs_list[: len(old_inputs)] != old_inputs or not outputs_same:
            return None
        added = range(len(old_inputs), len(new_inputs_list))
        if any(new.inputs[i].option != defs.OpSchema.FormalParameterOption.Optional for i in added):
            return None
        new_inputs.update(added)
        if not set(old.attributes) <= set(new.attributes):
            return None
        for name in set(new.attributes) - set(old.attributes):
            if new.attributes[name].required:
                return None
            new_attributes[name] = new.attributes[name].default_value
    return new_attributes, new_inputs


def _alias(op_type: str, version: int, old_version: int, old_converter: Callable, features: tuple[dict, set]):
    from onnx import helper

    new_attributes, new_inputs = features

    def converter(node, graph):
        for name, default in new_attributes.items():
            set_attributes = {a.name: a for a in node.proto.attribute}
            if name in set_attributes and (
                not default.name or helper.get_attribute_value(set_attributes[name]) != helper.get_attribute_value(default)
            ):
                raise NotImplementedError(f"{op_type}-{version} attribute {name!r} is not implemented")
        for index in new_inputs:
            if index < len(node.input_values) and node.input_values[index]:
                raise NotImplementedError(f"{op_type}-{version} input #{index} is not implemented")
        return old_converter(node, graph)

    converter.tvmptq_alias_of = old_version
    return converter


def alias_newer_versions(model) -> None:
    """Register aliases for the ai.onnx nodes of `model` whose opset version onnx2torch lacks."""
    from onnx import defs
    from onnx2torch.node_converters import registry

    opset = {o.domain or "": o.version for o in model.opset_import}.get("", None)
    if opset is None:
        return
    table = registry._CONVERTER_REGISTRY
    for op_type in sorted({n.op_type for n in model.graph.node if n.domain in ("", "ai.onnx")} - _SEMANTIC_CHANGES):
        try:
            version = defs.get_schema(op_type, max_inclusive_version=opset, domain="").since_version
        except (RuntimeError, defs.SchemaError):
            continue  # not a standard op (or newer than this onnx): reported as unsupported later
        if registry.OperationDescription("", op_type, version) in table:
            continue
        older = [key.version for key in table if key.domain == "" and key.operation_type == op_type and key.version < version]
        if not older:
            continue
        features = _newly_optional_features(op_type, max(older), version)
        if features is not None:
            old_converter = table[registry.OperationDescription("", op_type, max(older))]
            table[registry.OperationDescription("", op_type, version)] = _alias(
                op_type, version, max(older), old_converter, features
            )


def install() -> None:
    # onnx2torch has no public way to replace a registered converter; its table is a plain dict.
    from onnx2torch.node_converters import registry

    for op_type, versions, static_converter in _STATIC_CONVERTERS:
        for version in versions:
            key = registry.OperationDescription(domain="", operation_type=op_type, version=version)
            original = registry._CONVERTER_REGISTRY.get(key)
            if getattr(original, "tvmptq_static", False):
                continue  # already installed
            registry._CONVERTER_REGISTRY[key] = _with_fallback(op_type, version, static_converter, original)
