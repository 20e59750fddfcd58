"""Tensorized int8 kernels for Arm CPUs with the int8 matrix-multiply extension (``smmla``, i8mm).

``smmla v.4s, a.16b, b.16b``: a 2x2 int32 tile adds ``A[2, 8] . B[2, 8]^T`` (both operands two
rows of 8 signed bytes), 32 multiply-adds per instruction against ``sdot``'s 16. Unlike ``sdot``
(targets/kernels/arm_sdot.py) it needs two activation rows per instruction, so its workloads are its own:

* weights packed at compile time to ``[N/2, K/8, 2, 8]`` (:func:`pack_weight`, zero padded);
* activations packed inside the kernel to ``[M/2, K/8, 2, 8]`` by a stage that also shifts uint8
  activations by -128 (``smmla`` is signed x signed; ``-(-128) * rowsum(W)`` goes into the bias as
  for ``sdot``) and zero-pads M to even and K to a multiple of 8;
* the int32 accumulator is ``[M/2, N/2, 2, 2]``, so each instruction's 2x2 tile is one contiguous
  128-bit register; the requantize (int64, exactly as relay_passes/integer_ops) runs on each output
  tile right after it (the epilogue), and padded rows and channels are never stored.

A 1x1 NCHW conv is the dense over pixels, with the pack stage reading the image channel-major.
Bit-exact against the NumPy reference under qemu-user (tests/test_arm_i8mm.py).
"""
from __future__ import annotations

import functools

import numpy as np

from .dense import shift_of
from .isa import DotISA, register_intrinsic, register_isa
from .loops import PARALLEL_MIN_ELEMENTS, _ceil, _divisor_at_most, loop_extent, parallel_if_worth
from .requant import REQUANT_ROWS, _requantize

SMMLA_INTRIN = "smmla_2x2x8_i8i8s32_tvmptq"


@functools.cache
def _intrin_funcs():
    """(desc, impl): C[2, 2] int32 += A[2, 8] int8 . B[2, 8]^T int8, the impl one ``smmla``."""
    from tvm.script import tirx as T

    @T.prim_func(s_tir=True)
    def smmla_desc(
        A: T.Buffer((2, 8), "int8", offset_factor=1),
        B: T.Buffer((2, 8), "int8", offset_factor=1),
        C: T.Buffer((2, 2), "int32", offset_factor=1),
    ) -> None:
        with T.sblock("root"):
            T.reads(C[0:2, 0:2], A[0:2, 0:8], B[0:2, 0:8])
            T.writes(C[0:2, 0:2])
            for i, j, k in T.grid(2, 2, 8):
                with T.sblock("update"):
                    vi, vj, vk = T.axis.remap("SSR", [i, j, k])
                    C[vi, vj] = C[vi, vj] + T.cast(A[vi, vk], "int32") * T.cast(B[vj, vk], "int32")

    @T.prim_func(s_tir=True)
    def smmla_impl(
        A: T.Buffer((2, 8), "int8", offset_factor=1),
        B: T.Buffer((2, 8), "int8", offset_factor=1),
        C: T.Buffer((2, 2), "int32", offset_factor=1),
    ) -> None:
        with T.sblock("root"):
            T.reads(C[0:2, 0:2], A[0:2, 0:8], B[0:2, 0:8])
            T.writes(C[0:2, 0:2])
            C[0, T.ramp(T.int32(0), 1, 4)] = T.call_llvm_pure_intrin(
                T.llvm_lookup_intrinsic_id("llvm.aarch64.neon.smmla.v4i32.v16i8"),
                C.vload([0, 0], dtype="int32x4"), A.vload([0, 0], dtype="int8x16"), B.vload([0, 0], dtype="int8x16"),
                dtype="int32x4")

    return smmla_desc, smmla_impl


def register_smmla_intrinsic() -> str:
    """Register the ``smmla`` tensor intrinsic (idempotent); returns :data:`SMMLA_INTRIN`."""
    return register_intrinsic(SMMLA_INTRIN, _intrin_funcs)


def packed_shape(N: int, K: int) -> tuple:
    return (_ceil(N, 2) // 2, _ceil(K, 8) // 8, 2, 8)


def pack_weight(w: np.ndarray, lanes: int = 2) -> np.ndarray:
    """int8 ``[N, K]`` -> ``[N/2, K/8, 2, 8]``: ``packed[no, ko, ni, ki] = w[2*no + ni, 8*ko + ki]``, zero padded."""
    w = np.asarray(w)
    if w.ndim != 2 or w.dtype != np.int8:
        raise ValueError(f"pack_weight needs an int8 [N, K] array, got {w.dtype} {w.shape}")
    N, K = w.shape
    Np, Kp = _ceil(N, 2), _ceil(K, 8)
    w = np.pad(w, ((0, Np - N), (0, Kp - K)))
    return np.ascontiguousarray(w.reshape(Np // 2, 2, Kp // 8, 8).transpose(0, 2, 1, 3))


def _packed_act(read, M: int, K: int, x_dtype: str, isa: DotISA):
    """``(io, ko, ii, ki) -> int8``: activation ``read(m, k)`` shifted to int8, 0 in the padding."""
    from tvm import te
    s = shift_of(x_dtype, isa)

    def f(io, ko, ii, ki):
        m, k = io * 2 + ii, ko * 8 + ki
        v = read(m, k)
        v = v if s == 0 else (v.astype("int32") + s).astype("int8")
        inside = [c for c, ok in ((m < M, M % 2), (k < K, K % 8)) if ok]
        if not inside:
            return v
        cond = inside[0] if len(inside) == 1 else te.all(*inside)
        return te.if_then_else(cond, v, te.const(0, "int8"))
    return f


def _mmla(Xp, Wp, lead: tuple = ()):
    """``acc[*lead, M/2, N/2, 2, 2]`` int32 from the packed operands."""
    from tvm import te
    Kb = int(Xp.shape[-3])
    ko = te.reduce_axis((0, Kb), name="ko")
    ki = te.reduce_axis((0, 8), name="ki")
    shape = tuple(Xp.shape[:-3]) + (Wp.shape[0], 2, 2)

    def body(*idx):
        *b, io, jo, ii, ji = idx
        return te.sum(Xp[(*b, io, ko, ii, ki)].astype("int32") * Wp[jo, ko, ji, ki].astype("int32"), axis=[ko, ki])
    return te.compute(shape, body, name="compute")


def dense_requant(M: int, N: int, K: int, x_dtype: str, out_dtype: str, isa: DotISA):
    """TIR ``main(X: x_dtype[M, K], Wp: int8[N/2, K/8, 2, 8], qp: int64[7, N], Y: out_dtype[M, N])``,
    the requantize as targets.kernels.dense.dense_requant (``bias`` includes the shift correction)."""
    from tvm import te
    X = te.placeholder((M, K), x_dtype, name="X")
    Wp = te.placeholder(packed_shape(N, K), "int8", name="Wp")
    qp = te.placeholder((len(REQUANT_ROWS), N), "int64", name="qp")
    Xp = te.compute((_ceil(M, 2) // 2, _ceil(K, 8) // 8, 2, 8),
                    _packed_act(lambda m, k: X[m, k], M, K, x_dtype, isa), name="X_p")
    acc = _mmla(Xp, Wp)
    requant = _requantize(qp, out_dtype)
    C = te.compute((M, N), lambda i, j: requant(acc[i // 2, j // 2, i % 2, j % 2], j), name="C")
    return te.create_prim_func([X, Wp, qp, C]).with_attr("global_symbol", "main")


def conv1x1_requant(B: int, M: int, N: int, K: int, x_dtype: str, out_dtype: str, isa: DotISA):
    """A 1x1 stride-1 NCHW conv, ``main(X: x_dtype[B, K, M], Wp, qp, Y: out_dtype[B, N, M])`` with
    ``M = H * W``: per image the dense over pixels; the pack stage reads the image channel-major."""
    from tvm import te
    X = te.placeholder((B, K, M), x_dtype, name="X")
    Wp = te.placeholder(packed_shape(N, K), "int8", name="Wp")
    qp = te.placeholder((len(REQUANT_ROWS), N), "int64", name="qp")
    Xp = te.compute((B, _ceil(M, 2) // 2, _ceil(K, 8) // 8, 2, 8),
                    lambda b, io, ko, ii, ki: _packed_act(lambda m, k: X[b, k, m], M, K, x_dtype, isa)(io, ko, ii, ki),
                    name="X_p")
    acc = _mmla(Xp, Wp, (B,))
    requant = _requantize(qp, out_dtype)
    C = te.compute((B, N, M), lambda b, j, m: requant(acc[b, m // 2, j // 2, m % 2, j % 2], j), name="C")
    return te.create_prim_func([X, Wp, qp, C]).with_attr("global_symbol", "main")


def _schedule(func, mb: int, nb: int, kb: int):
    """Tiles of ``mb`` x ``nb`` 2x2 output tiles (mb * nb accumulator registers), k in chunks of
    ``kb`` bytes; outer tiles parallel, the epilogue after each, the pack stage parallel."""
    import tvm
    sch = tvm.s_tir.Schedule(func)
    blk = sch.get_sblock("compute")
    *batch, io, jo, ii, ji, ko, ki = sch.get_loops(blk)
    Mb, Nb, Kb = (int(sch.get(x).extent) for x in (io, jo, ko))
    # exact splits: a predicated tail under the tensorized loops does not match the intrinsic
    mb, nb, kb = _divisor_at_most(Mb, mb), _divisor_at_most(Nb, nb), _divisor_at_most(Kb, max(1, kb // 8))
    ioo, ioi = sch.split(io, [None, mb])
    joo, joi = sch.split(jo, [None, nb])
    koo, koi = sch.split(ko, [None, kb])
    sch.reorder(*batch, ioo, joo, koo, koi, ioi, joi, ii, ji, ki)
    outer = sch.fuse(*batch, ioo, joo)
    parallel_if_worth(sch, outer, loop_extent(sch, sch.get_loops(blk)))
    sch.reverse_compute_at(sch.get_sblock("C"), outer)
    sch.decompose_reduction(blk, koo)
    sch.unroll(ioi)
    sch.unroll(joi)
    sch.tensorize(ii, register_smmla_intrinsic())
    pack = sch.get_sblock("X_p")
    loops = sch.get_loops(pack)
    parallel_if_worth(sch, sch.fuse(*loops[:-3]) if len(loops) > 4 else loops[0], loop_extent(sch, loops),
                      PARALLEL_MIN_ELEMENTS)
    return sch


def schedule_dense(func, isa: DotISA, mb: int = 2, nb: int = 4, kb: int = 256, *_ignored):
    return _schedule(func, mb, nb, kb)


def schedule_conv1x1(func, isa: DotISA, mb: int = 4, nb: int = 4, kb: int = 256):
    return _schedule(func, mb, nb, kb)


SMMLA = register_isa(DotISA(name="smmla", arch="aarch64", lanes=2, act_dtype="int8", caps=("dotprod", "i8mm"),
               register=register_smmla_intrinsic, instruction="smmla", schedule_dense=schedule_dense,
               schedule_conv1x1=schedule_conv1x1, dense_requant=dense_requant, conv1x1_requant=conv1x1_requant,
               pack_weight=pack_weight))
