"""From a matched chain to the numbers one kernel needs (a :class:`KernelPlan`), or a ValueError
saying why no kernel of the target's ISA computes it; and which ISA a target runs."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from tvm import relax

from ..match import op_name

INT32_LIMIT = 2 ** 31


def target_isa(target, isas=None) -> tuple:
    """(targets.kernels.DotISA or None, reason): the dot-product kernels ``target`` (a registry
    name or targets.Target) can run, from ``isas`` (default: every ISA of targets.kernels.isas()), else why
    none. VNNI needs the ``vnni`` and ``avx512`` capabilities (the kernels use the 512-bit
    ``vpdpbusd``; ``avx_vnni`` alone is the 256-bit form); sdot needs ``dotprod``."""
    import targets as tg
    from targets.kernels import isa_for
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
    from targets.kernels.x86_vnni import VNNI
    return target_isa(target, (VNNI,))[1]


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
class KernelPlan:
    """One rewrite: what the kernel needs, at the chain's final binding."""

    x: relax.Expr
    x_dtype: str
    out_dtype: str
    lead: tuple        # leading dims of x / y (linear); (B, H, W) of a 1x1 conv
    M: int             # GEMM rows: samples (linear), pixels H * W per image (conv)
    N: int
    K: int
    w: np.ndarray      # int8 [N, K]
    qp: np.ndarray     # int64 [7, N]: targets.kernels.x86_vnni.REQUANT_ROWS, the shift correction in the bias;
                       # int32 rows of targets.kernels.hi32_rows when hi32
    conv: bool = False  # a 1x1 NCHW conv: targets.kernels.conv1x1_requant, batch lead[0]
    isa: object = None  # the targets.kernels.DotISA the kernel runs on
    depthwise: tuple = ()  # (B, C, H, W, KH, KW, stride, padding): targets.kernels.depthwise (w: int8 [C, KH*KW])
    layout: str = "NCHW"   # a conv's activations in the kernel: NCHW, or NHWC (channels_last.py) when the ISA says so
    im2col: tuple = ()     # (B, C, H, W, KH, KW, stride, padding) of a conv run as targets.kernels.im2col + the dense kernel
    dw_dot: bool = False   # a depthwise conv whose taps run on the ISA's dot product (targets.kernels.depthwise.dot_reason)

    @property
    def hi32(self) -> bool:
        """The kernel's requantize is the exact high-half epilogue (int32 rows: targets.kernels.hi32_rows)."""
        return self.qp.dtype == np.int32

    @property
    def saturate(self) -> bool:
        """hi32, and every clip bound is the output dtype's limit (targets.kernels.saturates)."""
        from targets.kernels import saturates
        return self.hi32 and saturates(self.qp, self.out_dtype)


def analyse(mt: dict, names: dict, isa, var2val=None) -> KernelPlan:
    """The matched chain's numbers; ValueError with the reason when the kernel cannot compute it.

    Wide tensors (int16 containers of 9..16-bit grids) of a linear layer: an int16 output is only
    a wider store of the same epilogue; an int16 input runs on the ISA's ``int16_isa`` row (x86:
    ``vpdpwssd``), its |x| bound read from the producer's clip (``var2val``) for the overflow check."""
    from targets.kernels import shift_of
    # x: the accumulator's argument as bound (a Var), not the matched expression, which the pattern
    # resolved through the bindings: re-visiting that expression re-emits the producer's original
    # chain, and the producer's own rewritten kernel would be dead code
    acc, wc = mt[names["acc"]], mt[names["w"]]
    x = acc.args[0]
    x_dtype, out_dtype = str(x.ty.dtype), str(mt[names["out"]].ty.dtype)
    conv = op_name(acc) == "relax.nn.conv2d"
    wide_in = x_dtype == "int16" and not conv and isa.int16_isa is not None
    if wide_in:
        isa = isa.int16_isa
    elif x_dtype not in ("uint8", "int8"):
        raise ValueError(f"activations are {x_dtype}, the kernel takes uint8 or int8"
                         + (" (int16 for a linear layer)" if isa.int16_isa is not None else ""))
    if out_dtype not in ("uint8", "int8", "int16") or (out_dtype == "int16" and conv):
        raise ValueError(f"the output is {out_dtype}, the kernel writes uint8 or int8 (int16 for a linear layer)")
    if str(wc.ty.dtype) != "int8":
        raise ValueError(f"the weight is {wc.ty.dtype}, {isa.instruction} takes int8")
    shape = [int(d) for d in x.ty.shape]
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
    # |x| as the instruction sees it, after the shift
    x_max = _abs_bound(x, var2val) if wide_in else 255 if isa.act_dtype == "uint8" else 128
    if x_max * l1 >= INT32_LIMIT:
        raise ValueError(f"the {isa.act_dtype} accumulation may overflow int32 ({x_max} * max row L1 = {x_max * l1})")
    # x + s in the kernel (s = +128 or -128 to reach the instruction's dtype): sum (x+s) w = sum x w + s rowsum(w)
    qp = _requant_rows(mt, names, N, ndim, axis, -shift_of(x_dtype, isa) * w.astype(np.int64).sum(1))
    layout = "NHWC" if conv and isa.channels_last else "NCHW"
    qp = _epilogue_rows(qp, x_max * np.abs(w.astype(np.int64)).sum(1), isa, not conv or layout == "NHWC")
    return KernelPlan(x, x_dtype, out_dtype, lead, M, N, K, w, qp, conv, isa, layout=layout, im2col=cols)


def _abs_bound(x, var2val) -> int:
    """A bound on |x| for an int16 activation: its producer's clip bounds when it ends in
    ``clip -> astype`` (a requantize or quantize), else the int16 limit."""
    v = var2val.get(x) if var2val is not None and isinstance(x, relax.Var) else None
    if v is not None and op_name(v) == "relax.astype":
        c = v.args[0]
        c = var2val.get(c, c) if isinstance(c, relax.Var) else c
        if op_name(c) == "relax.clip":
            return max(abs(int(c.args[1].value)), abs(int(c.args[2].value)))
    return 1 << 15


def _epilogue_rows(qp: np.ndarray, acc_bound, isa, kernel_has_it: bool) -> np.ndarray:
    """The int32 rows of the high-half epilogue when the ISA and the kernel have it (dense_requant,
    the NHWC depthwise kernels) and it is exact for these numbers, else ``qp`` (the int64 epilogue)."""
    from targets.kernels import hi32_rows
    q32 = hi32_rows(qp, acc_bound) if isa.hi32_requant and kernel_has_it else None
    return qp if q32 is None else q32


def _requant_rows(mt: dict, names: dict, N: int, ndim: int, axis: int, bias_extra) -> np.ndarray:
    """int64 [7, N]: the chain's requantize per output channel (targets.kernels.REQUANT_ROWS), with
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


def _analyse_depthwise(mt, names, x, acc, shape, x_dtype, out_dtype, isa) -> KernelPlan:
    """A depthwise conv2d (groups = channels) for targets.kernels.depthwise; ValueError naming what differs."""
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
    from targets.kernels.depthwise import dot_reason
    dw_dot = isa.channels_last and not dot_reason(C, KH, KW, padding, x_dtype, qp.dtype == np.int32, isa)
    return KernelPlan(x, x_dtype, out_dtype, (B, out[2], out[3]), out[2] * out[3], C, KH * KW,
                 w.reshape(C, KH * KW).astype(np.int8), qp, True, isa, (B, C, H, W, KH, KW, stride, padding),
                 "NHWC" if isa.channels_last else "NCHW", dw_dot=dw_dot)


def _conv_weight(conv, x_shape, im2col_ok: bool) -> tuple:
    """(int8 [N, K] weight, im2col geometry or ()) of a conv2d the dense kernel computes: a 1x1,
    stride-1, unpadded conv directly, any other (groups=1, undilated) through targets.kernels.im2col when
    ``im2col_ok``; ValueError naming what differs."""
    at, w = conv.attrs, _const(conv.args[1])
    plain = tuple(w.shape[2:]) == (1, 1) and all(int(v) == 1 for v in at.strides) \
        and not any(int(v) for v in at.padding)
    layouts = (str(at.data_layout), str(at.kernel_layout), str(at.out_layout))
    if plain or not im2col_ok or layouts != ("NCHW", "OIHW", "NCHW") or int(at.groups) != 1 \
            or any(int(v) != 1 for v in at.dilation) or len(x_shape) != 4 or x_shape[1] != w.shape[1]:
        return _conv1x1_weight(conv, x_shape), ()
    from targets.kernels.im2col import weight_columns
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

