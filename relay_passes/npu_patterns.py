"""The lowered integer ops an NPU takes as one operator each, as ``tvm.relax.dpl`` patterns.

After the lowering (QuantizeLayers, CancelQDQ) each plan layer is a chain of Relax ops ending in
the requantize (``astype`` to the 8-bit container); each chain here is what one fully-integer
TFLite operator computes (CONV_2D, DEPTHWISE_CONV_2D, FULLY_CONNECTED, ADD, MEAN,
CONCATENATION), and the data-movement ops (PAD, RESHAPE, MAX_POOL_2D, TRANSPOSE) are one Relax
op each. ``NPU_KINDS`` maps each kind to its pattern builder; every builder returns
``(pattern, named sub-patterns)``, with ``anchor`` the op that names the kind and ``out`` the
chain's last op.
"""
from __future__ import annotations

from tvm.relax.dpl import is_const, is_op, is_tuple, wildcard

from .tensorize.pattern import dense_requant_pattern


def _tail(src):
    """The shared end of a requantize: ``>> k``, [+ z_out], clip, cast to the 8-bit container."""
    shift = is_op("relax.right_shift")(src, is_const())
    zp = is_op("relax.add")(shift, is_const())
    clip = is_op("relax.clip")(zp | shift, wildcard(), wildcard())
    return is_op("relax.astype")(clip)


def conv_like():
    """conv2d / matmul with a constant weight and its requantize (TensorizeDot's own pattern)."""
    out, names = dense_requant_pattern()
    return out, dict(names, anchor=names["acc"])


def add_pattern():
    """QAdd: ``astype(a) * m_a + astype(b) * m_b``, the zero-point offset and rounding adds, tail."""
    def term():
        wide = is_op("relax.astype")(wildcard())
        return is_op("relax.multiply")(wide, is_const()) | wide
    total = is_op("relax.add")(term(), term())
    offset = is_op("relax.add")(total, is_const())
    rnd = is_op("relax.add")(offset, is_const())
    out = _tail(rnd | offset)
    return out, {"anchor": total, "out": out}


def mean_pattern():
    """QMean: ``sum(astype(x))`` [- n z_in], widened, [* m], + 2^(k-1), tail."""
    total = is_op("relax.sum")(is_op("relax.astype")(wildcard()))
    zp_in = is_op("relax.add")(total, is_const())
    wide = is_op("relax.astype")(zp_in | total)
    mult = is_op("relax.multiply")(wide, is_const())
    rnd = is_op("relax.add")(mult | wide, is_const())
    out = _tail(rnd)
    return out, {"anchor": total, "out": out}


def cat_pattern(n: int):
    """QCat of ``n`` inputs: each rescaled to the output grid, concat, [+ z_out], clip, cast."""
    def part():
        wide = is_op("relax.astype")(wildcard())
        return is_op("relax.right_shift")(is_op("relax.add")(is_op("relax.multiply")(wide, is_const()), is_const()),
                                          is_const()) | wide
    cat = is_op("relax.concat")(is_tuple([part() for _ in range(n)]))
    zp = is_op("relax.add")(cat, is_const())
    clip = is_op("relax.clip")(zp | cat, wildcard(), wildcard())
    out = is_op("relax.astype")(clip)
    return out, {"anchor": cat, "out": out}


def single_op(op: str):
    def build():
        call = is_op(op)(wildcard(), varg_default_wildcard=True)
        return call, {"anchor": call, "out": call}
    return build


# kind -> the Relax ops it may be (the capability table names kinds) and the pattern builder.
NPU_KINDS = {
    "conv2d": conv_like,
    "depthwise_conv2d": conv_like,
    "linear": conv_like,
    "add": add_pattern,
    "mean": mean_pattern,
    "cat": lambda: cat_pattern(2),
    "cat3": lambda: cat_pattern(3),
    "cat4": lambda: cat_pattern(4),
    "pad": single_op("relax.nn.pad"),
    "max_pool2d": single_op("relax.nn.max_pool2d"),
    "reshape": single_op("relax.reshape"),
    "flatten": single_op("relax.flatten"),
    "squeeze": single_op("relax.squeeze"),
    "expand_dims": single_op("relax.expand_dims"),
    "transpose": single_op("relax.permute_dims"),
}
# Kinds that share one rule of the capability table (the table has one ``cat`` and one ``reshape``).
RULE_OF = {"cat3": "cat", "cat4": "cat", "flatten": "reshape", "squeeze": "reshape", "expand_dims": "reshape"}
