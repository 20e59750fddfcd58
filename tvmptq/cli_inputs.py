"""Reading the CLI's input flags: --layer overrides, --calib sources, --input-shape, number lists.

Kept apart from cli.py so the command table stays readable; every error is a ConfigError or DataError
naming the flag and the value it could not read.
"""
from __future__ import annotations

from pathlib import Path

from .errors import ConfigError, DataError


def parse_layer_overrides(items) -> dict:
    """``NAME=float`` or ``NAME=w4a8`` / ``NAME=w4`` / ``NAME=a8``."""
    out = {}
    for item in items or []:
        if "=" not in item:
            raise ConfigError(f"--layer expects NAME=float or NAME=wXaY, got {item!r}")
        name, spec = item.split("=", 1)
        spec = spec.lower()
        if spec == "float":
            out[name] = {"keep_float": True}
            continue
        vals = {}
        for key, field in (("w", "weight_bits"), ("a", "activation_bits")):
            if key in spec:
                digits = spec.split(key, 1)[1]
                digits = digits[:1] if digits[:1].isdigit() else ""
                if not digits:
                    raise ConfigError(f"cannot read bit width in --layer {item!r}")
                vals[field] = int(digits)
        if not vals:
            raise ConfigError(f"--layer expects NAME=float or NAME=wXaY, got {item!r}")
        out[name] = vals
    return out


def floats(text: str, what: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise ConfigError(f"{what} must be comma-separated numbers, got {text!r}") from None


def calibration_arrays(args, model):
    """The calibration inputs named by --calib: a protocol set, a folder, a .npy/.npz or a .txt."""
    from . import data
    from .eval.sets import DEFAULT_SET, SETS

    source = args.calib or DEFAULT_SET.get(model.name)
    if source is None:
        raise ConfigError(f"model {model.name!r} has no default calibration set: pass --calib")
    if source in SETS:
        arrays = SETS[source].calibration()
    else:
        path = Path(source)
        if path.suffix in (".npy", ".npz"):
            arrays = data.load_named_arrays(path, model.input_names, args.npz_key)
        elif path.suffix == ".txt":
            if model.name != "minilm_l6":
                raise ConfigError(f"text calibration data needs a model with a tokenizer; {model.name!r} has none")
            from .zoo.minilm import encode_sentences
            arrays = tuple(t.numpy() for t in encode_sentences(data.load_text_file(path)))
        else:
            arrays = (data.load_image_folder(path, size=args.image_size, resize=args.resize,
                                             mean=floats(args.mean, "--mean"),
                                             std=floats(args.std, "--std")),)
    for a in arrays:
        if getattr(a, "ndim", 0) < 1:
            raise DataError(f"calibration data from {source} is a scalar, not a batch of samples")
    if args.calib_samples is not None:
        if args.calib_samples < 1:
            raise ConfigError(f"--calib-samples must be at least 1, got {args.calib_samples}")
        arrays = tuple(a[:args.calib_samples] for a in arrays)
    return arrays


def input_shapes(items):
    shapes = {}
    for item in items or []:
        name, _, dims = item.partition("=")
        try:
            shapes[name] = [int(d) for d in dims.split(",")]
        except ValueError:
            raise ConfigError(f"--input-shape expects NAME=D0,D1,..., got {item!r}") from None
    return shapes or None
