"""Micro-benchmark of the hand-scheduled VNNI dense kernel (targets/kernels/x86_vnni.py), not run by the tests.

Shapes: M=N=K=512, and a MiniLM-shaped linear (M=128 tokens, K=384, N=1536: the FFN up-projection).
Rows: the VNNI kernel (uint8 x int8, and int8 x int8 through the +128 shift), TVM fp32 with the
default untuned build (plain TE matmul, `tvm.compile` default pipeline, no schedule), NumPy fp32
(BLAS). Every kernel output is checked against NumPy (int64 for the integer kernels). Medians of
`time_evaluator` repeats / `perf_counter` repeats; GOPS = 2*M*N*K / time.

Usage: nice -n 19 .venv/bin/python scripts/vnni_microbench.py [--repeat 7]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import tvm
from tvm import te

from targets.kernels import x86_vnni as xi

TARGET = tvm.target.Target({"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "sapphirerapids", "num-cores": 2})
SHAPES = [("512x512x512", 512, 512, 512), ("MiniLM FFN-up 128x384->1536", 128, 1536, 384)]


def _tvm_time(ex, args, repeat):
    f = ex.jit().time_evaluator("main", tvm.cpu(), number=1, repeat=repeat, min_repeat_ms=100)
    return statistics.median(f(*args).results)


def _fp32_default(M, N, K):
    X = te.placeholder((M, K), "float32", name="X")
    W = te.placeholder((N, K), "float32", name="W")
    k = te.reduce_axis((0, K), name="k")
    C = te.compute((M, N), lambda i, j: te.sum(X[i, k] * W[j, k], axis=k), name="C")
    return tvm.compile(te.create_prim_func([X, W, C]).with_attr("global_symbol", "main"), target=TARGET)


def bench(M, N, K, repeat):
    rng = np.random.default_rng(0)
    w = rng.integers(-128, 128, (N, K)).astype(np.int8)
    xu = rng.integers(0, 256, (M, K)).astype(np.uint8)
    xs = rng.integers(-128, 128, (M, K)).astype(np.int8)
    wp = tvm.runtime.tensor(xi.pack_dense_weight(w))
    rows = []

    ex = tvm.compile(xi.schedule_dense_vnni(xi.dense_u8s8_vnni(M, N, K)).mod, target=TARGET)
    out = tvm.runtime.tensor(np.zeros((M, N), np.int32))
    args = [tvm.runtime.tensor(xu), wp, out]
    t = _tvm_time(ex, args, repeat)
    ok = np.array_equal(out.numpy(), xu.astype(np.int64) @ w.astype(np.int64).T)
    rows.append((f"TVM VNNI u8 x s8 -> s32 (hand schedule, tile {xi.tile_sizes(M, N, K)})", t, ok))

    ex = tvm.compile(xi.schedule_dense_vnni(xi.dense_s8s8_vnni(M, N, K)).mod, target=TARGET)
    args = [tvm.runtime.tensor(xs), wp, tvm.runtime.tensor(xi.shift_correction(w)), out]
    t = _tvm_time(ex, args, repeat)
    ok = np.array_equal(out.numpy(), xs.astype(np.int64) @ w.astype(np.int64).T)
    rows.append(("TVM VNNI s8 x s8 via +128 shift -> s32", t, ok))

    xf, wf = xs.astype(np.float32), w.astype(np.float32)
    ex = _fp32_default(M, N, K)
    outf = tvm.runtime.tensor(np.zeros((M, N), np.float32))
    t = _tvm_time(ex, [tvm.runtime.tensor(xf), tvm.runtime.tensor(wf), outf], max(2, repeat // 3))
    ref = xf @ wf.T
    rows.append(("TVM fp32, default untuned build", t, bool(np.allclose(outf.numpy(), ref, rtol=1e-5, atol=1))))

    ts = []
    for _ in range(repeat):
        n, t0 = 0, time.perf_counter()
        while True:
            xf @ wf.T
            n += 1
            if time.perf_counter() - t0 > 0.1:
                break
        ts.append((time.perf_counter() - t0) / n)
    rows.append(("NumPy fp32 (x @ w.T, BLAS)", statistics.median(ts), True))
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=7)
    a = ap.parse_args()
    xi.register_vnni_intrinsic()
    print(f"TVM {tvm.__version__}, target {TARGET}, host avx512_vnni={xi.host_has_avx512_vnni()}")
    for label, M, N, K in SHAPES:
        ops = 2 * M * N * K
        print(f"\n{label}  (M={M}, N={N}, K={K}; {ops / 1e6:.0f} MOP)")
        print(f"  {'implementation':58s} {'ms':>9s} {'GOPS':>8s}  correct")
        for name, t, ok in bench(M, N, K, a.repeat):
            print(f"  {name:58s} {t * 1e3:9.3f} {ops / t / 1e9:8.1f}  {ok}")


if __name__ == "__main__":
    main()
