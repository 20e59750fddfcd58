"""The integer program as data: the ordered steps a plan runs, for executors outside PyTorch.

The plan's layers say *how* each integer op computes; the program says *in which order and on
which values*: model inputs, quantize points, integer layers, data movement on integer tensors
(pad, reshape, permute, ...) and float-island ops (softmax, LayerNorm, GELU, ...), each naming its
inputs by value name. It is serialized with the plan, so the NumPy reference executor and the
Relax lowering can both be written from the plan alone.

Step kinds:
  {"kind": "input", "name", "index", "dtype", "shape"}        model input (shape: -1 = batch)
  {"kind": "quantize", "name", "tensor"}                        value `name` enters the integer domain
  {"kind": "layer", "name", "layer", "inputs"}                  integer layer (see plan.layers)
  {"kind": "op", "name", "op", "args", "kwargs", "integer"}     an ATen op; "integer": data movement
                                                                 on integer values, else float island
                                                                 or auxiliary (mask) computation
  {"kind": "output", "values"}
Arguments that are values appear as {"value": name}; constants (parameters) as {"const": key}
with the array stored in the plan's arrays under "const/<key>".
"""
from __future__ import annotations

import numpy as np
import torch
import torch.fx as fx

from .graph import PASSTHROUGH_OPS, LayerGraph


def _op_name(target) -> str:
    name = getattr(target, "__name__", str(target))
    return name if name != "getitem" else "getitem"


def build_program(graph: LayerGraph) -> tuple[list[dict], dict[str, np.ndarray]]:
    """Steps and the constant arrays they reference."""
    gm = graph.gm
    steps, consts = [], {}
    layer_at = {layer.out_node.name: layer for layer in graph.layers}
    interior = {layer.node.name for layer in graph.layers if layer.node is not layer.out_node}
    integer = set()
    # Nodes computed from the model inputs (the rest are parameters and literals): one pass in
    # topological order instead of a graph walk per argument.
    from_input = set()
    for node in gm.graph.nodes:
        if node.op == "placeholder" or any(a.name in from_input for a in node.all_input_nodes):
            from_input.add(node.name)  # value names that hold integer (quantized) tensors

    def arg(a):
        if isinstance(a, fx.Node):
            if a.name not in from_input:  # parameters and what is computed from them alone
                if a.name not in consts:
                    value = _evaluate_const(gm, a)
                    if isinstance(value, (bool, int, float)):  # a folded scalar, e.g. item() of a constant
                        return value
                    consts[a.name] = value.detach().cpu().numpy()
                return {"const": a.name}
            return {"value": a.name}
        if isinstance(a, dict):
            return {k: arg(v) for k, v in a.items()}
        if isinstance(a, (list, tuple)):
            return [arg(v) for v in a]
        if isinstance(a, torch.dtype):
            return {"dtype": str(a).replace("torch.", "")}
        if isinstance(a, (bool, int, float, str)) or a is None:
            return a
        if isinstance(a, torch.device):
            return None
        return {"symbolic": str(a)}

    inputs = 0
    for node in gm.graph.nodes:
        if node.op == "placeholder":
            val = node.meta.get("val")
            shape = [-1] + [int(s) for s in val.shape[1:]] if isinstance(val, torch.Tensor) else []
            steps.append({"kind": "input", "name": node.name, "index": inputs,
                          "dtype": str(val.dtype).replace("torch.", "") if isinstance(val, torch.Tensor) else None,
                          "shape": shape})
            inputs += 1
        elif node.op == "output":
            steps.append({"kind": "output", "values": arg(node.args[0])})
            continue
        elif node.op in ("get_attr",) or (node.op == "call_module" and node.target == "_guards_fn"):
            continue
        elif node.name in interior:
            continue
        elif node.name in layer_at:
            layer = layer_at[node.name]
            steps.append({"kind": "layer", "name": node.name, "layer": layer.name,
                          "inputs": [arg(a)["value"] for a in layer.inputs]})
            integer.add(node.name)
            continue
        elif node.op == "call_function":
            if node.name not in from_input:
                continue
            ins = [a for a in node.all_input_nodes if a.name in from_input]
            movement = node.target in PASSTHROUGH_OPS and ins and ins[0].name in integer
            steps.append({"kind": "op", "name": node.name, "op": _op_name(node.target),
                          "args": arg(list(node.args)), "kwargs": arg(dict(node.kwargs)) if node.kwargs else {},
                          "integer": bool(movement)})
            if movement:
                integer.add(node.name)
        if node.name in graph.quant_points and node.name not in layer_at:
            steps.append({"kind": "quantize", "name": node.name, "tensor": node.name})
            integer.add(node.name)
    return steps, consts


def _evaluate_const(gm, node: fx.Node) -> torch.Tensor:
    """Value of a node that depends on parameters and literals only."""
    if node.op == "get_attr":
        value = gm
        for part in node.target.split("."):
            value = getattr(value, part)
        return value.detach()

    def ev(a):
        if isinstance(a, fx.Node):
            return _evaluate_const(gm, a)
        if isinstance(a, (list, tuple)):
            return type(a)(ev(v) for v in a)
        return a
    with torch.no_grad():
        return node.target(*ev(node.args), **{k: ev(v) for k, v in node.kwargs.items()})
