"""Integer LayerNorm through the Relax lowering (relay_passes/int_layernorm.py, the kernel in
targets/kernels/int_layernorm.py): on a tiny post-LN block (8-bit and 16-bit residual sums) and a
tiny pre-LN ViT, the compiled program equals the PyTorch simulation and the NumPy reference bit
for bit, and each integer LayerNorm is one integer kernel in place of a float64 island."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

import tvmptq
from tvmptq.reference.executor import run_plan

tvm = pytest.importorskip("tvm")
import relay_passes as rp  # noqa: E402  (needs tvm)
from targets.build import compile_integer  # noqa: E402
from tests.test_tensor_bits import PostLNBlock  # noqa: E402
from tests.test_user_transformers import TimmViT  # noqa: E402

INT_LN = ("layernorm",)


def _float_ops(counts):
    return {k: v for k, v in counts.items() if "float" in k}


def _check(model, x, cfg):
    imported = rp.Canonicalize()(rp.import_model(model.build(), (torch.from_numpy(x),)))
    qm_f = tvmptq.quantize(model, (x,), cfg, progress=False)
    qm = tvmptq.quantize(model, (x,), dataclasses.replace(cfg, integer_islands=INT_LN), progress=False)
    n_int = sum(lp.kind == "layernorm" for lp in qm.plan.layers)
    mod = rp.lowering_passes(qm.plan)(imported)
    counts, base = rp.op_counts(mod), rp.op_counts(rp.lowering_passes(qm_f.plan)(imported))
    assert counts["call_tir -> uint8"] - base.get("call_tir -> uint8", 0) == n_int
    # each integer LayerNorm removes its float64 decomposition (2 means, a sqrt, ...) and adds none
    assert base["sqrt -> float64"] - counts.get("sqrt -> float64", 0) == n_int
    assert all(v <= base.get(k, 0) for k, v in _float_ops(counts).items())
    got = compile_integer(mod)(x)
    assert np.array_equal(got, qm.runner()(x))
    assert np.array_equal(got, run_plan(qm.plan, x))
    return qm


@pytest.mark.parametrize("wide", [None, {"residual": 16}])
def test_post_ln_block_compiled_equals_simulation_and_reference(wide):
    torch.manual_seed(0)
    model = tvmptq.zoo.from_module(PostLNBlock(), torch.randn(8, 8, 16))
    x = (np.random.RandomState(0).randn(8, 8, 16) * 3).astype(np.float32)
    qm = _check(model, x, tvmptq.make_config(8, 8, "minmax", tensor_bits=wide))
    assert {t.bits for n, t in qm.plan.tensors.items() if n.startswith("add")} == {16 if wide else 8}


@pytest.mark.slow  # ~40 s compile on the shared host; the simulation == reference part is in test_int_layernorm.py
def test_pre_ln_vit_compiled_equals_simulation_and_reference():
    torch.manual_seed(0)
    model = tvmptq.zoo.from_module(TimmViT(), torch.randn(4, 1, 8, 8))
    x = np.random.RandomState(1).randn(4, 1, 8, 8).astype(np.float32)
    qm = _check(model, x, tvmptq.make_config(8, 8, "minmax"))
    # all three LayerNorms are integer; the final one writes the grid of its CLS slice (data
    # movement between it and the quantize point runs on codes)
    lns = [lp for lp in qm.plan.layers if lp.kind == "layernorm"]
    assert len(lns) == 3 and "float_layernorms" not in qm.plan.config
    assert not any(n.startswith("layer_norm") for n in qm.plan.float_islands)
    assert lns[-1].output != lns[-1].name and lns[-1].output in qm.plan.tensors
