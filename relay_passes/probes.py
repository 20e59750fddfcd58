"""Tensor probes: the compiled program also returns chosen integer values of the plan's program.

For checking, not for deployment: ``lowering_passes(plan, probes=TensorProbes(plan))`` adds two
passes, and without ``probes`` nothing of this module runs (the normal program is unchanged).

* ``mark`` (before QuantizeLayers): the Relax var that will hold each program value, by the
  program's value name (``run_plan_values``' keys): every matched layer's output var, the root
  (data movement followed back, match._source) of every layer operand (island results the plan
  quantizes, lookup-table / PReLU outputs, integer softmax results) and every integer LayerNorm's
  ``nn.layer_norm`` binding. On the program side an operand's root is its value name with the
  integer data-movement steps followed back the same way (``select(slice(layer_norm_2))`` ->
  ``layer_norm_2``). Quantized model inputs (function parameters) are not probed.
* ``expose`` (after the integer passes, before CancelQDQ): each marked var is then bound to
  ``dequantize(q, s, z)`` with the value's grid; ``main`` returns its original outputs followed by
  those ``q`` (the program's own integer tensors, not a recomputation). CancelQDQ still cancels
  every other use of the dequantize, so the integer arithmetic is the normal program's; only
  fusion may differ (a returned tensor is materialized).

``exposed`` then lists the probed value names in output order, ``skipped`` the requested values
that could not be probed, with the reason, and ``n_outputs`` the number of original outputs.
"""
from __future__ import annotations

import numpy as np
import tvm
from tvm import relax

from tvmptq.quant.plan import QuantPlan

from .errors import LoweringError
from .integer_ops import Grid
from .match import _Graph, _source, match_layers, op_name

_LN = "layer_norm.default"


def program_root(steps: dict, name: str) -> str:
    """Follow the program's integer data-movement steps back to the value that was produced."""
    while steps.get(name, {}).get("kind") == "op" and steps[name].get("integer"):
        args = [a for a in steps[name]["args"] if isinstance(a, dict) and "value" in a]
        if not args:
            break
        name = args[0]["value"]
    return name


def value_grids(plan: QuantPlan) -> dict:
    """Program value name -> TensorQuant for every integer value a step produces (layer outputs,
    quantize points, integer islands); integer data movement keeps its input's grid and is left out."""
    layers = {lp.name: lp for lp in plan.layers}
    grids = {}
    for step in plan.program or []:
        if step["kind"] == "layer":
            grids[step["name"]] = plan.tensors[layers[step["layer"]].output]
        elif step["kind"] == "quantize":
            grids[step["name"]] = plan.tensors[step["tensor"]]
        elif step["kind"] == "op" and step.get("integer_island"):
            grids[step["name"]] = plan.tensors[step["name"]]
    return grids


class TensorProbes:
    """Probe the program values ``names`` (default: all of :func:`value_grids`). See module doc."""

    def __init__(self, plan: QuantPlan, names=None):
        self.plan, self.grids = plan, value_grids(plan)
        unknown = [n for n in (names or ()) if n not in self.grids]
        if unknown:
            raise LoweringError(f"probes name values that are not integer values of the plan's program: "
                                f"{', '.join(map(repr, unknown))} (integer values: layer outputs, quantize "
                                "points, integer islands)")
        self.names = list(names) if names is not None else list(self.grids)
        self.marked: dict[str, relax.Var] = {}
        self.exposed: list[str] = []
        self.skipped: dict[str, str] = {}
        self.n_outputs = 0

    # -- mark --------------------------------------------------------------------------------
    def _mark(self, mod: tvm.IRModule) -> tvm.IRModule:
        func = mod["main"]
        g = _Graph(func)
        steps = {s["name"]: s for s in self.plan.program if "name" in s}
        layer_step = {s["layer"]: s["name"] for s in self.plan.program if s["kind"] == "layer"}
        found: dict[str, relax.Var] = {}
        params: set[str] = set()
        matches = match_layers(func, self.plan)
        for m in matches:
            found[layer_step[m.layer.name]] = m.output
        for m in matches:  # operands: the Relax root of each input, named by the program's root
            for expr, name in zip(m.inputs, steps[layer_step[m.layer.name]]["inputs"]):
                src, root = _source(g, expr), program_root(steps, name)
                if src in g.params:
                    params.add(root)
                elif isinstance(src, relax.Var):
                    found.setdefault(root, src)
        lns = [b.var for b in g.bindings if op_name(b.value) == "relax.nn.layer_norm"]
        ln_steps = [s for s in self.plan.program if (s["kind"] == "layer" and self.plan.layer(s["layer"]).kind
                                                     == "layernorm") or (s["kind"] == "op" and s["op"] == _LN)]
        if len(lns) == len(ln_steps):  # the same pairing as int_layernorm.find_regions
            found.update({s["name"]: var for var, s in zip(lns, ln_steps) if s["kind"] == "layer"})
        self.marked = {n: found[n] for n in self.names if n in found}
        for n in self.names:
            if n not in self.marked:
                self.skipped[n] = ("a quantized model input (a function parameter)" if n in params
                                   else "no Relax value found for it (no layer reads it)")
        return mod

    # -- expose ------------------------------------------------------------------------------
    def _expose(self, mod: tvm.IRModule, last: bool) -> tvm.IRModule:
        func = mod["main"]
        g = _Graph(func)
        probes = []
        for name, var in self.marked.items():
            if name in self.exposed or name in self.skipped:
                continue
            value = g.value.get(var)
            if op_name(value) != "relax.dequantize":
                if last:
                    self.skipped[name] = (f"its Relax value is {op_name(value) or 'gone'} after the integer "
                                          "passes, not a dequantize of codes")
                continue
            grid = Grid.of(self.grids[name])
            scale, zero = (a.value.numpy() for a in value.args[1:3])
            if np.float32(scale) != grid.scale or int(zero) != grid.zero_point:
                raise LoweringError(f"probe {name!r}: Relax dequantizes with scale {scale}, zero point {zero}; "
                                    f"the plan's grid has {grid.scale}, {grid.zero_point}")
            probes.append((name, value.args[0]))
        if not probes and not (last and not self.n_outputs):
            return mod
        self.exposed += [n for n, _ in probes]
        return _return_also(mod, func, [q for _, q in probes], self)

    def mark(self) -> tvm.transform.Pass:
        return tvm.transform.module_pass(lambda mod, ctx: self._mark(mod), opt_level=0, name="tvmptq.MarkProbes")

    def expose(self, last: bool = False) -> tvm.transform.Pass:
        """Return the marked values that are codes by now (after QuantizeLayers: layer outputs and
        quantize points, which a later integer pass may leave without users: the LayerNorm kernel
        reads its input's codes); ``last``: name the rest in ``skipped``."""
        return tvm.transform.module_pass(lambda mod, ctx: self._expose(mod, last), opt_level=0,
                                         name="tvmptq.ExposeProbes")

    def split(self, outputs):
        """(the program's outputs, {value name: probed codes}) from a compiled run's output tuple."""
        outputs = list(outputs) if isinstance(outputs, (list, tuple)) else [outputs]
        if len(outputs) != self.n_outputs + len(self.exposed):
            raise ValueError(f"expected {self.n_outputs} outputs and {len(self.exposed)} probes, "
                             f"got {len(outputs)} arrays")
        return outputs[:self.n_outputs], dict(zip(self.exposed, outputs[self.n_outputs:]))


def _return_also(mod: tvm.IRModule, func: relax.Function, extra: list, probes: TensorProbes) -> tvm.IRModule:
    """``main`` returning its outputs (a tuple's fields) followed by ``extra``: each extra value
    (a dataflow var) is bound to an output var at the end of its block, and a last binding block
    builds the tuple."""
    body = func.body
    out = body.body
    n = len(out.ty.fields) if isinstance(out.ty, relax.TupleType) else 1
    if not probes.n_outputs:  # the first call: the program's own outputs
        probes.n_outputs = n
    where = {}
    for i, block in enumerate(body.blocks):
        for b in block.bindings:
            where[b.var] = i
    blocks = [list(block.bindings) for block in body.blocks]
    outs = []
    for k, q in enumerate(extra):
        if isinstance(q, relax.DataflowVar):
            v = relax.Var(f"probe_{k}", q.ty)
            blocks[where[q]].append(relax.VarBinding(v, q))
            q = v
        outs.append(q)
    tail = []
    if isinstance(out.ty, relax.TupleType):
        fields = []
        for i in range(n):
            v = relax.Var(f"output_{i}", out.ty.fields[i])
            tail.append(relax.VarBinding(v, relax.TupleGetItem(out, i)))
            fields.append(v)
    else:
        fields = [out]
    result = relax.Var("outputs_and_probes", relax.TupleType([f.ty for f in fields + outs]))
    tail.append(relax.VarBinding(result, relax.Tuple(fields + outs)))
    new_blocks = [relax.DataflowBlock(bs) if isinstance(block, relax.DataflowBlock) else relax.BindingBlock(bs)
                  for bs, block in zip(blocks, body.blocks)] + [relax.BindingBlock(tail)]
    new_func = relax.Function(func.params, relax.SeqExpr(new_blocks, result), result.ty, is_pure=func.is_pure,
                              attrs=func.attrs)
    mod = tvm.IRModule(dict(mod.functions_items()), attrs=mod.attrs)
    mod["main"] = new_func
    return mod
