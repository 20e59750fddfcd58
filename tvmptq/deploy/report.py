"""report.md of an artifact: what a reviewer checks before deploying it, in one page.

The manifest is the machine-readable record; this renders the same facts (op counts before and
after lowering, every float op left and why, the plan's layers) so nobody has to read JSON.
"""
from __future__ import annotations

from ..quant.plan import QuantPlan


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
