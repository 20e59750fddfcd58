"""16-bit activations (QuantConfig.tensor_bits) through the Relax lowering: a tiny post-LN encoder
block with 16-bit residual sums compiles to the integer program, whose output equals the PyTorch
simulation and the NumPy reference executor, and whose residual sums are 16-bit grids in int32 containers."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import tvmptq
from tvmptq.reference.executor import run_plan

tvm = pytest.importorskip("tvm")
import relay_passes as rp  # noqa: E402  (needs tvm)
from targets.build import compile_integer  # noqa: E402
from tests.test_tensor_bits import PostLNBlock  # noqa: E402  (the same post-LN block)
from tvmptq.quant.tensor_groups import PRESETS, tensor_groups  # noqa: E402
from targets.kernels import x86_vnni as xi  # noqa: E402

VNNI_TARGET = "x86-host" if xi.host_has_avx512_vnni() else "x86-avx512-vnni"  # the report needs no VNNI host


def _captured(block_class, shape, seed):
    """(model, input, its canonicalized Relax import) of a test block, built after seeding torch."""
    torch.manual_seed(0)
    model = tvmptq.zoo.from_module(block_class(), torch.randn(*shape))
    x = (np.random.RandomState(seed).randn(*shape) * 3).astype(np.float32)
    return model, x, rp.Canonicalize()(rp.import_model(model.build(), (torch.from_numpy(x),)))


@pytest.fixture(scope="module")
def block():
    return _captured(PostLNBlock, (8, 8, 16), 0)


@pytest.mark.parametrize("w", [8, 4])
def test_residual16_compiled_equals_simulation_and_reference(block, w):
    model, x, imported = block
    qm = tvmptq.quantize(model, (x,), tvmptq.make_config(w, 8, "minmax", tensor_bits={"residual": 16}),
                         progress=False)
    wide = {n: t for n, t in qm.plan.tensors.items() if t.bits > 8}
    assert sorted(wide) == ["add", "add_1"] and all(t.bits == 16 for t in wide.values())
    mod = rp.lowering_passes(qm.plan)(imported)
    counts = rp.op_counts(mod)
    base = rp.op_counts(rp.lowering_passes(tvmptq.quantize(
        model, (x,), tvmptq.make_config(w, 8, "minmax"), progress=False).plan)(imported))
    # the two residual sums leave their requantize in a 32-bit container instead of uint8; every
    # kernel still accumulates in int32 (matmuls) and requantizes in int64, no float op is added
    assert counts["astype -> int32"] - base["astype -> int32"] == 2
    assert base["astype -> uint8"] - counts["astype -> uint8"] == 2
    assert counts["matmul -> int32"] == base["matmul -> int32"] == 4
    assert {k: v for k, v in counts.items() if "float" in k} == {k: v for k, v in base.items() if "float" in k}
    got = compile_integer(mod)(x)
    sim = qm.runner()(x)
    assert np.array_equal(got, sim)
    assert np.array_equal(got, run_plan(qm.plan, x))


class AttentionBlock(torch.nn.Module):
    """One post-LN encoder layer with its attention (QK^T, scale, softmax, x V), as MiniLM's: every
    group of tvmptq/quant/tensor_groups.py has a member."""

    def __init__(self, d=16, heads=2):
        super().__init__()
        self.h, self.dh = heads, d // heads
        self.q, self.k, self.v, self.o = (torch.nn.Linear(d, d) for _ in range(4))
        self.n1, self.f1, self.f2, self.n2 = torch.nn.LayerNorm(d), torch.nn.Linear(d, 32), torch.nn.Linear(32, d), \
            torch.nn.LayerNorm(d)

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = (f(x).reshape(b, t, self.h, self.dh).transpose(1, 2) for f in (self.q, self.k, self.v))
        p = torch.softmax(q @ k.transpose(-1, -2) / self.dh ** 0.5, dim=-1)
        x = self.n1(x + self.o((p @ v).transpose(1, 2).reshape(b, t, d)))
        return self.n2(x + self.f2(torch.nn.functional.gelu(self.f1(x))))


@pytest.fixture(scope="module")
def attention_block():
    return _captured(AttentionBlock, (4, 8, 16), 1)


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_presets_compile_bit_exact_and_name_lost_kernels(attention_block, preset):
    """Each preset of tensor_groups.PRESETS on a one-layer encoder: compiled == simulation == NumPy
    reference; no float op is added; the VNNI rewrite keeps every linear whose input and output fit
    int16 containers (an int16 input runs on vpdpwssd, an int16 output is a wider store: tests/test_wide_vnni.py)
    and names the others (a grid that needs an int32 container, e.g. 16-bit asymmetric)."""
    model, x, imported = attention_block
    qm = tvmptq.quantize(model, (x,), tvmptq.make_config(8, 8, "minmax", tensor_bits=PRESETS[preset]),
                         progress=False)
    base = tvmptq.quantize(model, (x,), tvmptq.make_config(8, 8, "minmax"), progress=False)
    wide = {n for n, t in qm.plan.tensors.items() if t.bits > 8}
    groups = tensor_groups(tvmptq.prepare(model))
    assert wide == {n for g, b in PRESETS[preset].items() if b > 8 for n in groups[g]}
    mod = rp.lowering_passes(qm.plan)(imported)
    counts, base_counts = rp.op_counts(mod), rp.op_counts(rp.lowering_passes(base.plan)(imported))
    assert {k: v for k, v in counts.items() if "float" in k} == {k: v for k, v in base_counts.items() if "float" in k}
    got = compile_integer(mod)(x)
    assert np.array_equal(got, qm.runner()(x))
    assert np.array_equal(got, run_plan(qm.plan, x))
    tensorize = rp.TensorizeDot(VNNI_TARGET, qm.plan, warn=False)
    tensorize(mod)
    lost = {r.layer for r in tensorize.report if r.kind == "linear" and not r.tensorized}
    linears = [lp for lp in qm.plan.layers if lp.kind == "linear"]
    from relay_passes.integer_ops import container_dtype

    def int32_container(n):
        t = qm.plan.tensors[n]
        return container_dtype(int(t.qmin), int(t.qmax)) == "int32"
    assert lost == {lp.name for lp in linears if any(int32_container(n) for n in (lp.output, *lp.inputs)
                                                     if n in qm.plan.tensors)}
    assert len(linears) == 6


@pytest.mark.slow
@pytest.mark.parametrize("preset, n_wide", [("res16", 12), ("res_ln_proj12", 36)])
def test_minilm_presets_compiled_match_simulation(preset, n_wide):
    """MiniLM with a preset's wide tensors (res16: the 12 residual sums at 16 bits; res_ln_proj12: 36
    tensors at 12 bits) lowers to the integer program
    (every linear and attention matmul an int32 matmul) and matches the simulation as closely as the
    8-bit plan does: the float islands (LayerNorm, softmax) differ from PyTorch's only by float32
    rounding (tests/test_relax_lowering.py::test_minilm_compiled_matches_simulation)."""
    model = tvmptq.load("minilm_l6")
    s = tvmptq.get_set("sentences")
    calib, evaluation = tuple(a[:8] for a in s.calibration()), tuple(a[:8] for a in s.evaluation())
    imported = rp.Canonicalize()(rp.import_model(model.build(), model.example_inputs(4)))
    qm = tvmptq.quantize(model, calib, tvmptq.make_config(8, 8, weight_rule="minmax", tensor_bits=PRESETS[preset]),
                         progress=False)
    assert sum(t.bits > 8 for t in qm.plan.tensors.values()) == n_wide
    mod = rp.lowering_passes(qm.plan)(imported)
    counts = rp.op_counts(mod)
    assert counts["matmul -> int32"] == 48 and counts["matmul -> float32"] == 0
    got, ref = compile_integer(mod)(*evaluation), qm.runner()(*evaluation)
    cos = np.sum(got * ref, 1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(ref, axis=1))
    print(f"MiniLM {preset} compiled vs simulation: min cosine {cos.min():.8f}, "
          f"max abs diff {np.abs(got - ref).max():.3g}, equal elements {np.mean(got == ref):.4f}")
    assert cos.min() > 0.99999, cos
