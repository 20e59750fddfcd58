"""The fixed-point requantize against exact rational arithmetic (Python integers)."""
import numpy as np
import pytest
from fractions import Fraction

from tvmptq.quant.fixedpoint import quantize_multiplier, requantize_np, shared_shift_multipliers


def _round_half_up(fr: Fraction) -> int:
    return (fr + Fraction(1, 2)).__floor__()


def test_multiplier_precision():
    reals = np.array([1e-9, 3.1e-5, 0.0123, 0.5, 0.999999, 1.0, 1.7, 123.4])
    m, k = quantize_multiplier(reals)
    approx = m / 2.0 ** k
    assert np.all(np.abs(approx / reals - 1) < 2 ** -29)
    assert np.all((k >= 1) & (k <= 62))


def test_zero_multiplier_gives_zero():
    m, k = quantize_multiplier(np.array([0.0]))
    assert requantize_np(np.array([12345]), m, k)[0] == 0


def test_requantize_matches_exact_rounding():
    rng = np.random.default_rng(0)
    acc = rng.integers(-2 ** 31 + 1, 2 ** 31 - 1, size=2000)
    reals = rng.uniform(1e-6, 2.0, size=2000)
    m, k = quantize_multiplier(reals)
    got = requantize_np(acc, m, k)
    want = [_round_half_up(Fraction(int(a) * int(mm), 2 ** int(kk))) for a, mm, kk in zip(acc, m, k)]
    assert got.tolist() == want


def test_ties_round_up():
    m, k = np.array([1]), np.array([1])  # multiply by 1/2
    assert requantize_np(np.array([-3, -1, 1, 3]), m, k).tolist() == [-1, 0, 1, 2]


def test_shared_shift():
    m, k = shared_shift_multipliers([0.25, 0.8])
    assert np.allclose(m / 2.0 ** k, [0.25, 0.8], rtol=2 ** -29)
    assert m.max() < 2 ** 31


def test_negative_multiplier_rejected():
    with pytest.raises(ValueError):
        quantize_multiplier(np.array([-0.5]))
