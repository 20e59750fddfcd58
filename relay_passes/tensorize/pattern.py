"""What TensorizeDot matches (the lowered requantize chain of a quantized linear or conv, as a
``tvm.relax.dpl`` pattern) and what it reports (one TensorizeRecord per integer kernel, kept as text
in a module attribute)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tvm
from tvm.relax.dpl import is_const, is_op, wildcard

from tvmptq.quant.plan import QuantPlan

from ..match import _is_const, op_name

DEPTHWISE_PREFIX = "dw_requant"                # kernels of targets.kernels.depthwise: dw_requant_b1_u8_i8_...
DEPTHWISE_DOT_INFIX = "_depthwise_requant"     # its dot-product kernels: vnni_depthwise_requant_b1_u8_u8_...
KERNEL_PREFIX = "vnni_dense_requant"           # kernel names: <isa>_dense_requant..., <isa>_conv1x1_requant...
CONV_PREFIX = "vnni_conv1x1_requant"
KERNEL_PREFIXES = tuple(f"{isa}_{kind}_requant" for isa in ("vnni", "vnni16", "sdot", "smmla", "dp4a")
                        for kind in ("dense", "conv1x1", "conv_im2col"))
REPORT_ATTR = "tvmptq_tensorize_report"


# --------------------------------------------------------------------------------------- pattern
def dense_requant_pattern():
    """The lowered quantized linear, as a dpl pattern; returns (pattern, named sub-patterns).

    Names: ``x`` (activation), ``w`` (constant weight, [K, N] or OIHW), ``acc`` (the int32 matmul or conv2d),
    ``bias32``/``bias64`` (optional bias adds before/after widening), ``mult`` (optional multiply),
    ``rnd`` (the rounding add), ``shift``, ``zp`` (optional zero-point add), ``clip``, ``out``.
    Alternatives list the longer form first, so an optional op is taken when present."""
    x, w = wildcard(), is_const()
    acc = (is_op("relax.matmul")(x, w) | is_op("relax.nn.conv2d")(x, w)).has_dtype("int32")
    out, names = requant_chain_pattern(acc)
    return out, dict(x=x, w=w, **names)


def requant_chain_pattern(acc):
    """The int64 requantize chain (integer_ops.requantize) after the int32 accumulator pattern
    ``acc``; returns (pattern, named sub-patterns: acc, bias32, ..., out as in dense_requant_pattern).
    attention.py matches activation x activation matmuls with it."""
    bias32 = is_op("relax.add")(acc, is_const()).has_dtype("int32")
    wide = is_op("relax.astype")(bias32 | acc).has_dtype("int64")
    bias64 = is_op("relax.add")(wide, is_const())
    mult = is_op("relax.multiply")(bias64 | wide, is_const())
    rnd = is_op("relax.add")(mult | bias64 | wide, is_const())
    shift = is_op("relax.right_shift")(rnd, is_const())
    zp = is_op("relax.add")(shift, is_const())
    clip = is_op("relax.clip")(zp | shift, wildcard(), wildcard())
    out = is_op("relax.astype")(clip)
    names = dict(acc=acc, bias32=bias32, wide=wide, bias64=bias64, mult=mult, rnd=rnd, shift=shift,
                 zp=zp, clip=clip, out=out)
    return out, names


# --------------------------------------------------------------------------------------- report
@dataclass
class TensorizeRecord:
    """One integer kernel of the module: rewritten or not, and why."""

    layer: str                  # the plan's layer name, or the Relax binding when no plan is given
    kind: str                   # linear | conv2d | matmul (activation x activation)
    tensorized: bool
    reason: str = ""            # why not (empty when tensorized)
    kernel: str = ""            # the PrimFunc's name when tensorized, or when it runs in a SIMD kernel
    shape: tuple = ()           # (M, N, K) of the dense; (pixels, channels, taps) of a depthwise conv

    def __str__(self) -> str:
        mnk = f"M N K = {' '.join(map(str, self.shape))}"
        if self.tensorized:
            return f"{self.layer}: tensorized ({self.kernel}, {mnk})"
        simd = f"; runs in SIMD kernel {self.kernel}, {mnk}" if self.kernel else ""
        return f"{self.layer} ({self.kind}): not tensorized: {self.reason}{simd}"


def _layer_names(plan: QuantPlan | None):
    """(by weight bytes -> layer name, names of activation x activation matmuls in order)."""
    by_weight, matmuls = {}, []
    if plan is None:
        return by_weight, matmuls
    for lp in plan.layers:
        if lp.kind in ("linear", "conv2d"):
            w = np.asarray(lp.arrays["weight"], np.int64)
            by_weight.setdefault((lp.kind, w.shape, w.tobytes()), []).append(lp.name)
        elif lp.kind == "matmul":
            matmuls.append(lp.name)
    return by_weight, matmuls


def _kernel_kind(b, by_weight, matmul_names, n_mm):
    """(kind, name) of an integer conv/matmul binding, (None, None) for anything else."""
    call, name = b.value, op_name(b.value)
    if name not in ("relax.matmul", "relax.nn.conv2d") or str(getattr(call.ty, "dtype", "")) != "int32":
        return None, None
    args = call.args
    if name == "relax.matmul" and not _is_const(args[1]):
        return "matmul", matmul_names[n_mm] if n_mm < len(matmul_names) else b.var.name
    if not _is_const(args[1]):
        return None, None
    kind = "conv2d" if name == "relax.nn.conv2d" else "linear"
    w = args[1].value.numpy().astype(np.int64)
    if kind == "linear":
        w = w.T
    found = by_weight.get((kind, w.shape, np.ascontiguousarray(w).tobytes()))
    return kind, (" or ".join(found) if found else b.var.name)


def tensorize_report(mod: tvm.IRModule) -> list[str]:
    """What TensorizeDenseVNNI did to ``mod``: one line per integer kernel ([] if it never ran)."""
    attrs = mod.attrs
    return [str(s) for s in attrs[REPORT_ATTR]] if attrs is not None and REPORT_ATTR in attrs else []
