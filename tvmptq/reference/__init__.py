"""An independent NumPy integer reference executor for quantization plans (no torch, no TVM)."""
from .executor import QValue, quantize, run_plan, run_plan_values

__all__ = ["QValue", "quantize", "run_plan", "run_plan_values"]
