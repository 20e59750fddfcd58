"""Transposed convolution as zero insertion + padding + an ordinary conv, on the Relax import.

The same rewrite as tvmptq/quant/edge_ops.conv_transpose_as_conv on the PyTorch graph, so the
matcher finds the conv2d the plan names (weight flipped, in/out channels swapped per group):

    conv2d_transpose(x, W, stride s, padding p, output_padding o, dilation d)
      == conv2d(pad(dilate_s(x), d (k - 1) - p [+ o]), flip(W)^T, stride 1, dilation d)

where ``dilate_s`` puts s - 1 zeros between pixels (expand_dims, pad with 0, reshape, slice:
data movement, so CancelQDQ carries integers through it and the zeros become the zero point).
The float values only locate the layer: the integers come from the plan.
"""
from __future__ import annotations

import numpy as np
import tvm
from tvm import relax
from tvm.relax import op as R

from .match import _is_const, op_name
from .mutate import mutate_functions


@relax.expr_functor.mutator
class _ConvTransposeRewriter(relax.PyExprMutator):
    def visit_call_(self, call):
        call = super().visit_call_(call)
        if op_name(call) != "relax.nn.conv2d_transpose" or not _is_const(call.args[1]):
            return call
        at = call.attrs
        if (str(at.data_layout), str(at.kernel_layout), str(at.out_layout)) != ("NCHW", "IOHW", "NCHW"):
            return call  # the plan's conv is NCHW: left as is, the matcher then names it
        bb, x = self.builder_, call.args[0]
        w = call.args[1].value.numpy()
        groups = int(at.groups)
        cin, cout_g, kh, kw = w.shape
        wg = np.flip(w.reshape(groups, cin // groups, cout_g, kh, kw).transpose(0, 2, 1, 3, 4), (-1, -2))
        w_conv = np.ascontiguousarray(wg.reshape(groups * cout_g, cin // groups, kh, kw))
        (sh, sw), (dh, dw) = [int(v) for v in at.strides], [int(v) for v in at.dilation]
        top, left, bottom, right = [int(v) for v in at.padding]
        oh, ow = [int(v) for v in at.output_padding]
        n, c, h, wd = [int(d) for d in x.ty.shape]
        y = x
        if (sh, sw) != (1, 1):
            y = bb.emit(R.expand_dims(y, [3, 5]))
            y = bb.emit(R.nn.pad(y, [0, 0, 0, 0, 0, 0, 0, sh - 1, 0, 0, 0, sw - 1], pad_value=0.0))
            y = bb.emit(R.reshape(y, [n, c, h * sh, wd * sw]))
            y = bb.emit(R.strided_slice(y, axes=[2, 3], begin=[0, 0], end=[(h - 1) * sh + 1, (wd - 1) * sw + 1]))
        amounts = [dh * (kh - 1) - top, dh * (kh - 1) - bottom + oh, dw * (kw - 1) - left, dw * (kw - 1) - right + ow]
        if any(a > 0 for a in amounts):
            t, b, lft, r = (max(a, 0) for a in amounts)
            y = bb.emit(R.nn.pad(y, [0, 0, 0, 0, t, b, lft, r], pad_value=0.0))
        if any(a < 0 for a in amounts):  # padding beyond the kernel's reach crops
            shape = [int(d) for d in y.ty.shape]
            t, b, lft, r = (max(-a, 0) for a in amounts)
            y = bb.emit(R.strided_slice(y, axes=[2, 3], begin=[t, lft], end=[shape[2] - b, shape[3] - r]))
        return R.nn.conv2d(y, relax.const(w_conv.astype(w.dtype)), strides=[1, 1], padding=[0, 0, 0, 0],
                           dilation=[dh, dw], groups=groups, out_dtype=str(call.ty.dtype))


@tvm.transform.module_pass(opt_level=0, name="tvmptq.ConvTransposeAsConv")
class ConvTransposeAsConv:
    """``conv2d_transpose`` with a constant NCHW/IOHW weight -> zero insertion, pad, ``conv2d``."""

    def transform_module(self, mod: tvm.IRModule, ctx) -> tvm.IRModule:
        return mutate_functions(mod, _ConvTransposeRewriter(mod))
