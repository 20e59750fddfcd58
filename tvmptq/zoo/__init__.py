"""Models that tvmptq can quantize: the built-in zoo plus wrappers for user models."""
from tvmptq.zoo.registry import TASKS, ZooModel, get_model, list_models, register
from tvmptq.zoo.user import from_exported, from_module, from_onnx

__all__ = ["TASKS", "ZooModel", "get_model", "list_models", "register", "from_module", "from_onnx", "from_exported"]
