"""The report's hyperparameter search (workflow step 10), on the training set only.

The report tuned ``learning_rate``, ``weight_decay``, ``dropout``, ``beta_1``,
``beta_2``, ``decay``, ``momentum``, ``rho`` and ``optimizer_type``, tried
Bayesian optimisation and scikit-optimize ("Scikit-Optimize was preferred in
the end"), pruned poor trials with Optuna, stopped trials early, settled on
Adam, and pickled the results. This module does the same, crash-proof:

- :data:`SEARCH_SPACE` declares the space once (ranges from the report's
  "Hyper-parameter Search" typical values); :func:`search_space` restricts it
  to Adam (``adam_only=True``, the report's final choice). Both backends are
  built from that one declaration.
- :func:`run_skopt_search` (the default; Gaussian-process Bayesian
  optimisation through ``skopt.Optimizer``'s ask/tell) and
  :func:`run_optuna_search` (TPE with a median pruner, its study in SQLite
  under ``pickles/`` or in any database Optuna supports). :func:`run_search`
  picks one.
- Every trial trains the model with :func:`carclf.train.run_model_pipeline`
  (the pipeline being tuned) for a small epoch budget with EarlyStopping, on
  a stratified split of the *training* set: :func:`validation_split` carves
  the validation rows out of it. The test set is never read.
- :class:`SearchResult`: the best hyperparameters, a trials table (pandas),
  the settings; pickled through the stage cache and written as JSON.
  :func:`plot_convergence` and :func:`plot_importance` draw it.
- :func:`compare_default_optimal` trains each model with the default and with
  the optimal hyperparameters for the report's comparison table and plot
  (:func:`carclf.report.plot_comparison`).

Decisions
---------

**One search = one settings key.** The key hashes everything that decides
the trials: the space, the model and its fixed hyperparameters, the training
data (rows, labels, file names and a digest of sampled pixels: the same on
every machine with the same images), the validation fraction, the subsample,
the input size, the per-trial epoch budget and patience, the batch size, the
objective, the seed and the backend's own settings. It does *not* hold the
number of trials, which is "how many trials to have": asking for more
extends a finished search and reuses its trials; changing any other
setting starts a new search instead of being mistaken for a finished one.
The settings are recorded with every result (``SearchResult.settings``).

**scikit-optimize, resumable.** Trials live in
``pickles/search-skopt/<key>/``: ``trials/<k>.pkl`` (one per finished
trial, written atomically before anything else), ``optimizer.pkl`` (the
``skopt.Optimizer`` after trial k was told, with its random state), and
``work/trial-<k>/`` (the trial's own run of the pipeline, removed once the
trial is recorded). A killed search reloads the finished trials and the
optimizer and goes on at the first missing trial; when the optimizer file is
behind the trials (killed between the two writes), the optimizer is rebuilt
by replaying ask/tell over the stored trials with the same seed, which gives
the same state as the uninterrupted run. So trial k depends only on the seed
and trials 0..k-1, a finished trial is never repeated, and the trial that was
killed resumes even mid-training (run_model_pipeline's per-epoch resume state
is in its ``work`` folder). A second process on the same search is refused
(a lock on the folder). A trial whose loss becomes NaN is recorded as
``diverged`` with the worst value seen so far (the GP needs a number).

**Optuna, resumable and parallel.** The study is
``pickles/search-optuna/<key>.db`` (SQLite in WAL mode with a 60 s busy
timeout, so parallel writers wait instead of failing with "database is
locked"), or any ``storage`` URL (PostgreSQL for several machines). Running
trials send a heartbeat; a trial whose process died is marked failed after
the grace period and re-queued with the same parameters by
``RetryHeartbeatStaleTrialCallback`` (Optuna 5's name for
``RetryFailedTrialCallback``); its work folder is named by its parameters,
so the retry resumes the killed training where it stopped. Each worker calls
:func:`run_optuna_search` with the same ``n_trials``: it runs trials until
the study holds that many finished (complete or pruned) trials, waits while
other workers' last trials run (to retry them if they die), and a trial
started beyond the agreed number by a race is dropped at once (marked failed
as "surplus"), so the study ends with exactly ``n_trials``. The sampler is
TPE; its only state is the stored trials plus a random generator, which is
re-seeded for each trial from ``(seed, trial number)``: the sampler state is
therefore wholly in the study (the seed is a study attribute), a resumed
search needs nothing else, a single worker is reproducible, and two workers
never draw the same random start-up points. (Optuna's ``MaxTrialsCallback``
is not used: it stops a worker only after its next trial, so two workers
overshoot the agreed number.) The median pruner stops a
trial at an epoch boundary when its validation value is worse than the median
of earlier trials at that epoch; a diverged trial (NaN loss) is pruned too.

**Affordable searches.** ``subsample`` (a stratified fraction or count of the
training set), ``input_size`` (images resized as they are read, no new
decoded cache), ``epochs`` (per trial) and ``patience`` (EarlyStopping) keep
a trial short; ReduceLROnPlateau and the best-model checkpoint are off during
the search (the report dropped the scheduler for the search). All are in the
settings key.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import shutil
import socket
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from carclf.cache import StageCache, atomic_pickle, atomic_write, canonical, config_hash, load_pickle
from carclf.config import Paths
from carclf.decoded import epoch_order

log = logging.getLogger("carclf.search")

__all__ = [
    "OPTIMIZER_PARAMS",
    "SEARCH_SPACE",
    "SearchResult",
    "SplitView",
    "compare_default_optimal",
    "param_importances",
    "plot_convergence",
    "plot_importance",
    "run_optuna_search",
    "run_search",
    "run_skopt_search",
    "search_space",
    "subsample_split",
    "validation_split",
]

#: Bumped when a trial's meaning changes (part of every search key).
SEARCH_FORMAT = 1

# --------------------------------------------------------------------------- #
# The search space: edit here
# --------------------------------------------------------------------------- #

#: The report's "Hyper-parameter Search", one entry per hyperparameter:
#: ``(low, high, prior)`` with prior ``"uniform"`` or ``"log-uniform"`` (two
#: ints and ``"uniform"``: an integer range), or a list of choices. Ranges
#: follow the report's typical values: learning rate 1e-3 to 1e-6, weight
#: decay 1e-4 to 1e-6, dropout 0.1 to 0.5, beta_1 and beta_2 around 0.9 and
#: 0.999, decay "a small value like 1e-6", momentum and rho around 0.9.
SEARCH_SPACE: dict[str, Any] = {
    "learning_rate": (1e-6, 1e-3, "log-uniform"),
    "weight_decay": (1e-6, 1e-4, "log-uniform"),
    "dropout": (0.1, 0.5, "uniform"),
    "beta_1": (0.85, 0.95, "uniform"),
    "beta_2": (0.99, 0.9999, "uniform"),
    "decay": (1e-7, 1e-5, "log-uniform"),
    "momentum": (0.8, 0.99, "uniform"),
    "rho": (0.8, 0.99, "uniform"),
    "optimizer_type": ["Adam", "SGD", "RMSprop", "Adagrad"],
}

#: Hyperparameters that only one optimizer reads (the report: beta_1/beta_2
#: for Adam, momentum for SGD, rho for RMSprop); the others apply to all.
#: A trial leaves out those its optimizer does not read.
OPTIMIZER_PARAMS: dict[str, tuple[str, ...]] = {
    "beta_1": ("Adam",),
    "beta_2": ("Adam",),
    "momentum": ("SGD",),
    "rho": ("RMSprop",),
}

_PRIORS = ("uniform", "log-uniform")
_SKOPT_STAGE = "search-skopt"
_OPTUNA_STAGE = "search-optuna"
_RESULT_STAGE = "search"
#: SQLite busy timeout (seconds): a writer waits this long for another's lock.
SQLITE_TIMEOUT = 60


def _is_choices(spec) -> bool:
    return isinstance(spec, (list, tuple)) and len(spec) > 0 and all(isinstance(v, str) for v in spec)


def _check_space(space: Mapping) -> dict:
    """A validated copy of ``space``: ranges as ``(low, high, prior)`` tuples, choices as lists."""
    if not isinstance(space, Mapping) or not space:
        raise ValueError("the search space must be a non-empty dict of name -> (low, high, prior) or [choices]")
    out: dict[str, Any] = {}
    for name, spec in space.items():
        if _is_choices(spec):
            out[name] = list(spec)
            continue
        try:
            low, high, prior = spec
        except (TypeError, ValueError):
            raise ValueError(
                f"search space entry {name!r} must be (low, high, prior) or a list of choices, got {spec!r}"
            ) from None
        if prior not in _PRIORS:
            raise ValueError(f"search space entry {name!r}: prior must be one of {_PRIORS}, got {prior!r}")
        if isinstance(low, bool) or isinstance(high, bool) or not all(isinstance(v, (int, float)) for v in (low, high)):
            raise ValueError(f"search space entry {name!r}: bounds must be numbers, got {low!r}, {high!r}")
        if not low < high:
            raise ValueError(f"search space entry {name!r}: low must be below high, got {low!r}, {high!r}")
        if prior == "log-uniform" and low <= 0:
            raise ValueError(f"search space entry {name!r}: a log-uniform range needs low > 0, got {low!r}")
        out[name] = (low, high, prior)
    if not any(not _is_choices(s) or len(s) > 1 for s in out.values()):
        raise ValueError("the search space has nothing to search: every entry is a single choice")
    return out


def search_space(adam_only: bool = True, space: Mapping | None = None) -> dict:
    """The search space: :data:`SEARCH_SPACE` (or ``space``), checked.

    ``adam_only=True`` (the report's final choice) restricts
    ``optimizer_type`` to Adam and drops the hyperparameters only other
    optimizers read (momentum, rho). A single choice is a constant, not a
    searched dimension.
    """
    space = _check_space(SEARCH_SPACE if space is None else space)
    if adam_only:
        if "optimizer_type" in space and "Adam" not in space["optimizer_type"]:
            raise ValueError(
                f"adam_only=True but the space's optimizer_type choices {space['optimizer_type']} have no Adam"
            )
        space = {name: spec for name, spec in space.items() if _applies(name, "Adam")}
        space["optimizer_type"] = ["Adam"]
        _check_space(space)
    return space


def _applies(name: str, optimizer_type: str | None) -> bool:
    owners = OPTIMIZER_PARAMS.get(name)
    return owners is None or optimizer_type is None or optimizer_type in owners


def _constants(space: dict) -> dict:
    return {name: spec[0] for name, spec in space.items() if _is_choices(spec) and len(spec) == 1}


def _applied(raw: Mapping, space: dict) -> dict:
    """The hyperparameters a trial trains with: its values plus the constants, less what its optimizer ignores."""
    values = {**_constants(space), **dict(raw)}
    kind = values.get("optimizer_type")
    return {name: _native(values[name]) for name in space if name in values and _applies(name, kind)}


def _native(value):
    if isinstance(value, np.generic):
        return value.item()
    return value


def _skopt_dimensions(space: dict):
    from skopt.space import Categorical, Integer, Real

    dims = []
    for name, spec in space.items():
        if _is_choices(spec):
            if len(spec) > 1:
                dims.append(Categorical(list(spec), name=name))
        else:
            low, high, prior = spec
            if isinstance(low, int) and isinstance(high, int):
                dims.append(Integer(low, high, prior=prior, name=name))
            else:
                dims.append(Real(float(low), float(high), prior=prior, name=name))
    return dims


def _suggest(trial, space: dict) -> dict:
    """Optuna's suggestions from the same declaration (only what the chosen optimizer reads)."""
    values = dict(_constants(space))
    choices = space.get("optimizer_type")
    if choices is not None and len(choices) > 1:
        values["optimizer_type"] = trial.suggest_categorical("optimizer_type", list(choices))
    kind = values.get("optimizer_type")
    for name, spec in space.items():
        if name == "optimizer_type" or not _applies(name, kind):
            continue
        if _is_choices(spec):
            if len(spec) > 1:
                values[name] = trial.suggest_categorical(name, list(spec))
        else:
            low, high, prior = spec
            if isinstance(low, int) and isinstance(high, int):
                values[name] = trial.suggest_int(name, low, high, log=prior == "log-uniform")
            else:
                values[name] = trial.suggest_float(name, float(low), float(high), log=prior == "log-uniform")
    return _applied(values, space)


def _optuna_distributions(space: dict) -> dict:
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    out = {}
    for name, spec in space.items():
        if _is_choices(spec):
            if len(spec) > 1:
                out[name] = CategoricalDistribution(list(spec))
        else:
            low, high, prior = spec
            if isinstance(low, int) and isinstance(high, int):
                out[name] = IntDistribution(low, high, log=prior == "log-uniform")
            else:
                out[name] = FloatDistribution(float(low), float(high), log=prior == "log-uniform")
    return out


def _in_space(params: Mapping, space: dict) -> bool:
    for name, value in params.items():
        spec = space.get(name)
        if spec is None:
            return False
        if _is_choices(spec):
            if value not in spec:
                return False
        elif not spec[0] <= value <= spec[1]:
            return False
    return True


# --------------------------------------------------------------------------- #
# Views of the training split
# --------------------------------------------------------------------------- #


class SplitView:
    """Some rows of a split, read as a split of their own (optionally resized).

    Has what :class:`carclf.generators.ImageBatches` and
    :func:`carclf.train.describe_generator` read: ``read``, ``order``,
    ``class_ids``, ``num_classes``, ``paths``, ``image_size``, ``split``,
    ``parts`` and ``len``. ``image_size`` (height, width) resizes each image
    as it is read (cv2 INTER_AREA), for a cheaper search at a smaller input.
    """

    def __init__(self, parent, indices, split="train", image_size=None):
        self.parent = parent
        self.indices = np.sort(np.asarray(indices, dtype=np.int64))  # sorted: memmap reads in file order
        if self.indices.size and (self.indices[0] < 0 or self.indices[-1] >= len(parent)):
            raise IndexError(f"rows out of range for a split of {len(parent)} rows")
        self.split = split
        self.num_classes = int(parent.num_classes)
        self.class_ids = np.asarray(parent.class_ids, dtype=np.int64)[self.indices]
        parent_paths = list(getattr(parent, "paths", []))
        self.paths = [parent_paths[i] for i in self.indices] if parent_paths else []
        # describe_generator finds the decoded cache through ``parts``
        self.parts = list(getattr(parent, "parts", [parent]))
        self._resize = None
        if image_size is not None:
            height, width = (int(v) for v in image_size)
            if height <= 0 or width <= 0:
                raise ValueError(f"image_size must be positive, got {image_size!r}")
            if (height, width) != tuple(parent.image_size):
                self._resize = (height, width)

    def __len__(self):
        return len(self.indices)

    def __repr__(self):
        return f"SplitView({self.split!r}, {len(self)} of {len(self.parent)} rows, image_size={self.image_size})"

    @property
    def image_size(self):
        return self._resize or tuple(self.parent.image_size)

    def order(self, shuffle=True, seed=0, epoch=0) -> np.ndarray:
        """The row order of one epoch (see :func:`carclf.decoded.epoch_order`)."""
        return epoch_order(len(self), shuffle, seed, epoch)

    def read(self, indices, dtype=np.float32) -> np.ndarray:
        """Images at ``indices`` (rows of this view, in that order) as ``dtype``."""
        rows = self.indices[np.asarray(indices, dtype=np.int64)]
        if self._resize is None:
            return self.parent.read(rows, dtype=dtype)
        import cv2

        height, width = self._resize
        source = self.parent.read(rows, dtype=np.uint8)
        smaller = height * width <= source.shape[1] * source.shape[2]
        interpolation = cv2.INTER_AREA if smaller else cv2.INTER_LINEAR
        out = np.empty((len(rows), height, width, source.shape[3]), dtype=dtype)
        for i, image in enumerate(source):
            out[i] = cv2.resize(image, (width, height), interpolation=interpolation).reshape(height, width, -1)
        return out


def _stratified_pick(class_ids, take: Callable[[int], int], rng) -> np.ndarray:
    picked = []
    for cls in np.unique(class_ids):
        rows = np.flatnonzero(class_ids == cls)
        n = take(len(rows))
        if n:
            picked.append(rng.permutation(rows)[:n])
    return np.sort(np.concatenate(picked)) if picked else np.empty(0, dtype=np.int64)


def validation_split(split, fraction: float = 0.2, seed: int = 0, image_size=None) -> tuple[SplitView, SplitView]:
    """``(train, validation)`` views of a *training* split, stratified by class and seeded.

    Each class gives ``round(fraction * n)`` of its ``n`` rows to the
    validation view (at least one when it has two or more, never all of
    them); the rest stay for training. ``image_size`` resizes as they are read.
    """
    if not 0 < float(fraction) < 1:
        raise ValueError(f"the validation fraction must be between 0 and 1, got {fraction!r}")
    if getattr(split, "split", None) == "test":
        raise ValueError("validation_split takes the training split; the search must never see the test set")
    class_ids = np.asarray(split.class_ids, dtype=np.int64)

    def take(n):
        return 0 if n < 2 else min(n - 1, max(1, int(round(fraction * n))))

    val_rows = _stratified_pick(class_ids, take, np.random.default_rng([int(seed), 0x5EA5C4]))
    if not len(val_rows):
        raise ValueError("no class has two rows: nothing to carve a validation split from")
    train_rows = np.setdiff1d(np.arange(len(class_ids)), val_rows)
    return (
        SplitView(split, train_rows, "search-train", image_size),
        SplitView(split, val_rows, "search-validation", image_size),
    )


def subsample_split(split, size, seed: int = 0) -> SplitView:
    """A stratified, seeded subset of ``split``: ``size`` a fraction in (0, 1] or a number of rows.

    Every class keeps ``ceil(fraction * n)`` of its ``n`` rows (at least one).
    """
    n_rows = len(split)
    if isinstance(size, bool) or not isinstance(size, (int, float, np.integer, np.floating)):
        raise TypeError(f"subsample must be a fraction or a number of rows, got {size!r}")
    if isinstance(size, (int, np.integer)) and size >= 1:
        fraction = min(1.0, int(size) / n_rows)
    elif 0 < float(size) <= 1:
        fraction = float(size)
    else:
        raise ValueError(f"subsample must be a fraction in (0, 1] or a positive number of rows, got {size!r}")
    rows = _stratified_pick(
        np.asarray(split.class_ids, dtype=np.int64),
        lambda n: max(1, math.ceil(fraction * n)),
        np.random.default_rng([int(seed), 0x5AB5]),
    )
    return SplitView(split, rows, getattr(split, "split", "train"))


def _training_split(train):
    """The training split from a split, a ``{"train", "test"}`` dict (only "train" is touched) or a generator."""
    if isinstance(train, Mapping):
        if "train" not in train:
            raise ValueError(f"the data dict has no 'train' split: {sorted(train)}")
        train = train["train"]
    if hasattr(train, "split") and hasattr(train, "batch_size") and not hasattr(train, "read"):
        train = train.split  # an ImageBatches: its split
    if getattr(train, "split", None) == "test":
        raise ValueError("the search got the test split; it searches on the training set only")
    if len(getattr(train, "parts", ())) > 1:
        log.warning(
            "the search got a split of %d parts (originals and augmented variants?): a validation row's "
            "augmented copies may be in training; pass the decoded training split and augment= instead",
            len(train.parts),
        )
    for attr in ("read", "class_ids", "num_classes"):
        if not hasattr(train, attr):
            raise TypeError(
                f"the training data must be a DecodedSplit-like split (with {attr}); got {type(train).__name__}"
            )
    return train


# --------------------------------------------------------------------------- #
# One trial
# --------------------------------------------------------------------------- #


def _describe_data(split, sample: int = 32) -> dict:
    """The training data's identity for the search key, the same on every machine that has the same images.

    Rows, image size, classes, a digest of the labels and file names (not
    the folders, which differ between machines) and a digest of the pixels of
    ``sample`` rows spread over the split (so another image size, crop or
    margin is another search).
    """
    import hashlib

    n = len(split)
    class_ids = np.asarray(split.class_ids, dtype=np.int64)
    labels = hashlib.sha256(class_ids.tobytes())
    labels.update("\n".join(Path(str(p)).name for p in getattr(split, "paths", [])).encode())
    rows = np.unique(np.linspace(0, n - 1, min(n, sample)).round().astype(np.int64))
    pixels = hashlib.sha256(np.ascontiguousarray(split.read(rows, dtype=np.uint8)).tobytes())
    return {
        "rows": int(n),
        "image_size": [int(v) for v in split.image_size],
        "num_classes": int(split.num_classes),
        "labels": labels.hexdigest()[:16],
        "pixels": pixels.hexdigest()[:16],
    }


def _direction(objective: str) -> str:
    return "minimize" if "loss" in objective else "maximize"


def _builder(model, model_name):
    if isinstance(model, str):
        from carclf import models

        if model not in models.NAMES:
            raise ValueError(f"unknown model {model!r}; choose one of {', '.join(models.NAMES)}")
        return getattr(models, f"create_{model}_model"), model_name or model
    if callable(model):
        return model, model_name or getattr(model, "__name__", "model")
    raise TypeError(f"model must be a name from carclf.models.NAMES or a builder function, got {model!r}")


def _qualname(obj) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', type(obj).__qualname__)}"


@dataclass
class _Search:
    """Everything a trial needs, and the settings that identify the search."""

    backend: str
    model_name: str
    builder: Callable
    space: dict
    base_hyperparams: dict
    objective: str
    direction: str
    train_view: SplitView
    val_view: SplitView
    input_shape: tuple
    num_classes: int
    epochs: int
    patience: int
    batch_size: int
    accum_steps: Any
    seed: int
    augment: Any
    verbose: Any
    mixed_precision: Any
    jit_compile: Any
    keep_trials: bool
    paths: Paths
    cache: StageCache
    deps: list
    settings: dict
    key: str
    timer: Any = None
    timer_group: str = "optimal"

    @property
    def callbacks_config(self) -> dict:
        # EarlyStopping on the objective; no LR scheduler and no checkpoint during the search.
        mode = "min" if self.direction == "minimize" else "max"
        return {
            "early_stopping": {
                "monitor": self.objective,
                "mode": mode,
                "patience": self.patience,
                "restore_best_weights": False,
            },
            "reduce_lr": None,
            "checkpoint": None,
        }

    def chance_loss(self) -> float:
        """What skopt is told for a diverged trial when no worse one was seen: chance-level loss, or 0 accuracy."""
        return math.log(self.num_classes) if self.direction == "minimize" else 0.0  # skopt minimizes -accuracy


def _prepare(
    backend,
    model,
    train,
    *,
    model_name,
    space,
    adam_only,
    objective,
    hyperparams,
    epochs,
    patience,
    batch_size,
    accum_steps,
    validation_fraction,
    subsample,
    input_size,
    seed,
    augment,
    verbose,
    mixed_precision,
    jit_compile,
    keep_trials,
    paths,
    cache,
    cache_deps,
    backend_settings,
    timer,
    timer_group,
) -> _Search:
    from carclf.generators import ImageBatches
    from carclf.train import describe_generator

    builder, model_name = _builder(model, model_name)
    space = search_space(adam_only, space)
    if not (isinstance(objective, str) and objective.startswith("val_")):
        raise ValueError(
            f"the objective must be a validation metric such as 'val_loss' or 'val_top3_accuracy', got {objective!r}"
        )
    for name, value in (("epochs", epochs), ("patience", patience), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    base = dict(hyperparams or {})
    overlap = sorted(set(base) & set(space))
    if overlap:
        raise ValueError(f"hyperparams {overlap} are searched; leave them out of the fixed hyperparams")
    split = _training_split(train)
    source = subsample_split(split, subsample, seed) if subsample is not None else split
    train_view, val_view = validation_split(source, validation_fraction, seed, image_size=input_size)
    input_shape = (*(int(v) for v in train_view.image_size), 3)
    paths = paths or Paths.default()
    cache = cache or StageCache(paths.pickles)
    deps = list(cache_deps)
    data = _describe_data(split)
    settings = {
        "format": SEARCH_FORMAT,
        "backend": backend,
        "model_name": model_name,
        "builder": _qualname(builder),
        "space": space,
        "optimizer_params": {k: v for k, v in OPTIMIZER_PARAMS.items() if k in space},
        "hyperparams": canonical(base),
        "objective": objective,
        "direction": _direction(objective),
        "data": data,
        "validation_fraction": float(validation_fraction),
        "subsample": subsample if subsample is None or isinstance(subsample, (int, np.integer)) else float(subsample),
        "input_size": None if input_size is None else [int(v) for v in input_size],
        "input_shape": list(input_shape),
        "train_rows": len(train_view),
        "validation_rows": len(val_view),
        "epochs": int(epochs),
        "patience": int(patience),
        "batch_size": int(batch_size),
        "accum_steps": accum_steps,
        "seed": int(seed),
        "augment": None
        if augment is None
        else describe_generator(ImageBatches(val_view, batch_size=1, shuffle=False, augment=augment)).get("augment"),
        backend: backend_settings,
    }
    settings = canonical(settings)
    key = cache.key(f"search-{backend}", settings, deps)
    return _Search(
        backend=backend,
        model_name=model_name,
        builder=builder,
        space=space,
        base_hyperparams=base,
        objective=objective,
        direction=_direction(objective),
        train_view=train_view,
        val_view=val_view,
        input_shape=input_shape,
        num_classes=int(split.num_classes),
        epochs=int(epochs),
        patience=int(patience),
        batch_size=int(batch_size),
        accum_steps=accum_steps,
        seed=int(seed),
        augment=augment,
        verbose=verbose,
        mixed_precision=mixed_precision,
        jit_compile=jit_compile,
        keep_trials=keep_trials,
        paths=paths,
        cache=cache,
        deps=deps,
        settings=settings,
        key=key,
        timer=timer,
        timer_group=timer_group,
    )


def _run_trial(ctx: _Search, params: dict, work_dir: Path, extra_callbacks=()) -> dict:
    """Train one trial with the report's pipeline; its validation value and what it took.

    ``work_dir`` is the trial's own carclf root (models/, pickles/, logs/),
    so trial runs never touch the real ones, and a killed trial resumes at
    its last finished epoch when run again in the same folder.
    """
    from carclf.generators import ImageBatches
    from carclf.train import NonFiniteLossError, run_model_pipeline

    hyperparams = {**ctx.base_hyperparams, **params}
    trial_paths = Paths.default(work_dir)
    train_gen = ImageBatches(ctx.train_view, ctx.batch_size, shuffle=True, seed=ctx.seed, augment=ctx.augment)
    val_gen = ImageBatches(ctx.val_view, ctx.batch_size, shuffle=False, seed=ctx.seed)
    started = time.perf_counter()
    try:
        result = run_model_pipeline(
            ctx.builder,
            ctx.model_name,
            hyperparams,
            ctx.input_shape,
            ctx.num_classes,
            train_gen,
            val_gen,
            ctx.epochs,
            ctx.accum_steps,
            paths=trial_paths,
            cache=StageCache(trial_paths.pickles),
            callbacks_config=ctx.callbacks_config,
            seed=ctx.seed,
            verbose=ctx.verbose,
            tensorboard=False,
            plot=False,
            evaluate=False,
            mixed_precision=ctx.mixed_precision,
            jit_compile=ctx.jit_compile,
            extra_callbacks=list(extra_callbacks),
        )
    except NonFiniteLossError as exc:
        log.warning("trial with %s diverged: %s", params, exc)
        return {
            "state": "diverged",
            "value": None,
            "best_epoch": None,
            "epochs_run": None,
            "history": {},
            "wall_min": (time.perf_counter() - started) / 60,
            "cpu_min": None,
            "error": str(exc),
            "train_key": None,
            "resumed_from_epoch": None,
        }
    finally:
        _free_memory()
    if ctx.objective not in result.history:
        raise KeyError(
            f"the objective {ctx.objective!r} is not in the training history; it has {sorted(result.history)}"
        )
    series = np.asarray(result.history[ctx.objective], dtype=float)
    finite = np.isfinite(series)
    if not finite.any():
        return {
            "state": "diverged",
            "value": None,
            "best_epoch": None,
            "epochs_run": result.epochs_run,
            "history": {},
            "wall_min": result.wall_min,
            "cpu_min": result.cpu_min,
            "error": f"{ctx.objective} was never finite",
            "train_key": result.key,
            "resumed_from_epoch": result.resumed_from_epoch,
        }
    masked = np.where(finite, series, np.inf if ctx.direction == "minimize" else -np.inf)
    best = int(np.argmin(masked) if ctx.direction == "minimize" else np.argmax(masked))
    keep = {
        k: [float(v) for v in result.history[k]] for k in ("loss", "val_loss", ctx.objective) if k in result.history
    }
    return {
        "state": "complete",
        "value": float(series[best]),
        "best_epoch": best + 1,
        "epochs_run": result.epochs_run,
        "history": keep,
        "wall_min": result.wall_min,
        "cpu_min": result.cpu_min,
        "error": None,
        "train_key": result.key,
        "resumed_from_epoch": result.resumed_from_epoch,
    }


def _free_memory():
    # Every trial builds a new model: let the backend drop the previous one's graphs (and collect garbage).
    import keras

    keras.backend.clear_session(free_memory=True)


@contextlib.contextmanager
def _folder_lock(folder: Path, what: str, blocking: bool):
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
def _timed(ctx: _Search):
    if ctx.timer is None:
        yield
        return
    with ctx.timer.stage(f"search {ctx.model_name}", group=ctx.timer_group):
        yield


# --------------------------------------------------------------------------- #
# The result
# --------------------------------------------------------------------------- #


@dataclass
class SearchResult:
    """A finished (or, after a timeout, partial) search.

    ``best_params`` are the searched hyperparameters of the best trial (with
    the space's constants, such as ``optimizer_type="Adam"``), ready to pass to
    ``run_model_pipeline``; :attr:`best_hyperparams` adds the search's fixed
    ones. ``trials`` has one row per trial: ``trial``, ``state``
    (complete, pruned, diverged, ...), ``value`` (the objective at the best
    epoch), one column per hyperparameter, ``epochs_run``, ``best_epoch``,
    ``wall_min`` and more. ``settings`` are what identify the search (see the
    module docstring).
    """

    backend: str
    model_name: str
    objective: str
    direction: str
    best_params: dict
    best_value: float
    best_trial: int
    n_trials: int
    trials: pd.DataFrame = field(repr=False)
    settings: dict = field(repr=False)
    key: str | None = None
    loaded: bool = False
    complete: bool = True
    storage: str | None = None
    study_name: str | None = None
    json_path: Path | None = None

    @property
    def best_hyperparams(self) -> dict:
        """The fixed hyperparameters of the search with the best searched ones on top."""
        return {**self.settings.get("hyperparams", {}), **self.best_params}

    @property
    def space(self) -> dict:
        return self.settings["space"]

    def to_value(self) -> dict:
        """Plain data (and the trials DataFrame) for the stage cache."""
        value = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        for name in ("key", "loaded", "json_path"):
            value.pop(name)
        return value

    @classmethod
    def from_value(cls, value: dict, key=None, loaded=False, json_path=None) -> SearchResult:
        return cls(**value, key=key, loaded=loaded, json_path=json_path)

    def to_json_dict(self) -> dict:
        return _jsonable(
            {
                "backend": self.backend,
                "model_name": self.model_name,
                "objective": self.objective,
                "direction": self.direction,
                "best_value": self.best_value,
                "best_trial": self.best_trial,
                "best_params": self.best_params,
                "best_hyperparams": self.best_hyperparams,
                "n_trials": self.n_trials,
                "complete": self.complete,
                "key": self.key,
                "storage": self.storage,
                "study_name": self.study_name,
                "settings": self.settings,
                "trials": self.trials.to_dict("records"),
            }
        )

    def save_json(self, path) -> Path:
        """Write the result (best hyperparameters, settings, trials) as readable JSON, atomically."""
        text = json.dumps(self.to_json_dict(), indent=2, sort_keys=False, allow_nan=False)
        return atomic_write(Path(path), (text + "\n").encode())


def _jsonable(value):
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.generic,)):
        value = value.item()
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, (Path, pd.Timestamp)):
        return str(value)
    if value is pd.NaT or value is pd.NA:
        return None
    return value


_TABLE_FRONT = ["trial", "state", "value"]
_TABLE_BACK = ["best_epoch", "epochs_run", "wall_min", "cpu_min", "last_value", "error"]


def _trials_frame(rows: list[dict], space: dict) -> pd.DataFrame:
    frame = pd.DataFrame(rows)
    for column in _TABLE_FRONT + _TABLE_BACK:
        if column not in frame.columns:
            frame[column] = None
    params = [name for name in space if name in frame.columns]
    other = [c for c in frame.columns if c not in _TABLE_FRONT + _TABLE_BACK + params]
    frame = frame[_TABLE_FRONT + params + _TABLE_BACK + other]
    frame["value"] = pd.to_numeric(frame["value"], errors="coerce")
    return frame.sort_values("trial").reset_index(drop=True)


def _best(rows: list[dict], direction: str) -> dict | None:
    done = [
        r for r in rows if r.get("state") == "complete" and r.get("value") is not None and math.isfinite(r["value"])
    ]
    if not done:
        return None
    pick = min if direction == "minimize" else max
    return pick(done, key=lambda r: r["value"])


def _make_result(
    ctx: _Search, rows: list[dict], params_of: dict, n_trials: int, complete: bool, storage=None, study_name=None
) -> SearchResult:
    best = _best(rows, ctx.direction)
    if best is None:
        raise RuntimeError(
            f"{ctx.model_name}: no trial of the search completed ({len(rows)} trials: "
            f"{sorted({r.get('state') for r in rows})}); widen the budget or check the errors"
        )
    return SearchResult(
        backend=ctx.backend,
        model_name=ctx.model_name,
        objective=ctx.objective,
        direction=ctx.direction,
        best_params=dict(params_of[best["trial"]]),
        best_value=float(best["value"]),
        best_trial=int(best["trial"]),
        n_trials=n_trials,
        trials=_trials_frame(rows, ctx.space),
        settings=ctx.settings,
        complete=complete,
        storage=storage,
        study_name=study_name,
    )


class _Incomplete(Exception):
    """A search stopped (timeout) before its trials were done: not stored as a finished result."""

    def __init__(self, result: SearchResult):
        super().__init__("incomplete search")
        self.result = result


def _finish(ctx: _Search, config: dict, compute: Callable[[], SearchResult]) -> SearchResult:
    """Load the finished result of ``config`` or compute it; store it with a readable JSON beside."""
    try:
        stored = ctx.cache.run(_RESULT_STAGE, config, lambda: compute().to_value(), deps=ctx.deps)
    except _Incomplete as stop:
        log.warning(
            "%s: the search stopped after %d of %d trials; the result is not stored",
            ctx.model_name,
            len(stop.result.trials),
            stop.result.n_trials,
        )
        return stop.result
    json_path = ctx.cache.artifact_dir(_RESULT_STAGE, stored.key) / "result.json"
    result = SearchResult.from_value(stored.value, key=stored.key, loaded=stored.loaded, json_path=json_path)
    if not json_path.is_file():
        result.save_json(json_path)
    log.info(
        "%s: best %s %.4g at trial %d of %d: %s",
        ctx.model_name,
        ctx.objective,
        result.best_value,
        result.best_trial,
        result.n_trials,
        result.best_params,
    )
    return result


# --------------------------------------------------------------------------- #
# scikit-optimize
# --------------------------------------------------------------------------- #


def run_skopt_search(
    model,
    train,
    n_calls: int = 20,
    *,
    model_name: str | None = None,
    space: Mapping | None = None,
    adam_only: bool = True,
    objective: str = "val_loss",
    hyperparams: dict | None = None,
    epochs: int = 5,
    patience: int = 2,
    batch_size: int = 32,
    accum_steps=None,
    validation_fraction: float = 0.2,
    subsample=None,
    input_size=None,
    seed: int = 0,
    n_initial_points: int = 10,
    acq_func: str = "gp_hedge",
    augment=None,
    paths: Paths | None = None,
    cache: StageCache | None = None,
    cache_deps=(),
    keep_trials: bool = False,
    mixed_precision="auto",
    jit_compile="auto",
    verbose=0,
    callback: Callable[[dict], None] | None = None,
    timer=None,
    timer_group: str = "optimal",
) -> SearchResult:
    """Bayesian search (Gaussian process, scikit-optimize) on the training set; resumable and extendable.

    Args:
        model: a name of ``carclf.models.NAMES`` or a builder ``f(input_shape, num_classes, hyperparams)``.
        train: the training ``DecodedSplit`` (or ``build_decoded_cache``'s dict, of which only "train"
            is read). A validation split is carved from it (:func:`validation_split`).
        n_calls: how many trials the search should have. Finished trials are reused: more calls
            extend a finished search, a killed search resumes at its first missing trial.
        space: the search space (default :data:`SEARCH_SPACE`); ``adam_only`` restricts it to Adam.
        objective: ``"val_loss"`` (minimized) or another validation metric such as
            ``"val_top3_accuracy"`` (maximized); a trial's value is that of its best epoch.
        hyperparams: fixed model hyperparameters for every trial (``fc_layers``, ``weights``, ...).
        epochs, patience: the per-trial epoch budget and EarlyStopping patience.
        batch_size, accum_steps: as in training.
        validation_fraction: the share of each class held out for validation.
        subsample: train on a stratified subset of the training set (fraction or row count).
        input_size: ``(height, width)`` to resize the images to (a cheaper, smaller input).
        seed: seeds the split, the optimizer and every trial's training.
        n_initial_points, acq_func: ``skopt.Optimizer`` settings (random points before the GP is
            used, and the acquisition function).
        paths, cache, cache_deps: where results live (default ``Paths.default()`` and its pickles),
            and upstream results that the search depends on.
        keep_trials: keep each trial's models and logs (default: removed once it is recorded).
        callback: called with each new trial's record.
        timer: a ``carclf.runlog.StageTimer`` to record the search's wall and CPU time.

    Returns:
        A :class:`SearchResult` (stored through the stage cache; ``json_path`` is its JSON).
    """
    if isinstance(n_calls, bool) or not isinstance(n_calls, (int, np.integer)) or n_calls < 1:
        raise ValueError(f"n_calls must be a positive integer, got {n_calls!r}")
    backend_settings = {
        "base_estimator": "GP",
        "n_initial_points": int(n_initial_points),
        "acq_func": acq_func,
        "initial_point_generator": "random",
    }
    ctx = _prepare(
        "skopt",
        model,
        train,
        model_name=model_name,
        space=space,
        adam_only=adam_only,
        objective=objective,
        hyperparams=hyperparams,
        epochs=epochs,
        patience=patience,
        batch_size=batch_size,
        accum_steps=accum_steps,
        validation_fraction=validation_fraction,
        subsample=subsample,
        input_size=input_size,
        seed=seed,
        augment=augment,
        verbose=verbose,
        mixed_precision=mixed_precision,
        jit_compile=jit_compile,
        keep_trials=keep_trials,
        paths=paths,
        cache=cache,
        cache_deps=cache_deps,
        backend_settings=backend_settings,
        timer=timer,
        timer_group=timer_group,
    )
    config = {"settings": ctx.settings, "search_key": ctx.key, "n_trials": int(n_calls)}

    def compute() -> SearchResult:
        with _timed(ctx):
            records = _skopt_trials(ctx, int(n_calls), callback)
        records = records[: int(n_calls)]
        return _make_result(
            ctx, [_skopt_row(r) for r in records], {r["number"]: r["params"] for r in records}, int(n_calls), True
        )

    return _finish(ctx, config, compute)


def _skopt_row(record: dict) -> dict:
    row = {"trial": record["number"], "state": record["state"], "value": record["value"], **record["params"]}
    for name in ("best_epoch", "epochs_run", "wall_min", "cpu_min", "error", "resumed_from_epoch"):
        row[name] = record.get(name)
    row["skopt_loss"] = record["loss"]
    return row


def _new_optimizer(ctx: _Search):
    from skopt import Optimizer

    s = ctx.settings["skopt"]
    return Optimizer(
        _skopt_dimensions(ctx.space),
        base_estimator=s["base_estimator"],
        n_initial_points=s["n_initial_points"],
        initial_point_generator=s["initial_point_generator"],
        acq_func=s["acq_func"],
        random_state=ctx.seed,
        model_queue_size=1,  # only the latest GP is needed; keeps optimizer.pkl small
    )


def _load_trials(folder: Path, key: str) -> list[dict]:
    """The finished trials 0, 1, 2, ... (stops at the first missing one)."""
    records = []
    while True:
        path = folder / f"{len(records):05d}.pkl"
        if not path.is_file():
            return records
        try:
            record = load_pickle(path)
        except Exception as exc:  # atomic writes make this unlikely; redo the trial if it happens
            log.warning("unreadable trial %s (%s: %s); it will run again", path, type(exc).__name__, exc)
            return records
        if record.get("search_key") != key or record.get("number") != len(records):
            raise RuntimeError(f"{path} belongs to another search; remove the folder {folder.parent}")
        records.append(record)


def _restore_optimizer(ctx: _Search, folder: Path, records: list[dict]):
    """The optimizer after the stored trials: the saved one if it is in step, else replayed."""
    path = folder / "optimizer.pkl"
    if path.is_file():
        try:
            saved = load_pickle(path)
            if saved.get("search_key") == ctx.key and saved.get("n_told") == len(records):
                return saved["optimizer"]
            log.info("optimizer state is at trial %s, the trials at %d: replaying", saved.get("n_told"), len(records))
        except Exception as exc:
            log.warning("unreadable optimizer state %s (%s: %s); replaying the trials", path, type(exc).__name__, exc)
    # Replay ask/tell in the original order: the optimizer's random state advances exactly as it did.
    optimizer = _new_optimizer(ctx)
    for record in records:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            asked = [_native(v) for v in optimizer.ask()]
        if asked != record["x"]:
            log.warning(
                "replaying trial %d: the optimizer now asks %s, the trial had %s (another skopt "
                "version?); telling the stored point",
                record["number"],
                asked,
                record["x"],
            )
        optimizer.tell(record["x"], record["loss"])
    return optimizer


def _skopt_trials(ctx: _Search, n_calls: int, callback) -> list[dict]:
    folder = ctx.cache.artifact_dir(_SKOPT_STAGE, ctx.key)
    with _folder_lock(folder, f"the search {ctx.key}", blocking=False):
        settings_path = folder / "settings.json"
        if not settings_path.is_file():
            atomic_write(settings_path, (json.dumps(_jsonable(ctx.settings), indent=2) + "\n").encode())
        trials_dir = folder / "trials"
        work = folder / "work"
        records = _load_trials(trials_dir, ctx.key)
        if not ctx.keep_trials:
            for record in records:  # leftovers of a kill between recording a trial and removing its folder
                shutil.rmtree(work / f"trial-{record['number']:05d}", ignore_errors=True)
        if len(records) >= n_calls:
            return records
        log.info("%s: skopt search %s, %d of %d trials done", ctx.model_name, ctx.key, len(records), n_calls)
        optimizer = _restore_optimizer(ctx, folder, records)
        names = [dim.name for dim in optimizer.space.dimensions]
        for number in range(len(records), n_calls):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # "evaluated at this point before"
                x = [_native(v) for v in optimizer.ask()]
            params = _applied(dict(zip(names, x)), ctx.space)
            log.info("%s: trial %d/%d %s", ctx.model_name, number + 1, n_calls, params)
            trial_dir = work / f"trial-{number:05d}"
            out = _run_trial(ctx, params, trial_dir)
            if out["state"] == "complete":
                loss = out["value"] if ctx.direction == "minimize" else -out["value"]
            else:  # the worst seen so far: deterministic, and keeps the GP's scale
                seen = [r["loss"] for r in records if r["state"] == "complete"]
                loss = max(seen + [ctx.chance_loss()])
            record = {"search_key": ctx.key, "number": number, "x": x, "params": params, "loss": float(loss), **out}
            atomic_pickle(trials_dir / f"{number:05d}.pkl", record)  # the trial is done from here on
            optimizer.tell(x, float(loss))
            atomic_pickle(
                folder / "optimizer.pkl", {"search_key": ctx.key, "n_told": number + 1, "optimizer": optimizer}
            )
            if not ctx.keep_trials:
                shutil.rmtree(trial_dir, ignore_errors=True)
            records.append(record)
            log.info(
                "%s: trial %d %s %s",
                ctx.model_name,
                number,
                ctx.objective,
                "diverged" if out["value"] is None else f"{out['value']:.4g}",
            )
            if callback is not None:
                callback(record)
        return records


# --------------------------------------------------------------------------- #
# Optuna
# --------------------------------------------------------------------------- #


def _trial_seed(seed: int, number: int) -> int:
    return int(np.random.SeedSequence([int(seed), int(number)]).generate_state(1)[0])


def _seeded_tpe_class():
    import optuna

    class TrialSeededTPESampler(optuna.samplers.BaseSampler):
        """TPE whose random generator is re-seeded from ``(seed, trial number)`` for every trial.

        TPE's model is rebuilt from the stored trials each time, so with this
        the sampler holds no state outside the study: a resumed search and
        parallel workers need nothing else, and workers never share draws.
        """

        def __init__(self, seed: int, **tpe_kwargs):
            self.seed = int(seed)
            self.tpe_kwargs = dict(tpe_kwargs)
            self._inner = optuna.samplers.TPESampler(seed=self.seed, **self.tpe_kwargs)

        def before_trial(self, study, trial):
            self._inner = optuna.samplers.TPESampler(seed=_trial_seed(self.seed, trial.number), **self.tpe_kwargs)
            self._inner.before_trial(study, trial)

        def infer_relative_search_space(self, study, trial):
            return self._inner.infer_relative_search_space(study, trial)

        def sample_relative(self, study, trial, search_space):
            return self._inner.sample_relative(study, trial, search_space)

        def sample_independent(self, study, trial, param_name, param_distribution):
            return self._inner.sample_independent(study, trial, param_name, param_distribution)

        def after_trial(self, study, trial, state, values):
            self._inner.after_trial(study, trial, state, values)

        def reseed_rng(self):
            self._inner.reseed_rng()

    return TrialSeededTPESampler


def _pruning_callback(trial, monitor: str):
    import keras

    class OptunaPruning(keras.callbacks.Callback):
        """Reports the objective at each epoch end; stops training when the pruner says so."""

        def __init__(self):
            super().__init__()
            self.pruned_at = None
            self.last_value = None

        def on_epoch_end(self, epoch, logs=None):
            value = (logs or {}).get(monitor)
            if value is None:
                return
            value = float(value)
            if not math.isfinite(value):
                return
            self.last_value = value
            trial.report(value, step=int(epoch))
            if trial.should_prune():
                self.pruned_at = int(epoch)
                self.model.stop_training = True  # the pipeline stores its run; the trial is then pruned

    return OptunaPruning()


class _Surplus(Exception):
    """This trial started after the study already had its agreed number of trials (a race between workers)."""


def _params_key(params: dict) -> str:
    return config_hash(params, length=12)


def _redact(url: str) -> str:
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url


def _enable_wal(path: Path) -> None:
    """Put the SQLite file in WAL mode (persistent): readers never block the writer, writers queue."""
    import sqlite3

    con = sqlite3.connect(str(path), timeout=SQLITE_TIMEOUT)
    try:
        mode = con.execute("PRAGMA journal_mode=WAL").fetchone()[0]
    finally:
        con.close()
    if str(mode).lower() != "wal":
        log.warning("%s: SQLite would not switch to WAL mode (%s); parallel workers may wait longer", path, mode)


def _open_study(
    ctx: _Search, *, storage, study_name, sampler, pruner, heartbeat_interval, grace_period, max_retry, enqueue
):
    import optuna
    from optuna.exceptions import ExperimentalWarning

    retry_cls = getattr(optuna.storages, "RetryHeartbeatStaleTrialCallback", None)
    sqlite_path = None
    if storage is None:
        folder = ctx.cache.stage_dir(_OPTUNA_STAGE)
        folder.mkdir(parents=True, exist_ok=True)
        sqlite_path = folder / f"{ctx.key}.db"
        url = f"sqlite:///{sqlite_path}"
    elif isinstance(storage, (str, Path)):
        url = str(storage)
        if url.startswith("sqlite:///"):
            sqlite_path = Path(url[len("sqlite:///") :])
    else:
        url = None  # an optuna storage object: used as it is
    if sqlite_path is not None:
        sqlite_path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)
        lock = (
            _folder_lock(sqlite_path.parent, "the study set-up", blocking=True)
            if sqlite_path is not None
            else contextlib.nullcontext()
        )
        with lock:  # one process at a time creates the tables and the study (SQLite has no safe concurrent DDL)
            if url is None:
                rdb = storage
            else:
                engine_kwargs = {}
                if sqlite_path is not None:
                    _enable_wal(sqlite_path)
                    engine_kwargs = {"connect_args": {"timeout": SQLITE_TIMEOUT}}
                if retry_cls is not None:  # Optuna >= 4.9
                    kwargs = {"heartbeat_stale_trial_callback": retry_cls(max_retry=max_retry)}
                else:
                    kwargs = {"failed_trial_callback": optuna.storages.RetryFailedTrialCallback(max_retry=max_retry)}
                rdb = optuna.storages.RDBStorage(
                    url,
                    engine_kwargs=engine_kwargs,
                    heartbeat_interval=int(heartbeat_interval),
                    grace_period=None if grace_period is None else int(grace_period),
                    **kwargs,
                )
            study = optuna.create_study(
                study_name=study_name,
                storage=rdb,
                sampler=sampler,
                pruner=pruner,
                direction=ctx.direction,
                load_if_exists=True,
            )
            stored = study.user_attrs.get("carclf_settings")
            mine = json.dumps(_jsonable(ctx.settings), sort_keys=True)
            if stored is None:
                study.set_user_attr("carclf_settings", mine)
                study.set_user_attr("carclf_key", ctx.key)
                study.set_user_attr("seed", ctx.seed)
            elif stored != mine:
                raise ValueError(
                    f"the study {study_name!r} was made with other settings; use another "
                    "study_name or the same settings"
                )
            if enqueue and not study.user_attrs.get("carclf_enqueued") and not study.get_trials(deepcopy=False):
                constants = _constants(ctx.space)
                for params in enqueue:
                    params = dict(params)
                    if not _in_space(params, ctx.space):
                        raise ValueError(f"enqueued hyperparameters {params} are outside the space {ctx.space}")
                    # constants are not suggested, so they are not enqueued either
                    study.enqueue_trial({k: v for k, v in params.items() if k not in constants}, skip_if_exists=True)
                study.set_user_attr("carclf_enqueued", True)
    shown = "default" if storage is None else (_redact(url) if url is not None else type(storage).__name__)
    return study, shown, (rdb if url is not None else None)


def run_optuna_search(
    model,
    train,
    n_trials: int = 20,
    *,
    model_name: str | None = None,
    space: Mapping | None = None,
    adam_only: bool = True,
    objective: str = "val_loss",
    hyperparams: dict | None = None,
    epochs: int = 5,
    patience: int = 2,
    batch_size: int = 32,
    accum_steps=None,
    validation_fraction: float = 0.2,
    subsample=None,
    input_size=None,
    seed: int = 0,
    storage=None,
    study_name: str | None = None,
    pruner: str | None = "median",
    prune_startup_trials: int = 5,
    prune_warmup_epochs: int = 1,
    tpe_startup_trials: int = 10,
    heartbeat_interval: int = 60,
    grace_period: int | None = None,
    max_retry: int | None = 3,
    enqueue=(),
    timeout: float | None = None,
    augment=None,
    paths: Paths | None = None,
    cache: StageCache | None = None,
    cache_deps=(),
    keep_trials: bool = False,
    mixed_precision="auto",
    jit_compile="auto",
    verbose=0,
    timer=None,
    timer_group: str = "optimal",
) -> SearchResult:
    """Optuna search (TPE, median pruning) on the training set; resumable, and parallel across processes.

    Run it in one process, or start it in several (on one machine with the
    default SQLite study, or on several with a PostgreSQL ``storage``) with
    the same arguments: together they finish ``n_trials`` trials. Arguments
    shared with :func:`run_skopt_search` mean the same; besides:

    Args:
        n_trials: the finished (complete or pruned) trials the study should hold.
        storage: ``None`` (SQLite at ``pickles/search-optuna/<key>.db``), a database URL such as
            ``"postgresql+psycopg2://user:password@host/carclf"``, or an Optuna storage object.
        study_name: default ``<model>-<key>``, so other settings never share a study.
        pruner: ``"median"`` (``MedianPruner(prune_startup_trials, prune_warmup_epochs)``: a trial
            is stopped at an epoch end when it is worse than the median of earlier trials at that
            epoch) or ``None``.
        tpe_startup_trials: random trials before TPE models the space.
        heartbeat_interval, grace_period, max_retry: a running trial writes a heartbeat every
            ``heartbeat_interval`` seconds; one silent for ``grace_period`` (default twice the
            interval) is marked failed and re-queued, up to ``max_retry`` times.
        enqueue: hyperparameter dicts to try first (e.g. the report's defaults), when the study is new.
        timeout: stop starting trials after this many seconds (the result is then not stored).
    """
    import optuna

    if isinstance(n_trials, bool) or not isinstance(n_trials, (int, np.integer)) or n_trials < 1:
        raise ValueError(f"n_trials must be a positive integer, got {n_trials!r}")
    if pruner not in ("median", None):
        raise ValueError(f"pruner must be 'median' or None, got {pruner!r}")
    backend_settings = {
        "sampler": "TPE",
        "tpe_startup_trials": int(tpe_startup_trials),
        "pruner": pruner,
        "prune_startup_trials": int(prune_startup_trials) if pruner else None,
        "prune_warmup_epochs": int(prune_warmup_epochs) if pruner else None,
    }
    ctx = _prepare(
        "optuna",
        model,
        train,
        model_name=model_name,
        space=space,
        adam_only=adam_only,
        objective=objective,
        hyperparams=hyperparams,
        epochs=epochs,
        patience=patience,
        batch_size=batch_size,
        accum_steps=accum_steps,
        validation_fraction=validation_fraction,
        subsample=subsample,
        input_size=input_size,
        seed=seed,
        augment=augment,
        verbose=verbose,
        mixed_precision=mixed_precision,
        jit_compile=jit_compile,
        keep_trials=keep_trials,
        paths=paths,
        cache=cache,
        cache_deps=cache_deps,
        backend_settings=backend_settings,
        timer=timer,
        timer_group=timer_group,
    )
    study_name = study_name or f"{ctx.model_name}-{ctx.key}"
    where = (
        "default"
        if storage is None
        else (_redact(str(storage)) if isinstance(storage, (str, Path)) else type(storage).__name__)
    )
    config = {
        "settings": ctx.settings,
        "search_key": ctx.key,
        "n_trials": int(n_trials),
        "storage": where,
        "study_name": study_name,
    }

    def compute() -> SearchResult:
        sampler = _seeded_tpe_class()(ctx.seed, n_startup_trials=int(tpe_startup_trials))
        median = (
            optuna.pruners.MedianPruner(
                n_startup_trials=int(prune_startup_trials), n_warmup_steps=int(prune_warmup_epochs)
            )
            if pruner
            else optuna.pruners.NopPruner()
        )
        study, shown, owned = _open_study(
            ctx,
            storage=storage,
            study_name=study_name,
            sampler=sampler,
            pruner=median,
            heartbeat_interval=heartbeat_interval,
            grace_period=grace_period,
            max_retry=max_retry,
            enqueue=list(enqueue),
        )
        try:
            with _timed(ctx):
                finished = _optuna_worker(ctx, study, int(n_trials), heartbeat_interval, timeout)
            rows, params_of = _optuna_rows(ctx, study)
        finally:
            if owned is not None:  # close the database connections this call opened
                owned.remove_session()
                owned.engine.dispose()
        result = _make_result(ctx, rows, params_of, int(n_trials), finished, storage=shown, study_name=study_name)
        if not finished:
            raise _Incomplete(result)
        return result

    return _finish(ctx, config, compute)


def _optuna_worker(ctx: _Search, study, n_trials: int, heartbeat_interval, timeout) -> bool:
    """Run trials until the study holds ``n_trials`` finished ones; True when it does."""
    import optuna
    from optuna.exceptions import ExperimentalWarning
    from optuna.trial import TrialState

    work = ctx.cache.stage_dir(_OPTUNA_STAGE) / ctx.key / "work"
    finished_states = (TrialState.COMPLETE, TrialState.PRUNED)
    if not ctx.keep_trials:
        _sweep_work(ctx, study, work)

    def objective(trial):
        trials = study.get_trials(deepcopy=False)
        done = sum(t.state in finished_states for t in trials)
        ahead = sum(t.state == TrialState.RUNNING and t.number < trial.number for t in trials)
        if done + ahead >= n_trials:
            trial.set_user_attr("surplus", True)
            raise _Surplus(f"the study already has its {n_trials} trials (finished or running)")
        params = _suggest(trial, ctx.space)
        trial.set_user_attr("host", socket.gethostname())
        trial.set_user_attr("pid", os.getpid())
        pruning = _pruning_callback(trial, ctx.objective)
        out = _run_trial(ctx, params, work / f"trial-{_params_key(params)}", extra_callbacks=[pruning])
        for name in ("epochs_run", "best_epoch", "wall_min", "cpu_min", "resumed_from_epoch"):
            if out.get(name) is not None:
                trial.set_user_attr(name, out[name])
        if out["state"] == "diverged":
            trial.set_user_attr("error", out["error"])
            raise optuna.TrialPruned(f"diverged: {out['error']}")
        if pruning.pruned_at is not None:
            trial.set_user_attr("pruned_at_epoch", pruning.pruned_at + 1)
            raise optuna.TrialPruned(f"pruned after epoch {pruning.pruned_at + 1}")
        return out["value"]

    def cleanup(study_, frozen):
        if not ctx.keep_trials and frozen.state in finished_states:
            shutil.rmtree(work / f"trial-{_params_key(_applied(frozen.params, ctx.space))}", ignore_errors=True)

    deadline = None if timeout is None else time.monotonic() + float(timeout)
    poll = min(10.0, max(0.5, float(heartbeat_interval) / 2))
    while True:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)  # a dead worker's trial: failed and re-queued
        trials = study.get_trials(deepcopy=False)
        done = sum(t.state in finished_states for t in trials)
        running = sum(t.state == TrialState.RUNNING for t in trials)
        waiting = sum(t.state == TrialState.WAITING for t in trials)
        if done >= n_trials:
            return True
        if deadline is not None and time.monotonic() >= deadline:
            return False
        if done + running >= n_trials and not waiting:
            time.sleep(poll)  # the last trials run elsewhere: wait, to retry them if their worker dies
            continue
        study.optimize(
            objective, n_trials=1, catch=(_Surplus,), callbacks=[cleanup], gc_after_trial=False, show_progress_bar=False
        )


def _sweep_work(ctx: _Search, study, work: Path) -> None:
    """Remove work folders of trials that are over (a kill between a trial's end and its clean-up)."""
    from optuna.trial import TrialState

    if not work.is_dir():
        return
    folders = list(work.glob("trial-*"))  # listed before the trials are read: a new folder's trial is in the read
    active = {
        _params_key(_applied(t.params, ctx.space))
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING, TrialState.WAITING))
    }
    for folder in folders:
        if folder.name[len("trial-") :] not in active:
            shutil.rmtree(folder, ignore_errors=True)


def _optuna_rows(ctx: _Search, study) -> tuple[list[dict], dict]:
    from optuna.trial import TrialState

    rows, params_of = [], {}
    for t in study.get_trials(deepcopy=False):
        if t.user_attrs.get("surplus"):
            continue
        params = _applied(t.params, ctx.space)
        params_of[t.number] = params
        state = t.state.name.lower()
        if t.state == TrialState.PRUNED and t.user_attrs.get("error"):
            state = "diverged"
        last = t.intermediate_values[max(t.intermediate_values)] if t.intermediate_values else None
        rows.append(
            {
                "trial": t.number,
                "state": state,
                "value": t.value if t.state == TrialState.COMPLETE else None,
                **params,
                "best_epoch": t.user_attrs.get("best_epoch"),
                "epochs_run": t.user_attrs.get("epochs_run"),
                "wall_min": t.user_attrs.get("wall_min"),
                "cpu_min": t.user_attrs.get("cpu_min"),
                "last_value": last,
                "error": t.user_attrs.get("error"),
                "pruned_at_epoch": t.user_attrs.get("pruned_at_epoch"),
                "retry_of": t.system_attrs.get("failed_trial"),
                "pid": t.user_attrs.get("pid"),
                "host": t.user_attrs.get("host"),
            }
        )
    return rows, params_of


# --------------------------------------------------------------------------- #
# One entry point
# --------------------------------------------------------------------------- #


def run_search(model, train, backend: str = "skopt", n_trials: int = 20, **kwargs) -> SearchResult:
    """:func:`run_skopt_search` (default, the report's choice) or :func:`run_optuna_search`, by ``backend``."""
    if backend == "skopt":
        return run_skopt_search(model, train, n_calls=n_trials, **kwargs)
    if backend == "optuna":
        return run_optuna_search(model, train, n_trials=n_trials, **kwargs)
    raise ValueError(f"backend must be 'skopt' or 'optuna', got {backend!r}")


# --------------------------------------------------------------------------- #
# Plots
# --------------------------------------------------------------------------- #


def plot_convergence(result: SearchResult, out_path=None):
    """The objective of every trial and the best so far, against the trial number (a Figure)."""
    from matplotlib.figure import Figure

    trials = result.trials
    fig = Figure(figsize=(7, 4.2), layout="constrained")
    ax = fig.subplots()
    done = trials[trials["state"] == "complete"]
    ax.plot(done["trial"], done["value"], "o", label="trial", alpha=0.7)
    values = done["value"].to_numpy(dtype=float)
    if len(values):
        best = np.minimum.accumulate(values) if result.direction == "minimize" else np.maximum.accumulate(values)
        ax.step(done["trial"], best, where="post", label="best so far", color="C1")
    stopped = trials[trials["state"].isin(["pruned", "diverged"])]
    if len(stopped):
        shown = pd.to_numeric(stopped["last_value"], errors="coerce")
        if shown.notna().any():
            ax.plot(stopped["trial"][shown.notna()], shown[shown.notna()], "x", color="C3", label="pruned (last value)")
    ax.set_xlabel("trial")
    ax.set_ylabel(result.objective)
    ax.set_title(f"{result.model_name}: {result.backend} search, {result.objective} ({result.direction})")
    ax.grid(True, alpha=0.3)
    ax.legend()
    if out_path is not None:
        from carclf.report import save_figure

        save_figure(fig, out_path)
    return fig


def param_importances(result: SearchResult, seed: int = 0) -> dict:
    """fANOVA importance of each searched hyperparameter (Optuna's evaluator, for either backend)."""
    import optuna

    space = result.space
    dists = _optuna_distributions(space)
    done = result.trials[(result.trials["state"] == "complete") & result.trials["value"].notna()]
    names = [n for n in dists if n in done.columns and done[n].notna().all() and done[n].nunique() > 1]
    if len(done) < 2 or not names:
        return {}
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # no "new study created in memory" line
    try:
        study = optuna.create_study(direction=result.direction)
    finally:
        optuna.logging.set_verbosity(verbosity)
    for _, row in done.iterrows():
        study.add_trial(
            optuna.trial.create_trial(
                params={n: _native(row[n]) for n in names},
                distributions={n: dists[n] for n in names},
                value=float(row["value"]),
            )
        )
    importances = optuna.importance.get_param_importances(
        study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=seed)
    )
    return {k: float(v) for k, v in importances.items()}


def plot_importance(result: SearchResult, out_path=None):
    """A bar chart of the hyperparameters' importance for the objective (fANOVA; a Figure)."""
    from matplotlib.figure import Figure

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        importances = param_importances(result)
    fig = Figure(figsize=(7, 0.5 * max(3, len(importances)) + 1.2), layout="constrained")
    ax = fig.subplots()
    if importances:
        names = list(importances)[::-1]
        ax.barh(names, [importances[n] for n in names], color="C0")
        ax.set_xlabel("importance (fANOVA, share of the variance of the objective)")
        ax.set_xlim(0, 1)
        ax.grid(True, axis="x", alpha=0.3)
    else:
        ax.text(
            0.5,
            0.5,
            "not enough completed trials to rank the hyperparameters",
            ha="center",
            va="center",
            transform=ax.transAxes,
        )
        ax.set_axis_off()
    ax.set_title(f"{result.model_name}: hyperparameter importance for {result.objective}")
    if out_path is not None:
        from carclf.report import save_figure

        save_figure(fig, out_path)
    return fig


# --------------------------------------------------------------------------- #
# Default against optimal
# --------------------------------------------------------------------------- #


def _optimal_for(name, optimal) -> dict:
    if isinstance(optimal, SearchResult):
        return dict(optimal.best_params)
    if isinstance(optimal, Mapping) and name in optimal and isinstance(optimal[name], (Mapping, SearchResult)):
        return _optimal_for(name, optimal[name])
    if isinstance(optimal, Mapping):
        return dict(optimal)
    raise TypeError(
        f"optimal must be a SearchResult, a hyperparameter dict, or one of those per model; got {optimal!r}"
    )


def compare_default_optimal(
    names,
    optimal,
    train_generator,
    test_generator,
    epochs: int,
    accum_steps=None,
    *,
    default: dict | None = None,
    input_shape=None,
    num_classes: int | None = None,
    builders: Mapping | None = None,
    paths: Paths | None = None,
    cache: StageCache | None = None,
    cache_deps=(),
    timer=None,
    labels=("default", "optimal"),
    **pipeline_kwargs,
) -> pd.DataFrame:
    """Train each model with the default and with the optimal hyperparameters; one row per run.

    ``optimal`` is a :class:`SearchResult`, a hyperparameter dict, or a dict
    of either per model name (the report used one set for all models, and
    advised one per model). ``default`` is the report's global defaults
    (``carclf.config.DEFAULT_HYPERPARAMS``) unless given; the optimal run uses
    it with the searched values on top, so only the searched hyperparameters
    differ between the two. Both runs go through ``run_model_pipeline`` and its cache (a rerun
    loads them). The frame has ``model``, ``hyperparams`` ("default" or
    "optimal"), the test metrics, ``epochs_run``, ``wall_min``, ``cpu_min``,
    ``train_key`` and ``loaded`` (from the cache): pass it to
    :func:`carclf.report.plot_comparison`. With a ``timer``, the runs are
    timed in groups "default" and "optimal" (the report's execution-time
    table). ``labels`` picks the runs: ``("default",)`` needs no ``optimal``.
    """
    from carclf import config, models
    from carclf.train import run_model_pipeline

    if isinstance(names, str):
        names = [names]
    # The report's global defaults (carclf.config.DEFAULT_HYPERPARAMS, where the project defines them).
    default = dict(default if default is not None else getattr(config, "DEFAULT_HYPERPARAMS", {}))
    split = getattr(train_generator, "split", None)
    if input_shape is None:
        if split is None:
            raise ValueError("pass input_shape= (the train generator has no split to read it from)")
        input_shape = (*split.image_size, 3)
    if num_classes is None:
        if split is None:
            raise ValueError("pass num_classes= (the train generator has no split to read it from)")
        num_classes = split.num_classes
    rows = []
    for name in names:
        builder = (builders or {}).get(name) or getattr(models, f"create_{name}_model")
        for label in labels:
            if label not in ("default", "optimal"):
                raise ValueError(f"labels are 'default' and 'optimal', got {label!r}")
            hp = default if label == "default" else {**default, **_optimal_for(name, optimal)}
            result = run_model_pipeline(
                builder,
                name,
                hp,
                input_shape,
                num_classes,
                train_generator,
                test_generator,
                epochs,
                accum_steps,
                paths=paths,
                cache=cache,
                cache_deps=cache_deps,
                timer=timer,
                timer_group=label,
                **pipeline_kwargs,
            )
            rows.append(
                {
                    "model": name,
                    "hyperparams": label,
                    **result.test_metrics,
                    "epochs_run": result.epochs_run,
                    "wall_min": result.wall_min,
                    "cpu_min": result.cpu_min,
                    "train_key": result.key,
                    "loaded": result.loaded,
                }
            )
    return pd.DataFrame(rows)
