"""tvmptq: post-training quantization to integer-only programs, built into Apache TVM."""
from .api import (QuantizedModel, apply_method, check_inputs, fp32_outputs, from_plan, load, parse_method, prepare,
                  quantize, quantize_auto)
from .eval.sets import SETS, evaluate, get_set
from .quant.plan import QuantPlan
from .quant.spec import ActivationSpec, LayerOverride, QuantConfig, WeightSpec, make_config

__version__ = "0.1.0"
__all__ = ["load", "prepare", "quantize", "quantize_auto", "from_plan", "fp32_outputs", "evaluate",
           "get_set", "SETS", "QuantPlan", "QuantizedModel", "QuantConfig", "WeightSpec",
           "ActivationSpec", "LayerOverride", "make_config", "check_inputs", "apply_method", "parse_method"]
