"""Observers stream with flat memory; range rules behave as documented."""
import numpy as np
import pytest
import torch

from tvmptq.errors import ConfigError, DataError
from tvmptq.quant.observers import HistogramObserver
from tvmptq.quant.ranges import activation_range, affine_params, weight_scales
from tvmptq.quant.spec import ActivationSpec, WeightSpec


def test_streaming_histogram_matches_one_shot():
    rng = np.random.default_rng(0)
    chunks = [rng.normal(0, 1 + i, 5000).astype(np.float32) for i in range(6)]  # range grows
    streamed = HistogramObserver("t")
    for c in chunks:
        streamed.update(torch.from_numpy(c))
    data = np.concatenate(chunks)
    assert streamed.min == data.min() and streamed.max == data.max()
    assert streamed.counts.sum() == pytest.approx(len(data))
    # re-binned CDF stays within a couple of bin widths of the exact quantiles
    cdf = np.cumsum(streamed.counts) / streamed.counts.sum()
    centers, _ = streamed.centers_and_counts()
    width = (streamed.max - streamed.min) / streamed.bins
    for q in (0.01, 0.5, 0.99):
        assert abs(np.interp(q, cdf, centers) - np.quantile(data, q)) < 4 * width


def test_observer_memory_is_flat():
    obs = HistogramObserver("t", bins=512)
    for i in range(50):
        obs.update(torch.randn(10000) * (i + 1))
    assert obs.counts.shape == (512,) and obs.samples == 500000


def test_nan_in_activation_is_reported():
    obs = HistogramObserver("layer3")
    with pytest.raises(DataError, match="layer3.*NaN"):
        obs.update(torch.tensor([1.0, float("nan")]))


def test_affine_params_include_zero_and_cover_range():
    s, z = affine_params(0.5, 6.0, 0, 255, symmetric=False)
    assert z == 0 and s == pytest.approx(6.0 / 255)
    s, z = affine_params(-1.0, 3.0, 0, 15, symmetric=False)
    assert -z * s == pytest.approx(-1.0, abs=float(s)) and (15 - z) * s == pytest.approx(3.0, abs=float(s))
    s, z = affine_params(-1.0, 3.0, -8, 7, symmetric=True)
    assert z == 0 and s == pytest.approx(3.0 / 7)


@pytest.mark.parametrize("rule", ["minmax", "percentile", "mse"])
def test_range_rules_on_heavy_tail(rule):
    rng = np.random.default_rng(1)
    x = np.concatenate([rng.normal(0, 1, 100000), [40.0]]).astype(np.float32)
    obs = HistogramObserver("t")
    obs.update(torch.from_numpy(x))
    s, z, qmin, qmax = activation_range(obs, ActivationSpec(4, rule=rule), 4)
    hi = (qmax - z) * s
    if rule == "minmax":
        assert hi == pytest.approx(40.0, rel=0.05)
    else:  # clipping rules ignore the single outlier
        assert hi < 20.0


def test_weight_grids():
    w = np.array([[-1.0, -0.2, 0.0, 0.3, 1.0]], dtype=np.float32)
    assert WeightSpec(2).qmin == -1 and WeightSpec(2).qmax == 1  # ternary
    assert WeightSpec(4).qmax == 7 and WeightSpec(8).qmin == -127
    s = weight_scales(w, WeightSpec(8, "minmax"), 8)
    assert s[0] == pytest.approx(1.0 / 127)
    mse = weight_scales(w, WeightSpec(2, "mse"), 2)
    assert mse[0] <= 1.0  # may clip, never widens


def test_mse_weight_scale_reduces_error():
    rng = np.random.default_rng(2)
    w = rng.standard_t(3, size=(16, 64)).astype(np.float32)
    for bits in (2, 4):
        qmax = 2 ** (bits - 1) - 1
        errs = []
        for rule in ("minmax", "mse"):
            s = weight_scales(w, WeightSpec(bits, rule), bits)[:, None]
            errs.append(((w - np.clip(np.round(w / s), -qmax, qmax) * s) ** 2).sum())
        assert errs[1] <= errs[0]


@pytest.mark.parametrize("bits", [1, 9, 0, "8"])
def test_unsupported_bits(bits):
    with pytest.raises(ConfigError, match="bit width"):
        WeightSpec(bits)
    with pytest.raises(ConfigError, match="bit width"):
        ActivationSpec(bits)
