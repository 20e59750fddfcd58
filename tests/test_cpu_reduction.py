"""targets/cpu_reduction.py: the default CPU schedules of fused reduction kernels (an attention
matmul with its requantize epilogue, a float softmax island) are applied and change nothing: the
scheduled program equals TVM's default (unscheduled) one bit for bit on inputs that do not saturate."""
from __future__ import annotations

import numpy as np
import tvm
from tvm import relax
from tvm.script import relax as R

from targets.cpu_defaults import schedule_elementwise_kernels
from targets.cpu_reduction import schedule_reduction
from targets.tune import prepare

TARGET = tvm.target.Target("llvm")


@tvm.script.ir_module
class Attention:
    @R.function
    def main(q: R.Tensor((2, 16, 8), "int32"), k: R.Tensor((2, 8, 16), "int32"),
             s: R.Tensor((1, 2, 16, 16), "float64")):
        with R.dataflow():
            acc = R.matmul(q, k, out_dtype="int32")  # int8 x int8 in int32, as the plan lowers QK^T
            wide = R.astype(acc, "int64")
            req = R.right_shift(R.add(R.multiply(wide, R.const(1518500250, "int64")),
                                      R.const(1 << 37, "int64")), R.const(38, "int64"))
            out = R.astype(R.clip(R.add(req, R.const(3, "int64")), 0, 255), "uint8")
            prob = R.astype(R.clip(R.round(R.divide(R.astype(R.nn.softmax(s, axis=-1), "float32"),
                                                     R.const(1 / 255, "float32"))), 0, 255), "uint8")
            R.output(out, prob)
        return out, prob


def _run(mod, args):
    vm = relax.VirtualMachine(tvm.compile(mod, target=TARGET), tvm.cpu())
    return [o.numpy() for o in vm["main"](*[tvm.runtime.tensor(a) for a in args])]


def test_attention_kernels_are_scheduled_and_bit_exact():
    rng = np.random.default_rng(0)
    args = [rng.integers(-128, 128, (2, 16, 8)).astype("int32"), rng.integers(0, 256, (2, 8, 16)).astype("int32"),
            rng.normal(size=(1, 2, 16, 16)) * 4]
    fused = prepare(Attention, TARGET)
    kernels = {gv.name_hint: f for gv, f in fused.functions_items() if isinstance(f, tvm.tirx.PrimFunc)}
    scheduled = {name: schedule_reduction(f, TARGET) for name, f in kernels.items()}
    assert scheduled[next(n for n in kernels if "matmul" in n)] is not None
    assert scheduled[next(n for n in kernels if "softmax" in n)] is not None
    for new in filter(None, scheduled.values()):
        assert "T.parallel" in new.script() or "T.vectorized" in new.script()
        assert schedule_reduction(new, TARGET) is None  # marked scheduled: left alone
    reference = _run(fused, args)  # TVM's default schedule
    assert 0 < (reference[0] != 255).mean() and 0 < (reference[0] != 0).mean()  # the epilogue does not saturate
    mod, n = schedule_elementwise_kernels(prepare(Attention, TARGET), TARGET)
    assert n >= 2
    for got, want in zip(_run(mod, args), reference):
        assert np.array_equal(got, want)
