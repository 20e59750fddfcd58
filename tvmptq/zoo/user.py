"""Bring a user's model into the pipeline as a zoo-like entry: a PyTorch module or an ONNX file.

ONNX files are converted to PyTorch with onnx2torch, so that every model reaches the quantizer
through the same `torch.export` route as the built-in zoo.
"""
from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import inspect
import sys
import types
from pathlib import Path
from typing import Mapping, Sequence

import torch
from torch import nn

from tvmptq.errors import ModelError, ShapeError, UnsupportedOpError
from tvmptq.zoo.entry import ZooModel


# --------------------------------------------------------------------------------------------
# PyTorch modules
# --------------------------------------------------------------------------------------------


def _take_batch(tensors: tuple[torch.Tensor, ...], batch: int) -> tuple[torch.Tensor, ...]:
    """The example tensors with dim 0 cycled or cut to `batch` rows (row i is example row i % n)."""
    n = tensors[0].shape[0]
    if batch == n:
        return tensors
    rows = torch.arange(batch) % n
    return tuple(t[rows] for t in tensors)


def _forward_argument_names(module: nn.Module, count: int) -> tuple[str, ...]:
    try:
        params = [
            p.name
            for p in inspect.signature(module.forward).parameters.values()
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
        ]
    except (TypeError, ValueError):
        params = []
    if len(params) >= count:
        return tuple(params[:count])
    return tuple(f"input_{i}" for i in range(count))


def _check_runs(module: nn.Module, inputs: tuple[torch.Tensor, ...], what: str) -> None:
    try:
        with torch.no_grad():
            module(*inputs)
    except Exception as exc:  # any failure of user code is a model problem for us
        shapes = ", ".join(f"{tuple(t.shape)} {t.dtype}" for t in inputs)
        raise ModelError(f"{what} does not run on the example inputs ({shapes}): {type(exc).__name__}: {exc}") from exc


def from_module(
    module: nn.Module,
    example_inputs: torch.Tensor | Sequence[torch.Tensor],
    name: str | None = None,
    task: str = "classification",
    description: str = "",
) -> ZooModel:
    """Wrap a user nn.Module. It is put in eval mode and must run on `example_inputs`.

    `build()` returns this same module object (not a copy). `example_inputs(batch)` repeats or
    cuts the given examples along dim 0, so all example tensors must share their batch dim.
    """
    if not isinstance(module, nn.Module):
        raise ModelError(f"expected a torch.nn.Module, got {type(module).__name__}")
    inputs = (example_inputs,) if isinstance(example_inputs, torch.Tensor) else tuple(example_inputs)
    if not inputs or not all(isinstance(t, torch.Tensor) for t in inputs):
        raise ModelError("example_inputs must be a tensor or a non-empty sequence of tensors")
    if any(t.dim() == 0 for t in inputs) or len({t.shape[0] for t in inputs}) != 1:
        raise ShapeError(
            "example_inputs must all have the same batch size in dim 0, got shapes "
            + ", ".join(str(tuple(t.shape)) for t in inputs)
        )
    name = name or type(module).__name__
    module.eval()
    _check_runs(module, inputs, f"model {name!r}")
    return ZooModel(
        name=name,
        task=task,
        build=lambda: module,
        example_inputs=lambda batch: _take_batch(inputs, batch),
        input_names=_forward_argument_names(module, len(inputs)),
        description=description or f"user PyTorch module {type(module).__name__}",
    )


# --------------------------------------------------------------------------------------------
# ONNX files
# --------------------------------------------------------------------------------------------


def _unsupported_torchvision_op(op_name: str):
    def unsupported(*args, **kwargs):
        raise UnsupportedOpError(
            f"torchvision.ops.{op_name} is needed by this model (ONNX NonMaxSuppression/RoiAlign), "
            "but torchvision is not installed (no CPU build of it is available from PyPI)"
        )

    return unsupported


def _torchvision_stub() -> types.ModuleType:
    torchvision = types.ModuleType("torchvision")
    ops = types.ModuleType("torchvision.ops")
    for op_name in ("nms", "roi_align", "box_convert"):
        setattr(ops, op_name, _unsupported_torchvision_op(op_name))
    torchvision.ops = ops
    # A real spec, so importlib.util.find_spec() does not raise while the stub is in sys.modules.
    torchvision.__spec__ = importlib.machinery.ModuleSpec("torchvision", loader=None)
    ops.__spec__ = importlib.machinery.ModuleSpec("torchvision.ops", loader=None)
    return torchvision


def _import_onnx2torch():
    """Import onnx2torch, working around its hard dependency on torchvision.

    onnx2torch imports torchvision at import time, only for its NonMaxSuppression and RoiAlign
    converters. PyPI has only CUDA builds of torchvision, which fail to load next to our CPU
    torch, so torchvision is deliberately not installed. Without it, `import onnx2torch` fails
    for every model. We therefore put a minimal stand-in (torchvision.ops.nms / roi_align /
    box_convert raising UnsupportedOpError) into sys.modules for the duration of the import only,
    then remove it again: onnx2torch keeps its own reference, and other libraries (transformers
    probes `find_spec("torchvision")`) keep seeing that torchvision is absent.
    """
    if "onnx2torch" in sys.modules:
        return sys.modules["onnx2torch"]
    if importlib.util.find_spec("torchvision") is not None:
        try:
            importlib.import_module("torchvision")
            return importlib.import_module("onnx2torch")
        except Exception:
            # A torchvision built for another torch fails half-way; forget its partial modules.
            for mod_name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
                del sys.modules[mod_name]
    stub = _torchvision_stub()
    sys.modules["torchvision"], sys.modules["torchvision.ops"] = stub, stub.ops
    try:
        return importlib.import_module("onnx2torch")
    finally:
        del sys.modules["torchvision"], sys.modules["torchvision.ops"]


def _onnx2torch():
    """onnx2torch with our export-friendly converters installed (see onnx_converters.py)."""
    from tvmptq.zoo import onnx_converters

    module = _import_onnx2torch()
    onnx_converters.install()
    return module


def _load_onnx(path: Path):
    import onnx

    if not path.is_file():
        raise ModelError(f"ONNX file not found: {path}")
    try:
        model = onnx.load(str(path))  # also loads external data (weights in <file>.data)
    except Exception as exc:
        raise ModelError(f"cannot read ONNX file {path}: {type(exc).__name__}: {exc}") from exc
    try:
        # Checking by path also works for models above 2 GB and with external data.
        onnx.checker.check_model(str(path))
    except Exception as exc:
        raise ModelError(f"invalid ONNX model {path}: {type(exc).__name__}: {exc}") from exc
    return model


def _normalised_domain(domain: str) -> str:
    return "" if domain == "ai.onnx" else domain


def _find_unsupported_node(model, path: Path) -> None:
    """Raise UnsupportedOpError for the first node onnx2torch has no converter for."""
    from onnx2torch.node_converters import get_converter

    opsets = {_normalised_domain(o.domain): o.version for o in model.opset_import}
    for index, node in enumerate(model.graph.node):
        domain = _normalised_domain(node.domain)
        op = f"{domain}::{node.op_type}" if domain else node.op_type
        where = f"node {node.name!r} (#{index})" if node.name else f"node #{index}"
        if domain not in opsets:
            raise UnsupportedOpError(
                f"{path.name}: operator {op} at {where} uses domain {domain!r}, which the model does not import"
            )
        try:
            get_converter(operation_type=node.op_type, version=opsets[domain], domain=domain)
        except NotImplementedError:
            raise UnsupportedOpError(
                f"{path.name}: unsupported operator {op} at {where}, opset {opsets[domain]}: "
                "onnx2torch has no converter for it"
            ) from None


def _node_being_converted(traceback) -> str:
    """Name the ONNX node onnx2torch.convert was working on when it raised (from its frame locals)."""
    node = None
    while traceback is not None:
        frame = traceback.tb_frame
        if frame.f_code.co_name == "convert" and "onnx2torch" in frame.f_code.co_filename:
            node = frame.f_locals.get("onnx_node")
        traceback = traceback.tb_next
    if node is None:
        return "an operator"
    domain = _normalised_domain(node.domain)
    return f"operator {domain + '::' if domain else ''}{node.operation_type} at node {node.name or node.unique_name!r}"


def _fold_shape_ops(node) -> bool | None:
    # onnxscript keeps ConstantOfShape unfolded by default (to keep files small), but the legacy
    # exporter builds Pad amounts from it; fold it too. None = onnxscript's default rules.
    return True if node.op_type == "ConstantOfShape" and node.domain in ("", "ai.onnx") else None


def _specialise_and_fold(model, templates):
    """A copy of `model` with the concrete input shapes written in and its constants folded.

    With static shapes, the exporters' shape arithmetic (Shape -> Gather -> Concat -> Reshape, the
    legacy exporter's Pad amounts) folds into constants, which our converters turn into plain
    Python ints that torch.export can trace. Only constant folding is done (no fusions), so the
    graph keeps the user's operators. If folding fails on some exotic graph, we convert the
    unfolded graph rather than refuse the model.
    """
    import onnx
    import onnx_ir
    import onnx_ir.passes.common
    from onnxscript.optimizer import fold_constants_ir

    specialised = onnx.ModelProto()
    specialised.CopyFrom(model)
    shapes = {name: shape for name, shape, _ in templates}
    for value in specialised.graph.input:
        if value.name in shapes:
            for dim, size in zip(value.type.tensor_type.shape.dim, shapes[value.name]):
                dim.Clear()
                dim.dim_value = size
    try:
        ir_model = onnx_ir.serde.deserialize_model(specialised)
        fold_constants_ir(ir_model, onnx_shape_inference=True, should_fold=_fold_shape_ops)
        onnx_ir.passes.common.RemoveUnusedNodesPass()(ir_model)
        return onnx_ir.serde.serialize_model(ir_model)
    except Exception:
        return specialised


def _convert(model, path: Path, templates) -> nn.Module:
    from tvmptq.zoo import onnx_converters

    onnx2torch = _onnx2torch()
    onnx_converters.alias_newer_versions(model)
    _find_unsupported_node(model, path)
    model = _specialise_and_fold(model, templates)
    try:
        # Pass the loaded proto, not the path: given a path, onnx2torch writes a temporary file next
        # to the model, which fails in read-only folders.
        module = onnx2torch.convert(model)
    except NotImplementedError as exc:
        # Converters refuse some attribute values (e.g. unusual Resize modes) only at conversion time.
        raise UnsupportedOpError(
            f"{path.name}: onnx2torch cannot convert {_node_being_converted(exc.__traceback__)}: {exc}"
        ) from exc
    except Exception as exc:
        raise ModelError(
            f"{path.name}: onnx2torch failed on {_node_being_converted(exc.__traceback__)}: "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    return module.float().eval()


def _graph_inputs(model) -> list:
    """The graph's real inputs (old exporters also list the initializers as inputs)."""
    initializers = {init.name for init in model.graph.initializer}
    return [value for value in model.graph.input if value.name not in initializers]


def _input_templates(model, path: Path, input_shapes: Mapping[str, Sequence[int]] | None):
    """-> [(name, concrete shape, torch dtype)] for every graph input."""

    input_shapes = dict(input_shapes or {})
    templates = []
    for value in _graph_inputs(model):
        tensor_type = value.type.tensor_type
        if not value.type.HasField("tensor_type"):
            raise ModelError(f"{path.name}: input {value.name!r} is not a tensor")
        dims = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in tensor_type.shape.dim]
        if value.name in input_shapes:
            shape = tuple(int(s) for s in input_shapes.pop(value.name))
            if len(shape) != len(dims) or any(d is not None and d != s for d, s in zip(dims, shape)):
                raise ShapeError(
                    f"{path.name}: shape {shape} given for input {value.name!r} does not fit its ONNX shape "
                    f"{_describe_dims(tensor_type)}"
                )
        elif dims and dims[0] is None and all(d is not None for d in dims[1:]):
            shape = (1,) + tuple(dims[1:])  # a dynamic batch needs no shape: converted at batch 1
        elif any(d is None for d in dims):
            raise ShapeError(
                f"{path.name}: input {value.name!r} has dynamic dims {_describe_dims(tensor_type)}; pass "
                f"--input-shape {value.name}=D0,D1,... (API: input_shapes={{{value.name!r}: (...)}}) with a concrete shape"
            )
        else:
            shape = tuple(dims)
        dtype = _torch_dtype(tensor_type.elem_type, value.name, path)
        templates.append((value.name, shape, dtype))
    if input_shapes:
        raise ShapeError(f"{path.name}: input_shapes names unknown inputs {sorted(input_shapes)}")
    return templates


def _torch_dtype(onnx_elem_type: int, input_name: str, path: Path) -> torch.dtype:
    import numpy as np
    import onnx

    try:
        return torch.from_numpy(np.zeros(0, dtype=onnx.helper.tensor_dtype_to_np_dtype(onnx_elem_type))).dtype
    except Exception:
        type_name = onnx.TensorProto.DataType.Name(onnx_elem_type) if onnx_elem_type else "undefined"
        raise ModelError(f"{path.name}: input {input_name!r} has element type {type_name}, which tvmptq cannot feed") from None


def _describe_dims(tensor_type) -> str:
    return "(" + ", ".join(str(d.dim_value) if d.HasField("dim_value") else (d.dim_param or "?") for d in tensor_type.shape.dim) + ")"


def _example_tensor(shape: tuple[int, ...], dtype: torch.dtype, generator: torch.Generator) -> torch.Tensor:
    if dtype.is_floating_point:
        return torch.randn(shape, generator=generator).to(dtype)
    if dtype == torch.bool:
        return torch.ones(shape, dtype=dtype)
    # Integer inputs are usually indices (token ids, ...) or masks: 0 is valid for both.
    return torch.zeros(shape, dtype=dtype)


def _outputs(module: nn.Module, inputs) -> list[torch.Tensor]:
    with torch.no_grad():
        out = module(*inputs)
    return [out] if isinstance(out, torch.Tensor) else [t for t in out if isinstance(t, torch.Tensor)]


def _runs_at_other_batch_sizes(module: nn.Module, make_inputs, batch_size: int) -> bool:
    """Whether the module also works at batch_size + 1, with rows computed independently.

    The converted module was specialised to one batch size; the pipeline exports it with a dynamic
    batch. We accept other batch sizes only if, for inputs extended by one row, the outputs have one
    more row and the first rows are unchanged.
    """
    extended = make_inputs(batch_size + 1)
    try:
        small = _outputs(module, tuple(t[:batch_size] if t.dim() else t for t in extended))
        large = _outputs(module, extended)
    except Exception:
        return False
    return len(small) == len(large) and all(
        b.dim() > 0 and b.shape[0] == batch_size + 1 and torch.allclose(b[:batch_size], a, rtol=1e-4, atol=1e-5)
        for a, b in zip(small, large)
    )


def from_onnx(
    path: str | Path,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    name: str | None = None,
    task: str = "classification",
) -> ZooModel:
    """Load a user ONNX file as a PyTorch module (onnx2torch) and wrap it like a zoo model.

    The graph is first specialised to concrete input shapes, the file's static shapes or, for
    inputs with dynamic dims, the shapes given in `input_shapes` ({input name: shape}), so that its
    shape arithmetic folds away and `torch.export` can trace the module. Reshapes that keep the batch
    dim are converted so that the module still works at other batch sizes; if it does not (checked
    at load time), the entry's ``batch`` is the loaded batch size and the pipeline runs the model
    at that size (calibration and evaluation batches split or padded, compiled at that batch).
    Example float inputs are seeded standard normal, integer inputs zeros, bool True.
    `build()` returns the same converted module each time.
    Raises ModelError (missing, unreadable, invalid or unconvertible file), UnsupportedOpError (first
    operator onnx2torch cannot convert, named with its node and opset) or ShapeError.
    """
    path = Path(path)
    model = _load_onnx(path)
    templates = _input_templates(model, path, input_shapes)
    name = name or path.stem
    batch_size = templates[0][1][0] if templates and templates[0][1] else 1

    def make_inputs(batch: int) -> tuple[torch.Tensor, ...]:
        generator = torch.Generator().manual_seed(0)
        return tuple(
            _example_tensor((batch,) + shape[1:] if shape else shape, dtype, generator) for _, shape, dtype in templates
        )

    module = _convert(model, path, templates)
    _check_runs(module, make_inputs(batch_size), f"ONNX model {path.name} (converted by onnx2torch)")
    any_batch = _runs_at_other_batch_sizes(module, make_inputs, batch_size)
    return ZooModel(
        name=name,
        task=task,
        build=lambda: module,
        example_inputs=make_inputs,
        input_names=tuple(t[0] for t in templates),
        description=f"user ONNX model {path.name}, converted to PyTorch by onnx2torch",
        batch=None if any_batch else batch_size,
    )


def from_exported(
    path: str | Path,
    name: str | None = None,
    task: str = "classification",
) -> ZooModel:
    """Load a ``.pt2`` file written by ``torch.export.save`` (the serialized PyTorch graph).

    The program is exported with a dynamic batch or at a fixed one (say 1); the example inputs
    take their per-sample shapes and dtypes from the program's input signature, and a fixed batch
    is kept as ``batch`` (the pipeline then runs it at that size)."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"exported program not found: {path}")
    try:
        ep = torch.export.load(str(path))
    except Exception as exc:
        raise ModelError(f"cannot read {path} as a torch.export program (torch.export.save): "
                         f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from exc
    specs = [s for s in ep.graph_signature.input_specs
             if s.kind == torch.export.graph_signature.InputKind.USER_INPUT]
    nodes = {n.name: n for n in ep.graph.nodes if n.op == "placeholder"}
    vals = [nodes[s.arg.name].meta.get("val") for s in specs]
    if not vals or not all(isinstance(v, torch.Tensor) and v.dim() > 0 for v in vals):
        raise ModelError(f"{path.name}: every input of the exported program must be a tensor with a batch dim")
    fixed = [int(v.shape[0]) for v in vals if not isinstance(v.shape[0], torch.SymInt)]
    batch = fixed[0] if len(fixed) == len(vals) else None
    templates = [(tuple(int(d) for d in v.shape[1:]), v.dtype) for v in vals]
    module = ep.module()
    # The unlifted program refuses train()/eval(); it was captured in the mode it runs in.
    module.train = module.eval = lambda mode=True: module

    def make_inputs(n: int) -> tuple[torch.Tensor, ...]:
        generator = torch.Generator().manual_seed(0)
        return tuple(_example_tensor((n,) + shape, dtype, generator) for shape, dtype in templates)

    _check_runs(module, make_inputs(batch or 2), f"exported program {path.name}")
    return ZooModel(
        name=name or path.stem,
        task=task,
        build=lambda: module,
        example_inputs=make_inputs,
        input_names=tuple(s.arg.name for s in specs),
        description=f"user PyTorch program {path.name} (torch.export.save)",
        batch=batch,
    )
