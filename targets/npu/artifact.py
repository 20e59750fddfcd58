"""The artifact ``tvmptq compile --target ethos-u55-128`` (and the other NPU rows) writes:

    model.tflite                 the fully-integer TFLite export of the plan (batch 1)
    vela/<...>_vela.tflite       Vela's output: the NPU command stream as an ethos-u custom op
    vela/<...>_summary_*.csv     Vela's summary (cycles, inference time, SRAM/DRAM/flash traffic)
    vela/<...>_per-layer.csv     Vela's per-layer estimates
    vela/vela_stdout.txt         Vela's log (which ops it put on the CPU, if any)
    partition.txt / .json        the TVM-side partition: which ops the NPU runs, which fall back
    plan.npz, manifest.json, report.md

Every cycle count and time is Vela's performance-model estimate, labelled so. Before anything is
written the plan is checked: an op the NPU cannot run (named, with the rule it breaks) is an
error unless ``allow_cpu_fallback``; activations below 8 bits are always refused by name.
"""
from __future__ import annotations

import hashlib
import json
import shutil
import time
from pathlib import Path

import numpy as np

from tvmptq.errors import ModelError

from .capabilities import check_llvm, partition
from .ethos_u import compile_vela
from .litert import compare_outputs


class NPUUnsupportedError(ModelError):
    """The model has ops the NPU target cannot run (each named, with why)."""


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def check_inputs(model, n: int = 8) -> np.ndarray:
    """A few evaluation samples of the model's protocol set, else its example input."""
    from tvmptq.eval.sets import DEFAULT_SET
    import tvmptq
    name = DEFAULT_SET.get(model.name)
    if name is not None:
        return np.asarray(tvmptq.get_set(name).evaluation()[0][:n], np.float32)
    return np.asarray(model.example_inputs(1)[0], np.float32)


def npu_partition(model, plan, target, inputs=None, check: bool = True):
    """Lower the plan at batch 1 and partition it for ``target``; ``check``: with the llvm
    bit-exact check on ``inputs`` (default: a few samples of the model's set). Returns
    (Partition, the unpartitioned module)."""
    import warnings

    import relay_passes as rp
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        mod = rp.lower(model.build(), model.example_inputs(1), plan)
    part = partition(mod, plan, target)
    if check:
        check_llvm(part, mod, plan, check_inputs(model) if inputs is None else inputs)
    return part, mod


def refuse(part, model_name: str, allow_cpu_fallback: bool) -> None:
    """Raise NPUUnsupportedError naming every op the NPU cannot run (sub-8-bit activations always)."""
    cpu = part.fallbacks
    low = [e for e in cpu if "-bit activations" in e.reason]
    if low or (cpu and not allow_cpu_fallback):
        shown = low or cpu
        raise NPUUnsupportedError(
            f"{part.target} cannot run {len(shown)} op(s) of {model_name}: "
            + "; ".join(f"{e.name!r} ({e.kind}): {e.reason}" for e in shown)
            + ("" if low else " (--allow-cpu-fallback writes the artifact with these ops on the CPU)"))


def compile_npu_artifact(model, plan, out_dir, target, plan_file=None, source: str = "",
                         allow_cpu_fallback: bool = False, litert_samples: int = 8) -> dict:
    """Check, export, compile with Vela and write the artifact; returns the manifest."""
    from tvmptq.export.tflite import export_tflite
    import targets as registry
    t = registry.get(target) if isinstance(target, str) else target
    t0 = time.perf_counter()
    xs = check_inputs(model, max(litert_samples, 1))
    part, mod = npu_partition(model, plan, t, check=False)
    refuse(part, model.name, allow_cpu_fallback)  # before any compile: the refusal is quick
    check_llvm(part, mod, plan, xs)
    if part.bit_exact is False or part.matches_reference is False:
        raise ModelError(f"the partitioned program for {t.name} is not bit-exact on llvm "
                         f"(vs unpartitioned: {part.bit_exact}, vs NumPy reference: {part.matches_reference})")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ex = export_tflite(plan, out / "model.tflite", batch=1)
    vela = compile_vela(ex.path, t, out / "vela")
    litert = compare_outputs(plan, ex, xs, resolvers=("BUILTIN_REF",))[0] if litert_samples else None
    (out / "partition.txt").write_text(part.text() + "\n")
    (out / "partition.json").write_text(json.dumps(part.as_dict(), indent=2) + "\n")
    if plan_file is not None and Path(plan_file).is_file():
        shutil.copyfile(plan_file, out / "plan.npz")
    else:
        plan.save(out / "plan.npz")
    files = [out / "model.tflite", Path(vela.optimized_tflite), Path(vela.summary_csv), Path(vela.per_layer_csv),
             out / "vela" / "vela_stdout.txt", out / "partition.txt", out / "partition.json", out / "plan.npz"]
    npu = t.extra["npu"]
    manifest = {
        "format": "tvmptq-npu-artifact/1", "model": model.name, "source": source or f"zoo:{model.name}",
        "plan": {"config": plan.config.get("name"), "sha256": _sha256(out / "plan.npz")},
        "target": {"name": t.name, "arch": t.arch, "accelerator": npu["accelerator"],
                   "system_config": npu["system_config"], "memory_mode": npu["memory_mode"]},
        "batch": 1, "tflite_ops": ex.op_counts(), "multiplier_mismatch_channels": sum(ex.multiplier_mismatch.values()),
        "partition": {"npu_ops": sum(e.on_npu for e in part.report), "cpu_ops": [e.name for e in part.fallbacks],
                      "bit_exact_llvm": part.bit_exact, "matches_reference": part.matches_reference},
        "vela_estimate": {**{k: v for k, v in vela.as_dict().items() if k not in ("summary_csv", "optimized_tflite",
                                                                                 "per_layer_csv")},
                          "estimated_ms": vela.estimated_ms,
                          "note": "Vela's performance-model estimate, not a measurement"},
        "litert_vs_reference": None if litert is None else
        {"kernels": litert.resolver, "equal": litert.equal, "total": litert.total, "max_abs_diff": litert.max_abs,
         "top1_equal": litert.top1_equal, "samples": litert.samples},
        "files": {str(f.relative_to(out)): _sha256(f) for f in files if f.is_file()},
        "seconds": time.perf_counter() - t0,
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    (out / "report.md").write_text(_report_md(manifest, part) + "\n")
    return manifest


def _report_md(m: dict, part) -> str:
    v, lr = m["vela_estimate"], m["litert_vs_reference"]
    lines = [f"# {m['model']} ({m['plan']['config']}) for {m['target']['name']}", "",
             f"Vela {m['target']['accelerator']}, system config {m['target']['system_config']}, memory mode "
             f"{m['target']['memory_mode']}; batch 1.", "",
             "| Vela estimate (not measured) | value |", "|---|---|",
             f"| cycles (est.) | {v['cycles_total']} |", f"| inference ms at {v['core_clock_hz'] / 1e6:.0f} MHz (est.) | "
             f"{v['estimated_ms']:.4f} |", f"| SRAM bytes | {v['sram_bytes']} |", f"| DRAM bytes | {v['dram_bytes']} |",
             f"| off-chip flash bytes | {v['off_chip_flash_bytes']} |", f"| NPU ops / CPU ops (Vela) | {v['npu_ops']} / "
             f"{', '.join(v['cpu_ops']) or 'none'} |", "",
             "TFLite ops: " + ", ".join(f"{k} {n}" for k, n in m["tflite_ops"].items()), ""]
    if lr:
        lines += [f"LiteRT ({lr['kernels']}) vs the NumPy integer reference: {lr['equal']}/{lr['total']} output "
                  f"integers equal, max abs diff {lr['max_abs_diff']}, top-1 equal {lr['top1_equal']}/{lr['samples']}", ""]
    lines += ["## TVM-side partition", "", "```", part.text(), "```"]
    return "\n".join(lines)
