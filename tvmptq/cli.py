"""The ``tvmptq`` command line. Errors print one clear line and exit non-zero (see errors.py)."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from . import cli_inputs, cli_islands, cli_npu, cli_qdq, cli_qft, cli_targets, cli_wide
from .errors import ConfigError, TvmptqError


def cmd_models(args) -> int:
    from .eval.sets import DEFAULT_SET, SETS
    from .zoo import get_model, list_models
    for name in list_models():
        m = get_model(name)
        s = DEFAULT_SET.get(name, "-")
        print(f"{name:20s} {m.task:15s} set={s:10s} {m.description}")
    print()
    for s in SETS.values():
        print(f"set {s.name:10s} {s.task:15s} {s.description}")
    return 0


def cmd_quantize(args) -> int:
    import tvmptq
    from .eval.sets import DEFAULT_SET, SETS

    config = tvmptq.make_config(args.wbits, args.abits, "minmax" if args.observer == "auto" else args.observer,
                                args.weight_rule, args.symmetric, args.percentile, args.first_last_8bit,
                                cli_inputs.parse_layer_overrides(args.layer), not args.no_bias_correction,
                                lookup_tables=not args.float_activations, tensor_bits=cli_wide.tensor_bits(args),
                                integer_islands=cli_islands.integer_islands(args))
    if args.out:  # a plan that cannot be written fails now, not after calibrating
        from .deploy.artifact import make_folder
        make_folder(Path(args.out).parent, "folder of --out")
    if cli_qdq.is_qdq(args.model) and not args.requantize:
        return cli_qdq.already_quantized(args, cli_inputs.input_shapes(args.input_shape))
    if args.requantize and not cli_qdq.is_qdq(args.model):
        raise ConfigError(f"--requantize is for quantized (QDQ) ONNX files; {args.model!r} is not one")
    model = cli_qdq.load_model(args.model, cli_inputs.input_shapes(args.input_shape))
    if args.requantize:
        print(f"requantizing {args.model} from its float weights (its Q/DQ nodes dequantized, folded ReLUs restored)")
    saved = tvmptq.QuantPlan.load(args.from_plan) if args.from_plan else None
    if saved is not None and saved.model != model.name:
        raise ConfigError(f"--from-plan {args.from_plan} was made for model {saved.model!r}; "
                          f"cannot apply --method {args.method} to {model.name!r}")
    calib = cli_inputs.calibration_arrays(args, model)
    t0 = time.perf_counter()
    quantize = tvmptq.quantize_auto if args.observer == "auto" else tvmptq.quantize
    methods = tvmptq.parse_method(args.method)        # bad names / combinations fail before any work
    if args.iters is not None and args.iters < 1:
        raise ConfigError(f"--iters must be at least 1, got {args.iters}")
    if args.iters is not None and not set(methods) & set(tvmptq.api.RECONSTRUCTION):
        raise ConfigError(f"--iters applies to adaround/brecq/waps, not to --method {args.method}")
    opts = {"samples": args.method_samples, "seed": args.seed, "drop_prob": args.qdrop,
            "reading": args.waps_reading} | ({"iters": args.iters} if args.iters is not None else {}) | (
        {"ridge": args.cwac_ridge, "target": args.cwac_target, "select_by": args.cwac_select}
        if "cwac" in methods else {}) | cli_qft.options(args, methods)
    if args.from_plan:
        base = tvmptq.from_plan(model, saved)
        qm = tvmptq.apply_method(base, calib, args.method, opts, progress=True)
    else:
        qm = quantize(model, calib, config, batch_size=args.batch_size, method=args.method, method_options=opts)
    plan = qm.plan
    for name in set(methods) & set(tvmptq.api.RECONSTRUCTION):
        info = plan.run_info.get(name, {})
        print(f"{name}: {len(plan.stats[name]['blocks'])} blocks reconstructed on {plan.stats[name]['samples']} "
              f"samples in {info.get('fit_seconds', float('nan')):.1f} s, peak RSS {info.get('peak_rss_mb', 0):.0f} MB "
              "(folded into integer weights, requantize multipliers/shifts, int32 biases and clip bounds)")
    if "cwac" in methods:
        st = plan.stats["cwac"]
        print(f"CWAC: {st['non_identity_channels']}/{st['channels']} channels compensated in "
              f"{st['fit_seconds']:.1f} s (folded into requantize multipliers and int32 biases)")
        if "selection" in st:
            sel = st["selection"]
            print(f"CWAC target chosen by {sel['by']}: {sel['chosen']} (on {sel['probe_samples']} "
                  f"{'held-out ' if sel['probe_held_out'] else ''}calibration samples, output SQNR dB "
                  + ", ".join(f"{k} {v:.2f}" for k, v in sel["probe_sqnr_db"].items())
                  + "".join(f"; task metric {k} {v:.4f}" for k, v in sel["probe_metric"].items()) + ")")
    cli_qft.summary(plan, methods)
    cli_wide.summary(plan)
    cli_islands.summary(plan)
    if "qwt" in methods:
        print(f"QwT v1: {plan.stats['qwt']['extra_params']} extra float parameters (float branches: "
              f"{', '.join(lp.name for lp in plan.layers if lp.attrs.get('float_branch'))})")
    print(f"quantized {model.name} at {plan.config.get('name', config.name)} ({plan.config['observer']} observer, "
          f"{len(plan.layers)} integer layers) in {time.perf_counter() - t0:.1f} s; "
          f"calibration samples {plan.stats['calibration_samples']}, peak RSS {plan.stats['peak_rss_mb']:.0f} MB")
    if qm.observer_scores:
        print("observer chosen on calibration data (output SQNR dB): "
              + ", ".join(f"{k} {v:.2f}" for k, v in qm.observer_scores.items()))
    if plan.float_islands:
        print(f"float islands ({len(plan.float_islands)}): {', '.join(plan.float_islands)}")
    clipped = {lp.name: lp.attrs["bias_clipped_channels"] for lp in plan.layers if "bias_clipped_channels" in lp.attrs}
    if clipped:
        print("warning: int32 bias saturated in " + ", ".join(f"{k} ({v} channels)" for k, v in clipped.items()))
    if plan.float_layers:
        print(f"layers left in float ({len(plan.float_layers)}): {', '.join(plan.float_layers)}")
    if args.report:
        print("\nPer-layer SQNR vs FP32 on calibration data, worst first:")
        print(qm.report(calib, max_samples=min(32, len(calib[0]))).split("\n\nFloat islands")[0]
              if args.report < 0 else "\n".join(qm.report(calib).splitlines()[:args.report + 2]))
    if args.out:
        path = plan.save(args.out)
        print(f"plan written to {path}")
    set_name = args.evaluate
    if set_name:
        set_name = DEFAULT_SET.get(model.name, "") if set_name == "default" else set_name
        evalset = SETS.get(set_name)
        if evalset is None:
            raise ConfigError(f"unknown evaluation set {set_name!r}; known: {', '.join(SETS)}")
        print()
        _evaluate_and_print(qm, evalset, args.batch_size)
    return 0


def _evaluate_and_print(qm, evalset, batch_size: int) -> None:
    """Score the simulated plan against FP32 on a protocol set's evaluation split."""
    from .api import fp32_outputs
    from .eval.sets import evaluate

    ref = fp32_outputs(qm.model, evalset.evaluation(), qm.graph, batch_size)
    _, metrics = evaluate(qm.runner(), evalset, ref, batch_size)
    print(f"{qm.model.name} {qm.plan.config.get('name')} on {evalset.name} (simulated vs FP32):")
    for k, v in metrics.items():
        print(f"  {k:24s} {v:9.3f}")


def cmd_evaluate(args) -> int:
    import tvmptq
    from .eval.sets import DEFAULT_SET, SETS
    model, plan, _ = cli_qdq.plan_for(args.model, args.plan, cli_inputs.input_shapes(args.input_shape), "evaluate")
    set_name = args.set or DEFAULT_SET.get(model.name)
    if set_name is None:
        raise ConfigError(f"model {model.name!r} has no default evaluation set: pass --set ({', '.join(SETS)})")
    if set_name not in SETS:
        raise ConfigError(f"unknown evaluation set {set_name!r}; known: {', '.join(SETS)}")
    qm = tvmptq.from_plan(model, plan)
    _evaluate_and_print(qm, SETS[set_name], args.batch_size)
    return 0


def cmd_compile(args) -> int:
    from .deploy import compile_artifact, preprocessing_for
    from .deploy.artifact import sha256_file
    from .deploy.report import kernel_summary
    from targets.build import resolve

    target = cli_targets.resolve_target(args)
    resolve(target, args.targets_file or ())  # an unknown target fails before any work
    model, plan, plan_file = cli_qdq.plan_for(args.model, args.plan, cli_inputs.input_shapes(args.input_shape))
    path = Path(args.model)
    source = f"{path.resolve()} (sha256 {sha256_file(path)})" if path.is_file() else f"zoo:{model.name}"
    if cli_npu.is_npu_target(target, args.targets_file or ()):  # Ethos-U: TFLite + Vela (issue 22)
        return cli_npu.compile_npu(args, model, plan, plan_file, source)
    pre = preprocessing_for(model, args.image_size, args.resize, cli_inputs.floats(args.mean, "--mean"), cli_inputs.floats(args.std, "--std"))
    database = cli_targets.tuning_database(args, target, model.name)
    t0 = time.perf_counter()
    m = compile_artifact(model, plan, args.out, args.batch, target, pre, source, plan_file=plan_file,
                         database=database, targets_file=args.targets_file or (), tensorize=not args.no_tensorize)
    if m["batch"] != args.batch:
        print(f"note: {model.name}'s graph fixes batch size {m['batch']}: compiled at that batch "
              f"(not --batch {args.batch}); `tvmptq run` feeds any number of samples in batches of it")
    print(f"compiled {model.name} {m['plan']['config']} for {target} (static batch {m['batch']}) in "
          f"{time.perf_counter() - t0:.1f} s: {kernel_summary(m)}")
    if m["float_islands"]:
        print(f"float islands ({len(m['float_islands'])}): {', '.join(m['float_islands'])}")
    if m["float_branches"]:
        print(f"float branches ({len(m['float_branches'])}, float64 islands): "
              + ", ".join(f"{b['layer']} ({b['kind']} {b['features']})" for b in m["float_branches"]))
    print(f"artifact written to {args.out}/ (model.so, plan.npz, manifest.json, report.md)")
    return 0


def cmd_targets(args) -> int:
    import json

    import targets
    table = targets.load(args.targets_file or ())
    if args.json:
        print(json.dumps([t.describe() for t in table.values()], indent=2))
        return 0
    print(targets.format_table(table))
    files = targets.user_files(args.targets_file or ())
    print(f"\nbuilt-in: {targets.REGISTRY_FILE}; user files: {', '.join(map(str, files)) or 'none'} "
          f"(--targets-file, $TVMPTQ_TARGETS or {targets.USER_FILE})")
    return 0


def cmd_tune(args) -> int:
    import targets
    from targets.tune import tune
    from targets.tuning_db import db_dir, default_root

    target = targets.get(cli_targets.resolve_target(args), args.targets_file or ())
    if target.is_cuda and not args.rpc_tracker:
        raise ConfigError(f"tuning {target.name} needs a GPU to measure on: pass --rpc-tracker/--rpc-key of a "
                          "machine with that GPU (this machine only builds CUDA code)")
    if target.cross and not args.rpc_tracker:
        raise ConfigError(f"tuning {target.name} needs the device to measure on: pass --rpc-tracker/--rpc-key "
                          "(times under qemu are not ARM times)")
    model, plan, _ = cli_qdq.plan_for(args.model, args.plan, cli_inputs.input_shapes(args.input_shape), "tune")
    if plan.model != model.name:
        raise ConfigError(f"plan was made for model {plan.model!r}; it does not fit {model.name!r}")
    from tvmptq.deploy.artifact import _lower
    _, mod = _lower(model, plan, args.batch, target, not args.no_tensorize)  # what compile builds
    folder = db_dir(args.db or default_root(), target.name)
    print(f"tuning {model.name} {plan.config.get('name')} (batch {args.batch}) for {target.name}: {args.trials} "
          f"trial(s) in chunks of {args.chunk}, database {folder}")
    t0 = time.perf_counter()
    r = tune(mod, target.tvm_target(), folder, args.trials, args.chunk, tracker=args.rpc_tracker,
             key=args.rpc_key or target.rpc_key, cover=args.cover)
    print(f"tuned {r['tasks_tuned']} of {r['tasks']} task(s): {r['trials_run']} trial(s) run now, "
          f"{r['trials_in_db']} record(s) in the database, {time.perf_counter() - t0:.0f} s. "
          f"`tvmptq compile ... --target {target.name}` now uses them.")
    return 0


def cmd_profile(args) -> int:
    import json

    from targets.profile import format_result, profile_artifact
    r = profile_artifact(args.artifact, args.repeat, args.number, args.warmup, args.rpc_tracker, args.rpc_key)
    if args.emulated:
        r["emulated"] = True
    print(json.dumps(r, indent=2) if args.json else format_result(r))
    if args.emulated:
        print("note: measured under emulation (qemu-user): NOT the device's latency")
    return 0


def cmd_compare(args) -> int:
    from targets.compare import run_compare
    out = Path(args.out)
    r = run_compare(args.models, args.targets, out.parent / (out.stem + "_work"), args.trials, args.chunk,
                    args.batch, args.calib_samples, args.repeat, args.number, args.warmup,
                    tuple(args.variants), out_md=out, cover=args.cover)
    print(f"{len(r['rows'])} row(s) in {r['seconds'] / 60:.1f} min: report written to {out} "
          f"(chart {out.with_suffix('.png')}, data {out.with_suffix('.json')})")
    return 0


def _print_predictions(outputs, labels, top_k: int, show: int) -> None:
    """Top-k classes with softmax probabilities, for the first ``show`` samples."""
    import numpy as np
    logits = np.asarray(outputs, np.float64)
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    top = np.argsort(-logits, axis=1, kind="stable")[:, :top_k]
    for i in range(min(show, len(logits))):
        print(f"  {labels[i]}: " + ", ".join(f"{c} ({probs[i, c]:.3f})" for c in top[i]))
    if len(logits) > show:
        print(f"  ... {len(logits) - show} more (see the output file)")


def cmd_run(args) -> int:
    import numpy as np

    from .deploy import load_artifact, load_inputs

    if args.top_k < 1 or args.show < 0:
        raise ConfigError(f"--top-k must be at least 1 and --show at least 0, got {args.top_k} and {args.show}")
    art = load_artifact(args.artifact)
    arrays, labels = load_inputs(art.path, art.manifest, args.input)
    t0 = time.perf_counter()
    outputs = art.run(*arrays)
    m = art.manifest
    print(f"ran {len(arrays[0])} sample(s) through {m['model']['name']} {m['plan']['config']} "
          f"({m['target']['requested']}, batch {art.batch}) in {time.perf_counter() - t0:.2f} s")
    first = outputs[0] if isinstance(outputs, tuple) else outputs
    if m["model"]["task"] == "classification" and first.ndim == 2:
        print(f"top-{min(args.top_k, first.shape[1])} classes (softmax probability):")
        _print_predictions(first, labels, min(args.top_k, first.shape[1]), args.show)
    else:
        print(f"{m['outputs'][0]['name']}: shape {first.shape}, mean L2 norm "
              f"{np.linalg.norm(first.reshape(len(first), -1), axis=1).mean():.4f}")
    if args.out:
        from .deploy.artifact import make_folder
        out = Path(args.out)
        make_folder(out.parent, "folder of -o")
        if isinstance(outputs, tuple):
            out = out.with_suffix(".npz")
            np.savez(out, **{o["name"]: v for o, v in zip(m["outputs"], outputs)})
        else:
            out = out if out.suffix == ".npy" else out.with_suffix(".npy")
            np.save(out, outputs)
        print(f"outputs written to {out}")
    return 0


def cmd_demo(args) -> int:
    from .demo import run_demo
    return run_demo(quick=args.quick)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tvmptq", description=(
        "Post-training quantization to integer-only programs (Apache TVM). "
        "Exit codes: 0 ok, 2 bad options, 3 bad data, 4 bad model."))
    sub = p.add_subparsers(dest="command", required=True)

    sub.add_parser("models", help="list zoo models and evaluation sets").set_defaults(func=cmd_models)

    q = sub.add_parser("quantize", help="calibrate and write a quantization plan")
    q.add_argument("model", help="zoo model name (see `tvmptq models`) or a path to an .onnx file (a QDQ file "
                                 "is already quantized: it is reported, see --requantize)")
    q.add_argument("--requantize", action="store_true",
                   help="for a QDQ ONNX file: dequantize its weights back to a float model and quantize that")
    q.add_argument("--calib", help="protocol set name, image folder, .npy/.npz file or .txt of sentences "
                                   "(default: the model's protocol set)")
    q.add_argument("--calib-samples", type=int, help="use only the first N calibration samples")
    q.add_argument("--wbits", type=int, default=8, help="weight bits, 2..8 (default 8)")
    q.add_argument("--abits", type=int, default=8, help="activation bits, 2..8 (default 8)")
    q.add_argument("--observer", default="auto", choices=["auto", "minmax", "percentile", "mse"],
                   help="activation range rule; auto picks the best on calibration data (default)")
    q.add_argument("--weight-rule", default="mse", choices=["mse", "minmax"], help="per-channel weight range rule")
    q.add_argument("--symmetric", action="store_true", help="symmetric activations (default asymmetric)")
    q.add_argument("--percentile", type=float, default=99.99, help="percentile for --observer percentile")
    q.add_argument("--first-last-8bit", action="store_true", help="keep first and last layer at 8 bits")
    q.add_argument("--no-bias-correction", action="store_true",
                   help="skip the empirical per-channel bias correction (on by default)")
    q.add_argument("--float-activations", action="store_true",
                   help="keep sigmoid, tanh, SiLU, hardswish, hardsigmoid, GELU, Mish, ELU, LeakyReLU as "
                        "declared float islands (default: integer lookup tables, input code -> output code)")
    q.add_argument("--method", default="baseline",
                   help="baseline | cwac | qwt | adaround | brecq | waps, or reconstruction+compensation "
                        "applied left to right (e.g. brecq+cwac). cwac: QwT-v2 per-channel affine folded "
                        "into requantize multipliers/int32 biases (zero cost); qwt: QwT v1 per-block float "
                        "linear branch (a declared float64 island); adaround: learned per-weight rounding, "
                        "layer-wise; brecq: block reconstruction (rounding + LSQ activation steps); waps: "
                        "BRECQ + power-of-two weight-activation product scaling (all folded into the plan); "
                        "cle: cross-layer equalization (alone or cle+qft); qft: joint finetuning of every stored "
                        "value, last (qft alone = cle+qft; e.g. cwac+qft, brecq+qft)")
    q.add_argument("--iters", type=int, help="reconstruction iterations per block, at most (adaround/brecq/waps; "
                   "default 2000; blocks past the compute cap ReconConfig.work run fewer)")
    q.add_argument("--seed", type=int, default=0, help="seed of the reconstruction's sample order (default 0)")
    q.add_argument("--waps-reading", default="in_mixed", choices=["out", "in", "in_mixed", "block"],
                   help="WAPS product-scale granularity (see tvmptq/algorithms/waps.py)")
    q.add_argument("--qdrop", type=float, default=0.0, help="QDrop probability during reconstruction (default 0)")
    cli_qft.add_arguments(q)
    cli_wide.add_arguments(q)
    cli_islands.add_arguments(q)
    q.add_argument("--from-plan", help="apply --method to this saved plan instead of calibrating a new one")
    q.add_argument("--method-samples", type=int, default=256, help="calibration samples used to fit --method")
    q.add_argument("--cwac-ridge", type=float, default=0.0, help="CWAC ridge towards identity (0: least squares)")
    q.add_argument("--cwac-target", default="auto", choices=["auto", "fp_stream", "same_input"],
                   help="CWAC fit target: the FP32 model's activation (fp_stream), the FP32 layer on the "
                        "quantized input (same_input), or auto: the better of both and of no compensation "
                        "on held-out calibration samples")
    q.add_argument("--cwac-select", default="sqnr", choices=["sqnr", "task"],
                   help="what --cwac-target auto ranks by on the held-out samples: model-output SQNR, or the "
                        "task's fidelity metric (top-1 agreement with FP32; mean cosine for embeddings)")
    q.add_argument("--layer", action="append", metavar="NAME=SPEC",
                   help="per-layer override: NAME=float, NAME=w4a8, NAME=w6 (repeatable)")
    q.add_argument("--out", help="write the plan (.npz)")
    q.add_argument("--report", type=int, default=10, help="print the N worst layers by SQNR (0: none, -1: all)")
    q.add_argument("--evaluate", nargs="?", const="default", help="evaluate on a protocol set afterwards")
    q.add_argument("--batch-size", type=int, default=32)
    _add_data_flags(q)
    q.set_defaults(func=cmd_quantize)

    e = sub.add_parser("evaluate", help="score a saved plan's simulation against FP32 on a protocol set")
    e.add_argument("model", help="zoo model name or .onnx file (a QDQ file needs no --plan)")
    e.add_argument("--plan", help="plan written by `tvmptq quantize --out` (default for a QDQ file: its own)")
    e.add_argument("--set", help="protocol set (default: the model's)")
    e.add_argument("--batch-size", type=int, default=32)
    e.add_argument("--input-shape", action="append", metavar="NAME=D0,D1,...")
    e.set_defaults(func=cmd_evaluate)

    c = sub.add_parser("compile", help="lower a plan to an integer-only TVM program: a deployable artifact folder")
    c.add_argument("model", help="zoo model name or a path to an .onnx file (as for quantize), or a QDQ .onnx "
                                 "file (ONNX Runtime quantize_static, PT2E export...), whose plan is read from it")
    c.add_argument("--plan", help="plan written by `tvmptq quantize --out` (not needed for a QDQ file)")
    c.add_argument("-o", "--out", required=True, help="artifact folder to write")
    c.add_argument("--batch", type=int, default=8, help="static batch of the compiled program (default 8)")
    c.add_argument("--target",
                   help="a target name from `tvmptq targets` (cross-compiles where needed), or a TVM target "
                        "string / JSON object (default: this machine, x86-host on x86 with its int8 kernels; "
                        "llvm for the generic build)")
    c.add_argument("--targets-file", action="append", help="TOML file of user targets (repeatable)")
    c.add_argument("--db", help="tuning database root (default $TVMPTQ_TUNE_DB or ~/.cache/tvmptq/tune); "
                                "schedules tuned for --target there are used")
    c.add_argument("--untuned", action="store_true", help="ignore any tuning database")
    c.add_argument("--no-tensorize", action="store_true",
                   help="build the plain lowering, without the target's tensorized int8 kernels (x86 VNNI)")
    cli_npu.add_compile_flags(c)
    _add_data_flags(c)
    c.set_defaults(func=cmd_compile)

    r = sub.add_parser("run", help="run a compiled artifact on images, a .npy/.npz or a .txt of sentences")
    r.add_argument("artifact", help="folder written by `tvmptq compile`")
    r.add_argument("--input", required=True, nargs="+", help="image files/folders, one .npy/.npz, or one .txt")
    r.add_argument("-o", "--out", help="write the outputs (.npy; .npz for several outputs)")
    r.add_argument("--top-k", type=int, default=5, help="classes shown per sample (classifiers)")
    r.add_argument("--show", type=int, default=10, help="samples printed (all are written to --out)")
    r.set_defaults(func=cmd_run)

    t = sub.add_parser("targets", help="list named compilation targets and their capabilities",
                       description="Built-in targets live in targets/registry.toml. Add your own in a TOML file of "
                                   "the same form (one [name] table with tvm = {kind = ...}, optional cross_cc, "
                                   "capabilities, rpc_key, qemu, note), named by --targets-file, $TVMPTQ_TARGETS "
                                   "or ~/.config/tvmptq/targets.toml.")
    t.add_argument("--targets-file", action="append", help="TOML file of user targets (repeatable)")
    t.add_argument("--json", action="store_true", help="machine-readable output")
    t.set_defaults(func=cmd_targets)

    tu = sub.add_parser("tune", help="MetaSchedule-tune a plan's integer program for a target (resumable)")
    tu.add_argument("model")
    tu.add_argument("--plan", help="plan written by `tvmptq quantize --out` (not needed for a QDQ file)")
    tu.add_argument("--target", help="a target name from `tvmptq targets` (default: this machine's, x86-host on x86)")
    tu.add_argument("--trials", type=int, default=64, help="measured trials in total (default 64)")
    tu.add_argument("--chunk", type=int, default=8, help="trials per task and chunk (default 8); finished "
                                                         "chunks survive an interrupted run")
    tu.add_argument("--cover", type=int, default=0, help="first give every task this many trials, then top the "
                                                          "largest up to --chunk (default 0: largest tasks only)")
    tu.add_argument("--no-tensorize", action="store_true", help="tune the plain lowering (as compile --no-tensorize)")
    tu.add_argument("--batch", type=int, default=8, help="static batch, as for compile (default 8)")
    tu.add_argument("--db", help="database root (default $TVMPTQ_TUNE_DB or ~/.cache/tvmptq/tune)")
    tu.add_argument("--rpc-tracker", help="HOST:PORT of a TVM RPC tracker to measure on remote devices")
    tu.add_argument("--rpc-key", help="device key at the tracker (default: the target's rpc_key)")
    tu.add_argument("--targets-file", action="append", help="TOML file of user targets (repeatable)")
    tu.add_argument("--input-shape", action="append", metavar="NAME=D0,D1,...")
    tu.set_defaults(func=cmd_tune)

    pr = sub.add_parser("profile", help="latency of a compiled artifact (median and spread after warm-up), "
                                        "here or through an RPC tracker")
    pr.add_argument("artifact", help="folder written by `tvmptq compile`")
    pr.add_argument("--repeat", type=int, default=20, help="timed repeats (default 20)")
    pr.add_argument("--number", type=int, default=5, help="calls averaged per repeat (default 5)")
    pr.add_argument("--warmup", type=int, default=3, help="untimed calls first (default 3)")
    pr.add_argument("--rpc-tracker", help="HOST:PORT of a TVM RPC tracker (default: run here)")
    pr.add_argument("--rpc-key", help="device key at the tracker (default: the artifact's target name)")
    pr.add_argument("--emulated", action="store_true", help="label the result as emulated (qemu server)")
    pr.add_argument("--json", action="store_true")
    pr.set_defaults(func=cmd_profile)

    cp = sub.add_parser("compare", help="one or more models across targets and variants: markdown table + bar chart")
    cp.add_argument("models", nargs="+", help="zoo model names")
    cp.add_argument("--targets", nargs="+", default=["x86-host", "cortex-a72", "neoverse-v1", "sm_87", "sm_90",
                                                     "ethos-u55-128", "ethos-u65-256", "ethos-u85-256"],
                    help="target names (x86: latency here; aarch64: qemu bit-exactness + instruction counts; "
                         "CUDA: nvcc validation; Ethos-U: Vela's estimates at W8A8 and W4A8, labelled so)")
    cp.add_argument("--variants", nargs="+", default=["fp32", "int8"], choices=["fp32", "int8"])
    cp.add_argument("--trials", type=int, default=0, help="MetaSchedule trials per model and variant on x86 (0: untuned only)")
    cp.add_argument("--chunk", type=int, default=8)
    cp.add_argument("--cover", type=int, default=0, help="trials every task gets first (see tune --cover)")
    cp.add_argument("--batch", type=int, default=1)
    cp.add_argument("--calib-samples", type=int, default=64)
    cp.add_argument("--repeat", type=int, default=20)
    cp.add_argument("--number", type=int, default=5)
    cp.add_argument("--warmup", type=int, default=3)
    cp.add_argument("-o", "--out", default="results/compare.md", help="markdown report (chart and JSON beside it)")
    cp.set_defaults(func=cmd_compare)

    d = sub.add_parser("demo", help="EfficientNet-Lite0 at W8A8 and W4A8: FP32 vs tvmptq vs ONNX Runtime")
    d.add_argument("--quick", action="store_true", help="fewer samples (a smoke run)")
    d.set_defaults(func=cmd_demo)
    return p


def _add_data_flags(p):
    g = p.add_argument_group("user data preprocessing (image folders)")
    g.add_argument("--image-size", type=int, default=224, help="centre crop size")
    g.add_argument("--resize", type=int, default=256, help="shorter side before the crop")
    g.add_argument("--mean", default="127,127,127", help="per-channel mean on 0-255 pixels")
    g.add_argument("--std", default="128,128,128", help="per-channel std on 0-255 pixels")
    g.add_argument("--npz-key", help="array name inside a .npz file")
    g.add_argument("--input-shape", action="append", metavar="NAME=D0,D1,...",
                   help="static shape for an ONNX input with dynamic dims")


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "quantize" and args.wbits is not None:
        from .quant.spec import check_bits
        try:
            check_bits(args.wbits, "weight")
            check_bits(args.abits, "activation")
        except TvmptqError as err:
            print(f"tvmptq: error: {err}", file=sys.stderr)
            return err.exit_code
    try:
        if getattr(args, "batch_size", 1) < 1:
            raise ConfigError(f"--batch-size must be at least 1, got {args.batch_size}")
        return args.func(args)
    except TvmptqError as err:
        print(f"tvmptq: error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("tvmptq: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
