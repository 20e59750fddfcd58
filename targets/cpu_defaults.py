"""Default CPU schedules for the fused elementwise kernels nothing else schedules.

Why: FuseTIR turns a chain of elementwise ops (a residual add's requantize: 2 casts, 2 multiplies,
3 adds, a shift, a clip, a cast) into one PrimFunc whose every intermediate is a full-size buffer
(``sblock_alloc_buffer``). TVM 0.27's CPU build schedules nothing by itself, so unless a tuning
database holds a schedule for that exact kernel, each intermediate is written to memory and read
back (ten int64 passes over the tensor for one add). Measured on EfficientNet-Lite0 int8 in
NHWC (one znver4 core): the residual adds took 0.65 ms unscheduled.

:func:`schedule_elementwise` gives such a kernel the obvious schedule: every intermediate block
inlined into the last one, whose outer loops are fused and parallel (from
kernels.loops.PARALLEL_MIN_ELEMENTS elements on) and whose innermost loop is vectorized by the largest of
16/8/4/2 that divides it. It leaves alone any function with a reduction, more than
one block left after inlining, or ``tirx.is_scheduled`` (hand kernels, tuned kernels). Schedule
primitives do not change what is computed, so the results are the same bit for bit (tests check
whole programs against the NumPy reference with these schedules in place).
"""
from __future__ import annotations

VECTOR_WIDTHS = (16, 8, 4, 2)


def schedule_elementwise(func):
    """The scheduled PrimFunc, or None when ``func`` is not an all-spatial kernel this handles."""
    from tvm.error import InternalError
    from tvm.s_tir import Schedule, ScheduleError

    from .kernels import PARALLEL_MIN_ELEMENTS, loop_extent, parallel_if_worth
    if func.attrs is not None and bool(func.attrs.get("tirx.is_scheduled", False)):
        return None
    try:
        sch = Schedule(func)
        root = sch.get_sblock("root")  # a PrimFunc without one raises: left as it is
        blocks = sch.get_child_blocks(root)
        if not blocks or any(_has_reduction(sch, b) for b in blocks):
            return None
        for b in blocks[:-1]:
            sch.compute_inline(b)
        if len(sch.get_child_blocks(root)) != 1:
            return None
        *outer, inner = sch.get_loops(sch.get_child_blocks(root)[0])
        if outer:
            elements = loop_extent(sch, (*outer, inner))
            parallel_if_worth(sch, sch.fuse(*outer) if len(outer) > 1 else outer[0], elements, PARALLEL_MIN_ELEMENTS)
        extent = int(sch.get(inner).extent)
        vec = next((v for v in VECTOR_WIDTHS if extent % v == 0 and extent > v), 0)
        if vec:  # the innermost axis only: fusing it with others would turn contiguous loads into gathers
            sch.vectorize(sch.split(inner, [None, vec])[1])
    except (ScheduleError, InternalError, ValueError):  # a block form these primitives refuse: keep TVM's default
        return None
    return sch.mod["main"].with_attr("tirx.is_scheduled", True)


def _has_reduction(sch, block) -> bool:
    from tvm.tirx import IterVar
    return any(iv.iter_type != IterVar.DataPar for iv in sch.get(block).iter_vars)


def schedule_elementwise_kernels(mod, target=None):
    """``mod`` with :func:`schedule_elementwise` applied to every PrimFunc it handles; returns
    (module, number of kernels scheduled). With a ``target``, the kernels with reductions it leaves
    get cpu_reduction.schedule_reduction (attention matmuls with their requantize, softmax)."""
    import tvm

    from .cpu_reduction import schedule_reduction
    updates = {}
    for gv, func in mod.functions_items():
        if isinstance(func, tvm.tirx.PrimFunc):
            new = schedule_elementwise(func)
            if new is None and target is not None:
                new = schedule_reduction(func, target)
            if new is not None:
                updates[gv] = new
    for gv, func in updates.items():
        mod[gv] = func
    return mod, len(updates)
