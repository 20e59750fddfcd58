"""PyTorch simulation of the integer program described by a plan, bit for bit.

The simulated model is the float graph with each integer layer replaced by a module that does
exactly what the integer program does: recover the integers of its inputs, accumulate products
of integers exactly (float32 when the bound ``max|x| * max_c sum|w_c| < 2^24`` proves it exact,
float64 otherwise), add the int32 bias, requantize with the plan's fixed-point multiplier and
shift (:mod:`.fixedpoint`), add the zero point and clip. Between layers tensors travel as their
dequantized values ``scale * (q - zero_point)``, which are exact, so float islands (softmax,
LayerNorm, GELU; computed in float64, see FLOAT64_ISLANDS) and data movement (reshape, pad, max
pool) run in between.
"""
from __future__ import annotations

import copy
import warnings

import numpy as np
import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from . import int_softmax, lut
from .graph import Layer, LayerGraph
from .int_layernorm import QLayerNorm
from .plan import LayerPlan, QuantPlan, TensorQuant

EXACT_F32 = 2.0 ** 24
EXACT_F64 = 2.0 ** 53


def _centered(x: torch.Tensor, t: TensorQuant) -> torch.Tensor:
    """The integers q - z of a tensor carried as its dequantized value (exact)."""
    return torch.div(x, t.scale).round_()


def _input_range(t: TensorQuant) -> int:
    """Largest |q - z| a tensor can hold."""
    return max(t.qmax - t.zero_point, t.zero_point - t.qmin)


class Requantize(nn.Module):
    """``(acc + bias) * m + 2^(k-1) >> k`` for an integer-valued accumulator, exactly.

    Fast path, float64: exact while ``(|acc| + |bias|) * m + 2^(k-1) < 2^53`` (the products of
    integers, a power-of-two scaling and floor are then all exact), proved once per layer from
    the grid bounds; it takes four passes over the tensor (convert, fused multiply-add, scale,
    floor) instead of int64 arithmetic, which CPUs without 64-bit vector multiplies run slowly.
    Otherwise the int64 definition itself. Returns float64 integers ``y`` (output zero point not
    added).
    """

    def __init__(self, m: np.ndarray, k: np.ndarray, acc_bound: float, bias=None, shape=(-1,)):
        super().__init__()
        m = np.asarray(m, dtype=np.int64).reshape(-1)
        k = np.asarray(k, dtype=np.int64).reshape(-1)
        bias = np.zeros(1, dtype=np.int64) if bias is None else np.asarray(bias, dtype=np.int64).reshape(-1)
        shape = shape if max(len(m), len(k), len(bias)) > 1 else ()
        bound = (acc_bound + float(np.abs(bias).max())) * float(np.abs(m).max()) + 2.0 ** (int(k.max()) - 1)
        self.fast = bound < EXACT_F64
        as64 = lambda a: torch.as_tensor(a, dtype=torch.float64).reshape(shape)  # noqa: E731
        self.register_buffer("m64", as64(m))
        self.register_buffer("offset64", as64(bias * m + np.left_shift(1, k - 1)))  # exact when fast
        self.register_buffer("inv64", as64(np.ldexp(1.0, -k)))
        as_i = lambda a: torch.as_tensor(a, dtype=torch.int64).reshape(shape)  # noqa: E731
        self.register_buffer("m", as_i(m))
        self.register_buffer("k", as_i(k))
        self.register_buffer("bias", as_i(bias))

    def forward(self, acc: torch.Tensor) -> torch.Tensor:
        if self.fast:
            return torch.addcmul(self.offset64, acc.to(torch.float64), self.m64).mul_(self.inv64).floor_()
        y = acc.to(torch.int64).add_(self.bias).mul_(self.m)
        y = y.add_(torch.bitwise_left_shift(torch.ones_like(self.k), self.k - 1)).bitwise_right_shift_(self.k)
        return y.to(torch.float64)


class QuantizeTensor(nn.Module):
    """Entry into the integer domain: q = clip(round_half_even(x / s) + z, qmin, qmax)."""

    def __init__(self, t: TensorQuant):
        super().__init__()
        self.t = t

    def forward(self, x):
        t = self.t  # clip(round(x/s) + z, qmin, qmax) - z == clip(round(x/s), qmin - z, qmax - z)
        q = torch.div(x.float(), t.scale).round_().clamp_(t.qmin - t.zero_point, t.qmax - t.zero_point)
        return q.mul_(t.scale)


class _IntLayer(nn.Module):
    def __init__(self, lp: LayerPlan, tensors: dict[str, TensorQuant]):
        super().__init__()
        self.lp = lp
        self.tin = [tensors[i] for i in lp.inputs]
        self.tout = tensors[lp.output]
        z = self.tout.zero_point
        self.centered_clip = (lp.clip[0] - z, lp.clip[1] - z)  # clip bounds on q - z

    def _requant(self, acc_bound, bias=None, shape=(-1,)) -> Requantize:
        a = self.lp.arrays
        return Requantize(a["multiplier"], a["shift"], acc_bound, bias, shape)

    def _finish(self, y: torch.Tensor) -> torch.Tensor:
        """y = q - z (float64 integers) -> clip -> dequantized float32 value."""
        return y.clamp_(*self.centered_clip).to(torch.float32).mul_(self.tout.scale)


class QKernel(_IntLayer):
    """conv2d or linear: int weights x int activations -> int32 accumulator -> requantize."""

    def __init__(self, lp, tensors):
        super().__init__(lp, tensors)
        a = lp.arrays
        if lp.keep_float:
            self.register_buffer("w", torch.as_tensor(a["weight_float"]))
            self.register_buffer("b", torch.as_tensor(a["bias_float"]) if "bias_float" in a else None)
            return
        w = torch.as_tensor(a["weight"].astype(np.float32))
        self.register_buffer("w", w)
        self.w_l1 = float(w.abs().reshape(w.shape[0], -1).sum(1).max())
        reach = _input_range(self.tin[0]) * self.w_l1  # bound of |sum_k w x| over the whole grid
        self.always_exact32 = reach < EXACT_F32  # else checked per call on the actual input
        self.requant = self._requant(reach, a["bias"], (1, -1, 1, 1) if lp.kind == "conv2d" else (-1,))

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
            return self._finish(torch.round(y / self.tout.scale).to(torch.float64))
        return self._finish(self.requant(self.accumulate(x)))

    def accumulate(self, x):
        """The exact integer accumulator ``sum w (q - z)`` (float32 where provably exact, else float64)."""
        xc = _centered(x, self.tin[0])
        exact32 = self.always_exact32 or float(xc.abs().max()) * self.w_l1 < EXACT_F32
        return self._op(xc, self.w) if exact32 else self._op(xc.double(), self.w.double())


class QMatmul(_IntLayer):
    """activation x activation matmul (attention), both operands quantized."""

    def __init__(self, lp, tensors):
        super().__init__(lp, tensors)
        self.per_k = _input_range(self.tin[0]) * _input_range(self.tin[1])
        self.requants = {}

    def forward(self, a, b):
        if self.lp.attrs.get("transpose_b"):
            b = b.transpose(-1, -2)
        ac, bc = _centered(a, self.tin[0]), _centered(b, self.tin[1])
        bound = self.per_k * a.shape[-1]
        if bound not in self.requants:
            self.requants[bound] = self._requant(bound)
        acc = torch.matmul(ac, bc) if bound < EXACT_F32 else torch.matmul(ac.double(), bc.double())
        return self._finish(self.requants[bound](acc))


class _Rescale(_IntLayer):
    """Inputs rescaled to the output grid with one shared shift: add and concat."""

    def __init__(self, lp, tensors):
        super().__init__(lp, tensors)
        self.mults = [float(m) for m in lp.arrays["multiplier"]]
        bound = sum(_input_range(t) * abs(m) for t, m in zip(self.tin, self.mults))
        self.requant = Requantize(np.ones(1, np.int64), lp.arrays["shift"], bound)

    def scaled(self, x, i):
        return _centered(x, self.tin[i]).to(torch.float64).mul_(self.mults[i])  # < 2^41: exact


class QAdd(_Rescale):
    def forward(self, a, b):
        return self._finish(self.requant(self.scaled(a, 0).add_(self.scaled(b, 1))))


class QCat(_Rescale):
    def forward(self, *xs):
        parts = [self.requant(self.scaled(x, i)) for i, x in enumerate(xs)]
        return self._finish(torch.cat(parts, dim=self.lp.attrs["dim"]))


class QMean(_IntLayer):
    def __init__(self, lp, tensors):
        super().__init__(lp, tensors)
        self.requant = self._requant(_input_range(self.tin[0]) * lp.attrs["count"])

    def forward(self, x):
        at = self.lp.attrs
        s = _centered(x, self.tin[0]).to(torch.float64).sum(dim=at["dims"], keepdim=at["keepdim"])
        return self._finish(self.requant(s))


class QMulConst(_IntLayer):
    def __init__(self, lp, tensors):
        super().__init__(lp, tensors)
        self.requant = self._requant(_input_range(self.tin[0]))

    def forward(self, x):
        return self._finish(self.requant(_centered(x, self.tin[0])))


class QAvgPool(_IntLayer):
    """Average pooling: the integer window sum (padding holds the real 0, i.e. q - z = 0), then
    one requantize by s_in / (s_out * divisor)."""

    def __init__(self, lp, tensors):
        super().__init__(lp, tensors)
        k = lp.attrs["kernel"]
        self.requant = self._requant(_input_range(self.tin[0]) * k[0] * k[1])

    def forward(self, x):
        at = self.lp.attrs
        s = F.avg_pool2d(_centered(x, self.tin[0]).double(), at["kernel"], at["stride"], at["padding"],
                         at["ceil_mode"], True, divisor_override=1)
        return self._finish(self.requant(s))


class QMul(_IntLayer):
    """Product of two activations: (a - za)(b - zb) exactly (float64: |product| < 2^18), then the
    plan's requantize by s_a s_b / s_out."""

    def __init__(self, lp, tensors):
        super().__init__(lp, tensors)
        self.requant = self._requant(_input_range(self.tin[0]) * _input_range(self.tin[1]))

    def forward(self, a, b):
        prod = _centered(a, self.tin[0]).double() * _centered(b, self.tin[1]).double()
        return self._finish(self.requant(prod))


class QBilinear(_IntLayer):
    """Bilinear upsampling on integer weights (edge_ops.axis_weights): rows, then columns, of
    ``w0 (q0 - z) + w1 (q1 - z)`` (exact in float64), one requantize by s_in / (s_out Dh Dw)."""

    def __init__(self, lp, tensors):
        super().__init__(lp, tensors)
        a = lp.arrays
        for key in ("rows", "cols"):
            self.register_buffer(key, torch.as_tensor(a[key], dtype=torch.int64))
            self.register_buffer(f"{key}_weight", torch.as_tensor(a[f"{key}_weight"], dtype=torch.float64))
        dh, dw = lp.attrs["denominators"]
        self.requant = self._requant(_input_range(self.tin[0]) * dh * dw)

    def forward(self, x):
        xc = _centered(x, self.tin[0]).double()
        r, wr = self.rows, self.rows_weight
        y = xc[:, :, r[:, 0]] * wr[:, :1] + xc[:, :, r[:, 1]] * wr[:, 1:]
        c, wc = self.cols, self.cols_weight
        y = y[..., c[:, 0]] * wc[:, 0] + y[..., c[:, 1]] * wc[:, 1]
        return self._finish(self.requant(y))


class QPrelu(_IntLayer):
    """PReLU: (q - z) requantized by the positive multiplier where q >= z, by the channel's
    negative one (alpha_c s_in / s_out, sign included) elsewhere."""

    def __init__(self, lp, tensors):
        super().__init__(lp, tensors)
        a, bound = lp.arrays, _input_range(self.tin[0])
        shape = (1, -1) + (1,) * (lp.attrs["ndim"] - 2)
        self.pos = Requantize(a["multiplier_pos"], a["shift_pos"], bound)
        self.neg = Requantize(a["multiplier"], a["shift"], bound, shape=shape)

    def forward(self, x):
        xc = _centered(x, self.tin[0])
        return self._finish(torch.where(xc >= 0, self.pos(xc), self.neg(xc)))


class QLookup(_IntLayer):
    """A unary function as a table from input code to output code (lut.py); kept in float
    (override), the same function evaluated on the dequantized input and quantized."""

    def __init__(self, lp, tensors):
        super().__init__(lp, tensors)
        t = self.tin[0]
        self.base = t.qmin - t.zero_point  # index = (q - z) - (qmin - z)
        if not lp.keep_float:
            table = lp.arrays["table"].astype(np.float64) - self.tout.zero_point
            self.register_buffer("table", torch.as_tensor(table))

    def forward(self, x):
        if self.lp.keep_float:
            y = lut.evaluate(self.lp.attrs["function"], self.lp.attrs["function_attrs"], x.float())
            return self._finish(torch.round(y / self.tout.scale).to(torch.float64))
        index = _centered(x, self.tin[0]).sub_(self.base).to(torch.int64)
        return self._finish(self.table[index])


# Float islands computed in float64 and rounded once to float32. float32 LayerNorm, softmax and
# GELU differ between libraries by a few ulps, enough to flip a quantization tie now and then,
# and a transformer amplifies one flipped LSB layer after layer (MiniLM: 0.8 % of sentences
# change nearest neighbour). Correctly rounded islands are what every executor of the plan
# can reproduce: the NumPy reference (float64) and the Relax lowering (islands.Float64Islands).
def _layer_norm_f64(x, shape, weight=None, bias=None, eps=1e-5, cudnn_enable=True):
    f64 = (lambda t: None if t is None else t.double())  # noqa: E731
    return F.layer_norm(x.double(), shape, f64(weight), f64(bias), eps).to(x.dtype)


def _softmax_f64(x, dim, dtype_or_half=None):
    return torch.softmax(x.double(), dim).to(x.dtype)


def _gelu_f64(x, approximate="none"):
    return F.gelu(x.double(), approximate=approximate).to(x.dtype)


def _log_softmax_f64(x, dim, dtype_or_half=None):
    return torch.log_softmax(x.double(), dim).to(x.dtype)


_aten = torch.ops.aten
FLOAT64_ISLANDS = {_aten.log_softmax.int: _log_softmax_f64, _aten._log_softmax.default: _log_softmax_f64,
                   _aten.layer_norm.default: _layer_norm_f64, _aten.softmax.int: _softmax_f64,
                   _aten._softmax.default: _softmax_f64, _aten.gelu.default: _gelu_f64}


class IntegerSoftmax(nn.Module):
    """A softmax step the plan computes in integers (int_softmax.py): the centred codes of its
    quantized input, the keep/drop mask of the add in front of it, output on the plan's grid."""

    def __init__(self, island: dict, plan: QuantPlan, where: str):
        super().__init__()
        self.p, self.where = island, where
        self.tin, self.tout = plan.tensors[island["input_tensor"]], plan.tensors[where]
        self.register_buffer("table", torch.as_tensor(plan.constants[island["table"]].astype(np.int64)))

    def forward(self, x, mask=None):
        keep = None if mask is None else int_softmax.check_mask(torch.as_tensor(mask), self.where)
        codes = int_softmax.softmax_codes(_centered(x, self.tin).to(torch.int64), keep, self.p["dim"],
                                          self.p, self.table, self.where)
        return (codes - self.tout.zero_point).to(torch.float32).mul_(self.tout.scale)


def _integer_softmax(root, graph: fx.Graph, plan: QuantPlan) -> None:
    """Each softmax node the plan computes in integers reads the quantized scores (and the mask)
    of the add in front of it through an IntegerSoftmax module instead."""
    nodes = {n.name: n for n in graph.nodes}
    for step in plan.program or []:
        island = step.get("integer_island")
        if not island or island["kind"] != "softmax":
            continue
        node = nodes[step["name"]]
        x, mask = node.args[0], None
        if island["mask_step"]:
            add = x
            i = next(i for i, a in enumerate(plan_args(plan, island["mask_step"])) if a == {"value": island["input"]})
            x, mask = add.args[i], add.args[1 - i]
        mod_name = f"integer_softmax_{step['name']}"
        root.add_module(mod_name, IntegerSoftmax(island, plan, step["name"]))
        with graph.inserting_before(node):
            new = graph.call_module(mod_name, (x,) if mask is None else (x, mask))
        node.replace_all_uses_with(new)
        graph.erase_node(node)


def plan_args(plan: QuantPlan, name: str) -> list:
    return next(s for s in plan.program if s.get("name") == name)["args"]


LAYER_MODULES = {"conv2d": QKernel, "linear": QKernel, "matmul": QMatmul, "add": QAdd,
                 "mean": QMean, "mul_const": QMulConst, "cat": QCat, "lut": QLookup, "mul": QMul, "avg_pool": QAvgPool,
                 "bilinear": QBilinear, "prelu": QPrelu, "layernorm": QLayerNorm}


def _node_layer(graph: LayerGraph, lp: LayerPlan) -> Layer:
    """A plan layer made from one float-graph node after classification (integer LayerNorm)."""
    if lp.kind != "layernorm":
        raise KeyError(f"plan layer {lp.name!r} ({lp.kind}) is not a layer of the graph")
    node = next(n for n in graph.gm.graph.nodes if n.name == lp.name)
    return Layer(lp.name, lp.kind, node, node, [node.args[0]])


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
        layer = by_name.get(lp.name) or _node_layer(graph, lp)
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
    _integer_softmax(root, new_graph, plan)
    for node in new_graph.nodes:
        if node.op == "call_function" and node.target in FLOAT64_ISLANDS:
            node.target = FLOAT64_ISLANDS[node.target]
    sim = fx.GraphModule(root, new_graph, class_name="SimulatedIntegerModel")
    sim.graph.eliminate_dead_code()
    sim.recompile()
    sim.eval()
    return sim
