"""Activation x activation matmuls (attention's ``Q K^T`` and ``P V``) on the dot-product instruction,
with the plan's requantize in the epilogue: one kernel per shape for every :class:`DotISA` row of the
generic form (x86 VNNI ``vpdpbusd``, Arm ``sdot``).

What the plan asks for (relay_passes/quantize_layers.QuantizeLayers._matmul, tvmptq/quant/simulate):
per batch (the heads, flattened) ``Y = requant(sum_k (a[m, k] - za) (b[k, n] - zb))``, where a and
b are 8-bit containers (uint8 or int8) with scalar zero points, and the requantize is one scalar
multiplier and shift (no bias), ``+ z_out``, the clip, as relay_passes/integer_ops.requantize writes
it. The 1/sqrt(d) scale of ``Q K^T`` is in that multiplier; the attention mask is a separate integer
add layer after it (an int64 chain of its own), so neither changes this kernel.

Design (the dense kernel of dense.py, with its "weight" operand packed at run time):

* **Packing stage** ``B_p``: the second operand (K for ``Q K^T``: given as ``[batch, N, K]``, i.e.
  the keys untransposed, ``b_layout="nk"``; V for ``P V``: ``[batch, K, N]``, ``"kn"``) is written per
  batch into the instruction's weight layout ``[batch, N/lanes, K/4, lanes, 4]`` (zero padded),
  shifted to int8 (uint8 - 128). It runs inside the kernel, parallel over batch x lane groups.
* **Activation stage** ``A_s``: the first operand shifted to the instruction's activation dtype
  (VNNI u8: int8 + 128; sdot s8: uint8 - 128) and zero padded to K % 4 == 0 (absent when neither
  is needed), exactly as dense.py does.
* **Zero points, exactly.** With the shifted operands ``a' = a + sa``, ``b' = b + sb`` and the
  shifted zero points ``za' = za + sa``, ``zb' = zb + sb`` (so ``a - za = a' - za'``)::

      sum_k (a - za)(b - zb) = sum_k a' b'  -  zb' rowsum(a')  -  za' colsum(b')  +  K za' zb'

  ``sum a' b'`` is the tensorized accumulation; ``rowsum(a')`` ([batch, M]) and ``colsum(b')``
  ([batch, N]) are int32 reductions over the shifted, padded operands at run time (blocks ``rs``,
  ``cs``; padded k are 0 in both, so the sums over padded K equal the sums over K); ``K za' zb'``
  is a constant. A term whose zero point is 0 is not computed at all (``zb' = 0``: no row sums,
  ``za' = 0``: no column sums), so symmetric int8 x int8 on sdot, or u8 (z=0) x s8 (z=0) on VNNI,
  is the plain dense. The zero points are compile-time numbers of the kernel (:class:`BatchMatmulSpec`).
* **Overflow bound** (int32 everywhere, no wrap-around): ``|a'| <= 255``, ``|b'| <= 128``,
  ``|za'| <= 255``, ``|zb'| <= 128``, so each of the four terms is at most ``32640 K`` in magnitude
  and every partial sum of them at most ``4 * 32640 K``: exact for ``K <= 16448``
  (:data:`MAX_DEPTH`; attention has K = head_dim or the sequence length). The corrected sum itself
  is the plan's accumulator, bounded by the lowering (``K * max|a - za| * max|b - zb| < 2^31``).
* **Epilogue**: block ``C`` (per output tile, right after it) takes the correction and then the
  requantize of requant.py: the int64 rows (:data:`~targets.kernels.requant.REQUANT_ROWS`, one
  channel: the multiplier and shift are scalars), or the exact high-half int32 form
  (:func:`~targets.kernels.requant.hi32_rows`, blocks ``C`` + ``Y``) where it is exact, the same
  arithmetic as every dense kernel, so the output equals the Relax chain bit for bit.

Measured (MiniLM-L6 int8, batch 1, seq 128, 1 thread, on a host loaded by other jobs, so the
fastest of the 6 calls is the figure): ``P V`` (12 x 128 x 32 x 128) ~0.09 ms against ~0.16 ms for
the cpu_reduction schedule; ``Q K^T`` (12 x 128 x 128 x 32, both sums needed) ~0.20 ms against
~0.165 ms, slower: its epilogue is a second pass over the whole int32 accumulator (786 KiB).
Next step: fold the correction into the accumulator's initial value (the reduction's init block
reads ``rs``/``cs``; TE's ``te.sum(init=...)`` is dropped by ``create_prim_func``, so this needs
the block written in TIR), after which the epilogue can follow each tile as in dense.py.

The schedule is dense.py's tiling (``_tensorized_tiles``: batch, row and column tiles fused and
parallel, the k loop split for the tensor intrinsic); the stages are each one parallel loop nest.
"""
from __future__ import annotations

from dataclasses import dataclass

from .dense import _block_names, _shifted, shift_of, tile_sizes
from .isa import DotISA
from .loops import PARALLEL_MIN_ELEMENTS, _ceil, loop_extent, parallel_if_worth
from .requant import REQUANT_ROWS, REQUANT_ROWS_HI32, _requantize, _requantize_hi32

MAX_DEPTH = (2 ** 31 - 1) // (4 * 255 * 128)   # 16448: the largest K for which the int32 correction is exact
B_LAYOUTS = ("nk", "kn")                        # the second operand as [batch, N, K] (keys) or [batch, K, N] (values)


def takes(isa: DotISA) -> str:
    """'' when the batch-matmul kernel runs on ``isa``, else why not: it is dense.py's generic form
    (broadcast activation word, ``[lanes, 4]`` weight blocks), which ISAs with their own dense
    workload, schedule or weight layout (Arm ``smmla``, CUDA ``dp4a``) do not use."""
    own = [f for f in ("dense_requant", "schedule_dense", "pack_weight") if getattr(isa, f) is not None]
    if own:
        return f"the {isa.name} kernels have their own {', '.join(own)}; the batch-matmul kernel is the generic form"
    return ""


def weight_shift(b_dtype: str) -> int:
    """What the packing stage adds to the second operand to make it int8: 0 or -128."""
    if b_dtype == "int8":
        return 0
    if b_dtype == "uint8":
        return -128
    raise ValueError(f"the batch-matmul kernel takes uint8 or int8 operands, got {b_dtype}")


@dataclass(frozen=True)
class BatchMatmulSpec:
    """One kernel: ``Y[b, m, n] = requant(sum_k (A[b, m, k] - za) (B[b, k, n] - zb))``."""

    batch: int
    M: int
    N: int
    K: int
    a_dtype: str
    b_dtype: str
    out_dtype: str
    za: int = 0
    zb: int = 0
    b_layout: str = "kn"      # see B_LAYOUTS
    hi32: bool = False        # the high-half epilogue (qp: int32 rows of hi32_rows)
    saturate: bool = False    # hi32, and the clip bounds are the output dtype's limits

    def check(self, isa: DotISA) -> None:
        """ValueError naming what the kernel does not take."""
        why = takes(isa)
        if why:
            raise ValueError(why)
        shift_of(self.a_dtype, isa)
        weight_shift(self.b_dtype)
        if self.out_dtype not in ("uint8", "int8"):
            raise ValueError(f"the output is {self.out_dtype}, the kernel writes uint8 or int8")
        if self.b_layout not in B_LAYOUTS:
            raise ValueError(f"b_layout {self.b_layout!r} is not one of {B_LAYOUTS}")
        if self.K > MAX_DEPTH:
            raise ValueError(f"reduction depth {self.K} > {MAX_DEPTH}: the int32 zero-point correction could overflow")

    def zero_points(self, isa: DotISA) -> tuple:
        """(za', zb'): the zero points of the shifted operands the instruction multiplies."""
        return self.za + shift_of(self.a_dtype, isa), self.zb + weight_shift(self.b_dtype)

    def name(self, isa: DotISA) -> str:
        za, zb = self.zero_points(isa)
        return (f"{isa.name}_batch_matmul_requant_{self.a_dtype[0]}8{self.b_dtype[0]}8_{self.out_dtype[0]}8_"
                f"{self.b_layout}_{self.batch}x{self.M}x{self.N}x{self.K}_za{za}_zb{zb}".replace("-", "m"))


def _weight(B, layout: str, b, n, k, sb: int):
    """Element (n, k) of the second operand, shifted to int8."""
    v = B[b, n, k] if layout == "nk" else B[b, k, n]
    return v if sb == 0 else (v.astype("int32") + sb).astype("int8")


def batch_matmul_requant(spec: BatchMatmulSpec, isa: DotISA):
    """TIR ``main(A: a_dtype[batch, M, K], B: b_dtype[batch, N, K] ("nk") or [batch, K, N] ("kn"),
    qp: int64[7, 1] (int32 with hi32), Y: out_dtype[batch, M, N])``; see the module doc."""
    from tvm import te
    spec.check(isa)
    Bt, M, N, K, lanes = spec.batch, spec.M, spec.N, spec.K, isa.lanes
    Np, Kp = _ceil(N, lanes), _ceil(K, 4)
    za, zb = spec.zero_points(isa)
    A = te.placeholder((Bt, M, K), spec.a_dtype, name="A")
    B = te.placeholder((Bt, N, K) if spec.b_layout == "nk" else (Bt, K, N), spec.b_dtype, name="B")
    if spec.a_dtype != isa.act_dtype or Kp != K:
        As = te.compute((Bt, M, Kp), lambda b, i, k: _shifted(A[b, i, k], spec.a_dtype, isa, k, K, Kp), name="A_s")
    else:
        As = A
    sb = weight_shift(spec.b_dtype)

    def packed(b, no, ko, ni, ki):
        n, k = no * lanes + ni, ko * 4 + ki
        v = _weight(B, spec.b_layout, b, n, k, sb)
        return te.if_then_else(te.all(n < N, k < K), v, te.const(0, "int8")) if (Np, Kp) != (N, K) else v
    Bp = te.compute((Bt, Np // lanes, Kp // 4, lanes, 4), packed, name="B_p")
    terms = []   # the correction: - zb' rowsum(a') - za' colsum(b') + K za' zb'
    if zb:
        kr = te.reduce_axis((0, Kp), name="kr")
        rs = te.compute((Bt, M), lambda b, i: te.sum(As[b, i, kr].astype("int32"), axis=kr), name="rs")
        terms.append(lambda b, i, j: rs[b, i] * (-zb))
    if za:
        kc = te.reduce_axis((0, K), name="kc")
        cs = te.compute((Bt, N), lambda b, j: te.sum(_weight(B, spec.b_layout, b, j, kc, sb).astype("int32"), axis=kc),
                        name="cs")
        terms.append(lambda b, i, j: cs[b, j] * (-za))
    const = K * za * zb
    k = te.reduce_axis((0, Kp), name="k")
    acc = te.compute((Bt, M, Np), lambda b, i, j: te.sum(
        As[b, i, k].astype("int32") * Bp[b, j // lanes, k // 4, j % lanes, k % 4].astype("int32"), axis=k),
        name="compute")

    def corrected(b, i, j):
        # the sums come first in the expression, so that their blocks come before the accumulation's
        # loop nest (reverse_compute_at of the epilogue into the tiles needs its producers before it)
        v = None
        for t in terms:
            v = t(b, i, j) if v is None else v + t(b, i, j)
        if const:
            v = te.const(const, "int32") if v is None else v + const
        return acc[b, i, j] if v is None else v + acc[b, i, j]
    if not spec.hi32:
        qp = te.placeholder((len(REQUANT_ROWS), 1), "int64", name="qp")
        requant = _requantize(qp, spec.out_dtype)
        Y = te.compute((Bt, M, N), lambda b, i, j: requant(corrected(b, i, j), 0), name="C")
    else:   # as dense_requant(hi32=True): the int32 sum in block C, the requantize in block Y
        qp = te.placeholder((len(REQUANT_ROWS_HI32), 1), "int32", name="qp")
        C = te.compute((Bt, M, N), lambda b, i, j: corrected(b, i, j) + qp[0, 0], name="C")
        requant = _requantize_hi32(qp, spec.out_dtype, spec.saturate)
        Y = te.compute((Bt, M, N), lambda b, i, j: requant(C[b, i, j], 0), name="Y")
    return te.create_prim_func([A, B, qp, Y]).with_attr("global_symbol", "main")


def _tiles(sch, isa: DotISA, mb: int, nb: int, kb: int) -> None:
    """dense.py's tensorized tiling of block ``compute`` (batch, row and column tiles fused and
    parallel; k split for the intrinsic), without moving the epilogue into the tiles: the epilogue
    reads the row and column sums, and ``reverse_compute_at`` takes a block only together with all
    of its producers, so it stays its own loop nest over the int32 accumulator."""
    blk = sch.get_sblock("compute")
    loops = sch.get_loops(blk)
    b, i, j, k = loops
    M, Np, Kp = (int(sch.get(x).extent) for x in (i, j, k))
    work = loop_extent(sch, loops)
    mb, nb, kb = tile_sizes(M, Np, Kp, mb, nb, kb, isa.lanes)
    io, ii = sch.split(i, [None, mb])
    jo, jn, ji = sch.split(j, [None, nb, isa.lanes])
    ko, kt, ki = sch.split(k, [None, kb // 4, 4])
    sch.reorder(b, io, jo, ko, kt, ii, jn, ji, ki)
    parallel_if_worth(sch, sch.fuse(b, io, jo), work)
    init = sch.decompose_reduction(blk, ko)
    sch.vectorize(sch.get_loops(init)[-1])
    sch.unroll(ii)
    sch.unroll(jn)
    sch.tensorize(ji, isa.register())


def _rows_parallel(sch, block: str, inner: int, minimum: int = PARALLEL_MIN_ELEMENTS) -> list:
    """Fuse the loops of ``block`` but its last ``inner`` ones and parallelize them when worth it;
    returns the inner loops."""
    loops = sch.get_loops(sch.get_sblock(block))
    work = loop_extent(sch, loops)
    outer = sch.fuse(*loops[:-inner]) if len(loops) - inner > 1 else loops[0]
    parallel_if_worth(sch, outer, work, minimum)
    return loops[-inner:]


def schedule_batch_matmul(func, isa: DotISA, mb: int = 4, nb: int = 4, kb: int = 128):
    """Hand schedule for :func:`batch_matmul_requant`; returns the ``Schedule``: the tensorized
    tiles (:func:`_tiles`), and the packing and shift stages, the row/column sums and the epilogue
    each one loop nest, parallel over batch x rows, vectorized inside."""
    import tvm
    sch = tvm.s_tir.Schedule(func)
    names = _block_names(sch)
    _tiles(sch, isa, mb, nb, kb)
    if "A_s" in names:
        sch.vectorize(_rows_parallel(sch, "A_s", 1)[0])
    sch.vectorize(sch.fuse(*_rows_parallel(sch, "B_p", 3)[1:]))
    for name in ("rs", "cs"):
        if name in names:
            _rows_parallel(sch, name, 1)
    inner = _rows_parallel(sch, "C", 1)[0]
    sch.vectorize(inner)
    if "Y" in names:  # the high-half requantize, row by row right after its int32 sums
        sch.reverse_compute_at(sch.get_sblock("Y"), sch.get_loops(sch.get_sblock("C"))[0])
        sch.vectorize(sch.get_loops(sch.get_sblock("Y"))[-1])
    return sch


def build(spec: BatchMatmulSpec, isa: DotISA, tile=(4, 4, 128)):
    """The scheduled PrimFunc of ``spec`` on ``isa``."""
    return schedule_batch_matmul(batch_matmul_requant(spec, isa), isa, *tile).mod["main"]
