"""The kernels of the rewrite (one scheduled PrimFunc per distinct shape and dtype; requantize numbers
are arguments) and the calls that replace each chain, channels last where the ISA says so."""
from __future__ import annotations

import numpy as np
import tvm
from tvm import relax
from tvm.relax import op as R

from ..channels_last import ChannelsLast
from .analysis import KernelPlan
from .attention import BatchMatmulPlan, emit_batch_matmul
from .pattern import DEPTHWISE_DOT_INFIX, DEPTHWISE_PREFIX

OP_PATTERN_OPAQUE = 8          # tvm::relax::OpPatternKind::kOpaque
CONV_TILE = (7, 2, 256)  # dense tiles of a channels-last conv: 7 pixels x 2 lane groups (kernels.dense.tile_sizes: 8 x 2 would leave the stack)


def build_kernel(p: KernelPlan, tile=(4, 4, 128)) -> tvm.tirx.PrimFunc:
    """The scheduled, tensorized PrimFunc for one rewrite (targets.kernels.dense_requant, or
    conv1x1_requant with its own default tiles for a 1x1 conv), on the rewrite's ISA."""
    from targets import kernels as dot
    if p.depthwise:
        from targets.kernels import depthwise as dw
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


def _short(dtype: str) -> str:
    """uint8 -> u8, int8 -> i8, int16 -> i16 (kernel names)."""
    return dtype[0] + dtype[4:] if dtype.startswith("uint") else dtype[0] + dtype[3:]


def _hi32_kw(p: KernelPlan) -> dict:
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
class Rewriter(relax.PyExprMutator):
    def __init__(self, mod, plans: dict, tile):
        super().__init__(mod)
        self.plans, self.tile = plans, tile
        self.kernels: dict[tuple, relax.GlobalVar] = {}
        self.names: dict[relax.Var, str] = {}
        self.channels_last = ChannelsLast(self.builder_)

    def _kernel(self, p: KernelPlan) -> relax.GlobalVar:
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
                name = f"{prefix}{nhwc}_{_short(p.x_dtype)}_{_short(p.out_dtype)}_{p.M}x{p.N}x{p.K}"
            self.kernels[key] = self.builder_.add_func(build_kernel(p, self.tile), name)
        return self.kernels[key]

    def _im2col(self, p: KernelPlan, x) -> relax.Expr:
        """The rows of ``p``'s conv: im2col of its input's twin if it has one, else of the NCHW ``x``."""
        from targets.kernels.im2col import im2col
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

    def _nhwc_call(self, p: KernelPlan, gv, x, var) -> relax.Expr:
        """The channels-last kernel call for ``var`` (its NHWC output becomes var's twin); returns
        the NCHW value of ``var``."""
        bb, cl = self.builder_, self.channels_last
        B, OH, OW = p.lead
        if p.depthwise:  # the int8 weight as [KH, KW, C], or its runs of taps for the dot-product kernel
            from targets.kernels.depthwise import dot_weight
            _, C, _, _, KH, KW, _, _ = p.depthwise
            w = np.ascontiguousarray(p.w.astype(np.int8).reshape(C, KH, KW).transpose(1, 2, 0))
            w = relax.const(dot_weight(w) if p.dw_dot else w, "int8")
            y = relax.call_tir(gv, [cl.nhwc(p.x, x), w, relax.const(p.qp, str(p.qp.dtype))],
                               relax.TensorType([B, OH, OW, C], p.out_dtype))
        else:  # the dense over [B * OH * OW, K] rows: im2col's, or a 1x1 conv's NHWC input as it is
            from targets.kernels import pack_weight
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
        if isinstance(p, BatchMatmulPlan):  # attention's activation x activation matmul
            y, self.names[binding.var] = emit_batch_matmul(self, p, self.kernels, _as_kernel)
            return super().visit_var_binding_(relax.VarBinding(binding.var, y))
        if p is None:
            if not cl.follow(binding.var, binding.value, self.visit_expr):
                binding = relax.VarBinding(binding.var, cl.read_nchw(binding.value))
            return super().visit_var_binding_(binding)  # a twinned op's NCHW original is dead code
        from targets.kernels import pack_weight
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
        wp = (p.isa.pack_weight or pack_weight)(p.w, p.isa.lanes)  # int16 for the int16 kernel
        args = [x, relax.const(wp, str(wp.dtype)), relax.const(p.qp, str(p.qp.dtype))]
        y = relax.call_tir(gv, args, relax.TensorType(out_shape, p.out_dtype))
        if final_shape is not None:
            y = R.reshape(bb.emit(y), final_shape)
        self.names[binding.var] = gv.name_hint
        super().visit_var_binding_(relax.VarBinding(binding.var, y))
