"""The block-reconstruction engine shared by AdaRound, BRECQ and WAPS-Quant.

BRECQ (Li et al., ICLR 2021) reconstructs a quantized network block by block: each block's
learnable quantization parameters are trained so that its output on the *quantized* stream
matches the FP32 block output on the FP32 stream, on calibration data only. This file holds what
the three methods share, and nothing method-specific:

* A trainable copy of the plan's simulation (``TrainModel``) cut into blocks (``find_blocks``),
  both in ``train_model.py``.
* Cached block inputs/outputs (``Cache``): only the values live at the current block's two ends,
  for both streams, are held; past ``memory_budget_mb`` they are spilled to ``np.memmap`` files
  in a temporary folder. Memory is one block's tensors, not the network's.
* Folding (``refold``): learned step sizes and integer weights become the plan's integer weights,
  int32 biases, fixed-point multipliers/shifts and clip bounds, recomputed with the same formulas
  as ``quant/calibrate.py`` (with nothing learned it reproduces the baseline plan exactly).

Determinism: the sample order comes from ``np.random.default_rng(seed)``, torch is seeded and run
with deterministic algorithms and a fixed thread count, so the same seed and data give the same
plan (``QuantPlan.save`` writes fixed zip timestamps; timings go to ``plan.run_info``).
"""
from __future__ import annotations

import copy
import tempfile
import time
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.fx as fx
from tqdm.auto import tqdm

from ..quant.calibrate import _clip
from ..quant.lut import build_table
from ..quant.fixedpoint import quantize_multiplier, shared_shift_multipliers
from ..quant.plan import QuantPlan
from ..quant.simulate import simulate
from ..util import peak_rss_mb
from .train_model import ActQuant, Block, TrainModel, find_blocks

INT32 = (-(2 ** 31), 2 ** 31 - 1)


@dataclass(frozen=True)
class ReconConfig:
    """Defaults: BRECQ's (yhhhli/BRECQ main_imagenet.py) scaled for 2 CPU cores: 20,000
    iterations per block -> ``iters`` (2,000; chosen on held-out calibration data, digits W2A4
    BRECQ: 100 -> 92.2 %, 500 -> 95.3 %, 2,000 -> 98.4 % top-1 agreement; no method's held-out score
    drops from 500 to 2,000, results/reconstruction.md; the eval split chose nothing) and at most
    ``work`` per block (EfficientNet-Lite0: 6-277, so its plans are the same at 500 or 2,000),
    1,024 calibration images -> ``samples`` (256); batch 32, Adam, rounding lr 1e-3, regulariser
    0.01 with beta annealed 20 -> 2 after a 20 % warm-up, rectified sigmoid zeta 1.1 / gamma -0.1, Lp loss p = 2.4, first/last layer left as
    the plan has them (``--first-last-8bit``). Activation step sizes are learned jointly with the
    rounding (QDrop's schedule, lr 4e-5) rather than in BRECQ's separate 5,000-iteration stage."""
    iters: int = 2000               # per block, at most: see ``work``
    # Per-block compute cap, in activation elements processed (batch x elements a sample
    # produces inside the block): a block runs min(iters, work / (batch * its elements))
    # iterations. Digits' blocks are small and run all ``iters``; EfficientNet-Lite0's 224x224
    # blocks would take ~18 s per sweep of all blocks at batch 32 on this machine, so its early
    # blocks run fewer (results/reconstruction.md: the measured times and the accuracy cost).
    # Depends on shapes only, so the plan stays deterministic. None: no cap.
    work: float | None = 6e8
    samples: int = 256
    batch_size: int = 32
    seed: int = 0
    granularity: str = "block"      # block (BRECQ) | layer (AdaRound)
    weight_lr: float = 1e-3
    act_lr: float = 4e-5
    learn_act: bool = True          # LSQ step sizes of the activations produced in the block
    reg_weight: float = 0.01
    beta: tuple = (20.0, 2.0)
    warmup: float = 0.2
    p: float = 2.4
    loss: str = "mse"               # mse only; BRECQ's Fisher weighting is not implemented (refused)
    drop_prob: float = 0.0          # QDrop: each activation element keeps its FP value with this probability
    memory_budget_mb: float = 512.0
    threads: int = 1                # 2 threads ran 17x slower on this shared 2-core machine (spin-waits)


class Cache:
    """Per-sample values of one cut, in memory or, past the budget, in memmaps on disk."""

    def __init__(self, budget_bytes: float, folder: str):
        self.values, self.budget, self.folder, self.spilled = {}, budget_bytes, folder, False

    def append(self, name: str, batch: torch.Tensor, start: int, total: int) -> None:
        arr = self.values.get(name)
        if arr is None:
            shape, dtype = (total,) + tuple(batch.shape[1:]), torch.empty(0, dtype=batch.dtype).numpy().dtype
            nbytes = int(np.prod(shape)) * dtype.itemsize
            if nbytes + self.nbytes > self.budget:
                self.spilled = True
                arr = np.lib.format.open_memmap(f"{self.folder}/{len(self.values)}_{id(self)}.npy", "w+", dtype, shape)
            else:
                arr = np.empty(shape, dtype)
            self.values[name] = arr
        arr[start:start + len(batch)] = batch.detach().numpy()

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.values.values())

    @property
    def resident_bytes(self) -> int:
        """Bytes held in memory (memmapped values live on disk)."""
        return sum(a.nbytes for a in self.values.values() if not isinstance(a, np.memmap))

    def take(self, idx) -> dict:
        return {k: torch.from_numpy(np.ascontiguousarray(v[idx])) for k, v in self.values.items()}


def _chunks(n: int, size: int):
    return [np.arange(i, min(i + size, n)) for i in range(0, n, size)]


def lp_loss(pred, target, p: float, weight=None) -> torch.Tensor:
    """BRECQ's ``lp_loss``: ``|pred - target|^p`` summed over channels, averaged over the rest;
    with ``weight`` (Fisher): ``(pred - target)^2 * weight`` instead."""
    err = (pred - target).abs().pow(p) if weight is None else (pred - target) ** 2 * weight
    return err.sum(1).mean() if err.ndim > 1 else err.mean()


def reconstruct(graph, plan: QuantPlan, calibration, cfg: ReconConfig, make_weight, method: str,
                progress: bool = True) -> tuple[QuantPlan, fx.GraphModule]:
    """Block-wise reconstruction of ``plan`` on ``calibration`` (tuple of input arrays).

    ``make_weight(layer, lp)`` gives each conv/linear its learnable weight module, which has
    ``forward(soft) -> real weights``, ``regulariser(beta)`` and ``fold() -> (stored int8
    weights, per-channel weight scale, attrs)``."""
    if (cfg.loss != "mse" or cfg.iters < 1 or cfg.granularity not in ("block", "layer")
            or (cfg.work is not None and cfg.work <= 0)):
        raise ValueError(f"bad reconstruction config (loss must be 'mse': Fisher weighting is not "
                         f"implemented; iters >= 1; work > 0 or None; granularity block|layer): {cfg}")
    t0, rss0 = time.perf_counter(), peak_rss_mb()
    torch.manual_seed(cfg.seed)
    threads, det = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(cfg.threads)
    torch.use_deterministic_algorithms(True)
    try:
        model = TrainModel(graph, plan, make_weight, cfg)
        blocks = find_blocks(model, cfg.granularity)
        data = tuple(np.asarray(a[:cfg.samples]) for a in calibration)
        n = len(data[0])
        placeholders = [nd.name for nd in model.nodes if nd.op == "placeholder"]
        report = _run_blocks(model, blocks, data, placeholders, n, cfg, method, progress)
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(det)
    weights = {name: k.weight.fold() for name, k in model.kernels.items() if k.weight is not None}
    scales = {}
    for m in model.modules.values():
        q = m if isinstance(m, ActQuant) else getattr(m, "out", None)
        if isinstance(q, ActQuant) and q.scale.requires_grad:
            scales[q.name] = float(q.scale.detach().abs())
    new = refold(graph, plan, scales, weights)
    new.config["method"] = method
    new.config[method] = {k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.__dict__.items()}
    new.stats[method] = {"samples": n, "blocks": [r["layers"] for r in report]}
    new.run_info[method] = {"fit_seconds": time.perf_counter() - t0, "peak_rss_mb": peak_rss_mb(),
                            "peak_rss_growth_mb": peak_rss_mb() - rss0, "blocks": report}
    return new, simulate(graph, new)


def _run_blocks(model, blocks, data, placeholders, n, cfg, method, progress):
    report = []
    with tempfile.TemporaryDirectory(prefix="tvmptq_recon_") as folder:
        budget = cfg.memory_budget_mb * 2 ** 20 / 4     # four caches: q/fp x in/out
        q_in = fp_in = None
        for bi, block in enumerate(blocks):
            q_out, fp_out = Cache(budget, folder), Cache(budget, folder)
            model.set_mode("fp")                        # FP32 targets on the FP32 stream
            with torch.no_grad():
                for idx in _chunks(n, cfg.batch_size):
                    env = model.run(block.nodes, _inputs(fp_in, data, placeholders, idx, bi))
                    for o in block.outputs:
                        fp_out.append(o, env[o], idx[0], n)
            iters = _block_iters(cfg, env, block)
            layers, loss = _train_block(model, block, q_in, fp_out, data, placeholders, n, bi, replace(cfg, iters=iters),
                                        f"{method} block {bi + 1}/{len(blocks)}", progress)
            model.set_mode("hard")
            with torch.no_grad():
                for idx in _chunks(n, cfg.batch_size):
                    env = model.run(block.nodes, _inputs(q_in, data, placeholders, idx, bi))
                    for o in block.outputs:
                        q_out.append(o, env[o], idx[0], n)
            report.append({"layers": layers, "final_loss": loss, "iters": iters, "cache_mb": (q_out.nbytes + fp_out.nbytes) / 2 ** 20,
                           "resident_bytes": q_out.resident_bytes + fp_out.resident_bytes,
                           "spilled": q_out.spilled or fp_out.spilled})
            q_in, fp_in = q_out, fp_out
    return report


def _block_iters(cfg: ReconConfig, env: dict, block: Block) -> int:
    """``cfg.iters``, capped by ``cfg.work`` over the elements one sample produces in ``block``
    (``env``: the last batch of the block's FP32 pass)."""
    if cfg.work is None:
        return cfg.iters
    names = {nd.name for nd in block.nodes}
    per_sample = sum(v[0].numel() for k, v in env.items() if k in names and isinstance(v, torch.Tensor) and v.ndim)
    return max(1, min(cfg.iters, int(cfg.work // (cfg.batch_size * max(per_sample, 1)))))


def _inputs(cache, data, placeholders, idx, bi) -> dict:
    if bi == 0 or cache is None:
        return {p: torch.as_tensor(a[idx]) for p, a in zip(placeholders, data)}
    env = cache.take(idx)
    for p, a in zip(placeholders, data):                # the inputs themselves (masks) stay available
        env.setdefault(p, torch.as_tensor(a[idx]))
    return env


def _train_block(model, block, q_in, fp_out, data, placeholders, n, bi, cfg, desc, progress):
    kernels = [model.modules[k] for k in block.kernels]
    groups = {}                                 # a weight module may give a parameter its own lr (``lrs``)
    for k in kernels:
        for name, p in (k.weight.named_parameters() if k.weight is not None else ()):
            groups.setdefault(getattr(k.weight, "lrs", {}).get(name, cfg.weight_lr), []).append(p)
    names = {nd.name for nd in block.nodes}
    acts = [m for name, m in model.modules.items() if name in names for m in m.modules()
            if isinstance(m, ActQuant) and m.scale.requires_grad]
    a_params = [a.scale for a in acts]
    if not groups and not a_params:
        return block.kernels, float("nan")
    opt = torch.optim.Adam([{"params": ps, "lr": lr} for lr, ps in sorted(groups.items())]
                           + ([{"params": a_params, "lr": cfg.act_lr}] if a_params else []))
    rng = np.random.default_rng(cfg.seed + 7919 * bi)
    warm = int(cfg.warmup * cfg.iters)
    bar = tqdm(range(cfg.iters), desc=desc, unit="it", disable=not progress, leave=False)
    loss_v = float("nan")
    for it in bar:
        idx = np.sort(rng.choice(n, min(cfg.batch_size, n), replace=False))
        model.set_mode("soft", cfg.drop_prob)
        env = model.run(block.nodes, _inputs(q_in, data, placeholders, idx, bi))
        target = fp_out.take(idx)
        rec = sum(lp_loss(env[o], target[o], cfg.p) for o in block.produced)
        if it < warm:
            reg = torch.zeros(())
        else:
            rel = (it - warm) / max(cfg.iters - warm, 1)
            beta = cfg.beta[1] + (cfg.beta[0] - cfg.beta[1]) * max(0.0, 1 - rel)
            reg = cfg.reg_weight * sum(k.weight.regulariser(beta) for k in kernels if k.weight is not None)
        loss = rec + reg
        opt.zero_grad()
        loss.backward()
        opt.step()
        loss_v = float(rec.detach())
        if progress and it % 50 == 0:
            bar.set_postfix(rec=f"{loss_v:.4g}", reg=f"{float(reg):.3g}")
    bar.close()
    return block.kernels, loss_v


def refold(graph, plan: QuantPlan, scales: dict, weights: dict) -> QuantPlan:
    """``plan`` with new activation step sizes (tensor name -> scale) and learned weights (layer
    name -> (stored integer weights, per-channel weight scale, attrs)) folded in: every integer
    layer's multiplier/shift, int32 bias and clip bounds recomputed as ``quant/calibrate.py``
    computes them; the real-valued bias (bias correction included) is kept."""
    new = copy.deepcopy(plan)
    new.run_info = {}
    for name, s in scales.items():
        new.tensors[name].scale = float(s)
    by_name = {lay.name: lay for lay in graph.layers}
    for old, lp in zip(plan.layers, new.layers):
        if lp.keep_float:
            continue
        t_out, s_in = new.tensors[lp.output], [float(new.tensors[i].scale) for i in lp.inputs]
        lp.clip = _clip(by_name[lp.name], t_out)
        arr = lp.arrays
        if "weight" in arr:
            b_real = old.arrays["bias"] * (float(plan.tensors[old.inputs[0]].scale)
                                           * old.arrays["weight_scale"].astype(np.float64))
            if lp.name in weights:
                w, s_w, attrs = weights[lp.name]
                arr["weight"], arr["weight_scale"] = w.astype(old.arrays["weight"].dtype), s_w.astype(old.arrays["weight_scale"].dtype)
                lp.attrs.update(attrs)
                if "weight_bits" in attrs:
                    lp.weight_bits = attrs.pop("weight_bits")
                    lp.attrs.pop("weight_bits", None)
            acc = s_in[0] * arr["weight_scale"].astype(np.float64)
            bias_q = np.round(b_real / acc)
            arr["bias"] = np.clip(bias_q, *INT32).astype(np.int32)
            arr["multiplier"], arr["shift"] = quantize_multiplier(acc / float(t_out.scale))
        elif lp.kind in ("matmul", "mul"):
            arr["multiplier"], arr["shift"] = quantize_multiplier(s_in[0] * s_in[1] / float(t_out.scale))
        elif lp.kind == "avg_pool":
            arr["multiplier"], arr["shift"] = quantize_multiplier(s_in[0] / (float(t_out.scale) * lp.attrs["count"]))
        elif lp.kind == "lut":                 # the table maps input codes to output codes: rebuilt
            arr["table"] = build_table(lp.attrs["function"], lp.attrs["function_attrs"],
                                       new.tensors[lp.inputs[0]], t_out, lp.clip)
        elif lp.kind in ("add", "cat"):
            m, k = shared_shift_multipliers([s / float(t_out.scale) for s in s_in])
            arr["multiplier"], arr["shift"] = m, np.array([k], dtype=np.int64)
        elif lp.kind == "mean":
            arr["multiplier"], arr["shift"] = quantize_multiplier(s_in[0] / (float(t_out.scale) * lp.attrs["count"]))
        elif lp.kind == "mul_const":
            f = lp.attrs["factor"]
            m, k = quantize_multiplier(abs(f) * s_in[0] / float(t_out.scale))
            arr["multiplier"], arr["shift"] = m * int(np.sign(f) or 1), k
    return new
