"""Issue 22 benchmark: fully-integer TFLite export, LiteRT equality with the NumPy reference, and
Vela's estimates for the Ethos-U NPUs; writes results/npu.md and results/npu.png.

    python scripts/bench_npu.py [--models digits_resnet efficientnet_lite0] [--views 16] [--calib 32]
    python scripts/bench_npu.py --models digits_vit --append   # adds the refusal section only

A model the fully-integer TFLite export refuses (float islands such as LayerNorm/softmax, which
tvmptq keeps in float and TFLite would need as integer ops) gets a row in "Refused by the TFLite
export" with the export's error, naming the op. --append keeps results/npu.md as it is and
replaces only that section (with its own command line); it is for runs whose models are all
refused (the md has no json, so measured rows are only written by a full run).

Plans: minmax observer, W8A8 and W4A8 (4-bit weights on int8 containers; Vela is int8/int16).
NPU latencies are Vela's performance-model estimates, not measurements.
"""
import argparse
import re
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import tvmptq  # noqa: E402
from targets.npu.ethos_u import compile_vela, npu_targets  # noqa: E402
from targets.npu.litert import attribute, compare_outputs  # noqa: E402
from tvmptq.export.tflite import TFLiteExportError, export_tflite  # noqa: E402

SETS = {"digits_resnet": "digits", "efficientnet_lite0": "photos", "digits_vit": "digits"}
REFUSED_HEAD = "## Refused by the TFLite export"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", nargs="+", default=list(SETS))
    ap.add_argument("--views", type=int, default=16, help="evaluation samples for the LiteRT comparison")
    ap.add_argument("--attribute-views", type=int, default=4)
    ap.add_argument("--calib", type=int, default=32)
    ap.add_argument("-o", default="results/npu.md")
    ap.add_argument("--append", action="store_true", help="only replace the refusal section of the existing -o")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench_npu_"))
    eq_rows, vela_rows, attr_rows, refused = [], [], [], []
    for name in args.models:
        model, s = tvmptq.load(name), tvmptq.get_set(SETS[name])
        calib = tuple(a[:args.calib] for a in s.calibration())
        xs = s.evaluation()[0][:args.views]
        for wbits in (8, 4):
            tag = f"W{wbits}A8"
            qm = tvmptq.quantize(model, calib, tvmptq.make_config(wbits, 8, "minmax"), progress=False)
            t0 = time.time()
            try:
                ex = export_tflite(qm.plan, work / f"{name}_{tag}.tflite")
            except TFLiteExportError as err:  # reported as a row, never a silent float fallback
                kinds = Counter(re.sub(r"_\d+$", "", n) for n in qm.plan.float_islands)  # layer_norm_1 -> layer_norm
                islands = [f"{k} x{v}" for k, v in sorted(kinds.items())]
                refused.append((name, tag, str(err), islands))
                print(name, tag, "refused:", err, flush=True)
                continue
            export_s = time.time() - t0
            for r in compare_outputs(qm.plan, ex, xs):
                eq_rows.append((name, tag, r.resolver, r.equal, r.total, r.share, r.max_abs, r.top1_equal, r.samples))
            diffs = attribute(qm.plan, ex, xs[:args.attribute_views])
            d_all = sum(d.differ for d in diffs)
            d_exp = sum(d.explained or 0 for d in diffs)
            by_kind = {}
            for d in diffs:
                by_kind[d.tflite_op if d.kind != "conv2d" else "conv"] = by_kind.get(d.tflite_op if d.kind != "conv2d" else "conv", 0) + d.differ
            attr_rows.append((name, tag, sum(d.elements for d in diffs), d_all, d_exp,
                              sum(ex.multiplier_mismatch.values()), by_kind, ex.op_counts(), export_s))
            for t in npu_targets():
                e = compile_vela(ex.path, t, work / f"{name}_{tag}_{t.name}")
                vela_rows.append((name, tag, e))
            print(name, tag, "done", flush=True)
    if args.append:
        if eq_rows:
            raise SystemExit("--append only adds refusals; exported models need a full run")
        write_refused(Path(args.o), refused, args)
    else:
        write(args.o, eq_rows, attr_rows, vela_rows, args)
        if refused:
            write_refused(Path(args.o), refused, args)


def write_refused(out: Path, refused, args):
    """Replace (or add) the refusal section at the end of ``out``, with the command that produced it."""
    text = out.read_text() if out.is_file() else ""
    text = text.split("\n" + REFUSED_HEAD)[0].rstrip("\n") + "\n"
    L = ["", REFUSED_HEAD, "",
         f"`python scripts/bench_npu.py --models {' '.join(args.models)} --calib {args.calib}"
         f"{' --append' if args.append else ''}` ({time.strftime('%Y-%m-%d %H:%M')}); minmax plans. The export "
         "refuses rather than leave anything in float; the float-island ops the plan declares are listed.", "",
         "| model | bits | export error | float-island ops in the plan |", "|---|---|---|---|"]
    for name, tag, err, islands in refused:
        L.append(f"| {name} | {tag} | {err.replace('|', '/')} | {', '.join(islands) or '-'} |")
    out.write_text(text + "\n".join(L) + "\n")
    print(f"wrote {out} (refusals)")


def write(path, eq_rows, attr_rows, vela_rows, args):
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    L = ["# NPU targets: fully-integer TFLite, LiteRT, Arm Ethos-U via Vela (issue 22)", "",
         f"`python scripts/bench_npu.py --models {' '.join(args.models)} --views {args.views} "
         f"--attribute-views {args.attribute_views} --calib {args.calib}`; minmax plans, batch 1.", "",
         "## Export", "", "| model | bits | TFLite ops | channels whose TFLite multiplier != plan's | export s |",
         "|---|---|---|---|---|"]
    for name, tag, _, _, _, mm, _, ops, es in attr_rows:
        L.append(f"| {name} | {tag} | {', '.join(f'{k} {v}' for k, v in ops.items())} | {mm} | {es:.2f} |")
    L += ["", "## LiteRT 2.3 vs the NumPy integer reference (model outputs, integer by integer)", "",
          "| model | bits | LiteRT kernels | equal | share | max abs diff | top-1 equal |", "|---|---|---|---|---|---|---|"]
    for name, tag, r, eq, tot, share, mx, top, n in eq_rows:
        L.append(f"| {name} | {tag} | {r} | {eq}/{tot} | {100 * share:.2f} % | {mx} | {top}/{n} |")
    L += ["", "Op by op (each plan layer recomputed by the reference on LiteRT's own inputs, BUILTIN_REF "
          "kernels): every differing element, and how many TFLite's documented arithmetic reproduces "
          "(gemmlowp double-rounding requantize with the multiplier TFLite derives from the exported "
          "scales, int32 accumulator; MEAN: Q31 multiplier integer-divided by the count).", "",
          "| model | bits | elements | differ | reproduced by TFLite's formula | differing by op |", "|---|---|---|---|---|---|"]
    for name, tag, n, d, e, _, by, _, _ in attr_rows:
        L.append(f"| {name} | {tag} | {n} | {d} | {e} | {', '.join(f'{k} {v}' for k, v in by.items() if v)} |")
    L += ["", "## Vela 5.2 estimates (Vela's performance model, not measurements; from its summary CSV)", "",
          "| model | bits | NPU | system config / memory mode | clock MHz | cycles (Vela est.) | "
          "inference ms (Vela est.) | SRAM bytes | DRAM bytes | off-chip flash bytes | NPU ops | CPU ops |",
          "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, tag, e in vela_rows:
        L.append(f"| {name} | {tag} | {e.target} | {e.system_config} / {e.memory_mode} | {e.core_clock_hz / 1e6:.0f} | "
                 f"{e.cycles_total} | {e.estimated_ms:.4f} | {e.sram_bytes} | {e.dram_bytes} | {e.off_chip_flash_bytes} | "
                 f"{e.npu_ops} | {', '.join(e.cpu_ops) or 'none'} |")
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        fig, axes = plt.subplots(1, len(args.models), figsize=(5 * len(args.models), 3.5), squeeze=False)
        for ax, name in zip(axes[0], args.models):
            rows = [(f"{e.target}\n{tag}", e.estimated_ms) for n, tag, e in vela_rows if n == name]
            ax.bar([r[0] for r in rows], [r[1] for r in rows])
            ax.set_title(f"{name}: Vela-estimated latency")
            ax.set_ylabel("ms (Vela estimate)")
            ax.tick_params(axis="x", labelsize=7)
        fig.tight_layout()
        fig.savefig(out.with_suffix(".png"), dpi=110)
        L += ["", f"![Vela-estimated latency]({out.with_suffix('.png').name})"]
    except ImportError:
        pass
    out.write_text("\n".join(L) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
