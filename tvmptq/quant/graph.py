"""From a PyTorch model to a graph of quantizable layers.

The model is captured once with ``torch.export`` (ATen-level graph, the same program that TVM's
``from_exported_program`` imports). On that graph we fold batch norm into the preceding conv and
classify every node with the tables below (capabilities as data, not ``if`` chains); capture.py
does the capture and the float rewrites before it. The result,
:class:`LayerGraph`, names every tensor an integer-only program needs.
"""
from __future__ import annotations

import operator
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.fx as fx

from ..errors import UnsupportedOpError
from .capture import batch_norm_as_conv, const_value, export_model, fold_batch_norm, fold_linear_bias
from .edge_ops import NEEDS, bilinear_attrs, conv_transpose_as_conv, fold_layer_scale, fuse_erf_gelu, prelu_alpha

aten = torch.ops.aten

# Ops whose output is requantized from an int32 accumulator: value = which layer kind.
KERNEL_OPS = {
    aten.conv2d.default: "conv2d",
    aten.linear.default: "linear",
    aten.matmul.default: "matmul",
    aten.mm.default: "matmul",
    aten.bmm.default: "matmul",
}
# Ops computed in the integer domain by rescaling their inputs to the output grid.
REQUANT_OPS = {
    aten.add.Tensor: "add",
    aten.adaptive_avg_pool2d.default: "mean",
    aten.mean.dim: "mean",
    aten.mul.Tensor: "mul_const",   # only by a Python scalar; checked in classify()
    aten.div.Tensor: "mul_const",   # likewise
    aten.cat.default: "cat",
    aten.avg_pool2d.default: "avg_pool",  # int32 window sum, one requantize (uniform divisor)
    aten.upsample_bilinear2d.vec: "bilinear",      # integer 2x2 weights on a 1/D grid (edge_ops.py)
    aten.upsample_bilinear2d.default: "bilinear",
    aten.prelu.default: "prelu",                   # two multipliers: x >= 0 and x < 0 (per channel)
}
# Activations fused into the clip of the op that produces their input.
FUSABLE_ACTIVATIONS = {aten.relu.default, aten.relu_.default, aten.hardtanh.default,
                       aten.hardtanh_.default, aten.clamp.default}
# Ops that move or select integers without changing the grid: output shares the input's quant.
PASSTHROUGH_OPS = {
    aten.view.default, aten.reshape.default, aten._unsafe_view.default, aten.flatten.using_ints, aten.permute.default,
    aten.transpose.int, aten.t.default, aten.contiguous.default, aten.clone.default,
    aten.dropout.default, aten.pad.default, aten.max_pool2d.default, aten.squeeze.dim,
    aten.squeeze.default, aten.unsqueeze.default, aten.expand.default, aten.slice.Tensor,
    aten.select.int, aten.split.Tensor, aten.split_with_sizes.default, aten.chunk.default,
    aten.unflatten.int, aten.alias.default, aten.detach.default, aten._assert_tensor_metadata.default,
    operator.getitem,
    aten.upsample_nearest2d.vec, aten.upsample_nearest2d.default,  # copies of input pixels
}
# Padding modes that copy values (exact on any grid); "constant" must pad the real value 0.
COPY_PAD_MODES = {"reflect", "replicate"}
# Ops allowed to stay in float as declared islands: input dequantized, output re-quantized.
FLOAT_ISLAND_OPS = {
    aten.softmax.int, aten._softmax.default, aten.layer_norm.default, aten.gelu.default,
    aten.sigmoid.default, aten.silu.default, aten.tanh.default, aten.hardswish.default,
    aten.exp.default, aten.embedding.default, aten.linalg_vector_norm.default,
    aten.sum.dim_IntList, aten.clamp_min.default, aten.clamp_max.default, aten.sqrt.default,
    aten.rsqrt.default, aten.pow.Tensor_Scalar, aten.sub.Tensor, aten.rsub.Scalar,
    aten.where.self, aten.masked_fill.Scalar, aten.to.dtype, aten._to_copy.default,
    aten.type_as.default, aten.arange.start, aten.arange.default, aten.ones_like.default,
    aten.zeros_like.default, aten.full_like.default, aten.div.Tensor, aten.mul.Tensor,
    aten.add.Tensor, aten.expand_as.default, aten.mean.dim, aten.max.dim, aten.amax.default,
    # unary functions computed as lookup tables by default (lut.py); islands with lookup_tables=False
    aten.hardsigmoid.default, aten.mish.default, aten.elu.default, aten.leaky_relu.default,
    aten.log_softmax.int, aten._log_softmax.default,  # classifier heads: a declared float island
}


@dataclass
class Layer:
    """One integer op group of the float graph (kernel or requant op, plus its fused activation)."""

    name: str
    kind: str                     # conv2d | linear | matmul | add | mean | mul_const | cat
    node: fx.Node
    out_node: fx.Node             # last node of the group: its value is the quantized tensor
    inputs: list[fx.Node]         # activation inputs (float-graph nodes)
    weight: np.ndarray | None = None
    bias: np.ndarray | None = None
    attrs: dict = field(default_factory=dict)
    activation: str = "none"      # none | relu | clamp
    act_range: tuple[float, float] | None = None  # real-valued clamp bounds of the activation


@dataclass
class LayerGraph:
    gm: fx.GraphModule            # float graph, batch norm folded
    layers: list[Layer]
    quant_points: dict[str, fx.Node]      # tensor name -> node whose output is quantized
    islands: list[fx.Node]                # float ops kept in float (declared islands)
    aux: list[fx.Node]                    # ops on non-activation data (masks, shapes)
    input_names: list[str]
    source: dict[str, str]                # node name -> quantized tensor it aliases
    batch: int | None = None              # the batch size the graph fixes (None: dynamic batch)

    def tensor_of(self, node: fx.Node) -> str:
        return self.source[node.name]


def _fusable_activation(node: fx.Node) -> tuple[fx.Node, str, tuple | None] | None:
    """The activation node fused into ``node``'s output clip, if it is the only user."""
    if len(node.users) != 1:
        return None
    user = next(iter(node.users))
    if user.target not in FUSABLE_ACTIVATIONS or user.args[0] is not node:
        return None
    if user.target in (aten.relu.default, aten.relu_.default):
        return user, "relu", (0.0, float("inf"))
    if user.target in (aten.hardtanh.default, aten.hardtanh_.default):
        lo = user.args[1] if len(user.args) > 1 else -1.0
        hi = user.args[2] if len(user.args) > 2 else 1.0
        return user, "clamp", (float(lo), float(hi))
    lo = user.args[1] if len(user.args) > 1 else user.kwargs.get("min")
    hi = user.args[2] if len(user.args) > 2 else user.kwargs.get("max")
    lo = -float("inf") if lo is None else float(lo)
    hi = float("inf") if hi is None else float(hi)
    return user, "clamp", (lo, hi)


def _kernel_layer(gm, node, kind) -> Layer:
    args = node.args
    if kind == "conv2d":
        w = const_value(gm, args[1])
        if w is None:
            raise UnsupportedOpError(f"conv2d '{node.name}' has a non-constant weight")
        b = const_value(gm, args[2]) if len(args) > 2 and args[2] is not None else None
        full = list(args) + [None] * (7 - len(args))
        attrs = dict(stride=list(full[3] or [1, 1]), padding=list(full[4] or [0, 0]),
                     dilation=list(full[5] or [1, 1]), groups=int(full[6] or 1))
        if isinstance(attrs["padding"], str):
            raise UnsupportedOpError(f"conv2d '{node.name}' uses string padding {attrs['padding']!r}")
        return Layer(node.name, "conv2d", node, node, [args[0]], w.numpy(),
                     None if b is None else b.numpy(), attrs)
    if kind == "linear":
        w = const_value(gm, args[1])
        b = const_value(gm, args[2]) if len(args) > 2 and args[2] is not None else None
        if w is None:
            return Layer(node.name, "matmul", node, node, [args[0], args[1]], attrs={"transpose_b": True})
        return Layer(node.name, "linear", node, node, [args[0]], w.numpy(),
                     None if b is None else b.numpy())
    # matmul / mm / bmm: a constant right operand is a linear layer with W = B^T.
    wb = const_value(gm, args[1])
    if wb is not None and wb.dim() == 2:
        return Layer(node.name, "linear", node, node, [args[0]], wb.t().contiguous().numpy(), None)
    if const_value(gm, args[0]) is not None:
        raise UnsupportedOpError(f"matmul '{node.name}' with a constant left operand")
    return Layer(node.name, "matmul", node, node, [args[0], args[1]])


def classify(gm: fx.GraphModule, lookup_tables: bool = True) -> LayerGraph:
    """Find layers, quantization points, float islands and auxiliary (non-activation) ops.

    ``lookup_tables``: unary functions of one quantized tensor (sigmoid, SiLU, GELU, ..., see
    lut.FUNCTIONS) become integer lookup-table layers (kind "lut"); off, they stay float islands."""
    layers: list[Layer] = []
    quant_points: dict[str, fx.Node] = {}
    source: dict[str, str] = {}
    islands, aux, inputs = [], [], []
    is_activation: dict[str, bool] = {}
    consumed_by_act = set()

    for node in gm.graph.nodes:
        if node.op == "placeholder":
            val = node.meta.get("val")
            float_input = isinstance(val, torch.Tensor) and val.is_floating_point()
            is_activation[node.name] = float_input
            if float_input:
                inputs.append(node.name)
            continue
        if node.op in ("get_attr", "output") or (node.op == "call_module" and node.target == "_guards_fn"):
            is_activation[node.name] = False
            continue
        if node.name in consumed_by_act:
            is_activation[node.name] = True
            continue
        act_args = [a for a in node.all_input_nodes if is_activation.get(a.name)]
        if node.target == aten.embedding.default and _is_float(node):
            act_args = [node]  # a gathered learned table is activation data, not auxiliary
        if not act_args or not _is_float(node):
            is_activation[node.name] = False
            aux.append(node)
            continue
        is_activation[node.name] = True
        target = node.target
        kind = KERNEL_OPS.get(target) or REQUANT_OPS.get(target)
        non_act_inputs = [a for a in node.all_input_nodes
                          if not is_activation.get(a.name) and const_value(gm, a) is None]
        factor = _scalar_factor(gm, node) if kind == "mul_const" else None
        if kind == "mul_const" and factor is None:
            kind = _product_kind(node, act_args, non_act_inputs, source)
        if kind == "mul":
            act_args = list(node.args[:2])
        if kind == "cat" and any(const_value(gm, a) is not None for a in node.args[0]):
            kind = None  # joins a constant (an ONNX file's CLS token folded at batch 1): a float island
        if kind in ("add", "cat") and non_act_inputs:
            kind = None  # mixes in auxiliary data (e.g. an attention mask): a float island
        if kind == "add" and (len(act_args) != 2 or (len(node.args) > 2 and node.args[2] != 1)):
            kind = None
        if kind in ("bilinear", "prelu"):
            pass  # like a kernel: a model input or a float-island result is quantized at its input
        elif kind in REQUANT_OPS.values() and not any(a.name in source for a in act_args):
            kind = None  # elementwise math on float-island outputs stays in the island
        # A table needs an integer input: functions of float-island results stay in the island.
        quantized_input = bool(node.args) and isinstance(node.args[0], fx.Node) and (node.args[0].name in source or node.args[0].op == "placeholder")
        lut = _lookup_table(node) if lookup_tables and kind is None and quantized_input else None
        if lut is not None:
            kind = "lut"
        if kind == "mean" and target == aten.adaptive_avg_pool2d.default and list(node.args[1]) != [1, 1]:
            raise UnsupportedOpError(f"adaptive_avg_pool2d '{node.name}' to {node.args[1]}: only global pooling")
        if kind is not None:
            layer = (_kernel_layer(gm, node, kind) if target in KERNEL_OPS else
                     Layer(node.name, kind, node, node, list(act_args)))
            if kind == "mul_const":
                c = factor
                layer.attrs["factor"] = 1.0 / c if target == aten.div.Tensor else c
            if kind == "mean":
                layer.attrs["dims"] = ([2, 3] if target == aten.adaptive_avg_pool2d.default
                                       else list(node.args[1]))
                layer.attrs["keepdim"] = (True if target == aten.adaptive_avg_pool2d.default
                                          else bool(node.args[2]) if len(node.args) > 2 else False)
            if kind == "avg_pool":
                layer.attrs.update(_avg_pool_attrs(node))
            if kind == "bilinear":
                layer.attrs.update(bilinear_attrs(node))
            if kind == "prelu":
                layer.inputs, layer.attrs["alpha"] = [node.args[0]], prelu_alpha(gm, node)
                layer.attrs["ndim"] = node.args[0].meta["val"].dim()  # slopes along dim 1
            if kind == "cat":
                layer.inputs = list(node.args[0])
                layer.attrs["dim"] = node.args[1] if len(node.args) > 1 else 0
            if kind == "lut":
                layer.inputs = [node.args[0]]
                layer.attrs["function"], layer.attrs["function_attrs"], layer.out_node = lut
                layer.attrs["aten"] = getattr(target, "__name__", str(target))  # how Relax spells it
                layer.attrs["aten"] += node.meta.get("tvmptq_spelling", "")  # e.g. ONNX's erf GELU
                if layer.out_node is not node:  # x * sigmoid(x) spelled out (ONNX SiLU)
                    layer.attrs["aten"] += "+" + layer.out_node.target.__name__
                    consumed_by_act.add(layer.out_node.name)
                    node = layer.out_node
            fused = _fusable_activation(node)
            if fused is not None:
                layer.out_node, layer.activation, layer.act_range = fused
                consumed_by_act.add(layer.out_node.name)
            for a in layer.inputs:
                _resolve_source(a, source, quant_points)
            layer.attrs["input_ops"] = [_data_movement(a, source) for a in layer.inputs]
            layers.append(layer)
            quant_points[layer.out_node.name] = layer.out_node
            source[layer.out_node.name] = layer.out_node.name
            source[node.name] = layer.out_node.name
        elif target in REQUANT_OPS:
            islands.append(node)
        elif target in PASSTHROUGH_OPS or target in FUSABLE_ACTIVATIONS:
            src = node.args[0]
            if target == aten.pad.default:
                mode = node.args[2] if len(node.args) > 2 else "constant"
                value = node.args[3] if len(node.args) > 3 else None
                if mode not in COPY_PAD_MODES and (mode != "constant" or value not in (None, 0, 0.0)):
                    raise UnsupportedOpError(f"pad '{node.name}' mode={mode} value={value}: only zero constant "
                                             f"padding and {'/'.join(sorted(COPY_PAD_MODES))} padding are exact "
                                             "in the integer domain")
            if target in FUSABLE_ACTIVATIONS:
                islands.append(node)  # an unfused activation: computed on dequantized values
            elif isinstance(src, fx.Node) and src.name in source:
                source[node.name] = source[src.name]
        elif target in FLOAT_ISLAND_OPS:
            islands.append(node)
        else:
            op = getattr(target, '__name__', str(target))
            raise UnsupportedOpError(
                f"unsupported op {op} at node '{node.name}': no integer lowering and not a declared float island"
                + (f"; {NEEDS[op.split('.')[0]]}" if op.split('.')[0] in NEEDS else ""))
    return LayerGraph(gm, layers, quant_points, islands, aux, inputs, source)


def _avg_pool_attrs(node: fx.Node) -> dict:
    """Kernel, stride, padding and the one divisor of an avg_pool2d; refused (named) when the divisor
    varies with the position, which would need a multiplier per output pixel."""
    pair = lambda v: [int(v[0]), int(v[-1])] if isinstance(v, (list, tuple)) else [int(v), int(v)]  # noqa: E731
    args = list(node.args) + [None] * (7 - len(node.args))
    kernel = pair(args[1])
    stride = pair(args[2]) if args[2] not in (None, [], ()) else list(kernel)
    padding = pair(args[3] if args[3] is not None else 0)
    ceil_mode = bool(args[4]) if args[4] is not None else False
    include_pad = bool(args[5]) if args[5] is not None else True
    divisor = args[6]
    shape = node.args[0].meta["val"].shape[-2:]
    partial = False
    for n, k, s, p in zip(shape, kernel, stride, padding):
        span = int(n) + 2 * p - k
        out = (-(-span // s) if ceil_mode else span // s) + 1
        if ceil_mode and (out - 1) * s >= int(n) + p:
            out -= 1
        partial |= (out - 1) * s + k > int(n) + 2 * p
    if divisor is None and (partial or (any(padding) and not include_pad)):
        raise UnsupportedOpError(
            f"avg_pool2d '{node.name}' (kernel {kernel}, stride {stride}, padding {padding}, ceil_mode={ceil_mode}, "
            f"count_include_pad={include_pad}) divides border windows by fewer elements: that needs a requantize "
            "multiplier per output position (not lowered); use count_include_pad=True without partial windows")
    count = int(divisor) if divisor is not None else kernel[0] * kernel[1]
    return dict(kernel=kernel, stride=stride, padding=padding, ceil_mode=ceil_mode, count=count)


def _product_kind(node: fx.Node, act_args, non_act_inputs, source) -> str | None:
    """"mul" for the product of two quantized activations (squeeze-excite ``x * gate``): int32
    product of the centred integers, one requantize; else None (a float island)."""
    if node.target != aten.mul.Tensor or non_act_inputs or len(node.args) != 2:
        return None
    a, b = node.args
    if not (isinstance(a, fx.Node) and isinstance(b, fx.Node) and a in act_args and b in act_args):
        return None
    return "mul" if all(x.name in source or x.op == "placeholder" for x in (a, b)) else None


def _lookup_table(node: fx.Node) -> tuple[str, dict, fx.Node] | None:
    """(function, attrs, last node) if ``node`` is a unary function computed by a lookup table."""
    from .lut import FUNCTIONS, function_attrs
    if node.target not in FUNCTIONS or not isinstance(node.args[0], fx.Node):
        return None
    try:
        name, attrs = function_attrs(node)
    except TypeError:  # e.g. a clamp with tensor bounds: not a function of the input alone
        return None
    x = node.args[0]
    if name == "sigmoid" and len(node.users) == 1:  # x * sigmoid(x) is SiLU, one table
        user = next(iter(node.users))
        if user.target == aten.mul.Tensor and set(user.args[:2]) == {x, node} and x is not node:
            return "silu", {}, user
    return name, attrs, node


def _scalar_factor(gm, node: fx.Node) -> float | None:
    """The constant of ``x * c`` / ``x / c``: a Python number, or a one-element constant tensor
    (how ONNX files spell attention's scale), else None."""
    c = node.args[1] if len(node.args) > 1 else None
    if isinstance(c, (int, float)) and not isinstance(c, bool):
        return float(c)
    value = const_value(gm, c) if isinstance(c, fx.Node) else None
    if value is not None and value.numel() == 1 and value.is_floating_point():
        return float(value.reshape(()))
    return None


def _plain(value):
    """JSON-friendly op argument: a symbolic size (the dynamic batch) becomes {"symbolic": name} of
    the program value that holds it (a sym_size step), so several symbolic sizes stay distinct."""
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (bool, int, float, str)) or value is None:
        return value
    if isinstance(value, fx.Node):
        return {"symbolic": value.name}
    return str(value)


def _data_movement(node: fx.Node, source: dict) -> list[dict]:
    """Passthrough ops between a layer input and the quantized tensor it reads, in order."""
    chain = []
    while node.name != source[node.name]:
        chain.append({"op": getattr(node.target, "__name__", str(node.target)),
                      "args": _plain(list(node.args[1:]))})
        node = node.args[0]
    return chain[::-1]


def _is_float(node: fx.Node) -> bool:
    val = node.meta.get("val")
    vals = val if isinstance(val, (list, tuple)) else [val]
    return any(isinstance(v, torch.Tensor) and v.is_floating_point() for v in vals)


def _resolve_source(node: fx.Node, source: dict, quant_points: dict) -> str:
    if node.name in source:
        return source[node.name]
    quant_points[node.name] = node
    source[node.name] = node.name
    return node.name


def build_layer_graph(module: torch.nn.Module, example_inputs: tuple, lookup_tables: bool = True,
                      batch: int | None = None) -> LayerGraph:
    gm = export_model(module, example_inputs, batch)
    conv_transpose_as_conv(gm)  # zero insertion + conv2d: before batch norm folds into that conv
    if lookup_tables:  # one table; as a float island the erf spelling would not match the plan's GELU
        fuse_erf_gelu(gm)
    fold_batch_norm(gm)
    batch_norm_as_conv(gm)
    fold_linear_bias(gm)
    fold_layer_scale(gm)
    graph = classify(gm, lookup_tables)
    graph.batch = getattr(gm, "fixed_batch", None)
    return graph
