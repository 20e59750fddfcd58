"""The Python API: load a model, quantize it on calibration data, evaluate any variant.

    model = tvmptq.load("efficientnet_lite0")                 # zoo name or a path to .onnx
    qm = tvmptq.quantize(model, calib_arrays, tvmptq.make_config(4, 8, observer="auto"))
    outputs, metrics = tvmptq.evaluate(qm.runner(), tvmptq.get_set("photos"), reference)
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.fx as fx

from .errors import ConfigError, DataError, ShapeError
from .eval.sets import batch_size_for, batches, get_set, run_outputs, torch_runner
from .eval.metrics import sqnr_db
from .quant.calibrate import build_plan, check_overrides, collect_statistics
from .quant.graph import LayerGraph, build_layer_graph
from .quant.plan import QuantPlan
from .quant.report import format_report, layer_sqnr
from .quant.simulate import simulate
from .quant.spec import QuantConfig
from .util import peak_rss_mb
from .zoo import ZooModel, from_exported, from_onnx, get_model

OBSERVERS = ("minmax", "percentile", "mse")
AUTO_SELECT_SAMPLES = 64  # calibration samples used to pick the observer in "auto" mode
FLOAT32_EXACT_INT = 2 ** 24  # integer data fed to a float input is converted only where float32 is exact


def load(name_or_path: str, input_shapes=None) -> ZooModel:
    """A zoo model by name, a user ONNX file by path, or a ``.pt2`` file written by
    ``torch.export.save`` (exported with a dynamic batch or at a fixed one)."""
    suffix = Path(str(name_or_path)).suffix
    if suffix == ".onnx":
        return from_onnx(name_or_path, input_shapes=input_shapes)
    if suffix == ".pt2":
        if input_shapes:
            raise ConfigError("--input-shape applies to ONNX files; a .pt2 program carries its own shapes")
        return from_exported(name_or_path)
    return get_model(name_or_path)


@dataclass
class QuantizedModel:
    model: ZooModel
    graph: LayerGraph
    plan: QuantPlan
    simulated: fx.GraphModule
    observer_scores: dict[str, float] | None = None  # auto mode: calibration SQNR per observer

    def runner(self):
        return torch_runner(self.simulated)

    def report(self, arrays, batch_size: int = 16, max_samples: int = 32) -> str:
        arrays = check_inputs(self.model, tuple(a[:max_samples] for a in arrays))
        batch_size = batch_size_for(self.graph, batch_size)
        rows = layer_sqnr(self.graph, self.simulated, self.plan, batches(arrays, batch_size))
        return format_report(rows, self.plan)


def prepare(model: ZooModel, lookup_tables: bool = True) -> LayerGraph:
    """Export and analyse the float model once; reuse the result for several configs (with the
    same ``lookup_tables``: unary functions as integer tables, or as float islands). A model whose
    graph fixes its batch (``model.batch``) is captured at that batch."""
    batch = getattr(model, "batch", None)
    return build_layer_graph(model.build(), model.example_inputs(batch or 1), lookup_tables, batch)


def check_inputs(model: ZooModel, arrays) -> tuple[np.ndarray, ...]:
    """Clear errors for data that cannot feed the model (count, shape, dtype)."""
    from .data import check_finite_nonempty

    examples = model.example_inputs(1)
    if len(arrays) != len(examples):
        raise ShapeError(f"model {model.name!r} takes {len(examples)} input(s) "
                         f"({', '.join(model.input_names)}), got {len(arrays)}")
    out = []
    for name, arr, ex in zip(model.input_names, arrays, examples):
        arr = np.asarray(arr)
        if arr.dtype.kind not in "biuf":
            raise DataError(f"input {name!r} has non-numeric data (dtype {arr.dtype})")
        if arr.ndim < 1:
            raise ShapeError(f"input {name!r} is a scalar, not a batch of samples")
        if arr.size == 0:
            check_finite_nonempty(arr, f"input {name!r}")
        if tuple(arr.shape[1:]) != tuple(ex.shape[1:]):
            raise ShapeError(f"input {name!r} has per-sample shape {tuple(arr.shape[1:])}, "
                             f"model {model.name!r} expects {tuple(ex.shape[1:])}")
        if ex.is_floating_point():
            if arr.dtype.kind in "biu" and arr.size and np.abs(arr.astype(np.int64)).max() > FLOAT32_EXACT_INT:
                raise DataError(f"input {name!r} holds {arr.dtype} values up to {np.abs(arr).max()}, which float32 "
                                f"(what model {model.name!r} takes) cannot represent exactly; scale them first")
            arr = check_finite_nonempty(arr.astype(np.float32), f"input {name!r}")  # integers below 2^24: exact
        else:
            arr = arr.astype(torch.empty((), dtype=ex.dtype).numpy().dtype)
        out.append(arr)
    return tuple(out)


def _calibrate(model: ZooModel, calibration, graph, batch_size, progress, config: QuantConfig):
    """Checked inputs, the graph, streaming statistics, and what the pass cost. Per-layer overrides
    naming no layer fail here, before the calibration pass, not after it."""
    calibration = check_inputs(model, calibration)
    graph = graph or prepare(model, config.lookup_tables)
    check_overrides(graph, config)
    batch_size = batch_size_for(graph, batch_size)
    t0 = time.perf_counter()
    observers, samples = collect_statistics(graph, batches(calibration, batch_size), progress,
                                            config.real_tokens_only)
    return calibration, graph, observers, lambda: {
        "calibration_samples": samples, "calibration_seconds": time.perf_counter() - t0,
        "peak_rss_mb": peak_rss_mb()}


METHODS = ("baseline", "cwac", "qwt", "adaround", "brecq", "waps", "cle", "qft")
RECONSTRUCTION = ("adaround", "brecq", "waps")   # learn rounding/steps; refold the whole plan
COMPENSATION = ("cwac", "qwt")                    # fitted on the plan they are given
PRECONDITION = ("cle",)                           # recalibrates the equalized model: first only
FINETUNE = ("qft",)                               # trains all stored values of the plan it is given: last


def parse_method(method: str) -> list[str]:
    """``a+b``: methods applied left to right. A reconstruction method (it recomputes every
    multiplier from the learned step sizes, so it would discard a compensation fitted before it)
    comes first, then at most one compensation fitted on its result; "baseline" stands alone.
    ``cle`` (it recalibrates the equalized model from scratch) only stands alone or as ``cle+qft``;
    ``qft`` (it reads and trains every value the plan stores) comes last, after a reconstruction
    and/or ``cwac`` (not ``qwt``: its float branch is no integer value); ``qft`` alone means
    ``cle+qft`` (the baseline, closed-form CLE, then QFT)."""
    names = [m.strip() for m in str(method).split("+")]
    unknown = [m for m in names if m not in METHODS]
    if unknown:
        raise ConfigError(f"unknown method {', '.join(map(repr, unknown))} in {method!r}: choose from "
                          f"{', '.join(METHODS)} (combine as reconstruction+compensation+qft, e.g. brecq+cwac+qft)")
    if names == ["qft"]:
        return ["cle", "qft"]
    core = names[:-1] if names[-1] in FINETUNE else names
    bad = next((m for m in core if m in FINETUNE), None)
    if bad is None and "cle" in names and names not in (["cle"], ["cle", "qft"]):
        bad = "cle"
    if bad is None and "qwt" in core and core != names:
        bad = "qwt"
    if bad:
        raise ConfigError(f"methods {method!r} do not compose ({bad!r}): cle stands alone or as cle+qft (it "
                          "recalibrates the equalized model); qft comes last, after a reconstruction and/or cwac "
                          "(qwt's float branch is no integer value to train)")
    if len(core) > 1:
        recon = [m for m in core if m in RECONSTRUCTION]
        comp = [m for m in core if m in COMPENSATION]
        ok = ("baseline" not in core and len(recon) <= 1 and len(comp) <= 1
              and (not recon or core[0] == recon[0]))
        if not ok:
            raise ConfigError(f"methods {method!r} do not compose: a combination is one of "
                              f"{'/'.join(RECONSTRUCTION)} followed by one of {'/'.join(COMPENSATION)} "
                              "(a reconstruction refolds every multiplier, so it must come first), then qft")
    if "baseline" in names and len(names) > 1:
        raise ConfigError(f"methods {method!r} do not compose ('baseline' stands alone)")
    return names


def quantize(model: ZooModel, calibration, config: QuantConfig, graph: LayerGraph | None = None,
             batch_size: int = 32, progress: bool = True, method: str = "baseline",
             method_options: dict | None = None) -> QuantizedModel:
    """PTQ with the observer named in ``config`` (see ``quantize_auto`` to choose it).

    ``method``: "baseline"; "cwac" (QwT-v2 channel-wise affine compensation folded into the
    requantize multipliers and int32 biases, :mod:`tvmptq.algorithms.cwac`; options are
    :class:`~tvmptq.algorithms.cwac.CWACConfig` fields); "qwt" (QwT v1 per-block linear
    compensation, a declared float branch, :mod:`tvmptq.algorithms.qwt`)."""
    calibration, graph, observers, stats = _calibrate(model, calibration, graph, batch_size, progress, config)
    batch_size = batch_size_for(graph, batch_size)
    plan = build_plan(graph, observers, config, model.name, calibration, batch_size)
    plan.stats = stats()
    return apply_method(QuantizedModel(model, graph, plan, simulate(graph, plan)), calibration, method,
                        method_options, progress)


def apply_method(qm: QuantizedModel, calibration, method: str = "baseline", options: dict | None = None,
                 progress: bool = False) -> QuantizedModel:
    """Apply ``method`` (one name or ``a+b``, see :func:`parse_method`) to a quantized model (a new
    QuantizedModel). ``options``: fields of the methods' configs (CWACConfig, QwTConfig,
    ReconConfig, WAPSConfig), each method taking the ones it has."""
    names = parse_method(method)
    if qm.plan.model != qm.model.name:
        raise ConfigError(f"plan was made for model {qm.plan.model!r}; cannot apply {method!r} to {qm.model.name!r}")
    if names == ["baseline"]:
        qm.plan.config.setdefault("method", "baseline")
        return qm
    calibration = check_inputs(qm.model, calibration)
    options = dict(options or {})
    if "iters" in options and (not isinstance(options["iters"], int) or options["iters"] < 1):
        raise ConfigError(f"iters must be a positive integer, got {options['iters']!r}")
    if qm.graph.batch:  # the fits run the graph, which takes exactly this many samples per call
        options["batch_size"] = batch_size_for(qm.graph, 32)
    plan, sim = qm.plan, qm.simulated
    for name in names:
        plan, sim = _fit(name, qm, plan, calibration, options, progress)
    if len(names) > 1:
        plan.config["method"] = "+".join(names)
    return QuantizedModel(qm.model, qm.graph, plan, sim, qm.observer_scores)


def _fields(cls, options: dict) -> dict:
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in options.items() if k in names}


def _fit(name: str, qm: QuantizedModel, plan: QuantPlan, calibration, options: dict, progress: bool):
    if name == "cwac":
        from .algorithms.cwac import CWACConfig, fit_cwac
        opts = {"task": qm.model.task, **_fields(CWACConfig, options)}   # what select_by="task" ranks by
        return fit_cwac(qm.graph, plan, calibration, CWACConfig(**opts), progress)
    if name == "cle":
        from .algorithms.cle import fit_cle
        return fit_cle(qm.graph, plan, calibration, options.get("batch_size", 32), progress)
    if name == "qft":
        from .algorithms.qft import QFTConfig, fit_qft
        return fit_qft(qm.graph, plan, calibration, QFTConfig(**_fields(QFTConfig, options)), progress)
    if name == "qwt":
        from .algorithms.qwt import QwTConfig, fit_qwt
        return fit_qwt(qm.graph, plan, calibration, QwTConfig(**_fields(QwTConfig, options)), progress)
    from .algorithms.reconstruction import ReconConfig
    cfg = ReconConfig(**_fields(ReconConfig, options))
    if name == "adaround":
        from .algorithms.adaround import fit_adaround
        return fit_adaround(qm.graph, plan, calibration, dataclasses.replace(cfg, learn_act=options.get("learn_act", False)), progress)
    if name == "brecq":
        from .algorithms.brecq import fit_brecq
        return fit_brecq(qm.graph, plan, calibration, cfg, progress)
    from .algorithms.waps import WAPSConfig, fit_waps
    return fit_waps(qm.graph, plan, calibration, cfg, WAPSConfig(**_fields(WAPSConfig, options)), progress)


def select_observer(graph: LayerGraph, observers, config: QuantConfig, probe, batch_size: int = 32,
                    model_name: str = "model"):
    """Build a plan per activation observer from one set of statistics and keep the one whose
    simulated outputs best match FP32 (output SQNR) on ``probe``, a slice of calibration data.
    Returns (rule, plan, simulated module, {rule: SQNR dB})."""
    reference = run_outputs(torch_runner(graph.gm), probe, batch_size, "fp32", False)
    best, scores = None, {}
    for rule in OBSERVERS:
        cfg = dataclasses.replace(config, activation=dataclasses.replace(config.activation, rule=rule))
        plan = build_plan(graph, observers, cfg, model_name, probe, batch_size)
        sim = simulate(graph, plan)
        scores[rule] = sqnr_db(reference, run_outputs(torch_runner(sim), probe, batch_size, rule, False))
        if best is None or scores[rule] > scores[best[0]]:
            best = (rule, plan, sim)
    rule, plan, sim = best
    plan.config["observer_selected_by"] = "output SQNR vs FP32 on calibration data"
    plan.config["observer_scores_db"] = scores
    return rule, plan, sim, scores


def quantize_auto(model: ZooModel, calibration, config: QuantConfig, graph: LayerGraph | None = None,
                  batch_size: int = 32, progress: bool = True, method: str = "baseline",
                  method_options: dict | None = None) -> QuantizedModel:
    """PTQ with the activation observer chosen on calibration data only (never on evaluation
    data): see :func:`select_observer`; then ``method`` as in :func:`quantize`."""
    calibration, graph, observers, stats = _calibrate(model, calibration, graph, batch_size, progress, config)
    batch_size = batch_size_for(graph, batch_size)
    probe = tuple(a[:AUTO_SELECT_SAMPLES] for a in calibration)
    _, plan, sim, scores = select_observer(graph, observers, config, probe, batch_size, model.name)
    plan.stats = stats()
    return apply_method(QuantizedModel(model, graph, plan, sim, scores), calibration, method,
                        method_options, progress)


def from_plan(model: ZooModel, plan: QuantPlan, graph: LayerGraph | None = None) -> QuantizedModel:
    """Rebuild the simulation of a saved plan (the plan is the single source of truth)."""
    graph = graph or prepare(model, bool(plan.config.get("lookup_tables", False)))  # older plans: islands
    names = {layer.name for layer in graph.layers}
    missing = [layer.name for layer in plan.layers if layer.name not in names and layer.kind != "layernorm"]
    if missing or plan.model != model.name:
        raise ConfigError(f"plan was made for model {plan.model!r}; it does not fit {model.name!r}"
                          + (f" (unknown layers: {', '.join(missing[:5])})" if missing else ""))
    return QuantizedModel(model, graph, plan, simulated_plan(graph, plan))


def simulated_plan(graph: LayerGraph, plan: QuantPlan) -> fx.GraphModule:
    """The simulation of any plan, including the float branches of a QwT v1 plan."""
    if plan.config.get("method") == "qwt":
        from .algorithms.qwt import attach_branches
        return attach_branches(graph, plan, simulate(graph, plan))
    return simulate(graph, plan)


def fp32_outputs(model: ZooModel, arrays, graph: LayerGraph | None = None, batch_size: int = 32,
                 progress: bool = True) -> np.ndarray:
    module = graph.gm if graph is not None else model.build()
    batch_size = batch_size_for(graph, batch_size) if graph is not None else (
        batch_size_for(model, batch_size))
    return run_outputs(torch_runner(module), arrays, batch_size, "fp32", progress)


__all__ = ["load", "prepare", "quantize", "quantize_auto", "apply_method", "parse_method", "METHODS", "simulated_plan", "select_observer", "from_plan", "fp32_outputs",
           "QuantizedModel", "check_inputs", "get_set"]
