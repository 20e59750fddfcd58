"""MiniLM-sized FFN linears through the whole lowering: tensorized VNNI kernel vs the default build.

For each shape (tokens x K -> N: 128x384 -> 1536, the FFN up-projection, and 128x1536 -> 384, the
down-projection) a one-layer torch model is quantized W8A8 (asymmetric uint8 activations, and
symmetric int8), lowered with relay_passes, and compiled twice for the same target (x86-host):

* default: ``lowering_passes(plan)`` + ``compile_integer`` (untuned: TVM's default CPU pipeline,
  the int32 matmul and the int64 requantize as legalized, fused TIR without a schedule);
* tensorized: ``lowering_passes(plan, target="x86-host")`` (TensorizeDenseVNNI: one call_tir to the
  hand-scheduled vpdpbusd kernel, requantize in its epilogue).

Both programs take float32 [1, 128, K] and return the dequantized float32 [1, 128, N] (input
quantize and output dequantize included, the same ops in both); the two outputs and the NumPy
reference (tvmptq.reference.run_plan) are checked bit for bit. Also timed: the tensorized kernel
alone (the PrimFunc from the module, called with the module's constants), and the float module with
the default build. Medians of ``time_evaluator`` repeats. GOPS = 2*M*N*K / time.

``--minilm``: also the whole all-MiniLM-L6-v2 (W8A8, 32 calibration sentences, static batch 4):
how many integer kernels were tensorized, the tensorized program's embeddings against the default
program's (bit-identical expected: the same float64 islands) on 8 evaluation sentences, and the
latency of one batch both ways (about 2 minutes more).

Usage: nice -n 15 .venv/bin/python scripts/vnni_lowering_bench.py [--repeat 9] [--target x86-host] [--minilm]
Needs a CPU with avx512_vnni. Timings on a loaded 2-core machine are indicative only.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import warnings
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402
import tvm  # noqa: E402
from torch import nn  # noqa: E402
from tvm import relax  # noqa: E402

import relay_passes as rp  # noqa: E402
import targets  # noqa: E402
import tvmptq  # noqa: E402
from targets.build import run_batched  # noqa: E402
from relay_passes.tensorize import KERNEL_PREFIX  # noqa: E402
from targets.kernels import x86_vnni as xi  # noqa: E402
from tvmptq.reference import run_plan  # noqa: E402
from tvmptq.zoo import from_module  # noqa: E402

SHAPES = [("FFN up   128x384 -> 1536", 128, 384, 1536), ("FFN down 128x1536 -> 384", 128, 1536, 384)]


def _median_ms(f, args, repeat):
    return 1e3 * statistics.median(f(*args).results)


def _time_main(ex, x, repeat):
    vm = relax.VirtualMachine(ex, tvm.cpu())
    arg = tvm.runtime.tensor(x, tvm.cpu())
    f = vm.time_evaluator("main", tvm.cpu(), number=5, repeat=repeat, min_repeat_ms=200)
    res = vm["main"](arg)
    return _median_ms(f, [arg], repeat), (res if hasattr(res, "numpy") else res[0]).numpy()


def _kernel_alone(mod, x_int, tvm_target, repeat):
    """The tensorized PrimFunc called directly with the call_tir's constant arguments."""
    (gv, prim), = [(gv, f) for gv, f in mod.functions_items() if gv.name_hint.startswith(KERNEL_PREFIX)]
    call = next(b.value for blk in mod["main"].body.blocks for b in blk.bindings
                if isinstance(b.value, relax.Call) and len(b.value.args) == 2
                and isinstance(b.value.args[0], tvm.ir.GlobalVar) and b.value.args[0].same_as(gv))
    consts = [a.value for a in call.args[1].fields[1:]]
    out_ty = call.ty
    ex = tvm.compile(tvm.IRModule({"main": prim.with_attr("global_symbol", "main")}), target=tvm_target).jit()
    out = tvm.runtime.tensor(np.zeros([int(d) for d in out_ty.shape], str(out_ty.dtype)))
    args = [tvm.runtime.tensor(x_int)] + consts + [out]
    f = ex.time_evaluator("main", tvm.cpu(), number=10, repeat=repeat, min_repeat_ms=200)
    return _median_ms(f, args, repeat)


def bench(name, M, K, N, symmetric, target_name, repeat):
    torch.manual_seed(0)
    model = from_module(nn.Linear(K, N).eval(), (torch.randn(1, M, K),))
    calib = torch.randn(16, M, K).numpy()
    qm = tvmptq.quantize(model, (calib,), tvmptq.make_config(8, 8, "minmax", symmetric=symmetric), progress=False)
    imported = rp.Canonicalize()(rp.import_model(model.build(), model.example_inputs(1)))
    tvm_target = targets.get(target_name).tvm_target()
    x = torch.randn(1, M, K).numpy()
    ref = run_plan(qm.plan, x)

    base = rp.lowering_passes(qm.plan)(imported)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every linear must be tensorized here
        fast = rp.lowering_passes(qm.plan, target=target_name)(imported)
    t_base, y_base = _time_main(tvm.compile(base, target=tvm_target), x, repeat)
    t_fast, y_fast = _time_main(tvm.compile(fast, target=tvm_target), x, repeat)
    t_fp32, _ = _time_main(tvm.compile(imported, target=tvm_target), x, repeat)
    ok = np.array_equal(y_base, ref) and np.array_equal(y_fast, ref)
    g = qm.plan.tensors[qm.plan.layers[0].inputs[0]]
    x_int = np.clip(np.round(x.reshape(M, K) / np.float32(g.scale)) + g.zero_point, g.qmin, g.qmax)
    x_int = x_int.astype("int8" if symmetric else "uint8")
    t_kernel = _kernel_alone(fast, x_int, tvm_target, repeat)
    gops = lambda ms: 2 * M * N * K / (ms * 1e6)  # noqa: E731
    act = "int8 (symmetric)" if symmetric else "uint8 (asymmetric)"
    return [(name, act, "default lowering, untuned (int32 matmul + int64 requantize)", t_base, gops(t_base), ok),
            (name, act, "tensorized VNNI, requantize in the epilogue", t_fast, gops(t_fast), ok),
            (name, act, "  of which the VNNI kernel alone", t_kernel, gops(t_kernel), ""),
            (name, act, "fp32 module, default build (reference point)", t_fp32, gops(t_fp32), "")]


def minilm(target_name, repeat):
    model = tvmptq.load("minilm_l6")
    s = tvmptq.get_set("sentences")
    calib, ev = tuple(a[:32] for a in s.calibration()), tuple(a[:8] for a in s.evaluation())
    qm = tvmptq.quantize(model, calib, tvmptq.make_config(8, 8, "minmax"), progress=False)
    imported = rp.Canonicalize()(rp.import_model(model.build(), model.example_inputs(4)))
    base = rp.lowering_passes(qm.plan)(imported)
    tensorize = rp.TensorizeDenseVNNI(target_name, qm.plan, warn=False)
    fast = tensorize(base)
    done = [r for r in tensorize.report if r.tensorized]
    kernels = sorted({r.kernel for r in done})
    print(f"\nMiniLM W8A8: {len(done)} of {len(tensorize.report)} integer kernels tensorized "
          f"({len(kernels)} distinct kernels: {', '.join(kernels)}); not tensorized: "
          f"{sorted({r.reason for r in tensorize.report if not r.tensorized})}")
    tvm_target = targets.get(target_name).tvm_target()
    outs, times = [], []
    for m in (base, fast):
        vm = relax.VirtualMachine(tvm.compile(m, target=tvm_target), tvm.cpu())
        outs.append(run_batched(vm["main"], ev, 4, [str(p.ty.dtype) for p in m["main"].params], tvm.cpu()))
        args = [tvm.runtime.tensor(np.ascontiguousarray(a[:4])) for a in ev]
        times.append(_median_ms(vm.time_evaluator("main", tvm.cpu(), number=1, repeat=repeat), args, repeat))
    print(f"embeddings bit-identical (tensorized vs default, 8 sentences): {np.array_equal(*outs)}")
    print(f"one batch of 4 x 128 tokens: default {times[0]:.1f} ms, tensorized {times[1]:.1f} ms "
          f"({times[0] / times[1]:.1f}x)")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=9)
    ap.add_argument("--target", default="x86-host", help="registry target with vnni + avx512")
    ap.add_argument("--minilm", action="store_true", help="also the whole MiniLM model (about 2 minutes)")
    ap.add_argument("--no-shapes", action="store_true", help="skip the single-linear table")
    args = ap.parse_args(argv)
    if not xi.host_has_avx512_vnni():
        sys.exit("this CPU lacks avx512_vnni: the tensorized kernels cannot run here")
    print(f"target {args.target}: {targets.get(args.target).resolved()}; TVM {tvm.__version__}; "
          f"repeat {args.repeat} (medians)")
    print("| shape | activations | program | ms | GOPS | bit-exact vs run_plan |\n|---|---|---|---|---|---|")
    for name, M, K, N in [] if args.no_shapes else SHAPES:
        for symmetric in (False, True):
            for row in bench(name, M, K, N, symmetric, args.target, args.repeat):
                print(f"| {row[0]} | {row[1]} | {row[2]} | {row[3]:.3f} | {row[4]:.1f} | {row[5]} |", flush=True)
    if args.minilm:
        minilm(args.target, 3)


if __name__ == "__main__":
    main()
