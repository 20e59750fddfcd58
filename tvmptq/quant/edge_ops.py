"""Ops of edge vision models that lower to the integer ops the plan already has, or to small new ones.

* ``conv_transpose2d`` (U-Net decoders, segmentation heads) is rewritten on the captured graph
  into data movement plus an ordinary conv: zeros inserted between input pixels (stride),
  padding ``d (k - 1) - p`` (plus ``output_padding`` at the bottom/right), then a stride-1
  conv with the weight flipped and its in/out channels swapped. The zeros are the real 0 (the
  zero point on the integer grid), so the conv's integer accumulation is exactly the transposed
  conv's; the plan quantizes it like any conv (per-channel int8 weight, int32 bias, per-channel
  requantize) and the dot-product kernels run it (im2col + dense on CPUs with VNNI/sdot).
  relay_passes/conv_transpose.py does the same rewrite on the Relax import.
* bilinear upsampling: every output pixel is a weighted sum of 2x2 input pixels whose weights
  are rationals ``w / D`` (``D = 4`` for scale 2 with align_corners=False, ``D = out - 1`` or a
  divisor of it with align_corners=True). ``axis_weights`` gives the two source indices and the
  integer weights per output row/column; the layer sums ``wh * ww * (q - z)`` in int32 and
  requantizes once by ``s_in / (s_out * Dh * Dw)``. Scales whose source coordinates are not on a
  grid of at most ``MAX_DENOMINATOR`` steps are refused by name.
* PReLU: ``y = x`` for ``x >= 0`` and ``alpha_c x`` otherwise is two requantize multipliers (the
  positive one shared, the negative one per channel), as TFLite's int8 PRELU.
"""
from __future__ import annotations

from fractions import Fraction
from math import lcm

import numpy as np
import torch
import torch.fx as fx

from ..errors import UnsupportedOpError
from .capture import _new_param, const_value

aten = torch.ops.aten
# What the ops edge models use and tvmptq does not lower would need (named in the refusal).
NEEDS = {
    "upsample_bicubic2d": "bicubic upsampling would need 4x4 integer weights per output pixel (not lowered); "
                          "use bilinear or nearest",
    "upsample_nearest2d_exact": "nearest-exact would need half-pixel source indices (not lowered); use nearest",
    "_upsample_nearest_exact2d": "nearest-exact would need half-pixel source indices (not lowered); use nearest",
    "_upsample_bilinear2d_aa": "antialiased bilinear resizing would need a wider integer filter per output "
                               "pixel (not lowered); use antialias=False",
    "conv_transpose1d": "1-D transposed convs would need the zero-insertion rewrite in 1-D; reshape to 2-D",
    "conv_transpose3d": "3-D convolutions have no integer kernel",
    "conv3d": "3-D convolutions have no integer kernel",
    "group_norm": "GroupNorm would need a declared float island (not declared) or an integer normalisation",
    "instance_norm": "InstanceNorm would need a declared float island (not declared) or an integer normalisation",
    "grid_sampler_2d": "grid sampling reads data-dependent positions: no integer lowering",
    "pixel_shuffle": "pixel shuffle is data movement but not in the movement table yet",
    "erf": "GELU spelled with erf (ONNX before opset 20) becomes one lookup table; with --float-activations "
           "it is not lowered: use lookup tables",
}
MAX_DENOMINATOR = 64  # weights wh * ww <= 64^2 = 2^12: |acc| < 2^20 for 8-bit inputs


def _pair(v, default) -> list[int]:
    if v is None:
        v = default
    v = list(v) if isinstance(v, (list, tuple)) else [v]
    return [int(v[0]), int(v[-1])]


def _call(gm, op, args, before, like=None, name=None):
    with gm.graph.inserting_before(before):
        node = gm.graph.create_node("call_function", op, tuple(args), name=name)
    if like is not None:
        node.meta["val"] = like
    return node


def _fake(op, *args):
    """The meta value of ``op`` applied to meta values (fake tensors, possibly symbolic)."""
    from torch._guards import detect_fake_mode
    mode = detect_fake_mode([a for a in args if isinstance(a, torch.Tensor)])
    if mode is None:
        return op(*args)
    with mode:
        return op(*args)


def conv_transpose_as_conv(gm: fx.GraphModule) -> int:
    """Every ``aten.conv_transpose2d`` with a constant weight -> zero insertion, padding, conv2d
    (see the module doc). Returns how many were rewritten."""
    done = 0
    for ct in list(gm.graph.nodes):
        if ct.target != aten.conv_transpose2d.input:
            continue
        args = list(ct.args) + [None] * (8 - len(ct.args))
        x, w, b = args[0], const_value(gm, args[1]), args[2]
        if w is None or w.dim() != 4:
            raise UnsupportedOpError(f"conv_transpose2d '{ct.name}' has a non-constant weight: the integer "
                                     "lowering needs a constant kernel")
        stride, pad = _pair(args[3], 1), _pair(args[4], 0)
        out_pad, groups, dil = _pair(args[5], 0), int(args[6] or 1), _pair(args[7], 1)
        cin, cout_g, kh, kw = w.shape
        # Regular-conv weight [Cout, Cin/g, kh, kw]: per group, in/out swapped, kernel flipped.
        wg = w.reshape(groups, cin // groups, cout_g, kh, kw).transpose(1, 2).flip(-1, -2)
        w_conv = _new_param(gm, f"{ct.name}_as_conv_weight", wg.reshape(groups * cout_g, cin // groups, kh, kw), ct)
        val = x.meta["val"]
        h, wd = int(val.shape[2]), int(val.shape[3])
        y = x
        if stride != [1, 1]:  # zeros between pixels: [N,C,H,1,W,1] -> pad -> [N,C,H*s,W*s] -> crop
            sh, sw = stride
            for dim in (3, 5):
                y = _call(gm, aten.unsqueeze.default, (y, dim), ct, _fake(aten.unsqueeze.default, y.meta["val"], dim))
            y = _call(gm, aten.pad.default, (y, [0, sw - 1, 0, 0, 0, sh - 1]), ct,
                      _fake(aten.constant_pad_nd.default, y.meta["val"], [0, sw - 1, 0, 0, 0, sh - 1]))
            for start, end in ((4, 5), (2, 3)):
                y = _call(gm, aten.flatten.using_ints, (y, start, end), ct,
                          _fake(aten.flatten.using_ints, y.meta["val"], start, end))
            for dim, n, s in ((2, h, sh), (3, wd, sw)):
                y = _call(gm, aten.slice.Tensor, (y, dim, 0, (n - 1) * s + 1), ct,
                          _fake(aten.slice.Tensor, y.meta["val"], dim, 0, (n - 1) * s + 1))
        top, left = dil[0] * (kh - 1) - pad[0], dil[1] * (kw - 1) - pad[1]
        amounts = [left, left + out_pad[1], top, top + out_pad[0]]  # aten.pad order: W first
        if any(a > 0 for a in amounts):
            grow = [max(a, 0) for a in amounts]
            y = _call(gm, aten.pad.default, (y, grow), ct, _fake(aten.constant_pad_nd.default, y.meta["val"], grow))
        for dim, lo, hi in ((2, amounts[2], amounts[3]), (3, amounts[0], amounts[1])):
            if lo < 0 or hi < 0:  # padding larger than the kernel's reach crops the output instead
                n = int(y.meta["val"].shape[dim])
                start, end = max(-lo, 0), n - max(-hi, 0)
                y = _call(gm, aten.slice.Tensor, (y, dim, start, end), ct,
                          _fake(aten.slice.Tensor, y.meta["val"], dim, start, end))
        conv = _call(gm, aten.conv2d.default, (y, w_conv, b, [1, 1], [0, 0], dil, groups), ct, ct.meta.get("val"),
                     name=f"{ct.name}_as_conv")
        ct.replace_all_uses_with(conv)
        gm.graph.erase_node(ct)
        done += 1
    if done:
        gm.graph.eliminate_dead_code()
        gm.recompile()
    return done


# --- bilinear upsampling -------------------------------------------------------------------------
def _exact(value: float) -> Fraction:
    """A float scale as the small rational it stands for (1/1.5 -> 2/3)."""
    return Fraction(value).limit_denominator(1 << 12)


def axis_weights(n_in: int, n_out: int, align_corners: bool, scale: float | None = None):
    """(index int64 [n_out, 2], weight int64 [n_out, 2], D): output row ``i`` is
    ``(w0 x[i0] + w1 x[i1]) / D``, with PyTorch's source coordinates taken as exact rationals
    (``area_pixel_compute_source_index``: align_corners ``i (in-1)/(out-1)``; else
    ``max(0, (i + 1/2) r - 1/2)`` with ``r = 1/scale`` when a scale factor is given, else in/out)."""
    if align_corners:
        r = Fraction(n_in - 1, n_out - 1) if n_out > 1 else Fraction(0)
        src = [i * r for i in range(n_out)]
    else:
        r = 1 / _exact(scale) if scale else Fraction(n_in, n_out)
        src = [max(Fraction(0), (i + Fraction(1, 2)) * r - Fraction(1, 2)) for i in range(n_out)]
    d = lcm(*(s.denominator for s in src))
    index, weight = np.zeros((n_out, 2), np.int64), np.zeros((n_out, 2), np.int64)
    for i, s in enumerate(src):
        lo = int(s)  # floor: s >= 0
        hi = lo + (1 if lo < n_in - 1 else 0)
        frac = s - lo
        index[i] = lo, hi
        weight[i] = int((1 - frac) * d), int(frac * d)
    return index, weight, d


def bilinear_attrs(node: fx.Node) -> dict:
    """Sizes and align_corners of an upsample_bilinear2d node; refused (named) when the source
    coordinates are not on a grid of at most MAX_DENOMINATOR steps per axis."""
    x = node.args[0]
    n_in = [int(s) for s in x.meta["val"].shape[-2:]]
    n_out = [int(s) for s in node.meta["val"].shape[-2:]]
    align = bool(node.args[2])
    if node.target == aten.upsample_bilinear2d.vec:
        factors = node.args[3] if len(node.args) > 3 else None
        scales = [float(f) for f in factors] if factors and node.args[1] is None else [None, None]
    else:
        scales = [node.args[3] if len(node.args) > 3 else None, node.args[4] if len(node.args) > 4 else None]
        scales = [1.0 / float(s) if s else None for s in scales]  # .default carries in/out ratios
    denominators = [axis_weights(a, b, align, s)[2] for a, b, s in zip(n_in, n_out, scales)]
    if max(denominators) > MAX_DENOMINATOR:
        raise UnsupportedOpError(
            f"upsample_bilinear2d '{node.name}' ({n_in} -> {n_out}, align_corners={align}, scale {scales}): its "
            f"interpolation weights are multiples of 1/{max(denominators)}; the integer lowering takes grids of at "
            f"most 1/{MAX_DENOMINATOR} (integer scales, or output sizes n*in / (n*in - 1) ratios); resize to such a "
            "size, or use nearest upsampling")
    return {"in_size": n_in, "out_size": n_out, "align_corners": align, "scales": scales,
            "denominators": denominators}


def bilinear_arrays(attrs: dict) -> dict[str, np.ndarray]:
    """The plan's arrays of a bilinear layer: source rows/columns and their integer weights."""
    out = {}
    for axis, key in ((0, "rows"), (1, "cols")):
        index, weight, _ = axis_weights(attrs["in_size"][axis], attrs["out_size"][axis], attrs["align_corners"],
                                        attrs["scales"][axis])
        out[key], out[f"{key}_weight"] = index, weight
    return out


def prelu_alpha(gm: fx.GraphModule, node: fx.Node) -> list[float]:
    """PReLU's slopes (one, or one per channel of dim 1), refused by name when not constant."""
    alpha = const_value(gm, node.args[1])
    if alpha is None or alpha.dim() > 1:
        raise UnsupportedOpError(f"prelu '{node.name}': the slope must be a constant of one value or one per "
                                 "channel")
    return [float(a) for a in alpha.reshape(-1)]


def _const_near(gm, a, value: float) -> bool:
    v = const_value(gm, a) if isinstance(a, fx.Node) else (torch.tensor(float(a)) if isinstance(a, (int, float)) else None)
    return v is not None and v.numel() == 1 and abs(float(v.reshape(())) - value) < 1e-6


def fuse_erf_gelu(gm: fx.GraphModule) -> int:
    """``mul(mul(x, add(erf(div(x, sqrt 2)), 1)), 0.5)`` (GELU as ONNX files before opset 20 spell
    it) -> ``gelu(x)``, so it becomes one lookup table; ``meta["tvmptq_spelling"]`` tells the
    Relax lowering which run of ops to replace (islands.UNARY_SIGNATURES)."""
    done = 0
    for erf in list(gm.graph.nodes):
        if erf.target != aten.erf.default or len(erf.users) != 1:
            continue
        div, add = erf.args[0], next(iter(erf.users))
        if not (isinstance(div, fx.Node) and div.target == aten.div.Tensor and len(div.users) == 1
                and _const_near(gm, div.args[1], 2 ** 0.5)):
            continue
        x = div.args[0]
        if add.target != aten.add.Tensor or len(add.users) != 1 or not _const_near(gm, add.args[1], 1.0):
            continue
        mul = next(iter(add.users))
        if mul.target != aten.mul.Tensor or set(mul.args) != {x, add} or len(mul.users) != 1:
            continue
        half = next(iter(mul.users))
        if half.target != aten.mul.Tensor or half.args[0] is not mul or not _const_near(gm, half.args[1], 0.5):
            continue
        gelu = _call(gm, aten.gelu.default, (x,), half, half.meta.get("val"))
        gelu.meta["tvmptq_spelling"] = "+erf"
        half.replace_all_uses_with(gelu)
        for n in (half, mul, add, erf, div):
            gm.graph.erase_node(n)
        done += 1
    if done:
        gm.graph.eliminate_dead_code()
        gm.recompile()
    return done


def fold_layer_scale(gm: fx.GraphModule) -> int:
    """``gamma * linear(x, W, b)`` with a constant per-feature ``gamma`` (ConvNeXt's and timm's layer
    scale) -> ``linear(x, gamma W, gamma b)``: the scale joins the per-channel weight scales instead
    of staying a float multiply (relay_passes/layer_scale.py folds it on the Relax import)."""
    done = 0
    for mul in list(gm.graph.nodes):
        if mul.target != aten.mul.Tensor or len(mul.args) != 2:
            continue
        lin = next((a for a in mul.args if isinstance(a, fx.Node) and a.target == aten.linear.default), None)
        other = mul.args[1] if lin is mul.args[0] else mul.args[0]
        gamma = const_value(gm, other) if isinstance(other, fx.Node) else None
        if lin is None or len(lin.users) != 1 or gamma is None or not gamma.is_floating_point():
            continue
        w = const_value(gm, lin.args[1])
        b = const_value(gm, lin.args[2]) if len(lin.args) > 2 and lin.args[2] is not None else None
        if w is None or b is None or w.dim() != 2 or gamma.numel() != w.shape[0] or any(s != 1 for s in gamma.shape[:-1]):
            continue  # (a linear without bias stays: the Relax fold matches matmul + bias add)
        g = gamma.reshape(-1).double()
        wn = _new_param(gm, f"{lin.name}_scaled_weight", (w.double() * g[:, None]).float(), lin)
        bn = _new_param(gm, f"{lin.name}_scaled_bias", (b.double() * g).float(), lin)
        lin.args = (lin.args[0], wn, bn)
        lin.meta["val"] = mul.meta.get("val", lin.meta.get("val"))
        mul.replace_all_uses_with(lin)
        gm.graph.erase_node(mul)
        done += 1
    if done:
        gm.graph.eliminate_dead_code()
        gm.recompile()
    return done
