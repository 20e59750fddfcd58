"""int8 GEMM kernels on a CPU dot-product instruction, written once for every such instruction.

x86 AVX-512 VNNI ``vpdpbusd``, Arm ``sdot`` (dotprod) and CUDA ``__dp4a`` (one lane; its GPU
schedules are in targets/cuda_int8.py) have the same shape: each of ``lanes``
int32 accumulators adds the dot product of 4 activation bytes (one 32-bit word, broadcast to every
lane) with its own 4 weight bytes. So one TE workload and one hand schedule serve both; a
:class:`DotISA` row says what differs (lanes, the activation dtype the instruction takes, the
tensor intrinsic, the capabilities a registry target needs). ``ISAS`` is that table
(targets/x86_int8.py and targets/arm_int8.py define the rows and register the intrinsics).

* weights are packed at compile time to ``[N/lanes, K/4, lanes, 4]`` (:func:`pack_weight`, zero padded);
* activations whose dtype is not the instruction's are shifted by 128 in a stage of their own
  (int8 + 128 -> uint8 for VNNI's u8 x s8; uint8 - 128 -> int8 for sdot's s8 x s8) and the shift's
  contribution, ``shift * rowsum(W)``, is subtracted from the bias at compile time (:func:`shift_of`);
* :func:`dense_requant` (``Y[M, N]``) and :func:`conv1x1_requant` (NCHW ``Y[B, N, H*W]``) put the
  plan's fixed-point requantize (:data:`REQUANT_ROWS`, int64, exactly as
  relay_passes/integer_ops.requantize) in the epilogue of each output tile;
* :func:`schedule_dense` / :func:`schedule_conv1x1` tile, parallelize and ``sch.tensorize``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

REQUANT_ROWS = ("bias", "mult", "rnd", "shift", "zero_point", "lo", "hi")   # rows of the kernels' qp argument
# rows of the int32 qp argument of the high-half epilogue (:func:`hi32_rows`); rnd_hi carries the
# zero point, and the zero_point row is kept for the record only (the kernels do not read it)
REQUANT_ROWS_HI32 = ("bias", "mult", "rnd_hi", "shift_hi", "zero_point", "lo", "hi")
# TVM puts a buffer on the stack only below this many bytes (tvm/runtime/device_api.h kMaxStackAlloca);
# a larger one inside a parallel loop becomes a TVMBackendAllocWorkspace/FreeWorkspace pair per
# iteration. The int32 accumulator tile is such a buffer: at exactly 1024 bytes (8 x 32 lanes) the
# EfficientNet-Lite0 pointwise kernels ran 1.5-2x slower than at 896 (7 x 32). tile_sizes keeps under it.
STACK_ALLOCA_BYTES = 1024
# Below these a kernel runs on the calling thread: a parallel launch costs microseconds (tens when
# the other cores are busy), more than a small layer's work. Measured on digits (8 x 8 maps, every
# layer a kernel), 2 threads in a process that had run PyTorch: 0.19 ms with every kernel
# parallel, against 0.05 ms on one thread.
PARALLEL_MIN_MACS = 1 << 20       # multiply-adds of a compute kernel
PARALLEL_MIN_ELEMENTS = 1 << 16   # elements a data-movement stage writes


def loop_extent(sch, loops) -> int:
    """Iterations of a loop nest (its work, for :func:`parallel_if_worth`)."""
    n = 1
    for loop in loops:
        n *= int(sch.get(loop).extent)
    return n


def parallel_if_worth(sch, loop, work: int, minimum: int = PARALLEL_MIN_MACS) -> None:
    """``sch.parallel(loop)`` when ``work`` reaches ``minimum`` (see PARALLEL_MIN_MACS)."""
    if work >= minimum:
        sch.parallel(loop)


@dataclass(frozen=True)
class DotISA:
    """One dot-product instruction as the kernels use it."""

    name: str                    # kernel name prefix: vnni, sdot
    arch: str                    # registry arch of the targets that have it
    lanes: int                   # int32 accumulators per instruction (16 for 512-bit vpdpbusd, 4 for sdot)
    act_dtype: str               # the activation operand's dtype (VNNI: uint8; sdot: int8)
    caps: tuple                  # registry capabilities a target needs
    register: Callable[[], str]  # registers the tensor intrinsic (idempotent); returns its name
    instruction: str             # the mnemonic to look for in the assembly
    schedule_dense: Callable | None = None    # (func, isa, *tile) -> Schedule; None: the CPU schedule_dense
    schedule_conv1x1: Callable | None = None  # (func, isa) -> Schedule; None: the CPU schedule_conv1x1
    simd_depthwise: bool = True  # whether depthwise convs get targets.depthwise_int8's CPU SIMD kernel
    dense_requant: Callable | None = None     # workload (M, N, K, x_dtype, out_dtype, isa); None: dense_requant
    conv1x1_requant: Callable | None = None   # workload (B, M, N, K, ...); None: conv1x1_requant
    pack_weight: Callable | None = None       # (w int8 [N, K], lanes) -> the packed weight; None: pack_weight
    channels_last: bool = True   # 1x1 and depthwise convs run on NHWC activations (relay_passes/channels_last.py)
    hi32_requant: bool = False   # dense and NHWC depthwise kernels take the high-half epilogue where exact (hi32_rows)
    # n -> the per-lane n-tap (n = 2..4) intrinsic of targets.depthwise_int8's dot-product depthwise
    # kernel (activations of act_dtype, ``lanes`` channels); None: depthwise convs use the SIMD kernel
    depthwise_intrin: Callable[[int], str] | None = None

    def reason_missing(self, target) -> str:
        """'' if a registry Target can run the kernels, else why not."""
        missing = [c for c in self.caps if c not in target.caps()]
        if missing:
            more = f" (and {', '.join(repr(c) for c in missing[1:])})" if len(missing) > 1 else ""
            return (f"target {target.name!r} ({target.arch}, capabilities {', '.join(target.caps()) or 'none'}) "
                    f"lacks the {missing[0]!r} capability{more} of the {self.name} kernels")
        if target.arch != self.arch:
            return f"target {target.name!r} is {target.arch}, the {self.name} kernels are {self.arch}"
        return ""


_REGISTERED: set = set()  # tensor intrinsics registered by register_intrinsic in this process


def register_intrinsic(name: str, intrin_funcs: Callable[[], tuple]) -> str:
    """Register the tensor intrinsic ``name`` from ``intrin_funcs()`` = (desc, impl) once per
    process (the ISA rows' ``register``); returns ``name``."""
    from tvm.s_tir import TensorIntrin
    if name not in _REGISTERED:
        TensorIntrin.register(name, *intrin_funcs(), override=True)
        _REGISTERED.add(name)
    return name


def _ceil(n: int, m: int) -> int:
    return -(-n // m) * m


# ------------------------------------------------------------------------------------- layout
def packed_shape(N: int, K: int, lanes: int) -> tuple:
    """``(ceil(N/lanes), ceil(K/4), lanes, 4)``: the packed weight of a logical ``[N, K]`` weight."""
    return (_ceil(N, lanes) // lanes, _ceil(K, 4) // 4, lanes, 4)


def pack_weight(w: np.ndarray, lanes: int) -> np.ndarray:
    """int8 ``[N, K]`` -> ``[N/lanes, K/4, lanes, 4]``: ``packed[no, ko, ni, ki] = w[no*lanes + ni, ko*4 + ki]``.

    For one (no, ko) the ``lanes * 4`` bytes are one instruction's weight operand. N and K are
    padded **with zeros**: padded k then contribute nothing whatever the activation holds there, and
    padded output channels are computed but never stored."""
    w = np.asarray(w)
    if w.ndim != 2 or w.dtype != np.int8:
        raise ValueError(f"pack_weight needs an int8 [N, K] array, got {w.dtype} {w.shape}")
    N, K = w.shape
    Np, Kp = _ceil(N, lanes), _ceil(K, 4)
    if (Np, Kp) != (N, K):
        w = np.pad(w, ((0, Np - N), (0, Kp - K)))
    return np.ascontiguousarray(w.reshape(Np // lanes, lanes, Kp // 4, 4).transpose(0, 2, 1, 3))


def shift_of(x_dtype: str, isa: DotISA) -> int:
    """What the kernel adds to each activation to reach the instruction's dtype: 0, +128 or -128.
    ``sum (x + s) w = sum x w + s * rowsum(w)``, so the bias takes ``- s * rowsum(w)``."""
    if x_dtype == isa.act_dtype:
        return 0
    if (x_dtype, isa.act_dtype) == ("int8", "uint8"):
        return 128
    if (x_dtype, isa.act_dtype) == ("uint8", "int8"):
        return -128
    raise ValueError(f"{isa.name} kernels take uint8 or int8 activations, got {x_dtype}")


def shift_correction(w: np.ndarray, shift: int = 128) -> np.ndarray:
    """``shift * rowsum(W)`` as int32 ``[N]``: what shifting the activations adds to each output channel.
    ``|128 * rowsum| <= 128 * 128 * K`` fits int32 for K < 131072."""
    return (shift * np.asarray(w).astype(np.int64).sum(axis=1)).astype(np.int32)


# ------------------------------------------------------------------------------------- workloads
def _shifted(x_load, x_dtype: str, isa: DotISA, k, K: int, Kp: int):
    """The activation as the instruction takes it: shifted to its dtype, 0 in the padded k."""
    from tvm import te
    s = shift_of(x_dtype, isa)
    v = x_load if s == 0 else (x_load.astype("int32") + s).astype(isa.act_dtype)
    return v if Kp == K else te.if_then_else(k < K, v, te.const(0, isa.act_dtype))


def hi32_rows(qp: np.ndarray, acc_bound) -> np.ndarray | None:
    """The int32 rows (:data:`REQUANT_ROWS_HI32`) of the high-half epilogue, or None where it is not
    exact for these numbers.

    The plan's requantize is ``((a * m + 2^(s-1)) >> s)`` in int64, ``a = acc + bias``. Write the
    exact product as ``a * m = H * 2^32 + L`` (``H`` its signed high word, ``0 <= L < 2^32``). For
    ``s >= 33``, ``a * m + 2^(s-1) = (H + 2^(s-33)) * 2^32 + L``, and since ``L / 2^32`` lies in
    [0, 1) it cannot carry past a multiple of ``2^(s-32)``::

        (a * m + 2^(s-1)) >> s  ==  (H + 2^(s-33)) >> (s - 32)          (exactly)

    so the kernel needs only the high word of a 32 x 32-bit product (two ``vpmuldq`` per 16 lanes
    on AVX-512) and int32 arithmetic after it, instead of sign-extending every accumulator to two
    int64 halves (``vpmullq``, 64-bit shift, add, min, max). Exact when:

    * ``|acc| + |bias| < 2^31`` (``acc_bound``: a bound on ``|acc|``, scalar or per channel), so
      ``a`` is the int32 sum;
    * ``m`` fits int32 (``m = 2^31`` is halved with ``s - 1``: the same value) and ``rnd = 2^(s-1)``;
    * ``33 <= s <= 62``, so that ``s - 32`` is a valid int32 shift.

    The zero point is folded into the rounding term: ``((H + r) >> t) + z == (H + r + z * 2^t) >> t``
    (adding a multiple of ``2^t`` before an arithmetic shift), one add fewer per vector; exact when
    ``|H| + |r + z * 2^t| < 2^31``, checked with ``|H| <= (max|a| * |m|) >> 32 + 1``.
    """
    qp = _constant_channels(np.asarray(qp, np.int64), acc_bound)
    bias, mult, rnd, shift, zp, lo, hi = qp
    if (shift < 1).any() or (rnd != np.left_shift(np.int64(1), np.maximum(shift, 1) - 1)).any():
        return None
    top = mult == (1 << 31)
    mult, shift = np.where(top, mult >> 1, mult), np.where(top, shift - 1, shift)
    if (shift < 33).any() or (shift > 62).any() or (mult < -(1 << 31)).any() or (mult >= (1 << 31)).any():
        return None
    a_max = np.asarray(acc_bound, np.int64) + np.abs(bias)
    if (a_max >= (1 << 31)).any():
        return None
    rnd_hi = np.left_shift(np.int64(1), shift - 33) + np.left_shift(zp, shift - 32)
    h_max = ((a_max * np.abs(mult)) >> 32) + 1
    if (h_max + np.abs(rnd_hi) >= (1 << 31)).any():
        return None
    if any((r < -(1 << 31)).any() or (r >= (1 << 31)).any() for r in (zp, lo, hi)):
        return None
    return np.stack([bias, mult, rnd_hi, shift - 32, zp, lo, hi]).astype(np.int32)


def saturates(rows: np.ndarray, out_dtype: str) -> bool:
    """Whether every channel's clip bounds (rows 5, 6 of :data:`REQUANT_ROWS` or
    :data:`REQUANT_ROWS_HI32`) are ``out_dtype``'s own limits: the kernel's narrowing conversion
    then clips by saturating (``vpmaxsd`` + ``vpmovusdb`` for uint8, ``vpmovsdb`` for int8) instead
    of a per-channel min and max (EfficientNet-Lite0: every layer, ReLU6 included)."""
    info = np.iinfo(out_dtype)
    return bool((rows[5] == info.min).all() and (rows[6] == info.max).all())


def requantize_int64(qp: np.ndarray, acc: np.ndarray) -> np.ndarray:
    """NumPy: the plan's int64 requantize of ``acc`` (``[..., N]``) by the rows of ``qp``."""
    bias, mult, rnd, shift, zp, lo, hi = np.asarray(qp, np.int64)
    return np.clip((((np.asarray(acc, np.int64) + bias) * mult + rnd) >> shift) + zp, lo, hi)


def _constant_channels(qp: np.ndarray, acc_bound) -> np.ndarray:
    """``qp`` with every channel whose output is one value for all ``|acc| <= acc_bound`` rewritten
    as that constant (bias 0, multiplier 0, zero point = the value, exact by construction).

    Why: channels whose weights quantized to (nearly) nothing carry int32 biases near the int32
    limit (the float bias over a tiny weight scale, clipped) and shifts up to 62; their output is
    a clipped constant, but ``acc + bias`` does not provably fit int32, which would keep the whole
    layer on the int64 epilogue (most of EfficientNet-Lite0's expand and depthwise convs). The
    requantize is monotone in ``acc``, so equal values at both ends of the range mean constant."""
    bound = np.broadcast_to(np.asarray(acc_bound, np.int64), qp.shape[1:])
    ends = requantize_int64(qp, np.stack([-bound, bound]))
    const = ends[0] == ends[1]
    if not const.any():
        return qp
    qp = qp.copy()
    qp[0, const], qp[1, const], qp[2, const], qp[3, const] = 0, 0, 1 << 32, 33
    qp[4, const] = ends[0, const]
    return qp


def _requantize_hi32(q, out_dtype: str, saturate: bool = False):
    """``f(a, j)``: the requantize of the int32 ``a = acc + bias`` of channel ``j`` from the rows of
    ``q`` (:func:`hi32_rows`). The product's high word is written as int64 multiply, shift and
    narrowing of two sign-extended int32 values, which LLVM turns into its multiply-high lowering.
    ``saturate``: the clip bounds are the output dtype's limits (:func:`saturates`), written as
    constants so that LLVM emits a saturating narrowing."""
    from tvm import te
    _, mult, rnd, shift, _, lo, hi = range(len(REQUANT_ROWS_HI32))
    info = np.iinfo(out_dtype)

    def f(a, j):
        h = ((a.astype("int64") * q[mult, j].astype("int64")) >> 32).astype("int32")
        v = (h + q[rnd, j]) >> q[shift, j]
        if saturate:
            return te.max(te.min(v, int(info.max)), int(info.min)).astype(out_dtype)
        return te.max(te.min(v, q[hi, j]), q[lo, j]).astype(out_dtype)
    return f


def _requantize(qp, out_dtype: str):
    """``f(acc, j)``: the fixed-point requantize of output channel ``j`` from the rows of ``qp``."""
    from tvm import te
    bias, mult, rnd, shift, zp, lo, hi = range(len(REQUANT_ROWS))

    def f(a, j):
        v = (((a.astype("int64") + qp[bias, j]) * qp[mult, j] + qp[rnd, j]) >> qp[shift, j]) + qp[zp, j]
        return te.max(te.min(v, qp[hi, j]), qp[lo, j]).astype(out_dtype)
    return f


def dense_te(X, M: int, N: int, K: int, isa: DotISA, corr=None, epilogue=None):
    """TE body ``[shift/pad stage X_s] -> compute [M, Np] (int32) -> C [M, N]``; returns (Wp, C).

    The shift/pad stage is materialized (the tensorized load must be a plain buffer access) and is
    absent when X already has the instruction's dtype and K % 4 == 0. ``epilogue(acc, i, j)``, when
    given, is block ``C``'s body; else ``C`` copies the accumulator (minus ``corr[j]`` if given)."""
    from tvm import te
    lanes = isa.lanes
    Np, Kp = _ceil(N, lanes), _ceil(K, 4)
    Wp = te.placeholder(packed_shape(N, K, lanes), "int8", name="Wp")
    if X.dtype != isa.act_dtype or Kp != K:
        Xs = te.compute((M, Kp), lambda i, k: _shifted(X[i, k], X.dtype, isa, k, K, Kp), name="X_s")
    else:
        Xs = X
    k = te.reduce_axis((0, Kp), name="k")
    acc = te.compute((M, Np), lambda i, j: te.sum(
        Xs[i, k].astype("int32") * Wp[j // lanes, k // 4, j % lanes, k % 4].astype("int32"), axis=k), name="compute")
    if epilogue is not None:
        C = te.compute((M, N), lambda i, j: epilogue(acc[i, j], i, j), name="C")
    elif corr is None:
        C = te.compute((M, N), lambda i, j: acc[i, j], name="C")
    else:
        C = te.compute((M, N), lambda i, j: acc[i, j] - corr[j], name="C")
    return Wp, C


def dense_requant(M: int, N: int, K: int, x_dtype: str, out_dtype: str, isa: DotISA, hi32: bool = False,
                  saturate: bool = False):
    """TIR ``main(X: x_dtype[M, K], Wp: int8[packed_shape(N, K, lanes)], qp: int64[7, N], Y: out_dtype[M, N])``::

        Y[i, j] = clip(((int64(acc[i, j]) + bias[j]) * mult[j] + rnd[j]) >> shift[j] + zero_point[j], lo[j], hi[j])

    ``qp``'s rows are :data:`REQUANT_ROWS`; ``bias`` must include ``- shift_of(x_dtype) * rowsum(W)``.
    Every requantize number is data, so layers of one shape share one kernel.

    ``hi32=True``: the same values through the high-half epilogue, ``qp`` int32 rows from
    :func:`hi32_rows` (the caller checks that they exist). Block ``C`` then adds the bias in int32
    and block ``Y`` requantizes: inlined into one expression, TVM's simplifier would distribute the
    int64 cast over the bias add and LLVM would no longer see a product of two int32 values.
    ``saturate``: the clip bounds are ``out_dtype``'s limits in every channel (:func:`saturates`)."""
    from tvm import te
    shift_of(x_dtype, isa)  # validates the dtype
    X = te.placeholder((M, K), x_dtype, name="X")
    if not hi32:
        qp = te.placeholder((len(REQUANT_ROWS), N), "int64", name="qp")
        requant = _requantize(qp, out_dtype)
        Wp, C = dense_te(X, M, N, K, isa, epilogue=lambda a, i, j: requant(a, j))
        return te.create_prim_func([X, Wp, qp, C]).with_attr("global_symbol", "main")
    qp = te.placeholder((len(REQUANT_ROWS_HI32), N), "int32", name="qp")
    Wp, C = dense_te(X, M, N, K, isa, epilogue=lambda a, i, j: a + qp[0, j])
    requant = _requantize_hi32(qp, out_dtype, saturate)
    Y = te.compute((M, N), lambda i, j: requant(C[i, j], j), name="Y")
    return te.create_prim_func([X, Wp, qp, Y]).with_attr("global_symbol", "main")


def conv1x1_requant(B: int, M: int, N: int, K: int, x_dtype: str, out_dtype: str, isa: DotISA):
    """A 1x1, stride-1 NCHW convolution with the requantize epilogue.

    TIR ``main(X: x_dtype[B, K, M], Wp: int8[packed], qp: int64[7, N], Y: out_dtype[B, N, M])``,
    ``M = H * W`` (NCHW reshaped, which costs nothing). Per image it is the dense ``Y^T = X^T W^T``
    with pixels as GEMM rows. The instruction wants 4 consecutive k of one pixel in a 32-bit word,
    which NCHW keeps ``M`` bytes apart, so stage ``X_t`` first writes the image as ``[B, M, Kp]``
    (transposed, shifted, zero padded): one pass over the input, against K / 4 dot instructions per
    element after it. The epilogue ``C`` writes each tile straight back to NCHW (contiguous in m)."""
    from tvm import te
    shift_of(x_dtype, isa)
    lanes = isa.lanes
    Np, Kp = _ceil(N, lanes), _ceil(K, 4)
    X = te.placeholder((B, K, M), x_dtype, name="X")
    Wp = te.placeholder(packed_shape(N, K, lanes), "int8", name="Wp")
    qp = te.placeholder((len(REQUANT_ROWS), N), "int64", name="qp")
    Xt = te.compute((B, M, Kp), lambda b, m, k: _shifted(X[b, k, m], x_dtype, isa, k, K, Kp), name="X_t")
    k = te.reduce_axis((0, Kp), name="k")
    acc = te.compute((B, M, Np), lambda b, i, j: te.sum(
        Xt[b, i, k].astype("int32") * Wp[j // lanes, k // 4, j % lanes, k % 4].astype("int32"), axis=k),
        name="compute")
    requant = _requantize(qp, out_dtype)
    C = te.compute((B, N, M), lambda b, j, i: requant(acc[b, i, j], j), name="C")
    return te.create_prim_func([X, Wp, qp, C]).with_attr("global_symbol", "main")


# ------------------------------------------------------------------------------------- schedules
def _divisor_at_most(n: int, cap: int) -> int:
    return max(d for d in range(1, min(n, cap) + 1) if n % d == 0)


def tile_sizes(M: int, N: int, K: int, mb: int = 4, nb: int = 4, kb: int = 128, lanes: int = 16) -> tuple:
    """(mb, nb, kb) actually used: the largest divisors of M, ceil(N/lanes) and ceil(K/4)*4 that do
    not exceed the requested sizes. ``sch.tensorize`` needs exact splits (a predicated tail fails
    with ``comparator.rhs_buffer_map_.count(desc)``), so a prime M such as 7 runs with mb=1 (correct,
    slower) rather than padding M. kb counts k elements and is a multiple of 4. The int32 tile
    ``mb x nb*lanes`` is kept under :data:`STACK_ALLOCA_BYTES` (nb shrinks first, or mb when the
    larger), so (8, 2) becomes (7, 2) and (4, 4) becomes (4, 3) at 16 lanes."""
    mb = _divisor_at_most(M, mb)
    nb = _divisor_at_most(_ceil(N, lanes) // lanes, nb)
    while mb * nb * lanes * 4 >= STACK_ALLOCA_BYTES:  # the int32 tile must stay on the stack
        if nb >= mb:
            nb = _divisor_at_most(_ceil(N, lanes) // lanes, nb - 1)
        else:
            mb = _divisor_at_most(M, mb - 1)
    kb = 4 * _divisor_at_most(_ceil(K, 4) // 4, max(1, kb // 4))
    return mb, nb, kb


def _tensorized_tiles(sch, blk, loops, isa: DotISA, mb: int, nb: int, kb: int, intrin: str | None):
    """Shared tiling of block ``compute``: ``loops`` = its (batch loops..., i, j, k). Order
    outer (batch, io, jo) | ko, kt | ii, jn, [lanes x 4 tensorized]; outer fused and parallel, the
    int32 tile initialized vectorized, the epilogue ``C`` right after each tile. Returns the
    epilogue block."""
    *batch, i, j, k = loops
    M, Np, Kp = (int(sch.get(x).extent) for x in (i, j, k))
    work = loop_extent(sch, loops)  # before the splits: their loops are gone after
    mb, nb, kb = tile_sizes(M, Np, Kp, mb, nb, kb, isa.lanes)
    io, ii = sch.split(i, [None, mb])
    jo, jn, ji = sch.split(j, [None, nb, isa.lanes])
    ko, kt, ki = sch.split(k, [None, kb // 4, 4])
    sch.reorder(*batch, io, jo, ko, kt, ii, jn, ji, ki)
    outer = sch.fuse(*batch, io, jo)
    parallel_if_worth(sch, outer, work)
    epi = sch.get_sblock("C")
    sch.reverse_compute_at(epi, outer)
    init = sch.decompose_reduction(blk, ko)
    sch.vectorize(sch.get_loops(init)[-1])
    sch.unroll(ii)
    sch.unroll(jn)
    sch.tensorize(ji, intrin or isa.register())
    sch.vectorize(sch.get_loops(epi)[-1])
    if "Y" in _block_names(sch):  # the high-half epilogue's requantize block (dense_requant hi32)
        y = sch.get_sblock("Y")
        sch.reverse_compute_at(y, outer)
        sch.vectorize(sch.get_loops(y)[-1])
    return epi


def _block_names(sch) -> set:
    """Names of the blocks directly under the root block."""
    return {sch.get(b).name_hint for b in sch.get_child_blocks(sch.get_sblock("root"))}


def schedule_dense(func, isa: DotISA, mb: int = 4, nb: int = 4, kb: int = 128, intrin: str | None = None):
    """Hand schedule for :func:`dense_te` workloads (plain, ``- corr`` or requantize epilogue);
    returns the ``Schedule``. Tiles: ``mb`` rows x ``nb`` x lanes columns (mb * nb accumulators:
    16 of the 32 vector registers), k in chunks of ``kb``; the shift/pad stage, when present, is
    its own parallel, vectorized loop nest. ``intrin`` defaults to the ISA's registered intrinsic."""
    import tvm
    sch = tvm.s_tir.Schedule(func)
    blk = sch.get_sblock("compute")
    _tensorized_tiles(sch, blk, sch.get_loops(blk), isa, mb, nb, kb, intrin)
    if "X_s" in _block_names(sch):
        pi, pk = sch.get_loops(sch.get_sblock("X_s"))
        parallel_if_worth(sch, pi, loop_extent(sch, (pi, pk)), PARALLEL_MIN_ELEMENTS)
        sch.vectorize(pk)
    return sch


def schedule_conv1x1(func, isa: DotISA, mb: int = 8, nb: int = 2, kb: int = 256):
    """Hand schedule for :func:`conv1x1_requant`; returns the ``Schedule``.

    Tiles of ``mb`` pixels x ``nb`` x lanes output channels, k in chunks of ``kb``; the epilogue
    writes each tile to NCHW right after it, vectorized over its pixels. Why mb = 8: the spatial
    sizes of pointwise convs (112^2 ... 7^2) have divisors 8 or 7 (49), and :func:`tile_sizes` takes
    the largest divisor <= mb, so 7x7 maps still get 7-pixel tiles. Stage ``X_t`` (the transpose)
    is parallel over pixels."""
    import tvm
    sch = tvm.s_tir.Schedule(func)
    blk = sch.get_sblock("compute")
    _tensorized_tiles(sch, blk, sch.get_loops(blk), isa, mb, nb, kb, None)
    tb, tm, tk = sch.get_loops(sch.get_sblock("X_t"))
    work = loop_extent(sch, (tb, tm, tk))
    parallel_if_worth(sch, sch.fuse(tb, tm), work, PARALLEL_MIN_ELEMENTS)
    return sch


def isa_for(target, isas=None) -> tuple:
    """(DotISA or None, reason): the first ISA of ``isas`` (default :data:`ISAS`) a registry Target
    can run, else None and why none fits."""
    if isas is None:  # every ISA of the target's architecture
        isas = [isa for isa in ISAS() if isa.arch == target.arch]
        if not isas:
            return None, f"target {target.name!r} is {target.arch}: no dot-product kernels for it"
    reasons = []
    for isa in isas:
        why = isa.reason_missing(target)
        if not why:
            return isa, ""
        reasons.append(why)
    return None, "; ".join(dict.fromkeys(reasons))


def ISAS() -> tuple:  # noqa: N802 - a table, built on first use (the rows import their modules)
    """The dot-product ISAs, most specific first (a target with i8mm gets smmla, not sdot)."""
    from .arm_i8mm import SMMLA
    from .arm_int8 import SDOT
    from .cuda_int8 import DP4A
    from .x86_int8 import VNNI
    return (VNNI, SMMLA, SDOT, DP4A)
