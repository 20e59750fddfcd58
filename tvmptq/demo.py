"""`make demo`: EfficientNet-Lite0 at W8A8 and W4A8 on the protocol's photos, FP32 vs tvmptq vs
ONNX Runtime, in one table.

tvmptq: one streaming calibration pass; the activation observer is chosen per bit width on
calibration data (output SQNR). ONNX Runtime: quantize_static (QDQ, per-channel int weights, uint
activations) with its Percentile calibrator, the best of its four under this protocol
(results/baseline.md), calibrated once and reused for both bit widths.

It ends where deployment starts: the W8A8 plan is compiled by TVM to an integer-only program
(`tvmptq compile`), loaded back from its artifact folder alone (`tvmptq run`) and scored on the
same views, next to the simulation, with the share of samples whose output integers are
identical to the simulation's (the contract: they all should be).
"""
from __future__ import annotations

import logging
import platform
import tempfile
import time
from pathlib import Path

import torch

MODEL = "efficientnet_lite0"
CONFIGS = ((8, 8), (4, 8))
ORT_METHOD = "Percentile"
COMPILED = (8, 8)  # the plan compiled and run at the end
ARTIFACT_DIR = Path("build") / "demo" / "efficientnet_lite0_w8a8"
# The registry's host target on x86 (this CPU's name, its int8 dot-product kernels where it has
# them: VNNI); plain llvm elsewhere. `tvmptq compile --target` chooses for other machines.
DEMO_TARGET = "x86-host" if platform.machine() in ("x86_64", "AMD64") else "llvm"


def _row(name, metrics, seconds=None):
    cells = [f"{metrics[k]:.1f}" for k in ("top1_agreement", "top5_contains_ref_top1")]
    cells += [f"{metrics['kl_mean']:.4f}", f"{metrics['sqnr_db']:.2f}", "-" if seconds is None else f"{seconds:.0f}"]
    return f"| {name} | " + " | ".join(cells) + " |"


def _compiled_rows(model, plan, evals, ref, sim_out, sim_metrics, sim_secs, folder: Path, batch_size: int):
    """Compile ``plan``, reload the artifact from disk, score it: (table rows, identical-integer line)."""
    from tvmptq.deploy import compile_artifact, load_artifact
    from tvmptq.eval.sets import run_outputs, score

    t0 = time.perf_counter()
    compile_artifact(model, plan, folder, batch=8, target=DEMO_TARGET)
    compile_s = time.perf_counter() - t0
    art = load_artifact(folder)  # only model.so + manifest + plan from here on
    t0 = time.perf_counter()
    out = run_outputs(art.run, evals, batch_size, "compiled")
    run_s = time.perf_counter() - t0
    w, a = COMPILED
    got, want = art.integers(out), art.integers(sim_out)
    same = (got == want).all(axis=1)
    rows = [_row(f"tvmptq W{w}A{a} simulated (PyTorch)", sim_metrics, sim_secs),
            _row(f"tvmptq W{w}A{a} compiled (TVM {DEMO_TARGET}, integer-only)", score("classification", ref, out), run_s)]
    line = (f"compiled program: {int(same.sum())}/{len(same)} samples ({100 * same.mean():.1f} %) with output integers "
            f"identical to the simulation (max difference {int(abs(got - want).max())} LSB); compiled in "
            f"{compile_s:.0f} s")
    return rows, line


def run_demo(quick: bool = False, batch_size: int = 32) -> int:
    import tvmptq
    from tvmptq.api import AUTO_SELECT_SAMPLES, select_observer
    from tvmptq.eval.sets import batches, run_outputs, score, torch_runner
    from tvmptq.peers import OrtRunner, export_onnx, ort_quantize_static_with_stats
    from tvmptq.quant.calibrate import collect_statistics

    torch.set_num_threads(2)
    model = tvmptq.load(MODEL)
    photos = tvmptq.get_set("photos")
    calib, evals = photos.calibration(), photos.evaluation()
    if quick:
        calib, evals = tuple(a[:64] for a in calib), tuple(a[:64] for a in evals)
    print(f"EfficientNet-Lite0 (ImageNet weights), {len(calib[0])} calibration / {len(evals[0])} "
          "evaluation views of the bundled photos (EVAL_PROTOCOL.md)")
    graph = tvmptq.prepare(model)
    ref = run_outputs(torch_runner(graph.gm), evals, batch_size, "fp32")
    rows = [_row("FP32 (PyTorch)", score("classification", ref, ref))]

    t0 = time.perf_counter()
    observers, _ = collect_statistics(graph, batches(calib, batch_size))
    stats_s = time.perf_counter() - t0
    probe = tuple(a[:AUTO_SELECT_SAMPLES] for a in calib)
    ours, kept = {}, {}
    for w, a in CONFIGS:
        t1 = time.perf_counter()
        rule, plan, sim, _ = select_observer(graph, observers, tvmptq.make_config(w, a), probe, batch_size, MODEL)
        calib_s = stats_s + time.perf_counter() - t1
        t2 = time.perf_counter()
        out = run_outputs(torch_runner(sim), evals, batch_size, f"tvmptq W{w}A{a}")
        ours[(w, a)] = (rule, score("classification", ref, out), calib_s)
        if (w, a) == COMPILED:
            kept = {"plan": plan, "sim_out": out, "sim_secs": time.perf_counter() - t2}

    theirs = {}
    # ORT logs one line per 4-bit bias that overflows int32 (its bias scale s_x * s_w gets tiny);
    # the figures below already include that effect.
    logging.getLogger().setLevel(logging.ERROR)
    with tempfile.TemporaryDirectory(prefix="tvmptq-demo-") as tmp:
        tmp = Path(tmp)
        fp32 = export_onnx(model.build(), tuple(torch.from_numpy(x[:1].copy()) for x in calib),
                           tmp / "fp32.onnx", list(model.input_names))
        feeds = [{model.input_names[0]: calib[0][i:i + 1]} for i in range(len(calib[0]))]
        cache = tmp / "ranges.json"
        for w, a in CONFIGS:
            path, stats = ort_quantize_static_with_stats(fp32, tmp / f"w{w}a{a}.onnx", feeds, ORT_METHOD,
                                                         w, a, calibration_cache_path=cache)
            out = OrtRunner(path, threads=2)(*evals)
            theirs[(w, a)] = (score("classification", ref, out), stats.seconds)

    for w, a in CONFIGS:
        rule, metrics, secs = ours[(w, a)]
        rows.append(_row(f"tvmptq W{w}A{a} ({rule} observer)", metrics, secs))
        metrics, secs = theirs[(w, a)]
        rows.append(_row(f"ONNX Runtime W{w}A{a} ({ORT_METHOD})", metrics, secs))
    print()
    print("| model | top-1 agreement % | top-5 contains FP32 top-1 % | KL (nats) | logit SQNR dB | calibration s |")
    print("|---|---|---|---|---|---|")
    print("\n".join(rows))
    print("\nMetrics against FP32 PyTorch on the evaluation views; tvmptq rows are the integer-exact "
          "simulation of the quantization plan; no layer kept at higher precision.")

    print(f"\nCompiling the W{COMPILED[0]}A{COMPILED[1]} plan to an integer-only TVM program ({DEMO_TARGET}) and "
          "running it from its artifact folder...")
    with tempfile.TemporaryDirectory(prefix="tvmptq-demo-art-") as tmp:
        folder = Path(tmp) / "artifact" if quick else ARTIFACT_DIR
        rows, line = _compiled_rows(model, kept["plan"], evals, ref, kept["sim_out"], ours[COMPILED][1],
                                    kept["sim_secs"], folder, batch_size)
    print()
    print("| program | top-1 agreement % | top-5 contains FP32 top-1 % | KL (nats) | logit SQNR dB | run s |")
    print("|---|---|---|---|---|---|")
    print("\n".join(rows))
    print(line)
    if not quick:
        print(f"Artifact: {folder}/ (model.so, plan.npz, manifest.json, report.md); "
              f"try `tvmptq run {folder} --input photo.jpg`")
    return 0
