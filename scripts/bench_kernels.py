"""Micro-benchmark of the CPU int8 conv kernels on EfficientNet-Lite0's layer shapes: NCHW vs NHWC,
the int64 vs the high-half requantize epilogue, SIMD vs dot-product depthwise taps.

Why it exists: these are the measurements behind TensorizeDot's kernel choices, kernel by kernel,
one core:

* 1x1 convs: ``conv1x1_requant`` (NCHW: a transpose stage in, a transposed epilogue out) against
  ``dense_requant`` on the NHWC view (tiles relay_passes.tensorize.CONV_TILE), with the int64
  and with the high-half epilogue (targets.kernels.hi32_rows);
* depthwise convs: ``depthwise_requant`` (NCHW, vectors over pixels), ``depthwise_requant_nhwc``
  (vectors over channels) with each epilogue, and ``depthwise_requant_nhwc_dot`` (taps on vpdpbusd);
* the stem (3 -> 32, 3x3, stride 2 on the padded 225 x 225 image): im2col + ``dense_requant``.

Every variant is checked to give the same numbers (NHWC outputs transposed back). Requantize
numbers are random but in the lowering's range. Writes a markdown table (``--out``, default
results/kernels.md). Needs an x86 CPU with avx512_vnni.

Usage: TVM_NUM_THREADS=1 python scripts/bench_kernels.py [--repeat 15] [--out results/kernels.md]
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

import tvm  # noqa: E402

import targets  # noqa: E402
from relay_passes.tensorize import CONV_TILE  # noqa: E402
from targets.kernels import depthwise as dw  # noqa: E402
from targets.kernels import im2col as ic  # noqa: E402
from targets import kernels as dot  # noqa: E402
from targets.tuning_db import target_cpu  # noqa: E402
from targets.kernels.x86_vnni import VNNI, host_has_avx512_vnni  # noqa: E402

POINTWISE = [(12544, 96, 16), (12544, 16, 32), (3136, 144, 24), (3136, 24, 144), (784, 240, 40),
             (196, 480, 80), (196, 672, 112), (196, 112, 672), (49, 1152, 192), (49, 192, 1152)]  # pixels, N, K
DEPTHWISE = [(32, 114, 114, 3, 1), (96, 113, 113, 3, 2), (144, 58, 58, 3, 1), (144, 59, 59, 5, 2),
             (240, 32, 32, 5, 1), (672, 18, 18, 5, 1), (1152, 11, 11, 5, 1)]  # C, padded H = W, k, stride


def _qp(rng, n):
    shift = rng.integers(34, 40, n)
    return np.stack([rng.integers(-1000, 1000, n), rng.integers(1 << 29, 1 << 31, n), np.int64(1) << (shift - 1),
                     shift, np.full(n, 3), np.zeros(n), np.full(n, 255)]).astype(np.int64)


def _time(sch_or_func, arrays, T, repeat):
    mod = sch_or_func.mod if hasattr(sch_or_func, "mod") else tvm.IRModule({"main": sch_or_func})
    f = tvm.compile(mod, target=T).jit()
    args = [tvm.runtime.tensor(a) for a in arrays]
    ms = statistics.median(f.time_evaluator("main", tvm.cpu(), number=5, repeat=repeat)(*args).results) * 1e3
    return ms, args[-1].numpy()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeat", type=int, default=15)
    ap.add_argument("--out", default=str(REPO / "results" / "kernels.md"))
    args = ap.parse_args(argv)
    if not host_has_avx512_vnni():
        print("this CPU lacks avx512_vnni: the VNNI kernels cannot run here", file=sys.stderr)
        return 2
    T = targets.get("x86-host").tvm_target()
    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    pw_rows, dw_rows = [], []
    for M, N, K in POINTWISE:
        x = rng.integers(0, 256, (M, K)).astype(np.uint8)
        w, qp = rng.integers(-127, 128, (N, K)).astype(np.int8), _qp(rng, N)
        wp = dot.pack_weight(w, VNNI.lanes)
        q32 = dot.hi32_rows(qp, 255 * np.abs(w.astype(np.int64)).sum(1))
        a, ya = _time(dot.schedule_conv1x1(dot.conv1x1_requant(1, M, N, K, "uint8", "uint8", VNNI), VNNI),
                      [np.ascontiguousarray(x.T[None]), wp, qp, np.zeros((1, N, M), np.uint8)], T, args.repeat)
        b, yb = _time(dot.schedule_dense(dot.dense_requant(M, N, K, "uint8", "uint8", VNNI), VNNI, *CONV_TILE),
                      [x, wp, qp, np.zeros((M, N), np.uint8)], T, args.repeat)
        c, yc = _time(dot.schedule_dense(dot.dense_requant(M, N, K, "uint8", "uint8", VNNI, hi32=True,
                                                           saturate=dot.saturates(q32, "uint8")), VNNI, *CONV_TILE),
                      [x, wp, q32, np.zeros((M, N), np.uint8)], T, args.repeat)
        assert np.array_equal(ya[0].T, yb) and np.array_equal(yb, yc), (M, N, K)
        pw_rows.append((f"1x1 conv {M} px x {N} x {K}", a, b, c))
        print(pw_rows[-1], flush=True)
    for C, H, _, k, s in DEPTHWISE:
        x = rng.integers(0, 256, (1, C, H, H)).astype(np.uint8)
        w, qp = rng.integers(-127, 128, (C, k, k)).astype(np.int8), _qp(rng, C)
        q32 = dot.hi32_rows(qp, 255 * np.abs(w.astype(np.int64)).reshape(C, -1).sum(1))
        sat = dot.saturates(q32, "uint8")
        OH = (H - k) // s + 1
        xh, wh = np.ascontiguousarray(x.transpose(0, 2, 3, 1)), np.ascontiguousarray(w.transpose(1, 2, 0))
        out = np.zeros((1, OH, OH, C), np.uint8)
        a, ya = _time(dw.schedule_depthwise(dw.depthwise_requant(1, C, H, H, k, k, (s, s), (0,) * 4, "uint8", "uint8")),
                      [x, w.astype(np.int32), qp, np.zeros((1, C, OH, OH), np.uint8)], T, args.repeat)
        b, yb = _time(dw.schedule_depthwise_nhwc(dw.depthwise_requant_nhwc(1, H, H, C, k, k, (s, s), (0,) * 4, "uint8",
                                                                           "uint8")), [xh, wh, qp, out], T, args.repeat)
        c, yc = _time(dw.schedule_depthwise_nhwc(dw.depthwise_requant_nhwc(1, H, H, C, k, k, (s, s), (0,) * 4, "uint8",
                                                                           "uint8", hi32=True, saturate=sat)),
                      [xh, wh, q32, out], T, args.repeat)
        d, yd = _time(dw.schedule_depthwise_nhwc_dot(dw.depthwise_requant_nhwc_dot(1, H, H, C, k, k, (s, s), "uint8", "uint8",
                                                                                   VNNI, saturate=sat), VNNI),
                      [xh, dw.dot_weight(wh), q32, out], T, args.repeat)
        assert all(np.array_equal(ya, y.transpose(0, 3, 1, 2)) for y in (yb, yc, yd)), (C, H, k, s)
        dw_rows.append((f"depthwise {C} x {H}^2 k{k} s{s}", a, b, c, d))
        print(dw_rows[-1], flush=True)
    x = rng.integers(0, 256, (1, 3, 225, 225)).astype(np.uint8)
    w, qp = rng.integers(-127, 128, (32, 3, 3, 3)).astype(np.int8), _qp(rng, 32)
    wc = ic.weight_columns(w)
    q32 = dot.hi32_rows(qp, 255 * np.abs(wc.astype(np.int64)).sum(1))
    cols_ms, cols = _time(ic.im2col(1, 3, 225, 225, 3, 3, (2, 2), (0,) * 4, "uint8"),
                          [x, np.zeros((12544, 27), np.uint8)], T, args.repeat)
    dense_ms, _ = _time(dot.schedule_dense(dot.dense_requant(12544, 32, 27, "uint8", "uint8", VNNI, hi32=True,
                                                             saturate=dot.saturates(q32, "uint8")), VNNI, *CONV_TILE),
                        [cols, dot.pack_weight(wc, VNNI.lanes), q32, np.zeros((12544, 32), np.uint8)],
                        T, args.repeat)
    lines = ["# int8 conv kernels on EfficientNet-Lite0's shapes: layouts and requantize epilogues\n",
             f"`scripts/bench_kernels.py`, {time.strftime('%Y-%m-%d')}, target CPU `{target_cpu(T)}`, "
             "TVM_NUM_THREADS as set (1 for the committed file); median of "
             f"{args.repeat} x 5 calls per kernel, ms. Every kernel's output equals the first column's. "
             "int64: the plan's requantize as written (sign-extended accumulators); hi32: the exact "
             "high-half epilogue (targets.kernels.hi32_rows), clip by saturation; the last column is "
             "what TensorizeDot builds.\n",
             "| 1x1 conv | NCHW, int64 | NHWC, int64 | NHWC, hi32 | first / last |", "|---|---|---|---|---|"]
    lines += [f"| {name} | {a:.3f} | {b:.3f} | {c:.3f} | {a / c:.2f}x |" for name, a, b, c in pw_rows]
    lines += ["", "| depthwise conv | NCHW SIMD, int64 | NHWC SIMD, int64 | NHWC SIMD, hi32 | NHWC vpdpbusd taps, hi32 "
              "| first / last |", "|---|---|---|---|---|---|"]
    lines += [f"| {name} | {a:.3f} | {b:.3f} | {c:.3f} | {d:.3f} | {a / d:.2f}x |" for name, a, b, c, d in dw_rows]

    def col(rows, i):
        return f"{sum(r[i] for r in rows):.3f}"
    lines += ["", f"Sums (each shape once), 1x1 convs: {' -> '.join(col(pw_rows, i) for i in (1, 2, 3))} ms; "
              f"depthwise: {' -> '.join(col(dw_rows, i) for i in (1, 2, 3, 4))} ms.",
              f"Stem 3x3 stride 2 (3 -> 32 channels) as im2col ({cols_ms:.3f} ms) + dense 12544 x 32 x 27, hi32 "
              f"({dense_ms:.3f} ms) = {cols_ms + dense_ms:.3f} ms.", ""]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines))
    print(f"wrote {args.out} in {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
