"""Edge-model blocks from PyTorch (issue 27): quantize -> lower -> compile for x86-host, the compiled
integer program bit-exact against the simulation and the NumPy reference, W8A8 cosine >= 0.999
to FP32, and no float op left where the block has only table functions (random weights, tiny dims)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import relay_passes as rp
from targets.build import compile_integer
import tvmptq
from tvmptq.reference.executor import run_plan

from edge_models import BLOCKS  # noqa: E402


@pytest.mark.parametrize("name", sorted(BLOCKS))
def test_block_compiles_bit_exact(name):
    torch.manual_seed(0)
    cls, islands = BLOCKS[name]
    module = cls().eval()
    model = tvmptq.zoo.from_module(module, (torch.randn(1, 3, 16, 16),))
    x = np.random.default_rng(0).standard_normal((16, 3, 16, 16)).astype(np.float32)
    qm = tvmptq.quantize(model, (x,), tvmptq.make_config(8, 8), progress=False)
    assert set(qm.plan.float_islands) == islands
    ref = run_plan(qm.plan, x)
    np.testing.assert_array_equal(qm.runner()(x), ref)
    mod = rp.lower(model.build(), model.example_inputs(8), qm.plan)
    if not islands:
        assert rp.float_ops(mod) == []
    got = compile_integer(mod, "x86-host", tensorize=True)(x)
    np.testing.assert_array_equal(got, ref)
    fp = module(torch.as_tensor(x)).detach().numpy().reshape(len(x), -1)
    got = got.reshape(len(x), -1)
    assert (fp * got).sum() / np.linalg.norm(fp) / np.linalg.norm(got) >= 0.999


def test_per_position_avg_pool_refused_by_name():
    class Pool(nn.Module):
        def __init__(self):
            super().__init__()
            self.c = nn.Conv2d(3, 4, 1)

        def forward(self, x):
            return F.avg_pool2d(self.c(x), 3, 2, 1, count_include_pad=False)

    model = tvmptq.zoo.from_module(Pool().eval(), (torch.randn(1, 3, 8, 8),))
    with pytest.raises(tvmptq.errors.UnsupportedOpError, match="avg_pool2d 'avg_pool2d'.*multiplier per output position"):
        tvmptq.prepare(model)
