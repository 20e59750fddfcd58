"""``results/speed.md`` (and its .json and .png) from a scripts/bench_speed.py result dict: the latency
tables and ratios, the tuning databases, the kernel proof, bit-exactness, the Arm instruction counts
and the per-layer profile (targets/speed.py measures; the tests build a synthetic result).

    write_report(result, Path("results/speed.md"))   # re-renders speed.md byte for byte from speed.json
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .latency_format import format_ms, format_ratio, latency_ratio
from .speed import ENGINES, LABELS


def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:.1f} %"


def ratios(result: dict) -> list[dict]:
    """Per model and thread count: TVM FP32 tuned / TVM int8 tuned and ORT int8 / TVM int8 tuned
    (above 1: the int8 TVM program is faster)."""
    out = []
    for name, m in result["models"].items():
        for th, lat in m.get("latency", {}).items():
            q = lat.get("tvm_int8_tuned")
            out.append({"model": name, "threads": int(th), "vs_tvm_fp32": latency_ratio(lat.get("tvm_fp32_tuned"), q),
                        "vs_ort_int8": latency_ratio(lat.get("ort_int8"), q), "vs_ort_fp32": latency_ratio(lat.get("ort_fp32"), q),
                        "vs_litert_int8": latency_ratio(lat.get("litert_int8"), q)})
    return out


def write_report(result: dict, out_md) -> Path:
    """results/speed.md (and .json next to it, and the .png chart) from a benchmark result dict
    (scripts/bench_speed.py builds it; the tests build a synthetic one)."""
    out_md = Path(out_md)
    out_md.parent.mkdir(parents=True, exist_ok=True)
    engines = [tuple(e) for e in result.get("engines", ENGINES)]
    models = result["models"]
    threads = result.get("threads", [1, 2])
    v = result.get("versions", {})
    lines = ["# Speed: batch-1 latency, kernel proof, bit-exactness\n",
             f"Host: `{result.get('cpu_model', '?')}` (TVM target CPU `{result.get('host_cpu', '?')}`), "
             f"{result.get('cores', '?')} cores. TVM {v.get('tvm', '?')}, ONNX Runtime {v.get('onnxruntime', '?')}, "
             f"PyTorch {v.get('torch', '?')}. Run on {result.get('date', '?')}, took "
             f"{result.get('seconds', 0) / 60:.1f} min (`{result.get('command', 'scripts/bench_speed.py')}`).\n",
             f"Batch 1; median of {result.get('repeat', '?')} timed samples, each the mean of "
             f"{result.get('number', '?')} calls, after {result.get('warmup', '?')} warm-up calls; IQR in brackets; "
             "ms. Every (engine, model, thread count) runs in a fresh process with TVM_NUM_THREADS / "
             "OMP_NUM_THREADS, torch.set_num_threads and ORT intra_op_num_threads set.\n",
             "Tuning: MetaSchedule (XGBoost cost model), the same trial budget for FP32 and int8: "
             + ("trials per model (cover, chunk) " + ", ".join(
                 f"{n} {b['trials']} ({b['cover']}, {b['chunk']})" for n, b in result.get("budgets", {}).items())
                + ", topping up the committed databases (targets/tuned)" if result.get("tune", True) else
                "`--no-tune`: the databases on disk as they are")
             + "; the trials each database holds, and the CPU it was tuned on, are listed under the tables "
               "(a database may hold more than the budget from earlier runs).\n"]
    if result.get("runs"):  # models merged from several runs (scripts/bench_speed.py --merge)
        lines += ["Models by run (the header's settings are each run's defaults unless its command says otherwise):\n"] + [
            f"- {', '.join(r['models'])}: `{r['command']}`, {r['date']}, {r['minutes']} min" for r in result["runs"]] + [""]
    cfg = result.get("ort_int8_config")
    if cfg:
        lines.append(f"ORT int8: `quantize_static` {cfg}.\n")
    lines.append("Engines: " + "; ".join(f"**{label}**" for _, label in engines)
                 + ". TVM int8 = the W8A8 plan's integer-only program; *untuned* / *tuned* are the program "
                   "`tvmptq compile` builds for x86-host (linears and convs as tensorized dot-product "
                   "kernels); *no dot kernels* is the plain lowering (no hand kernels), untuned.\n")
    lite = [(n, m["litert_vs_reference"]) for n, m in models.items() if m.get("litert_vs_reference")]
    if lite:
        lines.append("LiteRT int8: ai-edge-litert running tvmptq's fully-integer TFLite export of the same W8A8 plan "
                     "(default kernels, XNNPACK, num_threads set), timed from its int8 input (the float input's "
                     "quantize is not in the timed call; TVM's program includes it); outputs vs the NumPy integer "
                     "reference: " + "; ".join(
                         f"{n} {r['equal']}/{r['total']} equal, max diff {r['max_abs']}, top-1 "
                         f"{r['top1_equal']}/{r['samples']}" for n, r in lite)
                     + " (the differences are TFLite's requantize rounding: results/npu.md).\n")
    for th in threads:
        lines += [f"## Latency, {th} thread{'s' if th > 1 else ''} (ms, median (IQR))\n",
                  "| model | " + " | ".join(label for _, label in engines) + " |",
                  "|---|" + "---|" * len(engines)]
        for name, m in models.items():
            lat = m.get("latency", {}).get(str(th), {})
            lines.append(f"| {name} | " + " | ".join(format_ms(lat.get(k)) for k, _ in engines) + " |")
        lines.append("")
    errors = [(name, th, k, r["error"]) for name, m in models.items() for th, lat in m.get("latency", {}).items()
              for k, r in lat.items() if r and "error" in r]
    if errors:
        lines += ["Failed measurements:\n"] + [f"- {n}, {LABELS.get(k, k)}, {th} thread(s): {e}" for n, th, k, e in errors]
        lines.append("")
    tuning = [(name, var, t) for name, m in models.items() for var, t in m.get("tuning", {}).items()]
    if tuning:
        lines.append("Tuning databases: " + "; ".join(
            f"{name} {var}: {t.get('trials_in_db', t.get('records', 0))} trials"
            + (f" tuned on `{t['tuned_on']}` in {t.get('tuning_seconds_total', 0) / 60:.0f} min" if t.get("tuned_on") else "")
            + (f" (**not this host's CPU**: its schedules applied here, not tuned for it)"
               if t.get("tuned_on") and t["tuned_on"] != result.get("host_cpu") else "")
            + (", " + t["note"] if t.get("note") else "")
            for name, var, t in tuning) + ".\n")

    lines += ["## Ratios (TVM int8 tuned is faster when above 1)\n"]
    for r in ratios(result):
        lines.append(f"- {r['model']}, {r['threads']} thread(s): TVM FP32 tuned / TVM int8 tuned = "
                     f"{format_ratio(r['vs_tvm_fp32'])}; ORT int8 / TVM int8 tuned = {format_ratio(r['vs_ort_int8'])}; "
                     f"ORT FP32 / TVM int8 tuned = {format_ratio(r['vs_ort_fp32'])}"
                     + (f"; LiteRT int8 / TVM int8 tuned = {format_ratio(r['vs_litert_int8'])}"
                        if r.get("vs_litert_int8") is not None else ""))
    eff = [r for r in ratios(result) if r["model"] == "efficientnet_lite0"]
    if eff:
        wins = all((r["vs_tvm_fp32"] or 0) > 1 and (r["vs_ort_int8"] or 0) > 1 for r in eff)
        lines.append("\nEfficientNet-Lite0: TVM int8 tuned " + ("beats" if wins else "does **not** beat")
                     + " both TVM FP32 tuned and ORT int8 at every thread count measured"
                     + ("." if wins else "; the per-layer profile below shows where the time goes."))
    lines.append("")

    lines += ["## Kernel proof (x86-host)\n",
              "MAC share (report): multiply-adds of the conv/matmul layers TensorizeDot tensorized / all "
              "conv/matmul multiply-adds, from shapes (`targets/kernel_proof.py`; *consistent*: tensorized "
              "plus the conv/matmul left add up to the total). *dot kernels confirmed*: tensorized kernels "
              "whose code in the built library holds `vpdpbusd` (`vpdpwssd`: int16 inputs of wide presets) (untuned build / tuned build). *MACs in code "
              "with vpdpbusd*: share of multiply-adds in kernels whose compiled code holds the instruction "
              "at all (LLVM's own loop vectorizer also emits it, in its 128-bit `{vex}` form). *standalone "
              "requantize*: fused kernels that shift right in int64 and read an int32 input but hold no "
              "conv/matmul (after a conv/matmul / after another op, e.g. a mean's sum).\n",
              "| model | variant | conv/matmul layers | tensorized | MAC share (report) | consistent | "
              "dot kernels confirmed (untuned / tuned) | MACs in code with vpdpbusd (untuned / tuned) | "
              "standalone requantize (after conv/matmul / other) |",
              "|---|---|---|---|---|---|---|---|---|"]
    for name, m in models.items():
        for var, p in m.get("kernel_proof", {}).items():
            conf = p.get("confirmed", {})
            conf_txt = " / ".join(f"{c['with_dot']}/{c['kernels']}" if c else "-"
                                  for c in (conf.get("untuned"), conf.get("tuned")))
            asm = p.get("asm_share", {})
            asm_txt = " / ".join(_pct(asm[k]["share"]) if asm.get(k) else "-" for k in ("untuned", "tuned"))
            rq = p.get("requantize", [])
            n_conv = sum(r["after_conv_matmul"] for r in rq)
            lines.append(f"| {name} | {var} | {p.get('layers', '-')} | {p.get('tensorized_layers', '-')} | "
                         f"{_pct(p.get('share'))} | {p.get('consistent', '-')} | {conf_txt} | {asm_txt} | "
                         f"{n_conv} / {len(rq) - n_conv} |")
    lines.append("")
    lone = [(name, var, r) for name, m in models.items() for var, p in m.get("kernel_proof", {}).items()
            for r in p.get("requantize", [])]
    if lone:
        lines.append("Standalone requantize kernels: " + "; ".join(
            f"{name} {var}: `{r['kernel']}` after `{r['producer']}`" for name, var, r in lone) + ".\n")
    missing = [(name, var, k) for name, m in models.items() for var, p in m.get("kernel_proof", {}).items()
               for build in ("untuned", "tuned") for k in (p.get("confirmed", {}).get(build) or {}).get("missing", [])]
    if missing:
        lines.append("Tensorized kernels **without** `vpdpbusd`/`vpdpwssd` in their code: "
                     + "; ".join(f"{n} {v}: `{k}`" for n, v, k in missing) + ".\n")

    lines += ["## Bit-exactness against the NumPy reference (`tvmptq.reference.run_plan`)\n",
              "| model | TVM int8 build | samples | bit-exact | max abs diff |", "|---|---|---|---|---|"]
    for name, m in models.items():
        for b in m.get("bit_exact", []):
            lines.append(f"| {name} | {b['variant']} | {b['samples']} | {'yes' if b['bit_exact'] else '**no**'} | "
                         f"{b['max_abs_diff']:.3g} |")
    lines.append("")

    arm = result.get("arm", [])
    if arm:
        lines += ["## Arm (aarch64 under qemu-user; instruction counts are a **proxy for work, not a latency**)\n",
                  "Guest instructions per batch-1 call counted by a qemu TCG plugin (single thread, untuned "
                  "schedules). int8 on Arm targets with dotprod is the program `tvmptq compile` builds there "
                  "(linears and convs as `sdot` kernels, `smmla` where the target has i8mm; channels last). Dot-product instructions counted in the "
                  "disassembly of the exported library (`aarch64-linux-gnu-objdump -d`).\n",
                  "| model | target | FP32 M insns / call | int8 M insns / call | int8 / FP32 | tensorized (MAC share) | "
                  "sdot | smmla | udot/usdot |", "|---|---|---|---|---|---|---|---|---|"]
        for r in arm:
            if "error" in r:
                lines.append(f"| {r['model']} | {r['target']} | failed: {r['error']} |  |  |  |  |  |  |")
                continue
            f, q = r.get("fp32_minsns"), r.get("int8_minsns")
            od = r.get("objdump") or {}
            lines.append(f"| {r['model']} | {r['target']} | {_num(f)} | {_num(q)} | "
                         f"{format_ratio(q / f) if f and q else '-'} | {r.get('tensorized', '-')} "
                         f"({_pct(r.get('share'))}) | {od.get('sdot', '-')} | {od.get('smmla', '-')} | "
                         f"{_sum(od, ('udot', 'usdot'))} |")
        lines.append("")

    prof = result.get("profile")
    if prof:
        lines += _profile_lines(prof)
    chart = _chart(result, out_md.with_suffix(".png"))
    if chart:
        lines.append(f"![batch-1 latency]({chart.name})\n")
    text = "\n".join(lines) + "\n"
    if result.get("peers"):  # the --peers-only run's own section (targets/speed_peers.py), kept as it was
        from .speed_peers import peer_lines
        text = text.rstrip("\n") + "\n\n" + "\n".join(peer_lines(result["peers"])) + "\n"
    out_md.write_text(text)
    out_md.with_suffix(".json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    return out_md


def _num(x, spec=".1f") -> str:
    return "-" if x is None else format(x, spec)


def _sum(d: dict, keys) -> str:
    vals = [d[k] for k in keys if k in d]
    return str(sum(vals)) if vals else "-"


def _profile_lines(prof: dict, top: int = 15) -> list[str]:
    lines = [f"## Per-layer profile: {prof['model']}, {prof['threads']} thread(s)\n",
             "TVM: Relax VM instrument hook around every call (hook overhead included); ORT: its own "
             "profiler, per node. Times are ms per inference, averaged over the profiled runs.\n"]
    for key, title in (("tvm", "TVM"), ("ort", "ONNX Runtime")):
        p = prof.get(key)
        if not p:
            continue
        if "error" in p:
            lines.append(f"{title} ({LABELS.get(p.get('engine'), p.get('engine'))}): profile failed: {p['error']}\n")
            continue
        items = p.get("kernels") or p.get("nodes") or []
        total = sum(i["ms"] for i in items) or 1.0
        label = LABELS.get(p.get("engine"), p.get("engine"))
        lines += [f"### {title}: {label} (sum of {len(items)} {'kernels' if key == 'tvm' else 'nodes'} "
                  f"{total:.3f} ms, wall {p.get('wall_ms', 0):.3f} ms per run)\n"]
        cats = {}
        for i in items:
            c = i.get("category") or i.get("op") or "?"
            cats[c] = cats.get(c, 0.0) + i["ms"]
        lines += ["| " + ("category" if key == "tvm" else "op type") + " | ms | share |", "|---|---|---|"]
        lines += [f"| {c} | {ms:.3f} | {100 * ms / total:.1f} % |" for c, ms in sorted(cats.items(), key=lambda kv: -kv[1])]
        lines += ["", f"Top {top}:\n", "| " + ("kernel" if key == "tvm" else "node") + " | "
                  + ("category" if key == "tvm" else "op type") + " | ms | share |", "|---|---|---|---|"]
        for i in sorted(items, key=lambda i: -i["ms"])[:top]:
            name = i["name"] if len(i["name"]) <= 70 else i["name"][:67] + "..."
            lines.append(f"| `{name}` | {i.get('category') or i.get('op')} | {i['ms']:.3f} | {100 * i['ms'] / total:.1f} % |")
        lines.append("")
    return lines


def _chart(result: dict, path: Path) -> Path | None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    engines = [tuple(e) for e in result.get("engines", ENGINES)]
    models = list(result["models"])
    threads = result.get("threads", [1, 2])
    if not models:
        return None
    fig, axes = plt.subplots(1, len(threads), figsize=(max(6, 3.2 * len(models)) * len(threads) / 1.5, 4.2),
                             squeeze=False)
    width = 0.8 / len(engines)
    for ax, th in zip(axes[0], threads):
        idx = np.arange(len(models))
        for j, (key, label) in enumerate(engines):
            vals = [((result["models"][m].get("latency", {}).get(str(th), {}).get(key) or {}).get("median_ms") or 0)
                    for m in models]
            ax.bar(idx + (j - len(engines) / 2 + 0.5) * width, vals, width, label=label)
        ax.set_xticks(idx, models, fontsize=8)
        ax.set_yscale("log")
        ax.set_ylabel("ms per call, batch 1 (median)")
        ax.set_title(f"{th} thread{'s' if th > 1 else ''}")
    axes[0][-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
