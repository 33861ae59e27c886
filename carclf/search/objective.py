"""One search's context, and one trial: a short training run on a validation split of the training set."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from carclf.cache import canonical, qualname
from carclf.generators import ImageBatches, describe_hook
from carclf.paths import Store
from carclf.search.space import OPTIMIZER_PARAMS, REPORT_SPACE, search_space, split_params, widen
from carclf.settings import (
    AugmentSettings,
    CallbackSettings,
    EarlyStoppingSettings,
    Hyperparams,
    SearchSettings,
    TrainSettings,
    key_fields,
)
from carclf.splits import Split, SplitView, subsample_split, validation_split

log = logging.getLogger("carclf.search")

__all__ = ["SEARCH_FORMAT", "SearchContext", "folder_lock", "prepare", "run_trial"]

#: Bumped when a trial's meaning changes (part of every search key).
SEARCH_FORMAT = 3


@dataclass
class SearchContext:
    """Everything a trial needs, and what identifies the search."""

    settings: SearchSettings
    training: TrainSettings  # how every trial trains: the search's epochs and callbacks on the run's settings
    model_name: str
    builder: Callable
    space: dict
    base_hyperparams: dict
    defaults: dict  # trial one: the run's own value of each dimension (``applied`` keeps what it trains with)
    train_view: SplitView
    val_view: SplitView
    num_classes: int
    seed: int
    augment: Any  # an online augmentation hook, or the AugmentSettings each trial builds its hook from
    store: Store
    deps: list
    data: dict  # what identifies the training data (rows, labels, sampled pixels)
    widened: dict = field(default_factory=dict)  # name -> (declared, widened) where a default lay outside
    key: str = ""

    @property
    def backend(self) -> str:
        return self.settings.backend

    @property
    def objective(self) -> str:
        return self.settings.objective

    @property
    def direction(self) -> str:
        return direction(self.settings.objective)

    @property
    def input_shape(self) -> tuple:
        return (*self.train_view.image_size, 3)

    @property
    def identity(self) -> dict:
        """What identifies the search: its key's config, recorded with the result (``SearchResult.settings``)."""
        return canonical(
            {
                "format": SEARCH_FORMAT,
                **{
                    k: v
                    for k, v in key_fields(self.settings).items()
                    if k not in ("n_trials", "model", "skopt", "optuna")
                },
                "model_name": self.model_name,
                "builder": qualname(self.builder),
                "space": self.space,
                "optimizer_params": {k: v for k, v in OPTIMIZER_PARAMS.items() if k in self.space},
                "hyperparams": self.base_hyperparams,
                "defaults": self.defaults,
                "training": {k: v for k, v in key_fields(self.training).items() if k != "callbacks"},
                "direction": self.direction,
                "data": self.data,
                "input_shape": list(self.input_shape),
                "train_rows": len(self.train_view),
                "validation_rows": len(self.val_view),
                "batch_size": self.training.batch_size,
                "accum_steps": self.training.accum_steps,
                "seed": self.seed,
                "augment": key_fields(self.augment)
                if isinstance(self.augment, AugmentSettings)
                else describe_hook(self.augment),
                self.backend: self.settings.backend_settings,  # the other backend's settings never reach this search
            }
        )

    def chance_loss(self) -> float:
        """What skopt is told for a diverged trial when no worse one was seen: chance-level loss, or 0 accuracy."""
        return math.log(self.num_classes) if self.direction == "minimize" else 0.0  # skopt minimizes -accuracy


def direction(objective: str) -> str:
    return "minimize" if "loss" in objective else "maximize"


def _training_split(train) -> Split:
    """The training split from a split, a ``{"train", "test"}`` dict (only "train" is touched) or a generator."""
    if isinstance(train, Mapping):
        if "train" not in train:
            raise ValueError(f"the data dict has no 'train' split: {sorted(train)}")
        train = train["train"]
    if isinstance(train, ImageBatches):
        train = train.split
    if train.split == "test":
        raise ValueError("the search got the test split; it searches on the training set only")
    if len(train.parts) > 1:
        log.warning(
            "the search got a split of %d parts (originals and augmented variants?): a validation row's "
            "augmented copies may be in training; pass the decoded training split and augment= instead",
            len(train.parts),
        )
    return train


def _describe_data(split: Split, sample: int = 32) -> dict:
    """The training data's identity, the same on every machine that has the same images.

    Rows, image size, classes, a digest of the labels and file names (not the folders, which differ between
    machines) and a digest of the pixels of ``sample`` rows spread over the split (so another image size,
    crop or margin is another search).
    """
    n = len(split)
    labels = hashlib.sha256(np.asarray(split.class_ids, dtype=np.int64).tobytes())
    labels.update("\n".join(Path(str(p)).name for p in split.paths).encode())
    rows = np.unique(np.linspace(0, n - 1, min(n, sample)).round().astype(np.int64))
    pixels = hashlib.sha256(np.ascontiguousarray(split.read(rows, dtype=np.uint8)).tobytes())
    return {
        "rows": int(n),
        "image_size": [int(v) for v in split.image_size],
        "num_classes": int(split.num_classes),
        "labels": labels.hexdigest()[:16],
        "pixels": pixels.hexdigest()[:16],
    }


def _builder(model, model_name):
    if isinstance(model, str):
        from carclf.models import model_spec

        return model_spec(model).builder, model_name or model
    if callable(model):
        return model, model_name or getattr(model, "__name__", "model")
    raise TypeError(f"model must be a name from carclf.models.NAMES or a builder function, got {model!r}")


def prepare(
    model,
    train,
    settings: SearchSettings,
    *,
    model_name=None,
    hyperparams=None,
    training=None,
    seed=0,
    augment=None,
    store=None,
    deps=(),
    optimizer=None,
) -> SearchContext:
    """The context of one search: the split views it trains and validates on, its space, trial one, its key.

    ``hyperparams`` are the run's (the searched ones among them are trial one's values, the others stay
    fixed), ``training`` its :class:`carclf.settings.TrainSettings` and ``augment`` its
    :class:`carclf.settings.AugmentSettings` (or an augmentation hook): trials train the way the final
    runs do, with the search's epoch budget.
    """
    builder, model_name = _builder(model, model_name)
    run_hp = dict(hyperparams or {})
    optimizer = optimizer or run_hp.get("optimizer_type", "Adam")
    training = _trial_training(settings, training or TrainSettings(), model_name, run_hp)
    crops = isinstance(augment, AugmentSettings) and augment.augmentation != "none" and augment.pipeline == "modern"
    declared = search_space(
        settings.adam_only,
        REPORT_SPACE if settings.ranges == "report" else None,
        optimizer=optimizer,
        schedule=training.schedule,
        two_phase=training.two_phase,
        label_smoothing=training.label_smoothing > 0,
        crop=crops,
    )
    defaults = _default_values(declared, run_hp, training, augment, optimizer)
    space, widened = widen(declared, defaults)  # the same names, so the same defaults
    for name, (old, new) in widened.items():
        log.info("%s: %s widened from %s to %s to hold the default", model_name, name, old, new)
    base = {k: v for k, v in run_hp.items() if k not in space}
    split = _training_split(train)
    source = subsample_split(split, settings.subsample, seed) if settings.subsample is not None else split
    train_view, val_view = validation_split(source, settings.validation_fraction, seed, image_size=settings.input_size)
    store = store or Store.at()
    ctx = SearchContext(
        settings=settings,
        training=training,
        model_name=model_name,
        builder=builder,
        space=space,
        base_hyperparams=base,
        defaults=defaults,
        train_view=train_view,
        val_view=val_view,
        num_classes=int(split.num_classes),
        seed=int(seed),
        augment=augment,
        store=store,
        deps=list(deps),
        data=_describe_data(split),
        widened=widened,
    )
    ctx.key = store.cache.key(f"search-{settings.backend}", ctx.identity, deps)
    return ctx


def _default_values(space: dict, hyperparams: dict, training: TrainSettings, augment, optimizer: str) -> dict:
    """Each searched name's value in the run: its hyperparameters, training or augmentation settings."""
    defaults = Hyperparams().as_dict()
    out = {}
    for name in space:
        if name in hyperparams:
            value = hyperparams[name]
        elif hasattr(training, name):
            value = getattr(training, name)
        elif isinstance(augment, AugmentSettings) and hasattr(augment, name):
            value = getattr(augment, name)
        else:
            value = defaults.get(name)
        if name == "weight_decay":  # what the optimizer applies (AdamW's own default for none)
            from carclf.train.optimizers import optimizer_settings

            value = optimizer_settings({"optimizer_type": optimizer, "weight_decay": value})["weight_decay"] or 0.0
        if name == "optimizer_type":
            value = optimizer
        out[name] = value
    return out


def _trial_training(settings: SearchSettings, training: TrainSettings, model_name, hyperparams) -> TrainSettings:
    """How every trial trains: the run's settings (its recipe: phases, schedule, smoothing, EMA) with the
    search's epochs and an EarlyStopping on the objective; no LR scheduler and no checkpoint during the
    search. Two phases only where the final run has them (a pretrained base), the head's at most
    ``epochs - 1``."""
    from carclf.models import keeps_pretrained

    mode = "min" if direction(settings.objective) == "minimize" else "max"
    early = EarlyStoppingSettings(
        monitor=settings.objective, mode=mode, patience=settings.patience, restore_best_weights=False
    )
    two_phase = training.two_phase and settings.epochs >= 2 and keeps_pretrained(model_name, hyperparams)
    head = training.head_epochs
    if two_phase and head is not None:
        head = min(head, settings.epochs - 1)
    return replace(
        training,
        epochs=settings.epochs,
        two_phase=two_phase,
        head_epochs=head,
        tensorboard=False,
        plot=False,
        evaluate=False,
        callbacks=CallbackSettings(early_stopping=early, reduce_lr=None, checkpoint=None),
    )


def _outcome(state, value=None, best_epoch=None, result=None, history=None, error=None, wall_min=None) -> dict:
    return {
        "state": state,
        "value": value,
        "best_epoch": best_epoch,
        "epochs_run": None if result is None else result.epochs_run,
        "history": history or {},
        "wall_min": result.wall_min if result is not None else wall_min,
        "cpu_min": None if result is None else result.cpu_min,
        "error": error,
        "train_key": None if result is None else result.key,
        "resumed_from_epoch": None if result is None else result.resumed_from_epoch,
    }


def run_trial(ctx: SearchContext, params: dict, work_dir: Path, extra_callbacks=()) -> dict:
    """Train one trial with the report's pipeline; its validation value and what it took.

    ``work_dir`` is the trial's own carclf root (models/, pickles/, logs/), so trial runs never touch the
    real ones, and a killed trial resumes at its last finished epoch when run again in the same folder.
    """
    import carclf.train  # run_model_pipeline is looked up when called (the tests replace it)

    hyper, train_changes, augment_changes = split_params(params)
    training = replace(ctx.training, **train_changes)
    batch_size = training.batch_size
    augment = trial_augment(ctx, augment_changes)
    train_gen = ImageBatches(ctx.train_view, batch_size, shuffle=True, seed=ctx.seed, augment=augment)
    val_gen = ImageBatches(ctx.val_view, batch_size, shuffle=False, seed=ctx.seed)
    started = time.perf_counter()
    try:
        result = carclf.train.run_model_pipeline(
            ctx.builder,
            ctx.model_name,
            {**ctx.base_hyperparams, **hyper},
            ctx.input_shape,
            ctx.num_classes,
            train_gen,
            val_gen,
            settings=training,
            store=Store.at(work_dir),
            seed=ctx.seed,
            extra_callbacks=list(extra_callbacks),
        )
    except carclf.train.NonFiniteLossError as exc:
        log.warning("trial with %s diverged: %s", params, exc)
        return _outcome("diverged", error=str(exc), wall_min=(time.perf_counter() - started) / 60)
    finally:
        _free_memory()
    if ctx.objective not in result.history:
        raise KeyError(f"the objective {ctx.objective!r} is not in the training history: {sorted(result.history)}")
    series = np.asarray(result.history[ctx.objective], dtype=float)
    finite = np.isfinite(series)
    if not finite.any():
        return _outcome("diverged", result=result, error=f"{ctx.objective} was never finite")
    masked = np.where(finite, series, np.inf if ctx.direction == "minimize" else -np.inf)
    best = int(np.argmin(masked) if ctx.direction == "minimize" else np.argmax(masked))
    keep = {
        k: [float(v) for v in result.history[k]] for k in ("loss", "val_loss", ctx.objective) if k in result.history
    }
    return _outcome("complete", float(series[best]), best + 1, result, keep)


def log_projection(ctx: SearchContext, first: dict, remaining: int) -> None:
    """After trial one: what the rest of the search will take at most (every trial to its last epoch)."""
    if not first.get("wall_min") or remaining <= 0:
        return
    per_epoch = first["wall_min"] / max(1, first.get("epochs_run") or ctx.settings.epochs)
    most = per_epoch * ctx.settings.epochs * remaining
    pruned = "" if ctx.backend == "skopt" or not ctx.settings.optuna.pruner else ", less as the pruner stops trials"
    log.info(
        "%s: trial 1 took %.1f min (%.2f min an epoch); the other %d trials: at most %.1f min%s",
        ctx.model_name,
        first["wall_min"],
        per_epoch,
        remaining,
        most,
        pruned,
    )


def trial_augment(ctx: SearchContext, changes: dict):
    """A trial's augmentation hook: the one given, or the final runs' online augmentation with the trial's
    strength. Offline augmentation (the report's copies) is made online here, with the same transforms and
    probabilities: the search's split is of the originals."""
    if not isinstance(ctx.augment, AugmentSettings):
        return ctx.augment
    settings = replace(ctx.augment, **changes)
    if settings.augmentation == "none":
        return None
    from carclf.augment import OnlineAugment, pipeline_for

    return OnlineAugment(pipeline_for(settings.pipeline, ctx.train_view.image_size, settings.crop_scale))


def _free_memory():
    # Every trial builds a new model: let the backend drop the previous one's graphs (and collect garbage).
    import keras

    keras.backend.clear_session(free_memory=True)


@contextlib.contextmanager
def folder_lock(folder: Path, what: str, blocking: bool):
    """An exclusive advisory lock on a folder (POSIX flock; released when the process dies)."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock
        yield
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            raise RuntimeError(
                f"another process is running {what} ({folder}); wait for it to finish "
                "(to run trials in parallel, use the optuna backend)"
            ) from None
        yield
    finally:
        os.close(fd)


@contextlib.contextmanager
def timed(ctx: SearchContext):
    """The search's wall and CPU time in the execution-time table, when the store has a timer."""
    if ctx.store.timer is None:
        yield
        return
    with ctx.store.timer.stage(f"search {ctx.model_name}", group="optimal"):
        yield
