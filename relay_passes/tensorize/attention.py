"""Activation x activation matmuls (attention's ``Q K^T`` and ``P V``) as targets.kernels.batch_matmul
kernels: the matched chain -> a :class:`BatchMatmulPlan` (or the reason it cannot run), and its call.

What QuantizeLayers._matmul lowers a plan ``matmul`` layer to (relay_passes/quantize_layers.py)::

    a, b: uint8/int8 containers, [..., M, K] and [..., K, N] (b often a permute_dims of the keys)
    [a_c = astype(a, int32) - za]   [b_c = astype(b, int32) - zb]    only when a zero point is nonzero
    acc = matmul(a_c | a, b_c | b) -> int32                           or the dtypes differ
    astype int64, * m, + 2^(k-1), >> k, [+ z_out], clip, astype        scalar m, k (requantize, no bias)

The rewrite reads the containers themselves (the centring ops become dead code: the kernel corrects
the zero points exactly, see targets/kernels/batch_matmul.py) and, when ``b`` is a transpose of the
last two axes of a tensor (through an identity ``broadcast_to`` and a ``reshape``), that tensor,
untransposed (``b_layout="nk"``), so the transpose of the keys is never materialized. The
requantize numbers are the chain's (analysis._requant_rows), one channel, so the output equals the
chain bit for bit. Anything else is left to targets/cpu_reduction.py, with the reason in the report.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from tvm import relax
from tvm.relax import op as R

from ..match import _is_const, op_name
from .analysis import _requant_rows
from .pattern import requant_chain_pattern


def batch_matmul_isa(target, isas=None) -> tuple:
    """(DotISA or None, reason): the ISA the batch-matmul kernels run on for ``target``: the first
    row of ``isas`` (default: every registered one) that the target can run and the kernel takes
    (targets.kernels.batch_matmul.takes). An Arm target with i8mm runs its denses on ``smmla`` and
    these matmuls on ``sdot``, which every i8mm core has too."""
    from targets.kernels import isas as all_isas
    from targets.kernels.batch_matmul import takes
    from .analysis import target_isa
    rows = tuple(r for r in (isas or all_isas()) if not takes(r))
    if not rows:
        return None, "no dot-product ISA of the table runs the batch-matmul kernel"
    isa, why = target_isa(target, rows)
    return isa, (f"activation x activation matmul: {why}" if why else "")


def batch_matmul_pattern():
    """(pattern, names): the requantize chain after an int32 matmul of two non-constant operands."""
    from tvm.relax.dpl import is_op, wildcard
    return requant_chain_pattern(is_op("relax.matmul")(wildcard(), wildcard()).has_dtype("int32"))


@dataclass
class BatchMatmulPlan:
    """One rewrite: the kernel's spec and the Relax values it reads."""

    a: relax.Expr          # the first operand's container, [..., M, K]
    b: relax.Expr          # the second's: [..., K, N] ("kn"), or the untransposed [..., N, K] ("nk")
    spec: object           # targets.kernels.batch_matmul.BatchMatmulSpec
    qp: np.ndarray         # int64 [7, 1] (REQUANT_ROWS) or int32 [7, 1] (hi32_rows)
    isa: object
    out_shape: tuple       # the chain's output shape


def _value(e, var2val):
    return var2val.get(e, e) if isinstance(e, relax.Var) else e


def _container(x, var2val) -> tuple:
    """(the 8-bit container, its zero point) of a matmul operand: ``astype(q, int32) - z`` or ``q``."""
    v = _value(x, var2val)
    if op_name(v) == "relax.subtract" and _is_const(v.args[1]):
        cast = _value(v.args[0], var2val)
        z = v.args[1].value.numpy()
        if op_name(cast) == "relax.astype" and z.size == 1:
            q = cast.args[0]
            if str(q.ty.dtype) in ("uint8", "int8"):
                return q, int(z.reshape(()))
    if str(x.ty.dtype) in ("uint8", "int8"):
        return x, 0
    raise ValueError(f"an operand is {x.ty.dtype} and not a centred 8-bit container; the kernel takes uint8 or int8")


def _untransposed(b, var2val, batch: int):
    """The tensor ``b`` transposes (last two axes), when ``b`` is ``reshape(broadcast_to(permute_dims(y)))``
    with an identity broadcast and ``y`` holding ``batch`` matrices; else None."""
    v = _value(b, var2val)
    if op_name(v) == "relax.reshape":
        v = _value(v.args[0], var2val)
    if op_name(v) == "relax.broadcast_to":
        src = v.args[0]
        if [int(d) for d in src.ty.shape] != [int(d) for d in v.ty.shape]:
            return None
        v = _value(src, var2val)
    if op_name(v) != "relax.permute_dims" or v.attrs.axes is None:
        return None
    axes = [int(a) for a in v.attrs.axes]
    n = len(axes)
    if n < 2 or axes != list(range(n - 2)) + [n - 1, n - 2]:
        return None
    y = v.args[0]
    shape = [int(d) for d in y.ty.shape]
    return y if int(np.prod(shape[:-2], dtype=np.int64)) == batch else None


def _max_centred(dtype: str, z: int) -> int:
    info = np.iinfo(dtype)
    return max(int(info.max) - z, z - int(info.min))


def analyse_batch_matmul(mt: dict, names: dict, isa, var2val) -> BatchMatmulPlan:
    """The matched chain's kernel; ValueError with the reason when the kernel cannot compute it."""
    from targets.kernels import hi32_rows, saturates
    from targets.kernels.batch_matmul import BatchMatmulSpec, takes
    why = takes(isa)
    if why:
        raise ValueError(why)
    acc = mt[names["acc"]]
    (a, za), (b, zb) = (_container(x, var2val) for x in acc.args)
    sa, sb = ([int(d) for d in x.ty.shape] for x in acc.args)
    if len(sa) < 2 or len(sa) != len(sb) or sa[:-2] != sb[:-2] or sa[-1] != sb[-2]:
        raise ValueError(f"operand shapes {sa} x {sb}: the kernel takes equal batch dims, no broadcasting")
    batch, (M, K), N = int(np.prod(sa[:-2], dtype=np.int64)), sa[-2:], sb[-1]
    out_dtype = str(mt[names["out"]].ty.dtype)
    qp = _requant_rows(mt, names, N, len(sa), -1, 0)
    if (qp != qp[:, :1]).any():
        raise ValueError("its requantize differs between output columns; the kernel takes one channel")
    qp = qp[:, :1]
    keys = _untransposed(b, var2val, batch)
    layout = "kn" if keys is None else "nk"
    bound = K * _max_centred(str(a.ty.dtype), za) * _max_centred(str(b.ty.dtype), zb)
    q32 = hi32_rows(qp, bound) if isa.hi32_requant else None
    spec = BatchMatmulSpec(batch, M, N, K, str(a.ty.dtype), str(b.ty.dtype), out_dtype, za, zb, layout,
                           hi32=q32 is not None, saturate=q32 is not None and saturates(q32, out_dtype))
    spec.check(isa)
    return BatchMatmulPlan(a, b if keys is None else keys, spec, qp if q32 is None else q32, isa,
                           tuple(int(d) for d in mt[names["out"]].ty.shape))


def emit_batch_matmul(rewriter, p: BatchMatmulPlan, kernels: dict, as_kernel) -> relax.Expr:
    """The kernel call replacing ``p``'s chain (its value in the chain's output shape); ``kernels``
    caches one PrimFunc per spec, ``as_kernel`` marks it scheduled and opaque (rewrite._as_kernel)."""
    from targets.kernels.batch_matmul import build
    bb, s = rewriter.builder_, p.spec
    name = s.name(p.isa)
    if name not in kernels:
        kernels[name] = bb.add_func(as_kernel(build(s, p.isa, rewriter.tile)), name)
    b_shape = [s.batch, s.N, s.K] if s.b_layout == "nk" else [s.batch, s.K, s.N]
    args = []
    for x, shape in ((p.a, [s.batch, s.M, s.K]), (p.b, b_shape)):
        x = rewriter.visit_expr(x)
        args.append(x if [int(d) for d in x.ty.shape] == shape else bb.emit(R.reshape(x, shape)))
    y = relax.call_tir(kernels[name], args + [relax.const(p.qp, str(p.qp.dtype))],
                       relax.TensorType([s.batch, s.M, s.N], s.out_dtype))
    if list(p.out_shape) != [s.batch, s.M, s.N]:
        y = R.reshape(bb.emit(y), list(p.out_shape))
    return y, name
