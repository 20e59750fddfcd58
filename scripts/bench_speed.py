"""Writes results/speed.md (+ .json, .png): batch-1 latency of the zoo on this machine, in one run.

    python scripts/bench_speed.py                                   # make bench-speed: everything
    python scripts/bench_speed.py --models digits_resnet --no-tune --no-arm --repeat 5 --out /tmp/speed.md
    python scripts/bench_speed.py --models digits_vit --no-tune --merge   # add one model to speed.md
    python scripts/bench_speed.py --peers-only --no-tune --models efficientnet_lite0 digits_resnet  # LiteRT section
    python scripts/bench_speed.py --models minilm_l6 --no-tune --merge --no-arm --wide res_ln_proj12  # wide preset

--merge keeps the other models (latency, tuning, kernel proof, Arm rows, profile) from the --out json
and adds this run's; the report lists each run (command, date, minutes, its models) under the header.
--wide (tvmptq/cli_wide.py: a preset of tvmptq/quant/tensor_groups.PRESETS or NAME=BITS, repeatable)
builds the int8 plans with those activation tensors widened (QuantConfig.tensor_bits; 12-bit tensors run
in the int16 dot-product kernels, relay_passes/tensorize) and keys the rows '<model> wide:<specs>'.
--peers-only times LiteRT int8 next to TVM int8 in one run and writes only its own section of the report
(targets/speed_peers.py); models the fully-integer TFLite export refuses are listed with the reason.

Per model (EfficientNet-Lite0, MiniLM at sequence length 128, digits), batch 1, 1 and 2 threads, each
(engine, model, thread count) measured in a fresh process (targets/speed.py): PyTorch FP32, ONNX
Runtime FP32, ONNX Runtime int8 (its own ``quantize_static``: QDQ, uint8 activations, per-channel
symmetric int8 weights, MinMax on 64 protocol calibration samples), ONNX Runtime on tvmptq's QDQ export
of the W8A8 plan, TVM FP32 tuned, TVM int8 untuned and tuned (the program ``tvmptq compile`` builds for
x86-host: linears and convs as VNNI kernels, channels last), and TVM int8 without the dot-product kernels.
Then the ratios, the kernel proof (targets/kernel_proof.py: share of conv/matmul multiply-adds in
tensorized kernels, confirmed in the built library's assembly, and the standalone requantize kernels
left), bit-exactness of every TVM int8 build against the NumPy reference, guest instruction counts of
FP32 vs int8 on two Arm targets under qemu-user (a proxy) with the dot-product instructions in the
aarch64 code, and a per-layer TVM vs ONNX Runtime profile of EfficientNet-Lite0.

Tuning: the model's budget (targets.tune.ZOO_BUDGETS, FP32 and int8 alike: digits 64, EfficientNet-Lite0
256, MiniLM 128 trials; ``--trials``/``--cover``/``--chunk`` override it) tops up this CPU's committed databases ``targets/tuned/<cpu>/x86-host-<model>-<fp32|int8>-b1`` (it
resumes; a database already holding the trials is skipped in seconds), then builds with them;
``--no-tune`` uses what is on disk: this CPU's database, else one tuned on another x86 CPU (the report
names the CPU each was tuned on), else untuned.

Expected run time on the 2-core host, with the databases already tuned: about 45-60 min (model
preparation and ONNX/QDQ exports ~5 min, 48 latency processes ~15 min, the Arm instruction counts
~20-25 min, most of it EfficientNet-Lite0 and MiniLM under qemu; ``--no-arm`` skips them). Tuning from
scratch adds about 5 s per trial and variant (64 trials: ~5 min per model and variant).
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
import warnings
from pathlib import Path

import numpy as np

from bench_speed_builds import REPO, T0, add_litert, bit_exact, budget, host_stamp, log, measure_jobs, tvm_build

MODELS = ("efficientnet_lite0", "minilm_l6", "digits_resnet", "digits_vit")
ARM_TARGETS = ("cortex-a76", "neoverse-v1")


# ------------------------------------------------------------------------------------- preparation
def _onnx_input_names(path) -> list[str]:
    import onnx
    m = onnx.load(str(path), load_external_data=False)
    inits = {i.name for i in m.graph.initializer}
    return [i.name for i in m.graph.input if i.name not in inits]


def kernel_proof(base, tensorized, fused_base, fused_tens, asm: dict, T) -> dict:
    """targets.kernel_proof for the plain and the tensorized int8 program (see there)."""
    from targets import kernel_proof as kp
    mn = kp.DOT_MNEMONICS["x86_64"]
    out = {}
    share = kp.mac_share(base)
    out["int8, no dot kernels"] = {
        **{k: share[k] for k in ("layers", "tensorized_layers", "share", "consistent", "total_macs")},
        "asm_share": {"untuned": kp.asm_mac_share(fused_base, asm["plain"], None, mn)},
        "requantize": kp.standalone_requantize(fused_base)}
    share = kp.mac_share(base, tensorized)
    confirmed = {}
    for build in ("untuned", "tuned"):
        counts = kp.kernel_mnemonics(asm[build], share["kernels"], mn)
        missing = [k for k, c in counts.items() if not c or not any(c.values())]
        confirmed[build] = {"kernels": len(counts), "with_dot": len(counts) - len(missing), "missing": missing,
                            "instructions": {k: sum((c or {}).values()) for k, c in counts.items()}}
    out["int8 tensorized"] = {
        **{k: share[k] for k in ("layers", "tensorized_layers", "share", "consistent", "total_macs", "kernels")},
        "confirmed": confirmed,
        "asm_share": {b: kp.asm_mac_share(fused_tens, asm[b], tensorized, mn) for b in ("untuned", "tuned")},
        "requantize": kp.standalone_requantize(fused_tens)}
    return out


def _wide_suffix(args, prefix: str, sep: str) -> str:
    """The --wide specs in a key or folder name ('' without --wide)."""
    return prefix + sep.join(s.replace("=", "") for s in args.wide) if getattr(args, "wide", None) else ""


def prepare_model(name: str, args, work: Path, res: dict) -> dict:
    """Plan, modules, ONNX files and TVM libraries of one model; the kernel proof, the bit-exactness
    and the tuning databases' state go into ``res``. Returns ``{"specs": engine -> worker spec,
    "mods", "plan", "xs"}``."""
    import torch

    import targets
    from targets import kernel_proof as kp
    from targets.build import compile_module
    from targets.compare import prepare_batch1
    from targets.speed import describe_qdq
    from tvmptq.export import export_qdq_onnx
    from tvmptq.peers import export_onnx, ort_quantize_static

    t = targets.get("x86-host")
    T = t.tvm_target()
    from tvmptq import cli_wide
    islands = tuple(args.integer_islands)
    tensor_bits = cli_wide.tensor_bits(args)
    d = work / (name + ("-int-" + "-".join(islands) if islands else "") + _wide_suffix(args, "-wide-", "-"))
    t0 = time.perf_counter()
    prep = prepare_batch1(name, args.calib_samples, d, t, integer_islands=islands, tensor_bits=tensor_bits)
    model, data, plan, mods, tens = prep.model, prep.data, prep.plan, prep.mods, prep.tensorized
    params, evaluation, xs = prep.params, prep.evaluation, prep.xs
    if islands:
        res["integer_islands"] = list(islands)
    if tensor_bits:
        res["tensor_bits"] = tensor_bits
        res["wide_tensors"] = sum(tq.bits > 8 for tq in plan.tensors.values())
    log(f"{name}: W8A8 plan ({args.calib_samples} calibration samples"
        + (f", integer islands {'+'.join(islands)}" if islands else "")
        + (f", {res['wide_tensors']} wide tensors ({tensor_bits})" if tensor_bits else "") + ") and Relax modules in "
        f"{time.perf_counter() - t0:.0f} s; int8 kernels on {t.name}: {prep.kernels or 'none'}")
    res["inputs"] = ", ".join(f"{str(p.name)} {list(x.shape)} {x.dtype}" for p, x in zip(params, xs))
    res["errors"] = {}
    base = {"inputs": str(d / "inputs.npz"), "repeat": args.repeat, "number": args.number,
            "warmup": args.warmup, "profile_dir": str(d / "profiles")}
    specs = {"torch_fp32": {**base, "engine": "torch_fp32", "kind": "torch", "model": name}}

    # LiteRT: tvmptq's fully-integer TFLite export of the same plan, fed its int8 input
    try:
        from tvmptq.export.tflite import export_tflite
        tfl = export_tflite(plan, d / "tvmptq_int8.tflite", batch=1)
        add_litert(specs, plan, tfl, evaluation, d, base, args, res)
    except Exception as err:  # noqa: BLE001 - reported (e.g. MiniLM's float islands have no integer TFLite form)
        res["errors"]["tvmptq TFLite export"] = f"{type(err).__name__}: {str(err)[:300]}"
        log(f"  tvmptq TFLite export / LiteRT failed: {str(err)[:200]}")

    # ONNX Runtime: FP32 export, its own quantize_static, and tvmptq's QDQ export of the same plan
    t0 = time.perf_counter()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fp32_onnx = export_onnx(model.build(), tuple(torch.from_numpy(np.array(x)) for x in xs), d / "fp32.onnx",
                                    [str(p.name) for p in params])
        specs["ort_fp32"] = {**base, "engine": "ort_fp32", "kind": "ort", "path": str(fp32_onnx)}
        names = _onnx_input_names(fp32_onnx)
        calib = [np.asarray(a[: args.ort_calib_samples]).astype(str(p.ty.dtype))
                 for a, p in zip(data.calibration(), params)]
        batches = [{nm: c[j:j + 1] for nm, c in zip(names, calib)} for j in range(len(calib[0]))]
        q = ort_quantize_static(fp32_onnx, d / "ort_int8.onnx", batches, method="MinMax")
        res["ort_int8_config"] = {**describe_qdq(q), "calibration": f"MinMax, {len(batches)} samples"}
        specs["ort_int8"] = {**base, "engine": "ort_int8", "kind": "ort", "path": str(q)}
    except Exception as err:  # noqa: BLE001 - reported, the other engines still run
        res["errors"]["onnx export / quantize_static"] = f"{type(err).__name__}: {str(err)[:300]}"
        log(f"  ONNX FP32 / quantize_static failed: {err}")
    try:
        qdq = export_qdq_onnx(plan, d / "tvmptq_qdq.onnx", batch=1)
        specs["ort_tvmptq_qdq"] = {**base, "engine": "ort_tvmptq_qdq", "kind": "ort", "path": str(qdq)}
    except Exception as err:  # noqa: BLE001
        res["errors"]["tvmptq QDQ export"] = f"{type(err).__name__}: {str(err)[:300]}"
        log(f"  tvmptq QDQ export failed: {err}")
    log(f"{name}: ONNX files in {time.perf_counter() - t0:.0f} s")

    # TVM: FP32 tuned, int8 (tensorized, as tvmptq compile builds it) untuned and tuned, plain int8
    t0 = time.perf_counter()
    tuning: dict = {}
    root = Path(args.db)
    ex = {"tvm_fp32_tuned": tvm_build(mods["fp32"], T, root, args, "fp32", tuning, name),
          "tvm_int8_untuned": compile_module(tens, T),
          "tvm_int8_tuned": tvm_build(tens, T, root, args, "int8", tuning, name),
          "tvm_int8_plain": compile_module(mods["int8"], T)}
    res["tuning"] = tuning
    for key, e in ex.items():
        path = d / f"{key}.so"
        e.export_library(str(path))
        specs[key] = {**base, "engine": key, "kind": "tvm", "path": str(path)}
    held = "; ".join(f"{v}: {i.get('trials_in_db', 0)} trials" for v, i in tuning.items())
    log(f"{name}: TVM builds in {time.perf_counter() - t0:.0f} s ({held})")

    t0 = time.perf_counter()
    fused_base, fused_tens = kp.fused(mods["int8"], T), kp.fused(tens, T)
    asm = {"plain": kp.library_asm(ex["tvm_int8_plain"]), "untuned": kp.library_asm(ex["tvm_int8_untuned"]),
           "tuned": kp.library_asm(ex["tvm_int8_tuned"])}
    res["kernel_proof"] = kernel_proof(mods["int8"], tens, fused_base, fused_tens, asm, T)
    res["categories"] = {n: kp.kernel_category(s, n) for n, s in kp.kernel_table(fused_tens).items()}
    del asm
    samples = prep.samples(args.exact_samples)
    res["bit_exact"] = bit_exact({"untuned (tensorized)": ex["tvm_int8_untuned"],
                                  "tuned (tensorized)": ex["tvm_int8_tuned"],
                                  "untuned, no dot kernels": ex["tvm_int8_plain"]}, plan, samples)
    tp = res["kernel_proof"]["int8 tensorized"]
    log(f"{name}: kernel proof and bit-exactness in {time.perf_counter() - t0:.0f} s: MAC share "
        f"{100 * tp['share']:.1f} %, confirmed {tp['confirmed']['tuned']['with_dot']}/{tp['confirmed']['tuned']['kernels']}, "
        f"bit-exact {[b['bit_exact'] for b in res['bit_exact']]}")
    return {"specs": specs, "mods": mods, "plan": plan, "xs": xs}


def arm_rows(name: str, prep: dict, args, work: Path) -> list[dict]:
    """FP32 vs int8 guest instructions per call on each Arm target (a proxy), with the dot-product
    instructions of the aarch64 code."""
    import targets
    from targets import kernel_proof as kp
    from targets import qemu
    from targets.build import compile_module, export
    from targets.compare import _for_target
    rows = []
    for tname in args.arm_targets:
        t = targets.get(tname)
        T = t.tvm_target()
        row = {"model": name, "target": tname}
        t0 = time.perf_counter()
        try:
            for var in ("fp32", "int8"):
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", UserWarning)
                    mod, note = _for_target(prep["mods"], var, t, prep["plan"])
                ex = compile_module(mod, T)
                lib = work / name / f"{var}_{tname}.so"
                export(ex, lib, t)
                ic = qemu.instruction_count(lib, prep["xs"], 1, calls=args.arm_calls)
                row[f"{var}_minsns"] = ic["guest_insns_per_call"] / 1e6
                row[f"{var}_objdump"] = kp.objdump_mnemonics(lib, kp.DOT_MNEMONICS["aarch64"])
                if var == "int8":
                    share = kp.mac_share(prep["mods"]["int8"], mod)
                    row.update(tensorized=f"{share['tensorized_layers']}/{share['layers']}", share=share["share"],
                               kernels_note=note, objdump=row["int8_objdump"],
                               kernel_dot=kp.kernel_mnemonics(kp.library_asm(ex), share["kernels"],
                                                              kp.DOT_MNEMONICS["aarch64"]))
        except Exception as err:  # noqa: BLE001 - one failed target does not stop the benchmark
            row["error"] = f"{type(err).__name__}: {str(err)[:200]}"
        row["seconds"] = time.perf_counter() - t0
        log(f"  arm {name} {tname}: " + (row["error"] if "error" in row else
            f"FP32 {row['fp32_minsns']:.1f} M, int8 {row['int8_minsns']:.1f} M insns/call, "
            f"int8 sdot {(row.get('objdump') or {}).get('sdot')} smmla {(row.get('objdump') or {}).get('smmla')}, {row['seconds']:.0f} s"))
        rows.append(row)
    return rows


def run_profile(name: str, prep: dict, res: dict, args, work: Path) -> dict:
    """Per-kernel TVM (int8 tuned) and per-node ORT (int8) profiles of one model."""
    from targets.speed import measure_in_subprocess
    out = {"model": name, "threads": args.profile_threads}
    for key, engine in (("tvm", "tvm_int8_tuned"), ("ort", "ort_int8")):
        spec = prep["specs"].get(engine)
        if spec is None:
            out[key] = {"engine": engine, "error": "engine not available"}
            continue
        r = measure_in_subprocess({**spec, "mode": "profile", "repeat": args.profile_runs, "number": 1},
                                  args.profile_threads, work / "workers")
        r["engine"] = engine
        if key == "tvm" and "kernels" in r:
            cats = res.get("categories", {})
            for k in r["kernels"]:
                k["category"] = "VM builtins (allocation, checks)" if k["name"].startswith("vm.builtin") else \
                    cats.get(k["name"], "other")
        out[key] = r
        log(f"  profile {name} {engine}: " + (r["error"] if "error" in r else f"wall {r['wall_ms']:.3f} ms per run"))
    return out


def _merged(result: dict, old_json: Path, models, profile_asked: bool = False) -> dict:
    """The earlier report's other models with this run's added; ``runs`` says which run made which rows.
    The earlier per-layer profile stays unless its model was re-measured or --profile-model asked for one
    (adding a small model must not replace EfficientNet-Lite0's profile)."""
    if not old_json.is_file():
        return result
    old = json.loads(old_json.read_text())
    keep = [n for n in old["models"] if n not in models]
    runs = old.get("runs") or [{"command": old.get("command"), "date": old.get("date"),
                                "minutes": round(old.get("seconds", 0) / 60, 1), "models": keep}]
    runs = [r for r in runs if set(r["models"]) - set(models)] + [
        {"command": result["command"], "date": result["date"], "minutes": round(result["seconds"] / 60, 1),
         "models": list(models)}]
    merged = {**old, "models": {**{n: old["models"][n] for n in keep}, **result["models"]},
              "budgets": {**old.get("budgets", {}), **result["budgets"]}, "runs": runs,
              "arm": [r for r in old.get("arm", []) if r["model"] not in models] + result.get("arm", [])}
    old_profile = old.get("profile", {}).get("model")
    if "profile" in result and (profile_asked or old_profile is None or old_profile in models):
        merged["profile"] = result["profile"]
    return merged


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    p.add_argument("--engines", nargs="+", default=None, help="only these engines (targets.speed.ENGINES keys)")
    p.add_argument("--trials", type=int, default=None,
                   help="tuning trials per model and variant, FP32 and int8 alike (default: targets.tune.ZOO_BUDGETS)")
    p.add_argument("--cover", type=int, default=None, help="trials every task gets first (targets.tune.tune)")
    p.add_argument("--chunk", type=int, default=None, help="trials per task after that, largest first")
    p.add_argument("--no-tune", dest="tune", action="store_false", help="use the databases on disk as they are")
    p.add_argument("--db", default=None, help="tuning database root (default: the committed targets/tuned)")
    p.add_argument("--repeat", type=int, default=30)
    p.add_argument("--number", type=int, default=5)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--calib-samples", type=int, default=64, help="calibration samples of the W8A8 plan")
    p.add_argument("--ort-calib-samples", type=int, default=64, help="calibration samples of ORT's quantize_static")
    p.add_argument("--exact-samples", type=int, default=8, help="evaluation samples of the bit-exactness check")
    p.add_argument("--arm-targets", nargs="+", default=list(ARM_TARGETS))
    p.add_argument("--arm-models", nargs="+", default=None, help="default: --models")
    p.add_argument("--arm-calls", type=int, default=2, help="calls per qemu run (raised until 3e8 instructions)")
    p.add_argument("--no-arm", action="store_true")
    p.add_argument("--profile-model", default=None, help="default: efficientnet_lite0 if measured, else the first model")
    p.add_argument("--profile-threads", type=int, default=1)
    p.add_argument("--profile-runs", type=int, default=20)
    p.add_argument("--work", default=str(REPO / "build" / "bench_speed"))
    p.add_argument("--out", default=str(REPO / "results" / "speed.md"))
    p.add_argument("--peers-only", action="store_true",
                   help="time only LiteRT int8 and TVM int8 (untuned, tuned from the databases on disk: forces "
                        "--no-tune) in one run, into their own section of <out> and key 'peers' of <out>.json; the "
                        "main tables are left as they are; models the TFLite export refuses are listed with the reason")
    p.add_argument("--merge", action="store_true", help="keep the other models' results from the --out json")
    p.add_argument("--integer-islands", nargs="+", default=[], choices=["softmax", "layernorm"],
                   help="plans with these islands in integer arithmetic (QuantConfig.integer_islands); the rows "
                        "are keyed '<model> int:<names>', beside the float-island rows of the same model")
    from tvmptq import cli_wide
    cli_wide.add_arguments(p)  # --wide: rows keyed '<model> wide:<specs>'
    args = p.parse_args(argv)
    cli_wide.tensor_bits(args)  # a bad spec fails here, before any work

    import onnxruntime
    import torch
    import tvm

    from targets.speed import ENGINES
    from targets.speed_report import write_report
    from targets.tuning_db import SHIPPED
    args.db = args.db or str(SHIPPED)
    if args.peers_only:
        args.tune = False  # never tunes: the databases on disk, as the main --no-tune run
        from bench_speed_peers import run_peers
        return run_peers(args)
    engines = [e for e in ENGINES if args.engines is None or e[0] in args.engines]
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    result = {"command": " ".join(["scripts/bench_speed.py"] + (sys.argv[1:] if argv is None else list(argv))),
              **host_stamp(),
              "versions": {"tvm": tvm.__version__, "onnxruntime": onnxruntime.__version__, "torch": torch.__version__,
                           "python": platform.python_version()},
              "budgets": {n: dict(zip(("trials", "cover", "chunk"), budget(n, args))) for n in args.models},
              "tune": args.tune,
              "repeat": args.repeat, "number": args.number, "warmup": args.warmup, "threads": args.threads,
              "batch": 1, "engines": [list(e) for e in engines], "models": {}}
    preps = {}
    # a model's key in the report: integer-island runs sit beside the float-island rows
    label = {n: n + (f" int:{'+'.join(args.integer_islands)}" if args.integer_islands else "")
             + _wide_suffix(args, " wide:", "+") for n in args.models}
    for name in args.models:
        log(f"== {label[name]}: preparing")
        res = result["models"].setdefault(label[name], {})
        preps[label[name]] = prepare_model(name, args, work, res)
        if res.get("ort_int8_config") and "ort_int8_config" not in result:
            c = res["ort_int8_config"]
            result["ort_int8_config"] = (f"{c['format']}, activations {'/'.join(c['activation_dtypes'])}, "
                                         f"{c['per_channel_weights']}/{c['int8_weights']} int8 weights per channel, "
                                         f"symmetric weights: {c['symmetric_weights']}; calibration {c['calibration']}")

    jobs = [(th, label[name], key) for th in args.threads for name in args.models for key, _ in engines
            if key in preps[label[name]]["specs"]]
    measure_jobs(jobs, {n: p["specs"] for n, p in preps.items()}, result["models"], work)
    for name in args.models:  # engines that could not be built are listed as failed, not left blank
        for th in args.threads:
            lat = result["models"][label[name]].setdefault("latency", {}).setdefault(str(th), {})
            for key, _ in engines:
                if key not in lat:
                    lat[key] = {"error": "; ".join(result["models"][label[name]].get("errors", {}).values())
                                or "not built"}

    prof_model = args.profile_model or ("efficientnet_lite0" if "efficientnet_lite0" in args.models else args.models[0])
    if label.get(prof_model) in preps and not args.integer_islands and not args.wide:
        log(f"== per-layer profile: {prof_model}")
        result["profile"] = run_profile(prof_model, preps[prof_model], result["models"][prof_model], args, work)

    if not args.no_arm:
        from targets import qemu
        why = qemu.missing()
        if why:
            log(f"== arm: skipped ({why})")
            result["arm"] = [{"model": "-", "target": "-", "error": why}]
        else:
            log("== arm: instruction counts under qemu-user (a proxy)")
            result["arm"] = []
            for name in args.arm_models or args.models:
                if name in label:  # rows keyed like the latency tables (integer-island runs included)
                    rows = arm_rows(name, preps[label[name]], args, work)
                    result["arm"] += [{**r, "model": label[name]} for r in rows]

    result["seconds"] = time.perf_counter() - T0
    if args.merge:
        result = _merged(result, Path(args.out).with_suffix(".json"), [label[n] for n in args.models],
                         args.profile_model is not None)
    out = write_report(result, Path(args.out))
    log(f"wrote {out} ({result['seconds'] / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
