"""Calibration over real tokens only (tvmptq/quant/token_mask.py, issue 21): padding positions,
which never reach a transformer's output, set no range and no bias correction."""
import numpy as np
import torch
from torch import nn

import tvmptq
from tvmptq.eval.sets import batches
from tvmptq.quant.calibrate import build_plan, collect_statistics
from tvmptq.quant.graph import build_layer_graph
from tvmptq.quant.simulate import simulate
from tvmptq.quant.token_mask import mask_from_inputs, real_token_entries, real_token_rows


def _mask(n=2, t=5, lengths=(3, 2)):
    m = torch.zeros(n, t, dtype=torch.int64)
    for i, k in enumerate(lengths):
        m[i, :k] = 1
    return m


def test_real_token_entries_selects_token_axes():
    m = _mask() != 0
    hidden = torch.arange(2 * 5 * 7.0).reshape(2, 5, 7)
    assert torch.equal(real_token_entries(hidden, m), hidden[m].reshape(-1))
    scores = torch.randn(2, 3, 5, 5)
    want = torch.cat([scores[i][:, :k, :k].reshape(-1) for i, k in enumerate((3, 2))])
    assert torch.equal(real_token_entries(scores, m).sort().values, want.sort().values)
    heads = torch.randn(2, 3, 5, 4)
    assert real_token_entries(heads, m).numel() == 3 * 4 * (3 + 2)
    pooled = torch.randn(2, 7)  # no token axis: unchanged
    assert real_token_entries(pooled, m) is pooled
    assert torch.equal(real_token_rows(hidden, m), hidden[m])


def test_mask_from_inputs_only_when_padding():
    names = ["input_ids", "attention_mask"]
    assert mask_from_inputs(names, (None, _mask())) is not None
    assert mask_from_inputs(names, (None, torch.ones(2, 5))) is None          # no padding
    assert mask_from_inputs(names, (None, _mask(lengths=(3, 0)))) is None     # an all-padding row
    assert mask_from_inputs(["x"], (torch.ones(2, 5),)) is None               # no mask input


class _Pooled(nn.Module):
    """linear -> ReLU -> linear -> masked mean over tokens: padding rows never reach the output."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.a, self.b = nn.Linear(8, 16), nn.Linear(16, 8)

    def forward(self, x, attention_mask):
        m = attention_mask.float()[:, :, None]
        return (self.b(torch.relu(self.a(x))) * m).sum(1) / m.sum(1)


def test_padding_sets_no_range_and_output_improves():
    model = _Pooled().eval()
    n, t = 16, 6
    x = torch.randn(n, t, 8)
    mask = _mask(n, t, [2 + i % 4 for i in range(n)])
    x[mask == 0] *= 1000.0  # huge values on padding positions only
    graph = build_layer_graph(model, (x[:1], mask[:1]))
    data = (x.numpy(), mask.numpy())
    ref = model(x, mask).detach().numpy()
    err = {}
    for real_only in (False, True):
        obs, _ = collect_statistics(graph, batches(data, 8), False, real_tokens_only=real_only)
        cfg = tvmptq.make_config(8, 8, "minmax", real_tokens_only=real_only)
        plan = build_plan(graph, obs, cfg, "pooled", data, 8)
        assert plan.config["real_tokens_only"] is real_only
        first = plan.tensors[graph.tensor_of(graph.layers[0].inputs[0])]
        span = first.scale * (first.qmax - first.qmin)
        real = x[mask != 0]
        if real_only:  # the range is the real tokens' range, not the padding's
            assert span <= 1.01 * float(real.max() - min(real.min(), 0))
        else:
            assert span > 100 * float(real.max() - real.min())
        out = simulate(graph, plan)(x, mask).detach().numpy()
        err[real_only] = float(np.abs(out - ref).max())
    assert err[True] < err[False] / 20, err
