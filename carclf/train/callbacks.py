"""The report's callbacks (``create_callbacks``), and the ones carclf adds: a stop on a non-finite loss and
a checkpoint that is written through a temporary file (docs/training.md)."""

from __future__ import annotations

import logging
import math
import threading
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any

import keras
import numpy as np

from carclf.cache import native
from carclf.settings import CallbackSettings, nested
from carclf.train.optimizers import PlateauInverseTimeDecay, current_lr, to_float
from carclf.train.saving import save_weights_atomic

log = logging.getLogger("carclf.train")

__all__ = [
    "BestModelCheckpoint",
    "EMAWeights",
    "EarlyStopping",
    "NonFiniteLossError",
    "ReduceLROnPlateau",
    "StopOnNonFiniteLoss",
    "TrainingCallbacks",
    "callback_state",
    "create_callbacks",
    "device_copy",
    "set_callback_state",
    "tensorboard_available",
]


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite."""


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
        old_lr = current_lr(optimizer)
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


def device_copy(variables) -> list:
    """The variables' values copied where they live (on the GPU: no transfer to the host, no wait)."""
    return [keras.ops.copy(v.value) for v in variables]


class EarlyStopping(keras.callbacks.EarlyStopping):
    """Keras's EarlyStopping, keeping the best epoch's weights as copies on the device rather than fetching
    them to the host at every improvement (the resume state fetches them when it is taken)."""

    def on_epoch_end(self, epoch, logs=None):
        restore, self.restore_best_weights = self.restore_best_weights, False
        try:
            super().on_epoch_end(epoch, logs)
        finally:
            self.restore_best_weights = restore
        if restore and (self.best_weights is None or self.best_epoch == epoch):
            self.best_weights = device_copy(self.model.weights)


class BestModelCheckpoint(keras.callbacks.ModelCheckpoint):
    """ModelCheckpoint with ``save_best_only=True`` and ``save_weights_only=True``, off the training loop's path.

    Whenever ``monitor`` improves it keeps a copy of the weights on the device (no optimizer: the resume
    state holds that while a run can resume); the resume state carries the copy, and :meth:`write` saves it
    to ``filepath`` (``.weights.h5``, through a temporary file) once, when the run finishes.
    """

    async_safe = True  # its batch hooks do nothing: they must not make Keras wait for every step

    def __init__(self, filepath, monitor="val_top3_accuracy", mode="max", verbose=0):
        super().__init__(
            filepath, monitor=monitor, mode=mode, save_best_only=True, save_weights_only=True, verbose=verbose
        )
        self.best = None
        self.best_epoch = None
        self.best_weights = None
        self.early_stopping = None  # EarlyStopping that runs before it, whose copy of the weights it can share
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
                print(f"\nEpoch {epoch + 1}: {self.monitor} improved to {current:.5f}")
            self.best, self.best_epoch = current, epoch
            es = self.early_stopping
            if es is not None and es.best_epoch == epoch and es.best_weights is not None:
                self.best_weights = es.best_weights  # the same epoch's weights: one copy (pickled once)
            else:
                self.best_weights = device_copy(self.model.weights)

    def write(self, model):
        """Save the best epoch's weights to ``filepath``; the model's own weights are left as they were."""
        if self.best_weights is None:
            return None
        current = model.get_weights()
        model.set_weights(self.best_weights)
        try:
            return save_weights_atomic(model, self.filepath)
        finally:
            model.set_weights(current)


class StopOnNonFiniteLoss(keras.callbacks.Callback):
    """Raise :class:`NonFiniteLossError`, naming the model and epoch, when the loss is NaN or infinite.

    Each step's loss is checked when Keras hands it over: on JAX, where this callback's ``async_safe`` lets
    Keras run batch hooks in a thread, behind the training loop; on TensorFlow, whose trainer converts
    every step's logs anyway, at once. The training thread waits for those checks to catch up only every
    ``check_every`` steps, so it reads values at most that often and stops within that many steps of the
    first non-finite loss (the epoch's loss is a running mean: it stays non-finite once a step's was).
    Nothing is raised in Keras's thread: the error is raised in the training thread.
    """

    async_safe = True

    def __init__(self, model_name: str, learning_rate: float | None = None, state_path=None, check_every: int = 1):
        super().__init__()
        self.model_name = model_name
        self.learning_rate = learning_rate
        self.state_path = state_path
        self.check_every = max(1, int(check_every))
        self.epoch = 0
        self._checked = threading.Condition()
        self._last_checked = -1
        self._error = None
        self._next_wait = self.check_every

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch
        with self._checked:  # Keras has run every batch hook of the last epoch before its end
            self._last_checked, self._error = -1, None
        self._next_wait = self.check_every

    def on_train_batch_begin(self, batch, logs=None):
        if batch >= self._next_wait:  # batch jumps by steps_per_execution
            self._next_wait = batch + self.check_every
            with self._checked:
                self._checked.wait_for(lambda: self._last_checked >= batch - 1 or self._error, timeout=600)
            self._stop_if_failed()

    def on_train_batch_end(self, batch, logs=None):
        try:
            if self._error is None:  # the first non-finite step is the one reported
                self._check(logs, f"batch {batch + 1}")
        except NonFiniteLossError as exc:
            with self._checked:
                self._error = self._error or exc
        finally:
            with self._checked:
                self._last_checked = max(self._last_checked, batch)
                self._checked.notify_all()
        # On JAX this runs in Keras's thread, and stopping from there breaks the epoch while the trainer's
        # state is mid-step (its buffers donated): the training thread stops at its next wait instead.
        if keras.backend.backend() != "jax":
            self._stop_if_failed()

    def on_epoch_end(self, epoch, logs=None):
        # First of the epoch's callbacks: nothing has saved the epoch's non-finite weights yet.
        if self._error is not None:
            raise self._error
        self._check(logs, "epoch end")

    def _stop_if_failed(self):
        """Stop at a non-finite loss: raise now on TensorFlow; on JAX, whose trainer holds the variables'
        values outside the model during an epoch, let Keras end the epoch (it puts them back) and raise
        at its end."""
        if self._error is None:
            return
        self.model.stop_training = True
        if keras.backend.backend() != "jax":
            raise self._error

    def _check(self, logs, where):
        loss = (logs or {}).get("loss")
        if loss is None:
            return
        loss = to_float(loss)
        if math.isfinite(loss):
            return
        saved = f"; the last finished epoch ({self.epoch}) is kept in {self.state_path}" if self.state_path else ""
        lr = f" (now {self.learning_rate:g})" if self.learning_rate else ""
        message = (
            f"{self.model_name}: the training loss became {loss} at epoch {self.epoch + 1}, {where}. "
            f"Training stopped{saved}. Lower the learning_rate{lr}, check the data for non-finite "
            f"pixels or wrong labels, or try mixed_precision=False."
        )
        log.error(message)
        raise NonFiniteLossError(message)


class EMAWeights(keras.callbacks.SwapEMAWeights):
    """The optimizer's moving average of the weights in the model while it is validated and while the
    epoch's callbacks (early stopping, checkpoint) look at it; :meth:`swap_back_callback` puts the
    trained weights back before the resume state is written (docs/recipes.md)."""

    def on_epoch_end(self, epoch, logs=None):
        if not self._ema_weights_in_model:
            self._swap_variables()
            self._ema_weights_in_model = True

    def swap_back(self):
        if self._ema_weights_in_model:
            self._swap_variables()
            self._ema_weights_in_model = False

    def swap_back_callback(self):
        return keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs=None: self.swap_back())


def callback_state(cb, fetched: dict | None = None) -> dict | None:
    """The counters a resume must restore, the best weights fetched to the host (``fetched``: the lists
    fetched so far by ``id``, so that weights shared by two callbacks are fetched and pickled once)."""
    if cb is None:
        return None
    fetched = {} if fetched is None else fetched

    def host(weights):
        if weights is None:
            return None
        if id(weights) not in fetched:
            fetched[id(weights)] = [np.asarray(keras.ops.convert_to_numpy(w)) for w in weights]
        return fetched[id(weights)]

    if isinstance(cb, keras.callbacks.EarlyStopping):
        return {
            "wait": cb.wait,
            "best": native(cb.best),
            "best_epoch": cb.best_epoch,
            "stopped_epoch": cb.stopped_epoch,
            "best_weights": host(cb.best_weights),
        }
    if isinstance(cb, keras.callbacks.ReduceLROnPlateau):
        return {"wait": cb.wait, "best": native(cb.best), "cooldown_counter": cb.cooldown_counter}
    if isinstance(cb, BestModelCheckpoint):
        return {"best": cb.best, "best_epoch": cb.best_epoch, "best_weights": host(cb.best_weights)}
    return None


def set_callback_state(cb, state: dict | None) -> None:
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
    ema: EMAWeights | None = None

    def as_list(self, state_callback=None) -> list:
        # The state callback runs after those whose counters it saves and restores; extra callbacks see
        # the epoch after it is saved. With EMA, the averaged weights are in the model from validation to
        # just before the state is written.
        swap_in, swap_out = (self.ema, self.ema.swap_back_callback()) if self.ema is not None else (None, None)
        cbs = [self.non_finite, swap_in, self.early_stopping, self.reduce_lr, self.checkpoint, self.tensorboard]
        cbs = [cb for cb in cbs + [swap_out] if cb is not None]
        if state_callback is not None:
            cbs.append(state_callback)
        return cbs + list(self.extra)


def create_callbacks(
    model_name: str,
    *,
    settings: CallbackSettings | dict | None = None,
    checkpoint_path=None,
    tensorboard_dir=None,
    schedule: PlateauInverseTimeDecay | None = None,
    learning_rate: float | None = None,
    state_path=None,
    extra=(),
    verbose=0,
    ema=False,
    check_every=1,
) -> TrainingCallbacks:
    """The report's ``create_callbacks``: EarlyStopping, ReduceLROnPlateau, ModelCheckpoint, and more.

    ``settings`` is a :class:`carclf.settings.CallbackSettings` (or a dict of its fields, e.g.
    ``{"early_stopping": {"patience": 3}}``); a callback set to ``None`` is left out. The report's
    ``monit_loss`` (``val_loss``, mode min) drives EarlyStopping and ReduceLROnPlateau, ``monit_acc``
    (``val_top3_accuracy``, mode max) the checkpoint at ``checkpoint_path``. TensorBoard logs go to
    ``tensorboard_dir`` (none when ``None``). Gradient accumulation is not a callback here: it is the
    optimizer's ``gradient_accumulation_steps``. ``ema``: the optimizer keeps a moving average of the
    weights (``use_ema``), which validation and these callbacks then see (:class:`EMAWeights`).
    ``check_every``: the non-finite-loss stop reads the loss every this many steps.
    """
    cfg = nested(CallbackSettings)(settings or {})
    es = rl = ck = tb = None
    if cfg.early_stopping is not None:
        es = EarlyStopping(verbose=verbose, **asdict(cfg.early_stopping))
    if cfg.reduce_lr is not None:
        rl = ReduceLROnPlateau(schedule=schedule, verbose=verbose, **asdict(cfg.reduce_lr))
    if cfg.checkpoint is not None and checkpoint_path is not None:
        ck = BestModelCheckpoint(checkpoint_path, verbose=verbose, **asdict(cfg.checkpoint))
        ck.early_stopping = es if es is not None and es.restore_best_weights else None
    if tensorboard_dir is not None:
        tb = _tensorboard(model_name, tensorboard_dir)
    non_finite = StopOnNonFiniteLoss(model_name, learning_rate, state_path, check_every)
    return TrainingCallbacks(es, rl, ck, non_finite, tb, list(extra), EMAWeights() if ema else None)


def _tensorboard(model_name, log_dir):
    if not tensorboard_available():
        log.warning(
            "%s: no TensorBoard logs: the tensorboard package is not installed (pip install tensorboard to get them)",
            model_name,
        )
        return None
    try:
        return EpochTensorBoard(
            log_dir=str(log_dir), histogram_freq=0, write_graph=False, update_freq="epoch", profile_batch=0
        )
    except Exception as exc:  # TensorBoard needs TensorFlow's summary writer
        log.warning("%s: no TensorBoard logs (%s: %s)", model_name, type(exc).__name__, exc)
        return None


class EpochTensorBoard(keras.callbacks.TensorBoard):
    """TensorBoard that logs at epoch ends only: without batch hooks, Keras need not wait for every step
    to hand it the step's logs (it writes nothing per batch with ``update_freq="epoch"`` anyway)."""

    on_train_batch_begin = keras.callbacks.Callback.on_train_batch_begin
    on_train_batch_end = keras.callbacks.Callback.on_train_batch_end


def tensorboard_available() -> bool:
    """Whether Keras's TensorBoard callback can write (it needs TensorFlow and the tensorboard package)."""
    import importlib.util

    return all(importlib.util.find_spec(name) is not None for name in ("tensorflow", "tensorboard"))
