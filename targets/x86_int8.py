"""Tensorized int8 dense kernels for x86 AVX-512 VNNI (``vpdpbusd``): groundwork for "fast int8".

    from targets import x86_int8 as xi
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
  multiplier, shift, zero point, clip) in the epilogue: the kernel that relay_passes.tensorize_x86
  puts in place of each quantized linear layer.
* :func:`conv1x1_requant_vnni` / :func:`schedule_conv1x1_vnni`: a 1x1 NCHW convolution as that
  dense over pixels, reading and writing NCHW (what EfficientNet's pointwise convs become).
* :func:`schedule_dense_vnni`: a hand schedule with ``sch.tensorize`` (no tuning).
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
            A_i32 = T.reinterpret(A.vload([0], "uint8x4"), dtype="int32")
            A_u8x64 = T.reinterpret(T.broadcast(A_i32, 16), dtype="uint8x64")   # <64 x i8>, not <16 x i32>
            B_i8x64 = B.vload([0, 0], dtype="int8x64")                            # <64 x i8>, not <16 x i32>
            C[T.ramp(T.int32(0), 1, 16)] = T.call_llvm_pure_intrin(
                T.llvm_lookup_intrinsic_id("llvm.x86.avx512.vpdpbusd.512"),
                C.vload([0], dtype="int32x16"), A_u8x64, B_i8x64, dtype="int32x16")

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


# ------------------------------------------------------------------------------------- capability
def host_has_avx512_vnni() -> bool:
    """Whether this CPU runs the 512-bit ``vpdpbusd`` (cpuinfo flag ``avx512_vnni``)."""
    from . import _cpu_flags
    return "avx512_vnni" in _cpu_flags()


def target_has_vnni(target) -> bool:
    """Whether a registry target (a :class:`targets.Target` or its name) declares the ``vnni`` capability."""
    from . import get
    t = get(target) if isinstance(target, str) else target
    return t.arch == "x86_64" and "vnni" in t.caps()


# ------------------------------------------------------------------------------------- layout
def _ceil(n: int, m: int) -> int:
    return -(-n // m) * m


def packed_shape(N: int, K: int) -> tuple:
    """Shape of the packed weight for a logical ``[N, K]`` weight: ``(ceil(N/16), ceil(K/4), 16, 4)``."""
    return (_ceil(N, 16) // 16, _ceil(K, 4) // 4, 16, 4)


def pack_dense_weight(w: np.ndarray) -> np.ndarray:
    """int8 weight ``[N, K]`` (output channels x reduction) -> VNNI layout ``[N/16, K/4, 16, 4]``.

    ``packed[no, ko, ni, ki] = w[no*16 + ni, ko*4 + ki]``: for one (no, ko) the 64 bytes are 16 output
    channels x 4 consecutive k, exactly one ``vpdpbusd`` operand (and one row of an AMX B tile).
    N is padded to a multiple of 16 and K to a multiple of 4 **with zeros**; zero weights make the
    padded k contribute nothing whatever the activation holds there, and the padded output channels
    are computed but never stored (the kernels' outputs are ``[M, N]`` with the logical N).
    """
    w = np.asarray(w)
    if w.ndim != 2 or w.dtype != np.int8:
        raise ValueError(f"pack_dense_weight needs an int8 [N, K] array, got {w.dtype} {w.shape}")
    N, K = w.shape
    Np, Kp = _ceil(N, 16), _ceil(K, 4)
    if (Np, Kp) != (N, K):
        w = np.pad(w, ((0, Np - N), (0, Kp - K)))
    return np.ascontiguousarray(w.reshape(Np // 16, 16, Kp // 4, 4).transpose(0, 2, 1, 3))


def shift_correction(w: np.ndarray) -> np.ndarray:
    """``128 * rowsum(W)`` as int32 ``[N]``: what the uint8 shift adds to each output channel.

    sum_k (x_k + 128) w_k = sum_k x_k w_k + 128 sum_k w_k, so C_s8 = C_u8 - 128 * rowsum(W).
    |128 * rowsum| <= 128 * 128 * K, which fits int32 for K < 131072."""
    w = np.asarray(w)
    return (SHIFT * w.astype(np.int64).sum(axis=1)).astype(np.int32)


# ------------------------------------------------------------------------------------- workloads
def _dense_te(X, M: int, N: int, K: int, corr=None, epilogue=None):
    """Shared TE body: [optional pad/shift stage] -> compute (padded N) -> epilogue (logical N).

    ``epilogue(acc_value, i, j)``, when given, is block ``C``'s body (a PrimExpr of the output dtype)
    instead of the plain copy / ``- corr``."""
    from tvm import te
    Np, Kp = _ceil(N, 16), _ceil(K, 4)
    Wp = te.placeholder(packed_shape(N, K), "int8", name="Wp")
    if X.dtype == "int8":
        # int8 -> uint8 shift as its own elementwise stage (materialized, not fused into the load:
        # the tensorized load must be a plain uint8 buffer access). Padded k hold 0 (weights are 0 there).
        def shifted(i, k):
            v = (X[i, k].astype("int32") + SHIFT).astype("uint8")
            return v if Kp == K else te.if_then_else(k < K, v, te.const(0, "uint8"))
        Xu = te.compute((M, Kp), shifted, name="X_u8")
    elif Kp != K:
        Xu = te.compute((M, Kp), lambda i, k: te.if_then_else(k < K, X[i, k], te.const(0, "uint8")), name="X_pad")
    else:
        Xu = X
    k = te.reduce_axis((0, Kp), name="k")
    acc = te.compute((M, Np), lambda i, j: te.sum(
        Xu[i, k].astype("int32") * Wp[j // 16, k // 4, j % 16, k % 4].astype("int32"), axis=k), name="compute")
    if epilogue is not None:
        C = te.compute((M, N), lambda i, j: epilogue(acc[i, j], i, j), name="C")
    elif corr is None:
        C = te.compute((M, N), lambda i, j: acc[i, j], name="C")
    else:
        C = te.compute((M, N), lambda i, j: acc[i, j] - corr[j], name="C")
    return Wp, C


def dense_u8s8_vnni(M: int, N: int, K: int):
    """TIR ``main(X: uint8[M, K], Wp: int8[packed_shape(N, K)], C: int32[M, N])``, C = X . W^T.

    The reduction runs over the padded K (a zero-padding stage ``X_pad`` is added when K % 4 != 0)
    and the accumulation over the padded N (block ``compute``, [M, Np]); block ``C`` copies the
    logical N columns out. Unscheduled: pass it to :func:`schedule_dense_vnni`."""
    from tvm import te
    X = te.placeholder((M, K), "uint8", name="X")
    Wp, C = _dense_te(X, M, N, K)
    return te.create_prim_func([X, Wp, C]).with_attr("global_symbol", "main")


def dense_s8s8_vnni(M: int, N: int, K: int):
    """TIR ``main(X: int8[M, K], Wp: int8[packed], corr: int32[N], C: int32[M, N])``, C = X . W^T exactly.

    The int8 -> uint8 trick: VNNI needs uint8 activations, so stage ``X_u8`` computes
    ``x + 128`` (a separate elementwise op over [M, K], not fused into the tensorized load), the
    tensorized u8 x s8 reduction gives ``sum_k x w + 128 * sum_k w``, and the epilogue ``C``
    subtracts ``corr = 128 * rowsum(W)`` (:func:`shift_correction`, an int32 per output channel
    computed at compile time from the constant weight). Exact for every int8 input, -128 and 127
    included; works for symmetric and zero-point int8 activations alike (the zero point is handled
    outside, as before)."""
    from tvm import te
    X = te.placeholder((M, K), "int8", name="X")
    corr = te.placeholder((N,), "int32", name="corr")
    Wp, C = _dense_te(X, M, N, K, corr=corr)
    return te.create_prim_func([X, Wp, corr, C]).with_attr("global_symbol", "main")


REQUANT_ROWS = ("bias", "mult", "rnd", "shift", "zero_point", "lo", "hi")   # rows of dense_requant_vnni's qp


def dense_requant_vnni(M: int, N: int, K: int, x_dtype: str, out_dtype: str):
    """Dense with the fixed-point requantize fused into the epilogue: one kernel per quantized linear.

    TIR ``main(X: x_dtype[M, K], Wp: int8[packed_shape(N, K)], qp: int64[7, N], Y: out_dtype[M, N])``
    where the rows of ``qp`` are :data:`REQUANT_ROWS` (bias, mult, rnd, shift, zero_point, lo, hi), per
    output channel j::

        Y[i, j] = clip(((int64(acc[i, j]) + bias[j]) * mult[j] + rnd[j]) >> shift[j] + zero_point[j], lo[j], hi[j])

    ``acc`` is the tensorized u8 x s8 accumulation (block ``compute``). ``x_dtype`` "uint8" or
    "int8"; int8 activations go through the ``X_u8`` shift stage of :func:`dense_s8s8_vnni`, so for
    them ``bias`` must already include ``- 128 * rowsum(W)`` (:func:`shift_correction`): no separate
    correction pass. ``rnd`` is ``2^(shift-1)``, the round-half-up constant; the shift is arithmetic
    and all arithmetic after the accumulation is int64, exactly as the Relax lowering's requantize
    (relay_passes/integer_ops.requantize). Every requantize number is data, so layers of the same
    shape share one kernel. Schedule with :func:`schedule_dense_vnni` (block ``C`` is the epilogue
    it places after each tile)."""
    from tvm import te
    if x_dtype not in ("uint8", "int8"):
        raise ValueError(f"dense_requant_vnni: activations must be uint8 or int8, got {x_dtype}")
    X = te.placeholder((M, K), x_dtype, name="X")
    qp = te.placeholder((len(REQUANT_ROWS), N), "int64", name="qp")
    requant = _requantize(qp, out_dtype)
    Wp, C = _dense_te(X, M, N, K, epilogue=lambda a, i, j: requant(a, j))
    return te.create_prim_func([X, Wp, qp, C]).with_attr("global_symbol", "main")


def _requantize(qp, out_dtype: str):
    """``f(acc, j)``: the fixed-point requantize of output channel ``j`` from the rows of ``qp``
    (:data:`REQUANT_ROWS`), all in int64, as relay_passes/integer_ops.requantize computes it."""
    from tvm import te
    bias, mult, rnd, shift, zp, lo, hi = range(len(REQUANT_ROWS))

    def f(a, j):
        v = (((a.astype("int64") + qp[bias, j]) * qp[mult, j] + qp[rnd, j]) >> qp[shift, j]) + qp[zp, j]
        return te.max(te.min(v, qp[hi, j]), qp[lo, j]).astype(out_dtype)
    return f


def conv1x1_requant_vnni(B: int, M: int, N: int, K: int, x_dtype: str, out_dtype: str):
    """A 1x1, stride-1 NCHW convolution with the requantize epilogue: one kernel per pointwise conv.

    TIR ``main(X: x_dtype[B, K, M], Wp: int8[packed_shape(N, K)], qp: int64[7, N], Y: out_dtype[B, N, M])``
    with ``M = H * W`` (the NCHW tensors reshaped, which costs nothing), ``K`` input and ``N`` output
    channels. Per image it is the dense ``Y^T = X^T . W^T``: the GEMM rows are pixels. ``vpdpbusd``
    wants 4 consecutive k of one pixel in a 32-bit word, which NCHW keeps ``M`` bytes apart, so stage
    ``X_t`` first writes the image as ``[B, M, Kp]`` uint8 (transposed, shifted by +128 for int8
    inputs, zero padded to K % 4): one pass over the input, against K / 4 vpdpbusd per element after
    it. The accumulation (block ``compute``, [B, M, Np]) is the tensorized u8 x s8 reduction of
    :func:`dense_requant_vnni`, and the epilogue ``C`` writes each tile straight back to NCHW
    (``Y[b, j, m]``, contiguous in m). The requantize is :func:`dense_requant_vnni`'s, with the same
    ``qp`` rows (``bias`` includes ``- 128 * rowsum(W)`` for int8 inputs). Schedule with
    :func:`schedule_conv1x1_vnni`."""
    from tvm import te
    if x_dtype not in ("uint8", "int8"):
        raise ValueError(f"conv1x1_requant_vnni: activations must be uint8 or int8, got {x_dtype}")
    Np, Kp = _ceil(N, 16), _ceil(K, 4)
    X = te.placeholder((B, K, M), x_dtype, name="X")
    Wp = te.placeholder(packed_shape(N, K), "int8", name="Wp")
    qp = te.placeholder((len(REQUANT_ROWS), N), "int64", name="qp")

    def transposed(b, m, k):
        v = X[b, k, m] if x_dtype == "uint8" else (X[b, k, m].astype("int32") + SHIFT).astype("uint8")
        return v if Kp == K else te.if_then_else(k < K, v, te.const(0, "uint8"))
    Xt = te.compute((B, M, Kp), transposed, name="X_t")
    k = te.reduce_axis((0, Kp), name="k")
    acc = te.compute((B, M, Np), lambda b, i, j: te.sum(
        Xt[b, i, k].astype("int32") * Wp[j // 16, k // 4, j % 16, k % 4].astype("int32"), axis=k), name="compute")
    requant = _requantize(qp, out_dtype)
    C = te.compute((B, N, M), lambda b, j, i: requant(acc[b, i, j], j), name="C")
    return te.create_prim_func([X, Wp, qp, C]).with_attr("global_symbol", "main")


# ------------------------------------------------------------------------------------- schedule
def _divisor_at_most(n: int, cap: int) -> int:
    return max(d for d in range(1, min(n, cap) + 1) if n % d == 0)


def tile_sizes(M: int, N: int, K: int, mb: int = 4, nb: int = 4, kb: int = 128) -> tuple:
    """(mb, nb, kb) actually used: the largest divisors of M, ceil(N/16) and ceil(K/4)*4 that do not
    exceed the requested sizes. ``sch.tensorize`` needs exact splits (a predicated tail fails with
    ``comparator.rhs_buffer_map_.count(desc)``), so a prime M such as 7 runs with mb=1 (correct, slower)
    rather than padding M. kb counts k elements and is a multiple of 4."""
    mb = _divisor_at_most(M, mb)
    nb = _divisor_at_most(_ceil(N, 16) // 16, nb)
    kb = 4 * _divisor_at_most(_ceil(K, 4) // 4, max(1, kb // 4))
    return mb, nb, kb


def schedule_dense_vnni(func, mb: int = 4, nb: int = 4, kb: int = 128, intrin: str | None = None):
    """Hand schedule for :func:`dense_u8s8_vnni` / :func:`dense_s8s8_vnni`; returns the ``Schedule``.

    Tiles: rows ``mb``, output columns ``nb`` x 16 (one ``vpdpbusd`` per 16 columns), k in chunks of
    ``kb``; loop order io, jo | ko, kt | ii, jn, [16 x 4 tensorized]. The (io, jo) tiles are fused and
    parallel; the int32 tile accumulates in the compact ``compute`` buffer (vectorized zero init) and
    the epilogue (copy / ``- corr``) runs right after its tile, vectorized over the columns. The
    pad/shift stage, when present, is its own parallel + vectorized loop nest. Tile sizes are reduced
    to divisors (:func:`tile_sizes`). ``intrin`` defaults to :data:`VNNI_INTRIN`; it, or the stock name
    when asked for, is registered here.
    """
    import tvm
    name = register_vnni_intrinsic(stock=(intrin == STOCK_VNNI_INTRIN))   # the stock name: overridden here
    intrin = intrin or name
    sch = tvm.s_tir.Schedule(func)
    blk = sch.get_sblock("compute")
    i, j, k = sch.get_loops(blk)
    M, Np, Kp = (int(sch.get(x).extent) for x in (i, j, k))
    mb, nb, kb = tile_sizes(M, Np, Kp, mb, nb, kb)
    io, ii = sch.split(i, [None, mb])
    jo, jn, ji = sch.split(j, [None, nb, 16])
    ko, kt, ki = sch.split(k, [None, kb // 4, 4])
    sch.reorder(io, jo, ko, kt, ii, jn, ji, ki)
    outer = sch.fuse(io, jo)
    sch.parallel(outer)
    epi = sch.get_sblock("C")
    sch.reverse_compute_at(epi, outer)
    init = sch.decompose_reduction(blk, ko)
    sch.vectorize(sch.get_loops(init)[-1])
    sch.unroll(ii)
    sch.unroll(jn)
    sch.tensorize(ji, intrin)
    sch.vectorize(sch.get_loops(epi)[-1])
    stages = {sch.get(b).name_hint: b for b in sch.get_child_blocks(sch.get_sblock("root"))}
    for pre in (stages[n] for n in ("X_u8", "X_pad") if n in stages):   # absent: uint8 input, K % 4 == 0
        pi, pk = sch.get_loops(pre)
        sch.parallel(pi)
        sch.vectorize(pk)
    return sch


def schedule_conv1x1_vnni(func, mb: int = 8, nb: int = 2, kb: int = 256):
    """Hand schedule for :func:`conv1x1_requant_vnni`; returns the ``Schedule``.

    Tiles of ``mb`` pixels x ``nb`` x 16 output channels (mb * nb = 16 zmm accumulators by default,
    half the register file), k in chunks of ``kb``; loop order b, mo, jo | ko, kt | mi, jn,
    [16 x 4 tensorized], the (b, mo, jo) tiles fused and parallel. The epilogue writes each tile to
    NCHW right after it, vectorized over its pixels. Why mb = 8: the spatial sizes of pointwise convs
    (112^2 ... 7^2) have divisors 8 or 7 (49), and :func:`tile_sizes` takes the largest divisor
    <= mb, so 7x7 maps still get 7-pixel tiles. Stage ``X_t`` (the transpose) is parallel over pixels."""
    import tvm
    intrin = register_vnni_intrinsic(stock=False)
    sch = tvm.s_tir.Schedule(func)
    blk = sch.get_sblock("compute")
    b, i, j, k = sch.get_loops(blk)
    M, Np, Kp = (int(sch.get(x).extent) for x in (i, j, k))
    mb, nb, kb = tile_sizes(M, Np, Kp, mb, nb, kb)
    mo, mi = sch.split(i, [None, mb])
    jo, jn, ji = sch.split(j, [None, nb, 16])
    ko, kt, ki = sch.split(k, [None, kb // 4, 4])
    sch.reorder(b, mo, jo, ko, kt, mi, jn, ji, ki)
    outer = sch.fuse(b, mo, jo)
    sch.parallel(outer)
    epi = sch.get_sblock("C")
    sch.reverse_compute_at(epi, outer)
    init = sch.decompose_reduction(blk, ko)
    sch.vectorize(sch.get_loops(init)[-1])
    sch.unroll(mi)
    sch.unroll(jn)
    sch.tensorize(ji, intrin)
    sch.vectorize(sch.get_loops(epi)[-1])
    tb, tm, tk = sch.get_loops(sch.get_sblock("X_t"))
    sch.parallel(sch.fuse(tb, tm))
    return sch


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
