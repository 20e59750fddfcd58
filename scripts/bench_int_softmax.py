"""Microbenchmark of one attention softmax island at MiniLM's shape (batch 1, 12 heads, 128 x 128,
additive padding mask), float64 island vs integer island, as the x86-host build compiles them
(fusion + targets/cpu_defaults / cpu_reduction schedules). Prints the fused kernels and the
median time of the whole island per call; checks that the integer island equals the NumPy
reference (tvmptq/reference/int_softmax.py) bit for bit.

    PYTHONPATH=$PWD python scripts/bench_int_softmax.py --threads 1
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np


def build(kind: str, shape, scale_in, scale_out, target):
    import tvm
    from tvm import relax
    from tvm.relax import op as R

    from relay_passes.int_softmax import lower_softmax
    from relay_passes.integer_ops import Grid, dequantize, quantize
    from relay_passes.islands import Float64Islands
    from targets.build import compile_module
    from tvmptq.quant.int_softmax import island_params
    from tvmptq.quant.plan import TensorQuant
    tin = TensorQuant("s", scale_in, 128, 8, 0, 255)
    tout = TensorQuant("p", scale_out, 0, 8, 0, 255)
    island, table = island_params(tin, tout, (0, 255), shape[-1])
    island.update(dim=len(shape) - 1, table="t", input_tensor="s")
    plan = type("P", (), {"tensors": {"s": tin, "p": tout}, "constants": {"t": table}})()
    bb = relax.BlockBuilder()
    q = relax.Var("q", relax.TensorType(shape, "uint8"))
    m = relax.Var("mask", relax.TensorType((shape[0], 1, 1, shape[-1]), "float32"))
    with bb.function("main", [q, m]):
        with bb.dataflow():
            x = bb.emit(dequantize(q, Grid.of(tin)))
            if kind == "float":
                y = bb.emit(quantize(bb.emit(R.nn.softmax(bb.emit(R.add(x, m)), axis=-1)), Grid.of(tout)))
            else:
                y = bb.emit(quantize(bb.emit(lower_softmax(bb, x, m, island, plan, "p")), Grid.of(tout)))
            out = bb.emit_output(y)
        bb.emit_func_output(out)
    mod = bb.get()
    if kind == "float":
        mod = Float64Islands()(mod)
    mod = relax.transform.CanonicalizeBindings()(mod)
    from relay_passes.cancel_qdq import CancelQDQ
    mod = CancelQDQ()(mod)
    ex = compile_module(mod, target)
    return ex, mod, island, table


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--repeat", type=int, default=20)
    args = p.parse_args(argv)
    os.environ["TVM_NUM_THREADS"] = str(args.threads)
    import tvm
    from tvm import relax

    import targets
    from tvmptq.reference.int_softmax import integer_softmax
    target = targets.get("x86-host").tvm_target()
    shape = (1, 12, args.seq, args.seq)
    rng = np.random.default_rng(0)
    q = rng.integers(0, 256, shape).astype("uint8")
    mask = np.where(np.arange(args.seq) < args.seq // 3, 0.0, -1e4).astype("float32").reshape(1, 1, 1, -1)
    outs = {}
    for kind in ("float", "integer"):
        ex, mod, island, table = build(kind, shape, 0.08, 1 / 255, target)
        vm = relax.VirtualMachine(ex, tvm.cpu())
        a = [tvm.runtime.tensor(q), tvm.runtime.tensor(mask)]
        outs[kind] = vm["main"](*a).numpy()
        t = vm.time_evaluator("main", tvm.cpu(), number=5, repeat=args.repeat)(*a)
        print(f"{kind:8s} softmax island {shape}: median {t.median * 1e3:.3f} ms ({args.threads} thread(s))", flush=True)
    keep = mask > -1000
    ref = integer_softmax(q.astype(np.int64) - 128, keep, island, table, "p")
    print("integer == NumPy reference:", bool(np.array_equal(outs["integer"], ref)),
          "; codes differing from the float island:", f"{(outs['integer'] != outs['float']).mean():.4%}",
          "max", int(np.abs(outs["integer"].astype(int) - outs["float"]).max()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
