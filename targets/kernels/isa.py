"""The dot-product instructions as data: one :class:`DotISA` row each, registered by the module
that defines it (x86_vnni, arm_sdot, arm_i8mm, cuda_dp4a), and the choice of the row a target runs.

The kernels of targets/kernels/dense.py read a row for everything that differs between
instructions (lanes, the activation dtype, the tensor intrinsic, the capabilities a registry target
needs, per-ISA workloads and schedules). This module imports none of the ISA modules: they import
it and call :func:`register_isa`; ``targets.kernels`` imports them all, so ``targets.kernels.isas()``
is the full table.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

@dataclass(frozen=True)
class DotISA:
    """One dot-product instruction as the kernels use it."""

    name: str                    # kernel name prefix: vnni, sdot
    arch: str                    # registry arch of the targets that have it
    lanes: int                   # int32 accumulators per instruction (16 for 512-bit vpdpbusd, 4 for sdot)
    act_dtype: str               # the activation operand's dtype (VNNI: uint8; sdot: int8)
    caps: tuple                  # registry capabilities a target needs
    register: Callable[[], str]  # registers the tensor intrinsic (idempotent); returns its name
    instruction: str             # the mnemonic to look for in the assembly
    schedule_dense: Callable | None = None    # (func, isa, *tile) -> Schedule; None: the CPU schedule_dense
    schedule_conv1x1: Callable | None = None  # (func, isa) -> Schedule; None: the CPU schedule_conv1x1
    simd_depthwise: bool = True  # whether depthwise convs get targets.kernels.depthwise's CPU SIMD kernel
    dense_requant: Callable | None = None     # workload (M, N, K, x_dtype, out_dtype, isa); None: dense_requant
    conv1x1_requant: Callable | None = None   # workload (B, M, N, K, ...); None: conv1x1_requant
    pack_weight: Callable | None = None       # (w int8 [N, K], lanes) -> the packed weight; None: pack_weight
    channels_last: bool = True   # 1x1 and depthwise convs run on NHWC activations (relay_passes/channels_last.py)
    hi32_requant: bool = False   # dense and NHWC depthwise kernels take the high-half epilogue where exact (hi32_rows)
    # n -> the per-lane n-tap (n = 2..4) intrinsic of targets.kernels.depthwise's dot-product depthwise
    # kernel (activations of act_dtype, ``lanes`` channels); None: depthwise convs use the SIMD kernel
    depthwise_intrin: Callable[[int], str] | None = None
    k_pack: int = 4              # k values per lane per instruction (4 bytes for vpdpbusd/sdot, 2 int16 for vpdpwssd)
    weight_dtype: str = "int8"   # the packed weight operand's dtype (int8 weights widened to it at compile time)
    # the row for int16 activations (12..16-bit grids, QuantConfig.tensor_bits) on the same targets, not in
    # the table (isa_for never picks it): relay_passes.tensorize takes it for a linear whose input is int16
    int16_isa: "DotISA | None" = None

    def reason_missing(self, target) -> str:
        """'' if a registry Target can run the kernels, else why not."""
        missing = [c for c in self.caps if c not in target.caps()]
        if missing:
            more = f" (and {', '.join(repr(c) for c in missing[1:])})" if len(missing) > 1 else ""
            return (f"target {target.name!r} ({target.arch}, capabilities {', '.join(target.caps()) or 'none'}) "
                    f"lacks the {missing[0]!r} capability{more} of the {self.name} kernels")
        if target.arch != self.arch:
            return f"target {target.name!r} is {target.arch}, the {self.name} kernels are {self.arch}"
        return ""


_REGISTERED: set = set()  # tensor intrinsics registered by register_intrinsic in this process


def register_intrinsic(name: str, intrin_funcs: Callable[[], tuple]) -> str:
    """Register the tensor intrinsic ``name`` from ``intrin_funcs()`` = (desc, impl) once per
    process (the ISA rows' ``register``); returns ``name``."""
    from tvm.s_tir import TensorIntrin
    if name not in _REGISTERED:
        TensorIntrin.register(name, *intrin_funcs(), override=True)
        _REGISTERED.add(name)
    return name


_TABLE: list = []  # every registered DotISA, in registration order


def register_isa(isa: DotISA) -> DotISA:
    """Add a row to the table (its module does this at import time); returns ``isa``."""
    if any(row.name == isa.name for row in _TABLE):
        raise ValueError(f"a dot-product ISA named {isa.name!r} is already registered")
    _TABLE.append(isa)
    return isa


def isas() -> tuple:
    """The registered ISAs, most specific first: the ones needing more capabilities come before
    those of the same architecture needing fewer (a target with i8mm gets smmla, not sdot)."""
    return tuple(sorted(_TABLE, key=lambda row: -len(row.caps)))


def isa_for(target, rows=None) -> tuple:
    """(DotISA or None, reason): the first ISA of ``rows`` (default: every registered ISA of the
    target's architecture) a registry Target can run, else None and why none fits."""
    if rows is None:
        rows = [isa for isa in isas() if isa.arch == target.arch]
        if not rows:
            return None, f"target {target.name!r} is {target.arch}: no dot-product kernels for it"
    reasons = []
    for isa in rows:
        why = isa.reason_missing(target)
        if not why:
            return isa, ""
        reasons.append(why)
    return None, "; ".join(dict.fromkeys(reasons))

