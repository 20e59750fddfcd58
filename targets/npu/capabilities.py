"""The Ethos-U capability tables (targets/npu/ethos_u_ops.toml, from Vela's supported-operator
rules) as relay_passes.npu_partition.NPUCapabilities, and the TVM-side partition of a plan's
integer program for an NPU target of the registry: which ops the NPU would run, which fall back,
and the check that the partitioned program is still bit-exact on llvm."""
from __future__ import annotations

import tomllib
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

import targets
from relay_passes.npu_partition import NPUCapabilities, OpRule, PartitionForNPU, fallbacks, format_partition

TABLE_FILE = Path(__file__).with_name("ethos_u_ops.toml")
_RULE_FIELDS = {f.name for f in fields(OpRule)}


def _family(accelerator: str) -> str:
    """"ethos-u55-128" -> "ethos-u55" (the MAC count does not change which ops run)."""
    return accelerator.rsplit("-", 1)[0]


def capabilities(target) -> NPUCapabilities:
    """The capability table of an NPU registry target (a :class:`targets.Target` or its name)."""
    t = targets.get(target) if isinstance(target, str) else target
    if not t.is_npu:
        raise targets.TargetError(f"target {t.name!r} is not an NPU target (no npu table)")
    with open(TABLE_FILE, "rb") as f:
        table = tomllib.load(f)
    fam = _family(t.extra["npu"]["accelerator"])
    for section in table.values():
        if fam in section["families"]:
            ops = {}
            for kind, rule in section["ops"].items():
                unknown = set(rule) - _RULE_FIELDS
                if unknown:
                    raise targets.TargetError(f"{TABLE_FILE}: {kind} of {fam} has unknown fields {sorted(unknown)}")
                ops[kind] = OpRule(**rule)
            return NPUCapabilities(t.name, ops, tuple(section["activation_dtypes"]), section["activation_bits"],
                                   section["tensor_dim_max"], section["source"])
    raise targets.TargetError(f"no capability table for {fam} (target {t.name}) in {TABLE_FILE}")


@dataclass
class Partition:
    target: str
    report: list            # PartitionEntry per NPU operator / fallback, program order
    host_ops: int
    module: object          # the partitioned IRModule
    bit_exact: bool | None = None   # partitioned vs unpartitioned program on llvm (None: not run)
    matches_reference: bool | None = None  # partitioned program vs the NumPy integer reference

    @property
    def fallbacks(self) -> list:
        return fallbacks(self.report)

    def text(self) -> str:
        s = format_partition(self.report, self.target, self.host_ops)
        if self.bit_exact is not None:
            s += (f"\nllvm check: partitioned program {'==' if self.bit_exact else '!='} unpartitioned program"
                  + ("" if self.matches_reference is None else
                     f", {'==' if self.matches_reference else '!='} the NumPy integer reference"))
        return s

    def as_dict(self) -> dict:
        return {"target": self.target, "host_ops": self.host_ops, "bit_exact_llvm": self.bit_exact,
                "matches_reference": self.matches_reference,
                "npu": [{"name": e.name, "kind": e.kind, "tflite": e.tflite, "relax_ops": e.ops}
                        for e in self.report if e.on_npu],
                "cpu": [{"name": e.name, "kind": e.kind, "reason": e.reason, "relax_ops": e.ops}
                        for e in self.report if not e.on_npu]}


def partition(mod, plan, target, check_inputs: np.ndarray | None = None) -> Partition:
    """Partition the lowered integer module ``mod`` (relay_passes.lower at batch 1) for an NPU
    target; with ``check_inputs`` (float model inputs) also :func:`check_llvm`."""
    caps = capabilities(target)
    p = PartitionForNPU(caps, plan)
    out = p(mod)
    result = Partition(caps.name, list(p.report), p.host_ops, out)
    if check_inputs is not None:
        check_llvm(result, mod, plan, check_inputs)
    return result


def check_llvm(part: Partition, mod, plan, inputs: np.ndarray) -> Partition:
    """Compile the partitioned and the unpartitioned module for llvm, run both on ``inputs`` and
    compare them with each other and with the NumPy integer reference (sets the two flags)."""
    from targets.build import compile_integer
    from tvmptq.reference import run_plan
    x = np.asarray(inputs, np.float32)
    got, want = compile_integer(part.module)(x), compile_integer(mod)(x)
    got, want = (g[0] if isinstance(g, tuple) else g for g in (got, want))
    part.bit_exact = bool(np.array_equal(got, want))
    part.matches_reference = bool(np.array_equal(got, run_plan(plan, x)))
    return part
