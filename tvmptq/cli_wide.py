"""``tvmptq quantize --wide``: per-tensor activation bit widths (tvmptq/quant/tensor_groups.py).

``--wide residual=16`` keeps a transformer's residual sums (the LayerNorm inputs) on a 16-bit
grid; ``--wide NAME=BITS`` names one tensor or one group (residual, ln_out, ffn_act, ffn_pre,
proj_out, qkv, attention); a preset name (``--wide res16``) stands for its groups. The
plan reports every widened tensor by name (``plan.config["tensor_bits"]``)."""
from __future__ import annotations

from .errors import ConfigError
from .quant.tensor_groups import PRESETS


def add_arguments(parser) -> None:
    parser.add_argument("--wide", action="append", metavar="NAME=BITS|PRESET",
                        help="activation bit width (2..16) of one tensor or tensor group, or a preset: "
                             + ", ".join(f"{k} ({', '.join(f'{g}={b}' for g, b in v.items())})"
                                         for k, v in PRESETS.items()) + "; repeatable")


def tensor_bits(args) -> dict[str, int] | None:
    out: dict[str, int] = {}
    for item in getattr(args, "wide", None) or []:
        if item in PRESETS:
            out.update(PRESETS[item])
            continue
        name, sep, bits = item.partition("=")
        if not sep or not bits.strip().isdigit():
            raise ConfigError(f"--wide expects NAME=BITS or a preset ({', '.join(PRESETS)}), got {item!r}")
        out[name.strip()] = int(bits)
    return out or None


def summary(plan) -> None:
    wide = {n: t.bits for n, t in plan.tensors.items() if t.bits > 8}
    if wide:
        print(f"tensors wider than 8 bits ({len(wide)}): " + ", ".join(f"{n} ({b}-bit)" for n, b in wide.items()))
