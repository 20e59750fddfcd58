"""Channels-last twins: the CPU kernels of TensorizeDot read and write NHWC, and the integer ops
between them follow, so a transpose is paid only where the chain of such ops ends.

Why: in NCHW a 1x1 conv is a GEMM whose activation operand must first be transposed (4
consecutive channels of one pixel are one 32-bit word of ``vpdpbusd``/``sdot``) and whose int32
tile must be transposed back on the way out; a depthwise conv vectorizes over pixels, and the
14 x 14 and 7 x 7 maps of a MobileNet/EfficientNet have rows shorter than one vector. In NHWC the
1x1 conv is the plain dense kernel on ``[B*H*W, C]`` (a free reshape) and the depthwise conv
vectorizes over channels. Measured on EfficientNet-Lite0's layers (one znver4 core): 1x1 convs
1.2-1.3x, depthwise 1.5-2.8x faster (scripts/bench_kernels.py).

How (TensorizeDot's rewriter calls this per binding, in order): the graph stays NCHW, and a
binding may get an NHWC *twin* (a Var holding the same values channels last):

* a kernel writes its output in NHWC: that is the twin; the NCHW binding becomes a
  ``permute_dims`` of it, which dead-code elimination removes when nothing NCHW reads it;
* an elementwise integer op (:data:`ELEMENTWISE`: the requantize chain of a residual add, clips,
  casts) or a ``nn.pad`` whose tensor inputs have twins gets a twin computed in NHWC: per-channel
  constants are transposed at compile time, pad widths reordered;
* a kernel whose input has no twin transposes it (:meth:`ChannelsLast.nhwc`), once per value.

Anything else (pools, reshapes, the float ops at the ends, convs without a kernel) reads values
that have twins as the twin transposed back (:meth:`ChannelsLast.read_nchw`), so the NCHW
originals of twinned ops are dead code; the program's values never change, only where the
transposes are.
"""
from __future__ import annotations

import numpy as np
from tvm import relax
from tvm.relax import op as R

from .match import _is_const, op_name

TO_NHWC, TO_NCHW = (0, 2, 3, 1), (0, 3, 1, 2)
# ops that compute each output element from the same element of their inputs (broadcasting)
ELEMENTWISE = frozenset({"relax.add", "relax.subtract", "relax.multiply", "relax.right_shift", "relax.left_shift",
                         "relax.minimum", "relax.maximum", "relax.astype", "relax.clip"})


def _ndim(e) -> int:
    return len(e.ty.shape) if isinstance(getattr(e, "ty", None), relax.TensorType) and e.ty.shape is not None else -1


def _const_nhwc(c):
    """A constant operand of an NCHW elementwise op, for the op's NHWC twin: single values as they
    are, others broadcast-aligned to 4 dims and transposed."""
    if not hasattr(c.value, "numpy"):  # a scalar literal
        return c
    a = c.value.numpy()
    if a.size == 1:
        return c
    a = a.reshape((1,) * (4 - a.ndim) + a.shape)
    return relax.const(np.ascontiguousarray(a.transpose(TO_NHWC)), str(c.ty.dtype))


def _pad_nhwc(widths) -> list[int]:
    """NCHW pad widths [n0, n1, c0, c1, h0, h1, w0, w1] -> NHWC order."""
    w = [int(v) for v in widths]
    return w[0:2] + w[4:6] + w[6:8] + w[2:4]


class ChannelsLast:
    """The twins of one function being rewritten (see the module doc); ``bb`` emits them."""

    def __init__(self, bb: relax.BlockBuilder):
        self.bb = bb
        self.twins: dict = {}        # original NCHW Var -> its NHWC twin (a Var of the new function)
        self.back: dict = {}         # original NCHW Var -> a transpose of its twin back to NCHW

    def nhwc(self, var: relax.Var, new_value: relax.Expr) -> relax.Expr:
        """``var`` (an original binding) in NHWC: its twin, else a transpose of ``new_value`` (its
        rewritten NCHW value), remembered as the twin."""
        if var not in self.twins:
            self.twins[var] = self.bb.emit(R.permute_dims(new_value, list(TO_NHWC)))
        return self.twins[var]

    def kernel_output(self, var: relax.Var, y_nhwc: relax.Expr) -> relax.Expr:
        """Record a kernel's NHWC output as ``var``'s twin; returns the NCHW value for ``var``."""
        self.twins[var] = self.bb.emit(y_nhwc)
        return self.nchw(var)

    def nchw(self, var: relax.Var) -> relax.Var:
        """The twin of ``var`` transposed back to NCHW (once per value)."""
        if var not in self.back:
            self.back[var] = self.bb.emit(R.permute_dims(self.twins[var], list(TO_NCHW)))
        return self.back[var]

    def read_nchw(self, value: relax.Expr) -> relax.Expr:
        """``value`` (an original binding's) with every argument that has a twin read as the twin
        transposed back: the NCHW chain that computed it is then dead code, not a second copy."""
        if isinstance(value, relax.Call) and any(isinstance(a, relax.Var) and a in self.twins for a in value.args):
            args = [self.nchw(a) if isinstance(a, relax.Var) and a in self.twins else a for a in value.args]
            return relax.Call(value.op, args, value.attrs, value.ty_args)
        if isinstance(value, relax.Tuple) and any(isinstance(a, relax.Var) and a in self.twins for a in value.fields):
            return relax.Tuple([self.nchw(a) if isinstance(a, relax.Var) and a in self.twins else a
                                for a in value.fields])
        return value

    def follow(self, var: relax.Var, value: relax.Expr, visit) -> bool:
        """Give the binding ``var = value`` (original) an NHWC twin when it is an elementwise op or a
        pad of values that have twins; ``visit`` maps an original expression to the rewritten one.
        Returns whether it did."""
        if not isinstance(value, relax.Call) or _ndim(var) != 4:
            return False
        name = op_name(value)
        if name == "relax.nn.pad":
            x = value.args[0]
            if x in self.twins and str(value.attrs.pad_mode) == "constant":
                self.twins[var] = self.bb.emit(R.nn.pad(self.twins[x], _pad_nhwc(value.attrs.pad_width),
                                                        pad_value=float(value.attrs.pad_value)))
                return True
            return False
        if name not in ELEMENTWISE or not any(a in self.twins for a in value.args if isinstance(a, relax.Var)):
            return False
        args = []
        for a in value.args:
            if isinstance(a, relax.Var):
                if a in self.twins:
                    args.append(self.twins[a])
                elif _ndim(a) == 4:
                    args.append(self.nhwc(a, visit(a)))
                elif _ndim(a) == 0:
                    args.append(visit(a))
                else:
                    return False  # a lower-rank tensor broadcast against NCHW: leave the op in NCHW
            elif _is_const(a):
                args.append(_const_nhwc(a))
            else:
                args.append(a)  # PrimValues (clip bounds), data types
        self.twins[var] = self.bb.emit(relax.Call(value.op, args, value.attrs, value.ty_args))
        return True
