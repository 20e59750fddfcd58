"""The CPU-peer section of ``results/speed.md``: LiteRT int8 next to TVM int8, both timed in one
``scripts/bench_speed.py --peers-only`` run on one machine, so their ratio is a same-run ratio.

The section is its own run: it has its own command line, date, host and thread counts, lives under
the ``"peers"`` key of ``speed.json`` and between two markers at the end of ``speed.md``, and writing
it never touches the main tables (which come from another run; a later ``--merge`` run keeps it).

    write_peers(peers, Path("results/speed.md"))   # replace (or add) the section and the json key

Models the fully-integer TFLite export refuses are listed by name with the export's reason
(:func:`tflite_or_refusal`) and are neither built in TVM nor timed.
"""
from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

from .latency_format import format_ms, format_ratio, latency_ratio

BEGIN = "<!-- bench_speed.py --peers-only: begin -->"
END = "<!-- bench_speed.py --peers-only: end -->"
PEER_ENGINES = (("tvm_int8_untuned", "TVM int8 untuned"), ("tvm_int8_tuned", "TVM int8 tuned"),
                ("litert_int8", "LiteRT int8"))


def tflite_or_refusal(plan, path):
    """``(export, None)`` when the plan exports to fully-integer TFLite, else ``(None, refusal)`` with
    the export's error and the float-island ops the plan declares (``layer_norm_3`` -> ``layer_norm``)."""
    from tvmptq.export.tflite import TFLiteExportError, export_tflite
    try:
        return export_tflite(plan, path, batch=1), None
    except TFLiteExportError as err:
        kinds = Counter(re.sub(r"_\d+$", "", n) for n in getattr(plan, "float_islands", ()) or ())
        return None, {"error": str(err), "float_islands": [f"{k} x{v}" for k, v in sorted(kinds.items())]}


def _tuning(t: dict) -> str:
    held = t.get("trials_in_db", t.get("records", 0))
    return (f"{held} trials tuned on `{t['tuned_on']}`" if t.get("tuned_on") else f"{held} trials") \
        + (f" ({t['note']})" if t.get("note") else "") + (f", `{t['folder']}`" if t.get("folder") else "")


def peer_lines(p: dict) -> list[str]:
    """The section's markdown lines (markers included) from the ``"peers"`` dict of speed.json."""
    v = p.get("versions", {})
    threads = p.get("threads", [1, 2])
    models = p.get("models", {})
    lines = [BEGIN, "## CPU peer: LiteRT int8 next to TVM int8, measured in one run\n",
             f"Run: `{p.get('command')}` on {p.get('date')}, {p.get('seconds', 0) / 60:.1f} min. Host "
             f"`{p.get('cpu_model', '?')}` (TVM target CPU `{p.get('host_cpu', '?')}`), {p.get('cores', '?')} cores; "
             f"threads {', '.join(map(str, threads))} (LiteRT `num_threads`; TVM_NUM_THREADS). ai-edge-litert "
             f"{v.get('ai_edge_litert', '?')}, TVM {v.get('tvm', '?')}. This run is separate from the tables above: "
             "it did not re-measure them and they are not from it.\n",
             f"Batch 1; median of {p.get('repeat')} timed samples, each the mean of {p.get('number')} calls, after "
             f"{p.get('warmup')} warm-up calls; IQR in brackets; ms; every (engine, model, thread count) in a fresh "
             "process. LiteRT int8: `ai_edge_litert.interpreter.Interpreter` (default op resolver: XNNPACK for int8) "
             "on tvmptq's fully-integer TFLite export of the same W8A8 plan the TVM int8 program is lowered from, "
             "timed from its int8 input (the float input's quantize is not in the timed call; TVM's program "
             "includes it). TVM int8 *untuned* / *tuned*: the program `tvmptq compile` builds for x86-host.\n",
             "Tuning: `--peers-only` forces `--no-tune`: *tuned* is built from the tuning databases on disk as they "
             "are (the committed ones the main table's `--no-tune` run used), nothing is tuned in this run: "
             + "; ".join(f"{n}: {_tuning(m['tuning']['int8'])}" for n, m in models.items()
                         if m.get("tuning", {}).get("int8")) + ".\n"]
    lines += ["| model | threads | " + " | ".join(lbl for _, lbl in PEER_ENGINES) + " | LiteRT / TVM int8 tuned |",
              "|---|---|" + "---|" * (len(PEER_ENGINES) + 1)]
    for name, m in models.items():
        for th in threads:
            lat = m.get("latency", {}).get(str(th), {})
            lines.append(f"| {name} | {th} | " + " | ".join(format_ms(lat.get(k)) for k, _ in PEER_ENGINES)
                         + f" | {format_ratio(latency_ratio(lat.get('litert_int8'), lat.get('tvm_int8_tuned')))} |")
    lines.append("\nLiteRT / TVM int8 tuned above 1: TVM's program is faster.\n")
    errors = [(n, th, k, r["error"]) for n, m in models.items() for th, lat in m.get("latency", {}).items()
              for k, r in lat.items() if r and "error" in r]
    if errors:
        lines += ["Failed measurements:\n"] + [f"- {n}, {k}, {th} thread(s): {e}" for n, th, k, e in errors] + [""]
    checks = []
    for n, m in models.items():
        parts = [f"TVM int8 {b['variant']} {'bit-exact' if b['bit_exact'] else '**not bit-exact**'} "
                 f"({b['samples']} samples)" for b in m.get("bit_exact", [])]
        r = m.get("litert_vs_reference")
        if r:
            parts.append(f"LiteRT ({r['kernels']}) {r['equal']}/{r['total']} output integers equal, max diff "
                         f"{r['max_abs']}, top-1 {r['top1_equal']}/{r['samples']}")
        if parts:
            checks.append(f"- {n}: " + "; ".join(parts))
    if checks:
        lines += ["Outputs against the NumPy integer reference (`tvmptq.reference.run_plan`; LiteRT's "
                  "differences are TFLite's requantize rounding, results/npu.md):\n"] + checks + [""]
    refused = p.get("refused", {})
    if refused:
        lines += ["Refused by the fully-integer TFLite export (so no LiteRT peer; not built in TVM, not timed "
                  "in this run):\n", "| model | export refusal | float-island ops in the plan |", "|---|---|---|"]
        lines += [f"| {n} | {r['error'].replace('|', '/')} | {', '.join(r.get('float_islands', [])) or '-'} |"
                  for n, r in refused.items()]
        lines.append("")
    return lines + [END]


def write_peers(peers: dict, out_md) -> Path:
    """Store ``peers`` as speed.json's ``"peers"`` key and replace (or append) its section in speed.md;
    everything else in both files is left byte for byte as it was."""
    out_md = Path(out_md)
    js = out_md.with_suffix(".json")
    old = json.loads(js.read_text()) if js.is_file() else {}
    old.pop("peers", None)
    js.write_text(json.dumps({"peers": peers, **old}, indent=2, default=str) + "\n")
    text = out_md.read_text() if out_md.is_file() else ""
    block = "\n".join(peer_lines(peers)) + "\n"
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        text = head + block + rest.split(END, 1)[1].lstrip("\n")
    else:
        text = (text.rstrip("\n") + "\n\n" if text else "") + block
    out_md.write_text(text)
    return out_md
