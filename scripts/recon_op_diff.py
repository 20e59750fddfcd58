"""Which Relax ops / constants differ between the baseline and a learned plan (bench_reconstruction's
``same ops/consts`` column): the row's ``diff`` (bench_reconstruction.counter_diff: Counter differences
of ``"<op> -> <dtype>"`` and ``(dtype, shape)``), printed, from a short run.

    PYTHONPATH=$PWD python scripts/recon_op_diff.py efficientnet_lite0:W4A8 brecq --iters 2 --work 1e6
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import bench_reconstruction as br  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("row", help="model:WxAy")
    p.add_argument("method")
    p.add_argument("--iters", type=int, default=2)
    p.add_argument("--work", type=float, default=1e6)
    p.add_argument("--calib-samples", type=int, default=64)
    a = p.parse_args(argv)
    args = argparse.Namespace(methods=["baseline", a.method], iters=a.iters, work=a.work, seed=0, opt=[],
                              progress=False, first_last_8bit=False, no_latency=False,
                              calib_samples=a.calib_samples, eval_samples=32)
    model, tag = a.row.split(":")
    rows = []
    br.bench(model, tag, args, rows, lambda: None)
    r = rows[-1]
    print("ops only in the baseline:", r["diff"]["ops_only_baseline"], "| only in the learned plan:", r["diff"]["ops_only_learned"])
    print("constants only in the baseline:", r["diff"]["constants_only_baseline"], "| only in the learned plan:",
          r["diff"]["constants_only_learned"])
    print(f"same op count {r['same_op_count']}, same constant count {r['same_constant_count']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
