"""Tensorized int8 dense kernels for x86 AVX-512 VNNI (``vpdpbusd``): groundwork for "fast int8".

    from targets.kernels import x86_vnni as xi
    xi.register_vnni_intrinsic()                      # once per process, before tensorize/tuning
    wp = xi.pack_dense_weight(w)                      # int8 [N, K] -> [N/16, K/4, 16, 4] (zero padded)
    sch = xi.schedule_dense_vnni(xi.dense_u8s8_vnni(M, N, K))
    ex = tvm.compile(sch.mod, target=tvm.target.Target(xi.DEFAULT_TARGET))

What is here:

* :func:`register_vnni_intrinsic` registers an LLVM-22-compatible ``vpdpbusd`` TensorIntrin, under
  :data:`VNNI_INTRIN` and over the wheel's stock ``dot_16x4_vnni`` (which does not build on LLVM 22).
* :func:`pack_dense_weight`: the VNNI weight layout ``[N/16, K/4, 16, 4]`` (also the AMX B-tile layout).
* :func:`dense_u8s8_vnni`: ``C[M, N] int32 = X[M, K] uint8 . W[N, K]^T int8`` with W pre-packed.
* :func:`dense_s8s8_vnni`: the same for int8 activations through the uint8 shift (see there).
* :func:`dense_requant_vnni`: the same accumulation with the plan's fixed-point requantize (bias,
  multiplier, shift, zero point, clip) in the epilogue: the kernel that relay_passes.tensorize
  puts in place of each quantized linear layer.
* :func:`conv1x1_requant_vnni` / :func:`schedule_conv1x1_vnni`: a 1x1 NCHW convolution as that
  dense over pixels, reading and writing NCHW (what EfficientNet's pointwise convs become).
* :func:`schedule_dense_vnni`: a hand schedule with ``sch.tensorize`` (no tuning).
* :data:`VNNI16` (``vpdpwssd``, :func:`register_int16_intrinsic`, :func:`pack_dense_weight16`): the
  dense kernels' row for int16 activations (the containers of 9..16-bit grids), int8 weights widened
  to int16, two k per lane; :data:`VNNI`'s ``int16_isa``.
* :func:`dense_s8s8_via_u8` / :func:`dense_u8s8`: compile (cached) and run from NumPy.

VNNI multiplies **unsigned** 8-bit activations by **signed** 8-bit weights (``vpdpbusd``: u8 x s8,
four products summed into each int32 lane, no intermediate saturation), so int8 x int8 workloads
are not tensorized by TVM at all; the shift in :func:`dense_s8s8_vnni` bridges that.
Whether a registry target can run these kernels is the ``vnni`` capability of ``registry.toml``
(:func:`target_has_vnni`); the kernels use the 512-bit form, so the host check is the
``avx512_vnni`` cpuinfo flag (``avx_vnni`` alone, the 256-bit VEX form, is not enough).
"""
from __future__ import annotations

import functools

import numpy as np

from . import dense as dot
from .isa import DotISA, register_intrinsic, register_isa
from .requant import REQUANT_ROWS  # noqa: F401 - the kernels' qp rows, re-exported

VNNI_INTRIN = "dot_16x4_vnni_llvm22"
STOCK_VNNI_INTRIN = "dot_16x4_vnni"       # tvm.s_tir.tensor_intrin.x86.VNNI_DOT_16x4_INTRIN
DEFAULT_TARGET = {"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "sapphirerapids", "num-cores": 2}
SHIFT = 128                               # int8 -> uint8: x_u8 = x_s8 + 128

_registered: set = set()                  # names registered by this module in this process


# ------------------------------------------------------------------------------------- intrinsic
@functools.cache
def _intrin_funcs():
    """(desc, impl) PrimFuncs. The desc is a copy of the wheel's ``dot_product_16x4_u8i8i32_desc``
    (tests check they are structurally equal): taking it from ``tvm.s_tir.tensor_intrin.x86`` would
    import the whole ``tvm.s_tir.tensor_intrin`` package, which parses every CUDA/ROCm/ARM intrinsic
    (about 26 s on this 2-core host)."""
    from tvm.script import tirx as T

    @T.prim_func(s_tir=True)
    def dot_product_16x4_u8i8i32_desc(
        A: T.Buffer((4,), "uint8", offset_factor=1),
        B: T.Buffer((16, 4), "int8", offset_factor=1),
        C: T.Buffer((16,), "int32", offset_factor=1),
    ) -> None:
        with T.sblock("root"):
            T.reads(C[0:16], A[0:4], B[0:16, 0:4])
            T.writes(C[0:16])
            for i in T.serial(0, 16):
                for k in T.serial(0, 4):
                    with T.sblock("update"):
                        vi, vk = T.axis.remap("SR", [i, k])
                        C[vi] = C[vi] + T.cast(A[vk], "int32") * T.cast(B[vi, vk], "int32")

    @T.prim_func(s_tir=True)
    def dot_product_16x4_u8i8i32_vnni_llvm22(
        A: T.Buffer((4,), "uint8", offset_factor=1),
        B: T.Buffer((16, 4), "int8", offset_factor=1),
        C: T.Buffer((16,), "int32", offset_factor=1),
    ) -> None:
        with T.sblock("root"):
            T.reads(C[0:16], A[0:4], B[0:16, 0:4])
            T.writes(C[0:16])
            # One expression, no named locals: a local (``x = ...``) becomes a one-element buffer,
            # which inside a parallel loop is lowered to TVMBackendAllocWorkspace/FreeWorkspace
            # calls around every tile (three pairs per tile made the parallel kernels 2-4x slower
            # than the same loop run serially). Operands: the activation word broadcast to 16
            # lanes and the weight block, both as <64 x i8> (not <16 x i32>, see below).
            C[T.ramp(T.int32(0), 1, 16)] = T.call_llvm_pure_intrin(
                T.llvm_lookup_intrinsic_id("llvm.x86.avx512.vpdpbusd.512"),
                C.vload([0], dtype="int32x16"),
                T.reinterpret(T.broadcast(T.reinterpret(A.vload([0], "uint8x4"), dtype="int32"), 16), dtype="uint8x64"),
                B.vload([0, 0], dtype="int8x64"), dtype="int32x16")

    return dot_product_16x4_u8i8i32_desc, dot_product_16x4_u8i8i32_vnni_llvm22


def register_vnni_intrinsic(stock: bool = True) -> str:
    """Register the LLVM-22-compatible VNNI intrinsic; idempotent. Returns its name (:data:`VNNI_INTRIN`).

    Why: the wheel's ``dot_16x4_vnni`` (apache-tvm 0.27.0.post1, and upstream main at 5d4dc87) passes
    ``<16 x i32>`` operands to ``llvm.x86.avx512.vpdpbusd.512``. LLVM 22 declares that intrinsic as
    ``(<16 x i32>, <64 x i8>, <64 x i8>)``, so every tensorized function fails LLVM verification::

        Call parameter type does not match function signature!
          %146 = shufflevector <16 x i32> %145, <16 x i32> undef, <16 x i32> zeroinitializer
         <64 x i8>  %149 = call <16 x i32> @llvm.x86.avx512.vpdpbusd.512(<16 x i32> %142, <16 x i32> %146, <16 x i32> %148)

    (MetaSchedule then reports ``Build errors`` for every candidate and ``compile_tir`` returns None.)
    The implementation here reinterprets the broadcast activation word and the weight block as
    ``<64 x i8>``. It is registered under :data:`VNNI_INTRIN` and, with ``stock=True`` (default),
    with ``override=True`` over the stock name too, so MetaSchedule's built-in ``"vnni"`` rules
    (``MultiLevelTilingWithIntrin("dot_16x4_vnni")``) build. Call it in the process that
    schedules/tunes (tensorization happens there), before ``sch.tensorize``, ``tune_tir``/``tune_relax``
    or ``MetaScheduleApplyDatabase``.

    ``stock=True`` first imports ``tvm.s_tir.tensor_intrin`` (as MetaSchedule's TuneContext does):
    that import registers the stock name **without** override, so it must happen before the override
    or it would later fail with "already registered". ``stock=False`` (what :func:`schedule_dense_vnni`
    uses for its own name) skips that slow import.
    """
    from tvm.s_tir import TensorIntrin
    desc, impl = _intrin_funcs()
    if VNNI_INTRIN not in _registered:
        TensorIntrin.register(VNNI_INTRIN, desc, impl, override=True)
        _registered.add(VNNI_INTRIN)
    if stock and STOCK_VNNI_INTRIN not in _registered:
        import tvm.s_tir.tensor_intrin  # noqa: F401 - registers the stock intrinsics (once per process)
        from tvm.s_tir.tensor_intrin.x86 import VNNI_DOT_16x4_INTRIN
        assert VNNI_DOT_16x4_INTRIN == STOCK_VNNI_INTRIN
        TensorIntrin.register(STOCK_VNNI_INTRIN, desc, impl, override=True)
        _registered.add(STOCK_VNNI_INTRIN)
    return VNNI_INTRIN


# ------------------------------------------------------------------------------------- depthwise
def _depthwise_intrin_funcs(n: int):
    """(desc, impl) of the per-lane n-tap dot product of the depthwise kernel (n = 2, 3 or 4)::

        C[c] += sum_{t < n} A[t, c] * B[c, t]        c < 16 (channels), A: uint8 [n, 16], B: int8 [16, 4]

    ``A`` is n consecutive NHWC pixels of one channel group (rows ``sa`` bytes apart, the row of
    channels in between), ``B`` the n taps of each channel, zero padded to 4 (packed at compile
    time). ``vpdpbusd`` without the broadcast: each lane sums its own 4 bytes, so the impl lays the
    n pixel rows out channel-major, 4 bytes per channel (a two-source byte permute, ``vpermt2b``
    on AVX512-VBMI), zeros in the unused taps."""
    from tvm.script import tirx as T

    @T.prim_func(s_tir=True)
    def desc(a: T.handle, b: T.handle, c: T.handle) -> None:
        sa = T.int32()
        A = T.match_buffer(a, (n, 16), "uint8", offset_factor=1, strides=[sa, 1])
        B = T.match_buffer(b, (16, n), "int8", offset_factor=1, strides=[4, 1])
        C = T.match_buffer(c, (16,), "int32", offset_factor=1)
        with T.sblock("root"):
            T.reads(C[0:16], A[0:n, 0:16], B[0:16, 0:n])
            T.writes(C[0:16])
            for i in T.serial(0, 16):
                for k in T.serial(0, n):
                    with T.sblock("update"):
                        vi, vk = T.axis.remap("SR", [i, k])
                        C[vi] = C[vi] + T.cast(A[vk, vi], "int32") * T.cast(B[vi, vk], "int32")

    @T.prim_func(s_tir=True)
    def impl(a: T.handle, b: T.handle, c: T.handle) -> None:
        sa = T.int32()
        A = T.match_buffer(a, (n, 16), "uint8", offset_factor=1, strides=[sa, 1])
        B = T.match_buffer(b, (16, n), "int8", offset_factor=1, strides=[4, 1])
        C = T.match_buffer(c, (16,), "int32", offset_factor=1)
        with T.sblock("root"):
            T.reads(C[0:16], A[0:n, 0:16], B[0:16, 0:n])
            T.writes(C[0:16])
            # one expression (see _intrin_funcs): lane 4c + t of the activation operand is pixel t's
            # channel c; B's 64 bytes (the 4 padded taps of 16 channels) are read whole
            C[T.ramp(T.int32(0), 1, 16)] = T.call_llvm_pure_intrin(
                T.llvm_lookup_intrinsic_id("llvm.x86.avx512.vpdpbusd.512"),
                C.vload([0], dtype="int32x16"),
                T.Shuffle([A.vload([t, 0], "uint8x16") if t < n else T.broadcast(T.uint8(0), 16) for t in range(4)],
                          [t * 16 + lane for lane in range(16) for t in range(4)]),
                B.vload([0, 0], dtype="int8x64"), dtype="int32x16")

    return desc, impl


def register_depthwise_intrinsic(n: int) -> str:
    """Register the n-tap depthwise intrinsic (n = 2, 3, 4; idempotent); returns its name."""
    if n not in (2, 3, 4):
        raise ValueError(f"the depthwise intrinsic takes 2 to 4 taps, not {n}")
    return register_intrinsic(f"vnni_depthwise_16x{n}", lambda: _depthwise_intrin_funcs(n))


# ------------------------------------------------------------------------------------- int16 x int8
VNNI16_INTRIN = "dot_16x2_vnni_i16"


def _int16_intrin_funcs():
    """(desc, impl) of the int16 dot product: ``C[i] += A[0] * B[i, 0] + A[1] * B[i, 1]``, i < 16, A:
    int16 [2] (the activation, 9..16-bit grids in their int16 containers), B: int16 [16, 2] (int8
    weights widened at compile time), C: int32 [16]. One ``vpdpwssd`` (AVX512-VNNI): each int32 lane
    adds the two signed 16 x 16-bit products of its pair, no intermediate saturation (the ``s``
    form would saturate). LLVM 22 declares it ``(<16 x i32>, <32 x i16>, <32 x i16>)``."""
    from tvm.script import tirx as T

    @T.prim_func(s_tir=True)
    def desc(A: T.Buffer((2,), "int16", offset_factor=1), B: T.Buffer((16, 2), "int16", offset_factor=1),
             C: T.Buffer((16,), "int32", offset_factor=1)) -> None:
        with T.sblock("root"):
            T.reads(C[0:16], A[0:2], B[0:16, 0:2])
            T.writes(C[0:16])
            for i in T.serial(0, 16):
                for k in T.serial(0, 2):
                    with T.sblock("update"):
                        vi, vk = T.axis.remap("SR", [i, k])
                        C[vi] = C[vi] + T.cast(A[vk], "int32") * T.cast(B[vi, vk], "int32")

    @T.prim_func(s_tir=True)
    def impl(A: T.Buffer((2,), "int16", offset_factor=1), B: T.Buffer((16, 2), "int16", offset_factor=1),
             C: T.Buffer((16,), "int32", offset_factor=1)) -> None:
        with T.sblock("root"):
            T.reads(C[0:16], A[0:2], B[0:16, 0:2])
            T.writes(C[0:16])
            # one expression (see _intrin_funcs): the activation pair as one 32-bit word broadcast
            # to 16 lanes, both operands as <32 x i16>
            C[T.ramp(T.int32(0), 1, 16)] = T.call_llvm_pure_intrin(
                T.llvm_lookup_intrinsic_id("llvm.x86.avx512.vpdpwssd.512"),
                C.vload([0], dtype="int32x16"),
                T.reinterpret(T.broadcast(T.reinterpret(A.vload([0], "int16x2"), dtype="int32"), 16), dtype="int16x32"),
                B.vload([0, 0], dtype="int16x32"), dtype="int32x16")

    return desc, impl


def register_int16_intrinsic() -> str:
    """Register the int16 ``vpdpwssd`` intrinsic (idempotent); returns its name."""
    return register_intrinsic(VNNI16_INTRIN, _int16_intrin_funcs)


def pack_dense_weight16(w: np.ndarray, lanes: int = 16) -> np.ndarray:
    """int8 weight ``[N, K]`` -> the int16 kernel's layout ``[N/16, K/2, 16, 2]`` int16 (zero padded)."""
    return dot.pack_weight(w, lanes, 2, "int16")


# ------------------------------------------------------------------------------------- capability
def host_has_avx512_vnni() -> bool:
    """Whether this CPU runs the 512-bit ``vpdpbusd`` (cpuinfo flag ``avx512_vnni``)."""
    from targets import _cpu_flags
    return "avx512_vnni" in _cpu_flags()


def target_has_vnni(target) -> bool:
    """Whether a registry target (a :class:`targets.Target` or its name) declares the ``vnni`` capability."""
    from targets import get
    t = get(target) if isinstance(target, str) else target
    return t.arch == "x86_64" and "vnni" in t.caps()


# ------------------------------------------------------------------------------------- the ISA row
# 512-bit vpdpwssd: 16 int32 lanes, int16 activations x int8 weights widened to int16, 2 k per lane;
# the dense kernels of linears whose input is a wide (9..16-bit) tensor. Not in the table: VNNI names it.
VNNI16 = DotISA(name="vnni16", arch="x86_64", lanes=16, act_dtype="int16", caps=("vnni", "avx512"),
                register=register_int16_intrinsic, instruction="vpdpwssd", hi32_requant=True,
                simd_depthwise=False, pack_weight=pack_dense_weight16, k_pack=2, weight_dtype="int16")
# 512-bit vpdpbusd: 16 int32 lanes, uint8 activations x int8 weights (int8 activations get +128).
VNNI = register_isa(DotISA(name="vnni", arch="x86_64", lanes=16, act_dtype="uint8", caps=("vnni", "avx512"),
              register=lambda: register_vnni_intrinsic(stock=False), instruction="vpdpbusd", hi32_requant=True,
              depthwise_intrin=register_depthwise_intrinsic, int16_isa=VNNI16))


# ------------------------------------------------------------------------------------- VNNI wrappers
# The VNNI names of the generic kernels of targets/kernels/dense.py (lanes 16, uint8 activations).
def packed_shape(N: int, K: int) -> tuple:
    """Shape of the packed weight for a logical ``[N, K]`` weight: ``(ceil(N/16), ceil(K/4), 16, 4)``."""
    return dot.packed_shape(N, K, VNNI.lanes)


def pack_dense_weight(w: np.ndarray) -> np.ndarray:
    """int8 weight ``[N, K]`` -> VNNI layout ``[N/16, K/4, 16, 4]`` (zero padded; also the AMX
    B-tile layout). See dense.pack_weight."""
    return dot.pack_weight(w, VNNI.lanes)


def shift_correction(w: np.ndarray) -> np.ndarray:
    """``128 * rowsum(W)`` as int32 ``[N]``: what the uint8 shift adds to each output channel
    (sum_k (x_k + 128) w_k = sum_k x_k w_k + 128 sum_k w_k)."""
    return dot.shift_correction(w, SHIFT)


def tile_sizes(M: int, N: int, K: int, mb: int = 4, nb: int = 4, kb: int = 128) -> tuple:
    """dense.tile_sizes with 16 lanes."""
    return dot.tile_sizes(M, N, K, mb, nb, kb, VNNI.lanes)


def dense_u8s8_vnni(M: int, N: int, K: int):
    """TIR ``main(X: uint8[M, K], Wp: int8[packed_shape(N, K)], C: int32[M, N])``, C = X . W^T.

    The reduction runs over the padded K (a zero-padding stage ``X_s`` is added when K % 4 != 0)
    and the accumulation over the padded N (block ``compute``, [M, Np]); block ``C`` copies the
    logical N columns out. Unscheduled: pass it to :func:`schedule_dense_vnni`."""
    from tvm import te
    X = te.placeholder((M, K), "uint8", name="X")
    Wp, C = dot.dense_te(X, M, N, K, VNNI)
    return te.create_prim_func([X, Wp, C]).with_attr("global_symbol", "main")


def dense_s8s8_vnni(M: int, N: int, K: int):
    """TIR ``main(X: int8[M, K], Wp: int8[packed], corr: int32[N], C: int32[M, N])``, C = X . W^T exactly.

    The int8 -> uint8 trick: VNNI needs uint8 activations, so stage ``X_s`` computes ``x + 128``
    (a separate elementwise op over [M, K], not fused into the tensorized load), the tensorized
    u8 x s8 reduction gives ``sum_k x w + 128 * sum_k w``, and the epilogue ``C`` subtracts
    ``corr = 128 * rowsum(W)`` (:func:`shift_correction`, computed at compile time from the constant
    weight). Exact for every int8 input, -128 and 127 included."""
    from tvm import te
    X = te.placeholder((M, K), "int8", name="X")
    corr = te.placeholder((N,), "int32", name="corr")
    Wp, C = dot.dense_te(X, M, N, K, VNNI, corr=corr)
    return te.create_prim_func([X, Wp, corr, C]).with_attr("global_symbol", "main")


def dense_requant_vnni(M: int, N: int, K: int, x_dtype: str, out_dtype: str):
    """Dense with the fixed-point requantize fused into the epilogue: one kernel per quantized linear
    (dense.dense_requant on VNNI). For int8 activations ``bias`` must already include
    ``- 128 * rowsum(W)`` (:func:`shift_correction`)."""
    if x_dtype not in ("uint8", "int8"):
        raise ValueError(f"dense_requant_vnni: activations must be uint8 or int8, got {x_dtype}")
    return dot.dense_requant(M, N, K, x_dtype, out_dtype, VNNI)


def conv1x1_requant_vnni(B: int, M: int, N: int, K: int, x_dtype: str, out_dtype: str):
    """A 1x1, stride-1 NCHW conv with the requantize epilogue (dense.conv1x1_requant on VNNI):
    ``main(X: x_dtype[B, K, H*W], Wp, qp, Y: out_dtype[B, N, H*W])``."""
    if x_dtype not in ("uint8", "int8"):
        raise ValueError(f"conv1x1_requant_vnni: activations must be uint8 or int8, got {x_dtype}")
    return dot.conv1x1_requant(B, M, N, K, x_dtype, out_dtype, VNNI)


def schedule_dense_vnni(func, mb: int = 4, nb: int = 4, kb: int = 128, intrin: str | None = None):
    """dense.schedule_dense on VNNI; returns the ``Schedule``. ``intrin`` defaults to
    :data:`VNNI_INTRIN`; the stock name, when asked for, is registered (overridden) here."""
    name = register_vnni_intrinsic(stock=(intrin == STOCK_VNNI_INTRIN))
    return dot.schedule_dense(func, VNNI, mb, nb, kb, intrin=intrin or name)


def schedule_conv1x1_vnni(func, mb: int = 8, nb: int = 2, kb: int = 256):
    """dense.schedule_conv1x1 on VNNI; returns the ``Schedule``."""
    return dot.schedule_conv1x1(func, VNNI, mb, nb, kb)


# ------------------------------------------------------------------------------------- NumPy entry
@functools.lru_cache(maxsize=32)
def _build(kind: str, M: int, N: int, K: int, target_json: str):
    import json

    import tvm
    func = (dense_s8s8_vnni if kind == "s8" else dense_u8s8_vnni)(M, N, K)
    ex = tvm.compile(schedule_dense_vnni(func).mod, target=tvm.target.Target(json.loads(target_json)))
    return ex.jit()


def _target_json(target) -> str:
    import json
    if target is None:
        return json.dumps(DEFAULT_TARGET, sort_keys=True)
    if isinstance(target, dict):
        return json.dumps(target, sort_keys=True)
    return json.dumps({k: (list(v) if isinstance(v, (list, tuple)) else v)
                       for k, v in target.export().items() if k in ("kind", "mtriple", "mcpu", "mattr", "num-cores")},
                      sort_keys=True)


def _run(kind: str, x: np.ndarray, w: np.ndarray, target) -> np.ndarray:
    import tvm
    M, K = x.shape
    N = w.shape[0]
    if w.shape[1] != K:
        raise ValueError(f"x is [M, {K}] but w is {list(w.shape)}; expected w [N, {K}]")
    f = _build(kind, M, N, K, _target_json(target))
    args = [tvm.runtime.tensor(np.ascontiguousarray(x)), tvm.runtime.tensor(pack_dense_weight(w))]
    if kind == "s8":
        args.append(tvm.runtime.tensor(shift_correction(w)))
    out = tvm.runtime.tensor(np.zeros((M, N), np.int32))
    f["main"](*args, out)
    return out.numpy()


def dense_u8s8(x_u8: np.ndarray, w: np.ndarray, target=None) -> np.ndarray:
    """int32 ``x_u8 @ w.T`` (uint8 [M, K] x int8 [N, K]) through the VNNI kernel (compiled once per shape)."""
    if np.asarray(x_u8).dtype != np.uint8 or np.asarray(w).dtype != np.int8:
        raise ValueError("dense_u8s8 needs uint8 activations and int8 weights")
    return _run("u8", np.asarray(x_u8), np.asarray(w), target)


def dense_s8s8_via_u8(x_s8: np.ndarray, w: np.ndarray, target=None) -> np.ndarray:
    """int32 ``x_s8 @ w.T`` (int8 x int8) through the VNNI kernel: x + 128 as uint8, then minus
    ``128 * rowsum(w)`` (see :func:`dense_s8s8_vnni`). Bit-exact with an int64 matmul."""
    if np.asarray(x_s8).dtype != np.int8 or np.asarray(w).dtype != np.int8:
        raise ValueError("dense_s8s8_via_u8 needs int8 activations and int8 weights")
    return _run("s8", np.asarray(x_s8), np.asarray(w), target)


__all__ = ["DEFAULT_TARGET", "REQUANT_ROWS", "STOCK_VNNI_INTRIN", "VNNI_INTRIN", "conv1x1_requant_vnni",
           "dense_requant_vnni", "schedule_conv1x1_vnni", "dense_s8s8_via_u8",
           "dense_s8s8_vnni", "dense_u8s8",
           "dense_u8s8_vnni", "host_has_avx512_vnni", "pack_dense_weight", "packed_shape", "register_vnni_intrinsic",
           "schedule_dense_vnni", "shift_correction", "target_has_vnni", "tile_sizes"]
