"""The model zoo as data: the built-in entries (each model file defines one ZooModel) and the
ones users register."""
from __future__ import annotations

from tvmptq.errors import ModelError
from tvmptq.zoo.entry import TASKS, ZooModel  # noqa: F401 - re-exported

_REGISTRY: dict[str, ZooModel] = {}


def register(model: ZooModel) -> ZooModel:
    """Add an entry to the zoo (the built-in models are added on first use)."""
    _ensure_builtins()
    if model.name in _REGISTRY:
        raise ModelError(f"a zoo model named {model.name!r} is already registered")
    _REGISTRY[model.name] = model
    return model


def _ensure_builtins() -> None:
    # Imported lazily so that `import tvmptq.zoo.registry` stays light (no model code); idempotent.
    from tvmptq.zoo import digits_resnet, digits_vit, efficientnet, minilm
    for entry in (digits_resnet.DIGITS_RESNET, digits_vit.DIGITS_VIT, efficientnet.EFFICIENTNET_LITE0,
                  minilm.MINILM_L6):
        _REGISTRY.setdefault(entry.name, entry)


def list_models() -> list[str]:
    _ensure_builtins()
    return sorted(_REGISTRY)


def get_model(name: str) -> ZooModel:
    _ensure_builtins()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ModelError(f"unknown zoo model {name!r}; known models: {', '.join(sorted(_REGISTRY))}") from None
