"""One entry per model: every lookup by name goes through here (timm's ``register_model`` / ``create_model``)."""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass

__all__ = [
    "Head",
    "ModelSpec",
    "Pretrained",
    "UnknownModelError",
    "check_name",
    "create_model",
    "is_builder",
    "list_models",
    "model_spec",
    "register_model",
]


@dataclass(frozen=True)
class Pretrained:
    """A ``keras.applications`` base: its constructor and where its no-top ImageNet weights come from."""

    label: str  # the keras.applications name, for messages
    factory: Callable  # keras.applications.<label>
    weights_file: str  # the file keras.applications downloads into ~/.keras/models/
    weights_url: str


@dataclass(frozen=True)
class Head:
    """The report's head variant: the two ``CustomLayer`` blocks or not, ``Flatten`` or global average pooling."""

    custom_blocks: bool
    pooling: str  # "flatten" or "avg"


@dataclass(frozen=True)
class ModelSpec:
    """What carclf knows about one model."""

    name: str
    builder: Callable  # create_<name>_model(input_shape, num_classes, hyperparams)
    min_input_size: int  # smallest height and width the builder accepts
    preprocessing: str | None  # ImagePreprocessing mode inside the model; None: the base has its own
    transfer_layer: str | None  # the base layer the head is attached to (None: the trunk's last layer)
    head: Head | None  # None: the model has its own head (model1)
    base: Pretrained | None = None  # None: trained from scratch

    @property
    def pretrained(self) -> bool:
        return self.base is not None


_REGISTRY: dict[str, ModelSpec] = {}


def register_model(name, *, min_input_size, preprocessing, transfer_layer=None, head=None, base=None):
    """Decorator: register ``create_<name>_model`` under ``name`` (the order of registration is the listing order)."""

    def register(builder):
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is registered twice")
        _REGISTRY[name] = ModelSpec(name, builder, min_input_size, preprocessing, transfer_layer, head, base)
        return builder

    return register


class UnknownModelError(ValueError):
    """A model name that is not registered."""


def list_models() -> tuple[str, ...]:
    """The registered model names, in the report's order."""
    return tuple(_REGISTRY)


def check_name(name):
    """Return ``name`` if a model of that name is registered; else raise :class:`UnknownModelError`."""
    if name not in _REGISTRY:
        close = difflib.get_close_matches(str(name).lower(), list(_REGISTRY), n=1, cutoff=0.7)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise UnknownModelError(f"unknown model {name!r}{hint}; choose one of {', '.join(_REGISTRY)}")
    return name


def model_spec(name) -> ModelSpec:
    """The registry entry of ``name``."""
    return _REGISTRY[check_name(name)]


def keeps_pretrained(name, hyperparams) -> bool:
    """Whether a run of model ``name`` starts from pretrained weights it can keep: a registered base
    (not a model of its own trunk, model1 or AlexNet) with ``weights`` given. Only such runs train in two
    phases; a frozen random base would only slow the head down (docs/recipes.md)."""
    return name in _REGISTRY and _REGISTRY[name].base is not None and hyperparams.get("weights") is not None


def is_builder(func) -> bool:
    """Whether ``func`` is a registered ``create_<name>_model``."""
    return any(spec.builder is func for spec in _REGISTRY.values())


def create_model(name, input_shape=(224, 224, 3), num_classes=196, hyperparams=None):
    """Build one of the registered models by name; returns it uncompiled.

    Args:
        name: one of :func:`list_models`.
        input_shape: ``(height, width, channels)``; pixels in 0-255.
        num_classes: number of output classes.
        hyperparams: dict of builder settings (``carclf.models.DEFAULT_HYPERPARAMS`` for the missing ones).
    """
    return model_spec(name).builder(tuple(input_shape), int(num_classes), hyperparams)
