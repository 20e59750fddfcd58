"""Relax IR passes that lower a tvmptq quantization plan to integer-only TVM programs.

    mod = relay_passes.lower(model.build(), model.example_inputs(8), qm.plan)   # integer-only IRModule
    run = targets.build.compile_integer(mod)                                    # numpy in, numpy out

Passes, in order (each usable alone, composed by ``lowering_passes``):
Canonicalize -> MatchPlanLayers -> QuantizeLayers -> CancelQDQ -> VerifyIntegerOnly -> Float64Islands,
then, for a target with a dot-product instruction (``lowering_passes(plan, target=...)`` or
``tensorize_for``), TensorizeDot: each linear layer and 1x1 conv as one tensorized kernel (x86 VNNI
``vpdpbusd``, Arm ``sdot``) with the requantize fused.
"""
from .cancel_qdq import CancelQDQ
from .canonicalize import Canonicalize
from .errors import IntegerOnlyError, LayerMatchError, LoweringError
from .frontend import import_model, import_onnx
from .islands import Float64Islands, plan_islands
from .lookup_tables import LookupTables
from .lower import lower, lowering_passes
from .match import MatchPlanLayers, match_layers
from .quantize_layers import QuantizeLayers
from .report import format_op_counts, op_counts
from .tensorize import (TensorizeDenseVNNI, TensorizeDot, TensorizeRecord, dense_requant_pattern, tensorize_for,
                            tensorize_report)
from .verify import VerifyIntegerOnly, float_ops

__all__ = ["lower", "lowering_passes", "import_model", "import_onnx", "Canonicalize",
           "MatchPlanLayers", "LookupTables", "QuantizeLayers", "CancelQDQ", "VerifyIntegerOnly", "float_ops", "match_layers",
           "plan_islands", "Float64Islands", "TensorizeDenseVNNI", "TensorizeDot", "TensorizeRecord", "dense_requant_pattern",
           "tensorize_for", "tensorize_report",
           "op_counts", "format_op_counts", "LoweringError", "LayerMatchError", "IntegerOnlyError"]
