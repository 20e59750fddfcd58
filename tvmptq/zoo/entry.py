"""A zoo entry: how to build a model and how to make its example inputs.

Entries are cheap to create; nothing heavy (weights, tokenizers) is loaded until `build()`
or `example_inputs()` is called, so listing the zoo costs nothing. Model files import only this
module; tvmptq.zoo.registry imports the model files (so the two never import each other).
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
