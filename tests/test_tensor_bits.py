"""Per-tensor activation bit widths (QuantConfig.tensor_bits, tvmptq/quant/tensor_groups.py):
16-bit residual sums in a tiny post-LN encoder, simulation == NumPy reference bit for bit."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import tvmptq
from tvmptq.errors import ConfigError
from tvmptq.quant.tensor_groups import tensor_groups
from tvmptq.reference.executor import run_plan


class PostLNBlock(nn.Module):
    def __init__(self):
        super().__init__()
        self.q, self.o, self.n1 = nn.Linear(16, 16), nn.Linear(16, 16), nn.LayerNorm(16)
        self.f1, self.f2, self.n2 = nn.Linear(16, 32), nn.Linear(32, 16), nn.LayerNorm(16)

    def forward(self, x):
        x = self.n1(x + self.o(self.q(x)))
        return self.n2(x + self.f2(F.gelu(self.f1(x))))


@pytest.fixture(scope="module")
def block():
    torch.manual_seed(0)
    model = tvmptq.zoo.from_module(PostLNBlock(), torch.randn(2, 8, 16))
    x = (np.random.RandomState(0).randn(16, 8, 16) * 3).astype(np.float32)
    return model, tvmptq.prepare(model), x


def test_groups_and_16bit_residual_bit_exact(block):
    model, graph, x = block
    groups = tensor_groups(graph)
    assert groups["residual"] == ["add", "add_1"] and groups["ffn_act"] == ["gelu"]
    qm = tvmptq.quantize(model, (x,), tvmptq.make_config(8, 8, "minmax", tensor_bits={"residual": 16}),
                         graph, progress=False)
    bits = {n: t.bits for n, t in qm.plan.tensors.items()}
    assert bits["add"] == bits["add_1"] == 16 and bits["layer_norm"] == 8
    assert qm.plan.config["tensor_bits"] == {"residual": 16}
    sim = tvmptq.api.run_outputs(qm.runner(), (x,), 8, "sim", False)
    assert np.array_equal(sim, run_plan(qm.plan, x))
    # a tensor name wins over its group
    qm = tvmptq.quantize(model, (x,), tvmptq.make_config(8, 8, "minmax", tensor_bits={"residual": 16, "add": 8}),
                         graph, progress=False)
    assert qm.plan.tensors["add"].bits == 8 and qm.plan.tensors["add_1"].bits == 16


def test_bad_tensor_bits_are_named(block):
    model, graph, x = block
    with pytest.raises(ConfigError, match="from 2 to 16"):
        tvmptq.make_config(8, 8, tensor_bits={"residual": 17})
    with pytest.raises(ConfigError, match="unknown tensor or group 'nope'"):
        tvmptq.quantize(model, (x,), tvmptq.make_config(8, 8, tensor_bits={"nope": 16}), graph, progress=False)
