"""The quantization plan: the single, serializable source of truth for every later stage.

It holds every quantized tensor (scale, zero point, bits, integer grid) and every integer layer
(integer weights, per-channel scales, int32 bias, fixed-point requantize multiplier and shift,
output clip bounds with the fused activation). The PyTorch simulation, the NumPy reference and
the Relax lowering read only this. Saved as one ``.npz``: arrays plus a JSON header.
"""
from __future__ import annotations

import io
import json
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..errors import DataError

PLAN_FORMAT = "tvmptq-plan/1"
ROUNDING = {
    "float_to_int": "round half to even, then clip to the grid",
    "requantize": "(acc * m + 2^(k-1)) >> k, arithmetic shift (round half up), int64",
    "weight_grid": "symmetric narrow [-(2^(b-1)-1), 2^(b-1)-1]; 2-bit = {-1, 0, 1}",
    "activation_grid": "asymmetric [0, 2^b-1] with zero point, or symmetric [-2^(b-1), 2^(b-1)-1]",
}


@dataclass
class TensorQuant:
    """A quantized activation tensor: real = scale * (q - zero_point), q in [qmin, qmax]."""

    name: str
    scale: float
    zero_point: int
    bits: int
    qmin: int
    qmax: int
    observed: tuple[float, float] = (0.0, 0.0)  # calibration min/max, for the report


@dataclass
class LayerPlan:
    """One integer op. Arrays (weight, bias, multiplier, shift, ...) live in ``arrays``."""

    name: str
    kind: str                 # conv2d | linear | matmul | add | mean | mul_const | cat
    inputs: list[str]         # quantized input tensor names
    output: str               # quantized output tensor name
    clip: tuple[int, int]     # output clip bounds on the output grid (fused activation)
    activation: str = "none"
    weight_bits: int | None = None
    keep_float: bool = False  # computed in float on dequantized inputs (reported)
    attrs: dict = field(default_factory=dict)
    arrays: dict[str, np.ndarray] = field(default_factory=dict, repr=False)


@dataclass
class QuantPlan:
    model: str
    config: dict
    tensors: dict[str, TensorQuant]
    layers: list[LayerPlan]
    float_islands: list[str]       # ops left in float on purpose (declared islands), by name
    inputs: list[str]              # model inputs that are quantized on entry
    rounding: dict = field(default_factory=lambda: dict(ROUNDING))
    stats: dict = field(default_factory=dict)  # calibration facts (samples, seconds, peak RSS)
    program: list[dict] = field(default_factory=list)  # ordered steps (see program.py)
    constants: dict[str, np.ndarray] = field(default_factory=dict, repr=False)  # arrays the steps use
    # Facts of this run that differ between identical runs (wall times, RSS): never saved, so
    # the same seed and data write a byte-identical file.
    run_info: dict = field(default_factory=dict, repr=False, compare=False)

    def layer(self, name: str) -> LayerPlan:
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise KeyError(name)

    @property
    def float_layers(self) -> list[str]:
        return [layer.name for layer in self.layers if layer.keep_float]

    # -- serialization -------------------------------------------------------------------
    def save(self, path) -> Path:
        path = Path(path)
        if path.suffix != ".npz":
            path = path.with_suffix(".npz")
        header = {
            "format": PLAN_FORMAT, "model": self.model, "config": self.config,
            "tensors": {k: asdict(v) for k, v in self.tensors.items()},
            "layers": [{k: v for k, v in asdict(layer).items() if k != "arrays"} | {
                "array_keys": sorted(layer.arrays)} for layer in self.layers],
            "float_islands": self.float_islands, "inputs": self.inputs,
            "rounding": self.rounding, "stats": self.stats, "program": self.program,
        }
        arrays = {f"{layer.name}/{k}": v for layer in self.layers for k, v in layer.arrays.items()}
        arrays.update({f"const/{k}": v for k, v in self.constants.items()})
        arrays["__header__"] = np.frombuffer(json.dumps(header).encode(), dtype=np.uint8)
        path.parent.mkdir(parents=True, exist_ok=True)
        # np.savez stamps each member with the current time; fixed stamps keep equal plans equal bytes
        with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
            for key, value in arrays.items():
                buf = io.BytesIO()
                np.lib.format.write_array(buf, np.asarray(value), allow_pickle=False)
                zf.writestr(zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0)), buf.getvalue())
        return path

    @classmethod
    def load(cls, path) -> "QuantPlan":
        path = Path(path)
        if not path.is_file():
            raise DataError(f"plan file not found: {path}")
        try:
            with np.load(path, allow_pickle=False) as data:
                header = json.loads(bytes(data["__header__"]).decode())
                arrays = {k: data[k] for k in data.files if k != "__header__"}
        except Exception as err:
            raise DataError(f"cannot read plan file {path}: {err}") from err
        if header.get("format") != PLAN_FORMAT:
            raise DataError(f"{path} is not a {PLAN_FORMAT} file")
        tensors = {k: TensorQuant(**{**v, "observed": tuple(v["observed"])})
                   for k, v in header["tensors"].items()}
        layers = []
        for d in header["layers"]:
            keys = d.pop("array_keys")
            d["clip"] = tuple(d["clip"])
            layers.append(LayerPlan(**d, arrays={k: arrays[f"{d['name']}/{k}"] for k in keys}))
        consts = {k[len("const/"):]: v for k, v in arrays.items() if k.startswith("const/")}
        return cls(header["model"], header["config"], tensors, layers, header["float_islands"],
                   header["inputs"], header["rounding"], header["stats"], header.get("program", []), consts)
