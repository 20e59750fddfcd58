"""Default CPU schedules for the fused reduction kernels nothing else schedules.

Why: cpu_defaults.schedule_elementwise leaves every kernel with a reduction alone, and TVM 0.27's CPU
build schedules nothing by itself, so an untuned int8 transformer ran its attention matmuls (int8
x int8 batch matmul, int32 accumulation, requantize epilogue: ``fused_matmul*``) and its softmax
islands as serial scalar loops with every intermediate a full-size buffer. Measured on MiniLM-L6
int8 (batch 1, seq 128, one znver4 core, results/minilm_profile.md): 12 matmuls ~27 ms and 6
softmaxes ~12 ms of 48 ms.

Two rules, tried in order on every unscheduled PrimFunc:

- :func:`schedule_matmul_epilogue`, one reduction block (iterators all spatial, then all reduction)
  with elementwise producers and consumers: producers (casts) compute-inlined, the epilogue chain
  inlined into its last block, whose outer spatial loops are fused and parallel; the reduction is
  computed one output row at a time under that loop (its accumulator is one row, on the stack), with
  the reduction loop outside the row's spatial axis, which is vectorized.
- softmax-like kernels (several reductions over a row: max, exp-sum, then the divide): the
  elementwise blocks after the last reduction inlined into the last one, then DLight's CPU
  ``Reduction`` rule (tvm.s_tir.dlight.cpu: leading spatial axes parallel, every block computed per
  row, elementwise blocks vectorized).

Schedule primitives do not change what is computed (the same operations in the same order per
output element, the reduction order over k included), so results are the same bit for bit: tests
check whole transformer programs against the NumPy reference with these schedules in place.
"""
from __future__ import annotations

VECTOR_WIDTHS = (16, 8, 4, 2)


def _iter_kinds(sch, block) -> str:
    from tvm.tirx import IterVar
    return "".join("S" if iv.iter_type == IterVar.DataPar else "R" for iv in sch.get(block).iter_vars)


def _vectorize_innermost(sch, loop) -> None:
    extent = int(sch.get(loop).extent)
    vec = next((v for v in VECTOR_WIDTHS if extent % v == 0 and extent >= v), 0)
    if vec:
        sch.vectorize(sch.split(loop, [None, vec])[1] if extent > vec else loop)


def schedule_matmul_epilogue(func):
    """The scheduled PrimFunc, or None when ``func`` is not one reduction with elementwise neighbours."""
    from tvm.s_tir import Schedule

    from .kernels import parallel_if_worth
    sch = Schedule(func)
    blocks = sch.get_child_blocks(sch.get_sblock("root"))
    kinds = [_iter_kinds(sch, b) for b in blocks]
    reductions = [i for i, k in enumerate(kinds) if "R" in k]
    if len(reductions) != 1:
        return None
    r = reductions[0]
    kind = kinds[r]
    n_spatial = len(kind) - len(kind.lstrip("S"))
    if not n_spatial or "S" in kind[n_spatial:] or len(sch.get_loops(blocks[r])) != len(kind):
        return None
    for b in blocks[:r]:  # producers (casts of the operands)
        sch.compute_inline(b)
    reduction = blocks[r]
    for b in blocks[r + 1:-1]:  # the epilogue chain into its last block
        sch.compute_inline(b)
    macs = 1
    for loop in sch.get_loops(reduction):
        macs *= int(sch.get(loop).extent)
    if r == len(blocks) - 1:  # no epilogue: the reduction writes the output
        *outer, inner = sch.get_loops(reduction)[:n_spatial]
        reds = sch.get_loops(reduction)[n_spatial:]
        row = sch.fuse(*outer) if len(outer) > 1 else (outer[0] if outer else None)
    else:
        last = sch.get_child_blocks(sch.get_sblock("root"))[-1]
        *outer, inner_e = sch.get_loops(last)
        if not outer or len(outer) + 1 != n_spatial:
            return None
        row = sch.fuse(*outer) if len(outer) > 1 else outer[0]
        sch.compute_at(reduction, row, preserve_unit_loops=False)
        _vectorize_innermost(sch, inner_e)
        inner, *reds = sch.get_loops(reduction)[1:]
    sch.reorder(*reds, inner)  # k outside the row's spatial axis: contiguous, vectorizable updates
    _vectorize_innermost(sch, inner)
    if row is not None:
        parallel_if_worth(sch, row, macs)
    # After both: primitives refuse loops over the update block once it has lost its init.
    init = sch.decompose_reduction(reduction, reds[0])
    init_inner = sch.get_loops(init)[-1]
    if sch.get(init_inner).kind != sch.get(sch.get_loops(reduction)[-1]).kind:
        _vectorize_innermost(sch, init_inner)
    return sch.mod["main"].with_attr("tirx.is_scheduled", True)


def schedule_row_reductions(func, target):
    """Softmax-like kernels (several row reductions) through DLight's CPU Reduction rule, after
    the elementwise tail is inlined into its last block; None when the rule does not apply."""
    from tvm.s_tir import Schedule
    from tvm.s_tir.dlight.cpu import Reduction
    sch = Schedule(func)
    blocks = sch.get_child_blocks(sch.get_sblock("root"))
    kinds = [_iter_kinds(sch, b) for b in blocks]
    reductions = [i for i, k in enumerate(kinds) if "R" in k]
    if len(reductions) < 2:
        return None
    for b in blocks[reductions[-1] + 1:-1]:
        sch.compute_inline(b)
    scheduled = Reduction().apply(sch.mod["main"], target, False)
    if scheduled is None:
        return None
    return scheduled.mod["main"].with_attr("tirx.is_scheduled", True)


def schedule_reduction(func, target):
    """``func`` scheduled by the first rule that takes it, or None (left as TVM's default)."""
    from tvm.error import InternalError
    from tvm.s_tir import ScheduleError
    if func.attrs is not None and bool(func.attrs.get("tirx.is_scheduled", False)):
        return None
    for rule in (schedule_matmul_epilogue, lambda f: schedule_row_reductions(f, target)):
        try:
            new = rule(func)
        except (ScheduleError, InternalError, ValueError):  # a form these primitives refuse: try the next
            new = None
        if new is not None:
            return new
    return None
