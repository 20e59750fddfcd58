"""scripts/layer_roles.py on a transformer: the linear roles (qkv, attn_out, ffn1, ffn2) read from
the graph's tensor groups, the mixed-precision label, and bench_reconstruction's --wide rows
staying in the main table (a tiny one-layer encoder, no zoo model)."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import tvmptq

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))
layer_roles = pytest.importorskip("layer_roles")


class EncoderLayer(nn.Module):
    def __init__(self, d=16):
        super().__init__()
        self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))
        self.n1, self.f1, self.f2, self.n2 = nn.LayerNorm(d), nn.Linear(d, 2 * d), nn.Linear(2 * d, d), nn.LayerNorm(d)

    def forward(self, x):
        att = torch.softmax(self.q(x) @ self.k(x).transpose(-1, -2) * 0.25, dim=-1)
        x = self.n1(x + self.o(att @ self.v(x)))
        return self.n2(x + self.f2(F.gelu(self.f1(x))))


@pytest.fixture(scope="module")
def graph():
    torch.manual_seed(0)
    return tvmptq.prepare(tvmptq.zoo.from_module(EncoderLayer(), torch.randn(2, 8, 16)))


def test_transformer_roles_by_graph_structure(graph):
    roles = layer_roles.roles_of(graph)
    assert sorted(roles.values()) == ["attn_out", "ffn1", "ffn2", "qkv", "qkv", "qkv"]
    by_role = {r: n for n, r in roles.items()}
    w_shapes = {lay.name: lay.weight.shape for lay in graph.layers if lay.weight is not None}
    assert w_shapes[by_role["ffn1"]] == (32, 16) and w_shapes[by_role["ffn2"]] == (16, 32)


def test_bits_label_counts_layers_and_average_weight_bits(graph):
    ovr = layer_roles.weight_bit_overrides(graph, ["ffn1", "ffn2"], 8)
    assert len(ovr) == 2 and all(v == {"weight_bits": 8} for v in ovr.values())
    # 4 x 256 weights at 4 bits, 2 x 512 at 8: (4096 + 8192) / 2048 = 6.0
    assert layer_roles.bits_label(graph, "W4A8", "res_ln_proj12", ["ffn1", "ffn2"], ovr) == \
        "W4A8 res_ln_proj12 ffn1+ffn2@W8 (2 of 6 layers, avg 6.00 b)"
    assert layer_roles.bits_label(graph, "W4A8", None, [], None) == "W4A8"
    with pytest.raises(SystemExit, match="unknown layer roles"):
        layer_roles.weight_bit_overrides(graph, ["depthwise"], 8)


def test_wide_rows_stay_in_the_main_table():
    bench = pytest.importorskip("bench_reconstruction")
    assert not bench._is_setting({"bits": "W4A8 res_ln_proj12", "wide": "res_ln_proj12", "method": "brecq"})
    assert bench._is_setting({"bits": "W4A8 res_ln_proj12 ffn2@W8 (6 of 36 layers, avg 5.33 b)",
                              "wide": "res_ln_proj12", "method": "baseline"})
    assert bench._is_setting({"bits": "W4A8 fl8", "method": "brecq"})
