"""The per-epoch resume state of a training run: written after every epoch, put back by a restarted run.

docs/training.md ("Resume") says what the state holds and why Keras's ``BackupAndRestore`` is not used.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import keras
import numpy as np

from carclf.cache import atomic_pickle, atomic_write, load_pickle
from carclf.runlog import cpu_seconds
from carclf.train.callbacks import TrainingCallbacks, callback_state, set_callback_state
from carclf.train.optimizers import current_lr, to_float
from carclf.train.saving import history_csv
from carclf.train.writer import BackgroundWriter

log = logging.getLogger("carclf.train")

__all__ = ["Clock", "ResumableState", "TRAIN_FORMAT", "host_copy", "load_state", "write_state"]

#: Bumped when training itself changes meaning (part of every stage key and of the resume state).
TRAIN_FORMAT = 1

_ROLES = ("early_stopping", "reduce_lr", "checkpoint")


class Clock:
    """Wall and CPU seconds since creation, plus what earlier sessions of the run spent."""

    def __init__(self, before=(0.0, 0.0)):
        self.before = tuple(before)
        self.wall0 = time.perf_counter()
        self.cpu0 = cpu_seconds()

    def __call__(self):
        return (self.before[0] + time.perf_counter() - self.wall0, self.before[1] + cpu_seconds() - self.cpu0)


def load_state(path: Path, key: str) -> dict | None:
    """The resume state of run ``key`` at ``path``, or None (none there, another run's, or unreadable)."""
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


def host_copy(variables) -> list:
    """Each variable's value as a NumPy array of its own: the training step may overwrite or donate the
    device buffer while a background writer still reads the copy (TensorFlow hands out an owned copy
    already; JAX on a CPU a view of its buffer, which is copied)."""
    arrays = [keras.ops.convert_to_numpy(v.value) for v in variables]
    return [a if a.flags.owndata else a.copy() for a in arrays]


def write_state(job) -> None:
    """A :class:`BackgroundWriter` job of :class:`ResumableState`: ``(path, state)``."""
    path, state = job
    atomic_pickle(path, state)


class ResumableState(keras.callbacks.Callback):
    """Writes the resume state after an epoch; :meth:`resume` puts a saved one back.

    The state is a host copy of the variables (the only part the training loop waits for), handed to
    ``writer`` (a :class:`carclf.train.writer.BackgroundWriter`); with ``interval`` seconds it is taken at
    most that often, and always after a phase's last epoch or an early stop. Put it after the callbacks
    whose counters it saves (``TrainingCallbacks.as_list`` does).
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
        clock=None,
        record_phase: bool = False,
        writer=None,
        interval: float = 0.0,
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
        self.clock = clock or Clock()
        self.record_phase = record_phase
        self._pending = None
        self.writer = writer or BackgroundWriter(write_state, background=False)
        self.interval = float(interval)
        self._last_save = -math.inf

    def resume(self, model, state: dict) -> tuple[int, bool]:
        """Put ``state`` back into the compiled ``model``, its schedule and the callbacks.

        Restores every model and optimizer variable and the schedule's plateau scale, and the callbacks'
        counters now (for a phase whose ``fit`` will not run) and again when ``fit`` starts (EarlyStopping
        and ReduceLROnPlateau reset them in their own ``on_train_begin``). Returns ``(next epoch, stopped)``.
        """
        model.optimizer.build(model.trainable_variables)
        _restore_variables(model.variables, state["model_variables"], "model")
        _restore_variables(model.optimizer.variables, state["optimizer_variables"], "optimizer")
        if self.schedule is not None and state["lr_scale"] is not None:
            self.schedule.scale = state["lr_scale"]
        self._pending = state
        self._set_counters(state)
        return state["epoch"] + 1, bool(state["stopped"])

    def _set_counters(self, state):
        saved = state.get("callbacks", {})
        for role in _ROLES:
            set_callback_state(getattr(self.callbacks, role), saved.get(role))

    def on_train_begin(self, logs=None):
        if self._pending is not None:
            self._set_counters(self._pending)
            self._pending = None

    def on_epoch_begin(self, epoch, logs=None):
        if hasattr(self.train_generator, "set_epoch"):
            self.train_generator.set_epoch(epoch)

    def on_epoch_end(self, epoch, logs=None):
        row = {name: to_float(value) for name, value in (logs or {}).items()}
        if "learning_rate" not in row:
            row["learning_rate"] = current_lr(self.model.optimizer)
        if self.record_phase:
            row["phase"] = float(self.phase["index"])
        n_before = len(next(iter(self.history.values()), []))
        for name in set(row) | set(self.history):
            self.history.setdefault(name, [math.nan] * n_before).append(row.get(name, math.nan))
        if self.history_path is not None:
            atomic_write(self.history_path, history_csv(self.history))
        last = epoch + 1 >= self.phase["end"] or self.model.stop_training
        if last or time.monotonic() - self._last_save >= self.interval:
            self.save(epoch)

    def save(self, epoch):
        """Take the state after ``epoch`` and hand it to the writer."""
        self._last_save = time.monotonic()
        wall, cpu = self.clock()
        fetched = {}
        state = {
            "format": TRAIN_FORMAT,
            "key": self.key,
            "phase": self.phase["index"],
            "epoch": int(epoch),
            "stopped": bool(self.model.stop_training),
            "history": {k: list(v) for k, v in self.history.items()},
            "model_variables": host_copy(self.model.variables),
            "optimizer_variables": host_copy(self.model.optimizer.variables),
            "lr_scale": self.schedule.scale if self.schedule is not None else None,
            "callbacks": {role: callback_state(getattr(self.callbacks, role), fetched) for role in _ROLES},
            "generator_epoch": int(epoch) + 1,
            "elapsed": (wall, cpu),
        }
        self.writer.submit((self.path, state))
