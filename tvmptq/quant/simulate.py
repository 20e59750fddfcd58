"""PyTorch simulation of the integer program described by a plan, bit for bit.

The simulated model is the float graph with each integer layer replaced by a module that does
exactly what the integer program does: recover the integers of its inputs, accumulate products
of integers exactly (float32 when the bound ``max|x| * max_c sum|w_c| < 2^24`` proves it exact,
float64 otherwise), add the int32 bias, requantize with the plan's fixed-point multiplier and
shift (:mod:`.fixedpoint`), add the zero point and clip. Between layers tensors travel as their
dequantized values ``scale * (q - zero_point)``, which are exact, so float islands (softmax,
LayerNorm, GELU) and data movement (reshape, pad, max pool) run unchanged in between.
"""
from __future__ import annotations

import copy
import warnings

import numpy as np
import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from .graph import LayerGraph
from .plan import LayerPlan, QuantPlan, TensorQuant

EXACT_F32 = 2.0 ** 24
EXACT_F64 = 2.0 ** 53


def _centered(x: torch.Tensor, t: TensorQuant) -> torch.Tensor:
    """The integers q - z of a tensor carried as its dequantized value (exact)."""
    return torch.div(x, t.scale).round_()


def _input_range(t: TensorQuant) -> int:
    """Largest |q - z| a tensor can hold."""
    return max(t.qmax - t.zero_point, t.zero_point - t.qmin)


def _requantize(acc: torch.Tensor, m: torch.Tensor, k: torch.Tensor, acc_bound: float) -> torch.Tensor:
    """(acc * m + 2^(k-1)) >> k for an integer-valued accumulator, exactly; returns float64.

    float64 arithmetic is exact while ``|acc| * m + 2^(k-1) < 2^53`` (products of integers, a
    power-of-two scaling and floor are then all exact) and is much faster than int64 on CPUs
    without 64-bit vector multiplies; otherwise the int64 definition is used.
    """
    if acc_bound * float(m.abs().max()) + 2.0 ** (int(k.max()) - 1) < EXACT_F64:
        y = acc.to(torch.float64).mul_(m.to(torch.float64)).add_(torch.pow(2.0, (k - 1).to(torch.float64)))
        return y.mul_(torch.pow(2.0, -k.to(torch.float64))).floor_()
    acc = acc.to(torch.int64)
    y = acc.mul_(m).add_(torch.bitwise_left_shift(torch.ones_like(k), k - 1)).bitwise_right_shift_(k)
    return y.to(torch.float64)


class QuantizeTensor(nn.Module):
    """Entry into the integer domain: q = clip(round_half_even(x / s) + z, qmin, qmax)."""

    def __init__(self, t: TensorQuant):
        super().__init__()
        self.t = t

    def forward(self, x):
        t = self.t
        q = torch.clamp(torch.round(x.float() / t.scale) + t.zero_point, t.qmin, t.qmax)
        return (q - t.zero_point) * t.scale


class _IntLayer(nn.Module):
    def __init__(self, lp: LayerPlan, tensors: dict[str, TensorQuant], channel_shape=(-1,)):
        super().__init__()
        self.lp = lp
        self.tin = [tensors[i] for i in lp.inputs]
        self.tout = tensors[lp.output]
        for key in ("multiplier", "shift"):
            if key in lp.arrays:
                self.register_buffer(key, torch.as_tensor(lp.arrays[key], dtype=torch.int64).reshape(channel_shape)
                                     if lp.arrays[key].size > 1 else torch.as_tensor(lp.arrays[key], dtype=torch.int64).reshape(()))

    def _finish(self, q: torch.Tensor) -> torch.Tensor:
        t = self.tout
        q = q.add_(t.zero_point).clamp_(*self.lp.clip).sub_(t.zero_point)  # float64 integers
        return q.to(torch.float32).mul_(t.scale)


class QKernel(_IntLayer):
    """conv2d or linear: int weights x int activations -> int32 accumulator -> requantize."""

    def __init__(self, lp, tensors):
        shape = (1, -1, 1, 1) if lp.kind == "conv2d" else (-1,)
        super().__init__(lp, tensors, shape)
        a = lp.arrays
        if lp.keep_float:
            self.register_buffer("w", torch.as_tensor(a["weight_float"]))
            self.register_buffer("b", torch.as_tensor(a["bias_float"]) if "bias_float" in a else None)
            return
        w = torch.as_tensor(a["weight"].astype(np.float32))
        self.register_buffer("w", w)
        self.register_buffer("bias", torch.as_tensor(a["bias"], dtype=torch.float64).reshape(shape))
        self.w_l1 = float(w.abs().reshape(w.shape[0], -1).sum(1).max())
        t = self.tin[0]
        # Static proof of float32 exactness over the whole input grid; else checked per call.
        self.acc_bound = _input_range(t) * self.w_l1 + float(np.abs(a["bias"]).max(initial=0))
        self.always_exact32 = _input_range(t) * self.w_l1 < EXACT_F32

    def _op(self, x, w):
        if self.lp.kind == "linear":
            return F.linear(x, w)
        at = self.lp.attrs
        return F.conv2d(x, w, None, at["stride"], at["padding"], at["dilation"], at["groups"])

    def forward(self, x):
        if self.lp.keep_float:
            y = self._op(x.float(), self.w)
            if self.b is not None:
                y = y + (self.b.view(1, -1, 1, 1) if self.lp.kind == "conv2d" else self.b)
            t = self.tout
            return self._finish(torch.round(y / t.scale).to(torch.float64))
        xc = _centered(x, self.tin[0])
        exact32 = self.always_exact32 or float(xc.abs().max()) * self.w_l1 < EXACT_F32
        acc = self._op(xc, self.w) if exact32 else self._op(xc.double(), self.w.double())
        acc = acc.to(torch.float64).add_(self.bias)  # exact: integers far below 2^53
        return self._finish(_requantize(acc, self.multiplier, self.shift, self.acc_bound))


class QMatmul(_IntLayer):
    """activation x activation matmul (attention), both operands quantized."""

    def forward(self, a, b):
        if self.lp.attrs.get("transpose_b"):
            b = b.transpose(-1, -2)
        ac, bc = _centered(a, self.tin[0]), _centered(b, self.tin[1])
        bound = _input_range(self.tin[0]) * _input_range(self.tin[1]) * a.shape[-1]
        acc = torch.matmul(ac, bc) if bound < EXACT_F32 else torch.matmul(ac.double(), bc.double())
        return self._finish(_requantize(acc, self.multiplier, self.shift, bound))


class QAdd(_IntLayer):
    def forward(self, a, b):
        ca = _centered(a, self.tin[0]).to(torch.float64)
        cb = _centered(b, self.tin[1]).to(torch.float64)
        acc = ca.mul_(float(self.multiplier[0])).add_(cb.mul_(float(self.multiplier[1])))  # < 2^41: exact
        bound = sum(_input_range(t) * abs(float(m)) for t, m in zip(self.tin, self.multiplier))
        return self._finish(_requantize(acc, torch.ones_like(self.shift), self.shift, bound))


class QMean(_IntLayer):
    def forward(self, x):
        at = self.lp.attrs
        s = _centered(x, self.tin[0]).to(torch.float64).sum(dim=at["dims"], keepdim=at["keepdim"])
        return self._finish(_requantize(s, self.multiplier, self.shift, _input_range(self.tin[0]) * at["count"]))


class QMulConst(_IntLayer):
    def forward(self, x):
        return self._finish(_requantize(_centered(x, self.tin[0]), self.multiplier, self.shift,
                                        _input_range(self.tin[0])))


class QCat(_IntLayer):
    def forward(self, *xs):
        k = self.shift
        parts = [_requantize(_centered(x, t).to(torch.float64).mul_(float(self.multiplier[i])), torch.ones_like(k), k,
                             _input_range(t) * abs(float(self.multiplier[i])))
                 for i, (x, t) in enumerate(zip(xs, self.tin))]
        return self._finish(torch.cat(parts, dim=self.lp.attrs["dim"]))


LAYER_MODULES = {"conv2d": QKernel, "linear": QKernel, "matmul": QMatmul, "add": QAdd,
                 "mean": QMean, "mul_const": QMulConst, "cat": QCat}


def simulate(graph: LayerGraph, plan: QuantPlan) -> fx.GraphModule:
    """The float graph rewritten to the plan's integer semantics (a runnable GraphModule)."""
    with warnings.catch_warnings():  # torch's own pytree deprecation, raised inside deepcopy
        warnings.simplefilter("ignore", FutureWarning)
        new_graph = copy.deepcopy(graph.gm.graph)
    nodes = {n.name: n for n in new_graph.nodes}
    root = copy.copy(graph.gm)  # shares parameters; the graph below is new
    by_name = {layer.name: layer for layer in graph.layers}
    layer_outputs, replaced = set(), {}
    for lp in plan.layers:
        layer = by_name[lp.name]
        out = nodes[layer.out_node.name]
        mod_name = f"q_{lp.name}"
        root.add_module(mod_name, LAYER_MODULES[lp.kind](lp, plan.tensors))
        # Inputs produced by layers already rewritten are read from their integer modules.
        args = tuple(replaced.get(a.name, nodes[a.name]) for a in layer.inputs)
        with new_graph.inserting_after(out):
            q = new_graph.call_module(mod_name, args)
        out.replace_all_uses_with(q, delete_user_cb=lambda u, q=q: u is not q)
        replaced[out.name] = q
        layer_outputs.add(lp.output)
    for name, t in plan.tensors.items():
        if name in layer_outputs:
            continue
        node = nodes[name]
        mod_name = f"quantize_{name}"
        root.add_module(mod_name, QuantizeTensor(t))
        with new_graph.inserting_after(node):
            q = new_graph.call_module(mod_name, (node,))
        node.replace_all_uses_with(q, delete_user_cb=lambda u, q=q: u is not q)
    sim = fx.GraphModule(root, new_graph, class_name="SimulatedIntegerModel")
    sim.graph.eliminate_dead_code()
    sim.recompile()
    sim.eval()
    return sim
