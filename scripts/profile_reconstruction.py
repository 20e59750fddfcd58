"""Time one reconstruction iteration of every BRECQ block of a zoo model (forward, backward and
Adam step at a given batch, FP32 block inputs), the figures behind ReconConfig.work.

Usage: .venv/bin/python scripts/profile_reconstruction.py efficientnet_lite0 [--iters 3] [--batch 32]
       [--bits W4A4] [--profile 0 3]   (torch.profiler tables of those blocks)
Prints per block: its conv/linear count, input shape, activation elements per sample, ms per
iteration, and the iterations ReconConfig.work gives it; then the sum (one sweep of all blocks).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import load_case  # noqa: E402
import tvmptq  # noqa: E402
from tvmptq.algorithms import reconstruction as R  # noqa: E402
from tvmptq.algorithms.adaround import adaround_weight  # noqa: E402
from tvmptq.eval.sets import batches  # noqa: E402
from tvmptq.quant.calibrate import build_plan, collect_statistics  # noqa: E402


def main():
    p = argparse.ArgumentParser()
    p.add_argument("model")
    p.add_argument("--iters", type=int, default=3)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--bits", default="W4A4")
    p.add_argument("--profile", type=int, nargs="*", default=[])
    args = p.parse_args()
    case = load_case(args.model, max(args.batch, 8), 1)
    w, a = (int(v) for v in args.bits[1:].split("A"))
    observers, _ = collect_statistics(case.graph, batches(case.calib, 8))
    plan = build_plan(case.graph, observers, tvmptq.make_config(w, a, "minmax"), case.model.name,
                      tuple(x[:8] for x in case.calib), 8)
    torch.set_num_threads(1)
    cfg = R.ReconConfig(batch_size=args.batch)
    model = R.TrainModel(case.graph, plan, adaround_weight, cfg)
    blocks = R.find_blocks(model)
    names = [n.name for n in model.nodes if n.op == "placeholder"]
    data = {k: torch.as_tensor(v[:args.batch]) for k, v in zip(names, case.calib)}
    env_fp, total = dict(data), 0.0
    print(f"{args.model} {args.bits}: {len(blocks)} blocks, batch {args.batch}, load {os.getloadavg()[0]:.1f}")
    for bi, block in enumerate(blocks):
        model.set_mode("fp")
        with torch.no_grad():
            target = model.run(block.nodes, env_fp)
        inputs = {k: env_fp[k] for k in block.inputs} | data
        params = [q for k in block.kernels for q in model.modules[k].weight.parameters()]
        opt = torch.optim.Adam(params, lr=1e-3)
        model.set_mode("soft")

        def step():
            out = model.run(block.nodes, inputs)
            loss = sum(R.lp_loss(out[o], target[o].detach(), cfg.p) for o in block.produced)
            opt.zero_grad()
            loss.backward()
            opt.step()
        t0 = time.perf_counter()
        for _ in range(args.iters):
            step()
        dt = (time.perf_counter() - t0) / args.iters
        total += dt
        if bi in args.profile:
            from torch.profiler import profile
            with profile() as prof:
                step()
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))
        iters = R._block_iters(cfg, target, block)
        elems = sum(v[0].numel() for k, v in target.items() if k in {n.name for n in block.nodes}
                    and isinstance(v, torch.Tensor) and v.ndim)
        shape = tuple(env_fp[block.inputs[0]].shape) if block.inputs else tuple(data[names[0]].shape)
        print(f"block {bi:2d}: {len(block.kernels)} kernels, input {shape}, {elems / 1e6:.2f} M elements/sample, "
              f"{1000 * dt:.0f} ms/iteration, {iters} iterations under work={cfg.work:g}", flush=True)
        env_fp = target
    print(f"one sweep of all blocks: {total:.1f} s at batch {args.batch} (load {os.getloadavg()[0]:.1f})")


if __name__ == "__main__":
    main()
