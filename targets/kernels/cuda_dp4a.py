"""int8 GEMM kernels on NVIDIA GPUs with ``dp4a`` (``__dp4a``, sm_61 and later).

``__dp4a(a, b, c)``: one int32 accumulator ``c`` adds the dot product of the 4 signed bytes of ``a``
with the 4 signed bytes of ``b``. In the terms of targets/kernels/dense.py that is a dot-product ISA with
one lane, so the TE workloads (``dense_requant``, ``conv1x1_requant``: weights packed at compile
time, the shift of uint8 activations by -128 folded into the bias, the requantize in the epilogue,
int64, exactly as relay_passes/integer_ops) are the CPU ones; only the schedule differs:

* every thread owns one output: blocks of ``threads_m x threads_n`` threads over (rows, channels),
  the thread's int32 accumulator in a register (``local``), k walked 4 bytes at a time, each step
  one ``__dp4a`` of an activation word and a weight word (both 4-byte aligned: K is padded to 4);
* the thread requantizes its own accumulator and writes the int8/uint8 output (no int32 tensor
  ever reaches global memory, no standalone requantize kernel);
* the shift/transpose stage (uint8 -> int8, NCHW -> pixels x channels for a 1x1 conv) is its own
  elementwise kernel, one thread per element.

Why ``__dp4a`` and not TVM's ``dp4a_s8s8s32`` intrinsic: that one reads its operands from
``shared`` memory; these kernels read them from global memory (the weight word of a thread is read
by the ``threads_m`` threads of its column, which the L1 cache serves). Mixed u8 x s8 has no
``__dp4a`` overload (the int overload treats both operands as signed), hence int8 activations.
Not yet here: shared-memory tiling of activations and weights, int8 tensor cores (``mma``).
"""
from __future__ import annotations

import functools

from .isa import DotISA, register_intrinsic, register_isa
from .loops import _divisor_at_most

DP4A_INTRIN = "dp4a_s8s8s32_global_tvmptq"


@functools.cache
def _intrin_funcs():
    """(desc, impl): C[0] int32 (local) += A[4] int8 . B[4] int8, the impl one ``__dp4a``."""
    from tvm.script import tirx as T

    @T.prim_func(s_tir=True)
    def dp4a_desc(
        A: T.Buffer((4,), "int8", offset_factor=1, align=4),
        B: T.Buffer((4,), "int8", offset_factor=1, align=4),
        C: T.Buffer((1,), "int32", offset_factor=1, align=4, scope="local"),
    ) -> None:
        with T.sblock("root"):
            T.reads(C[0], A[0:4], B[0:4])
            T.writes(C[0])
            for k in range(0, 4):
                with T.sblock("update"):
                    vk = T.axis.remap("R", [k])
                    C[0] = C[0] + T.cast(A[vk], "int32") * T.cast(B[vk], "int32")

    @T.prim_func(s_tir=True)
    def dp4a_impl(
        A: T.Buffer((4,), "int8", offset_factor=1, align=4),
        B: T.Buffer((4,), "int8", offset_factor=1, align=4),
        C: T.Buffer((1,), "int32", offset_factor=1, align=4, scope="local"),
    ) -> None:
        with T.sblock("root"):
            T.reads(C[0], A[0:4], B[0:4])
            T.writes(C[0])
            C[0] += T.call_pure_extern("__dp4a", A.vload([0], "int8x4"), B.vload([0], "int8x4"), T.int32(0),
                                       dtype="int32")

    return dp4a_desc, dp4a_impl


def register_dp4a_intrinsic() -> str:
    """Register the ``__dp4a`` tensor intrinsic (idempotent); returns :data:`DP4A_INTRIN`."""
    return register_intrinsic(DP4A_INTRIN, _intrin_funcs)


def _bind_elementwise(sch, block, threads: int = 256) -> None:
    """One thread per element of ``block`` (its loops fused, split into blocks of ``threads``)."""
    fused = sch.fuse(*sch.get_loops(block))
    bx, tx = sch.split(fused, [None, threads])
    sch.bind(bx, "blockIdx.x")
    sch.bind(tx, "threadIdx.x")


def _schedule_gpu_dot(sch, threads_m: int, threads_n: int):
    """Thread-per-output tiling of block ``compute`` (loops: [batch], i, j, k) with the epilogue
    ``C`` per thread, the accumulator in a register and ``__dp4a`` on each 4-byte step of k."""
    blk = sch.get_sblock("compute")
    *batch, i, j, k = sch.get_loops(blk)
    M, Np = (int(sch.get(x).extent) for x in (i, j))
    # exact splits: a predicated tail under the tensorized loop does not match the intrinsic. A
    # block keeps threads_m * threads_n threads where the shape allows: few rows (a batch-1
    # classifier) give the threads to the channels
    block = threads_m * threads_n
    tn = _divisor_at_most(Np, block // min(threads_m, M))
    tm = _divisor_at_most(M, max(1, block // tn))
    io, ii = sch.split(i, [None, tm])
    jo, ji = sch.split(j, [None, tn])
    ko, ki = sch.split(k, [None, 4])
    sch.reorder(*batch, io, jo, ii, ji, ko, ki)
    rows = sch.fuse(*batch, io) if batch else io
    sch.bind(rows, "blockIdx.y")
    sch.bind(jo, "blockIdx.x")
    sch.bind(ii, "threadIdx.y")
    sch.bind(ji, "threadIdx.x")
    sch.set_scope(blk, 0, "local")
    sch.reverse_compute_at(sch.get_sblock("C"), ji)
    sch.decompose_reduction(blk, ko)
    sch.tensorize(ki, register_dp4a_intrinsic())
    return sch


def schedule_dense(func, isa: DotISA, *_cpu_tile, threads_m: int = 8, threads_n: int = 32):
    """Hand schedule for dense.dense_requant on a GPU; returns the ``Schedule``. The CPU
    schedule's tile (``*_cpu_tile``, which TensorizeDot passes to every ISA) does not apply."""
    import tvm
    sch = tvm.s_tir.Schedule(func)
    _schedule_gpu_dot(sch, threads_m, threads_n)
    stages = {sch.get(b).name_hint: b for b in sch.get_child_blocks(sch.get_sblock("root"))}
    if "X_s" in stages:
        _bind_elementwise(sch, stages["X_s"])
    return sch


def schedule_conv1x1(func, isa: DotISA, threads_m: int = 8, threads_n: int = 32):
    """Hand schedule for dense.conv1x1_requant on a GPU; returns the ``Schedule``."""
    import tvm
    sch = tvm.s_tir.Schedule(func)
    _schedule_gpu_dot(sch, threads_m, threads_n)
    _bind_elementwise(sch, sch.get_sblock("X_t"))
    return sch


DP4A = register_isa(DotISA(name="dp4a", arch="cuda", lanes=1, act_dtype="int8", caps=("dp4a",),
              register=register_dp4a_intrinsic, instruction="dp4a", schedule_dense=schedule_dense,
              schedule_conv1x1=schedule_conv1x1, simd_depthwise=False,
              channels_last=False))  # no GPU depthwise kernel: the NCHW graph keeps TVM's own schedules
