"""Which Relax ops / constants differ between the baseline and a learned plan (bench_reconstruction's
``same ops/consts`` column), printed as Counter differences of ``"<op> -> <dtype>"`` and ``(dtype, shape)``.

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
    seen, compiled = [], br._compiled

    def spy(plan, imported):
        out = compiled(plan, imported)
        seen.append(out[1:])
        return out

    br._compiled = spy
    args = argparse.Namespace(methods=["baseline", a.method], iters=a.iters, work=a.work, seed=0, opt=[],
                              progress=False, first_last_8bit=False, no_latency=False,
                              calib_samples=a.calib_samples, eval_samples=32)
    model, tag = a.row.split(":")
    br.bench(model, tag, args, [], lambda: None)
    (bo, bc), (lo, lc) = seen
    print("ops only in the baseline:", dict(bo - lo), "| only in the learned plan:", dict(lo - bo))
    print("constants only in the baseline:", dict(bc - lc), "| only in the learned plan:", dict(lc - bc))
    print(f"op count {sum(bo.values())} vs {sum(lo.values())}, constant count {sum(bc.values())} vs {sum(lc.values())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
