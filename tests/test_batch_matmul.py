"""targets/kernels/batch_matmul.py: attention's activation x activation matmuls on VNNI, with the
run-time packing of the second operand, the exact zero-point correction and the requantize epilogue,
against an independent NumPy integer reference bit for bit; and the rewrite of a tiny attention
model's QK^T and P V into these kernels (compiled == NumPy reference of the plan)."""
from __future__ import annotations

import numpy as np
import pytest
import tvm

import targets
from targets.kernels import batch_matmul as bm
from targets.kernels import hi32_rows, x86_vnni as xi

needs_vnni = pytest.mark.skipif(not xi.host_has_avx512_vnni(), reason="host CPU lacks avx512_vnni")


def reference(a, b, za, zb, mult, shift, zp, lo, hi, b_layout):
    """The plan's matmul layer in NumPy int64: requant(sum_k (a - za)(b - zb))."""
    a = a.astype(np.int64) - za
    b = b.astype(np.int64) - zb
    if b_layout == "nk":
        b = b.transpose(0, 2, 1)
    acc = np.einsum("bmk,bkn->bmn", a, b)
    return np.clip(((acc * mult + (1 << (shift - 1))) >> shift) + zp, lo, hi)


def _run(spec, a, b, qp):
    func = bm.build(spec, xi.VNNI)
    ex = tvm.compile(tvm.IRModule({"main": func.with_attr("global_symbol", "main")}),
                     target=targets.get("x86-host").tvm_target())
    out = tvm.runtime.tensor(np.zeros((spec.batch, spec.M, spec.N), spec.out_dtype))
    ex["main"](tvm.runtime.tensor(a), tvm.runtime.tensor(b), tvm.runtime.tensor(qp), out)
    return out.numpy()


CASES = [  # batch, M, N, K, a dtype, b dtype, za, zb, b layout, out dtype
    (3, 12, 12, 16, "uint8", "uint8", 138, 137, "nk", "uint8"),   # QK^T, asymmetric, T not a multiple of 16
    (2, 12, 16, 12, "uint8", "uint8", 0, 106, "kn", "uint8"),     # P V: softmax u8 (z=0) x asymmetric V
    (2, 7, 21, 10, "int8", "int8", 0, 0, "nk", "int8"),           # symmetric int8 x int8, K % 4 != 0
    (4, 16, 32, 32, "int8", "uint8", -5, 130, "kn", "uint8"),     # mixed signs, nonzero zero points
    (1, 5, 3, 7, "uint8", "int8", 255, -128, "nk", "int8"),       # extreme zero points, tiny odd shapes
]


@needs_vnni
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[4][0]}8{c[5][0]}8_{c[8]}_{c[0]}x{c[1]}x{c[2]}x{c[3]}")
@pytest.mark.parametrize("hi32", [False, True])
def test_kernel_equals_numpy_reference(case, hi32):
    Bt, M, N, K, adt, bdt, za, zb, layout, odt = case
    rng = np.random.default_rng(hash(case) % 2**32)
    ia, ib = np.iinfo(adt), np.iinfo(bdt)
    a = rng.integers(ia.min, ia.max + 1, (Bt, M, K)).astype(adt)
    b = rng.integers(ib.min, ib.max + 1, (Bt, N, K) if layout == "nk" else (Bt, K, N)).astype(bdt)
    bound = K * max(ia.max - za, za - ia.min) * max(ib.max - zb, zb - ib.min)
    # a multiplier and output zero point that map the accumulator's spread onto the output grid
    acc = reference(a, b, za, zb, 1, 1, 0, -2**62, 2**62, layout) * 2  # (2 acc + 1) >> 1 == acc
    shift, info = 38, np.iinfo(odt)
    mult = int((1 << shift) * 50 / max(acc.std(), 1))
    zp = int(np.clip((info.min + info.max) // 2 - acc.mean() * mult / (1 << shift), info.min, info.max))
    qp = np.array([[0], [mult], [1 << (shift - 1)], [shift], [zp], [info.min], [info.max]], np.int64)
    want = reference(a, b, za, zb, mult, shift, zp, info.min, info.max, layout)
    assert 0.2 < np.mean((want > info.min) & (want < info.max))
    if hi32:
        qp = hi32_rows(qp, bound)
        assert qp is not None
    spec = bm.BatchMatmulSpec(Bt, M, N, K, adt, bdt, odt, za, zb, layout, hi32=hi32)
    got = _run(spec, a, b, qp)
    assert got.dtype == np.dtype(odt)
    assert np.array_equal(got, want), np.abs(got.astype(np.int64) - want).max()


def test_kernel_is_tensorized_and_refuses_what_it_cannot_take():
    spec = bm.BatchMatmulSpec(4, 64, 64, 64, "uint8", "uint8", "uint8", 138, 137, "nk")
    script = bm.build(spec, xi.VNNI).script()
    assert "vpdpbusd" in script and "T.parallel" in script
    assert all(f'sblock("{b}")' in script for b in ("B_p", "rs", "cs", "C"))
    sym = bm.build(bm.BatchMatmulSpec(2, 12, 12, 16, "uint8", "int8", "uint8", 0, 0, "kn"), xi.VNNI).script()
    assert '"rs"' not in sym and '"cs"' not in sym and '"A_s"' not in sym  # zero terms are not computed
    from targets.kernels.arm_i8mm import SMMLA
    with pytest.raises(ValueError, match="own"):
        bm.batch_matmul_requant(spec, SMMLA)
    with pytest.raises(ValueError, match="depth"):
        bm.batch_matmul_requant(bm.BatchMatmulSpec(1, 4, 4, bm.MAX_DEPTH + 4, "uint8", "int8", "uint8"), xi.VNNI)
    with pytest.raises(ValueError, match="int16"):
        bm.batch_matmul_requant(bm.BatchMatmulSpec(1, 4, 4, 8, "int16", "int8", "uint8"), xi.VNNI)
