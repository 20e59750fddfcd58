"""int8 GEMM kernels on a CPU dot-product instruction, written once for every such instruction.

x86 AVX-512 VNNI ``vpdpbusd``, Arm ``sdot`` (dotprod) and CUDA ``__dp4a`` (one lane; its GPU
schedules are in targets/kernels/cuda_dp4a.py) have the same shape: each of ``lanes``
int32 accumulators adds the dot product of 4 activation bytes (one 32-bit word, broadcast to every
lane) with its own 4 weight bytes. So one TE workload and one hand schedule serve both; a
:class:`~targets.kernels.isa.DotISA` row says what differs (lanes, the activation dtype the instruction takes, the
tensor intrinsic, the capabilities a registry target needs). ``isa.isas()`` is that table
(targets/kernels/isa.py; x86_vnni.py, arm_sdot.py, arm_i8mm.py and cuda_dp4a.py define the rows).

* weights are packed at compile time to ``[N/lanes, K/4, lanes, 4]`` (:func:`pack_weight`, zero padded;
  ``[N/lanes, K/2, lanes, 2]`` int16 for a row with ``k_pack`` 2, x86's int16 ``vpdpwssd``, which takes
  the int16 containers of 9..16-bit activations: dense kernels only);
* activations whose dtype is not the instruction's are shifted by 128 in a stage of their own
  (int8 + 128 -> uint8 for VNNI's u8 x s8; uint8 - 128 -> int8 for sdot's s8 x s8) and the shift's
  contribution, ``shift * rowsum(W)``, is subtracted from the bias at compile time (:func:`shift_of`);
* :func:`dense_requant` (``Y[M, N]``) and :func:`conv1x1_requant` (NCHW ``Y[B, N, H*W]``) put the
  plan's fixed-point requantize (:data:`REQUANT_ROWS`, int64, exactly as
  relay_passes/integer_ops.requantize) in the epilogue of each output tile;
* :func:`schedule_dense` / :func:`schedule_conv1x1` tile, parallelize and ``sch.tensorize``.
"""
from __future__ import annotations

import numpy as np

from .isa import DotISA
from .loops import PARALLEL_MIN_ELEMENTS, STACK_ALLOCA_BYTES, _ceil, _divisor_at_most, loop_extent, parallel_if_worth
from .requant import REQUANT_ROWS, REQUANT_ROWS_HI32, _requantize, _requantize_hi32


# ------------------------------------------------------------------------------------- layout
def packed_shape(N: int, K: int, lanes: int, k_pack: int = 4) -> tuple:
    """``(ceil(N/lanes), ceil(K/k_pack), lanes, k_pack)``: the packed weight of a logical ``[N, K]`` weight."""
    return (_ceil(N, lanes) // lanes, _ceil(K, k_pack) // k_pack, lanes, k_pack)


def pack_weight(w: np.ndarray, lanes: int, k_pack: int = 4, dtype: str = "int8") -> np.ndarray:
    """int8 ``[N, K]`` -> ``[N/lanes, K/kp, lanes, kp]`` (kp = ``k_pack``):
    ``packed[no, ko, ni, ki] = w[no*lanes + ni, ko*kp + ki]``, as ``dtype`` (int16 for ``vpdpwssd``).

    For one (no, ko) the ``lanes * kp`` values are one instruction's weight operand. N and K are
    padded **with zeros**: padded k then contribute nothing whatever the activation holds there, and
    padded output channels are computed but never stored."""
    w = np.asarray(w)
    if w.ndim != 2 or w.dtype != np.int8:
        raise ValueError(f"pack_weight needs an int8 [N, K] array, got {w.dtype} {w.shape}")
    N, K = w.shape
    Np, Kp = _ceil(N, lanes), _ceil(K, k_pack)
    if (Np, Kp) != (N, K):
        w = np.pad(w, ((0, Np - N), (0, Kp - K)))
    w = w.reshape(Np // lanes, lanes, Kp // k_pack, k_pack).transpose(0, 2, 1, 3)
    return np.ascontiguousarray(w.astype(dtype))


def shift_of(x_dtype: str, isa: DotISA) -> int:
    """What the kernel adds to each activation to reach the instruction's dtype: 0, +128 or -128.
    ``sum (x + s) w = sum x w + s * rowsum(w)``, so the bias takes ``- s * rowsum(w)``."""
    if x_dtype == isa.act_dtype:
        return 0
    if (x_dtype, isa.act_dtype) == ("int8", "uint8"):
        return 128
    if (x_dtype, isa.act_dtype) == ("uint8", "int8"):
        return -128
    raise ValueError(f"{isa.name} kernels take {'int16' if isa.act_dtype == 'int16' else 'uint8 or int8'} "
                     f"activations, got {x_dtype}")


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



def dense_te(X, M: int, N: int, K: int, isa: DotISA, corr=None, epilogue=None):
    """TE body ``[shift/pad stage X_s] -> compute [M, Np] (int32) -> C [M, N]``; returns (Wp, C).

    The shift/pad stage is materialized (the tensorized load must be a plain buffer access) and is
    absent when X already has the instruction's dtype and K % 4 == 0. ``epilogue(acc, i, j)``, when
    given, is block ``C``'s body; else ``C`` copies the accumulator (minus ``corr[j]`` if given)."""
    from tvm import te
    lanes, kp = isa.lanes, isa.k_pack
    Np, Kp = _ceil(N, lanes), _ceil(K, kp)
    Wp = te.placeholder(packed_shape(N, K, lanes, kp), isa.weight_dtype, name="Wp")
    if X.dtype != isa.act_dtype or Kp != K:
        Xs = te.compute((M, Kp), lambda i, k: _shifted(X[i, k], X.dtype, isa, k, K, Kp), name="X_s")
    else:
        Xs = X
    k = te.reduce_axis((0, Kp), name="k")
    acc = te.compute((M, Np), lambda i, j: te.sum(
        Xs[i, k].astype("int32") * Wp[j // lanes, k // kp, j % lanes, k % kp].astype("int32"), axis=k),
        name="compute")
    if epilogue is not None:
        C = te.compute((M, N), lambda i, j: epilogue(acc[i, j], i, j), name="C")
    elif corr is None:
        C = te.compute((M, N), lambda i, j: acc[i, j], name="C")
    else:
        C = te.compute((M, N), lambda i, j: acc[i, j] - corr[j], name="C")
    return Wp, C


def dense_requant(M: int, N: int, K: int, x_dtype: str, out_dtype: str, isa: DotISA, hi32: bool = False,
                  saturate: bool = False):
    """TIR ``main(X: x_dtype[M, K], Wp: weight_dtype[packed_shape(N, K, lanes, k_pack)], qp: int64[7, N], Y: out_dtype[M, N])``::

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

# ------------------------------------------------------------------------------------- schedules
def tile_sizes(M: int, N: int, K: int, mb: int = 4, nb: int = 4, kb: int = 128, lanes: int = 16,
               k_pack: int = 4) -> tuple:
    """(mb, nb, kb) actually used: the largest divisors of M, ceil(N/lanes) and ceil(K/kp)*kp
    (kp = ``k_pack``) that do not exceed the requested sizes. ``sch.tensorize`` needs exact splits (a predicated tail fails
    with ``comparator.rhs_buffer_map_.count(desc)``), so a prime M such as 7 runs with mb=1 (correct,
    slower) rather than padding M. kb counts k elements and is a multiple of kp. The int32 tile
    ``mb x nb*lanes`` is kept under :data:`STACK_ALLOCA_BYTES` (nb shrinks first, or mb when the
    larger), so (8, 2) becomes (7, 2) and (4, 4) becomes (4, 3) at 16 lanes."""
    mb = _divisor_at_most(M, mb)
    nb = _divisor_at_most(_ceil(N, lanes) // lanes, nb)
    while mb * nb * lanes * 4 >= STACK_ALLOCA_BYTES:  # the int32 tile must stay on the stack
        if nb >= mb:
            nb = _divisor_at_most(_ceil(N, lanes) // lanes, nb - 1)
        else:
            mb = _divisor_at_most(M, mb - 1)
    kb = k_pack * _divisor_at_most(_ceil(K, k_pack) // k_pack, max(1, kb // k_pack))
    return mb, nb, kb


def _tensorized_tiles(sch, blk, loops, isa: DotISA, mb: int, nb: int, kb: int, intrin: str | None):
    """Shared tiling of block ``compute``: ``loops`` = its (batch loops..., i, j, k). Order
    outer (batch, io, jo) | ko, kt | ii, jn, [lanes x 4 tensorized]; outer fused and parallel, the
    int32 tile initialized vectorized, the epilogue ``C`` right after each tile. Returns the
    epilogue block."""
    *batch, i, j, k = loops
    M, Np, Kp = (int(sch.get(x).extent) for x in (i, j, k))
    work = loop_extent(sch, loops)  # before the splits: their loops are gone after
    mb, nb, kb = tile_sizes(M, Np, Kp, mb, nb, kb, isa.lanes, isa.k_pack)
    io, ii = sch.split(i, [None, mb])
    jo, jn, ji = sch.split(j, [None, nb, isa.lanes])
    ko, kt, ki = sch.split(k, [None, kb // isa.k_pack, isa.k_pack])
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

