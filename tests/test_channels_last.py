"""Channels-last CPU kernels (relay_passes/channels_last.py, targets/kernels/im2col.py) and the default
schedule of fused elementwise kernels (targets/cpu_defaults.py).

A stem conv and two MobileNet-style blocks (1x1 expand, padded depthwise, 1x1 project, residual
add), average pool, linear, lowered at W8A8 and tensorized for x86-host: the stem runs as im2col
rows of the NCHW image through the dense kernel, the blocks' convs channels last, and the integer
ops between them follow (the residual add's requantize in NHWC), so the program holds one
transpose, out to the pool; the outputs are bit-identical to the NumPy reference and to the same
program with channels_last off.
"""
import dataclasses
import warnings

import numpy as np
import pytest
import torch
from torch import nn

import tvmptq
from tvmptq.reference import run_plan
from tvmptq.zoo import from_module

tvm = pytest.importorskip("tvm")
from tvm import relax  # noqa: E402

import relay_passes as rp  # noqa: E402  (needs tvm)
from targets.build import compile_integer  # noqa: E402
from targets import cpu_defaults  # noqa: E402
from targets.kernels import x86_vnni as xi  # noqa: E402

needs_vnni = pytest.mark.skipif(not xi.host_has_avx512_vnni(), reason="host CPU lacks avx512_vnni")
TARGET = "x86-host" if xi.host_has_avx512_vnni() else "x86-avx512-vnni"


class Blocks(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, stride=2, padding=1)
        self.blocks = nn.ModuleList(nn.Sequential(
            nn.Conv2d(16, 48, 1), nn.ReLU6(), nn.ZeroPad2d((1, 1, 1, 1)), nn.Conv2d(48, 48, 3, groups=48), nn.ReLU6(),
            nn.Conv2d(48, 16, 1)) for _ in range(2))
        self.head = nn.Linear(16, 5)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        for block in self.blocks:
            x = x + block(x)  # residual add: an integer requantize chain between kernels
        return self.head(x.mean((2, 3)))


def _ops(mod) -> dict:
    counts = {}
    for _, f in mod.functions_items():
        if isinstance(f, relax.Function):
            for block in f.body.blocks:
                for b in block.bindings:
                    if isinstance(b.value, relax.Call):
                        name = getattr(b.value.op, "name", None) or b.value.op.name_hint
                        if name == "relax.call_tir":  # the kernel it calls
                            name = b.value.args[0].name_hint
                        counts[name] = counts.get(name, 0) + 1
    return counts


@pytest.fixture(scope="module")
def blocks():
    torch.manual_seed(7)
    x = torch.randn(10, 3, 16, 16).numpy()
    model = from_module(Blocks().eval(), (torch.from_numpy(x[:1]),))
    qm = tvmptq.quantize(model, (x[:6],), tvmptq.make_config(8, 8), progress=False)
    base = rp.lowering_passes(qm.plan)(rp.Canonicalize()(rp.import_model(model.build(), model.example_inputs(2))))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tensorize = rp.TensorizeDot(TARGET, qm.plan)
        nhwc = tensorize(base)
        nchw = rp.TensorizeDot(TARGET, qm.plan, isas=(dataclasses.replace(xi.VNNI, channels_last=False),))(base)
    return dict(x=x[6:], plan=qm.plan, nhwc=nhwc, nchw=nchw, report=tensorize.report)


def test_kernels_run_channels_last_with_one_transpose(blocks):
    ops = _ops(blocks["nhwc"])
    kernels = [k for k in ops if k.startswith(("vnni_conv", "dw_requant", "vnni_depthwise"))]
    assert len(kernels) >= 4 and all("_nhwc" in k for k in kernels)  # the two blocks share kernel shapes
    # the stem reads the NCHW image through im2col; one transpose, out to the pool
    assert [k for k in ops if k.startswith("im2col_")] == ["im2col_b2_nchw_3x18x18_k3x3_s2x2_p0_0_0_0"]
    assert ops.get("relax.permute_dims") == 1
    assert "relax.permute_dims" not in _ops(blocks["nchw"])
    assert all("_nhwc" not in k for k in _ops(blocks["nchw"])
               if k.startswith(("vnni_conv1x1", "dw_requant", "vnni_depthwise")))
    # the residual adds' requantize follows in NHWC
    adds = [b.value for _, f in blocks["nhwc"].functions_items() if isinstance(f, relax.Function)
            for blk in f.body.blocks for b in blk.bindings
            if isinstance(b.value, relax.Call) and getattr(b.value.op, "name", "") == "relax.right_shift"]
    maps = [a for a in adds if len(a.ty.shape) == 4]  # the two adds' (the convs' are in their kernels)
    assert len(maps) == 2 and all(int(a.ty.shape[-1]) == 16 for a in maps)  # NHWC [2, 8, 8, 16]


@needs_vnni
def test_channels_last_program_is_bit_exact(blocks):
    want = run_plan(blocks["plan"], blocks["x"])
    got = compile_integer(blocks["nhwc"], TARGET)(blocks["x"])
    assert np.array_equal(got, want)
    assert np.array_equal(compile_integer(blocks["nchw"], TARGET)(blocks["x"]), want)


def _fused(mod):
    import targets as tg
    from targets.tune import prepare
    return prepare(mod, tg.get(TARGET).tvm_target())


def test_elementwise_kernels_get_a_default_schedule(blocks):
    fused = _fused(blocks["nhwc"])
    scheduled, n = cpu_defaults.schedule_elementwise_kernels(_fused(blocks["nhwc"]))
    assert n >= 2  # at least the two residual adds
    for gv, f in scheduled.functions_items():
        if isinstance(f, tvm.tirx.PrimFunc) and gv.name_hint.startswith("fused_") and "right_shift" in gv.name_hint \
                and "conv2d" not in gv.name_hint:
            text = f.script()
            # 2 x 8 x 8 x 16 elements: vectorized, on the calling thread (kernels.loops.PARALLEL_MIN_ELEMENTS)
            assert bool(f.attrs["tirx.is_scheduled"]) and "T.vectorized" in text and "T.parallel" not in text
            assert "sblock_alloc_buffer" not in text  # every intermediate inlined
            assert "sblock_alloc_buffer" in fused[gv.name_hint].script()
    # kernels with a reduction (the stem conv, the pool's sum) and hand kernels are left alone
    for gv, f in scheduled.functions_items():
        if isinstance(f, tvm.tirx.PrimFunc) and ("conv2d" in gv.name_hint or "sum" in gv.name_hint):
            assert "tirx.is_scheduled" not in (f.attrs or {}), gv.name_hint
    assert cpu_defaults.schedule_elementwise(scheduled[[g for g in scheduled.get_global_vars()
                                                        if g.name_hint.startswith("vnni_")][0]]) is None
