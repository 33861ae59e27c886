"""The report's optimizer choice and its legacy ``decay``, for Keras 3; the modern recipe's AdamW, warmup and
cosine schedule and weight average (docs/training.md, docs/recipes.md)."""

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
    "warmup_cosine",
]

#: Accepted ``optimizer_type`` values (case-insensitive), as the report names them.
OPTIMIZERS = ("Adam", "AdamW", "SGD", "RMSprop", "Adagrad")

#: AdamW's weight decay when none is given: Keras's default (decoupled: each step shrinks a weight by
#: ``learning_rate * weight_decay`` of itself).
ADAMW_WEIGHT_DECAY = 0.004

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
    "adamw": ("beta_1", "beta_2", "epsilon"),
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
    Adam, AdamW, SGD, RMSprop or Adagrad (any case). AdamW without a ``weight_decay`` gets Keras's 0.004.
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
    if key == "adamw" and weight_decay is None:
        weight_decay = ADAMW_WEIGHT_DECAY
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


def warmup_cosine(learning_rate, steps, warmup=0.1):
    """A linear warmup from 0 to ``learning_rate`` over ``warmup`` of ``steps``, then a cosine decay to 0.

    Keras's ``CosineDecay`` with its warmup; ``steps`` counts the optimizer's iterations (batches) of one
    phase, so each phase warms up and decays on its own.
    """
    steps = max(1, int(steps))
    warmup_steps = int(round(float(warmup) * steps))
    if warmup_steps == 0:
        return keras.optimizers.schedules.CosineDecay(learning_rate, decay_steps=steps)
    return keras.optimizers.schedules.CosineDecay(
        0.0,
        decay_steps=max(1, steps - warmup_steps),
        warmup_target=learning_rate,
        warmup_steps=warmup_steps,
    )


def make_optimizer(settings: dict, lr_scale: float = 1.0, *, train=None, steps=None):
    """``(optimizer, schedule)`` from :func:`optimizer_settings` output (or a hyperparams dict).

    ``schedule`` is the :class:`PlateauInverseTimeDecay` when ``decay > 0``, else ``None`` (the learning
    rate is then a plain float), under the report's schedule; under ``train.schedule="warmup_cosine"`` the
    learning rate is :func:`warmup_cosine` over ``steps`` (the phase's batches) and ``schedule`` is None
    (ReduceLROnPlateau has nothing to scale). ``lr_scale`` multiplies the learning rate (phase 2 of
    two-phase fine-tuning). ``train.ema`` keeps the optimizer's moving average of the weights
    (``use_ema``). Gradient accumulation uses the optimizer's ``gradient_accumulation_steps`` (the weights
    change every ``accum_steps`` batches, with the mean of their gradients).
    """
    from carclf.settings import TrainSettings

    train = train or TrainSettings()
    if "accum_steps" not in settings or settings.get("optimizer_type") not in OPTIMIZERS:
        settings = optimizer_settings(settings, settings.get("accum_steps"))
    lr = settings["learning_rate"] * float(lr_scale)
    schedule = None
    if train.schedule == "warmup_cosine":
        if settings["decay"] > 0:
            raise SettingsError(
                f"decay={settings['decay']:g} (the report's per-step decay) and train.schedule='warmup_cosine' "
                "are two schedules for one rate: set decay=0 or schedule='report'"
            )
        if steps is None:
            raise ValueError("the warmup_cosine schedule needs steps= (the phase's number of batches)")
        learning_rate = warmup_cosine(lr, steps, train.warmup)
    elif settings["decay"] > 0:
        learning_rate = schedule = PlateauInverseTimeDecay(lr, settings["decay"], settings["accum_steps"] or 1)
    else:
        learning_rate = lr
    common = {
        "learning_rate": learning_rate,
        "weight_decay": settings["weight_decay"],
        "gradient_accumulation_steps": settings["accum_steps"],
    }
    if train.ema:
        common.update(use_ema=True, ema_momentum=train.ema_momentum)
    kind = settings["optimizer_type"]
    if kind in ("Adam", "AdamW"):
        opt = getattr(keras.optimizers, kind)(
            beta_1=settings["beta_1"], beta_2=settings["beta_2"], epsilon=settings["epsilon"], **common
        )
        if kind == "AdamW":  # timm's practice: biases and normalisation scales and shifts are not decayed
            opt.exclude_from_weight_decay(var_names=["bias", "gamma", "beta"])
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
