"""Optional pass 7 (x86 with AVX-512 VNNI): each quantized linear layer and 1x1 conv becomes one
tensorized kernel.

After the lowering (QuantizeLayers, CancelQDQ) a linear layer (or conv) with a constant int8 weight
is the chain of Relax ops (integer_ops.requantize)

    acc = matmul(x, W^T) | conv2d(x, W) -> int32   x: uint8 or int8 activations (containers)
    [acc + bias (int32)]                           zero point folded into the bias
    astype int64, [+ bias (int64)], [* m], + 2^(k-1), >> k, [+ z_out], clip(lo, hi), astype u8/i8

``TensorizeDenseVNNI`` finds that chain (``dense_requant_pattern``, a ``tvm.relax.dpl`` pattern)
and replaces it by a single ``call_tir`` to a hand-scheduled kernel of targets.x86_int8:
``dense_requant_vnni`` for a linear layer, ``conv1x1_requant_vnni`` for a 1x1, stride-1,
unpadded NCHW conv (the dense over pixels; pointwise convs are most of a MobileNet/EfficientNet's
multiply-adds). The weight is packed at compile time into the VNNI layout ``[N/16, K/4, 16, 4]``
(a constant argument, zero padded for N % 16, K % 4), the accumulation runs in ``vpdpbusd``
(u8 x s8), and the whole requantize (bias, multiplier, rounding, shift, zero point, clip, cast)
runs in the kernel's epilogue, right after each output tile. int8 activations are shifted to
uint8 (x + 128) inside the kernel and ``128 * rowsum(W)`` is subtracted from the per-channel bias
at compile time. Leading dimensions ([B, T, K] inputs) are flattened, and NCHW tensors viewed as
[B, C, H * W], with reshapes. The arithmetic is the chain's own, in int64, so the result is
bit-identical.

On CPU ISAs (``DotISA.channels_last``: VNNI, sdot, smmla) convs run channels last
(relay_passes/channels_last.py): a 1x1 conv is ``dense_requant`` on the ``[B*H*W, C]`` view of its
NHWC input, any other conv with groups=1 (a stem, 3x3 convs, strided 1x1s) is targets.im2col's rows
through the same dense kernel, a depthwise conv is targets.depthwise_int8's NHWC kernel, and the
integer ops between them follow in NHWC, so a transpose is paid only where such a chain meets an
NCHW op (the pool, the input). Depthwise convs whose activations are the instruction's dtype, with
whole groups of ``lanes`` channels and no implicit padding, run their taps on the dot product too
(targets.depthwise_int8.depthwise_requant_nhwc_dot, VNNI). The graph's NCHW bindings stay as views of the results; nothing
NCHW reads them but those ops. CUDA (dp4a) keeps NCHW.

The kernel PrimFunc carries ``tirx.is_scheduled`` (DLight and MetaSchedule's task extraction skip
it) and ``op_pattern`` = kOpaque (AnnotateTIROpPattern keeps an existing pattern, and FuseOps never
fuses an opaque call, so FuseTIR cannot merge it into an unscheduled function).

Which targets: a registry target (targets/registry.toml) whose capabilities include ``vnni`` and
``avx512`` (the kernel uses the 512-bit ``vpdpbusd``; ``avx_vnni`` alone is the 256-bit form).
Every integer kernel the pass does not rewrite is named in ``report`` with the reason, and a
warning lists them: other targets, convs other than 1x1 stride-1 where the ISA is not channels
last (k x k, strided; depthwise without a CPU kernel), dilated or grouped convs, activation x
activation matmuls, chains in another form (requantize="fixed_point_multiply", a float branch after
the layer), and accumulators that could overflow int32 after the +128 shift.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import tvm
from tvm import relax
from tvm.relax import op as R
from tvm.relax.dpl import is_const, is_op, wildcard

from tvmptq.quant.plan import QuantPlan

from .channels_last import ChannelsLast
from .match import _is_const, op_name
from .mutate import mutate_functions

DEPTHWISE_PREFIX = "dw_requant"                # kernels of targets.depthwise_int8: dw_requant_b1_u8_i8_...
DEPTHWISE_DOT_INFIX = "_depthwise_requant"     # its dot-product kernels: vnni_depthwise_requant_b1_u8_u8_...
KERNEL_PREFIX = "vnni_dense_requant"           # kernel names: <isa>_dense_requant..., <isa>_conv1x1_requant...
CONV_PREFIX = "vnni_conv1x1_requant"
KERNEL_PREFIXES = tuple(f"{isa}_{kind}_requant" for isa in ("vnni", "sdot", "smmla", "dp4a")
                        for kind in ("dense", "conv1x1", "conv_im2col"))
REPORT_ATTR = "tvmptq_tensorize_report"
OP_PATTERN_OPAQUE = 8          # tvm::relax::OpPatternKind::kOpaque
INT32_LIMIT = 2 ** 31
CONV_TILE = (7, 2, 256)  # dense tiles of a channels-last conv: 7 pixels x 2 lane groups (int8_dot.tile_sizes: 8 x 2 would leave the stack)


# --------------------------------------------------------------------------------------- pattern
def dense_requant_pattern():
    """The lowered quantized linear, as a dpl pattern; returns (pattern, named sub-patterns).

    Names: ``x`` (activation), ``w`` (constant weight, [K, N] or OIHW), ``acc`` (the int32 matmul or conv2d),
    ``bias32``/``bias64`` (optional bias adds before/after widening), ``mult`` (optional multiply),
    ``rnd`` (the rounding add), ``shift``, ``zp`` (optional zero-point add), ``clip``, ``out``.
    Alternatives list the longer form first, so an optional op is taken when present."""
    x, w = wildcard(), is_const()
    acc = (is_op("relax.matmul")(x, w) | is_op("relax.nn.conv2d")(x, w)).has_dtype("int32")
    bias32 = is_op("relax.add")(acc, is_const()).has_dtype("int32")
    wide = is_op("relax.astype")(bias32 | acc).has_dtype("int64")
    bias64 = is_op("relax.add")(wide, is_const())
    mult = is_op("relax.multiply")(bias64 | wide, is_const())
    rnd = is_op("relax.add")(mult | bias64 | wide, is_const())
    shift = is_op("relax.right_shift")(rnd, is_const())
    zp = is_op("relax.add")(shift, is_const())
    clip = is_op("relax.clip")(zp | shift, wildcard(), wildcard())
    out = is_op("relax.astype")(clip)
    names = dict(x=x, w=w, acc=acc, bias32=bias32, wide=wide, bias64=bias64, mult=mult, rnd=rnd, shift=shift,
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


def target_isa(target, isas=None) -> tuple:
    """(targets.int8_dot.DotISA or None, reason): the dot-product kernels ``target`` (a registry
    name or targets.Target) can run, from ``isas`` (default: every ISA of int8_dot.ISAS), else why
    none. VNNI needs the ``vnni`` and ``avx512`` capabilities (the kernels use the 512-bit
    ``vpdpbusd``; ``avx_vnni`` alone is the 256-bit form); sdot needs ``dotprod``."""
    import targets as tg
    from targets.int8_dot import isa_for
    if target is None:
        return None, "no target given"
    if isinstance(target, str):
        if not tg.is_name(target):
            return None, (f"target {target!r} is not a registry target (targets/registry.toml), so its int8 "
                          "capabilities are unknown")
        target = tg.get(target)
    if not isinstance(target, tg.Target):
        return None, (f"target {target} is not a registry target (targets/registry.toml), so its int8 "
                      "capabilities are unknown")
    return isa_for(target, isas)


def vnni_target_reason(target) -> str:
    """'' if ``target`` (a registry name or targets.Target) can run the VNNI kernels, else why not."""
    from targets.x86_int8 import VNNI
    return target_isa(target, (VNNI,))[1]


# --------------------------------------------------------------------------------------- the pass
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


def _const(e) -> np.ndarray:
    return e.value.numpy()


def _per_channel(e, n: int, ndim: int, what: str, axis: int = -1) -> np.ndarray:
    """A scalar, or a constant of N values along the output's channel ``axis`` (the last one of a
    linear, 1 of an NCHW conv) -> int64 [N]; ValueError otherwise."""
    a = _const(e).astype(np.int64)
    if a.size == 1:
        return np.full(n, a.reshape(()), np.int64)
    if a.ndim != ndim or a.shape[axis] != n or a.size != n:
        raise ValueError(f"its {what} constant has shape {list(a.shape)}, not per output channel (axis {axis}, {n})")
    return a.reshape(n)


@dataclass
class _Plan:
    """One rewrite: what the kernel needs, at the chain's final binding."""

    x: relax.Expr
    x_dtype: str
    out_dtype: str
    lead: tuple        # leading dims of x / y (linear); (B, H, W) of a 1x1 conv
    M: int             # GEMM rows: samples (linear), pixels H * W per image (conv)
    N: int
    K: int
    w: np.ndarray      # int8 [N, K]
    qp: np.ndarray     # int64 [7, N]: targets.x86_int8.REQUANT_ROWS, the shift correction in the bias;
                       # int32 rows of int8_dot.hi32_rows when hi32
    conv: bool = False  # a 1x1 NCHW conv: targets.int8_dot.conv1x1_requant, batch lead[0]
    isa: object = None  # the targets.int8_dot.DotISA the kernel runs on
    depthwise: tuple = ()  # (B, C, H, W, KH, KW, stride, padding): targets.depthwise_int8 (w: int8 [C, KH*KW])
    layout: str = "NCHW"   # a conv's activations in the kernel: NCHW, or NHWC (channels_last.py) when the ISA says so
    im2col: tuple = ()     # (B, C, H, W, KH, KW, stride, padding) of a conv run as targets.im2col + the dense kernel
    dw_dot: bool = False   # a depthwise conv whose taps run on the ISA's dot product (depthwise_int8.dot_reason)

    @property
    def hi32(self) -> bool:
        """The kernel's requantize is the exact high-half epilogue (int32 rows: targets.int8_dot.hi32_rows)."""
        return self.qp.dtype == np.int32

    @property
    def saturate(self) -> bool:
        """hi32, and every clip bound is the output dtype's limit (targets.int8_dot.saturates)."""
        from targets.int8_dot import saturates
        return self.hi32 and saturates(self.qp, self.out_dtype)


def _analyse(mt: dict, names: dict, isa) -> _Plan:
    """The matched chain's numbers; ValueError with the reason when the kernel cannot compute it."""
    from targets.int8_dot import shift_of
    # x: the accumulator's argument as bound (a Var), not the matched expression, which the pattern
    # resolved through the bindings: re-visiting that expression re-emits the producer's original
    # chain, and the producer's own rewritten kernel would be dead code
    acc, wc = mt[names["acc"]], mt[names["w"]]
    x = acc.args[0]
    x_dtype, out_dtype = str(x.ty.dtype), str(mt[names["out"]].ty.dtype)
    if x_dtype not in ("uint8", "int8"):
        raise ValueError(f"activations are {x_dtype}, the kernel takes uint8 or int8")
    if out_dtype not in ("uint8", "int8"):
        raise ValueError(f"the output is {out_dtype}, the kernel writes uint8 or int8")
    if str(wc.ty.dtype) != "int8":
        raise ValueError(f"the weight is {wc.ty.dtype}, {isa.instruction} takes int8")
    shape = [int(d) for d in x.ty.shape]
    conv = op_name(acc) == "relax.nn.conv2d"
    if conv and int(acc.attrs.groups) != 1:
        if not isa.simd_depthwise:
            raise ValueError(f"depthwise: no reduction over channels for {isa.instruction}, and no hand kernel "
                             f"for {isa.arch}; TVM's own schedules run it")
        return _analyse_depthwise(mt, names, x, acc, shape, x_dtype, out_dtype, isa)
    cols = ()
    if conv:
        w, cols = _conv_weight(acc, shape, im2col_ok=isa.channels_last)
        out = [int(d) for d in acc.ty.shape]
        lead = (out[0], out[2], out[3])
        N, K, axis, M = w.shape[0], w.shape[1], 1, out[2] * out[3]
    else:
        wt = _const(wc)                                 # [K, N]
        if wt.ndim != 2:
            raise ValueError(f"the weight has {wt.ndim} dims, expected [K, N]")
        K, N = wt.shape
        if shape[-1] != K:
            raise ValueError(f"activation shape {shape} does not end in K = {K}")
        w, lead, axis = np.ascontiguousarray(wt.T), tuple(shape[:-1]), -1
        M = int(np.prod(lead)) if lead else 1
    ndim = len(acc.ty.shape)
    l1 = int(np.abs(w.astype(np.int64)).sum(1).max())
    x_max = 255 if isa.act_dtype == "uint8" else 128  # |x| as the instruction sees it, after the shift
    if x_max * l1 >= INT32_LIMIT:
        raise ValueError(f"the {isa.act_dtype} accumulation may overflow int32 ({x_max} * max row L1 = {x_max * l1})")
    # x + s in the kernel (s = +128 or -128 to reach the instruction's dtype): sum (x+s) w = sum x w + s rowsum(w)
    qp = _requant_rows(mt, names, N, ndim, axis, -shift_of(x_dtype, isa) * w.astype(np.int64).sum(1))
    layout = "NHWC" if conv and isa.channels_last else "NCHW"
    qp = _epilogue_rows(qp, x_max * np.abs(w.astype(np.int64)).sum(1), isa, not conv or layout == "NHWC")
    return _Plan(x, x_dtype, out_dtype, lead, M, N, K, w, qp, conv, isa, layout=layout, im2col=cols)


def _epilogue_rows(qp: np.ndarray, acc_bound, isa, kernel_has_it: bool) -> np.ndarray:
    """The int32 rows of the high-half epilogue when the ISA and the kernel have it (dense_requant,
    the NHWC depthwise kernels) and it is exact for these numbers, else ``qp`` (the int64 epilogue)."""
    from targets.int8_dot import hi32_rows
    q32 = hi32_rows(qp, acc_bound) if isa.hi32_requant and kernel_has_it else None
    return qp if q32 is None else q32


def _requant_rows(mt: dict, names: dict, N: int, ndim: int, axis: int, bias_extra) -> np.ndarray:
    """int64 [7, N]: the chain's requantize per output channel (targets.int8_dot.REQUANT_ROWS), with
    ``bias_extra`` added to the bias."""
    bias = np.zeros(N, np.int64) + bias_extra
    for key in ("bias32", "bias64"):
        if names[key] in mt:
            bias += _per_channel(mt[names[key]].args[1], N, ndim, key, axis)
    mult = _per_channel(mt[names["mult"]].args[1], N, ndim, "multiplier", axis) if names["mult"] in mt \
        else np.ones(N, np.int64)
    rnd = _per_channel(mt[names["rnd"]].args[1], N, ndim, "rounding", axis)
    shift = _per_channel(mt[names["shift"]].args[1], N, ndim, "shift", axis)
    zp = 0
    if names["zp"] in mt:
        z = _const(mt[names["zp"]].args[1])
        if z.size != 1:
            raise ValueError("its output zero point is not a scalar")
        zp = int(z.reshape(()))
    clip = mt[names["clip"]]
    lo, hi = (int(a.value) for a in clip.args[1:3])
    if (shift < 0).any() or (shift > 63).any():
        raise ValueError("its shifts are outside [0, 63]")
    return np.stack([bias, mult, rnd, shift, np.full(N, zp), np.full(N, lo), np.full(N, hi)]).astype(np.int64)


def _analyse_depthwise(mt, names, x, acc, shape, x_dtype, out_dtype, isa) -> _Plan:
    """A depthwise conv2d (groups = channels) for targets.depthwise_int8; ValueError naming what differs."""
    at, w = acc.attrs, _const(acc.args[1])
    layouts = (str(at.data_layout), str(at.kernel_layout), str(at.out_layout))
    C = shape[1] if len(shape) == 4 else -1
    if layouts != ("NCHW", "OIHW", "NCHW") or len(shape) != 4:
        raise ValueError(f"conv2d layouts {'/'.join(layouts)}: the depthwise kernel takes NCHW/OIHW/NCHW")
    if int(at.groups) != C or w.shape[:2] != (C, 1):
        raise ValueError(f"a grouped conv2d (groups={int(at.groups)}, {C} channels, weight {list(w.shape)}): "
                         "only 1x1 convs with groups=1 and depthwise convs have kernels")
    if any(int(v) != 1 for v in at.dilation):
        raise ValueError(f"a dilated depthwise conv2d ({[int(v) for v in at.dilation]}): no kernel for it")
    B, _, H, W = shape
    KH, KW = int(w.shape[2]), int(w.shape[3])
    stride = tuple(int(v) for v in at.strides)
    padding = tuple(int(v) for v in at.padding)
    padding = padding * 2 if len(padding) == 2 else padding
    out = [int(d) for d in acc.ty.shape]
    qp = _requant_rows(mt, names, C, len(out), 1, 0)
    x_max = 255 if x_dtype == "uint8" else 128
    qp = _epilogue_rows(qp, x_max * np.abs(w.astype(np.int64)).reshape(C, -1).sum(1), isa, isa.channels_last)
    from targets.depthwise_int8 import dot_reason
    dw_dot = isa.channels_last and not dot_reason(C, KH, KW, padding, x_dtype, qp.dtype == np.int32, isa)
    return _Plan(x, x_dtype, out_dtype, (B, out[2], out[3]), out[2] * out[3], C, KH * KW,
                 w.reshape(C, KH * KW).astype(np.int8), qp, True, isa, (B, C, H, W, KH, KW, stride, padding),
                 "NHWC" if isa.channels_last else "NCHW", dw_dot=dw_dot)


def _conv_weight(conv, x_shape, im2col_ok: bool) -> tuple:
    """(int8 [N, K] weight, im2col geometry or ()) of a conv2d the dense kernel computes: a 1x1,
    stride-1, unpadded conv directly, any other (groups=1, undilated) through targets.im2col when
    ``im2col_ok``; ValueError naming what differs."""
    at, w = conv.attrs, _const(conv.args[1])
    plain = tuple(w.shape[2:]) == (1, 1) and all(int(v) == 1 for v in at.strides) \
        and not any(int(v) for v in at.padding)
    layouts = (str(at.data_layout), str(at.kernel_layout), str(at.out_layout))
    if plain or not im2col_ok or layouts != ("NCHW", "OIHW", "NCHW") or int(at.groups) != 1 \
            or any(int(v) != 1 for v in at.dilation) or len(x_shape) != 4 or x_shape[1] != w.shape[1]:
        return _conv1x1_weight(conv, x_shape), ()
    from targets.im2col import weight_columns
    padding = tuple(int(v) for v in at.padding)
    padding = padding * 2 if len(padding) == 2 else padding
    B, C, H, W = x_shape
    return weight_columns(w), (B, C, H, W, int(w.shape[2]), int(w.shape[3]), tuple(int(v) for v in at.strides),
                               padding)


def _conv1x1_weight(conv, x_shape) -> np.ndarray:
    """The int8 [N, K] weight of a conv2d the 1x1 kernel computes; ValueError naming what differs."""
    at = conv.attrs
    w = _const(conv.args[1])
    layouts = (str(at.data_layout), str(at.kernel_layout), str(at.out_layout))
    if layouts != ("NCHW", "OIHW", "NCHW"):
        raise ValueError(f"conv2d layouts {'/'.join(layouts)}: the kernel takes NCHW/OIHW/NCHW")
    if int(at.groups) != 1:
        raise ValueError(f"a grouped conv2d (groups={int(at.groups)}, depthwise when it equals the channels): "
                         "only 1x1 convs with groups=1 are tensorized")
    if tuple(w.shape[2:]) != (1, 1):
        raise ValueError(f"a {w.shape[2]}x{w.shape[3]} conv2d: only 1x1 convs are tensorized")
    if any(int(v) != 1 for v in at.strides) or any(int(v) != 1 for v in at.dilation) \
            or any(int(v) for v in at.padding):
        raise ValueError(f"a 1x1 conv2d with strides {[int(v) for v in at.strides]}, padding "
                         f"{[int(v) for v in at.padding]}: only stride 1, no padding is tensorized")
    if len(x_shape) != 4 or x_shape[1] != w.shape[1]:
        raise ValueError(f"activation shape {x_shape} is not NCHW with {w.shape[1]} channels")
    return np.ascontiguousarray(w.reshape(w.shape[0], w.shape[1]))


def build_kernel(p: _Plan, tile=(4, 4, 128)) -> tvm.tirx.PrimFunc:
    """The scheduled, tensorized PrimFunc for one rewrite (targets.int8_dot.dense_requant, or
    conv1x1_requant with its own default tiles for a 1x1 conv), on the rewrite's ISA."""
    from targets import int8_dot as dot
    if p.depthwise:
        from targets import depthwise_int8 as dw
        B, C, H, W, KH, KW, stride, padding = p.depthwise
        if p.dw_dot:
            sch = dw.schedule_depthwise_nhwc_dot(dw.depthwise_requant_nhwc_dot(
                B, H, W, C, KH, KW, stride, p.x_dtype, p.out_dtype, p.isa, saturate=p.saturate), p.isa)
        elif p.layout == "NHWC":
            sch = dw.schedule_depthwise_nhwc(dw.depthwise_requant_nhwc(B, H, W, C, KH, KW, stride, padding,
                                                                       p.x_dtype, p.out_dtype, hi32=p.hi32,
                                                                       saturate=p.saturate))
        else:
            sch = dw.schedule_depthwise(dw.depthwise_requant(B, C, H, W, KH, KW, stride, padding, p.x_dtype,
                                                             p.out_dtype))
    elif p.conv and p.layout == "NHWC":  # the dense kernel over the batch's pixels
        schedule = p.isa.schedule_dense or dot.schedule_dense
        workload = p.isa.dense_requant or dot.dense_requant
        sch = schedule(workload(p.lead[0] * p.M, p.N, p.K, p.x_dtype, p.out_dtype, p.isa, **_hi32_kw(p)), p.isa,
                       *CONV_TILE)
    elif p.conv:
        schedule = p.isa.schedule_conv1x1 or dot.schedule_conv1x1
        workload = p.isa.conv1x1_requant or dot.conv1x1_requant
        sch = schedule(workload(p.lead[0], p.M, p.N, p.K, p.x_dtype, p.out_dtype, p.isa), p.isa)
    else:
        schedule = p.isa.schedule_dense or dot.schedule_dense
        workload = p.isa.dense_requant or dot.dense_requant
        sch = schedule(workload(p.M, p.N, p.K, p.x_dtype, p.out_dtype, p.isa, **_hi32_kw(p)), p.isa, *tile)
    return _as_kernel(sch.mod["main"])


def _hi32_kw(p: _Plan) -> dict:
    """``hi32=True`` for a dense workload on the high-half epilogue; nothing otherwise (the ISAs'
    own workloads do not take the argument)."""
    return {"hi32": True, "saturate": p.saturate} if p.hi32 else {}


def _as_kernel(prim: tvm.tirx.PrimFunc) -> tvm.tirx.PrimFunc:
    """A scheduled PrimFunc as the rewrite adds it: no global symbol (AttachGlobalSymbol names it
    after its GlobalVar), marked scheduled and opaque (see the module doc)."""
    if "global_symbol" in (prim.attrs or {}):
        prim = prim.without_attr("global_symbol")
    return prim.with_attrs({"tirx.is_scheduled": True, "op_pattern": OP_PATTERN_OPAQUE})


@relax.expr_functor.mutator
class _Rewriter(relax.PyExprMutator):
    def __init__(self, mod, plans: dict, tile):
        super().__init__(mod)
        self.plans, self.tile = plans, tile
        self.kernels: dict[tuple, relax.GlobalVar] = {}
        self.names: dict[relax.Var, str] = {}
        self.channels_last = ChannelsLast(self.builder_)

    def _kernel(self, p: _Plan) -> relax.GlobalVar:
        key = (p.isa.name, p.conv, p.lead[0] if p.conv else 0, p.M, p.N, p.K, p.x_dtype, p.out_dtype,
               p.depthwise, p.layout, bool(p.im2col), p.hi32, p.saturate, p.dw_dot)  # requantize numbers are arguments
        if key not in self.kernels:
            nhwc = "_nhwc" if p.layout == "NHWC" else ""
            if p.depthwise:
                B, C, H, W, KH, KW, (sh, sw), pad = p.depthwise
                prefix = f"{p.isa.name}{DEPTHWISE_DOT_INFIX}" if p.dw_dot else DEPTHWISE_PREFIX
                name = (f"{prefix}_b{B}_{p.x_dtype[0]}8_{p.out_dtype[0]}8{nhwc}_{C}x{H}x{W}_k{KH}x{KW}"
                        f"_s{sh}x{sw}_p{'_'.join(map(str, pad))}")
            else:
                kind = "conv_im2col" if p.im2col else "conv1x1"
                prefix = f"{p.isa.name}_{kind}_requant_b{p.lead[0]}" if p.conv else f"{p.isa.name}_dense_requant"
                name = f"{prefix}{nhwc}_{p.x_dtype[0]}8_{p.out_dtype[0]}8_{p.M}x{p.N}x{p.K}"
            self.kernels[key] = self.builder_.add_func(build_kernel(p, self.tile), name)
        return self.kernels[key]

    def _im2col(self, p: _Plan, x) -> relax.Expr:
        """The rows of ``p``'s conv: im2col of its input's twin if it has one, else of the NCHW ``x``."""
        from targets.im2col import im2col
        cl = self.channels_last
        layout = "NHWC" if p.x in cl.twins else "NCHW"
        B, C, H, W, KH, KW, (sh, sw), pad = p.im2col
        key = ("im2col", layout, p.im2col, p.x_dtype)
        if key not in self.kernels:
            prim = _as_kernel(im2col(*p.im2col, p.x_dtype, layout))
            self.kernels[key] = self.builder_.add_func(
                prim, f"im2col_b{B}_{layout.lower()}_{C}x{H}x{W}_k{KH}x{KW}_s{sh}x{sw}_p{'_'.join(map(str, pad))}")
        src = cl.twins[p.x] if layout == "NHWC" else x
        return self.builder_.emit(relax.call_tir(self.kernels[key], [src],
                                                 relax.TensorType([B * p.M, p.K], p.x_dtype)))

    def _nhwc_call(self, p: _Plan, gv, x, var) -> relax.Expr:
        """The channels-last kernel call for ``var`` (its NHWC output becomes var's twin); returns
        the NCHW value of ``var``."""
        bb, cl = self.builder_, self.channels_last
        B, OH, OW = p.lead
        if p.depthwise:  # the int8 weight as [KH, KW, C], or its runs of taps for the dot-product kernel
            from targets.depthwise_int8 import dot_weight
            _, C, _, _, KH, KW, _, _ = p.depthwise
            w = np.ascontiguousarray(p.w.astype(np.int8).reshape(C, KH, KW).transpose(1, 2, 0))
            w = relax.const(dot_weight(w) if p.dw_dot else w, "int8")
            y = relax.call_tir(gv, [cl.nhwc(p.x, x), w, relax.const(p.qp, str(p.qp.dtype))],
                               relax.TensorType([B, OH, OW, C], p.out_dtype))
        else:  # the dense over [B * OH * OW, K] rows: im2col's, or a 1x1 conv's NHWC input as it is
            from targets.int8_dot import pack_weight
            # views, not reshapes: FuseOps would fuse a reshape into the neighbouring elementwise
            # kernels, whose flattened index (a div/mod per element) then defeats vectorization
            rows = self._im2col(p, x) if p.im2col else bb.emit(R.memory.view(cl.nhwc(p.x, x), [B * p.M, p.K]))
            w = relax.const((p.isa.pack_weight or pack_weight)(p.w, p.isa.lanes), "int8")
            y = bb.emit(relax.call_tir(gv, [rows, w, relax.const(p.qp, str(p.qp.dtype))],
                                       relax.TensorType([B * p.M, p.N], p.out_dtype)))
            y = R.memory.view(y, [B, OH, OW, p.N])
        self.names[var] = gv.name_hint
        return cl.kernel_output(var, y)

    def visit_var_binding_(self, binding: relax.VarBinding) -> None:
        p = self.plans.get(binding.var)
        cl = self.channels_last
        if p is None:
            if not cl.follow(binding.var, binding.value, self.visit_expr):
                binding = relax.VarBinding(binding.var, cl.read_nchw(binding.value))
            return super().visit_var_binding_(binding)  # a twinned op's NCHW original is dead code
        from targets.int8_dot import pack_weight
        bb = self.builder_
        x = self.visit_expr(p.x)
        gv = self._kernel(p)
        if p.layout == "NHWC":
            return super().visit_var_binding_(relax.VarBinding(binding.var, self._nhwc_call(p, gv, x, binding.var)))
        if p.x in cl.twins:
            x = cl.nchw(p.x)
        if p.depthwise:  # NCHW in and out, the weight widened to int32 [C, KH, KW] at compile time
            B, C, _, _, KH, KW, _, _ = p.depthwise
            args = [x, relax.const(p.w.astype(np.int32).reshape(C, KH, KW), "int32"), relax.const(p.qp, str(p.qp.dtype))]
            y = relax.call_tir(gv, args, relax.TensorType([B, C, p.lead[1], p.lead[2]], p.out_dtype))
            self.names[binding.var] = gv.name_hint
            return super().visit_var_binding_(relax.VarBinding(binding.var, y))
        if p.conv:  # NCHW <-> [B, C, H * W]: reshapes of contiguous tensors, no copies
            B, H, W = p.lead
            x = bb.emit(R.reshape(x, [B, p.K, p.M]))
            out_shape, final_shape = [B, p.N, p.M], [B, p.N, H, W]
        else:
            if len(p.lead) != 1:
                x = bb.emit(R.reshape(x, [p.M, p.K]))
            out_shape, final_shape = [p.M, p.N], (None if len(p.lead) == 1 else list(p.lead) + [p.N])
        args = [x, relax.const((p.isa.pack_weight or pack_weight)(p.w, p.isa.lanes), "int8"), relax.const(p.qp, str(p.qp.dtype))]
        y = relax.call_tir(gv, args, relax.TensorType(out_shape, p.out_dtype))
        if final_shape is not None:
            y = R.reshape(bb.emit(y), final_shape)
        self.names[binding.var] = gv.name_hint
        super().visit_var_binding_(relax.VarBinding(binding.var, y))


class _Tensorize:
    """The rewrite behind TensorizeDot and TensorizeDenseVNNI; ``isas`` limits the ISAs considered."""

    name = "TensorizeDot"

    def __init__(self, target, plan: QuantPlan | None = None, tile=(4, 4, 128), warn: bool = True, isas=None):
        self.target, self.plan, self.tile, self.warn, self.isas = target, plan, tuple(tile), warn, isas
        self.report: list[TensorizeRecord] = []

    def transform_module(self, mod: tvm.IRModule, ctx) -> tvm.IRModule:
        isa, target_reason = target_isa(self.target, self.isas)
        pattern, names = dense_requant_pattern()
        by_weight, matmul_names = _layer_names(self.plan)
        report, plans = [], {}  # plans: final var of a chain -> (_Plan, its record)
        for _, func in mod.functions_items():
            if not isinstance(func, relax.Function):
                continue
            var2val = relax.analysis.get_var2val(func)
            bindings = [b for block in func.body.blocks for b in block.bindings]
            chains = {}  # matmul var -> (final var, matched dict)
            for b in bindings:
                if op_name(b.value) == "relax.astype" and str(b.value.ty.dtype) in ("uint8", "int8"):
                    mt = pattern.extract_matched_expr(b.value, var2val)
                    if mt is not None:
                        acc = mt[names["acc"]]
                        chains[next(c.var for c in bindings if c.value.same_as(acc))] = (b.var, mt)
            n_mm = 0
            for b in bindings:
                kind, name = _kernel_kind(b, by_weight, matmul_names, n_mm)
                if kind is None:
                    continue
                rec = TensorizeRecord(name, kind, False)
                report.append(rec)
                if kind == "matmul":
                    n_mm += 1
                    rec.reason = "activation x activation matmul: only matmuls with a constant weight are tensorized"
                elif target_reason:
                    rec.reason = target_reason
                elif b.var not in chains:
                    rec.reason = ("its int32 accumulator is not followed by the int64 fixed-point requantize chain "
                                  "(requantize='fixed_point_multiply', or a float branch after the layer?)")
                else:
                    final, mt = chains[b.var]
                    try:
                        p = _analyse(mt, names, isa)
                    except ValueError as err:
                        rec.reason = str(err)
                        continue
                    rec.shape = ((p.lead[0] * p.M) if p.conv else p.M, p.N, p.K)
                    if p.depthwise and not p.dw_dot:  # a kernel of its own, but no dot-product instruction in it
                        rec.reason = ("depthwise: no reduction over channels for the dot-product instruction; "
                                      "hand-scheduled SIMD instead")
                    else:
                        rec.tensorized = True
                    plans[final] = (p, rec)
        if plans:
            rewriter = _Rewriter(mod, {v: p for v, (p, _) in plans.items()}, self.tile)
            mod = relax.transform.DeadCodeElimination()(mutate_functions(mod, rewriter))
            for v, (_, rec) in plans.items():
                rec.kernel = rewriter.names[v]
        self.report = report
        skipped = [r for r in report if not r.tensorized]
        if skipped and self.warn:
            warnings.warn(f"{self.name}: {len(report) - len(skipped)} of {len(report)} integer kernels "
                          "tensorized; not tensorized:\n  " + "\n  ".join(str(r) for r in skipped), stacklevel=2)
        return mod.with_attr(REPORT_ATTR, [str(r) for r in report])


@tvm.transform.module_pass(opt_level=0, name="tvmptq.TensorizeDot")
class TensorizeDot(_Tensorize):
    """Rewrite every lowered quantized linear layer and 1x1 conv to one tensorized kernel on the
    target's dot-product instruction (see the module doc): VNNI ``vpdpbusd`` on x86 targets with
    ``vnni`` and ``avx512``, ``sdot`` on Arm targets with ``dotprod``.

    ``target``: a registry target name or targets.Target; without such an instruction the module is
    returned unchanged. ``plan``: optional, only to report layers by their plan names. ``tile``:
    (rows, lane groups, k) of the dense hand schedule. After the pass, ``report`` holds a
    TensorizeRecord per integer kernel (tensorized or not, and why), also kept as text in the
    module attribute ``REPORT_ATTR`` (:func:`tensorize_report`); kernels not tensorized are listed
    in a warning unless ``warn=False``. ``isas``: the targets.int8_dot.DotISA rows to choose from
    (default: int8_dot.ISAS)."""

    def __init__(self, target, plan: QuantPlan | None = None, tile=(4, 4, 128), warn: bool = True, isas=None):
        super().__init__(target, plan, tile, warn, isas)


@tvm.transform.module_pass(opt_level=0, name="tvmptq.TensorizeDenseVNNI")
class TensorizeDenseVNNI(_Tensorize):
    """TensorizeDot limited to x86 VNNI (the same rewrite; any other target is left unchanged and
    said to lack ``vnni``)."""

    name = "TensorizeDenseVNNI"

    def __init__(self, target, plan: QuantPlan | None = None, tile=(4, 4, 128), warn: bool = True):
        from targets.x86_int8 import VNNI
        super().__init__(target, plan, tile, warn, (VNNI,))


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
    w = _const(args[1]).astype(np.int64)
    if kind == "linear":
        w = w.T
    found = by_weight.get((kind, w.shape, np.ascontiguousarray(w).tobytes()))
    return kind, (" or ".join(found) if found else b.var.name)


def tensorize_for(target, plan: QuantPlan | None = None, **kw) -> tvm.transform.Pass:
    """The x86 int8 tensorization passes for ``target`` (a registry name or targets.Target), as a
    Sequential: TensorizeDot (a no-op, with a warning naming every layer, when the target has no
    dot-product instruction the kernels use). Apply after the lowering (lowering_passes(plan,
    target=...) does)."""
    return tvm.transform.Sequential([TensorizeDot(target, plan, **kw)], name="tvmptq.Tensorize")


def tensorize_report(mod: tvm.IRModule) -> list[str]:
    """What TensorizeDenseVNNI did to ``mod``: one line per integer kernel ([] if it never ran)."""
    attrs = mod.attrs
    return [str(s) for s in attrs[REPORT_ATTR]] if attrs is not None and REPORT_ATTR in attrs else []
