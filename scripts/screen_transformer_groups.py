"""Screen activation-width group specs for MiniLM on the calibration split only (issue 21).

The choice of which tensor groups to widen (tvmptq/quant/tensor_groups.py) must not look at the
evaluation split, so this screen fits every plan on the first ``--calib`` calibration sentences
(statistics, ranges, bias correction) and scores it on the next ``--held`` calibration sentences,
which the fit never saw. The chosen specs then get their evaluation rows from
scripts/bench_transformer.py --wide. One calibration pass, then one plan and simulation per spec;
the table (results/transformer_screen.md) is rewritten after every row.

    PYTHONPATH=$PWD nice -n 19 python scripts/screen_transformer_groups.py --configs W8A8 \
        --specs none res16 all12 all12-residual ...

Specs are those of bench_transformer.py --wide, plus ``allB`` (every group at B bits) and
``allB-g1-g2`` (every group at B bits except the named ones, which stay at 8).
"""
from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import tvmptq  # noqa: E402
from tvmptq.eval.metrics import embedding_fidelity, sqnr_db  # noqa: E402
from tvmptq.eval.sets import batches, run_outputs, torch_runner  # noqa: E402
from tvmptq.quant.calibrate import build_plan, collect_statistics  # noqa: E402
from tvmptq.quant.simulate import simulate  # noqa: E402
from tvmptq.quant.tensor_groups import GROUPS, expand_tensor_bits, tensor_groups  # noqa: E402

from bench_transformer import parse_wide  # noqa: E402


def parse_spec(spec: str) -> dict[str, int]:
    """``all12`` / ``all12-residual-qkv`` (every group at 12 bits but the named ones), else as --wide."""
    head, *minus = spec.split("-")
    if head.startswith("all") and head[3:].isdigit():
        unknown = [g for g in minus if g not in GROUPS]
        if unknown:
            raise SystemExit(f"unknown group(s) {unknown} in {spec!r}: groups are {', '.join(GROUPS)}")
        return {g: int(head[3:]) for g in GROUPS if g not in minus}
    return parse_wide(spec)


def calibration_screen(n_calib: int, n_held: int):
    """MiniLM on the calibration split only: (model, graph, fit, held, FP32 outputs on held, activation
    statistics of fit); fit is sentences 0..n_calib-1, held the next n_held, which score each plan."""
    model = tvmptq.load("minilm_l6")
    full = tvmptq.get_set("sentences").calibration()
    if n_calib + n_held > len(full[0]):
        raise SystemExit(f"--calib + --held = {n_calib + n_held} > {len(full[0])} calibration sentences")
    fit = tuple(a[:n_calib] for a in full)
    held = tuple(a[n_calib:n_calib + n_held] for a in full)
    graph = tvmptq.prepare(model)
    ref = run_outputs(torch_runner(graph.gm), held, 32, "fp32", False)
    observers, _ = collect_statistics(graph, batches(fit, 32), False)
    return model, graph, fit, held, ref, observers


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--calib", type=int, default=64, help="calibration sentences that fit each plan")
    ap.add_argument("--held", type=int, default=128, help="the next calibration sentences, which score it")
    ap.add_argument("--configs", default="W8A8")
    ap.add_argument("--observer", default="mse")
    ap.add_argument("--specs", nargs="+", required=True)
    ap.add_argument("--out", default="results/transformer_screen.md")
    args = ap.parse_args(argv)
    cmd = "PYTHONPATH=$PWD nice -n 19 python " + " ".join(
        shlex.quote(x) for x in ["scripts/screen_transformer_groups.py", *(argv if argv is not None else sys.argv[1:])])
    t0 = time.time()
    model, graph, fit, held, ref, observers = calibration_screen(args.calib, args.held)
    groups = tensor_groups(graph)
    rows = []
    for bits in args.configs.split(","):
        w, a = (int(v) for v in bits[1:].split("A"))
        for spec in args.specs:
            tb = parse_spec(spec)
            wide = expand_tensor_bits(graph, tb)
            by_group = ", ".join(f"{g} {sum(n in wide for n in groups[g])}x{tb[g]}" for g in tb if g in groups)
            plan = build_plan(graph, observers, tvmptq.make_config(w, a, args.observer, tensor_bits=tb or None),
                              model.name, fit, 32)
            n_wide = sum(t.bits > 8 for t in plan.tensors.values())
            q = run_outputs(torch_runner(simulate(graph, plan)), held, 32, "q", False)
            rows.append(dict(spec=spec, bits=bits, n_wide=n_wide, n=len(plan.tensors), by_group=by_group or "-",
                             sqnr=sqnr_db(ref, q), **embedding_fidelity(ref, q)))
            print(rows[-1], f"{time.time() - t0:.0f} s", flush=True)
            _write(args, rows, cmd, t0)
    return 0


def _write(args, rows, cmd, t0) -> None:
    md = ["# MiniLM-L6 wide-group screen on the calibration split (issue 21)", "", f"Command: `{cmd}`", "",
          f"Plans fitted on calibration sentences 0..{args.calib - 1} (statistics over all positions, "
          f"observer {args.observer}, bias correction); scored on calibration sentences {args.calib}.."
          f"{args.calib + args.held - 1}, which the fit never saw (the evaluation split chooses nothing). "
          f"Wall time {time.time() - t0:.0f} s on the shared 2-core host.", "",
          "| spec | config | wide tensors | by group (count x bits) | cosine | Spearman | NN agr % | SQNR dB |",
          "|---|---|---|---|---|---|---|---|"]
    md += [f"| {r['spec']} | {r['bits']} | {r['n_wide']} of {r['n']} | {r['by_group']} | {r['cosine_mean']:.4f} | "
           f"{r['spearman']:.4f} | {r['nn_agreement']:.1f} | {r['sqnr']:.2f} |" for r in rows]
    (REPO / args.out).write_text("\n".join(md) + "\n")


if __name__ == "__main__":
    raise SystemExit(main())
