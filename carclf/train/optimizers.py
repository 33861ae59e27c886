"""The report's optimizer choice and its legacy ``decay``, for Keras 3 (docs/training.md)."""

from __future__ import annotations

import math

import keras

from carclf.settings import SettingsError, non_negative_int

__all__ = [
    "DEFAULT_OPTIMIZER",
    "OPTIMIZERS",
    "OPTIMIZER_KEYS",
    "PlateauInverseTimeDecay",
    "UnknownOptimizerError",
    "current_lr",
    "make_optimizer",
    "optimizer_settings",
    "to_float",
]

#: Accepted ``optimizer_type`` values (case-insensitive), as the report names them.
OPTIMIZERS = ("Adam", "SGD", "RMSprop", "Adagrad")

#: Defaults of the optimizer hyperparameters (Keras's own defaults; decay off).
DEFAULT_OPTIMIZER = {
    "optimizer_type": "Adam",
    "learning_rate": 1e-3,
    "beta_1": 0.9,
    "beta_2": 0.999,
    "epsilon": 1e-7,
    "decay": 0.0,
    "weight_decay": None,
    "momentum": 0.0,
    "rho": 0.9,
}

#: Which hyperparameters each optimizer reads, besides learning_rate, decay and weight_decay.
_OPTIMIZER_ARGS = {
    "adam": ("beta_1", "beta_2", "epsilon"),
    "sgd": ("momentum",),
    "rmsprop": ("rho", "momentum", "epsilon"),
    "adagrad": ("epsilon",),
}

#: The optimizer's hyperparameters; with TRAINING_KEYS, those that never reach the model builder.
OPTIMIZER_KEYS = tuple(DEFAULT_OPTIMIZER)
TRAINING_KEYS = frozenset(OPTIMIZER_KEYS) | {"batch_size", "epochs", "accum_steps"}


class UnknownOptimizerError(ValueError):
    """``hyperparams["optimizer_type"]`` names no supported optimizer."""


def _accum(accum_steps) -> int | None:
    """Gradient accumulation over ``accum_steps`` batches; None, 0 or 1: off."""
    if accum_steps is None or accum_steps is False:
        return None
    try:
        steps = non_negative_int(accum_steps)
    except ValueError as exc:
        raise SettingsError(f"accum_steps={accum_steps!r}: {exc} (or None: off)") from None
    return steps if steps >= 2 else None


def optimizer_settings(hyperparams: dict | None, accum_steps=None) -> dict:
    """The resolved optimizer configuration: plain data, only what the chosen optimizer reads.

    Raises :class:`UnknownOptimizerError` for an ``optimizer_type`` other than
    Adam, SGD, RMSprop or Adagrad (any case).
    """
    hp = {**DEFAULT_OPTIMIZER, **{k: v for k, v in (hyperparams or {}).items() if k in DEFAULT_OPTIMIZER}}
    name = hp["optimizer_type"]
    key = str(name).strip().lower() if isinstance(name, str) else None
    if key not in _OPTIMIZER_ARGS:
        raise UnknownOptimizerError(f"unknown optimizer_type {name!r}; choose one of: {', '.join(OPTIMIZERS)}")
    lr = float(hp["learning_rate"])
    if not (math.isfinite(lr) and lr >= 0):
        raise ValueError(f"learning_rate must be a finite number >= 0, got {hp['learning_rate']!r}")
    decay = float(hp["decay"] or 0.0)
    if not (math.isfinite(decay) and decay >= 0):
        raise ValueError(f"decay must be a finite number >= 0, got {hp['decay']!r}")
    weight_decay = hp["weight_decay"]
    weight_decay = float(weight_decay) if weight_decay else None
    settings = {
        "optimizer_type": OPTIMIZERS[list(_OPTIMIZER_ARGS).index(key)],
        "learning_rate": lr,
        "decay": decay,
        "weight_decay": weight_decay,
        "accum_steps": _accum(accum_steps),
    }
    for arg in _OPTIMIZER_ARGS[key]:
        settings[arg] = float(hp[arg])
    return settings


@keras.saving.register_keras_serializable(package="carclf")
class PlateauInverseTimeDecay(keras.optimizers.schedules.LearningRateSchedule):
    """``scale * initial_learning_rate / (1 + decay_rate * updates)``: the report's ``decay``.

    ``updates = floor(step / accum_steps)`` is the number of weight updates
    applied before this step (``step`` is the optimizer's micro-batch count),
    so with ``accum_steps=1`` this is Keras 2's legacy ``decay`` and
    ``InverseTimeDecay(lr, decay_steps=1, decay_rate=decay)``. ``scale`` is
    the factor ReduceLROnPlateau has applied (1 until the first plateau); see
    docs/training.md.
    """

    def __init__(self, initial_learning_rate, decay_rate, accum_steps=1, scale=1.0, name="PlateauInverseTimeDecay"):
        super().__init__()
        self.initial_learning_rate = float(initial_learning_rate)
        self.decay_rate = float(decay_rate)
        self.accum_steps = max(1, int(accum_steps or 1))
        self.scale = float(scale)
        self.name = name

    def __call__(self, step):
        step = keras.ops.cast(step, "float32")
        updates = keras.ops.floor(step / float(self.accum_steps))
        return (self.scale * self.initial_learning_rate) / (1.0 + self.decay_rate * updates)

    def get_config(self):
        return {
            "initial_learning_rate": self.initial_learning_rate,
            "decay_rate": self.decay_rate,
            "accum_steps": self.accum_steps,
            "scale": self.scale,
            "name": self.name,
        }


def make_optimizer(settings: dict, lr_scale: float = 1.0):
    """``(optimizer, schedule)`` from :func:`optimizer_settings` output (or a hyperparams dict).

    ``schedule`` is the :class:`PlateauInverseTimeDecay` when ``decay > 0``,
    else ``None`` (the learning rate is then a plain float). ``lr_scale``
    multiplies the learning rate (phase 2 of two-phase fine-tuning).
    Gradient accumulation uses the optimizer's ``gradient_accumulation_steps``
    (the weights change every ``accum_steps`` batches, with the mean of their
    gradients).
    """
    if "accum_steps" not in settings or settings.get("optimizer_type") not in OPTIMIZERS:
        settings = optimizer_settings(settings, settings.get("accum_steps"))
    lr = settings["learning_rate"] * float(lr_scale)
    schedule = None
    if settings["decay"] > 0:
        schedule = PlateauInverseTimeDecay(lr, settings["decay"], settings["accum_steps"] or 1)
    common = {
        "learning_rate": schedule if schedule is not None else lr,
        "weight_decay": settings["weight_decay"],
        "gradient_accumulation_steps": settings["accum_steps"],
    }
    kind = settings["optimizer_type"]
    if kind == "Adam":
        opt = keras.optimizers.Adam(
            beta_1=settings["beta_1"], beta_2=settings["beta_2"], epsilon=settings["epsilon"], **common
        )
    elif kind == "SGD":
        opt = keras.optimizers.SGD(momentum=settings["momentum"], **common)
    elif kind == "RMSprop":
        opt = keras.optimizers.RMSprop(
            rho=settings["rho"], momentum=settings["momentum"], epsilon=settings["epsilon"], **common
        )
    else:
        opt = keras.optimizers.Adagrad(epsilon=settings["epsilon"], **common)
    return opt, schedule


def to_float(value) -> float:
    return float(keras.ops.convert_to_numpy(value))


def current_lr(optimizer) -> float:
    return to_float(optimizer.learning_rate)
