"""QwT v1 ("Quantization without Tears", Fu et al., CVPR 2025): per-block linear compensation.

For each residual block ``out = Block^Q(x) + W x + b``, with ``W, b`` fitted in closed form by
least squares on calibration features, block by block on the compensated quantized stream, and
disabled where the fit's R^2 on calibration data is <= 0 (QwT's safeguard). ``W`` is a full
C_out x C_in matrix: a 1x1 convolution (stride = the block's downsampling) on conv maps, a linear
on token features. It stays in float, as in QwT (FP16 there): the plan declares it as a float
branch on the residual add that ends the block (``attrs["float_branch"]``, arrays
``branch_weight``/``branch_bias``); the PyTorch simulation and the NumPy reference run it, and
the Relax lowering emits it as a declared float64 island after the add's integer output
(relay_passes.quantize_layers, ops listed in relay_passes.islands.FLOAT_BRANCH_OPS).

Choices (seeds.md section 1, [INF] where not from QwT's code):
* Block = residual add. Its input ``x`` is the add's older operand (the skip), followed back
  through a projection shortcut (a conv/linear whose only user is the add) to that layer's input.
* Branch output: ``q = clip(round_half_even((y + W x + b) / s) + z)`` on the add's output grid
  and clip, in float64, with ``y`` the add's dequantized output (after its fused ReLU, where QwT
  adds its compensation: the block output).
* Target: the FP32 model's block output on the FP32 stream (CWAC's ``fp_stream`` target, so the
  two methods are compared on equal terms; QwT's code uses the FP block on the quantized
  input, which needs the FP sub-graph re-run from a quantized tensor).
* Solver: ``[W b] = (X~'X~ + ridge * mean(diag) * I)^-1 X~'Y`` from streaming Gram matrices
  (memory (C_in+1)^2 + (C_in+1) C_out, independent of the number of samples).
"""
from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.fx as fx
from torch import nn

from ..eval.sets import batches
from ..quant.graph import LayerGraph
from ..quant.plan import QuantPlan
from ..quant.simulate import simulate
from ..util import peak_rss_mb
from .rows import mask_input_index, token_rows


@dataclass(frozen=True)
class QwTConfig:
    ridge: float = 1e-3       # relative to the mean diagonal of the Gram matrix
    samples: int = 256
    batch_size: int = 32
    max_rows: int = 4096      # rows (pixels/tokens) per batch used in the Gram sums (subsampled)


def branches(plan: QuantPlan) -> list[str]:
    return [lp.name for lp in plan.layers if lp.attrs.get("float_branch")]


def _features(x: np.ndarray | torch.Tensor, stride: int, conv: bool):
    """(rows, C) features of the block input, subsampled like a 1x1 conv with ``stride``."""
    if conv:
        x = x[:, :, ::stride, ::stride]
        x = x.transpose(0, 2, 3, 1) if isinstance(x, np.ndarray) else x.permute(0, 2, 3, 1)
    return x.reshape(-1, x.shape[-1])


def branch_output(y, x, weight, bias, stride: int, scale: float, zero_point: int, clip) -> np.ndarray:
    """The branch's grid values q (float64) for block output ``y`` and block input ``x`` (NumPy,
    float64): the definition the simulation and the NumPy reference both follow."""
    conv = y.ndim == 4
    comp = _features(np.asarray(x, np.float64), stride, conv) @ weight.astype(np.float64).T + bias
    comp = comp.reshape(y.shape[0], *y.shape[2:], y.shape[1]).transpose(0, 3, 1, 2) if conv else comp.reshape(y.shape)
    q = np.round((np.asarray(y, np.float64) + comp) / scale) + zero_point
    return np.clip(q, *clip)


class QwTBranch(nn.Module):
    def __init__(self, lp, tensors):
        super().__init__()
        self.lp, self.t = lp, tensors[lp.output]
        self.stride = lp.attrs["float_branch"]["stride"]

    def forward(self, x, y):
        a, t = self.lp.arrays, self.t
        q = branch_output(y.double().numpy(), x.double().numpy(), a["branch_weight"], a["branch_bias"],
                          self.stride, t.scale, t.zero_point, self.lp.clip)
        return torch.from_numpy(((q - t.zero_point) * t.scale).astype(np.float32))


def _tensor_nodes(sim: fx.GraphModule, plan: QuantPlan) -> dict[str, str]:
    """Quantized tensor name -> node of the simulation that produces its value."""
    by_target = {n.target: n.name for n in sim.graph.nodes if n.op == "call_module"}
    out = {name: by_target.get(f"quantize_{name}") for name in plan.tensors}
    out.update({lp.output: by_target.get(f"qwt_{lp.name}", by_target[f"q_{lp.name}"]) for lp in plan.layers})
    return out  # a layer with a float branch: the branch's output is the tensor's value


def _attach(sim: fx.GraphModule, plan: QuantPlan, lp) -> None:
    nodes = {n.name: n for n in sim.graph.nodes}
    where = _tensor_nodes(sim, plan)
    y = nodes[where[lp.output]]
    assert sim.get_submodule(y.target).__class__.__name__ != "QwTBranch", lp.name
    x = nodes[where[lp.attrs["float_branch"]["input"]]]
    name = f"qwt_{lp.name}"
    sim.add_submodule(name, QwTBranch(lp, plan.tensors))
    with sim.graph.inserting_after(y):
        b = sim.graph.call_module(name, (x, y))
    y.replace_all_uses_with(b, delete_user_cb=lambda u: u is not b)
    sim.recompile()


def attach_branches(graph: LayerGraph, plan: QuantPlan, sim: fx.GraphModule) -> fx.GraphModule:
    for name in branches(plan):
        _attach(sim, plan, plan.layer(name))
    return sim


def _blocks(graph: LayerGraph, plan: QuantPlan) -> list[tuple]:
    """(add layer, block input tensor, stride) for every residual add of two activations."""
    order = {n.name: i for i, n in enumerate(graph.gm.graph.nodes)}
    by_out = {lay.out_node.name: lay for lay in graph.layers}
    found = []
    for layer in graph.layers:
        if layer.kind != "add" or len(layer.inputs) != 2:
            continue
        skip = min(layer.inputs, key=lambda n: order[graph.quant_points[graph.tensor_of(n)].name])
        prod = by_out.get(skip.name)
        while prod is not None and prod.weight is not None and len(skip.users) == 1:
            skip = prod.inputs[0]
            prod = by_out.get(skip.name)
        x_shape, y_shape = skip.meta["val"].shape, layer.out_node.meta["val"].shape
        if len(x_shape) != len(y_shape):
            continue
        stride = int(x_shape[2]) // int(y_shape[2]) if len(y_shape) == 4 else 1
        found.append((layer, graph.tensor_of(skip), max(stride, 1)))
    return found


class _Capture(fx.Interpreter):
    def __init__(self, gm, keep: set[str], stop: str):
        super().__init__(gm)
        self.keep, self.stop, self.seen = keep, stop, {}

    def run_node(self, n):
        out = super().run_node(n)
        if n.name in self.keep:
            self.seen[n.name] = out
        if n.name == self.stop:
            raise StopIteration
        return out

    def values(self, *inputs):
        self.seen = {}
        try:
            self.run(*inputs)
        except StopIteration:
            pass
        return self.seen


def fit_qwt(graph: LayerGraph, plan: QuantPlan, calibration, cfg: QwTConfig = QwTConfig(),
            progress: bool = False) -> tuple[QuantPlan, fx.GraphModule]:
    t0, rss0 = time.perf_counter(), peak_rss_mb()
    plan = copy.deepcopy(plan)
    data = tuple(a[:cfg.samples] for a in calibration)
    sim = simulate(graph, plan)
    report, extra, state = {}, 0, 0
    mask_at = mask_input_index(graph.gm)
    for layer, x_name, stride in _blocks(graph, plan):
        lp = plan.layer(layer.name)
        where = _tensor_nodes(sim, plan)
        y_node, x_node = where[lp.output], where[x_name]
        cap = _Capture(sim, {y_node, x_node}, y_node)
        fp = _Capture(graph.gm, {layer.out_node.name}, layer.out_node.name)
        conv = len(layer.out_node.meta["val"].shape) == 4
        xtx = xty = None
        yy = ysum = None
        n = 0
        rng = np.random.default_rng(0)
        with torch.no_grad():
            for batch in batches(data, cfg.batch_size):
                inputs = tuple(torch.as_tensor(np.asarray(b)) for b in batch)
                got = cap.values(*inputs)
                target = fp.values(*inputs)[layer.out_node.name]
                yq, x = got[y_node].double(), got[x_node].double()
                rows_y = _features(yq, 1, conv)
                rows_t = _features(target.double(), 1, conv)
                rows_x = _features(x, stride, conv)
                real = token_rows(None if mask_at is None else inputs[mask_at], target)
                if real is not None:                                     # padded tokens do not count
                    rows_x, rows_y, rows_t = rows_x[real], rows_y[real], rows_t[real]
                if len(rows_x) > cfg.max_rows:
                    pick = torch.from_numpy(np.sort(rng.choice(len(rows_x), cfg.max_rows, replace=False)))
                    rows_x, rows_y, rows_t = rows_x[pick], rows_y[pick], rows_t[pick]
                xa = torch.cat([rows_x, torch.ones(len(rows_x), 1, dtype=torch.float64)], 1)
                r = rows_t - rows_y
                xtx = (xa.T @ xa).numpy() + (0 if xtx is None else xtx)
                xty = (xa.T @ r).numpy() + (0 if xty is None else xty)
                yy = (r * r).sum(0).numpy() + (0 if yy is None else yy)
                ysum = r.sum(0).numpy() + (0 if ysum is None else ysum)
                n += len(r)
        state = max(state, xtx.nbytes + xty.nbytes + yy.nbytes + ysum.nbytes)
        reg = cfg.ridge * float(np.mean(np.diag(xtx))) * np.eye(len(xtx))
        wb = np.linalg.solve(xtx + reg, xty)                             # (C_in + 1, C_out)
        sse = yy - 2 * np.einsum("ic,ic->c", wb, xty) + np.einsum("ic,ij,jc->c", wb, xtx, wb)
        sst = yy - ysum ** 2 / n
        r2 = float(np.mean(1 - sse / np.maximum(sst, 1e-30)))
        row = {"input": x_name, "stride": stride, "r2": r2, "enabled": bool(r2 > 0),
               "params": int(wb.size)}
        if r2 > 0:
            lp.arrays["branch_weight"] = wb[:-1].T.astype(np.float32).copy()
            lp.arrays["branch_bias"] = wb[-1].astype(np.float64).copy()
            lp.attrs["float_branch"] = {"kind": "qwt_v1", "input": x_name, "stride": stride,
                                        "features": "conv1x1" if conv else "linear", "params": int(wb.size)}
            extra += int(wb.size)
            _attach(sim, plan, lp)
        report[lp.name] = row
        if progress:
            print(f"qwt {lp.name}: R^2 {r2:.3f} {'on' if r2 > 0 else 'off'}")
    plan.config["method"] = "qwt"
    plan.config["qwt"] = asdict(cfg)
    plan.stats["qwt"] = {"fit_seconds": time.perf_counter() - t0, "samples": len(data[0]),
                         "extra_params": extra, "state_bytes": int(state), "blocks": report,
                         "peak_rss_mb": peak_rss_mb(), "peak_rss_growth_mb": peak_rss_mb() - rss0}
    return plan, attach_branches(graph, plan, simulate(graph, plan))
