"""Run an exported TFLite model with LiteRT and compare it with the NumPy integer reference.

Three LiteRT kernel sets are compared (``RESOLVERS``): the reference kernels (``BUILTIN_REF``),
the optimized builtin kernels without delegates, and the default (``AUTO``: XNNPACK for int8).

Differences are located op by op: with every intermediate tensor kept, each plan layer is run by
the NumPy reference on LiteRT's *own* inputs for that op, so a difference is the op's own and not
one propagated from upstream. The cause is then checked against TFLite's documented requantize
(gemmlowp's ``MultiplyByQuantizedMultiplier``: a rounding doubling high multiply, then a rounding
right shift, both rounding half away from zero) with the multiplier TFLite derives from the
exported scales: where that formula reproduces LiteRT's output and the plan's single
``(acc * m + 2^(k-1)) >> k`` does not, the difference is TFLite's double rounding.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from tvmptq.export.tflite import from_tflite_output, quantize_input, tflite_multiplier
from tvmptq.reference import ops as ref_ops
from tvmptq.reference.executor import QValue, _run_layer, run_plan_values

RESOLVERS = ("BUILTIN_REF", "BUILTIN_WITHOUT_DEFAULT_DELEGATES", "AUTO")


def interpreter(content: bytes, resolver: str = "BUILTIN_REF", keep_all: bool = False, threads: int = 1):
    from ai_edge_litert.interpreter import Interpreter, OpResolverType
    it = Interpreter(model_content=content, experimental_op_resolver_type=getattr(OpResolverType, resolver),
                     experimental_preserve_all_tensors=keep_all, num_threads=threads)
    it.allocate_tensors()
    return it


def invoke_fn(path, x_int8: np.ndarray, threads: int = 1, resolver: str = "AUTO"):
    """A call that runs the TFLite file at ``path`` on ``x_int8`` (its int8 input, already
    quantized) in LiteRT: the timed unit of the LiteRT CPU peer (targets/speed.py)."""
    from pathlib import Path
    it = interpreter(Path(path).read_bytes(), resolver, threads=threads)
    inp, out = it.get_input_details()[0]["index"], it.get_output_details()[0]["index"]

    def run():
        it.set_tensor(inp, x_int8)
        it.invoke()
        return it.get_tensor(out)
    return run


def _out_q(values) -> np.ndarray:
    out = values["__output__"]
    while isinstance(out, (list, tuple)):
        out = out[0]
    return out.q


def run_litert(export, it, x_int8: np.ndarray) -> np.ndarray:
    """One batch (the export's) of TFLite int8 inputs -> plan output integers."""
    it.set_tensor(it.get_input_details()[0]["index"], x_int8)
    it.invoke()
    return from_tflite_output(export, it.get_tensor(it.get_output_details()[0]["index"]))


@dataclass
class Equality:
    resolver: str
    equal: int
    total: int
    max_abs: int
    top1_equal: int
    samples: int

    @property
    def share(self) -> float:
        return self.equal / max(self.total, 1)


def compare_outputs(plan, export, xs: np.ndarray, resolvers=RESOLVERS) -> list[Equality]:
    """Model outputs, integer by integer, LiteRT vs the NumPy reference, one sample at a time."""
    b = export.input_shape[0]
    refs = []
    for i in range(0, len(xs) - len(xs) % b, b):
        vals = run_plan_values(plan, xs[i:i + b], check_input_ops=False)
        refs.append((quantize_input(plan, export, xs[i:i + b]), _out_q(vals)))
    rows = []
    for r in resolvers:
        it = interpreter(export.content, r)
        eq = tot = top = 0
        worst = 0
        for q_in, ref in refs:
            y = run_litert(export, it, q_in)
            eq += int((y == ref).sum())
            tot += y.size
            worst = max(worst, int(np.abs(y - ref).max()))
            top += int((y.reshape(len(y), -1).argmax(1) == ref.reshape(len(ref), -1).argmax(1)).sum())
        rows.append(Equality(r, eq, tot, worst, top, len(refs) * b))
    return rows


# --- op-by-op attribution -----------------------------------------------------------------------
def _srdhm(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """gemmlowp SaturatingRoundingDoublingHighMul (int32 x int32 -> int32, nudge half away from 0)."""
    ab = a.astype(np.int64) * b.astype(np.int64)
    nudge = np.where(ab >= 0, 1 << 30, 1 - (1 << 30))
    num = ab + nudge
    q = np.abs(num) >> 31
    return np.where(num < 0, -q, q)  # C++ division truncates toward zero


def _rdbpot(x: np.ndarray, e: np.ndarray) -> np.ndarray:
    """gemmlowp RoundingDivideByPOT (round half away from zero)."""
    e = np.asarray(e, np.int64)
    mask = (np.int64(1) << e) - 1
    rem = x & mask
    thr = (mask >> 1) + (x < 0)
    return (x >> e) + (rem > thr)


def tflite_requantize(acc: np.ndarray, m: np.ndarray, k: np.ndarray) -> np.ndarray:
    """TFLite's MultiplyByQuantizedMultiplier with its (Q31 m, right shift k) form."""
    left, right = np.maximum(31 - k, 0), np.maximum(k - 31, 0)  # TFLite's exponent 31 - k: > 0 shifts left
    return _rdbpot(_srdhm(acc * (np.int64(1) << left), m), right)


@dataclass
class OpDiff:
    layer: str
    kind: str
    tflite_op: str
    elements: int
    differ: int            # LiteRT vs the plan's arithmetic, on LiteRT's own inputs
    max_abs: int
    explained: int | None  # of those, reproduced by TFLite's requantize formula (None: not checked)
    multiplier_channels_off: int = 0


def _from_tensor(it, detail, nhwc: bool, offset: int) -> np.ndarray:
    y = it.get_tensor(detail).astype(np.int64) - offset
    return y.transpose(0, 3, 1, 2) if nhwc and y.ndim == 4 else y


def attribute(plan, export, xs: np.ndarray, resolver: str = "BUILTIN_REF") -> list[OpDiff]:
    """Per plan layer: elements where LiteRT's op differs from the plan's on the same inputs."""
    it = interpreter(export.content, resolver, keep_all=True)
    by_name = {d["name"]: d["index"] for d in it.get_tensor_details()}
    layer_steps = [s for s in plan.program if s["kind"] == "layer"]
    op_of = {}
    for op, src in export.ops:
        op_of.setdefault(src, op)
    stats: dict[str, OpDiff] = {}
    b = export.input_shape[0]
    for i in range(0, len(xs) - len(xs) % b, b):
        vals = run_plan_values(plan, xs[i:i + b], check_input_ops=False)
        run_litert(export, it, quantize_input(plan, export, xs[i:i + b]))
        for step in layer_steps:
            lp = plan.layer(step["layer"])
            out_t = plan.tensors[lp.output]
            ins = []
            for n in step["inputs"]:
                t = vals[n].t
                tname = export.value_tensors[n]
                ins.append(QValue(_from_tensor(it, by_name[tname], vals[n].q.ndim == 4, _offset(t)), t))
            got = _from_tensor(it, by_name[export.value_tensors[step["name"]]], vals[step["name"]].q.ndim == 4,
                               _offset(out_t))
            want = _run_layer(plan, lp, ins).q
            diff = got != want
            d = stats.setdefault(lp.name, OpDiff(lp.name, lp.kind, op_of.get(lp.name, "?"), 0, 0, 0,
                                                 0 if lp.kind in ("conv2d", "linear", "mean") else None,
                                                 export.multiplier_mismatch.get(lp.name, 0)))
            d.elements += got.size
            d.differ += int(diff.sum())
            d.max_abs = max(d.max_abs, int(np.abs(got - want).max()))
            if d.explained is not None and diff.any():
                d.explained += int((diff & (got == _tflite_kernel(export, lp, ins, out_t))).sum())
    return list(stats.values())


def _offset(t) -> int:
    return -128 if (t.qmin, t.qmax) == (0, 255) else 0


def _tflite_mean(lp, x: QValue, t) -> np.ndarray:
    """TFLite's int8 MEAN (reference_ops::QuantizedMeanOrSum): the sum of ``q - z_in`` times a
    multiplier for s_in / s_out that is first rounded to Q31 and then integer-divided (truncated)
    by the element count, where the plan rounds s_in / (n s_out) once."""
    n = int(np.prod([x.q.shape[d] for d in lp.attrs["dims"]]))
    acc = (x.q - x.t.zero_point).sum(axis=tuple(lp.attrs["dims"]), keepdims=lp.attrs["keepdim"])
    m, k = tflite_multiplier(np.float64(np.float32(x.t.scale)) / np.float64(np.float32(t.scale)))
    e = 31 - k                                            # TFLite's exponent
    sh = np.minimum(np.minimum(n.bit_length() - 1, 32), 31 + e)
    m, k = (m.astype(np.int64) << sh) // n, k + sh
    return np.clip(tflite_requantize(acc, m, k) + t.zero_point, *lp.clip)


def _wrap_int32(x: np.ndarray) -> np.ndarray:
    """Two's-complement int32 wraparound (a plan bias saturated at -2^31 plus a negative sum)."""
    return ((x + 2 ** 31) % 2 ** 32) - 2 ** 31


def _tflite_kernel(export, lp, ins, t) -> np.ndarray:
    """conv/linear with TFLite's requantize and the multiplier TFLite derives from the exported
    scales (the plan's integer weights, bias and clip); mean by TFLite's formula."""
    a, at = lp.arrays, lp.attrs
    if lp.kind == "mean":
        return _tflite_mean(lp, ins[0], t)
    x = ins[0].q - ins[0].t.zero_point
    if lp.kind == "conv2d":
        acc = ref_ops.conv2d(x, a["weight"], at["stride"], at["padding"], at["dilation"], at["groups"])
        shape = (1, -1, 1, 1)
    else:
        acc, shape = ref_ops.linear(x, a["weight"]), (1, -1)
    acc = _wrap_int32(acc + a["bias"].astype(np.int64).reshape(shape))  # TFLite accumulates in int32
    m, k = export.layer_multipliers[lp.name]
    y = tflite_requantize(acc, m.reshape(shape), k.reshape(shape))
    return np.clip(y + t.zero_point, *lp.clip)
