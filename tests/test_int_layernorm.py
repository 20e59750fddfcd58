"""Integer-only LayerNorm (tvmptq/quant/int_layernorm.py): the integer arithmetic against the float
LayerNorm on random 8- and 16-bit codes, constant rows and large-magnitude rows (error bound);
PyTorch simulation == NumPy reference bit for bit; the plan conversion on a tiny post-LN block."""
from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

import tvmptq
from tvmptq.quant import int_layernorm as iln
from tvmptq.quant.plan import LayerPlan, TensorQuant
from tvmptq.reference import int_layernorm as ref_iln
from tvmptq.reference.executor import run_plan


def _layer(n, bits_in, s_in, z_in, s_out, z_out, gamma, beta, eps=1e-5, bits_out=8):
    tin = TensorQuant("x", s_in, z_in, bits_in, 0, 2 ** bits_in - 1)
    tout = TensorQuant("y", s_out, z_out, bits_out, 0, 2 ** bits_out - 1)
    e = int(round(eps * n ** 3 / s_in ** 2))
    lp = LayerPlan("ln", "layernorm", ["x"], "y", (0, 2 ** bits_out - 1),
                   attrs={"n": n, "eps": eps, "eps_term": e, "frac_bits": iln.FRAC_BITS, "recip_bits": iln.RECIP_BITS},
                   arrays=iln.output_arrays(gamma, beta, n, s_out))
    return lp, {"x": tin, "y": tout}


def _float_codes(q, lp, t, gamma, beta):
    """The float island: LayerNorm in float64 of the dequantized input, rounded to float32, quantized."""
    tin, tout = t["x"], t["y"]
    x = ((q - tin.zero_point).astype(np.float32) * np.float32(tin.scale)).astype(np.float64)
    y = torch.nn.functional.layer_norm(torch.as_tensor(x), (x.shape[-1],), torch.as_tensor(gamma),
                                       torch.as_tensor(beta), lp.attrs["eps"]).float()
    return np.clip(np.round(y.numpy() / np.float32(tout.scale)) + tout.zero_point, tout.qmin, tout.qmax).astype(np.int64)


def _both(q, lp, t):
    xc = q - t["x"].zero_point
    got_ref = np.clip(ref_iln.run(lp, xc) + t["y"].zero_point, *lp.clip)
    x = torch.as_tensor(xc.astype(np.float64) * t["x"].scale)
    got_sim = iln.QLayerNorm(lp, t)(x).numpy() / np.float32(t["y"].scale)
    got_sim = np.round(got_sim).astype(np.int64) + t["y"].zero_point
    return got_ref, got_sim


@pytest.mark.parametrize("bits_in,n", [(8, 384), (16, 384), (8, 64), (16, 768)])
def test_integer_layernorm_matches_float_within_one_step(bits_in, n):
    rng = np.random.RandomState(bits_in + n)
    hi = 2 ** bits_in - 1
    z_in = hi // 2 + 3
    s_in = 12.0 / hi
    gamma, beta = rng.uniform(0.2, 2.0, n) * rng.choice([-1, 1], n), rng.uniform(-1, 1, n)
    lp, t = _layer(n, bits_in, s_in, z_in, 8.0 / 255, 128, gamma, beta)
    rows = [np.clip(np.round(rng.randn(64, n) * hi / 16) + z_in, 0, hi),            # typical
            np.clip(np.round(rng.randn(16, n) * hi) + z_in, 0, hi),                  # saturating
            np.full((4, n), z_in + 5), np.full((2, n), 0), np.full((2, n), hi),      # constant rows
            np.where(rng.rand(8, n) < 0.5, 0, hi),                                   # largest |d|
            z_in + (rng.rand(8, n) < 0.01)]                                          # tiny variance
    q = np.concatenate(rows).astype(np.int64)
    got_ref, got_sim = _both(q, lp, t)
    assert np.array_equal(got_ref, got_sim)
    want = _float_codes(q, lp, t, gamma, beta)
    diff = np.abs(got_ref - want)
    assert diff.max() <= 1, diff.max()
    assert np.mean(diff) < 2e-3, np.mean(diff)
    const = slice(80, 88)  # constant rows normalize to beta exactly
    assert np.array_equal(got_ref[const], want[const])


def test_isqrt_exact_and_overflow_refused():
    rng = np.random.RandomState(0)
    v = np.concatenate([rng.randint(0, 2 ** 62, 2000, dtype=np.int64), np.array([0, 1, 2, 3, 4, 2 ** 62 - 1,
                        (2 ** 31 - 1) ** 2, (2 ** 31 - 1) ** 2 - 1, 2 ** 60, 2 ** 60 - 1], np.int64)])
    s = ref_iln.isqrt(v)
    assert np.array_equal(s, np.array([math.isqrt(int(a)) for a in v]))
    assert np.array_equal(iln.isqrt_digits(torch.as_tensor(v)).numpy(), s)
    step = {"name": "ln", "args": [{"value": "x"}, [2048], None, None, 1e-5]}
    plan = type("P", (), {"tensors": {"x": TensorQuant("x", 1e-3, 0, 16, 0, 65535),
                                      "ln": TensorQuant("ln", 0.03, 128, 8, 0, 255)}, "constants": {}})()
    with pytest.raises(ValueError, match="int64 would overflow"):
        iln.layer_plan(step, plan)


from tests.test_tensor_bits import block  # noqa: E402,F401  (the post-LN block fixture: model, graph, x)


@pytest.mark.parametrize("wide", [None, {"residual": 16}])
def test_post_ln_block_simulation_equals_reference(block, wide):
    model, graph, x = block
    base = tvmptq.make_config(8, 8, "minmax", tensor_bits=wide)
    cfg = dataclasses.replace(base, integer_islands=("layernorm",))
    qm = tvmptq.quantize(model, (x,), cfg, graph, progress=False)
    plan = qm.plan
    assert [lp.name for lp in plan.layers if lp.kind == "layernorm"] == ["layer_norm"]
    # the block's output LayerNorm feeds no quantized tensor: it stays a float island, named
    assert plan.float_islands == ["layer_norm_1"] and "layer_norm_1" in plan.config["float_layernorms"]
    sim = tvmptq.api.run_outputs(qm.runner(), (x,), 8, "sim", False)
    assert np.array_equal(sim, run_plan(plan, x))
    # saved and loaded, the plan simulates the same
    assert np.array_equal(tvmptq.api.from_plan(model, plan, graph).runner()(x), qm.runner()(x))
    floaty = tvmptq.api.run_outputs(tvmptq.quantize(model, (x,), base, graph, progress=False).runner(),
                                    (x,), 8, "sim", False)
    assert np.abs(sim - floaty).max() < 0.1


def test_pre_ln_vit_simulation_equals_reference():
    """timm-style pre-LN ViT: all three LayerNorms integer (the final one writes its CLS slice's grid)."""
    from tests.test_user_transformers import TimmViT
    torch.manual_seed(0)
    model = tvmptq.zoo.from_module(TimmViT(), torch.randn(4, 1, 8, 8))
    x = np.random.RandomState(1).randn(16, 1, 8, 8).astype(np.float32)
    cfg = dataclasses.replace(tvmptq.make_config(8, 8, "minmax"), integer_islands=("layernorm",))
    qm = tvmptq.quantize(model, (x,), cfg, progress=False)
    lns = [lp for lp in qm.plan.layers if lp.kind == "layernorm"]
    assert len(lns) == 3 and not any(n.startswith("layer_norm") for n in qm.plan.float_islands)
    assert lns[-1].output != lns[-1].name
    assert np.array_equal(tvmptq.api.run_outputs(qm.runner(), (x,), 4, "sim", False), run_plan(qm.plan, x))
