"""The trainable copy of a plan's simulation, and the blocks it is cut into (shared by AdaRound,
BRECQ, WAPS-Quant and QFT; the reconstruction loop itself is ``reconstruction.py``).

* ``TrainModel``: every integer layer of the plan's simulation becomes a differentiable fake-quant
  module with three modes, ``fp`` (the FP32 model, batch norm folded), ``soft`` (training: the
  weight module's soft integers, straight-through rounding of activations) and ``hard`` (the
  integers that will be folded). Activations keep the plan's per-tensor grids; their step sizes
  are parameters (LSQ) owned by the module producing the tensor.
* ``find_blocks``: a cut is a point of the program where the fewest values are live (one for a
  CNN: no skip connection crosses it); a block ends at a cut after a residual add, a conv/linear
  without activation (MBConv's linear bottleneck), a float island's re-quantize (a transformer's
  LayerNorm) or the stem. ``granularity="layer"`` cuts after every conv/linear instead
  (AdaRound's layer-wise reconstruction).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from ..quant import lut
from ..quant.plan import QuantPlan
from ..quant.simulate import simulate


def round_ste(x: torch.Tensor) -> torch.Tensor:
    return x + (torch.round(x) - x).detach()


class ActQuant(nn.Module):
    """A per-tensor activation grid with a learnable step (LSQ) and the fused activation clip."""

    def __init__(self, t, act_range=None, learn: bool = True):
        super().__init__()
        self.name, self.lo, self.hi = t.name, t.qmin - t.zero_point, t.qmax - t.zero_point
        self.act = act_range if act_range is not None else (-np.inf, np.inf)
        self.scale = nn.Parameter(torch.tensor(float(t.scale)), requires_grad=learn)
        self.mode, self.drop_prob = "hard", 0.0
        self.register_buffer("zero", torch.zeros(1), persistent=False)
        self.lo, self.hi = int(self.lo), int(self.hi)

    def _act(self, x):
        lo, hi = (None if not np.isfinite(v) else float(v) for v in self.act)
        return x if lo is None and hi is None else x.clamp(lo, hi)

    def forward(self, x):
        if self.mode == "fp":
            return self._act(x)
        # PyTorch's fused LSQ fake-quant: the same forward and gradients as
        # ``round_ste(x / s).clamp(lo, hi) * s`` in one kernel (a fifth faster on 224x224 maps).
        s = (self.scale.abs() + 1e-12).reshape(1)
        y = self._act(torch._fake_quantize_learnable_per_tensor_affine(x, s, self.zero, self.lo, self.hi, 1.0))
        if self.mode == "soft" and self.drop_prob > 0:                     # QDrop
            y = torch.where(torch.rand_like(y) < self.drop_prob, self._act(x), y)
        return y


def kernel_op(kind: str, attrs: dict, x, w, b):
    """The float conv2d / linear of a plan kernel layer (``kind``, ``attrs``) with weight ``w``, bias ``b``."""
    if kind == "linear":
        return F.linear(x, w, b)
    return F.conv2d(x, w, b, attrs["stride"], attrs["padding"], attrs["dilation"], attrs["groups"])


class TrainKernel(nn.Module):
    """conv2d / linear with a learnable weight module (AdaRound, WAPS) and an output ActQuant."""

    def __init__(self, layer, lp, tensors, weight: nn.Module | None, learn_act: bool):
        super().__init__()
        self.kind, self.attrs = lp.kind, lp.attrs
        self.register_buffer("w_fp", torch.as_tensor(layer.weight, dtype=torch.float32))
        b = layer.bias if layer.bias is not None else np.zeros(layer.weight.shape[0])
        self.register_buffer("b_fp", torch.as_tensor(b, dtype=torch.float32))
        if weight is not None:                      # the plan's int32 bias (bias correction included)
            acc = tensors[lp.inputs[0]].scale * lp.arrays["weight_scale"].astype(np.float64)
            b = lp.arrays["bias"] * acc
        self.register_buffer("b_q", torch.as_tensor(b, dtype=torch.float32))
        self.weight = weight
        self.out = ActQuant(tensors[lp.output], layer.act_range, learn_act)
        self.mode = "hard"

    def _op(self, x, w, b):
        return kernel_op(self.kind, self.attrs, x, w, b)

    def forward(self, x):
        if self.mode == "fp":
            return self.out(self._op(x, self.w_fp, self.b_fp))
        w = self.w_fp if self.weight is None else self.weight(self.mode == "soft")
        return self.out(self._op(x, w, self.b_q))


class TrainRequant(nn.Module):
    """add / mean / mul_const / matmul / cat / lut / mul in float, then the output ActQuant."""

    def __init__(self, layer, lp, tensors, learn_act: bool):
        super().__init__()
        self.kind, self.attrs, self.name = lp.kind, lp.attrs, lp.name
        self.out = ActQuant(tensors[lp.output], layer.act_range, learn_act)

    def forward(self, *xs):
        a, k = self.attrs, self.kind
        if k == "add":
            y = xs[0] + xs[1]
        elif k == "mean":
            y = xs[0].mean(dim=a["dims"], keepdim=a["keepdim"])
        elif k == "mul_const":
            y = xs[0] * a["factor"]
        elif k == "cat":
            y = torch.cat(xs, dim=a["dim"])
        elif k == "mul":
            y = xs[0] * xs[1]
        elif k == "avg_pool":                 # window sum / count, as the plan's requantize divides
            y = F.avg_pool2d(xs[0], a["kernel"], a["stride"], a["padding"], a["ceil_mode"], True,
                             divisor_override=a["count"])
        elif k == "lut":                      # the tabulated function, evaluated in float
            y = lut.evaluate(a["function"], a["function_attrs"], xs[0])
        elif k == "matmul":
            b = xs[1].transpose(-1, -2) if a.get("transpose_b") else xs[1]
            y = torch.matmul(xs[0], b)
        else:
            raise NotImplementedError(f"reconstruction cannot train through {k!r} layer {self.name!r}")
        return self.out(y)


class TrainModel:
    """The plan's simulation graph with trainable modules; runs any slice of its nodes."""

    def __init__(self, graph, plan: QuantPlan, make_weight, cfg):
        # ``cfg``: a ReconConfig (or QFT's config); only ``cfg.learn_act`` is read here
        sim = simulate(graph, plan)
        self.graph = sim.graph
        by_name = {lay.name: lay for lay in graph.layers}
        outputs = {n.name for n in next(n for n in sim.graph.nodes if n.op == "output").all_input_nodes}
        self.modules, self.kernels = {}, {}
        for node in sim.graph.nodes:
            if node.op != "call_module":
                continue
            mod = sim.get_submodule(node.target)
            learn = cfg.learn_act and node.name not in outputs        # logits keep their min/max range
            if node.target.startswith("q_"):
                lp = mod.lp
                layer = by_name[lp.name]
                if lp.kind in ("conv2d", "linear"):
                    w = None if lp.keep_float else make_weight(layer, lp)
                    mod = self.kernels[lp.name] = TrainKernel(layer, lp, plan.tensors, w, learn)
                else:
                    mod = TrainRequant(layer, lp, plan.tensors, learn)
            elif node.target.startswith("quantize_"):
                mod = ActQuant(plan.tensors[mod.t.name], None, learn)
            self.modules[node.name] = mod
        self.attrs = {n.name: _get_attr(sim, n.target) for n in sim.graph.nodes if n.op == "get_attr"}
        self.nodes = [n for n in sim.graph.nodes if n.op not in ("output",)]
        # The batch size as a value (a ViT's ``x.shape[0]``, sym_size): every block that uses it
        # runs it (find_blocks) and reads it off the model input, which every block sees.
        self.batch_sizes = {n.name for n in self.nodes if n.target == torch.ops.aten.sym_size.int
                            and len(n.args) > 1 and n.args[1] == 0}
        self.first_input = next(n.name for n in self.nodes if n.op == "placeholder")

    def set_mode(self, mode: str, drop_prob: float = 0.0) -> None:
        for m in self.modules.values():
            for sub in m.modules():
                if hasattr(sub, "mode"):
                    sub.mode = mode
                if isinstance(sub, ActQuant):
                    sub.drop_prob = drop_prob

    def run(self, nodes, env: dict) -> dict:
        """Run ``nodes`` (fx nodes in order) on ``env`` (name -> value); returns the new env."""
        env = dict(env)
        for node in nodes:
            if node.op == "placeholder" or node.name in env:
                continue
            if node.name in self.batch_sizes:
                env[node.name] = env[self.first_input].shape[0]
                continue
            args = fx.node.map_arg(node.args, lambda n: env[n.name])
            kwargs = fx.node.map_arg(node.kwargs, lambda n: env[n.name])
            if node.op == "get_attr":
                env[node.name] = self.attrs[node.name]
            elif node.op == "call_module":
                env[node.name] = self.modules[node.name](*args, **kwargs)
            elif node.op == "call_function":
                env[node.name] = node.target(*args, **kwargs)
            elif node.op == "call_method":
                env[node.name] = getattr(args[0], node.target)(*args[1:], **kwargs)
        return env


def _get_attr(mod, target):
    for part in target.split("."):
        mod = getattr(mod, part)
    return mod


@dataclass
class Block:
    nodes: list          # fx nodes run by this block
    inputs: list[str]    # values live before it (cached, batch first)
    outputs: list[str]   # values live after it
    produced: list[str]  # outputs computed inside the block: the reconstruction targets
    kernels: list[str]   # layer names of its conv/linear layers


def find_blocks(model: TrainModel, granularity: str = "block") -> list[Block]:
    """Cut the program into blocks (see the module docstring)."""
    nodes = model.nodes
    pos = {n.name: i for i, n in enumerate(nodes)}
    data = set()                                       # values that depend on the inputs (batched)
    for n in nodes:
        if n.op == "placeholder" or any(a.name in data for a in n.all_input_nodes):
            data.add(n.name)
    # Constants (a CLS token, a position embedding) and the batch size are not cached: every block
    # that reads one recomputes it (cheap), whichever block it first appears in.
    shared = [n for n in nodes if n.op != "placeholder" and (n.name not in data or n.name in model.batch_sizes)]
    data -= model.batch_sizes
    out_node = next(n for n in model.graph.nodes if n.op == "output")
    last_use = {}
    for n in list(nodes) + [out_node]:
        for a in n.all_input_nodes:
            last_use[a.name] = pos.get(n.name, len(nodes))
    live_after = []
    for i, n in enumerate(nodes):
        live_after.append([m.name for m in nodes[:i + 1] if m.name in data and last_use.get(m.name, -1) > i])
    kernel_pos = [i for i, n in enumerate(nodes) if isinstance(model.modules.get(n.name), TrainKernel)]
    if not kernel_pos:
        raise ValueError("no conv/linear layer to reconstruct")
    first = kernel_pos[0]
    fewest = min(len(live_after[i]) for i in range(first, len(nodes)))

    def ends_block(i):
        mod = model.modules.get(nodes[i].name)
        if granularity == "layer":
            return isinstance(mod, TrainKernel)
        if len(live_after[i]) != fewest or not all(_is_tensor(nodes[pos[v]]) for v in live_after[i]):
            return False
        if i == first or isinstance(mod, ActQuant):
            return True
        if isinstance(mod, TrainRequant):
            return mod.kind == "add"
        return isinstance(mod, TrainKernel) and mod.out.act == (-np.inf, np.inf)

    cuts = [i for i in range(first, len(nodes) - 1) if ends_block(i) and i >= first]
    cuts = [c for c in cuts if c != len(nodes) - 1] + [len(nodes) - 1]
    blocks, start = [], 0
    for c in cuts:
        seg = nodes[start:c + 1]
        kernels = [model.modules[n.name] for n in seg if isinstance(model.modules.get(n.name), TrainKernel)]
        if not kernels and c != len(nodes) - 1:
            continue                                   # nothing to learn: merged into the next block
        names = {n.name for n in seg}
        seg = [n for n in shared if n.name not in names] + seg
        inputs = live_after[start - 1] if start else []
        outputs = live_after[c] if c < len(nodes) - 1 else [a.name for a in out_node.all_input_nodes]
        blocks.append(Block(seg, inputs, outputs, [o for o in outputs if o in names],
                            [n.name for n in seg if isinstance(model.modules.get(n.name), TrainKernel)]))
        start = c + 1
    return blocks


def _is_tensor(node) -> bool:
    return isinstance(node.meta.get("val", torch.empty(0)), torch.Tensor) or node.op == "call_module"
