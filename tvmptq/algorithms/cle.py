"""Cross-layer equalization (Nagel, van Baalen, Blankevoort, Welling, "Data-Free Quantization
Through Weight Equalization and Bias Correction", ICCV 2019), closed form.

For two consecutive layers ``y = W2 f(W1 x + b1) + b2`` and a positive per-channel factor
``s_c``, ``f(x / s) = f(x) / s`` holds for a positively homogeneous ``f`` (identity, ReLU,
LeakyReLU), so

    W1 <- diag(1/s) W1,   b1 <- b1 / s,   W2 <- W2 diag(s)

leaves the FP32 function unchanged. Nagel's choice ``s_c = sqrt(r1_c / r2_c)`` (``r1_c`` the
range of output channel c of W1, ``r2_c`` the range of input channel c of W2) equalizes both
ranges to ``sqrt(r1_c r2_c)``, so per-tensor and per-channel grids lose less to channels of
very different size. Chains (conv -> depthwise -> conv) are equalized by sweeping all pairs
until the factors stop changing.

Which pairs are equalized (``find_pairs``), and why the others are not:

* W1 is a conv2d (groups 1 or depthwise) or linear layer whose output node has exactly one
  user, the next conv2d (groups 1 or depthwise) or linear layer W2, both integer layers of the
  plan. A tensor with a second user (a residual add, a concat) would change for that user too.
* The activation fused into W1 is identity or ReLU. ReLU6 (``clamp(0, 6)``) is NOT positively
  homogeneous: ``min(x / s, 6) != min(x, 6) / s``. Keeping the function would need a
  per-channel clip bound ``6 / s_c``, and the plan's clip is one integer pair per tensor
  (``LayerPlan.clip``), so such pairs are skipped and listed in ``plan.stats["cle"]``.
  LeakyReLU is homogeneous but tvmptq runs it as an integer lookup table, a layer of its own,
  so W1 -> LeakyReLU -> W2 is not a direct pair either (also listed).
* EfficientNet-Lite0 is ReLU6 after every expand and depthwise conv, and most projections'
  outputs feed a residual add: of its 18 kernel -> kernel edges, 16 are ReLU6 (skipped) and 2
  pass through identity (block 1's projection -> block 2's expand, the last projection -> the
  head conv) and are equalized (results/qft.md: top-1 agreement 48.0 -> 45.9 % at W4A8, so CLE
  does next to nothing there, and what it does on two identity pairs is not a gain).

Folding: the equalized float weights are calibrated again exactly as the baseline was (same
config, observers and bias correction), so the per-tensor activation grid of the intermediate
tensor sees the new channel ranges. The plan stays the baseline's program: only integer
weights, per-channel weight scales, int32 biases, multipliers/shifts and activation scales
change. The factors are recorded per layer in ``plan.stats["cle"]["factors"]`` (``out``: W1's
rows divided, ``in``: W2's columns multiplied) so that later stages (QFT) can reproduce the
equalized float weights; the captured graph keeps the original weights.
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass

import numpy as np
import torch

from ..quant.plan import QuantPlan

HOMOGENEOUS = {"none", "relu"}


@dataclass(frozen=True)
class Pair:
    first: str          # layer whose output channels are divided by s
    second: str         # layer whose input channels are multiplied by s
    depthwise: bool     # the second layer is depthwise (its input channel c is its output channel c)


def _is_depthwise(layer) -> bool:
    return layer.kind == "conv2d" and layer.attrs.get("groups", 1) == layer.weight.shape[0] > 1 \
        and layer.weight.shape[1] == 1


def _kernel_ok(layer, lp) -> bool:
    if layer.weight is None or lp is None or lp.keep_float or layer.kind not in ("conv2d", "linear"):
        return False
    consts = [a for a in layer.node.args[1:3] if a is not None]
    if layer.node.target not in (torch.ops.aten.conv2d.default, torch.ops.aten.linear.default) or \
            not all(getattr(a, "op", None) == "get_attr" for a in consts):
        return False                # a weight computed from constants (mm with B^T): not rewritten
    return layer.kind == "linear" or layer.attrs.get("groups", 1) == 1 or _is_depthwise(layer)


def _activation(layer) -> str:
    if layer.act_range is None:
        return "none"
    lo, hi = layer.act_range
    if lo == 0 and not np.isfinite(hi):
        return "relu"
    if not np.isfinite(lo) and not np.isfinite(hi):
        return "none"
    return f"clamp({lo:g}, {hi:g})"


def find_pairs(graph, plan: QuantPlan) -> tuple[list[Pair], list[dict]]:
    """The equalizable consecutive layer pairs and, for every other kernel -> kernel edge met,
    why it was skipped."""
    plans = {lp.name: lp for lp in plan.layers}
    by_node = {lay.node.name: lay for lay in graph.layers}
    pairs, skipped = [], []
    for l1 in graph.layers:
        if not _kernel_ok(l1, plans.get(l1.name)):
            continue
        users = list(l1.out_node.users)
        nxt = [by_node.get(u.name) for u in users]
        if len(users) == 1 and nxt[0] is not None and nxt[0].kind == "lut":
            skipped.append({"first": l1.name, "second": nxt[0].name,
                            "reason": f"a lookup-table activation ({nxt[0].attrs.get('function')}) between them"})
            continue
        if len(users) != 1 or nxt[0] is None or nxt[0].kind not in ("conv2d", "linear"):
            continue
        l2 = nxt[0]
        if l2.inputs[0] is not l1.out_node:
            continue
        why = None
        if not _kernel_ok(l2, plans.get(l2.name)):
            why = "second layer is grouped, kept in float or not a conv/linear with constant weights"
        elif _activation(l1) not in HOMOGENEOUS:
            why = (f"activation {_activation(l1)} is not positively homogeneous and the plan's clip is per "
                   "tensor (a per-channel bound would be needed)")
        elif l1.kind != l2.kind:
            why = "conv -> linear (the channel layout changes between them)"
        if why:
            skipped.append({"first": l1.name, "second": l2.name, "reason": why})
        else:
            pairs.append(Pair(l1.name, l2.name, _is_depthwise(l2)))
    return pairs, skipped


def _ranges_out(w: np.ndarray) -> np.ndarray:
    return np.abs(w).reshape(w.shape[0], -1).max(1)


def _ranges_in(w: np.ndarray, depthwise: bool) -> np.ndarray:
    if depthwise:
        return _ranges_out(w)
    return np.abs(np.moveaxis(w, 1, 0)).reshape(w.shape[1], -1).max(1)


def equalize(weights: dict, pairs: list[Pair], sweeps: int = 20, tol: float = 1e-6):
    """Nagel's closed form over ``pairs``, swept until no factor moves more than ``tol``.
    ``weights``: layer -> (W, b or None), float64 copies. Returns (equalized weights, factors
    layer -> {"out": divisor of its output channels, "in": multiplier of its input channels})."""
    w = {k: (v[0].astype(np.float64).copy(), None if v[1] is None else v[1].astype(np.float64).copy())
         for k, v in weights.items()}
    factors = {}
    for _ in range(sweeps):
        moved = 0.0
        for p in pairs:
            (w1, b1), (w2, _) = w[p.first], w[p.second]
            r1, r2 = _ranges_out(w1), _ranges_in(w2, p.depthwise)
            s = np.where((r1 > 0) & (r2 > 0), np.sqrt(r1 / np.where(r2 > 0, r2, 1.0)), 1.0)
            shape1 = (-1,) + (1,) * (w1.ndim - 1)
            w1 /= s.reshape(shape1)
            if b1 is not None:
                b1 /= s
            if p.depthwise:
                w2 *= s.reshape((-1,) + (1,) * (w2.ndim - 1))
            else:
                w2 *= s.reshape((1, -1) + (1,) * (w2.ndim - 2))
            f1 = factors.setdefault(p.first, {})
            f2 = factors.setdefault(p.second, {})
            f1["out"] = f1.get("out", np.ones_like(s)) * s
            f2["in"] = f2.get("in", np.ones_like(s)) * s
            moved = max(moved, float(np.abs(np.log(s)).max()))
        if moved < tol:
            break
    return w, factors


def equalized_weight(layer, factors: dict) -> tuple[np.ndarray, np.ndarray | None]:
    """``layer``'s float weight and bias with its recorded CLE factors applied (float64)."""
    w = layer.weight.astype(np.float64)
    b = None if layer.bias is None else layer.bias.astype(np.float64)
    f = factors.get(layer.name, {})
    if "in" in f:
        s = np.asarray(f["in"], np.float64)
        w = w * (s.reshape((-1,) + (1,) * (w.ndim - 1)) if _is_depthwise(layer)
                 else s.reshape((1, -1) + (1,) * (w.ndim - 2)))
    if "out" in f:
        s = np.asarray(f["out"], np.float64)
        w = w / s.reshape((-1,) + (1,) * (w.ndim - 1))
        b = None if b is None else b / s
    return w, b


@contextlib.contextmanager
def equalized_graph(graph, factors: dict):
    """``graph`` with the equalized weights in its layers and its float module, restored after."""
    saved = []
    try:
        for layer in graph.layers:
            if layer.name not in factors:
                continue
            w, b = equalized_weight(layer, factors)
            nodes = layer.node.args[1:3]
            vals = [w, b]
            for node, val in zip(nodes, vals):
                if val is None or node is None:
                    continue
                if node.op != "get_attr":
                    raise ValueError(f"CLE cannot rewrite the weight of {layer.name}: not a constant attribute")
                owner, attr = _owner(graph.gm, node.target)
                old = getattr(owner, attr)
                saved.append((owner, attr, old))
                new = torch.as_tensor(val, dtype=old.dtype)
                setattr(owner, attr, torch.nn.Parameter(new, requires_grad=False)
                        if isinstance(old, torch.nn.Parameter) else new)
            saved.append((layer, "weight", layer.weight))
            saved.append((layer, "bias", layer.bias))
            layer.weight = w.astype(layer.weight.dtype)
            layer.bias = None if b is None else b.astype(layer.bias.dtype)
        yield graph
    finally:
        for owner, attr, old in reversed(saved):
            setattr(owner, attr, old)


def _owner(mod, target: str):
    *path, attr = target.split(".")
    for p in path:
        mod = getattr(mod, p)
    return mod, attr


def config_of(plan: QuantPlan):
    """The QuantConfig a plan was calibrated with (its recorded config)."""
    from ..quant.spec import make_config
    c = plan.config
    return make_config(c["weight_bits"], c["activation_bits"], c["observer"], c["weight_rule"], c["symmetric"],
                       c["percentile"], c["first_last_8bit"], c.get("overrides") or {}, c.get("bias_correction", True),
                       c.get("lookup_tables", True))


def fit_cle(graph, plan: QuantPlan, calibration, batch_size: int = 32, progress: bool = True):
    """The plan of the equalized model, calibrated as ``plan`` was, and its simulation."""
    from ..eval.sets import batch_size_for, batches
    from ..quant.calibrate import build_plan, collect_statistics
    from ..quant.simulate import simulate
    t0 = time.perf_counter()
    pairs, skipped = find_pairs(graph, plan)
    by_name = {lay.name: lay for lay in graph.layers}
    names = {p.first for p in pairs} | {p.second for p in pairs}
    _, factors = equalize({n: (by_name[n].weight, by_name[n].bias) for n in names}, pairs)
    batch_size = batch_size_for(graph, batch_size)
    if pairs:
        with equalized_graph(graph, factors):
            observers, samples = collect_statistics(graph, batches(calibration, batch_size), progress)
            new = build_plan(graph, observers, config_of(plan), plan.model, calibration, batch_size)
        new.config = {**plan.config, **new.config}
        new.stats = dict(plan.stats)
    else:
        import copy
        new = copy.deepcopy(plan)
    new.config["method"] = "cle"
    new.stats["cle"] = {
        "pairs": [[p.first, p.second] for p in pairs], "skipped": skipped,
        "factors": {k: {d: [float(x) for x in v] for d, v in f.items()} for k, f in factors.items()},
        "max_factor": float(max((np.abs(np.log(v)).max() for f in factors.values() for v in f.values()),
                                default=0.0)),
    }
    new.run_info = {"cle": {"fit_seconds": time.perf_counter() - t0}}
    return new, simulate(graph, new)
