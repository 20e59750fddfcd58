"""digits_vit benchmark: baseline vs CWAC vs the reconstruction methods, compiled next to ONNX Runtime int8.

Per bit width (W8A8, W4A8, W4A4, W2A4): the baseline plan (observer chosen on calibration data),
then each method fitted on the first 3/4 of the protocol's calibration set (256 training images).
Scored on the evaluation split (the 540 test images: top-1 accuracy and top-1 agreement with FP32)
and on the held-out last 1/4 of the calibration set (the seen-scene / unseen-scene check: for
digits both come from one distribution, so a large gap means the method fitted the calibration
images rather than the task). Compiled latency on x86-host (VNNI kernels where the CPU has them,
untuned, batch 1, median of 20) for every plan next to the baseline's, with the Relax op and
constant counts compared (zero-cost check) and compiled == simulation on one image; ONNX Runtime's
int8 quantize_static (QDQ, per-channel s8 weights, u8 activations, MinMax on the same 192 images)
of the same model in the same run, with its accuracy and latency. A method that fails on this
model is recorded with its error, not dropped. Writes results/vit.md (+ .json).

Usage: .venv/bin/python scripts/bench_vit.py [--bits W8A8 W4A4] [--methods baseline cwac ...]
       [--iters N] [--no-latency] [--out PATH]
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))

import tvmptq  # noqa: E402
from bench_reconstruction import _compiled, _latency  # noqa: E402
from tvmptq.api import AUTO_SELECT_SAMPLES, QuantizedModel, apply_method, select_observer  # noqa: E402
from tvmptq.eval.sets import batches, run_outputs, score, torch_runner  # noqa: E402
from tvmptq.quant.calibrate import collect_statistics  # noqa: E402
from tvmptq.util import peak_rss_mb  # noqa: E402

MODEL = "digits_vit"
BITS = ["W8A8", "W4A8", "W4A4", "W2A4"]
METHODS = ["baseline", "cwac", "adaround", "brecq", "waps:in_mixed"]
TARGETS = {"W8A8": 0.5, "W4A4": 5.0}  # points of accuracy below FP32 allowed (issue 26)


def _data(args):
    model = tvmptq.load(MODEL)
    evalset = tvmptq.get_set("digits")
    calib = tuple(np.asarray(a[:args.calib_samples]) for a in evalset.calibration())
    n_fit = len(calib[0]) * 3 // 4
    fit, held = tuple(a[:n_fit] for a in calib), tuple(a[n_fit:] for a in calib)
    evals = tuple(np.asarray(a) for a in evalset.evaluation())
    return model, evalset, fit, held, evals, np.asarray(evalset.labels())


def ort_row(model, fit, evals, labels, ref, lat_x) -> dict:
    """ONNX Runtime int8 of the same model: export (dynamo, opset 18), quantize_static, run."""
    import torch

    from tvmptq.peers import OrtRunner, export_onnx, ort_quantize_static
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = export_onnx(model.build(), (torch.from_numpy(fit[0][:1]),), Path(tmp) / "vit.onnx", ["input"])
        t0 = time.perf_counter()
        q = ort_quantize_static(fp32, Path(tmp) / "vit_int8.onnx", [{"input": x[None]} for x in fit[0]])
        seconds = time.perf_counter() - t0
        run = OrtRunner(q)
        out = run(*evals)
        s = score("classification", ref, out, labels)
        return {"model": MODEL, "bits": "W8A8", "method": "ort int8 (quantize_static)", "observer": "MinMax",
                "primary": "top1_agreement", **s, "held_out": None, "fit_seconds": seconds,
                "peak_rss_mb": peak_rss_mb(), "latency_ms": _latency(run, lat_x)}


def bench(tag: str, args, data) -> list[dict]:
    model, evalset, fit, held, evals, labels = data
    graph = tvmptq.prepare(model)
    ref = run_outputs(torch_runner(graph.gm), evals, 32, "fp32", False)
    ref_held = run_outputs(torch_runner(graph.gm), held, 32, "fp32", False)
    w, a = int(tag[1]), int(tag[3])
    observers, _ = collect_statistics(graph, batches(fit, 32))
    rule, plan, sim, _ = select_observer(graph, observers, tvmptq.make_config(w, a, "minmax"),
                                         tuple(x[:AUTO_SELECT_SAMPLES] for x in fit), 32, model.name)
    base = QuantizedModel(model, graph, plan, sim)
    lat_x = tuple(x[:1] for x in evals)
    if not args.no_latency:
        import relay_passes as rp
        imported = rp.Canonicalize()(rp.import_model(model.build(), model.example_inputs(1)))
        base_run, base_ops, base_consts = _compiled(base.plan, imported)
    rows = []
    for method in args.methods:
        meth, _, reading = method.partition(":")
        opts = {"samples": len(fit[0]), "seed": args.seed, **({"iters": args.iters} if args.iters else {}),
                **({"reading": reading} if reading else {})}
        row = {"model": MODEL, "bits": tag, "observer": rule, "method": method, "primary": "top1_agreement"}
        t0 = time.perf_counter()
        try:
            qm = apply_method(base, fit, meth, opts, progress=False)
        except Exception as err:  # recorded: which method does not run on a ViT, and why
            row["error"] = f"{type(err).__name__}: {str(err).splitlines()[0][:200]}"
            rows.append(row)
            print(json.dumps(row), flush=True)
            continue
        row["fit_seconds"] = time.perf_counter() - t0
        out = run_outputs(qm.runner(), evals, 32, method, False)
        row.update(score(evalset.task, ref, out, labels))
        row["held_out"] = score(evalset.task, ref_held, run_outputs(qm.runner(), held, 32, method, False))["top1_agreement"]
        row["peak_rss_mb"] = peak_rss_mb()
        if not args.no_latency:
            run, ops, consts = (base_run, base_ops, base_consts) if meth == "baseline" else _compiled(qm.plan, imported)
            row.update(same_ops=ops == base_ops, same_constants=consts == base_consts,
                       compiled_equals_sim=bool(np.array_equal(run(*lat_x), qm.runner()(*lat_x))),
                       latency_ms=_latency(run, lat_x), base_latency_ms=_latency(base_run, lat_x))
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def _fmt(v, d=1):
    return "-" if v is None or (isinstance(v, float) and np.isnan(v)) else f"{v:.{d}f}"


def write_md(rows, fp32: dict, path: Path, seconds: float) -> None:
    lines = ["# digits_vit: W8A8 to W2A4, baseline vs CWAC vs reconstruction, next to ONNX Runtime int8", "",
             f"`scripts/bench_vit.py {' '.join(sys.argv[1:])}` (`make bench-vit`), {seconds / 60:.1f} min under "
             "load (2 cores shared by several agents: wall times and latencies are loaded-machine figures). "
             f"FP32: top-1 accuracy {fp32['accuracy']:.1f} % on the 540 test images. Methods fitted on the "
             "first 192 of the 256 calibration images; **eval** = top-1 agreement with FP32 (%) on the test "
             "split, **held-out** = the same on the last 64 calibration images (seen/unseen check), "
             "**acc** = top-1 accuracy (%), **dacc** = acc - FP32. Latency: batch 1, median of 20, x86-host "
             "(VNNI where present) untuned, default threads; the baseline compiled in the same run; ONNX "
             "Runtime (CPU provider, default threads) on its own int8 QDQ model.", "",
             "| bits | method | eval | held-out | acc | dacc | fit s | same ops/consts | compiled == sim "
             "| latency ms (baseline) |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['bits']} | {r['method']} | fails: {r['error']} | | | | | | | |")
            continue
        lat = _fmt(r.get("latency_ms"), 3) + (f" ({_fmt(r.get('base_latency_ms'), 3)})" if "base_latency_ms" in r else "")
        same = f"{r['same_ops']}/{r['same_constants']}" if "same_ops" in r else "-"
        lines.append(f"| {r['bits']} | {r['method']} | {_fmt(r['top1_agreement'])} | {_fmt(r['held_out'])} "
                     f"| {_fmt(r['accuracy'])} | {_fmt(r['accuracy'] - fp32['accuracy'], 1)} | {_fmt(r['fit_seconds'])} "
                     f"| {same} | {r.get('compiled_equals_sim', '-')} | {lat} |")
    lines += ["", "Targets (issue 26): W8A8 within 0.5 pt of FP32 accuracy; W4A4 with the best method within 5 pt."]
    for tag, allowed in TARGETS.items():
        got = [r for r in rows if r["bits"] == tag and "accuracy" in r and not r["method"].startswith("ort")]
        if got:
            best = max(got, key=lambda r: r["accuracy"])
            gap = fp32["accuracy"] - best["accuracy"]
            lines.append(f"- {tag}: best {best['method']} {best['accuracy']:.1f} % ({gap:+.1f} pt below FP32): "
                         f"{'met' if gap <= allowed else 'MISSED'}")
    lines.append("- Why a missed W4A4 target is missed: results/vit_sensitivity.md (`scripts/vit_sensitivity.py`: "
                 "accuracy with each group of activation tensors alone at 4 / alone at 8 bits).")
    path.write_text("\n".join(lines) + "\n")
    path.with_suffix(".json").write_text(json.dumps({"fp32": fp32, "rows": rows}, indent=1))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--bits", nargs="+", default=BITS)
    p.add_argument("--methods", nargs="+", default=METHODS)
    p.add_argument("--iters", type=int, default=None, help="reconstruction iterations (default: ReconConfig's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--calib-samples", type=int, default=256)
    p.add_argument("--no-latency", action="store_true")
    p.add_argument("--no-ort", action="store_true")
    p.add_argument("--out", default=str(REPO / "results" / "vit.md"))
    args = p.parse_args()
    # TensorizeDot names the attention matmuls it leaves to TVM's generic loops on every compile.
    warnings.filterwarnings("ignore", message="TensorizeDot")
    t0 = time.perf_counter()
    data = _data(args)
    model, evalset, fit, held, evals, labels = data
    graph = tvmptq.prepare(model)
    ref = run_outputs(torch_runner(graph.gm), evals, 32, "fp32", False)
    fp32 = {"accuracy": 100.0 * float((ref.argmax(1) == labels).mean())}
    rows = [] if args.no_ort else [ort_row(model, fit, evals, labels, ref, tuple(x[:1] for x in evals))]
    for tag in args.bits:
        rows += bench(tag, args, data)
        write_md(rows, fp32, Path(args.out), time.perf_counter() - t0)
    write_md(rows, fp32, Path(args.out), time.perf_counter() - t0)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
