"""Calibration: stream data through the float graph, then turn statistics into a plan."""
from __future__ import annotations

import dataclasses
import warnings
from typing import Iterable

import numpy as np
import torch
import torch.fx as fx
from tqdm.auto import tqdm

from ..errors import ConfigError, DataError
from .fixedpoint import quantize_multiplier, shared_shift_multipliers
from .graph import Layer, LayerGraph
from .edge_ops import bilinear_arrays
from .int_softmax import add_integer_softmax
from .lut import build_table
from .observers import HistogramObserver
from .plan import LayerPlan, QuantPlan, TensorQuant
from .program import build_program
from .ranges import activation_range, weight_scales
from .spec import QuantConfig, check_bits
from .tensor_groups import expand_tensor_bits
from .token_mask import mask_from_inputs, real_token_entries

INT32 = (-(2 ** 31), 2 ** 31 - 1)


class _Recorder(fx.Interpreter):
    """Runs the float graph and feeds the observers of the quantization points."""

    def __init__(self, gm, observers):
        super().__init__(gm)
        self.observers = observers
        self.token_mask = None  # real tokens of the current batch (token_mask.py), or None

    def run_node(self, n):
        out = super().run_node(n)
        if n.name in self.observers:
            self.observers[n.name].update(real_token_entries(out, self.token_mask))
        return out


def collect_statistics(graph: LayerGraph, batches: Iterable[tuple], progress: bool = True,
                       real_tokens_only: bool = False) -> tuple[dict[str, HistogramObserver], int]:
    """One pass over the calibration data; memory does not grow with the number of samples.
    ``real_tokens_only`` (with an ``attention_mask`` input): ranges observed on real tokens only
    (token_mask.py)."""
    observers = {name: HistogramObserver(name) for name in graph.quant_points}
    recorder = _Recorder(graph.gm, observers)
    placeholders = [n.name for n in graph.gm.graph.nodes if n.op == "placeholder"]
    samples = 0
    with torch.no_grad():
        for batch in tqdm(batches, desc="calibrate", unit="batch", disable=not progress, leave=False):
            batch = tuple(torch.as_tensor(b) for b in batch)
            for b in batch:
                if b.numel() == 0:
                    raise DataError("calibration batch is empty")
                if b.is_floating_point() and not torch.isfinite(b).all():
                    raise DataError(f"calibration data has {int((~torch.isfinite(b)).sum())} NaN/Inf values")
            recorder.token_mask = mask_from_inputs(placeholders, batch) if real_tokens_only else None
            recorder.run(*batch)
            samples += batch[0].shape[0]
    if samples == 0:
        raise DataError("no calibration data: the calibration set is empty")
    return observers, samples


def _tensor_bits(graph: LayerGraph, config: QuantConfig, explicit: dict[str, int]) -> dict[str, int]:
    """Every quantized tensor's activation width; ``explicit``: config.tensor_bits expanded to tensors."""
    bits = {name: config.activation.bits for name in graph.quant_points}
    for layer in graph.layers:
        ovr = config.override_for(layer.name)
        if ovr and ovr.activation_bits:
            bits[graph.tensor_of(layer.out_node)] = check_bits(ovr.activation_bits, "activation")
    if config.first_last_8bit:
        kernels = [lay for lay in graph.layers if lay.weight is not None]
        if kernels:
            for lay in (kernels[0], kernels[-1]):
                for a in lay.inputs:
                    bits[graph.tensor_of(a)] = 8
            bits[graph.tensor_of(kernels[-1].out_node)] = 8
    bits.update(explicit)  # explicit per-tensor widths win
    return bits


def _weight_bits(layer: Layer, graph: LayerGraph, config: QuantConfig) -> int:
    ovr = config.override_for(layer.name)
    if ovr and ovr.weight_bits:
        return check_bits(ovr.weight_bits, "weight")
    if config.first_last_8bit:
        kernels = [lay for lay in graph.layers if lay.weight is not None]
        if layer is kernels[0] or layer is kernels[-1]:
            return 8
    return config.weight.bits


def _clip(layer: Layer, out: TensorQuant) -> tuple[int, int]:
    lo, hi = out.qmin, out.qmax
    if layer.act_range is not None:
        a, b = layer.act_range
        if np.isfinite(a):
            lo = max(lo, out.zero_point + int(np.round(a / out.scale)))
        if np.isfinite(b):
            hi = min(hi, out.zero_point + int(np.round(b / out.scale)))
    return lo, hi


def _layer_plan(layer: Layer, graph: LayerGraph, tensors: dict, config: QuantConfig) -> LayerPlan:
    ins = [graph.tensor_of(a) for a in layer.inputs]
    out = tensors[graph.tensor_of(layer.out_node)]
    ovr = config.override_for(layer.name)
    plan = LayerPlan(layer.name, layer.kind, ins, out.name, _clip(layer, out), layer.activation,
                     attrs=dict(layer.attrs))
    arr = plan.arrays
    if layer.weight is not None:
        s_x = float(tensors[ins[0]].scale)
        if ovr and ovr.keep_float:
            plan.keep_float = True
            arr["weight_float"] = layer.weight.astype(np.float32)
            if layer.bias is not None:
                arr["bias_float"] = layer.bias.astype(np.float32)
            return plan
        bits = _weight_bits(layer, graph, config)
        plan.weight_bits = bits
        s_w = weight_scales(layer.weight, config.weight, bits)
        qmax = 2 ** (bits - 1) - 1
        shape = (-1,) + (1,) * (layer.weight.ndim - 1)
        w_int = np.clip(np.round(layer.weight / s_w.reshape(shape)), -qmax, qmax).astype(np.int8)
        acc_scale = s_x * s_w.astype(np.float64)
        bias = layer.bias if layer.bias is not None else np.zeros(len(s_w))
        arr["weight"] = w_int
        arr["weight_scale"] = s_w
        bias_q = np.round(bias / acc_scale)
        clipped = int(np.sum((bias_q < INT32[0]) | (bias_q > INT32[1])))
        if clipped:  # reported, never silent: the bias no longer equals the float bias there
            plan.attrs["bias_clipped_channels"] = clipped
        arr["bias"] = np.clip(bias_q, *INT32).astype(np.int32)
        arr["multiplier"], arr["shift"] = quantize_multiplier(acc_scale / float(out.scale))
    elif layer.kind in ("matmul", "mul"):
        real = float(tensors[ins[0]].scale) * float(tensors[ins[1]].scale) / float(out.scale)
        arr["multiplier"], arr["shift"] = quantize_multiplier(real)
    elif layer.kind in ("add", "cat"):
        m, k = shared_shift_multipliers([float(tensors[i].scale) / float(out.scale) for i in ins])
        arr["multiplier"], arr["shift"] = m, np.array([k], dtype=np.int64)
    elif layer.kind == "avg_pool":  # the window sum times s_in / (s_out * divisor)
        real = float(tensors[ins[0]].scale) / (float(out.scale) * layer.attrs["count"])
        arr["multiplier"], arr["shift"] = quantize_multiplier(real)
    elif layer.kind == "bilinear":  # sum of wh * ww * (q - z), times s_in / (s_out * Dh * Dw)
        arr.update(bilinear_arrays(layer.attrs))
        dh, dw = layer.attrs["denominators"]
        arr["multiplier"], arr["shift"] = quantize_multiplier(float(tensors[ins[0]].scale) / (float(out.scale) * dh * dw))
    elif layer.kind == "prelu":  # x >= 0: s_in / s_out; x < 0: alpha_c s_in / s_out (sign in the multiplier)
        ratio = float(tensors[ins[0]].scale) / float(out.scale)
        arr["multiplier_pos"], arr["shift_pos"] = quantize_multiplier(ratio)
        alpha = np.asarray(layer.attrs["alpha"], np.float64)
        m, k = quantize_multiplier(np.abs(alpha) * ratio)
        arr["multiplier"], arr["shift"] = m * np.where(alpha < 0, -1, 1), k
    elif layer.kind == "mean":
        shape = layer.inputs[0].meta["val"].shape
        count = int(np.prod([shape[d] for d in layer.attrs["dims"]]))
        plan.attrs["count"] = count
        real = float(tensors[ins[0]].scale) / (float(out.scale) * count)
        arr["multiplier"], arr["shift"] = quantize_multiplier(real)
    elif layer.kind == "lut":  # integer lookup table (lut.py); kept in float: the island itself
        plan.keep_float = bool(ovr and ovr.keep_float)
        if not plan.keep_float:
            arr["table"] = build_table(layer.attrs["function"], layer.attrs["function_attrs"],
                                       tensors[ins[0]], out, plan.clip)
    elif layer.kind == "mul_const":
        factor = layer.attrs["factor"]
        m, k = quantize_multiplier(abs(factor) * float(tensors[ins[0]].scale) / float(out.scale))
        arr["multiplier"], arr["shift"] = m * int(np.sign(factor) or 1), k
    return plan


def _integer_softmaxes(plan: QuantPlan, graph: LayerGraph) -> list[str]:
    """int_softmax's islands: the softmax steps that stay float, each with the reason."""
    return [f"{step} (input not a quantized tensor plus a keep/drop mask, or output not quantized)"
            for step in add_integer_softmax(plan, graph)]


def _integer_layernorms(plan: QuantPlan, graph: LayerGraph) -> list[str]:
    """int_layernorm.convert: the LayerNorms that stay float, each with its reason."""
    from .int_layernorm import convert
    convert(plan)
    return [f"{name} ({why})" for name, why in plan.config.get("float_layernorms", {}).items()]


def add_integer_islands(plan: QuantPlan, graph: LayerGraph, names: tuple[str, ...]) -> None:
    """Record the integer islands ``names`` in the plan; islands that stay float are named in
    ``config["integer_islands_float"]`` and warned about."""
    implemented = {"softmax": _integer_softmaxes, "layernorm": _integer_layernorms}
    missing = [n for n in names if n not in implemented]
    if missing:
        raise ConfigError(f"integer island(s) {', '.join(missing)} not implemented in this version "
                          f"(implemented: {', '.join(implemented)})")
    left = [step for n in names for step in implemented[n](plan, graph)]
    plan.config["integer_islands"] = list(names)
    if left:
        plan.config["integer_islands_float"] = left
        warnings.warn(f"integer islands left float: {', '.join(left)}")


def check_overrides(graph: LayerGraph, config: QuantConfig) -> dict[str, int]:
    """Fails on an override or tensor width naming no layer, tensor or group; returns config.tensor_bits
    expanded to tensor names (tensor_groups.expand_tensor_bits)."""
    names = [layer.name for layer in graph.layers]
    unknown = [k for k, _ in config.overrides if k not in names]
    if unknown:
        raise ConfigError(f"per-layer override for unknown layer(s) {', '.join(map(repr, unknown))}; "
                          f"layers are: {', '.join(names[:12])}{', ...' if len(names) > 12 else ''}")
    return expand_tensor_bits(graph, config.tensor_bits)  # unknown tensor or group names fail here


def model_output_tensors(graph: LayerGraph) -> set[str]:
    """Quantized tensors the model returns (directly or through data movement)."""
    out = next(n for n in graph.gm.graph.nodes if n.op == "output")
    return {graph.source[n.name] for n in out.all_input_nodes if n.name in graph.source}


def build_plan(graph: LayerGraph, observers: dict[str, HistogramObserver], config: QuantConfig,
               model_name: str = "model", calibration=None, batch_size: int = 32) -> QuantPlan:
    """The plan for ``config`` from calibration statistics. With ``calibration`` (input arrays)
    and ``config.bias_correction``, biases are corrected on its first samples; the plan's config
    records whether that happened."""
    bits = _tensor_bits(graph, config, check_overrides(graph, config))
    tensors = {}
    outputs = model_output_tensors(graph)
    for name, obs in observers.items():
        # Clipping rules never apply to model outputs: clipping the largest logits ties the very
        # values argmax and softmax rank, so outputs keep their observed range.
        spec = dataclasses.replace(config.activation, rule="minmax") if name in outputs else config.activation
        scale, zero, qmin, qmax = activation_range(obs, spec, bits[name])
        tensors[name] = TensorQuant(name, float(scale), zero, bits[name], qmin, qmax,
                                    (float(obs.min), float(obs.max)))
    layers = [_layer_plan(layer, graph, tensors, config) for layer in graph.layers]
    cfg = {"weight_bits": config.weight.bits, "weight_rule": config.weight.rule,
           "activation_bits": config.activation.bits, "observer": config.activation.rule,
           "symmetric": config.activation.symmetric, "percentile": config.activation.percentile,
           "first_last_8bit": config.first_last_8bit, "lookup_tables": config.lookup_tables,
           "real_tokens_only": config.real_tokens_only,
           "overrides": {k: vars(v) for k, v in config.overrides}, "name": config.name}
    if config.tensor_bits:  # recorded (and reported by name) only when used: older plans stay byte-identical
        cfg["tensor_bits"] = dict(config.tensor_bits)
    program, constants = build_program(graph)
    plan = QuantPlan(model_name, cfg, tensors, layers, [n.name for n in graph.islands],
                     [n for n in graph.input_names if n in tensors], program=program, constants=constants)
    if config.integer_islands:  # before bias correction (it corrects what runs); recorded only when
        add_integer_islands(plan, graph, config.integer_islands)  # used: older plans stay byte-identical
    plan.config["bias_correction"] = False
    if graph.batch:  # the graph fixes its batch size: the program is compiled at that batch
        plan.config["fixed_batch"] = int(graph.batch)
    if config.bias_correction and calibration is not None:
        from ..eval.sets import batches
        from .bias_correction import SAMPLES, correct_biases
        correct_biases(graph, plan, batches(tuple(a[:SAMPLES] for a in calibration), batch_size),
                       config.real_tokens_only)
    return plan
