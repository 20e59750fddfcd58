"""report.md of an artifact: what a reviewer checks before deploying it, in one page.

The manifest is the machine-readable record; this renders the same facts (op counts before and
after lowering, every float op left and why, the plan's layers) so nobody has to read JSON.
"""
from __future__ import annotations

import re
from collections import Counter

from ..quant.plan import QuantPlan

KERNEL_KINDS = ("conv2d", "linear", "matmul")  # the plan's layer kinds that run in int8 kernels


def layer_kernels(plan: QuantPlan, kernels: list[str], instruction: str | None, why_none: str = "") -> dict:
    """Where the plan's conv/linear/matmul layers run, from the tensorize report lines (``kernels``):
    in ``instruction``'s dot-product kernels, in SIMD kernels (depthwise convs the instruction does
    not cover), or in TVM's generic integer loops; layers kept in float are not integer layers."""
    layers = [lp for lp in plan.layers if lp.kind in KERNEL_KINDS and not lp.keep_float]
    dot = sum(": tensorized (" in k for k in kernels)
    simd = sum("runs in SIMD kernel" in k for k in kernels)
    return {"layers": len(layers), "kinds": sorted({lp.kind for lp in layers}), "instruction": instruction,
            "dot_kernels": dot, "simd_kernels": simd, "generic_loops": len(layers) - dot - simd,
            "why_no_dot_kernels": "" if instruction else why_none}


def kernel_summary(manifest: dict) -> str:
    """One line: "6/6 conv/linear layers in vpdpbusd kernels, 0 float ops" (float ops named)."""
    k = manifest["layer_kernels"]
    what = "/".join("conv" if kind == "conv2d" else kind for kind in k["kinds"]) or "conv/linear"
    if k["instruction"]:
        text = f"{k['dot_kernels']}/{k['layers']} {what} layers in {k['instruction']} kernels"
        if k["simd_kernels"]:
            text += f", {k['simd_kernels']} in SIMD kernels"
        if k["generic_loops"]:
            text += f", {k['generic_loops']} in TVM's generic integer loops"
    else:
        text = (f"0/{k['layers']} {what} layers in int8 dot-product kernels ({k['why_no_dot_kernels'] or 'none for this target'}; "
                f"all {k['layers']} in TVM's generic integer loops)")
    ops = Counter(re.sub(r"^.* = (\S+) .*$", r"\1", f) for f in manifest["float_ops"])
    text += f", {sum(ops.values())} float ops"
    if ops:
        text += " (" + ", ".join(f"{n} {op}" for op, n in ops.most_common()) + ")"
    if manifest.get("float_layers"):
        text += f"; layers kept in float: {', '.join(manifest['float_layers'])}"
    return text


def _shape(entry: dict) -> str:
    return f"{entry['name']} {entry['dtype']} ({', '.join(map(str, entry['shape']))})"


def format_report(manifest: dict, plan: QuantPlan) -> str:
    m = manifest
    counts = m["op_counts"]
    lines = [f"# {m['model']['name']} {m['plan']['config']} for {m['target']['requested']}", "",
             f"- source: {m['model']['source']}",
             f"- inputs: {'; '.join(_shape(i) for i in m['inputs'])} (static batch {m['batch']})",
             f"- outputs: {'; '.join(_shape(o) for o in m['outputs'])}",
             f"- TVM {m['tvm_version']}, target `{m['target']['resolved']}`",
             f"- plan sha256 {m['plan']['sha256']} ({m['plan']['observer']} observer, {m['plan']['layers']} layers)",
             "", "## Op counts (op -> result dtype)", "", "| op | before lowering | after lowering |", "|---|---|---|"]
    for key in sorted(set(counts["before"]) | set(counts["after"])):
        lines.append(f"| {key} | {counts['before'].get(key, 0)} | {counts['after'].get(key, 0)} |")

    if m.get("layer_kernels"):
        lines[2:2] = [f"- {kernel_summary(m)}"]
    kernels = m.get("kernels") or []
    if kernels:
        done = sum(": tensorized" in k for k in kernels)
        lines += ["", f"## Tensorized int8 kernels ({done} of {len(kernels)} conv/matmul layers)", ""]
        lines += [f"- {k}" for k in kernels]

    floats = {k: v for k, v in counts["after"].items() if "float" in k}
    lines += ["", "## Float ops after lowering", ""]
    lines += [f"- {k}: {v}" for k, v in sorted(floats.items())] or ["- none"]
    lines += ["", "The input `quantize` and output `dequantize` are the integer program's boundary."]
    if m["float_ops"]:
        lines += ["Float ops inside the program (declared islands or layers kept in float):", ""]
        lines += [f"- `{f}`" for f in m["float_ops"]]
    if m["float_islands"]:
        lines += ["", f"Declared float islands ({len(m['float_islands'])}): {', '.join(m['float_islands'])}"]
    if m.get("float_branches"):
        head = f"Declared float branches ({len(m['float_branches'])}), float64 islands after their layer's output:"
        lines += ["", head, ""]
        lines += [f"- {b['layer']}: {b['kind']} {b['features']} on `{b['input']}` (stride {b['stride']}, "
                  f"{b['params']} float parameters), Relax ops {', '.join(b['relax_ops'])}"
                  for b in m["float_branches"]]
    if m["float_layers"]:
        lines += ["", f"Layers kept in float ({len(m['float_layers'])}): {', '.join(m['float_layers'])}"]

    lines += ["", "## Layers", "", "| layer | kind | weight bits | output bits | activation | clip |",
              "|---|---|---|---|---|---|"]
    for lp in plan.layers:
        out = plan.tensors.get(lp.output)
        wbits = "float" if lp.keep_float else (lp.weight_bits or "-")
        lines.append(f"| {lp.name} | {lp.kind} | {wbits} | {out.bits if out else '-'} | {lp.activation} | "
                     f"[{lp.clip[0]}, {lp.clip[1]}] |")
    return "\n".join(lines) + "\n"
