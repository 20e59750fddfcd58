"""The model zoo as data: each entry says how to build a model and how to make example inputs.

Entries are cheap to create; nothing heavy (weights, tokenizers) is loaded until `build()`
or `example_inputs()` is called, so listing the zoo costs nothing.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from tvmptq.errors import ModelError

TASKS = ("classification", "embedding")


@dataclass(frozen=True)
class ZooModel:
    name: str
    task: str  # one of TASKS
    build: Callable[[], nn.Module]  # returns the model in eval mode, float32
    example_inputs: Callable[[int], tuple[torch.Tensor, ...]]  # batch size -> forward() arguments
    input_names: tuple[str, ...]
    description: str = ""
    batch: int | None = None  # the batch size the model's graph fixes (None: any batch size)

    def __post_init__(self):
        if self.task not in TASKS:
            raise ModelError(f"model {self.name!r}: task must be one of {TASKS}, got {self.task!r}")


_REGISTRY: dict[str, ZooModel] = {}


def register(model: ZooModel) -> ZooModel:
    """Add an entry to the zoo (built-in models register themselves on first use)."""
    if model.name in _REGISTRY:
        raise ModelError(f"a zoo model named {model.name!r} is already registered")
    _REGISTRY[model.name] = model
    return model


def _ensure_builtins() -> None:
    # Imported lazily so that `import tvmptq.zoo.registry` stays light and free of import cycles;
    # each module calls register() for its own entry at import time.
    from tvmptq.zoo import digits_resnet, efficientnet, minilm  # noqa: F401


def list_models() -> list[str]:
    _ensure_builtins()
    return sorted(_REGISTRY)


def get_model(name: str) -> ZooModel:
    _ensure_builtins()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ModelError(f"unknown zoo model {name!r}; known models: {', '.join(sorted(_REGISTRY))}") from None
