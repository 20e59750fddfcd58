"""QwT-v2 channel-wise affine compensation (CWAC), folded into the integer program at zero cost.

QwT-v2 (Tang, Fu, Yu, Wu, arXiv 2505.20932) replaces QwT's per-block linear side path with a
per-output-channel affine map applied to the quantized module's own output:

    y_c  ->  a_c * y_c + b_c,      (a_c, b_c) = argmin sum_n (yf[n,c] - a_c yq[n,c] - b_c)^2

with ``yq`` the quantized layer output and ``yf`` the FP32 layer output on the same input
(QwT's convention). The solver below is the closed form of that two-parameter least-squares
problem, computed from streaming per-channel sums, so fitting memory does not depend on the
number of calibration samples. Choices the paper's abstract does not fix (see
../shared/notes/seeds.md section 2, [INF]) and what we chose:

* Where it sits: after each conv/linear, on its requantized output *before* the fused activation
  clip (ReLU/ReLU6). There ``a_c y + b_c`` of ``y = s_acc (acc + bias)`` is exactly a new
  per-channel multiplier ``a_c M_c`` and a new int32 bias ``bias + b_c / (a_c s_acc)``, so the
  integer program keeps every op and parameter. After ReLU it would not fold (``b_c`` would need a
  per-channel zero point), and at a residual add's output it would not either (the add rescales
  with one per-tensor multiplier). ``layers="block"`` (only the convs feeding a residual add, the
  closest foldable point to QwT-v2's per-block placement) is measured against ``"all"`` in
  results/cwac.md.
* Sign: ``a_c`` must be positive (a negative gain would swap the fused clip's ends and the
  multiplier is unsigned); a channel whose fit gives ``a_c <= 0`` stays identity.
* Rows: ``rows="all"`` fits every position; ``rows="active"`` only positions where the FP or the
  quantized output lies inside the output clip range (elsewhere the clip makes both equal, so the
  error there cannot be reduced). Measured in results/cwac.md.
* Ridge towards identity: ``ridge=lam`` minimises ``MSE + lam * Var(yq) * (a - 1)^2``, i.e.
  ``a = (a_ols + lam) / (1 + lam)``, scale-free; ``b`` then matches the means.
* Fallback: after folding (integer multiplier, rounded bias, clip), a second streaming pass
  compares per channel the clipped output's MSE against the FP32 activation output with and
  without the compensation; channels where it does not go down stay identity.
* Sequential: layers are fitted in program order on the already compensated quantized stream.
  The stream is stepped (one forward pass over the fitting samples in all, see ``_Stepper``):
  EfficientNet-Lite0 fits in under a minute on 64 samples instead of over an hour. The fitting
  statistics stay 6 vectors per layer; the stepped stream holds the live activations of the
  fitting samples between layers (``stream="recompute"`` holds one batch, in O(layers^2) time).
* Solver: ``ols`` (the paper's least squares, default) or ``moments`` (match mean and standard
  deviation: no shrinkage of ``a`` when ``yq`` is noisy); compared in results/cwac.md.
* Target: ``"fp_stream"`` (the FP32 model's own activation at this layer, so the fit also
  absorbs the drift accumulated upstream) or ``"same_input"`` (QwT's convention: the FP32 layer
  applied to the quantized stream's input, which only corrects this layer's own error). Neither
  wins everywhere: on digits W2A4 top-1 agreement goes 0.626 (baseline) -> 0.607 (same_input) vs
  0.963 (fp_stream), on MiniLM W8A8 cosine goes 0.889 -> 0.892 (same_input) vs 0.831 (fp_stream).
  So the default ``"auto"`` fits both and keeps, of the two and of the uncompensated plan, the one
  whose model output has the best SQNR against FP32 on calibration samples held out from the fit
  (``select_samples``): the R^2 <= 0 safeguard of QwT, taken to the whole model. It costs a second
  fit and three forward passes over the held-out samples; results/cwac.md has both targets too.
  SQNR is what the per-layer fits minimise, and it can rise while the decisions get worse: on
  EfficientNet-Lite0 W4A4 the FP32-stream fit wins on SQNR yet lowers top-1 agreement (least
  squares shrinks noisy logits towards their means). ``select_by="task"`` ranks by the task's
  fidelity metric instead (top-1 agreement with FP32, or mean cosine for embeddings).
"""
from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass, replace

import numpy as np
import torch
import torch.fx as fx
import torch.nn.functional as F

from ..eval.metrics import sqnr_db
from ..eval.sets import batches, run_outputs, score, torch_runner
from ..quant.fixedpoint import quantize_multiplier
from ..quant.graph import LayerGraph
from ..quant.plan import LayerPlan, QuantPlan
from ..quant.simulate import QKernel, Requantize, simulate
from ..util import peak_rss_mb
from .rows import mask_input_index, token_rows

INT32 = (-(2 ** 31), 2 ** 31 - 1)
TASK_METRIC = {"classification": "top1_agreement", "embedding": "cosine_mean"}  # select_by="task"


@dataclass(frozen=True)
class CWACConfig:
    ridge: float = 0.0            # 0: plain least squares; larger pulls a_c towards 1
    rows: str = "all"             # all | active
    layers: str = "all"           # all | block (convs/linears that feed a residual add)
    target: str = "auto"          # auto | fp_stream | same_input (see the module docstring)
    select_samples: int = 64      # auto: calibration samples held out to choose the target
    select_by: str = "sqnr"       # auto: sqnr (model-output SQNR) | task (the task's fidelity metric, below)
    task: str | None = None       # classification | embedding (set from the model by tvmptq.api)
    samples: int = 256            # calibration samples streamed per pass
    batch_size: int = 32
    fallback: bool = True         # second pass: identity where the clipped MSE does not drop
    solver: str = "ols"           # ols | moments (see ChannelStats.solve)
    stream: str = "stepped"       # stepped (one forward) | recompute (one batch in memory); see _streams


class ChannelStats:
    """Per-channel sufficient statistics of (yq, yf): count, sums, sums of squares and products.

    Six float64 vectors of length C whatever the number of rows seen."""

    def __init__(self, channels: int):
        self.n, self.sx, self.sxx, self.sy, self.syy, self.sxy = np.zeros((6, channels))

    @property
    def nbytes(self) -> int:
        return sum(v.nbytes for v in (self.n, self.sx, self.sxx, self.sy, self.syy, self.sxy))

    def update(self, yq: torch.Tensor, yf: torch.Tensor, mask: torch.Tensor | None = None) -> None:
        """``yq``, ``yf``: (rows, C); ``mask``: (rows, C) bool, rows that count for each channel."""
        x, y = yq.double(), yf.double()
        w = torch.ones_like(x) if mask is None else mask.double()
        x, y = x * w, y * w
        for attr, v in (("n", w), ("sx", x), ("sxx", x * x), ("sy", y), ("syy", y * y), ("sxy", x * y)):
            setattr(self, attr, getattr(self, attr) + v.sum(0).numpy())

    def solve(self, ridge: float = 0.0, solver: str = "ols") -> tuple[np.ndarray, np.ndarray]:
        """Per-channel ``a, b``. ``ols``: minimise ``sum (yf - a yq - b)^2 + ridge * n Var(yq) (a-1)^2``.
        ``moments``: match mean and standard deviation, ``a = sd(yf) / sd(yq)`` (sign of the
        covariance; seeds.md 2.2's alternative): no shrinkage when yq is noisy, not MSE-optimal."""
        n = np.maximum(self.n, 1)
        mx, my = self.sx / n, self.sy / n
        var = self.sxx / n - mx * mx
        cov = self.sxy / n - mx * my
        ok = (self.n > 1) & (var > 1e-12 * np.maximum(self.sxx / n, 1e-30))
        if solver == "moments":
            slope = np.sign(cov) * np.sqrt(np.maximum(self.syy / n - my * my, 0) / np.where(ok, var, 1))
        else:
            slope = cov / np.where(ok, var, 1)
        a = np.where(ok, (slope + ridge) / (1 + ridge), 1.0)
        b = np.where(ok, my - a * mx, 0.0)
        return a, b

    def mse(self, a, b) -> np.ndarray:
        """Per-channel mean of ``(yf - a yq - b)^2`` over the rows seen, in closed form."""
        n = np.maximum(self.n, 1)
        return (self.syy - 2 * a * self.sxy - 2 * b * self.sy + a * a * self.sxx
                + 2 * a * b * self.sx + self.n * b * b) / n


class _Stepper(fx.Interpreter):
    """Runs a graph node by node across calls, keeping only live values between them.

    Sequential fitting needs every layer's input on the *compensated* stream; re-running the
    graph from the start for each layer costs O(layers^2) forwards (EfficientNet-Lite0 took over
    an hour). Stepping one interpreter per batch through the graph costs one forward in all: the
    module of the layer being fitted is replaced before its node runs, so later nodes see it."""

    def __init__(self, gm: fx.GraphModule, *inputs):
        super().__init__(gm, garbage_collect_values=True)
        self.env = {}
        self.args_iter = iter(self.graph.process_inputs(*inputs))
        self._nodes, self._next, self._ran = list(self.graph.nodes), 0, {}

    def advance(self, name: str, before: bool):
        """Run up to node ``name``: return its first argument without running it (``before``)
        or run it and return its value."""
        done = self._ran.get(name)
        if done is not None and not before:
            return self.env[done]                  # already run (pass 2 of the same layer)
        while self._next < len(self._nodes):
            node = self._nodes[self._next]
            if node.name == name and before:
                args, _ = self.fetch_args_kwargs_from_env(node)
                return args[0]
            value = self.env[node] = self.run_node(node)
            for dead in self.user_to_last_uses.get(node, []):
                del self.env[dead]
            self._next += 1
            self._ran[node.name] = node
            if node.name == name:
                return value
        raise RuntimeError(f"node {name!r} was not reached")


def _rows(t: torch.Tensor, kind: str) -> torch.Tensor:
    """(..., C) rows with the channel last: axis 1 for conv maps, the last axis for linear."""
    t = t.movedim(1, -1) if kind == "conv2d" else t
    return t.reshape(-1, t.shape[-1])


def _fp_output(layer, x: torch.Tensor) -> torch.Tensor:
    """FP32 pre-activation output of a conv/linear on input ``x`` (batch norm already folded)."""
    w = torch.as_tensor(layer.weight, dtype=torch.float32)
    b = None if layer.bias is None else torch.as_tensor(layer.bias, dtype=torch.float32)
    if layer.kind == "linear":
        return F.linear(x.float(), w, b)
    at = layer.attrs
    return F.conv2d(x.float(), w, b, at["stride"], at["padding"], at["dilation"], at["groups"])


def _requant_for(mod: QKernel, arrays: dict) -> Requantize:
    reach = _reach(mod)
    shape = (1, -1, 1, 1) if mod.lp.kind == "conv2d" else (-1,)
    return Requantize(arrays["multiplier"], arrays["shift"], reach, arrays["bias"], shape)


def _reach(mod: QKernel) -> float:
    t = mod.tin[0]
    return max(t.qmax - t.zero_point, t.zero_point - t.qmin) * mod.w_l1


def fold(lp: LayerPlan, out_scale: float, a: np.ndarray, b: np.ndarray, keep: np.ndarray) -> dict:
    """Arrays of ``lp`` with ``y -> a y + b`` folded in on the channels ``keep`` (others unchanged).

    ``y = s_y * (m / 2^k) * (acc + bias)``, so ``a y + b = s_y * (a m / 2^k) * (acc + bias + b /
    (a s_y m / 2^k))``: a new fixed-point multiplier from ``a m / 2^k`` and an int32 bias shift."""
    arr = lp.arrays
    m, k, bias = (np.asarray(arr[n], np.int64) for n in ("multiplier", "shift", "bias"))
    keep = keep & (a > 0) & (m > 0)
    real = m / np.ldexp(1.0, k)                                  # the current M_c (exact)
    a_safe = np.where(keep, a, 1.0)
    new_m, new_k = quantize_multiplier(real * a_safe)
    step = out_scale * real * a_safe                             # real value of one accumulator unit
    shift_b = np.where(keep, np.round(np.where(keep, b, 0.0) / np.where(step > 0, step, 1.0)), 0)
    new_bias = np.clip(bias + shift_b, *INT32)
    return {**arr, "multiplier": np.where(keep, new_m, m).astype(np.int64),
            "shift": np.where(keep, new_k, k).astype(np.int64),
            "bias": np.where(keep, new_bias, bias).astype(np.int32)}


def _block_layers(graph: LayerGraph) -> set[str]:
    """Conv/linear layers whose output feeds a residual add (QwT-v2's block outputs, foldable)."""
    adds = {lay.name: lay for lay in graph.layers if lay.kind == "add"}
    by_out = {lay.out_node.name: lay.name for lay in graph.layers}
    found = set()
    for add in adds.values():
        for inp in add.inputs:
            src = by_out.get(inp.name)
            if src is not None:
                found.add(src)
    return found


def _targets(graph: LayerGraph, plan: QuantPlan, cfg: CWACConfig) -> list:
    blocks = _block_layers(graph) if cfg.layers == "block" else None
    out = []
    for layer in graph.layers:
        lp = plan.layer(layer.name)
        if lp.keep_float or "weight" not in lp.arrays or lp.kind not in ("conv2d", "linear"):
            continue
        if blocks is not None and layer.name not in blocks:
            continue
        out.append((layer, lp))
    return out


def _activation_bounds(layer, t, lp) -> tuple[float, float]:
    """Real-valued output clip range (fused activation and grid) of the layer."""
    return t.scale * (lp.clip[0] - t.zero_point), t.scale * (lp.clip[1] - t.zero_point)


def _fit_layer(mod: QKernel, layer, lp: LayerPlan, plan: QuantPlan, stream, cfg: CWACConfig) -> dict:
    """Fit and fold one layer's ``a_c, b_c`` (updates ``lp.arrays``); returns its report row.
    ``stream()`` yields (layer input on the quantized stream, FP32 target rows, real-token rows or
    None) per batch; padded tokens do not count (see rows.py)."""
    t = plan.tensors[lp.output]
    lo, hi = _activation_bounds(layer, t, lp)
    stats = ChannelStats(lp.arrays["weight"].shape[0])
    for x, yf, real in stream():                                      # pass 1: sufficient statistics
        yq = _rows(mod.requant(mod.accumulate(x)), lp.kind) * t.scale
        mask = None if real is None else real[:, None].expand_as(yf)
        if cfg.rows == "active":
            active = ((yf > lo) & (yf < hi)) | ((yq > lo) & (yq < hi))
            mask = active if mask is None else mask & active
        stats.update(yq, yf, mask)
    a, b = stats.solve(cfg.ridge, cfg.solver)
    keep = np.isfinite(a) & np.isfinite(b) & (a > 0) & ~((a == 1) & (b == 0))
    trial = fold(lp, t.scale, a, b, keep)
    keep = keep & ((trial["multiplier"] != lp.arrays["multiplier"]) | (trial["shift"] != lp.arrays["shift"])
                   | (trial["bias"] != lp.arrays["bias"]))
    sse = None
    if cfg.fallback and keep.any():                                   # pass 2: identity where no gain
        r_id, r_new = mod.requant, _requant_for(mod, trial)
        sse = np.zeros((2, len(a)))
        for x, yf, real in stream():
            acc, target = mod.accumulate(x), yf.clamp(lo, hi)
            for j, req in enumerate((r_id, r_new)):
                y = _rows(req(acc).clamp(*mod.centered_clip), lp.kind) * t.scale
                err = (y - target) ** 2
                sse[j] += (err if real is None else err[real]).sum(0).numpy()
        keep = keep & (sse[1] < sse[0])
    final = fold(lp, t.scale, a, b, keep)
    lp.arrays.update({k: final[k] for k in ("multiplier", "shift", "bias")})
    lp.attrs["cwac_channels"] = int(keep.sum())
    channels = len(a)
    row = {"channels": channels, "non_identity": int(keep.sum()),
           "a_mean": float(a[keep].mean()) if keep.any() else 1.0, "state_bytes": stats.nbytes}
    if sse is not None:
        rows = max(stats.n.max(), 1)
        row["clipped_mse_before"] = float(sse[0].sum() / rows / channels)
        row["clipped_mse_after"] = float(np.where(keep, sse[1], sse[0]).sum() / rows / channels)
    return row


def _streams(sim, graph: LayerGraph, data, cfg: CWACConfig):
    """``for_layer(node, layer)`` -> a re-iterable stream of (x, yf rows) per batch.

    ``stepped``: one interpreter pair per batch, advanced layer by layer (one forward in all;
    keeps the live activations of all ``cfg.samples`` between layers). ``recompute``: each pass
    re-runs the graph from the inputs, batch by batch (memory of one batch; O(layers^2) time)."""
    inputs = [tuple(torch.as_tensor(np.asarray(b)) for b in batch) for batch in batches(data, cfg.batch_size)]
    mask_at = mask_input_index(graph.gm)
    fp_target = cfg.target == "fp_stream"
    pairs = [(_Stepper(sim, *x), _Stepper(graph.gm, *x) if fp_target else None) for x in inputs] \
        if cfg.stream == "stepped" else None

    def for_layer(node: str, layer):
        def stream():
            for k, x_in in enumerate(inputs):
                q_st, fp_st = pairs[k] if pairs else (_Stepper(sim, *x_in), _Stepper(graph.gm, *x_in) if fp_target else None)
                x = q_st.advance(node, before=True)
                yf = fp_st.advance(layer.node.name, before=False) if fp_target else _fp_output(layer, x)
                keep = token_rows(None if mask_at is None else x_in[mask_at], yf)
                yield x, _rows(yf.double(), layer.kind), keep
        return stream
    return for_layer


def fit_cwac(graph: LayerGraph, plan: QuantPlan, calibration, cfg: CWACConfig = CWACConfig(),
             progress: bool = False) -> tuple[QuantPlan, fx.GraphModule]:
    """A CWAC copy of ``plan`` and its simulation. ``calibration``: tuple of input arrays."""
    if cfg.rows not in ("all", "active") or cfg.layers not in ("all", "block") \
            or cfg.target not in ("auto", "same_input", "fp_stream") or cfg.stream not in ("stepped", "recompute") \
            or cfg.solver not in ("ols", "moments") or cfg.select_by not in ("sqnr", "task") \
            or (cfg.select_by == "task" and cfg.task not in TASK_METRIC):
        raise ValueError(f"bad CWAC config {cfg}")
    if cfg.target == "auto":
        return _fit_selected(graph, plan, calibration, cfg, progress)
    t0, rss0 = time.perf_counter(), peak_rss_mb()
    plan = copy.deepcopy(plan)
    data = tuple(a[:cfg.samples] for a in calibration)
    sim = simulate(graph, plan)
    q_node = {n.target: n.name for n in sim.graph.nodes if n.op == "call_module"}
    report, state_bytes = {}, 0
    targets = _targets(graph, plan, cfg)
    streams = _streams(sim, graph, data, cfg)
    with torch.no_grad():
        for i, (layer, lp) in enumerate(targets):
            target = f"q_{lp.name}"
            row = _fit_layer(sim.get_submodule(target), layer, lp, plan, streams(q_node[target], layer), cfg)
            state_bytes = max(state_bytes, row.pop("state_bytes"))
            report[lp.name] = row
            sim.add_submodule(target, QKernel(lp, plan.tensors))     # later layers see this
            if progress:
                print(f"cwac {i + 1}/{len(targets)} {lp.name}: {row['non_identity']}/{row['channels']} channels")
    plan.config["method"] = "cwac"
    plan.config["cwac"] = asdict(cfg)
    plan.stats["cwac"] = {"fit_seconds": time.perf_counter() - t0, "samples": len(data[0]),
                          "passes_per_layer": 2 if cfg.fallback else 1, "stream": cfg.stream, "state_bytes": int(state_bytes),
                          "peak_rss_mb": peak_rss_mb(), "peak_rss_growth_mb": peak_rss_mb() - rss0,
                          "layers": report,
                          "non_identity_channels": int(sum(r["non_identity"] for r in report.values())),
                          "channels": int(sum(r["channels"] for r in report.values()))}
    return plan, simulate(graph, plan)


def _fit_selected(graph: LayerGraph, plan: QuantPlan, calibration, cfg: CWACConfig, progress: bool):
    """``target="auto"``: fit with both targets on the first calibration samples, keep the best of
    them and of the uncompensated plan by model-output SQNR on the last ``select_samples`` (at
    most a quarter of the set, so that at least three quarters remain to fit on)."""
    t0, n = time.perf_counter(), len(calibration[0])
    hold = min(cfg.select_samples, n // 4)
    fit_data = tuple(a[:min(cfg.samples, n - hold)] for a in calibration)
    probe = tuple(a[n - hold:] for a in calibration) if hold else fit_data
    reference = run_outputs(torch_runner(graph.gm), probe, cfg.batch_size, progress=False)
    fits = {t: fit_cwac(graph, plan, fit_data, replace(cfg, target=t), progress) for t in ("fp_stream", "same_input")}
    identity = copy.deepcopy(plan)
    fits["identity"] = identity, simulate(graph, identity)
    outs = {t: run_outputs(torch_runner(sim), probe, cfg.batch_size, progress=False) for t, (_, sim) in fits.items()}
    sqnr = {t: sqnr_db(reference, o) for t, o in outs.items()}
    metric = {t: score(cfg.task, reference, o)[TASK_METRIC[cfg.task]] for t, o in outs.items()} if cfg.task else {}
    rank = (lambda t: (metric[t], sqnr[t])) if cfg.select_by == "task" else sqnr.get
    chosen = max(fits, key=rank)
    out, sim = fits[chosen]
    stats = fits["fp_stream"][0].stats["cwac"]
    if chosen == "identity":                      # the uncompensated plan, reported as CWAC's
        stats = {**stats, "non_identity_channels": 0, "layers": {
            k: {"channels": r["channels"], "non_identity": 0} for k, r in stats["layers"].items()}}
    else:
        stats = out.stats["cwac"]
    out.config["method"] = "cwac"
    out.config["cwac"] = {**asdict(cfg), "target_chosen": chosen}
    out.stats["cwac"] = {**stats, "fit_seconds": time.perf_counter() - t0, "peak_rss_mb": peak_rss_mb(),
                         "selection": {"chosen": chosen, "by": cfg.select_by, "probe_sqnr_db": sqnr,
                                       "probe_metric": metric, "probe_samples": len(probe[0]),
                                       "probe_held_out": bool(hold), "fit_samples": len(fit_data[0])}}
    return out, sim
