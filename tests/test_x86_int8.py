"""targets.kernels.x86_vnni: the LLVM-22-fixed VNNI TensorIntrin, VNNI weight packing, the hand-scheduled
tensorized u8 x s8 dense kernel and the int8 -> uint8 shift for int8 x int8.

Every kernel result is compared BIT-EXACT with an int64 NumPy matmul over the full input ranges
(-128 and 127 for int8, 0 and 255 for uint8, forced into rows/columns besides random values).
Tests that run a kernel need the avx512_vnni cpuinfo flag and are skipped without it; building
and disassembling (vpdpbusd in the code) works on any x86 host. About 40 s in all on 2 busy cores,
26 s of it importing tvm.s_tir.tensor_intrin (every CUDA/ROCm/ARM intrinsic) for the stock-name tests.
"""
import numpy as np
import pytest

import targets
from targets.kernels import x86_vnni as xi

tvm = pytest.importorskip("tvm")

HAS_VNNI = xi.host_has_avx512_vnni()
needs_vnni = pytest.mark.skipif(not HAS_VNNI, reason="host CPU lacks avx512_vnni (no 'avx512_vnni' in /proc/cpuinfo "
                                                     "flags): the vpdpbusd kernels cannot run here")
TARGET = {"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "sapphirerapids", "num-cores": 2}

# (M, N, K): M=1/8/128; N from 16 to 384 with N % 16 != 0 (padded); K from 64 to 384 with K % 4 != 0 (padded)
SHAPES = [(1, 16, 64), (1, 40, 384), (8, 100, 66), (8, 384, 128), (128, 64, 384), (128, 384, 384), (7, 48, 64)]


def _data(M, N, K, seed, xdtype):
    rng = np.random.default_rng(seed)
    lo, hi = (-128, 127) if xdtype == np.int8 else (0, 255)
    x = rng.integers(lo, hi + 1, (M, K)).astype(xdtype)
    w = rng.integers(-128, 128, (N, K)).astype(np.int8)
    # the extremes, as whole rows/columns (largest |sums|) and scattered
    x[0, : K // 2] = lo
    x[-1, K // 2:] = hi
    w[0, :] = -128
    w[-1, :] = 127
    if N > 2:
        w[1, ::2], w[1, 1::2] = -128, 127
    return x, w


def _ref(x, w):
    return x.astype(np.int64) @ w.astype(np.int64).T


def _compile(func, **kw):
    return tvm.compile(xi.schedule_dense_vnni(func, **kw).mod, target=tvm.target.Target(TARGET))


def _call(ex, x, w, corr=None):
    args = [tvm.runtime.tensor(x), tvm.runtime.tensor(xi.pack_dense_weight(w))]
    if corr is not None:
        args.append(tvm.runtime.tensor(corr))
    out = tvm.runtime.tensor(np.zeros((x.shape[0], w.shape[0]), np.int32))
    ex.jit()["main"](*args, out)
    return out.numpy()


# ------------------------------------------------------------------------------ no kernel runs
def test_pack_dense_weight_layout_and_zero_padding():
    rng = np.random.default_rng(0)
    w = rng.integers(-128, 128, (40, 66)).astype(np.int8)
    p = xi.pack_dense_weight(w)
    assert p.shape == (3, 17, 16, 4) == xi.packed_shape(40, 66) and p.dtype == np.int8 and p.flags.c_contiguous
    for n, k in [(0, 0), (17, 5), (39, 65), (31, 64)]:
        assert p[n // 16, k // 4, n % 16, k % 4] == w[n, k]
    assert not p[2, :, 8:, :].any()          # padded output channels 40..47
    assert not p[:, 16, :, 2:].any()         # padded k 66..67
    with pytest.raises(ValueError):
        xi.pack_dense_weight(w.astype(np.int16))


def test_shift_correction_identity():
    x, w = _data(5, 24, 70, 1, np.int8)
    corr = xi.shift_correction(w)
    assert corr.dtype == np.int32 and corr[0] == 128 * -128 * 70
    xu = (x.astype(np.int16) + 128).astype(np.uint8)
    assert np.array_equal(_ref(xu, w) - corr, _ref(x, w))


def test_tile_sizes_are_divisors():
    assert xi.tile_sizes(1, 16, 64) == (1, 1, 64)
    assert xi.tile_sizes(7, 48, 64) == (1, 3, 64)         # prime M: one row per tile, not a predicated tail
    assert xi.tile_sizes(6, 40, 68) == (3, 3, 68)         # N -> 48 (3 x 16), K=68 -> 17 chunks of 4


def test_tile_sizes_keep_the_accumulator_tile_on_the_stack():
    """A 1024-byte int32 tile would be a workspace allocation per tile inside the parallel loop."""
    assert xi.tile_sizes(128, 1536, 384) == (4, 3, 128)   # 4 x 4 x 16 lanes x 4 B = 1024: nb shrinks
    assert xi.tile_sizes(12544, 96, 16, 8, 2, 256) == (7, 2, 16)  # 8 x 2: mb shrinks to a divisor of M
    for M, N, K in [(128, 1536, 384), (12544, 96, 16), (49, 1152, 192), (196, 672, 112)]:
        mb, nb, _ = xi.tile_sizes(M, N, K, 8, 4, 256)
        assert mb * nb * 16 * 4 < 1024 and M % mb == 0


def test_vnni_capability_comes_from_the_registry():
    assert "vnni" in targets.KNOWN_CAPABILITIES
    assert xi.target_has_vnni("x86-avx512-vnni")
    assert not xi.target_has_vnni("x86-avx2") and not xi.target_has_vnni("cortex-a76")
    assert xi.target_has_vnni("x86-host") == ("vnni" in targets.host_capabilities())


def test_registration_is_idempotent_and_overrides_the_stock_name():
    from tvm.s_tir import TensorIntrin
    assert xi.register_vnni_intrinsic(stock=False) == xi.VNNI_INTRIN
    import tvm.s_tir.tensor_intrin  # noqa: F401 - the wheel registers its stock intrinsics (no conflict, ~26 s)
    from tvm.s_tir.tensor_intrin.x86 import dot_product_16x4_u8i8i32_desc
    from tvm_ffi import structural_equal
    assert xi.register_vnni_intrinsic() == xi.VNNI_INTRIN == xi.register_vnni_intrinsic()
    ours, stock = TensorIntrin.get(xi.VNNI_INTRIN), TensorIntrin.get(xi.STOCK_VNNI_INTRIN)
    assert stock.impl.same_as(ours.impl)                  # the very same PrimFunc
    assert "uint8x64" in stock.impl.script()
    assert structural_equal(ours.desc, dot_product_16x4_u8i8i32_desc)   # our desc copy is the wheel's


def test_disassembly_has_vpdpbusd(tmp_path):
    ex = _compile(xi.dense_s8s8_vnni(8, 100, 66))
    asm = ex.mod.inspect_source("asm")                     # LLVM assembly of the host module
    assert "vpdpbusd" in asm
    so = tmp_path / "dense.so"
    ex.export_library(str(so))
    import shutil
    import subprocess
    if shutil.which("objdump"):
        dis = subprocess.run(["objdump", "-d", str(so)], capture_output=True, text=True, check=True).stdout
        assert dis.count("vpdpbusd") >= 1


# ------------------------------------------------------------------------------ kernels
@needs_vnni
@pytest.mark.parametrize("M,N,K", SHAPES)
def test_u8s8_bit_exact(M, N, K):
    x, w = _data(M, N, K, M * N + K, np.uint8)
    assert np.array_equal(_call(_compile(xi.dense_u8s8_vnni(M, N, K)), x, w), _ref(x, w))


@needs_vnni
@pytest.mark.parametrize("M,N,K", SHAPES)
def test_s8s8_via_u8_bit_exact(M, N, K):
    x, w = _data(M, N, K, M + N * K, np.int8)
    ex = _compile(xi.dense_s8s8_vnni(M, N, K))
    assert np.array_equal(_call(ex, x, w, xi.shift_correction(w)), _ref(x, w))


@needs_vnni
def test_extreme_products_do_not_saturate():
    # all -128 x -128 and 255 x -128: vpmaddubsw (the stock avx512 intrinsic) would saturate at int16
    M, N, K = 8, 32, 384
    w = np.full((N, K), -128, np.int8)
    w[N // 2:] = 127
    for x in (np.full((M, K), -128, np.int8), np.full((M, K), 127, np.int8)):
        assert np.array_equal(xi.dense_s8s8_via_u8(x, w, target=TARGET), _ref(x, w))
    xu = np.full((M, K), 255, np.uint8)
    assert np.array_equal(xi.dense_u8s8(xu, w, target=TARGET), _ref(xu, w))


@needs_vnni
def test_stock_intrinsic_name_builds_after_reregistration():
    # before register_vnni_intrinsic() this fails LLVM verification ("Call parameter type does not
    # match function signature! ... @llvm.x86.avx512.vpdpbusd.512(<16 x i32>, <16 x i32>, <16 x i32>)")
    xi.register_vnni_intrinsic()
    M, N, K = 8, 64, 128
    ex = _compile(xi.dense_u8s8_vnni(M, N, K), intrin=xi.STOCK_VNNI_INTRIN)
    assert "vpdpbusd" in ex.mod.inspect_source("asm")
    x, w = _data(M, N, K, 3, np.uint8)
    assert np.array_equal(_call(ex, x, w), _ref(x, w))
