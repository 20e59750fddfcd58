"""NPU rows of the cross-target report (targets/compare.py, ``tvmptq compare``, results/targets.md).

Per model and weight width (W8A8; W4A8: 4-bit weights on int8 containers, which Vela compiles as
int8), per Ethos-U target of the registry: the fully-integer TFLite export, LiteRT (reference
kernels) against the NumPy integer reference, Vela's compile and its estimates (cycles, inference
time at the configured clock, SRAM/DRAM/flash traffic, the ops it leaves on the CPU), and the
TVM-side partition with its llvm bit-exact check. Times are Vela's performance-model *estimates*;
the row says so (``latency_kind``), and the estimate is checked against Vela's own summary CSV
(``inference_time`` there = ``cycles_total / core_clock``).
"""
from __future__ import annotations

import csv
import time
from pathlib import Path

import numpy as np


def _summary_consistent(e) -> bool:
    """The time read from Vela's summary CSV is its cycles over its clock (the CSV read right)."""
    with open(e.summary_csv) as f:
        row = next(csv.DictReader(f))
    t = float(row["inference_time"])
    return abs(t - e.inference_time_s) <= 1e-12 and abs(t - float(row["cycles_total"]) / float(row["core_clock"])) <= 1e-3 * t


def npu_rows(model, plan8, set_name: str, npu_targets, work, calib_samples: int = 64, wbits=(8, 4),
             litert_samples: int = 16, log=print) -> list[dict]:
    """Rows for ``model`` on each NPU target (see the module doc); ``plan8``: the W8A8 plan the
    other targets use (the W4A8 plan is made here with the same calibration)."""
    import tvmptq
    from tvmptq.export.tflite import export_tflite

    from .artifact import npu_partition
    from .capabilities import check_llvm
    from .ethos_u import compile_vela
    from .litert import compare_outputs

    work = Path(work)
    s = tvmptq.get_set(set_name)
    xs = np.asarray(s.evaluation()[0][:litert_samples], np.float32)
    rows = []
    for wb in wbits:
        if wb == 8 and plan8 is not None:
            plan = plan8
        else:
            calib = tuple(a[:calib_samples] for a in s.calibration())
            plan = tvmptq.quantize(model, calib, tvmptq.make_config(wb, 8), progress=False).plan
        variant = f"w{wb}a8"
        t0 = time.perf_counter()
        ex = export_tflite(plan, work / f"{model.name}_{variant}.tflite", batch=1)
        lr = compare_outputs(plan, ex, xs, resolvers=("BUILTIN_REF",))[0]
        checked = {}  # composite kinds of a partition already run on llvm -> its result
        for t in npu_targets:
            part, mod = npu_partition(model, plan, t, check=False)
            key = tuple((e.name, e.on_npu) for e in part.report)
            if key in checked:
                part.bit_exact, part.matches_reference = checked[key][1:]
                same_as = checked[key][0]
            else:
                check_llvm(part, mod, plan, xs[:4])
                checked[key], same_as = (t.name, part.bit_exact, part.matches_reference), ""
            e = compile_vela(ex.path, t, work / f"{model.name}_{variant}_{t.name}")
            rows.append({
                "model": model.name, "variant": variant, "target": t.name, "arch": "ethos-u", "batch": 1,
                "latency_kind": "Vela estimate", "vela_est_ms": e.estimated_ms, "vela_cycles": e.cycles_total,
                "clock_mhz": e.core_clock_hz / 1e6, "system_config": e.system_config, "memory_mode": e.memory_mode,
                "sram_bytes": e.sram_bytes, "dram_bytes": e.dram_bytes, "flash_bytes": e.off_chip_flash_bytes,
                "vela_npu_ops": e.npu_ops, "vela_cpu_ops": list(e.cpu_ops),
                "vela_summary_checked": _summary_consistent(e),
                "partition_npu_ops": sum(x.on_npu for x in part.report),
                "partition_cpu_ops": [f"{x.name}: {x.reason}" for x in part.fallbacks],
                "partition_bit_exact_llvm": part.bit_exact, "partition_matches_reference": part.matches_reference,
                "partition_checked_as": same_as,
                "litert_equal": lr.equal, "litert_total": lr.total, "litert_max_abs": lr.max_abs,
                "litert_top1": f"{lr.top1_equal}/{lr.samples}",
                "seconds": time.perf_counter() - t0})
            r = rows[-1]
            log(f"  {model.name} {variant} {t.name}: {r['vela_est_ms']:.4f} ms (Vela estimate), "
                f"{r['vela_cycles']} cycles, partition {r['partition_npu_ops']} NPU / {len(r['partition_cpu_ops'])} CPU, "
                f"bit-exact {r['partition_bit_exact_llvm']}")
    return rows


def npu_section(rows: list[dict]) -> list[str]:
    """The markdown section of the cross-target report for the NPU rows."""
    npu = [r for r in rows if r["arch"] == "ethos-u"]
    if not npu:
        return []
    lines = ["## Arm Ethos-U NPUs (Vela 5.2: latencies are Vela's performance-model estimates, not measurements)\n",
             "Fully-integer TFLite export of the plan, compiled by Vela for the registry's system config and memory "
             "mode; the estimate is the one in Vela's summary CSV (checked: inference time = cycles / clock). "
             "Partition: the TVM-side FuseOpsByPattern partition under the NPU's capability table "
             "(targets/npu/ethos_u_ops.toml), its partitioned program run on llvm and compared with the "
             "unpartitioned one and the NumPy reference. LiteRT: the same .tflite in LiteRT's reference kernels "
             "vs the NumPy integer reference (every difference is TFLite's double-rounding requantize: "
             "results/npu.md).\n",
             "| model | variant | target | est. ms (Vela) | est. cycles (Vela) | MHz | SRAM B | DRAM B | flash B | "
             "Vela NPU / CPU ops | TVM partition NPU / CPU | partitioned bit-exact (llvm) | LiteRT == reference | "
             "LiteRT top-1 |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in npu:
        lines.append(
            f"| {r['model']} | {r['variant']} | {r['target']} | {r['vela_est_ms']:.4f} | {r['vela_cycles']} | "
            f"{r['clock_mhz']:.0f} | {r['sram_bytes']} | {r['dram_bytes']} | {r['flash_bytes']} | "
            f"{r['vela_npu_ops']} / {', '.join(r['vela_cpu_ops']) or '0'} | {r['partition_npu_ops']} / "
            f"{'; '.join(r['partition_cpu_ops']) or '0'} | {r['partition_bit_exact_llvm']}"
            f"{' (same partition as ' + r['partition_checked_as'] + ')' if r.get('partition_checked_as') else ''} | "
            f"{r['litert_equal']}/{r['litert_total']} (max diff {r['litert_max_abs']}) | {r['litert_top1']} |")
    lines.append("")
    return lines


def cross_target_chart(rows: list[dict], path: Path) -> str:
    """int8 latency per model: x86 measured (tuned where there is a tuned row) next to each NPU's
    Vela estimate (hatched) at W8A8 and W4A8; returns the file name. Arm (qemu: an instruction-count
    proxy) and CUDA (no GPU here) have no latency to draw."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    models = list(dict.fromkeys(r["model"] for r in rows))
    fig, axes = plt.subplots(1, len(models), figsize=(5.5 * len(models), 4), squeeze=False)
    for ax, m in zip(axes[0], models):
        bars = []
        for r in rows:
            if r["model"] != m:
                continue
            if r.get("variant") == "int8" and "untuned_ms" in r:
                tuned = "tuned_ms" in r
                bars.append((f"{r['target']}\nint8 {'tuned' if tuned else 'untuned'}\n(measured)",
                             r.get("tuned_ms", r["untuned_ms"]), False))
            elif r["arch"] == "ethos-u":
                bars.append((f"{r['target']}\n{r['variant']}\n(Vela est.)", r["vela_est_ms"], True))
        xs = np.arange(len(bars))
        for i, (_, v, est) in enumerate(bars):
            ax.bar(i, v, color="tab:orange" if est else "tab:blue", hatch="//" if est else None)
            ax.text(i, v, f"{v:.3g}", ha="center", va="bottom", fontsize=7)
        ax.set_xticks(xs, [b[0] for b in bars], fontsize=6)
        ax.set_yscale("log")
        if bars:
            ax.set_ylim(min(b[1] for b in bars) / 3, max(b[1] for b in bars) * 2)
        ax.set_ylabel("ms per inference, batch 1")
        ax.set_title(f"{m}: x86 measured vs Ethos-U estimated (Vela)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path).name
