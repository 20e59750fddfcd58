"""Proof that the int8 kernels are real: where the multiply-adds run, and what the compiled code holds.

    from targets import kernel_proof as kp
    share = kp.mac_share(int8_mod, tensorized_mod)          # MACs of tensorized layers / all conv+matmul MACs
    left = kp.standalone_requantize(kp.fused(tensorized_mod, tvm_target))   # requantize kernels of their own
    asm = kp.library_asm(ex)                                 # the LLVM assembly of a tvm.compile result
    kp.kernel_mnemonics(asm, ["vnni_dense_requant_u8_u8_1x10x64"], ("vpdpbusd",))

Three independent views, each computed from what the compiler really holds:

* **MAC share** (:func:`mac_share`): multiply-adds of every conv2d / matmul of the lowered Relax
  module, from shapes (conv: ``prod(out) * C_in/groups * kh * kw``; matmul: ``prod(out) * K``), and
  the multiply-adds of the layers that ``relay_passes.tensorize.TensorizeDot`` says it
  tensorized (its ``REPORT_ATTR`` module attribute, ``M N K`` per layer). The share is the second
  over the first; the conv/matmul left in the tensorized module are counted again, so the two
  parts must add up to the total (``consistent``).
* **Standalone requantize kernels** (:func:`standalone_requantize`): after TVM's fusion (the
  PrimFuncs ``tvm.compile`` builds, :func:`fused`), the PrimFuncs that shift right in int64 and read
  an int32 input but hold no conv/matmul reduction: a requantize that runs as its own pass over
  memory instead of in its conv/matmul's epilogue. Each is named with the kernel producing its
  int32 input, so requantizes of conv/matmul outputs (the target is none) are told apart from
  those of other integer ops (a mean's int32 sum, for instance).
* **Assembly** (:func:`library_asm`, :func:`asm_functions`, :func:`kernel_mnemonics`): the LLVM
  assembly of the built library, split by function; a kernel's code is its ``__tvm_ffi_<name>``
  wrapper, its ``<name>_compute_`` body and every parallel lambda they reference. The dot-product
  instructions (``vpdpbusd`` on x86, ``sdot``/``smmla`` on Arm) are counted per kernel, so the
  report's "tensorized" claims are checked against the code that runs, and :func:`asm_mac_share`
  gives the share of multiply-adds in kernels whose code holds such an instruction at all (LLVM's
  own loop vectorizer may use ``vpdpbusd`` too, in its 128-bit ``{vex}`` form).
"""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np

DOT_MNEMONICS = {"x86_64": ("vpdpbusd", "vpdpwssd"), "aarch64": ("sdot", "udot", "usdot", "smmla", "ummla", "usmmla")}

_TENSORIZED = re.compile(r"^(?P<layer>.+): tensorized \((?P<kernel>[^,]+), M N K = (?P<m>\d+) (?P<n>\d+) (?P<k>\d+)\)$")
_NOT_TENSORIZED = re.compile(r"^(?P<layer>.+) \((?P<kind>\w+)\): not tensorized: (?P<reason>.*?)"
                             r"(?:; runs in SIMD kernel (?P<kernel>\S+), M N K = (?P<m>\d+) (?P<n>\d+) (?P<k>\d+))?$")


# --------------------------------------------------------------------------------- Relax-level MACs
def _shape(e) -> tuple:
    return tuple(int(d) for d in e.ty.shape)


def layer_macs(mod) -> list[dict]:
    """Every conv2d and matmul of the Relax functions of ``mod`` (a lowered module, before
    legalization): ``{"name", "op", "macs", "dtype"}``, ``name`` the binding's variable, ``macs``
    from the shapes."""
    from tvm import relax

    from relay_passes.match import op_name
    out = []
    for _, func in mod.functions_items():
        if not isinstance(func, relax.Function):
            continue
        for block in func.body.blocks:
            for b in block.bindings:
                op = op_name(b.value)
                if op not in ("relax.nn.conv2d", "relax.matmul"):
                    continue
                call, res = b.value, _shape(b.value)
                if op == "relax.nn.conv2d":
                    if str(call.attrs.kernel_layout) != "OIHW":
                        raise ValueError(f"{b.var.name}: kernel layout {call.attrs.kernel_layout}, expected OIHW")
                    w = _shape(call.args[1])
                    per_out = w[1] * w[2] * w[3]   # C_in / groups * kh * kw
                else:
                    per_out = _shape(call.args[0])[-1]
                out.append({"name": b.var.name, "op": op.removeprefix("relax.").removeprefix("nn."),
                            "macs": int(np.prod(res, dtype=np.int64)) * int(per_out),
                            "dtype": str(call.ty.dtype)})
    return out


def tensorize_records(mod) -> list[dict]:
    """TensorizeDot's report of ``mod`` (relay_passes.tensorize.tensorize_report), parsed:
    ``{"layer", "tensorized", "kernel", "macs"}`` (M*N*K) for tensorized layers, ``{"layer",
    "tensorized", "kind", "reason"}`` for the others (plus ``"simd_kernel", "macs"`` when the layer
    runs in a hand-scheduled kernel without the dot instruction, a depthwise conv)."""
    from relay_passes.tensorize import tensorize_report
    recs = []
    for line in tensorize_report(mod):
        m = _TENSORIZED.match(line)
        if m:
            recs.append({"layer": m["layer"], "tensorized": True, "kernel": m["kernel"],
                         "macs": int(m["m"]) * int(m["n"]) * int(m["k"])})
            continue
        m = _NOT_TENSORIZED.match(line)
        if m is None:
            raise ValueError(f"unrecognised tensorize report line: {line!r}")
        rec = {"layer": m["layer"], "tensorized": False, "kind": m["kind"], "reason": m["reason"]}
        if m["kernel"]:  # a kernel of its own without the dot instruction (targets.kernels.depthwise)
            rec.update(simd_kernel=m["kernel"], macs=int(m["m"]) * int(m["n"]) * int(m["k"]))
        recs.append(rec)
    return recs


def mac_share(base_mod, tensorized_mod=None) -> dict:
    """Share of the conv/matmul multiply-adds that run in tensorized kernels.

    ``base_mod``: the lowered int8 module (every conv/matmul a Relax op); ``tensorized_mod``: the same
    after TensorizeDot (None: nothing tensorized, share 0). Returns ``{"total_macs",
    "tensorized_macs", "share", "layers", "tensorized_layers", "left_macs", "consistent"}``;
    ``consistent``: tensorized MACs (from the report) plus the MACs of the conv/matmul ops still in
    ``tensorized_mod`` equal the total."""
    total = sum(r["macs"] for r in layer_macs(base_mod))
    recs = tensorize_records(tensorized_mod) if tensorized_mod is not None else []
    done = [r for r in recs if r["tensorized"]]
    tens = sum(r["macs"] for r in done)
    left = sum(r["macs"] for r in layer_macs(tensorized_mod)) if tensorized_mod is not None else total
    left += sum(r.get("macs", 0) for r in recs if not r["tensorized"])  # convs moved into SIMD kernels
    return {"total_macs": total, "tensorized_macs": tens, "share": tens / total if total else 0.0,
            "layers": len(layer_macs(base_mod)), "tensorized_layers": len(done), "left_macs": left,
            "consistent": tens + left == total, "kernels": sorted({r["kernel"] for r in done})}


# --------------------------------------------------------------------------------- fused PrimFuncs
def fused(mod, tvm_target):
    """``mod`` as ``tvm.compile`` builds it on a CPU target here (targets.tune.prepare: LegalizeOps,
    AnnotateTIROpPattern, FoldConstant, FuseOps, FuseTIR)."""
    from .tune import prepare
    return prepare(mod, tvm_target)


def _blocks(prim) -> list:
    """Every SBlock of a PrimFunc (through an s_tir Schedule; [] when it cannot be opened)."""
    import tvm
    try:
        sch = tvm.s_tir.Schedule(prim)
        todo, out = [sch.get_sblock("root")], []
    except Exception:
        return []
    while todo:
        rv = todo.pop()
        for child in sch.get_child_blocks(rv):
            out.append(sch.get(child))
            todo.append(child)
    return out


def _has_product(e) -> bool:
    """Whether a TIR expression multiplies two buffer loads (a multiply-add's product)."""
    import tvm
    t = tvm.tirx
    if isinstance(e, t.Mul):
        return "[" in str(e.a) and "[" in str(e.b)
    if isinstance(e, (t.Add, t.Sub)):
        return _has_product(e.a) or _has_product(e.b)
    if isinstance(e, t.Cast):
        return _has_product(e.value)
    return False


def _region_name(region) -> str:
    src = getattr(region, "source", None)
    if src is None:
        src = region.buffer
    return str(src.name)


def primfunc_summary(prim, dot_mnemonics=("vpdpbusd", "vpdpwssd", "sdot", "smmla")) -> dict:
    """What a PrimFunc computes, from its blocks: ``{"macs", "mac_blocks", "mac_block_names",
    "int64_shift", "int32_inputs", "dot_intrinsic", "scheduled"}``. ``macs``: iterations of its reduction blocks
    whose update multiplies two loads (conv, matmul; not a sum); ``dot_intrinsic``: its TIR calls a
    dot-product intrinsic (a tensorized kernel, whose MACs the blocks do not show)."""
    import tvm
    blocks = _blocks(prim)
    macs, mac_blocks, shift, names = 0, 0, False, []
    reads, writes = set(), set()
    for b in blocks:
        reads.update(_region_name(r) for r in b.reads)
        writes.update(_region_name(w) for w in b.writes)
        body = b.body
        if isinstance(body, tvm.tirx.BufferStore):
            if str(body.buffer.dtype) == "int64" and ">>" in str(body.value):
                shift = True
            if b.init is not None and _has_product(body.value):
                macs += int(np.prod([int(iv.dom.extent) for iv in b.iter_vars], dtype=np.int64))
                mac_blocks += 1
                names.append(str(b.name_hint))
    text = prim.script()
    if not blocks:  # a PrimFunc without blocks (lowered by hand): read its text
        shift = " >> " in text and "int64" in text
    inputs = [p for p in prim.params if str(p.name) in reads and str(p.name) not in writes]
    attrs = prim.attrs or {}
    return {"macs": macs, "mac_blocks": mac_blocks, "mac_block_names": names, "int64_shift": shift,
            "int32_inputs": [str(buf.name) for buf in inputs if str(buf.dtype) == "int32"],
            "dot_intrinsic": any(m in text for m in dot_mnemonics),
            "scheduled": "tirx.is_scheduled" in attrs and bool(attrs["tirx.is_scheduled"])}


def kernel_category(summary: dict, name: str = "") -> str:
    """A coarse class of a kernel from its :func:`primfunc_summary` (and its name: the hand
    kernels of targets.kernels.depthwise are named ``dw_requant_...``, targets.kernels.im2col's ``im2col_...``),
    for profiles."""
    from relay_passes.tensorize import DEPTHWISE_DOT_INFIX, DEPTHWISE_PREFIX
    if name.startswith(DEPTHWISE_PREFIX):
        return "depthwise conv (SIMD kernel, requantize fused)"
    if DEPTHWISE_DOT_INFIX + "_" in name:
        return "depthwise conv (dot-product kernel, requantize fused)"
    if name.startswith("im2col_"):
        return "im2col (rows of a k x k conv for the dot-product kernel)"
    if summary.get("dot_intrinsic"):
        return "tensorized dot-product (conv / linear)"
    if summary.get("macs"):
        blocks = " ".join(summary.get("mac_block_names", [])).lower()
        if "depthwise" in blocks or "group" in blocks:
            return "depthwise / grouped conv"
        if "conv" in blocks:
            return "conv"
        return "matmul / dense"
    if summary.get("int64_shift"):
        return "requantize / integer elementwise"
    return "other (quantize, pool, reshape, float ops)"


def _calls(mod) -> list[tuple]:
    """(result var name, callee name, [(arg var name, dtype)]) of every call_tir in ``main``."""
    import tvm
    from tvm import relax
    out = []
    for block in mod["main"].body.blocks:
        for b in block.bindings:
            v = b.value
            if not isinstance(v, relax.Call):
                continue
            if isinstance(v.op, tvm.ir.Op) and v.op.name == "relax.call_tir":
                gv, args = v.args[0], v.args[1]
            elif isinstance(v.op, relax.GlobalVar):
                gv, args = v.op, relax.Tuple(list(v.args))
            else:
                continue
            fields = args.fields if isinstance(args, relax.Tuple) else [args]
            out.append((b.var.name, gv.name_hint,
                        [(a.name, str(getattr(a.ty, "dtype", ""))) for a in fields if isinstance(a, relax.Var)]))
    return out


def kernel_table(fused_mod) -> dict:
    """name -> primfunc_summary for every PrimFunc of a fused module, plus ``calls`` (call sites)."""
    import tvm
    table = {gv.name_hint: primfunc_summary(f) for gv, f in fused_mod.functions_items()
             if isinstance(f, tvm.tirx.PrimFunc)}
    counts: dict = {}
    for _, callee, _ in _calls(fused_mod):
        counts[callee] = counts.get(callee, 0) + 1
    for name, s in table.items():
        s["calls"] = counts.get(name, 0)
    return table


def standalone_requantize(fused_mod) -> list[dict]:
    """The requantize kernels that run apart from their conv/matmul in ``fused_mod`` (see the module
    doc): one entry per call site, ``{"kernel", "producer", "after_conv_matmul"}``, ``producer`` the
    kernel writing its int32 input (``"input"`` for a parameter of ``main``)."""
    table = kernel_table(fused_mod)
    lone = {n for n, s in table.items()
            if s["int64_shift"] and s["int32_inputs"] and not s["macs"] and not s["dot_intrinsic"]}
    calls = _calls(fused_mod)
    made_by = {var: callee for var, callee, _ in calls}
    out = []
    for _, callee, args in calls:
        if callee not in lone:
            continue
        producers = [made_by.get(a, "input") for a, dt in args if dt == "int32"]
        conv = any(p in table and (table[p]["macs"] or table[p]["dot_intrinsic"]) for p in producers)
        out.append({"kernel": callee, "producer": ", ".join(producers) or "-", "after_conv_matmul": conv})
    return out


# --------------------------------------------------------------------------------- assembly
def library_asm(executable) -> str:
    """The LLVM assembly of a ``tvm.compile`` result (every llvm module it imports)."""
    mod = getattr(executable, "mod", executable)
    parts, todo = [], [mod]
    while todo:
        m = todo.pop()
        if m.kind == "llvm":
            parts.append(m.inspect_source("asm"))
        todo.extend(m.imports)
    return "\n".join(parts)


_TYPE = re.compile(r"^\s*\.type\s+([^,\s]+),\s*[@%]function", re.M)
_LAMBDA = re.compile(r"\.L__tvm_parallel_lambda(?:\.\d+)?\b")


def asm_functions(asm: str) -> dict[str, str]:
    """Function name -> its assembly text (from one ``.type NAME,@function`` to the next)."""
    marks = [(m.start(), m.group(1)) for m in _TYPE.finditer(asm)]
    out = {}
    for i, (start, name) in enumerate(marks):
        end = marks[i + 1][0] if i + 1 < len(marks) else len(asm)
        out[name] = out.get(name, "") + asm[start:end]
    return out


def kernel_code(funcs: dict[str, str], kernel: str) -> str:
    """A kernel's code: ``__tvm_ffi_<kernel>``, ``<kernel>_compute_``, ``<kernel>`` and every parallel
    lambda they reference, transitively ('' when the kernel is not in the assembly)."""
    names = [n for n in (f"__tvm_ffi_{kernel}", f"{kernel}_compute_", kernel) if n in funcs]
    seen, code = set(names), []
    while names:
        n = names.pop()
        text = funcs[n]
        code.append(text)
        for lam in _LAMBDA.findall(text):
            if lam not in seen and lam in funcs:
                seen.add(lam)
                names.append(lam)
    return "\n".join(code)


def count_mnemonics(code: str, mnemonics) -> dict[str, int]:
    """Occurrences of each instruction mnemonic in assembly or objdump text (as a whole word)."""
    return {m: len(re.findall(rf"(?<![\w.]){re.escape(m)}(?![\w.])", code)) for m in mnemonics}


def kernel_mnemonics(asm: str, kernels, mnemonics) -> dict[str, dict[str, int]]:
    """kernel -> {mnemonic: count} in that kernel's code (:func:`kernel_code`); a kernel missing
    from the assembly gets ``None``."""
    funcs = asm_functions(asm)
    out = {}
    for k in kernels:
        code = kernel_code(funcs, k)
        out[k] = count_mnemonics(code, mnemonics) if code else None
    return out


def asm_mac_share(fused_mod, asm: str, tensorized_mod=None, mnemonics=("vpdpbusd", "vpdpwssd")) -> dict:
    """Share of the multiply-adds that run in kernels whose code holds one of ``mnemonics``, per call
    site of ``fused_mod`` (the module the assembly was built from): MACs of a fused kernel from its
    blocks, of a tensorized kernel from the TensorizeDot report of ``tensorized_mod`` (the module
    before fusion). Returns ``{"macs", "macs_with_dot", "share", "kernels_with_dot"}``."""
    funcs = asm_functions(asm)
    table = kernel_table(fused_mod)
    report = tensorize_records(tensorized_mod) if tensorized_mod is not None else []
    total = with_dot = 0
    kernels = set()
    done = set()
    for _, callee, _ in _calls(fused_mod):
        s = table.get(callee)
        if s is None:
            continue
        has = any(count_mnemonics(kernel_code(funcs, callee), mnemonics).values())
        if s["dot_intrinsic"]:  # a tensorized kernel: its layers' MACs from the report (once per kernel)
            if callee in done:
                continue
            done.add(callee)
            macs = sum(r["macs"] for r in report if r["tensorized"] and r["kernel"] == callee)
        else:
            macs = s["macs"]
        total += macs
        if has and macs:
            with_dot += macs
            kernels.add(callee)
    return {"macs": total, "macs_with_dot": with_dot, "share": with_dot / total if total else 0.0,
            "kernels_with_dot": sorted(kernels)}


def objdump_mnemonics(lib, mnemonics, arch: str = "aarch64") -> dict[str, int] | None:
    """Counts of ``mnemonics`` in the disassembly of a shared library (``aarch64-linux-gnu-objdump``
    or ``llvm-objdump`` for aarch64, ``objdump`` for x86); None when no disassembler is installed."""
    tools = ["aarch64-linux-gnu-objdump", "llvm-objdump"] if arch == "aarch64" else ["objdump", "llvm-objdump"]
    tool = next((t for t in tools if shutil.which(t)), None)
    if tool is None:
        return None
    text = subprocess.run([tool, "-d", str(Path(lib))], capture_output=True, text=True, check=True).stdout
    return count_mnemonics("\n".join(line.split("\t", 2)[-1] for line in text.splitlines()), mnemonics)
