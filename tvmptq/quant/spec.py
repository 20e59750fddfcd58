"""Immutable quantization specs and the integer grids and rounding rules they imply.

Grids (the contract every stage shares: the PyTorch simulation, the NumPy reference and the Relax
lowering):

* weights: symmetric, per output channel, *narrow* signed grid ``[-(2^(b-1)-1), 2^(b-1)-1]``, zero
  point 0. So 2-bit weights are {-1, 0, 1} (ternary), 4-bit are [-7, 7], 8-bit [-127, 127]. The
  narrow grid keeps the grid symmetric around zero, which is what a symmetric scale assumes.
* activations, asymmetric: unsigned grid ``[0, 2^b - 1]`` with an integer zero point inside it.
* activations, symmetric: signed grid ``[-2^(b-1), 2^(b-1) - 1]``, zero point 0.
* bias: int32 on the accumulator grid, scale ``s_x * s_w[c]``.

Rounding:

* float -> integer (weights, biases, input quantize, float islands' outputs): round half to even
  (``torch.round`` / ``numpy.round``), then clip to the grid.
* integer requantize (fixed-point multiply): ``(acc * m + 2^(k-1)) >> k`` with an arithmetic shift,
  i.e. round half up (towards +inf). See :mod:`tvmptq.quant.fixedpoint`.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import ConfigError

SUPPORTED_BITS = range(2, 9)
# Per-tensor activation overrides (``QuantConfig.tensor_bits``) may also widen a tensor to up to
# 16 bits (the few tensors a per-tensor 8-bit grid cannot hold: a transformer's residual stream).
WIDE_ACTIVATION_BITS = range(2, 17)


def check_bits(bits: int, what: str, allowed: range = SUPPORTED_BITS) -> int:
    if not isinstance(bits, int) or isinstance(bits, bool) or bits not in allowed:
        raise ConfigError(f"unsupported {what} bit width {bits!r}: choose an integer from "
                          f"{allowed.start} to {allowed.stop - 1}")
    return bits


@dataclass(frozen=True)
class WeightSpec:
    """How a layer's weights are quantized."""

    bits: int = 8
    rule: str = "mse"  # range rule per output channel: "minmax" (max |w|) or "mse"

    def __post_init__(self):
        check_bits(self.bits, "weight")
        if self.rule not in ("minmax", "mse"):
            raise ConfigError(f"unknown weight range rule {self.rule!r}: use 'minmax' or 'mse'")

    @property
    def qmax(self) -> int:
        return 2 ** (self.bits - 1) - 1

    @property
    def qmin(self) -> int:
        return -self.qmax


@dataclass(frozen=True)
class ActivationSpec:
    """How an activation tensor is quantized (per tensor)."""

    bits: int = 8
    symmetric: bool = False
    rule: str = "minmax"  # range rule: "minmax", "percentile" or "mse"
    percentile: float = 99.99

    def __post_init__(self):
        check_bits(self.bits, "activation")
        if self.rule not in ("minmax", "percentile", "mse"):
            raise ConfigError(
                f"unknown activation range rule {self.rule!r}: use 'minmax', 'percentile' or 'mse'")
        if not 50.0 < self.percentile <= 100.0:
            raise ConfigError(f"percentile must be in (50, 100], got {self.percentile}")

    @property
    def qmin(self) -> int:
        return -(2 ** (self.bits - 1)) if self.symmetric else 0

    @property
    def qmax(self) -> int:
        return 2 ** (self.bits - 1) - 1 if self.symmetric else 2 ** self.bits - 1


@dataclass(frozen=True)
class LayerOverride:
    """Per-layer exceptions to the global config (by layer name)."""

    weight_bits: int | None = None
    activation_bits: int | None = None  # bits of the layer's output tensor
    keep_float: bool = False            # run this layer in float; reported as such


# Island kinds QuantConfig.integer_islands may name (each computed by tvmptq/quant/int_islands.py).
INTEGER_ISLANDS = ("softmax", "layernorm")


def check_integer_islands(names) -> tuple[str, ...]:
    if isinstance(names, str) or not all(isinstance(n, str) for n in names):
        raise ConfigError(f"integer_islands must be a tuple of island names, got {names!r}")
    for name in names:
        if name not in INTEGER_ISLANDS:
            raise ConfigError(f"unknown integer island {name!r}: choose from {', '.join(INTEGER_ISLANDS)}")
    return tuple(names)


@dataclass(frozen=True)
class QuantConfig:
    """Everything the baseline PTQ needs to know besides the model and the data."""

    weight: WeightSpec = WeightSpec()
    activation: ActivationSpec = ActivationSpec()
    first_last_8bit: bool = False  # first and last conv/linear: 8-bit weights and 8-bit inputs
    overrides: tuple[tuple[str, LayerOverride], ...] = ()
    bias_correction: bool = True   # empirical per-channel bias correction (bias_correction.py)
    lookup_tables: bool = True     # unary functions (sigmoid, SiLU, GELU, ...) as integer tables (lut.py)
    # statistics and bias correction over real tokens only (an ``attention_mask`` input, token_mask.py);
    # off by default: on MiniLM it measured worse (results/transformer.md)
    real_tokens_only: bool = False
    # per-tensor activation bit widths (tensor name -> 2..16), applied after ``overrides``:
    # e.g. 16-bit residual sums (tvmptq/quant/tensor_groups.py names the groups)
    tensor_bits: tuple[tuple[str, int], ...] = ()
    # islands computed in integer arithmetic instead of float (tvmptq/quant/int_islands.py): "softmax", "layernorm"
    integer_islands: tuple[str, ...] = ()

    def __post_init__(self):
        for name, bits in self.tensor_bits:
            check_bits(bits, f"activation (tensor {name!r})", WIDE_ACTIVATION_BITS)
        check_integer_islands(self.integer_islands)

    @property
    def name(self) -> str:
        return f"W{self.weight.bits}A{self.activation.bits}"

    def override_for(self, layer: str) -> LayerOverride | None:
        return dict(self.overrides).get(layer)


def make_config(w_bits=8, a_bits=8, observer="minmax", weight_rule="mse", symmetric=False,
                percentile=99.99, first_last_8bit=False, overrides=None, bias_correction=True,
                lookup_tables=True, real_tokens_only=False, tensor_bits=None,
                integer_islands=()) -> QuantConfig:
    """Convenience constructor used by the CLI and the benchmarks."""
    ovr = tuple(sorted((k, v if isinstance(v, LayerOverride) else LayerOverride(**v))
                       for k, v in (overrides or {}).items()))
    return QuantConfig(WeightSpec(w_bits, weight_rule),
                       ActivationSpec(a_bits, symmetric, observer, percentile),
                       first_last_8bit, ovr, bias_correction, lookup_tables, real_tokens_only,
                       tuple(sorted((tensor_bits or {}).items())),
                       tuple(sorted(set(check_integer_islands(tuple(integer_islands or ()))))))
