"""Command-line helpers for models that arrive already quantized (QDQ ONNX). Kept out of cli.py,
which stays the entry point.

A QDQ file (ONNX Runtime's ``quantize_static``, PyTorch PT2E + ONNX exporter, NNCF, ...) carries
its own quantization, so:
- ``compile``/``evaluate`` without ``--plan`` read the plan from its Q/DQ nodes
  (``tvmptq.peers.plan_from_qdq``);
- ``quantize`` says it is already quantized (and, with ``--out``, writes the plan read from it),
  or with ``--requantize`` calibrates its float graph (weights dequantized) like any float model;
- with ``--plan`` (a plan made by ``--requantize``) every command loads that same float graph, under
  the QDQ file's name, so the plan and the model match.
"""
from __future__ import annotations

from pathlib import Path

from .errors import ConfigError


def is_qdq(name_or_path: str) -> bool:
    from .peers.qdq_import import is_quantized_onnx
    path = Path(str(name_or_path))
    return path.suffix == ".onnx" and path.is_file() and is_quantized_onnx(path)


def load_model(name_or_path: str, input_shapes=None):
    """A zoo model, a float ONNX model, or the float graph of a QDQ ONNX model (named after the file)."""
    import tvmptq
    if is_qdq(name_or_path):
        from .peers.qdq_import import float_model_from_qdq
        return float_model_from_qdq(name_or_path, input_shapes=input_shapes)[1]
    return tvmptq.load(name_or_path, input_shapes)


def plan_for(model_arg: str, plan_arg: str | None, input_shapes=None, command: str = "compile"):
    """(model, plan, plan file or None): ``--plan`` with its model, or the plan a QDQ file carries."""
    import tvmptq
    if plan_arg is not None:
        plan = tvmptq.QuantPlan.load(plan_arg)
        return load_model(model_arg, input_shapes), plan, plan_arg
    if not is_qdq(model_arg):
        raise ConfigError(f"{command} needs --plan (written by `tvmptq quantize --out`) for {model_arg!r}, which "
                          "is not a quantized (QDQ) ONNX file; only a QDQ file carries its own plan")
    from .peers.qdq_import import plan_from_qdq
    _, qm = plan_from_qdq(model_arg, input_shapes=input_shapes)
    print(f"plan read from the Q/DQ nodes of {Path(model_arg).name}: {qm.plan.config['name']}, "
          f"{len(qm.plan.layers)} integer layers")
    return qm.model, qm.plan, None


def already_quantized(args, input_shapes=None) -> int:
    """``tvmptq quantize model_qdq.onnx`` without ``--requantize``: say so, check that the file's own
    quantization compiles as it is (its plan; written with ``--out``), and say how to go on."""
    from .peers.qdq_import import QdqImportError, plan_from_qdq, qdq_nodes
    import onnx

    path = Path(args.model)
    nodes = qdq_nodes(onnx.load(str(path), load_external_data=False))
    kinds = sorted({f"{n.domain + '::' if n.domain not in ('', 'ai.onnx') else ''}{n.op_type}" for n in nodes})
    print(f"{path.name} is already quantized ({len(nodes)} nodes: {', '.join(kinds)}): nothing to calibrate.")
    try:
        _, qm = plan_from_qdq(path, input_shapes=input_shapes)
    except QdqImportError as err:
        hint = "" if "--requantize" in str(err) else (f". `tvmptq quantize {path.name} --requantize --calib DATA` "
                                                     "quantizes its float weights again instead")
        raise type(err)(f"{path.name} is already quantized, but its quantization cannot be compiled as it is: "
                        f"{err}{hint}") from None
    plan = qm.plan
    print(f"its quantization, read from the Q/DQ nodes: {plan.config['name']}, {len(plan.layers)} integer layers"
          + (f", float islands {', '.join(plan.float_islands)}" if plan.float_islands else ""))
    if args.out:
        print(f"plan written to {plan.save(args.out)}")
    print(f"compile it as it is: tvmptq compile {args.model} -o OUT [--target T]   (no --plan needed)\n"
          f"or quantize its float weights again: tvmptq quantize {args.model} --requantize --calib DATA "
          "[--wbits/--abits ...]")
    return 0
