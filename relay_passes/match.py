"""Pass 2: find each plan layer in the Relax graph.

Plan and Relax graph come from the same model, so the layers appear in the same order, with the
same op kind and weight shape. ``match_layers`` pairs the plan's layers with the Relax *anchor*
ops in binding order and checks both keys (float ops that look like anchors, such as an
attention-mask add, are predicted by the plan's program and skipped; see islands.py), then grows each anchor into its region: the bias add
and the activation the plan fused into the layer's clip. It also traces every layer input back
through data movement (pad, reshape, ...) to the layer or model input that produced it and
checks that this is the tensor the plan names, which catches swapped operands.
``MatchPlanLayers`` is the same check as a pass: it fails with the first layer that does not fit.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import tvm
from tvm import relax

from tvmptq.quant.plan import LayerPlan, QuantPlan

from .errors import LayerMatchError
from .islands import PRELOWERED_KINDS, expected_anchors

# Ops that move integers without changing their grid (the quantized value passes through).
MOVEMENT_OPS = {"relax.reshape", "relax.permute_dims", "relax.squeeze", "relax.expand_dims",
                "relax.flatten", "relax.nn.pad", "relax.nn.max_pool2d", "relax.strided_slice",
                "relax.broadcast_to",
                "relax.take",             # gathers along an axis: reflect / replicate padding
                "relax.image.resize2d"}   # nearest-neighbour only (is_movement): upsampling by copies


def is_movement(call) -> bool:
    """``call`` only moves or copies elements of its first operand (see MOVEMENT_OPS)."""
    name = op_name(call)
    if name == "relax.image.resize2d":
        return str(call.attrs.method) == "nearest_neighbor"
    if name == "relax.take":  # a gather *from* a tensor by constant or integer indices
        return not _is_const(call.args[0]) and "int" in str(call.args[1].ty.dtype)
    return name in MOVEMENT_OPS
# Relax ops that implement the activation the plan fused into a layer's output clip.
ACTIVATION_OPS = {"relu": {"relax.nn.relu", "relax.clip"}, "clamp": {"relax.clip", "relax.nn.relu6"}}


@dataclass
class LayerMatch:
    layer: LayerPlan
    anchor: relax.Var                  # binding of the kernel / requantized op
    call: relax.Call                   # its value (attributes: strides, padding, axes, ...)
    output: relax.Var                  # last binding of the region: the plan's output tensor
    interior: list[relax.Var] = field(default_factory=list)  # replaced together with output
    inputs: list[relax.Expr] = field(default_factory=list)   # float activation operands


def op_name(call) -> str:
    return call.op.name if isinstance(call, relax.Call) and isinstance(call.op, tvm.ir.Op) else ""


def _is_const(e) -> bool:
    return isinstance(e, tvm.ir.expr.Constant)


def _operand_vars(expr) -> list[relax.Var]:
    if isinstance(expr, relax.Var):
        return [expr]
    if isinstance(expr, relax.Tuple):
        return [v for f in expr.fields for v in _operand_vars(f)]
    if isinstance(expr, relax.Call):
        return [v for a in expr.args for v in _operand_vars(a)]
    if isinstance(expr, relax.TupleGetItem):
        return _operand_vars(expr.tuple_value)
    return []


def _is_float(e) -> bool:
    return isinstance(e.ty, relax.TensorType) and "float" in str(e.ty.dtype)


def anchor_key(call: relax.Call):
    """(kind, weight shape) of a Relax op that is a plan layer's anchor, else None."""
    name = op_name(call)
    if not name or not _is_float(call):
        return None
    args = call.args
    if name == "relax.nn.conv2d" and _is_const(args[1]):
        return "conv2d", tuple(int(d) for d in args[1].ty.shape)
    if name == "relax.matmul" and _is_const(args[1]) and len(args[1].ty.shape) == 2:
        k, o = (int(d) for d in args[1].ty.shape)  # y = x @ W.T: the constant is W transposed
        return "linear", (o, k)
    if name == "relax.matmul" and not any(_is_const(a) for a in args):
        return "matmul", None
    if name == "relax.add" and not any(_is_const(a) for a in args):
        return "add", None
    if name == "relax.mean":
        return "mean", None
    if name == "relax.nn.avg_pool2d":
        return "avg_pool", None
    if name == "relax.image.resize2d" and str(call.attrs.method) == "linear":
        return "bilinear", None
    if name == "relax.concat":
        return "cat", None
    if name in ("relax.multiply", "relax.divide") and _is_const(args[1]) and not _is_const(args[0]):
        return "mul_const", None
    if name == "relax.multiply" and not any(_is_const(a) for a in args):
        return "mul", None
    return None


def plan_key(layer: LayerPlan):
    w = layer.arrays.get("weight")
    return layer.kind, (tuple(w.shape) if w is not None and layer.kind in ("conv2d", "linear") else None)


def _describe(var, call) -> str:
    key = anchor_key(call)
    shape = f", weight {key[1]}" if key and key[1] else ""
    return f"Relax binding {var.name} = {op_name(call).removeprefix('relax.')}(...){shape}"


class _Graph:
    """Bindings of a function, with who uses each var."""

    def __init__(self, func: relax.Function):
        self.func = func
        self.bindings = [b for block in func.body.blocks for b in block.bindings]
        self.value = {b.var: b.value for b in self.bindings}
        self.users: dict[relax.Var, list[relax.Var]] = {}
        for b in self.bindings:
            for v in _operand_vars(b.value):
                self.users.setdefault(v, []).append(b.var)
        self.returned = set(_operand_vars(func.body.body))
        for b in reversed(self.bindings):  # fields of a returned tuple are returned too
            if b.var in self.returned and isinstance(b.value, relax.Tuple):
                self.returned.update(_operand_vars(b.value))
        self.params = set(func.params)

    def only_returned(self, var) -> bool:
        """var reaches the function's result and nothing else."""
        return var in self.returned and all(u in self.returned and isinstance(self.value[u], relax.Tuple)
                                            for u in self.users.get(var, []))

    def only_user(self, var):
        users = self.users.get(var, [])
        return users[0] if len(users) == 1 and var not in self.returned else None


def match_layers(func: relax.Function, plan: QuantPlan) -> list[LayerMatch]:
    g = _Graph(func)
    anchors = [(b.var, b.value) for b in g.bindings if isinstance(b.value, relax.Call) and anchor_key(b.value)]
    expected = expected_anchors(plan)  # plan layers, and float ops that look like them in Relax
    matches = []
    for i, (kind, what) in enumerate(expected):
        if not isinstance(what, LayerPlan):  # a declared float op: its Relax op stays as it is
            if i < len(anchors) and anchor_key(anchors[i][1])[0] != kind:
                raise LayerMatchError(f"float op {what!r} ({kind}) of the plan's program does not match "
                                      f"{_describe(*anchors[i])}")
            continue
        layer, want = what, plan_key(what)
        if i >= len(anchors):
            raise LayerMatchError(f"plan layer {layer.name!r} ({want[0]}, weight {want[1]}) has no Relax "
                                  f"op: the graph has only {len(anchors)} quantizable ops, the plan expects "
                                  f"{len(expected)}")
        var, call = anchors[i]
        if anchor_key(call) != want:
            raise LayerMatchError(f"plan layer {layer.name!r} ({want[0]}, weight {want[1]}) does not match "
                                  f"{_describe(var, call)}")
        if layer.kind == "conv2d" and int(call.attrs.groups) != int(layer.attrs.get("groups", 1)):
            raise LayerMatchError(f"plan layer {layer.name!r} has groups={layer.attrs.get('groups')}, "
                                  f"{_describe(var, call)} has groups={call.attrs.groups}")
        matches.append(_region(g, layer, var, call))
    if len(anchors) > len(expected):
        var, call = anchors[len(expected)]
        raise LayerMatchError(f"{_describe(var, call)} has no plan layer (plan has {len(plan.layers)} layers)")
    _check_inputs(g, plan, matches)
    return matches


def _region(g: _Graph, layer: LayerPlan, var, call) -> LayerMatch:
    m = LayerMatch(layer, var, call, var)
    if layer.kind == "cat":
        m.inputs = list(call.args[0].fields)
    elif layer.kind in ("add", "matmul", "mul"):
        m.inputs = list(call.args)
    else:
        m.inputs = [call.args[0]]
    if layer.kind in ("conv2d", "linear"):  # the bias add, if the layer has one
        nxt = g.only_user(m.output)
        if nxt is not None and op_name(g.value[nxt]) == "relax.add" and any(_is_const(a) for a in g.value[nxt].args):
            m.interior.append(m.output)
            m.output = nxt
    if layer.activation != "none":
        nxt = g.only_user(m.output)
        found = op_name(g.value[nxt]) if nxt is not None else "more than one user"
        if found not in ACTIVATION_OPS.get(layer.activation, ()):
            raise LayerMatchError(f"plan layer {layer.name!r} fuses activation {layer.activation!r}, but Relax "
                                  f"{m.output.name} is followed by {found.removeprefix('relax.')}")
        m.interior.append(m.output)
        m.output = nxt
    return m


def _source(g: _Graph, expr):
    """Follow data movement back to the value that was quantized."""
    while isinstance(expr, relax.Var) and is_movement(g.value.get(expr)):
        expr = g.value[expr].args[0]
    return expr


def _check_inputs(g: _Graph, plan: QuantPlan, matches: list[LayerMatch]) -> None:
    produced_by = {m.output: m.layer for m in matches}
    layer_outputs = {lp.output for lp in plan.layers if lp.kind not in PRELOWERED_KINDS}
    for m in matches:
        if len(m.inputs) != len(m.layer.inputs):
            raise LayerMatchError(f"plan layer {m.layer.name!r} has {len(m.layer.inputs)} inputs, "
                                  f"Relax {m.anchor.name} has {len(m.inputs)}")
        for k, (expr, tensor) in enumerate(zip(m.inputs, m.layer.inputs)):
            src = _source(g, expr)
            producer = produced_by.get(src)
            if producer is not None and producer.output != tensor:
                raise LayerMatchError(f"plan layer {m.layer.name!r} input {k} is tensor {tensor!r}, but in Relax "
                                      f"it comes from layer {producer.name!r} (tensor {producer.output!r})")
            if producer is None and tensor in layer_outputs:
                raise LayerMatchError(f"plan layer {m.layer.name!r} input {k} is layer output {tensor!r}, but in "
                                      f"Relax it comes from {getattr(src, 'name', src)}, not a matched layer")


@tvm.transform.module_pass(opt_level=0, name="tvmptq.MatchPlanLayers")
class MatchPlanLayers:
    """Check that every plan layer has its Relax op (raises LayerMatchError); changes nothing."""

    def __init__(self, plan: QuantPlan):
        self.plan = plan

    def transform_module(self, mod: tvm.IRModule, ctx) -> tvm.IRModule:
        match_layers(mod["main"], self.plan)
        return mod

