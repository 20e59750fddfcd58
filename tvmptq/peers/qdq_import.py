"""Import a QDQ ONNX model (ONNX Runtime's ``quantize_static``, PyTorch's PT2E + ONNX exporter) as a
tvmptq plan.

    float_path, qm = plan_from_qdq("model_qdq.onnx")
    mod = relay_passes.lowering_passes(qm.plan)(relay_passes.import_onnx(float_path))
    run = targets.build.compile_integer(mod)          # qm.runner(): the plan's bit-exact simulation
    # or in one call: run, qm = targets.build.compile_qdq("model_qdq.onnx")

Why a plan, and not a Relax pass over the Q/DQ ops: the plan is the one contract every stage reads
(simulation, NumPy reference, Relax lowering, QDQ export). Filling it from the QDQ file instead of
from observers reuses all of them unchanged, so an ORT model lowers to exactly the same integer ops
as a tvmptq one, and its simulation checks the compiled program bit for bit.

How:
1. ``strip_qdq``: every QuantizeLinear -> DequantizeLinear pair on an activation is removed (the
   consumers read the float tensor; its scale and zero point are kept by tensor name); every
   DequantizeLinear of a stored integer initializer (weights, int32 biases) becomes a float
   initializer with the dequantized values. Nodes are renamed ``n<i>_<op>`` so that onnx2torch's
   module names (kept by torch.export in ``nn_module_stack``) lead back to the ONNX node. ORT
   deletes the Relu nodes whose clipping the grid does (asymmetric grids starting at 0: zero point
   = qmin); they are put back (``restore_relu``) after each Conv/Gemm/MatMul/Add whose output grid
   starts at 0, so the float graph computes what the QDQ model does up to rounding, and requantizing
   it (``float_model_from_qdq``) starts from the float model, not from one without its ReLUs.
2. The float graph is loaded the normal way (``tvmptq.load``: onnx2torch + torch.export) to get the
   layer graph and the program.
3. The plan is built as ``calibrate.build_plan`` builds it, but each quantized tensor takes ORT's
   scale and zero point (found on the tensor itself or after data movement: ReduceMean -> Reshape
   -> Q), and each conv/linear takes ORT's integer weights, per-channel scales and int32 bias
   (scale ``s_x * s_w``, as ORT quantizes biases; a float Gemm bias is rounded onto that grid).
   The requantize multipliers are the plan's 31-bit fixed point (``quant/fixedpoint.py``) of
   ``s_x * s_w / s_y``. Layer weights of the loaded float graph must equal the dequantized integer
   weights exactly, which checks that every layer was paired with the right ONNX node.

4-bit: ORT writes QInt4/QUInt4 models with ``com.microsoft`` Q/DQ contrib ops (all Q/DQ of the
model, 8-bit ones included). Their semantics are those of the ONNX ops, so both domains are read
the same way; int4 weights live in int8 containers, uint4 activations in uint8 with clip bounds.
Anything else (other domains, blocked or per-channel activation quantization, float8, non-zero
weight zero points, QOperator-format models) is rejected naming the node and its domain.
Relu/Clip that ORT keeps (``QDQKeepRemovableActivations``) are fused into the layer's clip as
tvmptq does; the kernel output's own Q/DQ before them is then dropped (one rounding, not two).

Differences from ORT's own output are expected and small: ORT requantizes in float32
(``acc * (s_x s_w / s_y)`` rounded half to even) and runs some ops (ReduceMean, float-bias Gemm,
4-bit kernels) on dequantized floats; the plan uses exact integer accumulation and fixed-point
round half up. ``compare_with_ort`` counts them. On EfficientNet-Lite0 single-LSB flips on its
coarse projection outputs grow through the network: ORT's optimized and unoptimized runs of the
same file disagree as much as this program and ORT do (``scripts/qdq_vs_ort.py --ort-floor``).
"""
from __future__ import annotations

import dataclasses
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..errors import ModelError
from ..quant.fixedpoint import quantize_multiplier

QDQ_DOMAINS = ("", "ai.onnx", "com.microsoft")
QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")
QOPERATOR_OPS = ("QLinearConv", "QLinearMatMul", "QLinearAdd", "QGemm", "ConvInteger", "MatMulInteger")
# Ops that move values without changing them: a quantized tensor's grid passes through.
MOVEMENT_OPS = ("Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze", "MaxPool", "Identity")
GRIDS = {  # integer type of the zero point -> (bits, qmin, qmax)
    onnx.TensorProto.UINT8: (8, 0, 255), onnx.TensorProto.INT8: (8, -128, 127),
    onnx.TensorProto.UINT4: (4, 0, 15), onnx.TensorProto.INT4: (4, -8, 7),
    onnx.TensorProto.INT32: (32, -2 ** 31, 2 ** 31 - 1),  # biases only
}


class QdqImportError(ModelError):
    """A QDQ model this importer cannot represent as a tvmptq plan (the message names the node)."""


# Producers after which ORT removes a Relu whose clipping the output grid does (restored by strip_qdq).
RELU_FOLDED_AFTER = ("Conv", "Gemm", "MatMul", "Add")


def qdq_nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """The model's Q/DQ nodes (any domain) and QOperator nodes: non-empty for a quantized model."""
    return [n for n in model.graph.node if n.op_type in QDQ_OPS + QOPERATOR_OPS]


def is_quantized_onnx(path) -> bool:
    """Whether the ONNX file at ``path`` holds Q/DQ or QOperator nodes (False if it cannot be read:
    the normal loader then reports why)."""
    try:
        return bool(qdq_nodes(onnx.load(str(path), load_external_data=False)))
    except Exception:
        return False


@dataclass
class QParams:
    scale: np.ndarray        # float32, scalar or per channel
    zero_point: np.ndarray   # int64, same shape
    bits: int
    qmin: int
    qmax: int
    axis: int | None         # None: per tensor


@dataclass
class QdqGraph:
    """The float graph of a QDQ model and the quantization it carried."""

    float_model: onnx.ModelProto
    activations: dict[str, QParams]                    # float tensor -> its QuantizeLinear params
    weights: dict[str, tuple[np.ndarray, QParams]]     # float initializer -> (integers, params)
    nodes: dict[str, onnx.NodeProto]                   # node name (n<i>_<op>) -> node
    origin: dict[str, str] = dataclasses.field(default_factory=dict)  # n<i>_<op> -> the file's node name

    def where(self, node) -> str:
        """A node of the float graph named as the QDQ file names it."""
        return _where(node).replace(repr(node.name), repr(self.origin.get(node.name, node.name)), 1)

    def consumers(self, tensor: str) -> list[onnx.NodeProto]:
        return [n for n in self.nodes.values() if tensor in n.input]

    def node_of(self, tensor: str) -> onnx.NodeProto | None:
        return next((n for n in self.nodes.values() if tensor in n.output), None)


def _where(node) -> str:
    return f"node {node.name or '(unnamed)'!r} ({node.domain or 'ai.onnx'}::{node.op_type})"


def _qparams(node, init: dict) -> QParams:
    """Scale, zero point and grid of a QuantizeLinear/DequantizeLinear node with constant params."""
    if node.domain not in QDQ_DOMAINS:
        raise QdqImportError(f"{_where(node)}: Q/DQ ops of domain {node.domain!r} are not supported "
                             f"(supported: ai.onnx and com.microsoft)")
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    if attrs.get("block_size"):
        raise QdqImportError(f"{_where(node)}: blocked quantization (block_size) is not supported")
    if len(node.input) < 3 or node.input[1] not in init or node.input[2] not in init:
        raise QdqImportError(f"{_where(node)}: scale and zero point must be constant initializers")
    zp_proto = init[node.input[2]]
    if zp_proto.data_type not in GRIDS:
        raise QdqImportError(f"{_where(node)}: zero point type "
                             f"{onnx.TensorProto.DataType.Name(zp_proto.data_type)} is not an integer grid "
                             f"tvmptq supports (uint8, int8, uint4, int4; int32 for biases)")
    bits, qmin, qmax = GRIDS[zp_proto.data_type]
    scale = numpy_helper.to_array(init[node.input[1]]).astype(np.float32)
    zero = numpy_helper.to_array(zp_proto).astype(np.int64)
    return QParams(scale, zero, bits, qmin, qmax, int(attrs.get("axis", 1)) if scale.size > 1 else None)


def strip_qdq(model: onnx.ModelProto, restore_relu: bool = True) -> QdqGraph:
    """The float graph of ``model`` plus the Q/DQ parameters, by float tensor name (see module doc)."""
    graph = model.graph
    init = {t.name: t for t in graph.initializer}
    for node in graph.node:
        if node.op_type in QOPERATOR_OPS:
            raise QdqImportError(f"{_where(node)}: QOperator-format models are not supported; quantize with "
                                 f"quant_format=QuantFormat.QDQ")
    activations, weights, alias, dropped, new_init = {}, {}, {}, set(), {}
    outputs = {o.name for o in graph.output}
    all_nodes = list(graph.node)  # dropped nodes are tracked by position
    for k, node in enumerate(all_nodes):
        if node.op_type == "DequantizeLinear" and node.input[0] in init:  # stored integers
            q = _qparams(node, init)
            ints = numpy_helper.to_array(init[node.input[0]]).astype(np.int64)
            shape = [1] * ints.ndim
            if q.axis is not None:
                shape[q.axis] = -1
            real = ((ints - q.zero_point.reshape(shape)) * q.scale.reshape(shape)).astype(np.float32)
            new_init[node.output[0]] = numpy_helper.from_array(real, node.output[0])
            weights[node.output[0]] = (ints, q)
            dropped.add(k)
        elif node.op_type == "QuantizeLinear":
            q = _qparams(node, init)
            if q.axis is not None or q.bits > 8:
                raise QdqImportError(f"{_where(node)}: only per-tensor 4- to 8-bit activation grids are supported")
            deqs = [j for j, n in enumerate(all_nodes)
                    if n.op_type == "DequantizeLinear" and n.input[0] == node.output[0]]
            users = [n for n in all_nodes if node.output[0] in n.input and n.op_type != "DequantizeLinear"]
            if users or node.output[0] in outputs:
                raise QdqImportError(f"{_where(node)}: its integers are used without a DequantizeLinear")
            for j in deqs:
                dq = all_nodes[j]
                if [dq.input[1], dq.input[2]] != [node.input[1], node.input[2]] and not _same(_qparams(dq, init), q):
                    raise QdqImportError(f"{_where(dq)}: dequantizes with other parameters than {_where(node)}")
                alias[dq.output[0]] = node.input[0]
                dropped.add(j)
            activations[node.input[0]] = q
            dropped.add(k)
    for k, node in enumerate(all_nodes):
        if k not in dropped and node.op_type in QDQ_OPS:
            raise QdqImportError(f"{_where(node)}: a {node.op_type} that is not part of a Q/DQ pair on an "
                                 "activation or a DequantizeLinear of a stored initializer")
    # A graph output read through a DQ keeps its name: rename the float tensor instead.
    rename = {v: k for k, v in alias.items() if k in outputs}
    alias = {k: v for k, v in alias.items() if k not in outputs}

    def fix(name: str) -> str:
        name = alias.get(name, name)
        return rename.get(name, name)

    activations = {rename.get(k, k): v for k, v in activations.items()}

    survivors = [n for k, n in enumerate(all_nodes) if k not in dropped]
    if restore_relu:
        survivors = _restore_relus(survivors, activations, fix)
    kept, nodes, origin = [], {}, {}
    for i, node in enumerate(survivors):
        new = onnx.NodeProto()
        new.CopyFrom(node)
        new.name = f"n{i}_{node.op_type}"  # a valid torch module name that leads back here
        origin[new.name] = node.name or f"#{i}"
        new.input[:] = [fix(x) for x in node.input]
        new.output[:] = [fix(x) for x in node.output]
        kept.append(new)
        nodes[new.name] = new
    used = {x for n in kept for x in n.input}
    inits = [t for t in graph.initializer if t.name in used and t.name not in new_init] + \
        [t for name, t in new_init.items() if name in used]
    fgraph = helper.make_graph(kept, graph.name, graph.input, graph.output, inits)
    domains = {n.domain for n in kept}
    opsets = [o for o in model.opset_import if o.domain in domains or o.domain in ("", "ai.onnx")]
    fmodel = helper.make_model(fgraph, opset_imports=opsets, ir_version=model.ir_version)
    return QdqGraph(fmodel, activations, weights, nodes, origin)


def _restore_relus(nodes: list, activations: dict, fix) -> list:
    """``nodes`` with a Relu after each Conv/Gemm/MatMul/Add whose quantized output grid starts at 0
    (zero point = qmin on an asymmetric grid: the clipping ORT folded a Relu into). Outputs also read
    in float, bypassing the grid, are left alone: there the grid does not clip them."""
    out = []
    for node in nodes:
        t = node.output[0] if node.op_type in RELU_FOLDED_AFTER and node.domain in ("", "ai.onnx") else None
        q = activations.get(t)
        if q is None or int(q.zero_point) != q.qmin or fix(t) != t or any(t in n.input for n in nodes):
            out.append(node)  # not on a grid starting at 0, a graph output, or read in float too
            continue
        pre = f"{t}_before_relu"
        new = onnx.NodeProto()
        new.CopyFrom(node)
        new.output[0] = pre
        out.append(new)
        out.append(helper.make_node("Relu", [pre], [t], name=f"{node.name or t}_restored_relu"))
    return out


def _same(a: QParams, b: QParams) -> bool:
    return (a.bits, a.qmin, a.qmax) == (b.bits, b.qmin, b.qmax) and np.array_equal(a.scale, b.scale) \
        and np.array_equal(a.zero_point, b.zero_point)


# --------------------------------------------------------------------------------------------------------
# The plan


def _onnx_node(fx_node, qdq: QdqGraph) -> onnx.NodeProto:
    """The ONNX node an exported fx node came from (onnx2torch names each module after its node)."""
    for path, _ in reversed(list((fx_node.meta.get("nn_module_stack") or {}).values())):
        name = path.split(".")[0]
        if name in qdq.nodes:
            return qdq.nodes[name]
    raise QdqImportError(f"cannot tell which ONNX node produced {fx_node.name!r} ({fx_node.target})")


def _tensor_params(tensor: str, qdq: QdqGraph, what: str) -> QParams:
    """ORT's quantization of ``tensor``: on the tensor itself or after data movement only."""
    todo, seen = [tensor], set()
    while todo:
        t = todo.pop(0)
        if t in qdq.activations:
            return qdq.activations[t]
        seen.add(t)
        todo += [n.output[0] for n in qdq.consumers(t) if n.op_type in MOVEMENT_OPS and n.output[0] not in seen]
    producer = qdq.node_of(tensor)
    readers = ", ".join(qdq.where(n) for n in qdq.consumers(tensor)) or "the graph output"
    made = f"{qdq.where(producer)} writes" if producer is not None else "the graph input"
    raise QdqImportError(f"{what}: {made} the float tensor {tensor!r}, which {readers} read(s) without a "
                         "QuantizeLinear/DequantizeLinear on it or after data movement; an integer-only program "
                         "needs its grid (PT2E's X86InductorQuantizer, for one, leaves pooling inputs and model "
                         "outputs in float). Quantize that tensor too, or requantize the model from its float "
                         "weights (tvmptq quantize --requantize)")


def _kernel_arrays(layer, lp, qdq: QdqGraph, tensors: dict) -> None:
    """Replace the layer's integer weights, scales, bias and multipliers with the QDQ file's."""
    node = _onnx_node(layer.node, qdq)
    w_name = node.input[1]
    if w_name not in qdq.weights:
        raise QdqImportError(f"layer {lp.name!r}: weight {w_name!r} of {qdq.where(node)} is not stored quantized")
    ints, q = qdq.weights[w_name]
    out_axis = 0
    if node.op_type == "Gemm":
        trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
        out_axis = 0 if trans_b else 1
    elif node.op_type == "MatMul":
        out_axis = 1
    if out_axis == 1:
        ints = ints.T
    if np.any(q.zero_point != 0):
        raise QdqImportError(f"layer {lp.name!r}: weight {w_name!r} has non-zero zero points (asymmetric weights)")
    if q.axis is not None and q.axis != out_axis:
        raise QdqImportError(f"layer {lp.name!r}: weight {w_name!r} is quantized along axis {q.axis}, "
                             f"not its output channels")
    s_w = np.broadcast_to(q.scale.astype(np.float64), (ints.shape[0],)).copy()
    real = (ints * s_w.astype(np.float32).reshape((-1,) + (1,) * (ints.ndim - 1))).astype(np.float32)
    if layer.weight.shape != ints.shape or not np.array_equal(layer.weight, real):
        raise QdqImportError(f"layer {lp.name!r} was paired with {qdq.where(node)}, whose dequantized weights differ")
    s_x, s_y = float(tensors[lp.inputs[0]].scale), float(tensors[lp.output].scale)
    acc_scale = s_x * s_w
    bias = np.zeros(len(s_w), dtype=np.int64)
    b_name = node.input[2] if len(node.input) > 2 else ""
    if b_name in qdq.weights:  # ORT's int32 bias; rescaled if it was quantized on another grid
        b_ints, bq = qdq.weights[b_name]
        b_scale = np.broadcast_to(bq.scale.astype(np.float64), bias.shape)
        same = np.allclose(b_scale, acc_scale, rtol=1e-6, atol=0)
        bias = b_ints.astype(np.int64) if same else np.round(b_ints * b_scale / acc_scale).astype(np.int64)
    elif b_name:  # a float bias (ORT leaves Gemm biases in float)
        b = next(numpy_helper.to_array(t) for t in qdq.float_model.graph.initializer if t.name == b_name)
        bias = np.round(b.astype(np.float64) / acc_scale).astype(np.int64)
    lp.weight_bits = q.bits
    lp.arrays.update(weight=ints.astype(np.int8), weight_scale=s_w.astype(np.float32),
                     bias=np.clip(bias, -2 ** 31, 2 ** 31 - 1).astype(np.int32))
    lp.arrays["multiplier"], lp.arrays["shift"] = quantize_multiplier(acc_scale / s_y)


def _static_batch(model: onnx.ModelProto, input_shapes):
    """``input_shapes`` for the float graph: the given ones, else a dynamic leading (batch) dim set
    to 1 where every other dim is static (the importer compiles at any static batch later)."""
    if input_shapes:
        return input_shapes
    init = {t.name for t in model.graph.initializer}
    shapes = {}
    for value in model.graph.input:
        dims = value.type.tensor_type.shape.dim
        if value.name in init or not dims:
            continue
        static = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in dims]
        if static[0] is None and all(d is not None for d in static[1:]):
            shapes[value.name] = [1] + static[1:]
    return shapes or None


def float_model_from_qdq(qdq_path, float_path=None, name: str | None = None, input_shapes=None):
    """``(float_path, ZooModel, QdqGraph)``: the QDQ file's float graph (weights dequantized, the Relu
    nodes ORT folded into grids restored; written to ``float_path``, default a temporary file),
    loaded like any user ONNX model under ``name`` (default: the QDQ file's stem). This is the
    model a plan of the QDQ file describes, and the one ``tvmptq quantize --requantize`` calibrates."""
    from ..zoo import from_onnx

    qdq_path = Path(qdq_path)
    try:
        proto = onnx.load(str(qdq_path))
    except Exception as err:
        raise ModelError(f"cannot read ONNX file {qdq_path}: {type(err).__name__}: {err}") from None
    qdq = strip_qdq(proto)
    if float_path is None:
        float_path = Path(tempfile.mkdtemp(prefix="tvmptq-qdq-")) / f"{qdq_path.stem}_float.onnx"
    float_path = Path(float_path)
    onnx.save(qdq.float_model, str(float_path))
    model = from_onnx(float_path, _static_batch(qdq.float_model, input_shapes), name=name or qdq_path.stem)
    model = dataclasses.replace(model, description=f"QDQ model {qdq_path.name} (float graph: weights "
                                                   "dequantized, converted by onnx2torch)")
    return float_path, model, qdq


def plan_from_qdq(qdq_path, float_path=None, name: str | None = None, input_shapes=None):
    """``(float_path, QuantizedModel)`` for a QDQ model: the float ONNX graph (written to
    ``float_path``, default a temporary file; see ``float_model_from_qdq``) and a tvmptq plan
    holding the file's quantization, with its simulation (``qm.runner()``). Lower it with
    ``relay_passes.import_onnx(float_path)``, compile it with ``targets.build.compile_qdq``, or
    write an artifact with ``tvmptq.deploy.compile_artifact(qm.model, qm.plan, out)``. Raises
    QdqImportError naming the node it cannot represent."""
    import tvmptq
    from ..api import QuantizedModel
    from ..quant.calibrate import _layer_plan
    from ..quant.graph import PASSTHROUGH_OPS
    from ..quant.plan import QuantPlan, TensorQuant
    from ..quant.program import build_program
    from ..quant.simulate import simulate

    qdq_path = Path(qdq_path)
    float_path, model, qdq = float_model_from_qdq(qdq_path, float_path, name, input_shapes)
    graph = tvmptq.prepare(model, lookup_tables=False)  # ORT's QDQ models compute unary functions in float

    onnx_inputs = [i.name for i in qdq.float_model.graph.input
                   if i.name not in {t.name for t in qdq.float_model.graph.initializer}]
    placeholders = [n for n in graph.gm.graph.nodes if n.op == "placeholder"]  # ONNX input order
    tensors = {}
    for tname, fx_node in graph.quant_points.items():
        # Data movement inside a converted module (the explicit pad onnx2torch puts before a conv
        # with asymmetric padding) quantizes like its input: follow it back.
        while fx_node.op == "call_function" and fx_node.target in PASSTHROUGH_OPS:
            fx_node = fx_node.args[0]
        if fx_node.op == "placeholder":
            onnx_name = onnx_inputs[placeholders.index(fx_node)]
        else:
            onnx_name = _onnx_node(fx_node, qdq).output[0]
        q = _tensor_params(onnx_name, qdq, f"tensor {tname!r}")
        s, z = float(q.scale), int(q.zero_point)
        tensors[tname] = TensorQuant(tname, s, z, q.bits, q.qmin, q.qmax, (s * (q.qmin - z), s * (q.qmax - z)))

    config = tvmptq.make_config(8, 8, weight_rule="minmax", bias_correction=False)
    layers = []
    for layer in graph.layers:
        lp = _layer_plan(layer, graph, tensors, config)  # structure, clip, scale-only multipliers
        if layer.weight is not None:
            _kernel_arrays(layer, lp, qdq, tensors)
        layers.append(lp)
    w_bits = sorted({lp.weight_bits for lp in layers if lp.weight_bits})
    a_bits = sorted({t.bits for t in tensors.values()})
    tag = f"W{'/'.join(map(str, w_bits))}A{'/'.join(map(str, a_bits))}"
    cfg = {"source": "QDQ ONNX", "file": qdq_path.name, "weight_bits": max(w_bits, default=8),
           "activation_bits": max(a_bits), "observer": "read from QDQ", "symmetric": False,
           "first_last_8bit": False, "overrides": {}, "name": tag, "bias_correction": False}
    program, constants = build_program(graph)
    plan = QuantPlan(name or qdq_path.stem, cfg, tensors, layers, [n.name for n in graph.islands],
                     [n for n in graph.input_names if n in tensors], program=program, constants=constants)
    return float_path, QuantizedModel(model, graph, plan, simulate(graph, plan))


# --------------------------------------------------------------------------------------------------------
# Compiled integer program vs ONNX Runtime


def compare_with_ort(qdq_path, inputs, run, qm, ort_outputs=None) -> dict:
    """Compiled integer program vs ORT's own execution of the same QDQ file on ``inputs``.

    Logits are compared as integers on the output grid: ``round(y / s)``. Returns the top-1
    agreement, the share of samples whose logits are all identical, the share of logit elements
    that differ, the largest difference in LSBs and a histogram {LSBs: elements}. ``run``/``qm`` come
    from ``targets.build.compile_qdq`` (the compile side sits above the peers); pass ``ort_outputs``
    to reuse ORT's."""
    from .onnxruntime_peer import OrtRunner

    ours = run(inputs)
    theirs = OrtRunner(qdq_path)(inputs) if ort_outputs is None else ort_outputs
    scale = np.float32(qm.plan.tensors[qm.plan.layers[-1].output].scale)
    lsb = np.abs(np.round(ours / scale) - np.round(theirs / scale)).astype(np.int64)
    values, counts = np.unique(lsb, return_counts=True)
    return {"samples": len(ours), "top1_agreement": float(np.mean(ours.argmax(1) == theirs.argmax(1))),
            "identical_samples": float(np.mean(lsb.max(1) == 0)), "differing_logits": float(np.mean(lsb > 0)),
            "max_lsb": int(lsb.max()), "lsb_histogram": {int(v): int(c) for v, c in zip(values, counts)}}
