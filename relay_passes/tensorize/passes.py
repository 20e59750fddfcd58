"""The passes: TensorizeDot (every ISA of targets.kernels) and TensorizeDenseVNNI (x86 VNNI only)."""
from __future__ import annotations

import warnings

import tvm
from tvm import relax

from tvmptq.quant.plan import QuantPlan

from ..match import op_name
from ..mutate import mutate_functions
from .analysis import analyse, target_isa
from .attention import analyse_batch_matmul, batch_matmul_isa, batch_matmul_pattern
from .pattern import REPORT_ATTR, TensorizeRecord, _kernel_kind, _layer_names, dense_requant_pattern
from .rewrite import Rewriter


class _Tensorize:
    """The rewrite behind TensorizeDot and TensorizeDenseVNNI; ``isas`` limits the ISAs considered."""

    name = "TensorizeDot"

    def __init__(self, target, plan: QuantPlan | None = None, tile=(4, 4, 128), warn: bool = True, isas=None):
        self.target, self.plan, self.tile, self.warn, self.isas = target, plan, tuple(tile), warn, isas
        self.report: list[TensorizeRecord] = []

    def transform_module(self, mod: tvm.IRModule, ctx) -> tvm.IRModule:
        isa, target_reason = target_isa(self.target, self.isas)
        bm_isa, bm_reason = batch_matmul_isa(self.target, self.isas)
        pattern, names = dense_requant_pattern()
        bm_pattern, bm_names = batch_matmul_pattern()
        by_weight, matmul_names = _layer_names(self.plan)
        report, plans = [], {}  # plans: final var of a chain -> (KernelPlan, its record)
        for _, func in mod.functions_items():
            if not isinstance(func, relax.Function):
                continue
            var2val = relax.analysis.get_var2val(func)
            bindings = [b for block in func.body.blocks for b in block.bindings]
            chains = {}  # matmul var -> (final var, matched dict)
            for b in bindings:
                # int16: the container of wide (9..16-bit) tensors, written by the dense kernels
                if op_name(b.value) == "relax.astype" and str(b.value.ty.dtype) in ("uint8", "int8", "int16"):
                    for pat, nm in ((pattern, names), (bm_pattern, bm_names)):
                        mt = pat.extract_matched_expr(b.value, var2val)
                        if mt is not None:
                            acc = mt[nm["acc"]]
                            chains[next(c.var for c in bindings if c.value.same_as(acc))] = (b.var, mt)
                            break
            n_mm = 0
            for b in bindings:
                kind, name = _kernel_kind(b, by_weight, matmul_names, n_mm)
                if kind is None:
                    continue
                rec = TensorizeRecord(name, kind, False)
                report.append(rec)
                if kind == "matmul":  # activation x activation: targets.kernels.batch_matmul (attention.py)
                    n_mm += 1
                    if bm_reason or b.var not in chains:
                        rec.reason = bm_reason or ("activation x activation matmul not followed by the int64 "
                                                   "fixed-point requantize chain")
                        continue
                    final, mt = chains[b.var]
                    try:
                        p = analyse_batch_matmul(mt, bm_names, bm_isa, var2val)
                    except ValueError as err:
                        rec.reason = f"activation x activation matmul: {err}"
                        continue
                    rec.shape, rec.tensorized = (p.spec.batch * p.spec.M, p.spec.N, p.spec.K), True
                    plans[final] = (p, rec)
                elif target_reason:
                    rec.reason = target_reason
                elif b.var not in chains:
                    rec.reason = ("its int32 accumulator is not followed by the int64 fixed-point requantize chain "
                                  "(requantize='fixed_point_multiply', or a float branch after the layer?)")
                else:
                    final, mt = chains[b.var]
                    try:
                        p = analyse(mt, names, isa, var2val)
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
            rewriter = Rewriter(mod, {v: p for v, (p, _) in plans.items()}, self.tile)
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
    in a warning unless ``warn=False``. ``isas``: the targets.kernels.DotISA rows to choose from
    (default: targets.kernels.isas())."""

    def __init__(self, target, plan: QuantPlan | None = None, tile=(4, 4, 128), warn: bool = True, isas=None):
        super().__init__(target, plan, tile, warn, isas)


@tvm.transform.module_pass(opt_level=0, name="tvmptq.TensorizeDenseVNNI")
class TensorizeDenseVNNI(_Tensorize):
    """TensorizeDot limited to x86 VNNI (the same rewrite; any other target is left unchanged and
    said to lack ``vnni``)."""

    name = "TensorizeDenseVNNI"

    def __init__(self, target, plan: QuantPlan | None = None, tile=(4, 4, 128), warn: bool = True):
        from targets.kernels.x86_vnni import VNNI
        super().__init__(target, plan, tile, warn, (VNNI,))


def tensorize_for(target, plan: QuantPlan | None = None, **kw) -> tvm.transform.Pass:
    """The x86 int8 tensorization passes for ``target`` (a registry name or targets.Target), as a
    Sequential: TensorizeDot (a no-op, with a warning naming every layer, when the target has no
    dot-product instruction the kernels use). Apply after the lowering (lowering_passes(plan,
    target=...) does)."""
    return tvm.transform.Sequential([TensorizeDot(target, plan, **kw)], name="tvmptq.Tensorize")

