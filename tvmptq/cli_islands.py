"""``tvmptq quantize --integer-islands softmax[,layernorm]``: islands computed in integer arithmetic
instead of float (``QuantConfig.integer_islands``, tvmptq/quant/int_softmax.py). Unknown names
are refused (ConfigError, exit code 2); islands that cannot be integer stay float and are named
by the plan (``config["integer_islands_float"]``) and by this summary."""
from __future__ import annotations

from .quant.spec import INTEGER_ISLANDS, check_integer_islands


def add_arguments(parser) -> None:
    parser.add_argument("--integer-islands", metavar="NAMES", default="",
                        help="comma-separated islands to compute in integers instead of float: "
                             + ", ".join(INTEGER_ISLANDS))


def integer_islands(args) -> tuple[str, ...]:
    names = [n.strip() for n in (getattr(args, "integer_islands", "") or "").split(",") if n.strip()]
    return check_integer_islands(tuple(names))


def summary(plan) -> None:
    names = plan.config.get("integer_islands")
    if names:
        left = plan.config.get("integer_islands_float", [])
        print(f"integer islands: {', '.join(names)}"
              + (f"; left float: {', '.join(left)}" if left else ""))
