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


class MobileNetV3Block(nn.Module):
    def __init__(self, c=8):
        super().__init__()
        self.expand, self.dw = nn.Conv2d(3, c, 1), nn.Conv2d(c, c, 3, padding=1, groups=c)
        self.se1, self.se2, self.project = nn.Conv2d(c, 4, 1), nn.Conv2d(4, c, 1), nn.Conv2d(c, 4, 1)

    def forward(self, x):
        y = F.hardswish(self.dw(F.hardswish(self.expand(x))))
        gate = F.hardsigmoid(self.se2(F.relu(self.se1(y.mean((2, 3), keepdim=True)))))
        return self.project(y * gate)


class YoloNeck(nn.Module):
    def __init__(self, c=8):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, c, 3, padding=1), nn.Conv2d(4 * c, c, 1)
        self.down, self.out = nn.Conv2d(2 * c, c, 3, stride=2, padding=1), nn.Conv2d(2 * c, 4, 1)

    def forward(self, x):
        x = F.silu(self.a(x))
        p1 = F.max_pool2d(x, 5, 1, 2)
        p2 = F.max_pool2d(p1, 5, 1, 2)
        p3 = F.max_pool2d(p2, 5, 1, 2)
        y = F.leaky_relu(self.b(torch.cat([x, p1, p2, p3], 1)), 0.1)
        d = F.silu(self.down(torch.cat([x, y], 1)))
        return self.out(torch.cat([F.interpolate(d, scale_factor=2.0, mode="nearest"), y], 1))


class PreActBlock(nn.Module):
    """BN -> ReLU -> conv, twice, identity shortcut: the batch norms follow no conv."""

    def __init__(self, c=8):
        super().__init__()
        self.stem = nn.Conv2d(3, c, 3, padding=1)
        self.bn1, self.bn2 = nn.BatchNorm2d(c), nn.BatchNorm2d(c)
        self.c1, self.c2 = nn.Conv2d(c, c, 3, padding=1), nn.Conv2d(c, c, 3, padding=1)
        for bn in (self.bn1, self.bn2):
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.data.uniform_(0.5, 1.5)

    def forward(self, x):
        x = self.stem(x)
        y = self.c2(F.relu(self.bn2(self.c1(F.relu(self.bn1(x))))))
        return F.avg_pool2d(x + y, 3, 2, 1)


class ReflectPad(nn.Module):
    def __init__(self, c=8):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, c, 3), nn.Conv2d(c, 4, 3)

    def forward(self, x):
        y = F.elu(self.a(F.pad(x, (1, 1, 1, 1), mode="reflect")))
        return self.b(F.pad(y, (1, 1, 1, 1), mode="replicate"))


class ConvNeXtBlock(nn.Module):
    def __init__(self, c=16):
        super().__init__()
        self.stem, self.dw = nn.Conv2d(3, c, 1), nn.Conv2d(c, c, 7, padding=3, groups=c)
        self.ln, self.pw1, self.pw2 = nn.LayerNorm(c), nn.Linear(c, 4 * c), nn.Linear(4 * c, c)
        self.gamma = nn.Parameter(torch.full((c,), 0.5))

    def forward(self, x):
        x = self.stem(x)
        y = self.pw2(F.gelu(self.pw1(self.ln(self.dw(x).permute(0, 2, 3, 1)))))
        return x + (self.gamma * y).permute(0, 3, 1, 2)


# (block, float islands the plan may declare with lookup tables on)
BLOCKS = {"mobilenetv3": (MobileNetV3Block, set()), "yolo_neck": (YoloNeck, set()),
          "preact": (PreActBlock, set()), "reflect_pad": (ReflectPad, set()),
          "convnext": (ConvNeXtBlock, {"layer_norm", "mul"})}


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
