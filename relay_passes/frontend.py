"""PyTorch model -> Relax IRModule (torch.export, weights embedded as constants, static shapes)."""
from __future__ import annotations

import warnings

import torch
import tvm

from tvmptq.quant.decompose import decompose


def import_model(module: torch.nn.Module, example_inputs) -> tvm.IRModule:
    """Import ``module`` for the exact shapes of ``example_inputs`` (the batch size is static)."""
    from tvm.relax.frontend.torch import from_exported_program

    example_inputs = tuple(example_inputs)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch's own pytree deprecation notice
        ep = torch.export.export(module.eval(), example_inputs)
    # The attention decompositions the plan was made with (one attention path for every model).
    ep = decompose(ep)
    # Constants (not parameters) so that batch-norm folding and FoldConstant can see the weights.
    return from_exported_program(ep, keep_params_as_input=False)


def import_onnx(path, shape_dict=None) -> tvm.IRModule:
    """Import an ONNX file with Relax's own ONNX frontend (weights as constants).

    The plan for an ONNX file comes from tvmptq.load(path) (onnx2torch + torch.export); the two
    graphs list the same layers in the same order, so the same passes lower either import. The one
    ONNX spelling the matcher would not see through, Clip as two TOPI call_tir, is turned back into
    R.clip by Canonicalize (canonicalize.ClipFromTIR)."""
    import onnx
    from tvm.relax.frontend.onnx import from_onnx

    return from_onnx(onnx.load(str(path)), shape_dict=shape_dict, keep_params_in_input=False)
