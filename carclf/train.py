"""The report's "Model Pipeline": build, compile, train, test and save one model, crash-proof.

``run_model_pipeline(model_func, model_name, hyperparams, input_shape,
num_classes, train_generator, test_generator, epochs, accum_steps)`` keeps the
report's signature; everything else is keyword-only with defaults. It

1. filters ``hyperparams`` by the builder's signature (:func:`filter_hyperparams`);
2. builds the model under the device's dtype policy (:mod:`carclf.device`:
   mixed precision and XLA on a GPU, off on a CPU, overridable) and writes its
   summary to ``summary.txt``;
3. chooses the optimizer from ``hyperparams["optimizer_type"]``
   (:func:`make_optimizer`: Adam by default, SGD with momentum, RMSprop with
   rho, Adagrad; another name raises :class:`UnknownOptimizerError` listing
   the choices), with ``learning_rate``, ``beta_1``, ``beta_2``, ``decay``,
   ``weight_decay`` and gradient accumulation over ``accum_steps`` batches;
4. compiles with categorical cross-entropy and the report's metrics
   (:func:`carclf.metrics.report_metrics`);
5. trains with the report's callbacks (:func:`create_callbacks`):
   EarlyStopping on ``val_loss`` (patience 5, best weights restored),
   ReduceLROnPlateau on ``val_loss`` (factor 0.2, patience 2), a checkpoint of
   the best ``val_top3_accuracy``; plus a CSV history, TensorBoard logs, a stop
   with a clear error on a non-finite loss, and the per-epoch resume state;
6. saves the final model as ``.keras``, tests it on the test generator, and
   stores the result in the stage cache, so that a rerun with the same
   configuration loads it instead of training again.

Decisions
---------

**Learning-rate decay and ReduceLROnPlateau.** Keras 3 optimizers have no
``decay``; the report's legacy meaning ``lr / (1 + decay * iterations)`` is an
inverse-time decay. With ``decay == 0`` (or absent) the learning rate is a
plain float (an optimizer variable) and ReduceLROnPlateau multiplies it as
usual. With ``decay > 0`` the learning rate is a :class:`PlateauInverseTimeDecay`
schedule, ``scale * lr / (1 + decay * updates)``, and this module's
:class:`ReduceLROnPlateau` multiplies its ``scale`` instead (the stock callback
cannot set a schedule's learning rate). Both compose: the decay goes on per
update and each plateau scales the whole curve down by ``factor``, with the
``min_lr`` floor applied to the current learning rate. ``scale`` is a Python
number read when the train step is traced, so the callback re-traces the
train function after changing it (once per reduction; this works the same on
TensorFlow and JAX, where a captured variable would be frozen into the
compiled step). ``updates`` counts applied updates: with gradient
accumulation it is ``floor(iterations / accum_steps)``, so ``decay`` keeps its
per-update meaning (Keras's own schedules would count micro-batches).

**Resume.** After every epoch :class:`ResumableState` writes one pickle,
atomically (``carclf.cache.atomic_pickle``), to
``models/<name>/<key>/resume/state.pkl``: every model variable (weights,
BatchNormalization statistics, dropout seed states), every optimizer variable
(moments, iteration count, learning rate, loss scale, gradient accumulators),
the schedule's plateau scale, the history so far, the epoch, whether training
was stopped, the counters of EarlyStopping (``wait``, ``best``,
``best_epoch``, ``best_weights``, ``stopped_epoch``), ReduceLROnPlateau
(``wait``, ``best``, ``cooldown_counter``) and the checkpoint (``best``), and
the wall/CPU time spent. One file holds it all, so it is never half old, half
new. A restarted run rebuilds and compiles the model, restores all of it,
re-applies the callbacks' counters after their ``on_train_begin`` reset them,
and calls ``fit(initial_epoch=<next epoch>)``; the train generator is put on
each epoch's data order by ``set_epoch(epoch)`` at the start of every epoch,
so a resumed epoch sees the order it would have seen (``fit`` runs with
``shuffle=False``: the generator shuffles itself from ``(seed, epoch)``, while
Keras's batch-order shuffle would draw from the global NumPy RNG, which a new
process does not replay; a generator must therefore shuffle itself). A run
killed mid-epoch redoes that epoch; the resumed run ends exactly as an
uninterrupted one would (the tests check it). The state is removed once the
stage result is stored. Keras's ``BackupAndRestore`` is not used: it would
restore the model and optimizer but not the callbacks' counters.

**The stage key** (stage ``train-<name>``) covers the model name, the builder,
its filtered hyperparameters, the resolved optimizer settings (with
``accum_steps``), input shape, number of classes, epochs, the phases, the
dtype policy, the callback settings, the seed, both generators
(:func:`describe_generator`: batch size, shuffling, seed, augmentation,
labels, decoded-cache key) and ``cache_deps``.

**Files** (``<key>`` is the stage key, so runs with other hyperparameters,
such as the report's default and optimal ones, live side by side)::

    models/<name>/<key>/<name>.keras   final model (best weights restored)
    models/<name>/<key>/best.keras     checkpoint of the best val_top3_accuracy
    models/<name>/<key>/summary.txt    model summary
    models/<name>/<key>/history.csv    one row per finished epoch (rewritten whole, atomically)
    models/<name>/<key>/history.png    the training curves (carclf.report.plot_history)
    models/<name>/<key>/resume/        the resume state while training
    models/<name>/<name>.keras, summary.txt, history.csv   the latest finished run (hard links or copies)
    logs/tensorboard/<name>/<key>/     TensorBoard logs (needs TensorFlow and the tensorboard package)
    pickles/train-<name>/<key>.pkl     the stage result (history, test metrics, times, file names)

Model files are written by Keras to a temporary name and renamed, every other
file through ``carclf.cache.atomic_write`` / ``atomic_pickle``.

**Two-phase fine-tuning** (``two_phase=True``; the report's single phase is the
default). Phase 1 ("head") builds the model with ``x_trainable="none"`` (the
base frozen) and trains the head for ``head_epochs`` epochs at the given
learning rate. Phase 2 ("finetune") unfreezes every base layer except the
BatchNormalization layers, which stay frozen and so run in inference mode
(Keras 3), keeping their statistics; it recompiles with a fresh optimizer at
``learning_rate * finetune_lr_scale`` and trains up to ``epochs`` epochs in
all. Each phase has its own callbacks; the history runs on across both, with
a ``phase`` column (0 or 1) in the CSV. The builder must accept ``x_trainable``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import inspect
import logging
import math
import os
import resource
import secrets
import shutil
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import keras
import numpy as np

from carclf.cache import StageCache, atomic_open, atomic_pickle, atomic_write, canonical, load_pickle
from carclf.config import Paths
from carclf.device import configure, precision_policy
from carclf.metrics import report_metrics

log = logging.getLogger("carclf.train")

__all__ = [
    "DEFAULT_CALLBACKS",
    "DEFAULT_OPTIMIZER",
    "NonFiniteLossError",
    "OPTIMIZERS",
    "OPTIMIZER_KEYS",
    "PlateauInverseTimeDecay",
    "ReduceLROnPlateau",
    "ResumableState",
    "BestModelCheckpoint",
    "StopOnNonFiniteLoss",
    "TrainResult",
    "UnknownOptimizerError",
    "create_callbacks",
    "describe_generator",
    "filter_hyperparams",
    "load_model",
    "make_optimizer",
    "optimizer_settings",
    "run_model_pipeline",
    "save_model_atomic",
    "tensorboard_available",
]

#: Bumped when training itself changes meaning (part of every stage key).
TRAIN_FORMAT = 1

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

#: Hyperparameters that belong to training, never to the model builder.
OPTIMIZER_KEYS = tuple(DEFAULT_OPTIMIZER)
_TRAINING_KEYS = frozenset(OPTIMIZER_KEYS) | {"batch_size", "epochs", "accum_steps"}

#: The report's callback settings; ``callbacks_config`` overrides any of them.
DEFAULT_CALLBACKS = {
    "early_stopping": {
        "monitor": "val_loss",
        "mode": "min",
        "patience": 5,
        "min_delta": 0.0,
        "restore_best_weights": True,
    },
    "reduce_lr": {
        "monitor": "val_loss",
        "mode": "min",
        "factor": 0.2,
        "patience": 2,
        "min_delta": 1e-4,
        "cooldown": 0,
        "min_lr": 0.0,
    },
    "checkpoint": {"monitor": "val_top3_accuracy", "mode": "max"},
}


class UnknownOptimizerError(ValueError):
    """``hyperparams["optimizer_type"]`` names no supported optimizer."""


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite."""


# --------------------------------------------------------------------------- #
# Hyperparameters
# --------------------------------------------------------------------------- #


def filter_hyperparams(model_func: Callable, hyperparams: dict | None) -> tuple[dict, dict]:
    """The builder's share of ``hyperparams``, chosen by its signature (the report's step).

    Returns ``(call_kwargs, used)``: the keyword arguments to call
    ``model_func(input_shape, num_classes, **call_kwargs)`` with, and the
    hyperparameters they carry (what the stage key records).

    - A builder with named parameters (the report's style, e.g.
      ``f(input_shape, num_classes, dropout, x_trainable)``) gets the
      hyperparameters that match a parameter name; the rest are dropped (the
      report's example: DenseNet's builder takes no ``dropout``).
    - A builder with a ``hyperparams`` parameter (carclf's
      ``create_<name>_model``) gets one dict of the model's hyperparameters:
      the training ones (optimizer settings, batch size) are left out, and for
      the ``carclf.models`` builders only the keys of
      ``carclf.models.DEFAULT_HYPERPARAMS`` are kept, defaults filled in, so
      that spelling out a default does not change the key.
    """
    hyperparams = dict(hyperparams or {})
    params = inspect.signature(model_func).parameters
    model_keys = {k: v for k, v in hyperparams.items() if k not in _TRAINING_KEYS}
    if "hyperparams" in params:
        from carclf.models import DEFAULT_HYPERPARAMS, is_builder

        if is_builder(model_func):
            used = {k: model_keys.get(k, default) for k, default in DEFAULT_HYPERPARAMS.items()}
        else:
            used = model_keys
        dropped = sorted(set(model_keys) - set(used))
        if dropped:
            log.info("%s does not read hyperparameters %s; left out", _qualname(model_func), dropped)
        return {"hyperparams": dict(used)}, used
    named = {
        name
        for name, p in params.items()
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and name not in ("input_shape", "num_classes")
    }
    if any(p.kind == p.VAR_KEYWORD for p in params.values()):
        used = model_keys
    else:
        used = {k: v for k, v in model_keys.items() if k in named}
    dropped = sorted(set(model_keys) - set(used))
    if dropped:
        log.info("%s takes no %s; left out", _qualname(model_func), dropped)
    return dict(used), used


def _qualname(obj) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', type(obj).__qualname__)}"


def _accum(accum_steps) -> int | None:
    if accum_steps is None or accum_steps is False:
        return None
    if isinstance(accum_steps, bool) or not isinstance(accum_steps, (int, np.integer)) or accum_steps < 0:
        raise ValueError(f"accum_steps must be None or a non-negative integer, got {accum_steps!r}")
    return int(accum_steps) if accum_steps >= 2 else None


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
    the module docstring.
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


def _to_float(value) -> float:
    return float(keras.ops.convert_to_numpy(value))


def _current_lr(optimizer) -> float:
    return _to_float(optimizer.learning_rate)


# --------------------------------------------------------------------------- #
# Saving
# --------------------------------------------------------------------------- #


def save_model_atomic(model, path) -> Path:
    """``model.save(path)`` through a temporary ``.keras`` file renamed over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.stem}.{secrets.token_hex(6)}.tmp.keras"
    try:
        model.save(tmp)
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()
    return path


def _publish(source: Path, target: Path) -> None:
    """Make ``target`` the same file as ``source``: an atomic hard link, or a copy."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.{secrets.token_hex(6)}.tmp"
    try:
        os.link(source, tmp)
        os.replace(tmp, target)
        return
    except OSError:
        with contextlib.suppress(OSError):
            tmp.unlink()
    with open(source, "rb") as src, atomic_open(target, "wb") as dst:
        shutil.copyfileobj(src, dst, 1 << 20)


def _saved_mixed_policy(path):
    """The mixed dtype policy a ``.keras`` file was saved under, or None."""
    import re
    import zipfile

    with zipfile.ZipFile(path) as archive:
        config = archive.read("config.json").decode("utf-8")
    found = re.search(r'"(mixed_(?:b?float16))"', config)
    return found.group(1) if found else None


def load_model(path, compile: bool = True):
    """``keras.models.load_model`` with carclf's custom layers and schedule registered.

    A model saved under a mixed precision policy is loaded under that policy:
    under float32, Keras would drop its LossScaleOptimizer and the optimizer
    state with only a warning.
    """
    import contextlib

    import carclf.layers  # noqa: F401  (registers the custom layers)

    policy = _saved_mixed_policy(path)
    with precision_policy(policy) if policy else contextlib.nullcontext():
        return keras.models.load_model(path, compile=compile)


def _history_csv(history: dict) -> bytes:
    import pandas as pd

    frame = pd.DataFrame(history)
    frame.insert(0, "epoch", np.arange(1, len(frame) + 1))
    return frame.to_csv(index=False).encode()


# --------------------------------------------------------------------------- #
# Callbacks
# --------------------------------------------------------------------------- #


def _improved(current, best, mode, min_delta=0.0) -> bool:
    if best is None:
        return True
    if mode == "max":
        return current - abs(min_delta) > best
    return current + abs(min_delta) < best


class ReduceLROnPlateau(keras.callbacks.ReduceLROnPlateau):
    """Keras's ReduceLROnPlateau, also for a :class:`PlateauInverseTimeDecay` learning rate.

    With ``schedule=None`` it is the stock callback. With a schedule, a
    reduction multiplies ``schedule.scale`` so that the current learning rate
    drops by ``factor`` (not below ``min_lr``) and re-traces the train step
    (``scale`` is a constant of the traced step).
    """

    def __init__(self, *args, schedule: PlateauInverseTimeDecay | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.schedule = schedule

    def _reduce_optimizer_lr(self, optimizer, epoch, name=""):
        if self.schedule is None:
            return super()._reduce_optimizer_lr(optimizer, epoch, name)
        old_lr = _current_lr(optimizer)
        if old_lr <= np.float32(self.min_lr) or old_lr <= 0:
            return False
        new_lr = max(old_lr * self.factor, self.min_lr)
        self.schedule.scale *= new_lr / old_lr
        self.model.make_train_function(force=True)
        if self.verbose > 0:
            print(f"\nEpoch {epoch + 1}: ReduceLROnPlateau scaling the decaying learning rate to {new_lr:.3g}.")
        log.info(
            "epoch %d: learning rate reduced to %.3g (schedule scale %.3g)", epoch + 1, new_lr, self.schedule.scale
        )
        return True


class BestModelCheckpoint(keras.callbacks.ModelCheckpoint):
    """ModelCheckpoint with ``save_best_only=True`` that writes through a temporary file.

    Saves ``filepath`` (``.keras``) whenever ``monitor`` improves; a kill
    during the save leaves the previous best intact.
    """

    def __init__(self, filepath, monitor="val_top3_accuracy", mode="max", verbose=0):
        super().__init__(filepath, monitor=monitor, mode=mode, save_best_only=True, verbose=verbose)
        self.best = None
        self.best_epoch = None
        self._mode = mode
        self._warned = False

    def on_train_begin(self, logs=None):
        pass  # keep ``best`` across fit calls and resumes

    def on_train_batch_end(self, batch, logs=None):
        pass

    def on_epoch_end(self, epoch, logs=None):
        current = (logs or {}).get(self.monitor)
        if current is None:
            if not self._warned:
                warnings.warn(
                    f"checkpoint monitor {self.monitor!r} is not in the logs: {sorted(logs or {})}", stacklevel=2
                )
                self._warned = True
            return
        current = float(current)
        if _improved(current, self.best, self._mode):
            if self.verbose > 0:
                print(f"\nEpoch {epoch + 1}: {self.monitor} improved to {current:.5f}, saving {self.filepath}")
            self.best, self.best_epoch = current, epoch
            save_model_atomic(self.model, self.filepath)


class StopOnNonFiniteLoss(keras.callbacks.Callback):
    """Raise :class:`NonFiniteLossError`, naming the model and epoch, when the loss is NaN or infinite."""

    def __init__(self, model_name: str, learning_rate: float | None = None, state_path=None):
        super().__init__()
        self.model_name = model_name
        self.learning_rate = learning_rate
        self.state_path = state_path
        self.epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def _check(self, logs, where):
        loss = (logs or {}).get("loss")
        if loss is None:
            return
        loss = _to_float(loss)
        if math.isfinite(loss):
            return
        self.model.stop_training = True
        saved = f"; the last finished epoch ({self.epoch}) is kept in {self.state_path}" if self.state_path else ""
        lr = f" (now {self.learning_rate:g})" if self.learning_rate else ""
        message = (
            f"{self.model_name}: the training loss became {loss} at epoch {self.epoch + 1}, {where}. "
            f"Training stopped{saved}. Lower the learning_rate{lr}, check the data for non-finite "
            f"pixels or wrong labels, or try mixed_precision=False."
        )
        log.error(message)
        raise NonFiniteLossError(message)

    def on_train_batch_end(self, batch, logs=None):
        self._check(logs, f"batch {batch + 1}")

    def on_epoch_end(self, epoch, logs=None):
        self._check(logs, "epoch end")


def _jsonable(value):
    if isinstance(value, (np.generic,)):
        return value.item()
    return value


def _callback_state(cb) -> dict | None:
    if cb is None:
        return None
    if isinstance(cb, keras.callbacks.EarlyStopping):
        return {
            "wait": cb.wait,
            "best": _jsonable(cb.best),
            "best_epoch": cb.best_epoch,
            "stopped_epoch": cb.stopped_epoch,
            "best_weights": cb.best_weights,
        }
    if isinstance(cb, keras.callbacks.ReduceLROnPlateau):
        return {"wait": cb.wait, "best": _jsonable(cb.best), "cooldown_counter": cb.cooldown_counter}
    if isinstance(cb, BestModelCheckpoint):
        return {"best": cb.best, "best_epoch": cb.best_epoch}
    return None


def _set_callback_state(cb, state: dict | None) -> None:
    if cb is None or not state:
        return
    for name, value in state.items():
        setattr(cb, name, value)


@dataclass
class TrainingCallbacks:
    """The callbacks of one phase, by role (``as_list()`` in the order fit needs)."""

    early_stopping: keras.callbacks.EarlyStopping | None
    reduce_lr: ReduceLROnPlateau | None
    checkpoint: BestModelCheckpoint | None
    non_finite: StopOnNonFiniteLoss
    tensorboard: Any = None
    extra: list = field(default_factory=list)

    def as_list(self, state_callback=None) -> list:
        # The state callback runs after those whose counters it saves and
        # restores; extra callbacks see the epoch after it is saved.
        cbs = [self.non_finite, self.early_stopping, self.reduce_lr, self.checkpoint, self.tensorboard]
        cbs = [cb for cb in cbs if cb is not None]
        if state_callback is not None:
            cbs.append(state_callback)
        return cbs + list(self.extra)


def create_callbacks(
    model_name: str,
    *,
    settings: dict | None = None,
    checkpoint_path=None,
    tensorboard_dir=None,
    schedule: PlateauInverseTimeDecay | None = None,
    learning_rate: float | None = None,
    state_path=None,
    extra=(),
    verbose=0,
) -> TrainingCallbacks:
    """The report's ``create_callbacks``: EarlyStopping, ReduceLROnPlateau, ModelCheckpoint, and more.

    ``settings`` overrides :data:`DEFAULT_CALLBACKS` per callback (e.g.
    ``{"early_stopping": {"patience": 3}}``); a callback set to ``None`` is
    left out. ``monit_loss`` (``val_loss``, mode min) drives EarlyStopping and
    ReduceLROnPlateau, ``monit_acc`` (``val_top3_accuracy``, mode max) the
    checkpoint at ``checkpoint_path``. TensorBoard logs go to
    ``tensorboard_dir`` (none when ``None``). Gradient accumulation is not a
    callback here: it is the optimizer's ``gradient_accumulation_steps``.
    """
    cfg = _merge_callbacks(settings)
    es = rl = ck = tb = None
    if cfg["early_stopping"] is not None:
        es = keras.callbacks.EarlyStopping(verbose=verbose, **cfg["early_stopping"])
    if cfg["reduce_lr"] is not None:
        rl = ReduceLROnPlateau(schedule=schedule, verbose=verbose, **cfg["reduce_lr"])
    if cfg["checkpoint"] is not None and checkpoint_path is not None:
        ck = BestModelCheckpoint(checkpoint_path, verbose=verbose, **cfg["checkpoint"])
    if tensorboard_dir is not None and not tensorboard_available():
        log.warning(
            "%s: no TensorBoard logs: the tensorboard package is not installed (pip install tensorboard to get them)",
            model_name,
        )
    elif tensorboard_dir is not None:
        try:
            tb = keras.callbacks.TensorBoard(
                log_dir=str(tensorboard_dir), histogram_freq=0, write_graph=False, update_freq="epoch", profile_batch=0
            )
        except Exception as exc:  # TensorBoard needs TensorFlow's summary writer
            log.warning("no TensorBoard logs (%s: %s)", type(exc).__name__, exc)
    non_finite = StopOnNonFiniteLoss(model_name, learning_rate, state_path)
    return TrainingCallbacks(es, rl, ck, non_finite, tb, list(extra))


def tensorboard_available() -> bool:
    """Whether Keras's TensorBoard callback can write (it needs TensorFlow and the tensorboard package)."""
    import importlib.util

    return all(importlib.util.find_spec(name) is not None for name in ("tensorflow", "tensorboard"))


def _merge_callbacks(settings) -> dict:
    merged = {}
    settings = settings or {}
    unknown = set(settings) - set(DEFAULT_CALLBACKS)
    if unknown:
        raise ValueError(f"unknown callbacks {sorted(unknown)}; choose from {sorted(DEFAULT_CALLBACKS)}")
    for name, default in DEFAULT_CALLBACKS.items():
        if name in settings and settings[name] is None:
            merged[name] = None
        else:
            merged[name] = {**default, **(settings.get(name) or {})}
    return merged


def _cpu_seconds() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


class _Clock:
    """Wall and CPU seconds since creation, plus what earlier sessions of the run spent."""

    def __init__(self, before=(0.0, 0.0)):
        self.before = tuple(before)
        self.wall0 = time.perf_counter()
        self.cpu0 = _cpu_seconds()

    def __call__(self):
        return (self.before[0] + time.perf_counter() - self.wall0, self.before[1] + _cpu_seconds() - self.cpu0)


class ResumableState(keras.callbacks.Callback):
    """Writes the resume state after every epoch; restores the callbacks' counters on resume.

    See the module docstring ("Resume") for what the state holds. Put it
    after the callbacks it saves (``TrainingCallbacks.as_list`` does).
    """

    def __init__(
        self,
        path,
        *,
        key,
        phase,
        callbacks: TrainingCallbacks,
        schedule,
        train_generator,
        history: dict,
        history_path=None,
        restore: dict | None = None,
        clock=None,
        record_phase: bool = False,
    ):
        super().__init__()
        self.path = Path(path)
        self.key = key
        self.phase = phase
        self.callbacks = callbacks
        self.schedule = schedule
        self.train_generator = train_generator
        self.history = history  # shared with the pipeline: every epoch of every phase
        self.history_path = Path(history_path) if history_path else None
        self.restore = restore
        self.clock = clock or _Clock()
        self.record_phase = record_phase

    def on_train_begin(self, logs=None):
        # EarlyStopping and ReduceLROnPlateau reset their counters in their own
        # on_train_begin, which ran before this one: put the saved ones back.
        if self.restore:
            saved = self.restore.get("callbacks", {})
            _set_callback_state(self.callbacks.early_stopping, saved.get("early_stopping"))
            _set_callback_state(self.callbacks.reduce_lr, saved.get("reduce_lr"))
            _set_callback_state(self.callbacks.checkpoint, saved.get("checkpoint"))
            self.restore = None

    def on_epoch_begin(self, epoch, logs=None):
        if hasattr(self.train_generator, "set_epoch"):
            self.train_generator.set_epoch(epoch)

    def on_epoch_end(self, epoch, logs=None):
        row = {name: _to_float(value) for name, value in (logs or {}).items()}
        if "learning_rate" not in row:
            row["learning_rate"] = _current_lr(self.model.optimizer)
        if self.record_phase:
            row["phase"] = float(self.phase["index"])
        n_before = len(next(iter(self.history.values()), []))
        for name in set(row) | set(self.history):
            self.history.setdefault(name, [math.nan] * n_before).append(row.get(name, math.nan))
        self.save(epoch)

    def save(self, epoch):
        wall, cpu = self.clock()
        state = {
            "format": TRAIN_FORMAT,
            "key": self.key,
            "phase": self.phase["index"],
            "epoch": int(epoch),
            "stopped": bool(self.model.stop_training),
            "history": {k: list(v) for k, v in self.history.items()},
            "model_variables": [keras.ops.convert_to_numpy(v.value) for v in self.model.variables],
            "optimizer_variables": [keras.ops.convert_to_numpy(v.value) for v in self.model.optimizer.variables],
            "lr_scale": self.schedule.scale if self.schedule is not None else None,
            "callbacks": {
                "early_stopping": _callback_state(self.callbacks.early_stopping),
                "reduce_lr": _callback_state(self.callbacks.reduce_lr),
                "checkpoint": _callback_state(self.callbacks.checkpoint),
            },
            "generator_epoch": int(epoch) + 1,
            "elapsed": (wall, cpu),
        }
        atomic_pickle(self.path, state)
        if self.history_path is not None:
            atomic_write(self.history_path, _history_csv(self.history))


# --------------------------------------------------------------------------- #
# Data identity
# --------------------------------------------------------------------------- #


def _describe_callable(obj):
    """A plain-data identity of an augmentation or mixing hook, for the stage key."""
    if obj is None:
        return None
    if isinstance(obj, functools.partial):
        try:
            return {
                "partial": _describe_callable(obj.func),
                "args": canonical(list(obj.args)),
                "keywords": canonical(dict(obj.keywords)),
            }
        except TypeError:
            return {"partial": _describe_callable(obj.func)}
    if inspect.isfunction(obj) or inspect.ismethod(obj) or inspect.isbuiltin(obj):
        return _qualname(obj)
    candidates = []
    for getter in ("get_config", "config"):
        value = getattr(obj, getter, None)
        if value is not None:
            candidates.append(value)
    if dataclasses.is_dataclass(obj):
        candidates.append(lambda: obj)
    if hasattr(obj, "__dict__"):
        candidates.append(lambda: {k: v for k, v in vars(obj).items() if not k.startswith("_")})
    for candidate in candidates:
        try:
            return {
                "type": _qualname(type(obj)),
                "config": canonical(candidate() if callable(candidate) else candidate),
            }
        except Exception:
            continue
    return _qualname(type(obj))


def describe_generator(generator) -> dict:
    """What identifies a generator's data for the stage key (plain data).

    Its type, number of batches, ``batch_size``, ``shuffle``, ``seed``, the
    augmentation and mixing hooks (by their ``get_config()``/``config`` where
    they have one, else by name), and for a generator over a
    ``DecodedSplit``: its rows, image size, classes, a digest of its labels
    and paths, and the decoded cache's key (from the memmap's folder). Pass
    the upstream ``StageResult`` objects as ``cache_deps`` as well.
    """
    desc: dict[str, Any] = {"type": _qualname(type(generator))}
    with contextlib.suppress(TypeError):
        desc["batches"] = len(generator)
    for attr in ("batch_size", "shuffle", "seed"):
        if hasattr(generator, attr):
            value = getattr(generator, attr)
            desc[attr] = value if isinstance(value, (bool, int, float, str, type(None))) else repr(value)
    for attr in ("augment", "mix"):
        if hasattr(generator, attr):
            desc[attr] = _describe_callable(getattr(generator, attr))
    split = getattr(generator, "split", None)
    if split is not None:
        with contextlib.suppress(Exception):
            digest = hashlib.sha256()
            digest.update(np.asarray(split.class_ids, dtype=np.int64).tobytes())
            digest.update("\n".join(map(str, getattr(split, "paths", []))).encode())
            desc["split"] = {
                "name": getattr(split, "split", None),
                "rows": len(split),
                "image_size": list(getattr(split, "image_size", ())),
                "num_classes": getattr(split, "num_classes", None),
                "labels": digest.hexdigest()[:16],
            }
            decoded = [
                Path(filename).parent.name
                for part in getattr(split, "parts", [split])
                if (filename := getattr(getattr(part, "images", None), "filename", None))
            ]
            if decoded:
                desc["split"]["decoded"] = decoded
    return desc


# --------------------------------------------------------------------------- #
# The result
# --------------------------------------------------------------------------- #


@dataclass
class TrainResult:
    """What :func:`run_model_pipeline` returns (also what a rerun loads from the cache).

    ``history``: ``{key: [value per epoch]}`` over all epochs run (loss, the
    report's metrics, their ``val_`` twins, ``learning_rate``, and ``phase``
    for a two-phase run); ``test_metrics``: the final model on the test
    generator; ``wall_min`` / ``cpu_min``: the training's minutes, summed over
    resumed sessions; ``policy`` / ``jit_compile``: the dtype policy and XLA
    setting used; ``hyperparams``: the builder's hyperparameters;
    ``optimizer``: the resolved optimizer settings; ``resumed_from_epoch``:
    the 0-based epoch a resumed training restarted at (``None`` if it ran in
    one go); ``loaded``: read from the stage cache instead of trained.
    """

    model_name: str
    key: str
    history: dict
    epochs_run: int
    stopped_early: bool
    test_metrics: dict
    wall_min: float
    cpu_min: float
    policy: str
    jit_compile: bool
    hyperparams: dict
    optimizer: dict
    model_path: Path
    best_model_path: Path | None
    summary_path: Path
    history_path: Path
    plot_path: Path | None
    tensorboard_dir: Path | None
    resumed_from_epoch: int | None
    loaded: bool

    def load_model(self, compile: bool = True, best: bool = False):
        """The final model (or, with ``best=True``, the best checkpoint), read back from disk."""
        return load_model(self.best_model_path if best else self.model_path, compile=compile)

    def history_frame(self):
        import pandas as pd

        frame = pd.DataFrame(self.history)
        frame.index = pd.RangeIndex(1, len(frame) + 1, name="epoch")
        return frame


def _result(value: dict, key: str, loaded: bool, paths: Paths) -> TrainResult:
    def where(rel):
        return None if rel is None else paths.models / rel

    return TrainResult(
        model_name=value["model_name"],
        key=key,
        history=value["history"],
        epochs_run=value["epochs_run"],
        stopped_early=value["stopped_early"],
        test_metrics=value["test_metrics"],
        wall_min=value["wall_min"],
        cpu_min=value["cpu_min"],
        policy=value["policy"],
        jit_compile=value["jit_compile"],
        hyperparams=value["hyperparams"],
        optimizer=value["optimizer"],
        model_path=where(value["files"]["model"]),
        best_model_path=where(value["files"]["best"]),
        summary_path=where(value["files"]["summary"]),
        history_path=where(value["files"]["history"]),
        plot_path=where(value["files"]["plot"]),
        tensorboard_dir=None if value["tensorboard"] is None else paths.root / value["tensorboard"],
        resumed_from_epoch=value["resumed_from_epoch"],
        loaded=loaded,
    )


# --------------------------------------------------------------------------- #
# The pipeline
# --------------------------------------------------------------------------- #


def _phases(epochs: int, two_phase: bool, head_epochs, finetune_lr_scale) -> list[dict]:
    if not two_phase:
        return [{"index": 0, "name": "single", "end": epochs, "lr_scale": 1.0}]
    if epochs < 2:
        raise ValueError("two-phase fine-tuning needs epochs >= 2 (head epochs, then fine-tuning epochs)")
    head = head_epochs if head_epochs is not None else min(5, max(1, epochs // 4))
    if not 1 <= int(head) < epochs:
        raise ValueError(f"head_epochs must be between 1 and epochs - 1 ({epochs - 1}), got {head_epochs!r}")
    return [
        {"index": 0, "name": "head", "end": int(head), "lr_scale": 1.0},
        {"index": 1, "name": "finetune", "end": epochs, "lr_scale": float(finetune_lr_scale)},
    ]


def _no_notebook_display():
    """Keras renders the summary through rich, which in a notebook leaves an empty output block per call
    even when the text is captured; IPython's capture swallows it. Outside IPython: nothing to do."""
    try:
        from IPython import get_ipython
        from IPython.utils.capture import capture_output
    except ImportError:
        return contextlib.nullcontext()
    return capture_output(stdout=False, stderr=False) if get_ipython() is not None else contextlib.nullcontext()


def _summary_text(model, model_name, device, opt, builder_hp) -> str:
    lines: list[str] = []
    with _no_notebook_display():
        model.summary(print_fn=lambda text, *args, **kwargs: lines.append(str(text)), line_length=120)
    n_frozen = sum(1 for layer in model.layers if not layer.trainable)
    lines += [
        "",
        f"model: {model_name}; layers: {len(model.layers)}, frozen: {n_frozen}",
        f"dtype policy: {device.policy}; jit_compile: {device.jit_compile}; device: {device.accelerator.describe()}",
        f"optimizer: {opt}",
        f"model hyperparameters: {builder_hp}",
    ]
    return "\n".join(lines) + "\n"


def _load_state(path: Path, key: str):
    if not path.is_file():
        return None
    try:
        state = load_pickle(path)
        if state.get("format") != TRAIN_FORMAT or state.get("key") != key:
            raise ValueError("resume state of another run")
        return state
    except Exception as exc:
        log.warning("ignoring resume state %s (%s: %s); training from the start", path, type(exc).__name__, exc)
        return None


def _restore_variables(variables, values, what):
    variables = list(variables)
    if len(variables) != len(values):
        raise ValueError(f"resume state has {len(values)} {what} variables, the rebuilt run {len(variables)}")
    for var, value in zip(variables, values):
        if tuple(var.shape) != tuple(np.shape(value)):
            raise ValueError(
                f"resume state: {what} variable {var.path} has shape {np.shape(value)}, expected {var.shape}"
            )
    for var, value in zip(variables, values):
        var.assign(value)


def _walk_layers(model):
    """Every layer, nested models' layers included, each container before its own layers."""
    for layer in model.layers:
        yield layer
        if hasattr(layer, "layers"):
            yield from _walk_layers(layer)


def _set_phase_trainable(model, frozen_in_head: list, phase_name: str) -> None:
    """Phase 2: unfreeze the base layers frozen in phase 1, BatchNormalization excepted.

    ``frozen_in_head`` is in :func:`_walk_layers` order, so a nested model is
    unfrozen (which unfreezes all its layers) before its BatchNormalization
    layers are frozen again.
    """
    if phase_name != "finetune":
        return
    for layer in frozen_in_head:
        layer.trainable = not isinstance(layer, keras.layers.BatchNormalization)


def run_model_pipeline(
    model_func,
    model_name,
    hyperparams,
    input_shape,
    num_classes,
    train_generator,
    test_generator,
    epochs,
    accum_steps,
    *,
    paths: Paths | None = None,
    cache: StageCache | None = None,
    cache_deps=(),
    mixed_precision="auto",
    jit_compile="auto",
    two_phase: bool = False,
    head_epochs: int | None = None,
    finetune_lr_scale: float = 0.1,
    callbacks_config: dict | None = None,
    seed: int | None = 0,
    verbose="auto",
    tensorboard: bool = True,
    plot: bool = True,
    evaluate: bool = True,
    extra_callbacks=(),
    timer=None,
    timer_group: str = "default",
) -> TrainResult:
    """Build, compile, train, test and save one model; load the result if it was already trained.

    Args:
        model_func: the builder, ``model_func(input_shape, num_classes, ...)``
            (e.g. ``carclf.models.create_resnet50_model``); its hyperparameters
            are chosen by :func:`filter_hyperparams`.
        model_name: the model's name (folders, logs, the stage name ``train-<name>``).
        hyperparams: model and optimizer hyperparameters (``optimizer_type``,
            ``learning_rate``, ``beta_1``, ``beta_2``, ``decay``,
            ``weight_decay``, ``momentum``, ``rho`` and the builder's own).
        input_shape, num_classes: the model's input and number of classes.
        train_generator, test_generator: batches of ``(images, one-hot
            labels)`` (``carclf.generators.ImageBatches``); the test set is the
            validation data, as in the report.
        epochs: the most epochs to train (EarlyStopping may stop sooner).
        accum_steps: gradient accumulation over that many batches (None, 0 or 1: off).
        paths: the folders (default ``Paths.default()``).
        cache: the stage cache (default ``StageCache(paths.pickles)``).
        cache_deps: upstream ``StageResult`` objects (the decoded data, the
            augmented set, the hyperparameter search), so that new data retrains.
        mixed_precision: ``"auto"`` (mixed_float16 on a GPU, off on a CPU),
            ``True``, ``False``, ``"bfloat16"``; see :mod:`carclf.device`.
        jit_compile: ``"auto"`` (XLA on a GPU), ``True`` or ``False``.
        two_phase, head_epochs, finetune_lr_scale: optional two-phase
            fine-tuning (module docstring).
        callbacks_config: overrides of :data:`DEFAULT_CALLBACKS`.
        seed: ``keras.utils.set_random_seed`` before building (``None``: leave the seeds alone).
        verbose: ``fit``'s verbosity; a nonzero value also prints the summary.
        tensorboard: write TensorBoard logs under ``logs/tensorboard/<name>/<key>``.
        plot: save the training curves as ``history.png``.
        evaluate: test the final model on ``test_generator`` (``test_metrics``).
        extra_callbacks: more Keras callbacks, run after the epoch's state is saved.
        timer: a ``carclf.runlog.StageTimer``: the training (not a cache load)
            is recorded as stage ``model_name`` in group ``timer_group``.

    Returns:
        A :class:`TrainResult`.

    Raises:
        UnknownOptimizerError: ``optimizer_type`` is not Adam, SGD, RMSprop or Adagrad.
        NonFiniteLossError: the loss became NaN or infinite.
    """
    paths = paths or Paths.default()
    cache = cache or StageCache(paths.pickles)
    if isinstance(epochs, bool) or not isinstance(epochs, (int, np.integer)) or epochs < 1:
        raise ValueError(f"epochs must be a positive integer, got {epochs!r}")
    epochs = int(epochs)
    hyperparams = dict(hyperparams or {})
    call_kwargs, builder_hp = filter_hyperparams(model_func, hyperparams)
    opt = optimizer_settings(hyperparams, accum_steps)
    phases = _phases(epochs, two_phase, head_epochs, finetune_lr_scale)
    if two_phase and not ("x_trainable" in builder_hp or "hyperparams" in call_kwargs):
        raise ValueError(
            f"two-phase fine-tuning needs a builder that takes x_trainable; {_qualname(model_func)} does not"
        )
    device = configure(mixed_precision, jit_compile)
    cb_settings = _merge_callbacks(callbacks_config)
    deps = list(cache_deps)
    stage = f"train-{model_name}"
    config = {
        "format": TRAIN_FORMAT,
        "model_name": model_name,
        "builder": _qualname(model_func),
        "hyperparams": builder_hp,
        "optimizer": opt,
        "input_shape": [int(v) for v in input_shape],
        "num_classes": int(num_classes),
        "epochs": epochs,
        "accum_steps": opt["accum_steps"],
        "phases": phases,
        "policy": device.policy,
        "callbacks": cb_settings,
        "seed": seed,
        "train": describe_generator(train_generator),
        "test": describe_generator(test_generator),
    }
    key = cache.key(stage, config, deps)
    run_dir = paths.models / model_name / key
    model_rel = f"{model_name}/{key}/{model_name}.keras"
    if cache.exists(stage, key) and not (paths.models / model_rel).is_file():
        log.warning(
            "%s: the stored result %s has lost its model file %s; training again",
            model_name,
            key,
            paths.models / model_rel,
        )
        cache.invalidate(stage, key)

    def compute():
        stage_timer = timer.stage(model_name, group=timer_group) if timer is not None else contextlib.nullcontext()
        with stage_timer:
            return _train(
                model_func=model_func,
                model_name=model_name,
                call_kwargs=call_kwargs,
                builder_hp=builder_hp,
                opt=opt,
                input_shape=tuple(int(v) for v in input_shape),
                num_classes=int(num_classes),
                train_generator=train_generator,
                test_generator=test_generator,
                phases=phases,
                device=device,
                cb_settings=cb_settings,
                seed=seed,
                verbose=verbose,
                tensorboard=tensorboard,
                plot=plot,
                evaluate=evaluate,
                extra_callbacks=list(extra_callbacks),
                paths=paths,
                key=key,
                run_dir=run_dir,
            )

    result = cache.run(stage, config, compute, deps=deps)
    if result.loaded:
        log.info(
            "%s: loaded the finished run %s (%d epochs) instead of training",
            model_name,
            result.key,
            result.value["epochs_run"],
        )
    shutil.rmtree(run_dir / "resume", ignore_errors=True)  # the result is stored: no resume needed
    return _result(result.value, result.key, result.loaded, paths)


def _train(
    *,
    model_func,
    model_name,
    call_kwargs,
    builder_hp,
    opt,
    input_shape,
    num_classes,
    train_generator,
    test_generator,
    phases,
    device,
    cb_settings,
    seed,
    verbose,
    tensorboard,
    plot,
    evaluate,
    extra_callbacks,
    paths,
    key,
    run_dir,
) -> dict:
    run_dir.mkdir(parents=True, exist_ok=True)
    state_path = run_dir / "resume" / "state.pkl"
    state = _load_state(state_path, key)
    resumed_from = None
    if state is not None:
        resumed_from = state["epoch"] + 1
        log.info("%s: resuming after epoch %d (phase %d) from %s", model_name, resumed_from, state["phase"], state_path)
    clock = _Clock(state["elapsed"] if state is not None else (0.0, 0.0))
    history: dict[str, list] = {k: list(v) for k, v in state["history"].items()} if state is not None else {}

    if seed is not None:
        keras.utils.set_random_seed(int(seed))
    two_phase = len(phases) > 1
    kwargs = dict(call_kwargs)
    if two_phase:
        if "hyperparams" in kwargs:
            kwargs["hyperparams"] = {**kwargs["hyperparams"], "x_trainable": "none"}
        else:
            kwargs["x_trainable"] = "none"
    with precision_policy(device.policy):
        model = model_func(input_shape, num_classes, **kwargs)
    frozen_in_head = [layer for layer in _walk_layers(model) if not layer.trainable] if two_phase else []
    if two_phase and not frozen_in_head:
        log.warning(
            "%s: built with x_trainable='none' it has no frozen layer; the head phase trains everything", model_name
        )

    summary = _summary_text(model, model_name, device, opt, builder_hp)
    summary_path = run_dir / "summary.txt"
    atomic_write(summary_path, summary.encode())
    if verbose not in (0, False):
        print(summary)

    history_path = run_dir / "history.csv"
    best_path = run_dir / "best.keras"
    tb_dir = paths.logs / "tensorboard" / model_name / key if tensorboard and tensorboard_available() else None
    if tensorboard and tb_dir is None:
        log.warning(
            "%s: no TensorBoard logs: the tensorboard package is not installed (pip install tensorboard to get them)",
            model_name,
        )
    stopped_early = False

    for phase in phases:
        if state is not None and phase["index"] < state["phase"]:
            continue  # finished before the restart; its weights are in the state of a later phase
        _set_phase_trainable(model, frozen_in_head, phase["name"])
        optimizer, schedule = make_optimizer(opt, lr_scale=phase["lr_scale"])
        model.compile(
            optimizer=optimizer,
            loss="categorical_crossentropy",
            metrics=report_metrics(),
            jit_compile=device.jit_compile,
        )
        callbacks = create_callbacks(
            model_name,
            settings=cb_settings,
            checkpoint_path=best_path,
            tensorboard_dir=tb_dir,
            schedule=schedule,
            learning_rate=opt["learning_rate"] * phase["lr_scale"],
            state_path=state_path,
            extra=extra_callbacks,
            verbose=0 if verbose in (0, False) else 1,
        )
        restore = None
        stopped = False
        start = len(next(iter(history.values()), []))
        if state is not None and phase["index"] == state["phase"]:
            model.optimizer.build(model.trainable_variables)
            _restore_variables(model.variables, state["model_variables"], "model")
            _restore_variables(model.optimizer.variables, state["optimizer_variables"], "optimizer")
            if schedule is not None and state["lr_scale"] is not None:
                schedule.scale = state["lr_scale"]
            restore = state
            stopped = state["stopped"]
            start = state["epoch"] + 1
            state = None
        log.info(
            "%s: phase %s, epochs %d..%d of %d, learning rate %.3g%s",
            model_name,
            phase["name"],
            start + 1,
            phase["end"],
            phases[-1]["end"],
            _current_lr(model.optimizer),
            f", gradient accumulation over {opt['accum_steps']} batches" if opt["accum_steps"] else "",
        )
        saver = ResumableState(
            state_path,
            key=key,
            phase=phase,
            callbacks=callbacks,
            schedule=schedule,
            train_generator=train_generator,
            history=history,
            history_path=history_path,
            restore=restore,
            clock=clock,
            record_phase=two_phase,
        )
        if restore is not None:
            # counters for a fit that may not run (stopped, or all epochs done)
            saver.on_train_begin()
        if not stopped and start < phase["end"]:
            if restore is not None:
                saver.restore = restore  # again, after the callbacks' own on_train_begin
            model.fit(
                train_generator,
                validation_data=test_generator,
                epochs=phase["end"],
                initial_epoch=start,
                callbacks=callbacks.as_list(saver),
                verbose=verbose,
                # The generator shuffles itself, per (seed, epoch); Keras's own
                # batch-order shuffle draws from the global NumPy RNG, which a
                # resumed process would not replay.
                shuffle=False,
            )
        es = callbacks.early_stopping
        # whether the last phase ended early (an early stop of the head phase
        # only starts the fine-tuning sooner)
        stopped_early = es is not None and es.stopped_epoch > 0
        if es is not None and es.restore_best_weights and es.best_weights is not None:
            model.set_weights(es.best_weights)

    epochs_run = len(next(iter(history.values()), []))
    if epochs_run and not history_path.exists():
        atomic_write(history_path, _history_csv(history))

    model_path = save_model_atomic(model, run_dir / f"{model_name}.keras")
    test_metrics = {}
    if evaluate:
        test_metrics = {k: float(v) for k, v in model.evaluate(test_generator, verbose=0, return_dict=True).items()}
        log.info("%s: test %s", model_name, ", ".join(f"{k} {v:.4f}" for k, v in test_metrics.items()))

    plot_path = None
    if plot and epochs_run:
        from carclf.report import plot_history

        plot_path = run_dir / "history.png"
        plot_history(history, model_name, out_path=plot_path)

    for source in (model_path, summary_path, history_path):
        if source.exists():
            _publish(source, paths.models / model_name / source.name)

    wall, cpu = clock()
    rel = lambda p: None if p is None or not Path(p).exists() else Path(p).relative_to(paths.models).as_posix()  # noqa: E731
    return {
        "model_name": model_name,
        "history": history,
        "epochs_run": epochs_run,
        "stopped_early": stopped_early,
        "test_metrics": test_metrics,
        "wall_min": wall / 60,
        "cpu_min": cpu / 60,
        "policy": device.policy,
        "jit_compile": device.jit_compile,
        "hyperparams": builder_hp,
        "optimizer": opt,
        "files": {
            "model": rel(model_path),
            "best": rel(best_path),
            "summary": rel(summary_path),
            "history": rel(history_path),
            "plot": rel(plot_path),
        },
        "tensorboard": None if tb_dir is None else tb_dir.relative_to(paths.root).as_posix(),
        "resumed_from_epoch": resumed_from,
    }
