"""The settings groups: one frozen dataclass per concern, each field with its default and its check."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from types import MappingProxyType
from typing import Any

from carclf.settings.checks import (
    MODEL_NAMES,
    Settings,
    SettingsError,
    alpha_switch,
    boolean,
    int_at_least,
    is_int,
    model_name,
    model_names,
    nested,
    non_negative,
    non_negative_int,
    number_in,
    one_of,
    optional,
    path_text,
    positive,
    positive_int,
    rate,
    setting,
    size_pair,
    text,
    trainable,
    units,
)


@dataclass(frozen=True)
class SyntheticSettings(Settings):
    """The synthetic stand-in for Stanford Cars (``carclf.synthetic.make_synthetic``)."""

    n_classes: int = setting(10, positive_int)
    per_class_train: int = setting(16, positive_int)
    per_class_test: int = setting(8, positive_int)
    seed: int = setting(0, non_negative_int)


@dataclass(frozen=True)
class DecodeSettings(Settings):
    """How each image becomes the model's input (the decoded cache's key)."""

    image_size: tuple = setting((224, 224), size_pair)
    # box: the ground-truth box (the report's); full: the whole image (how published figures are measured)
    crop: str = setting("box", one_of("box", "full"))
    margin: float = setting(0.08, non_negative)
    # stretch: to the size whatever the aspect (the report's); pad: letterbox, keeping the aspect ratio;
    # center: the short side to the size, then the centre cropped
    resize: str = setting("stretch", one_of("stretch", "pad", "center"))


@dataclass(frozen=True)
class DataSettings(Settings):
    """The dataset: ``"synthetic"`` or its folder (relative to the workspace root), and how it is decoded."""

    dataset: str = setting("data/stanford_cars", path_text)
    synthetic: SyntheticSettings = setting(check=nested(SyntheticSettings), factory=SyntheticSettings)
    decode: DecodeSettings = setting(check=nested(DecodeSettings), factory=DecodeSettings)


@dataclass(frozen=True)
class AugmentSettings(Settings):
    """The report's step 8: ``augmentation`` offline (the report's), online (per batch) or none; CutMix, MixUp."""

    augmentation: str = setting("offline", one_of("offline", "online", "none"))
    n_variants: int = setting(1, positive_int)
    # report: the report's seven transforms; modern: a random resized crop first, then the same seven
    pipeline: str = setting("report", one_of("report", "modern"))
    # The modern pipeline's random resized crop keeps between this share of the image and all of it: the
    # augmentation's strength (lower is stronger; fastai's 0.35, timm's 0.08).
    crop_scale: float = setting(0.35, number_in(0.0, 1.0, low_open=True))
    cutmix: Any = setting(False, alpha_switch)
    mixup: Any = setting(False, alpha_switch)
    # Who augments: this many workers (None: every usable core), threads or processes (None: spawned
    # processes offline; threads online, where Keras would fork the process that holds the backend).
    # How, not what: the pixels are the same whoever makes them, so neither is in a stage key.
    workers: int | None = setting(None, optional(positive_int), key=False)
    executor: str | None = setting(None, optional(one_of("thread", "process")), key=False)


@dataclass(frozen=True)
class EarlyStoppingSettings(Settings):
    monitor: str = setting("val_loss", text)
    mode: str = setting("min", one_of("min", "max"))
    patience: int = setting(5, non_negative_int)
    min_delta: float = setting(0.0, non_negative)
    restore_best_weights: bool = setting(True, boolean)


@dataclass(frozen=True)
class ReduceLRSettings(Settings):
    monitor: str = setting("val_loss", text)
    mode: str = setting("min", one_of("min", "max"))
    factor: float = setting(0.2, number_in(0.0, 1.0, low_open=True, high_open=True))
    patience: int = setting(2, non_negative_int)
    min_delta: float = setting(1e-4, non_negative)
    cooldown: int = setting(0, non_negative_int)
    min_lr: float = setting(0.0, non_negative)


@dataclass(frozen=True)
class CheckpointSettings(Settings):
    monitor: str = setting("val_top3_accuracy", text)
    mode: str = setting("max", one_of("min", "max"))


@dataclass(frozen=True)
class CallbackSettings(Settings):
    """The report's callbacks (``create_callbacks``); ``None`` leaves one out."""

    early_stopping: EarlyStoppingSettings | None = setting(
        check=nested(EarlyStoppingSettings, allow_none=True), factory=EarlyStoppingSettings
    )
    reduce_lr: ReduceLRSettings | None = setting(
        check=nested(ReduceLRSettings, allow_none=True), factory=ReduceLRSettings
    )
    checkpoint: CheckpointSettings | None = setting(
        check=nested(CheckpointSettings, allow_none=True), factory=CheckpointSettings
    )


@dataclass(frozen=True)
class TrainSettings(Settings):
    """How a model trains (the report's "Model Pipeline")."""

    batch_size: int = setting(32, positive_int)
    epochs: int = setting(22, positive_int)
    accum_steps: int | None = setting(None, optional(non_negative_int))
    two_phase: bool = setting(False, boolean)
    head_epochs: int | None = setting(None, optional(positive_int))
    finetune_lr_scale: float = setting(0.1, positive)
    # report: a constant rate (the legacy decay, ReduceLROnPlateau); warmup_cosine: a linear warmup over
    # ``warmup`` of a phase's steps, then a cosine decay to zero, per step
    schedule: str = setting("report", one_of("report", "warmup_cosine"))
    warmup: float = setting(0.1, number_in(0.0, 1.0, high_open=True))
    label_smoothing: float = setting(0.0, rate)
    # An exponential moving average of the weights, used for validation and for the saved model.
    ema: bool = setting(False, boolean)
    ema_momentum: float = setting(0.99, number_in(0.0, 1.0, low_open=True, high_open=True))
    callbacks: CallbackSettings = setting(check=nested(CallbackSettings), factory=CallbackSettings)
    mixed_precision: Any = setting(
        "auto", one_of("auto", True, False, "float32", "float16", "mixed_float16", "bfloat16", "mixed_bfloat16")
    )
    jit_compile: Any = setting("auto", one_of("auto", True, False))
    # How to run, not what is computed: not in stage keys.
    # The resume state: taken at most every ``state_interval`` seconds (0: every epoch) and always at a
    # phase's end, written by a background thread (``background_state``) from a host copy of the variables.
    state_interval: float = setting(30.0, non_negative, key=False)
    background_state: bool = setting(True, boolean, key=False)
    # The stop on a non-finite loss reads the loss every this many steps (and at each epoch's end).
    nonfinite_check_steps: int = setting(50, positive_int, key=False)
    # Train steps per compiled call (Keras' ``steps_per_execution``): batch callbacks run once per call.
    steps_per_execution: int = setting(1, positive_int, key=False)
    verbose: Any = setting("auto", one_of("auto", 0, 1, 2, True, False), key=False)
    tensorboard: bool = setting(True, boolean, key=False)
    plot: bool = setting(True, boolean, key=False)
    evaluate: bool = setting(True, boolean, key=False)

    def check_combination(self) -> TrainSettings:
        """Raise :class:`SettingsError` for settings that cannot go together; else return self."""
        if self.schedule == "warmup_cosine" and self.callbacks.reduce_lr is not None:
            raise SettingsError(
                "train.schedule='warmup_cosine' sets the learning rate every step, so ReduceLROnPlateau cannot "
                "lower it: set train.callbacks.reduce_lr=None, or schedule='report'"
            )
        return self


@dataclass(frozen=True)
class Hyperparams(Settings):
    """The report's hyperparameters of one run: the optimizer's and the builders' (docs/models.md)."""

    optimizer_type: str = setting("Adam", one_of("Adam", "AdamW", "SGD", "RMSprop", "Adagrad"))
    learning_rate: float = setting(1e-4, non_negative)
    beta_1: float = setting(0.9, rate)
    beta_2: float = setting(0.999, rate)
    epsilon: float = setting(1e-7, positive)
    decay: float = setting(1e-6, non_negative)
    weight_decay: float | None = setting(None, optional(non_negative))
    momentum: float = setting(0.0, rate)
    rho: float = setting(0.9, rate)
    dropout: float = setting(0.5, rate)
    spatial_dropout: float = setting(0.2, rate)
    fc_layers: tuple = setting((512,), units)
    # report: each model's head of the report (Flatten or average pooling, its custom blocks); gap: global
    # average pooling on every base, then dropout and the fully connected layers
    head: str = setting("report", one_of("report", "gap"))
    # The report's attention and SE gates before the pooling (always on under the report's head).
    gates: bool = setting(True, boolean)
    x_trainable: Any = setting("all", trainable)
    weights: str | None = setting(None, optional(path_text))
    new_weights: str | None = setting(None, optional(path_text))

    def as_dict(self) -> dict:
        """The report's ``hyperparams`` dict (``fc_layers`` as a list, as the report wrote it)."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        values["fc_layers"] = list(values["fc_layers"])
        return values


def _hyperparams_by_model(value):
    if not isinstance(value, Mapping):
        raise ValueError("must be a dict of model name -> {hyperparameter: value}")
    known = {f.name for f in fields(Hyperparams)}
    out = {}
    for name, changes in value.items():
        model_name(name)
        if not isinstance(changes, Mapping):
            raise ValueError(f"{name!r} must map to a dict of hyperparameters")
        unknown = sorted(set(changes) - known)
        if unknown:
            raise ValueError(f"{name!r} has unknown hyperparameters {unknown}; known: {', '.join(sorted(known))}")
        replace(Hyperparams(), **changes)  # checks the values
        out[name] = MappingProxyType(dict(changes))
    return MappingProxyType(out)


@dataclass(frozen=True)
class SkoptSettings(Settings):
    """scikit-optimize's ``Optimizer``: random points before the Gaussian process, the acquisition function."""

    n_initial_points: int = setting(10, positive_int)
    acq_func: str = setting("gp_hedge", one_of("gp_hedge", "EI", "LCB", "PI"))


@dataclass(frozen=True)
class OptunaSettings(Settings):
    """Optuna's study: where it is stored, TPE, the pruner, the heartbeat of parallel workers."""

    storage: str | None = setting(None, optional(text), key=False)
    study_name: str | None = setting(None, optional(text), key=False)
    # hyperband and successive_halving share the epochs out over the trials (rungs of 1, 3, 9... epochs);
    # median stops a trial worse than the median of earlier trials at the same epoch
    pruner: str | None = setting("hyperband", one_of("hyperband", "successive_halving", "median", None))
    reduction_factor: int = setting(3, int_at_least(2))
    prune_startup_trials: int = setting(5, non_negative_int)  # median only
    prune_warmup_epochs: int = setting(1, non_negative_int)  # median only: epochs never pruned
    tpe_startup_trials: int = setting(10, non_negative_int)
    heartbeat_interval: int = setting(60, positive_int, key=False)
    grace_period: int | None = setting(None, optional(positive_int), key=False)
    max_retry: int | None = setting(3, optional(non_negative_int), key=False)
    timeout: float | None = setting(None, optional(positive), key=False)


def _subsample(value):
    if is_int(value):
        return positive_int(value)
    return number_in(0.0, 1.0, low_open=True)(value)


def _objective(value):
    if not isinstance(value, str) or not value.startswith("val_"):
        raise ValueError("must be a validation metric such as 'val_loss' or 'val_top3_accuracy'")
    return value


@dataclass(frozen=True)
class SearchSettings(Settings):
    """The report's step 10 on a validation split of the training set; one group per backend."""

    backend: str = setting("skopt", one_of("skopt", "optuna"))
    # per_model: each model is searched for itself (the report's advice, its section 11); False: the
    # report's practice, ``model`` is searched and its result reused for every model.
    per_model: bool = setting(True, boolean, key=False)
    # The models searched (None: every model of the profile); ``model`` is the one searched without per_model.
    models: tuple | None = setting(None, optional(model_names), key=False)
    model: str = setting("resnet50", model_name)
    n_trials: int = setting(20, positive_int)
    epochs: int = setting(5, positive_int)
    patience: int = setting(2, positive_int)
    objective: str = setting("val_accuracy", _objective)
    adam_only: bool = setting(True, boolean)
    # acting: weight decay over a range where it changes the weights (space.py); report: the report's ranges
    ranges: str = setting("acting", one_of("acting", "report"))
    validation_fraction: float = setting(0.2, number_in(0.0, 0.5, low_open=True))
    subsample: Any = setting(None, optional(_subsample))
    input_size: tuple | None = setting(None, optional(size_pair))
    keep_trials: bool = setting(False, boolean, key=False)
    skopt: SkoptSettings = setting(check=nested(SkoptSettings), factory=SkoptSettings)
    optuna: OptunaSettings = setting(check=nested(OptunaSettings), factory=OptunaSettings)

    @property
    def backend_settings(self):
        """The chosen backend's own group (the other backend's never reaches a search)."""
        return getattr(self, self.backend)


@dataclass(frozen=True)
class EvalSettings(Settings):
    """How results are obtained (spec-notes section 6): what selects epochs and runs, and how the test set is read.

    ``validation="split"``: a stratified, seeded ``validation_fraction`` of the training set (with the
    augmented variants of its images) is held out; early stopping, the learning-rate schedule, the
    checkpoint, the kept epoch and the best run read it, and the test set is read once per finished run.
    ``validation="test"``: the report's protocol, the test set as validation data.
    """

    validation: str = setting("split", one_of("split", "test"))
    validation_fraction: float = setting(0.1, number_in(0.0, 0.5, low_open=True))
    # After selection, train again on training + validation for the kept number of epochs.
    refit: bool = setting(False, boolean)
    # Test-time augmentation: the mean of the predictions for an image and its horizontal flip.
    tta: bool = setting(False, boolean)
    # Intervals of test accuracy and top-k: Wilson's for a proportion, or a seeded bootstrap over test images.
    interval: str = setting("wilson", one_of("wilson", "bootstrap"))
    confidence: float = setting(0.95, number_in(0.5, 1.0, low_open=True, high_open=True))
    bootstrap_resamples: int = setting(2000, int_at_least(100))


@dataclass(frozen=True)
class RunSettings(Settings):
    """Everything a profile decides."""

    profile: str = setting("full", text)
    # The fine-tuning recipe the settings were made from: "report", "modern", or "custom" once a part of
    # one is changed (carclf/settings/recipes.py). The parts are the settings themselves.
    recipe: str = setting("report", one_of("report", "modern", "custom"))
    models: tuple = setting(MODEL_NAMES, model_names)
    seed: int = setting(0, non_negative_int)
    data: DataSettings = setting(check=nested(DataSettings), factory=DataSettings)
    augment: AugmentSettings = setting(check=nested(AugmentSettings), factory=AugmentSettings)
    train: TrainSettings = setting(check=nested(TrainSettings), factory=TrainSettings)
    hyperparams: Hyperparams = setting(check=nested(Hyperparams), factory=Hyperparams)
    hyperparams_by_model: Mapping = setting(check=_hyperparams_by_model, factory=dict)
    search: SearchSettings = setting(check=nested(SearchSettings), factory=SearchSettings)
    evaluation: EvalSettings = setting(check=nested(EvalSettings), factory=EvalSettings)

    def hyperparams_for(self, name) -> Hyperparams:
        """The default hyperparameters of model ``name``: the profile's, its own overrides on top."""
        return replace(self.hyperparams, **self.hyperparams_by_model.get(name, {}))
