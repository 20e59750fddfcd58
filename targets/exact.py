"""The compiled program against the NumPy reference on every integer tensor, not only the output.

``compare_integer_tensors(plan, imported, inputs)`` lowers ``imported`` (a canonicalized Relax
module of the plan's model, static batch) with tensor probes (relay_passes/probes.py: ``main``
also returns the program's integer values by name), compiles it with the normal build
(targets.build.compile_module, optionally with the target's dot-product kernels), runs it and
``tvmptq.reference.run_plan_values`` on the same inputs, chunk by chunk, and reports per value:
equal or not, how many elements differ (count, fraction) and the largest difference in steps of
the value's grid (LSB). ``origin`` marks a differing value whose integer inputs were all equal
(the difference starts there: a float island's quantize point, or a kernel); the others inherit it.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

# Float ATen ops that only move elements: a quantize point probed in Relax before them (the
# lowering quantizes a float island's result where it is computed) is compared there.
_FLOAT_MOVES = {"slice.Tensor", "select.int", "view.default", "reshape.default", "_unsafe_view.default",
                "transpose.int", "permute.default", "unsqueeze.default", "squeeze.dim", "clone.default",
                "contiguous.default", "expand.default", "t.default"}


@dataclass
class TensorDiff:
    name: str              # the program value (run_plan_values' key)
    what: str              # layer kind, "quantize" (a float value enters the grid) or "integer island"
    shape: tuple
    elements: int = 0
    differing: int = 0
    max_lsb: int = 0
    origin: bool = False   # differs while every integer input of its step is equal (some chunk)
    inputs: list = field(default_factory=list)
    note: str = ""

    @property
    def equal(self) -> bool:
        return self.differing == 0 and not self.note

    @property
    def fraction(self) -> float:
        return self.differing / self.elements if self.elements else 0.0

    def row(self) -> dict:
        return {"name": self.name, "what": self.what, "shape": list(self.shape), "equal": self.equal,
                "elements": self.elements, "differing": self.differing, "fraction": self.fraction,
                "max_lsb": self.max_lsb, "origin": self.origin, "inputs": self.inputs, "note": self.note}


def _steps(plan) -> dict:
    out = {}
    for s in plan.program:
        if "name" in s:
            out.setdefault(s["name"], []).append(s)
    return out


def _producer(steps: dict, name: str) -> dict:
    return steps[name][-1]


def _describe(plan, steps: dict, name: str) -> str:
    """What produces value ``name``: a layer kind, an integer island, or "quantize" (a float value
    enters its grid: a float island's result, or a model input)."""
    for step in steps[name]:
        if step.get("integer_island"):
            return f"integer {step['integer_island']['kind']}"
        if step["kind"] == "layer":
            kind = plan.layer(step["layer"]).kind
            return "integer layernorm" if kind == "layernorm" else kind
    return "quantize"


def _integer_inputs(steps, step) -> list[str]:
    """Program values (roots of integer data movement) an integer step reads; [] for a quantize."""
    from relay_passes.probes import program_root
    last = {k: v[-1] for k, v in steps.items()}
    if step["kind"] == "layer":
        return [program_root(last, n) for n in step["inputs"]]
    if step.get("integer_island"):
        return [program_root(last, step["integer_island"]["input"])]
    return []


def _float_root(steps: dict, name: str) -> str:
    """A quantize point's float value, followed back through float data movement."""
    for s in steps[name]:
        if s["kind"] == "op":
            break
    else:
        return name
    while s["kind"] == "op" and s["op"] in _FLOAT_MOVES and not s.get("integer"):
        args = [a for a in s["args"] if isinstance(a, dict) and "value" in a]
        if not args:
            break
        s = steps[args[0]["value"]][-1]
    return s["name"]


def reference_codes(values: dict, steps: dict, name: str, size: int) -> np.ndarray | None:
    """The reference's codes of value ``name`` (batch first) with ``size`` elements, or None: the
    value itself, or for a quantize point after float data movement (a CLS slice, say), the
    quantized float value before that movement, which is where the lowering quantizes it."""
    from tvmptq.reference.executor import QValue, quantize
    ref = values[name].q
    if ref.size == size:
        return ref
    if _producer(steps, name)["kind"] == "quantize":
        root = values.get(_float_root(steps, name))
        if root is not None and not isinstance(root, QValue) and np.asarray(root).size == size:
            return quantize(np.asarray(root), values[name].t).q
    return None


def compare_integer_tensors(plan, imported, inputs, *, target="llvm", tensorize: bool = False, names=None,
                            reference_plan=None, log=None) -> dict:
    """``{"tensors": [TensorDiff], "skipped": {name: why}, "outputs": [...], "samples": n}``.

    ``inputs``: the model's input arrays (any number of samples; run in chunks of the module's
    static batch, the last one padded by repeating its last sample and trimmed). ``target``: a
    registry name or TVM target; ``tensorize``: with the target's dot-product kernels
    (TensorizeDot, as ``tvmptq compile`` builds it); ``names``: the values to probe (default all);
    ``reference_plan``: the plan the reference runs (default ``plan``; tests change one to check
    that differences are found)."""
    import tvm
    from tvm import relax

    import relay_passes as rp
    from relay_passes.probes import TensorProbes
    from tvmptq.reference.executor import QValue, run_plan_values

    from . import get, is_name
    from .build import compile_module
    named = get(target) if isinstance(target, str) and is_name(target) else None
    probes = TensorProbes(plan, names)
    mod = rp.lowering_passes(plan, probes=probes, target=named if tensorize else None)(imported)
    tvm_target = named.tvm_target() if named is not None else tvm.target.Target(target)
    vm = relax.VirtualMachine(compile_module(mod, tvm_target), tvm.cpu())
    params = mod["main"].params
    batch = int(params[0].ty.shape[0])
    dtypes = [str(p.ty.dtype) for p in params]
    steps = _steps(plan)
    diffs: dict[str, TensorDiff] = {}
    out_stats = []
    n = len(inputs[0])
    for i in range(0, n, batch):
        chunk = [np.asarray(a[i:i + batch]) for a in inputs]
        short = batch - len(chunk[0])
        if short:
            chunk = [np.concatenate([c, np.repeat(c[-1:], short, axis=0)]) for c in chunk]
        res = vm["main"](*[tvm.runtime.tensor(np.ascontiguousarray(c.astype(dt))) for c, dt in zip(chunk, dtypes)])
        outs, got = probes.split([r.numpy() for r in res])
        values = run_plan_values(reference_plan or plan, *chunk)
        equal_now = {}
        for name in probes.exposed:
            q = got[name]
            step = _producer(steps, name)
            d = diffs.setdefault(name, TensorDiff(name, _describe(plan, steps, name), tuple(q.shape),
                                                  inputs=_integer_inputs(steps, step)))
            ref = reference_codes(values, steps, name, q.size)
            if ref is None:
                d.note = (f"shape {tuple(q.shape)} here, {tuple(values[name].q.shape)} in the reference: "
                          "not compared")
                continue
            # the Relax form is a row-major view of the reference's (tokens flattened, heads folded)
            delta = np.abs(q.astype(np.int64).reshape(ref.shape) - ref)[:batch - short]
            bad = int(np.count_nonzero(delta))
            d.elements += int(delta.size)
            d.differing += bad
            d.max_lsb = max(d.max_lsb, int(delta.max()) if delta.size else 0)
            equal_now[name] = bad == 0
            if bad and all(equal_now.get(x, x not in got) for x in d.inputs):
                d.origin = True
        ref_out = values["__output__"]
        ref_outs = list(ref_out) if isinstance(ref_out, (list, tuple)) else [ref_out]
        for k, (o, r) in enumerate(zip(outs, ref_outs)):
            r = r.dequantize() if isinstance(r, QValue) else np.asarray(r)
            keep = slice(0, batch - short)
            delta = np.abs(o[keep].astype(np.float64) - r[keep].astype(np.float64))
            if len(out_stats) <= k:
                out_stats.append({"index": k, "dtype": str(o.dtype), "elements": 0, "differing": 0, "max_abs": 0.0})
            s = out_stats[k]
            s["elements"] += int(delta.size)
            s["differing"] += int(np.count_nonzero(delta))
            s["max_abs"] = max(s["max_abs"], float(delta.max()))
        if log:
            log(f"  samples {i}..{min(i + batch, n)}: {sum(not d.equal for d in diffs.values())} of "
                f"{len(diffs)} probed values differ so far")
    return {"tensors": [diffs[nm] for nm in probes.exposed], "skipped": dict(probes.skipped),
            "outputs": out_stats, "samples": n, "batch": batch}
