"""Tensorized int8 kernels for Arm CPUs with the dot-product extension (``sdot``, Armv8.2 dotprod).

``sdot v.4s, a.16b, b.16b``: each of 4 int32 lanes adds the dot product of 4 signed bytes of ``a``
with 4 signed bytes of ``b``. With the activation word broadcast to the 4 lanes and 4 output
channels' weights in ``b``, it is the 4-lane form of x86 VNNI, so the kernels are those of
targets/kernels/dense.py with the :data:`SDOT` row: weights packed ``[N/4, K/4, 4, 4]``, int8
activations as they are, uint8 (asymmetric) activations shifted by -128 with ``-128 * rowsum(W)``
taken into the bias at compile time (``sdot`` is signed x signed; the mixed-sign ``usdot`` needs
i8mm). The requantize runs in the epilogue, in int64, exactly as on x86, so the aarch64 program is
bit-identical to the x86 one (checked under qemu-user).

The intrinsic is registered under :data:`SDOT_INTRIN`, a copy of TVM's
``dot_4x4_i8i8s32_sdot`` (tvm.s_tir.tensor_intrin.arm_cpu): importing that module registers every
Arm intrinsic, which takes tens of seconds on this host.
"""
from __future__ import annotations

import functools

from .isa import DotISA, register_intrinsic, register_isa

SDOT_INTRIN = "dot_4x4_i8i8s32_sdot_tvmptq"


@functools.cache
def _intrin_funcs():
    """(desc, impl): C[4] int32 += A[4] int8 (broadcast) . B[4, 4] int8, the impl one ``sdot``."""
    from tvm.script import tirx as T

    @T.prim_func(s_tir=True)
    def sdot_4x4_desc(
        A: T.Buffer((4,), "int8", offset_factor=1),
        B: T.Buffer((4, 4), "int8", offset_factor=1),
        C: T.Buffer((4,), "int32", offset_factor=1),
    ) -> None:
        with T.sblock("root"):
            T.reads(C[0:4], A[0:4], B[0:4, 0:4])
            T.writes(C[0:4])
            for i in T.serial(0, 4):
                for k in T.serial(0, 4):
                    with T.sblock("update"):
                        vi, vk = T.axis.remap("SR", [i, k])
                        C[vi] = C[vi] + T.cast(A[vk], "int32") * T.cast(B[vi, vk], "int32")

    @T.prim_func(s_tir=True)
    def sdot_4x4_impl(
        A: T.Buffer((4,), "int8", offset_factor=1),
        B: T.Buffer((4, 4), "int8", offset_factor=1),
        C: T.Buffer((4,), "int32", offset_factor=1),
    ) -> None:
        with T.sblock("root"):
            T.reads(C[0:4], A[0:4], B[0:4, 0:4])
            T.writes(C[0:4])
            # one expression, no named locals (see targets/kernels/x86_vnni.py: a local costs a workspace
            # allocation per tile inside a parallel loop)
            C[T.ramp(T.int32(0), 1, 4)] = T.call_llvm_pure_intrin(
                T.llvm_lookup_intrinsic_id("llvm.aarch64.neon.sdot.v4i32.v16i8"),
                C.vload([0], dtype="int32x4"),
                T.reinterpret(T.broadcast(T.reinterpret(A.vload([0], "int8x4"), dtype="int32"), 4), dtype="int8x16"),
                B.vload([0, 0], dtype="int8x16"), dtype="int32x4")

    return sdot_4x4_desc, sdot_4x4_impl


def register_sdot_intrinsic() -> str:
    """Register the ``sdot`` tensor intrinsic (idempotent); returns :data:`SDOT_INTRIN`."""
    return register_intrinsic(SDOT_INTRIN, _intrin_funcs)


SDOT = register_isa(DotISA(name="sdot", arch="aarch64", lanes=4, act_dtype="int8", caps=("dotprod",),
              register=register_sdot_intrinsic, instruction="sdot", hi32_requant=True))
