"""A run's settings: one frozen dataclass per concern, checked when made, and the two profiles (docs/settings.md).

This module imports nothing heavy (no Keras, no OpenCV): the command line validates its flags with it.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import numbers
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, is_dataclass, replace
from types import MappingProxyType
from typing import Any

__all__ = [
    "AugmentSettings",
    "CallbackSettings",
    "CheckpointSettings",
    "DataSettings",
    "DecodeSettings",
    "EarlyStoppingSettings",
    "Hyperparams",
    "LABELS",
    "MODEL_NAMES",
    "OptunaSettings",
    "PROFILES",
    "ReduceLRSettings",
    "RunSettings",
    "SearchSettings",
    "SettingsError",
    "SkoptSettings",
    "SyntheticSettings",
    "TrainSettings",
    "check_positive_int",
    "flatten",
    "override",
    "profile",
    "setting_names",
]

#: The eight models in the report's order: ``carclf.models.NAMES`` without importing Keras (a test pins the two).
MODEL_NAMES = ("model1", "alexnet", "vgg16", "resnet50", "densenet121", "imagenet", "efficientnetb0", "inceptionv3")

#: The two runs of every model: the profile's default hyperparameters and the search's optimal ones.
LABELS = ("default", "optimal")


class SettingsError(ValueError):
    """A setting that does not exist, or a value it cannot take; the message names both and what is allowed."""


# --------------------------------------------------------------------------- #
# Checks: each returns the value in its normal form or raises ValueError saying what is allowed
# --------------------------------------------------------------------------- #


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def int_at_least(low: int) -> Callable:
    def check(value):
        if not _is_int(value) or value < low:
            raise ValueError(f"must be an integer >= {low}")
        return int(value)

    return check


positive_int = int_at_least(1)
non_negative_int = int_at_least(0)


def check_positive_int(name: str, value) -> int:
    """``value`` as an int >= 1, else a :class:`SettingsError` naming ``name`` (for arguments outside settings)."""
    try:
        return positive_int(value)
    except ValueError as exc:
        raise SettingsError(f"{name}={value!r}: {exc}") from None


def number_in(low=-math.inf, high=math.inf, *, low_open=False, high_open=False) -> Callable:
    left, right = "(" if low_open else "[", ")" if high_open else "]"

    def check(value):
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
            raise ValueError(f"must be a number in {left}{low}, {high}{right}")
        too_low = value <= low if low_open else value < low
        too_high = value >= high if high_open else value > high
        if too_low or too_high:
            raise ValueError(f"must be a number in {left}{low}, {high}{right}")
        return float(value)

    return check


non_negative = number_in(0.0)
positive = number_in(0.0, low_open=True)
rate = number_in(0.0, 1.0, high_open=True)


def one_of(*choices) -> Callable:
    def check(value):
        for choice in choices:
            if value == choice and type(value) is type(choice):
                return choice
            if isinstance(choice, str) and isinstance(value, str) and value.lower() == choice.lower():
                return choice
        raise ValueError(f"must be one of {', '.join(map(repr, choices))}")

    return check


def optional(check: Callable) -> Callable:
    def check_optional(value):
        return None if value is None else check(value)

    return check_optional


def either(*checks: Callable, allowed: str) -> Callable:
    def check(value):
        for one in checks:
            try:
                return one(value)
            except (TypeError, ValueError):
                continue
        raise ValueError(f"must be {allowed}")

    return check


def boolean(value):
    if not isinstance(value, bool):
        raise ValueError("must be True or False")
    return value


def text(value):
    if not isinstance(value, str) or not value:
        raise ValueError("must be a non-empty string")
    return value


def path_text(value):
    if hasattr(value, "__fspath__"):
        value = str(value)
    return text(value)


def size_pair(value):
    """An image size: ``n`` or ``(height, width)``, each at least 1."""
    if _is_int(value):
        value = (value, value)
    try:
        height, width = value
    except (TypeError, ValueError):
        raise ValueError("must be an integer or a (height, width) pair of integers >= 1") from None
    if not (_is_int(height) and _is_int(width) and height >= 1 and width >= 1):
        raise ValueError("must be an integer or a (height, width) pair of integers >= 1")
    return int(height), int(width)


def units(value):
    """``fc_layers``: a sequence of positive ints (or one int)."""
    if _is_int(value):
        value = (value,)
    try:
        out = tuple(value)
    except TypeError:
        raise ValueError("must be a list of positive integers") from None
    if not all(_is_int(v) and v >= 1 for v in out):
        raise ValueError("must be a list of positive integers")
    return tuple(int(v) for v in out)


def trainable(value):
    if _is_int(value) and value >= 0:
        return int(value)
    if isinstance(value, str) and (value.strip().lower() in ("all", "none", "partial") or value.strip().isdigit()):
        return value.strip().lower()
    raise ValueError("must be 'all', 'none', 'partial' or a non-negative integer")


def alpha_switch(value):
    """CutMix / MixUp: False (off), True (on, default alpha) or an alpha > 0."""
    if isinstance(value, bool):
        return value
    return positive(value)


def model_name(value):
    if value not in MODEL_NAMES:
        close = difflib.get_close_matches(str(value).lower(), MODEL_NAMES, n=1, cutoff=0.7)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f"must be one of {', '.join(MODEL_NAMES)}{hint}")
    return value


def model_names(value):
    if isinstance(value, str):
        value = (value,)
    names = tuple(model_name(v) for v in value)
    if not names or len(set(names)) != len(names):
        raise ValueError("must be a non-empty list of distinct model names")
    return names


def nested(cls, allow_none=False) -> Callable:
    """A nested settings group: an instance, or a mapping of its fields (over the defaults)."""

    def check(value):
        if value is None and allow_none:
            return None
        if isinstance(value, cls):
            return value
        if isinstance(value, Mapping):
            return override(cls(), **value)
        raise ValueError(f"must be a {cls.__name__}{' or None' if allow_none else ''} (or a dict of its fields)")

    return check


def setting(default=None, check: Callable | None = None, *, key: bool = True, factory=None):
    """A settings field: its default, its check, and whether it is part of stage keys."""
    metadata = {"check": check, "key": key}
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


class _Settings:
    """Runs every field's check when an instance is made (also by ``dataclasses.replace``)."""

    def __post_init__(self):
        for f in fields(self):
            check = f.metadata.get("check")
            if check is None:
                continue
            value = getattr(self, f.name)
            try:
                normal = check(value)
            except SettingsError as exc:
                raise SettingsError(f"{f.name}.{exc}") from None
            except (TypeError, ValueError) as exc:
                raise SettingsError(f"{f.name} {exc}, got {value!r}") from None
            object.__setattr__(self, f.name, normal)

    def override(self, **changes):
        """A copy with ``changes`` applied (see :func:`override`)."""
        return override(self, **changes)


# --------------------------------------------------------------------------- #
# The groups
# --------------------------------------------------------------------------- #


@dataclass(frozen=True)
class SyntheticSettings(_Settings):
    """The synthetic stand-in for Stanford Cars (``carclf.synthetic.make_synthetic``)."""

    n_classes: int = setting(10, positive_int)
    per_class_train: int = setting(16, positive_int)
    per_class_test: int = setting(8, positive_int)
    seed: int = setting(0, non_negative_int)


@dataclass(frozen=True)
class DecodeSettings(_Settings):
    """How each image becomes the model's input (the decoded cache's key)."""

    image_size: tuple = setting((224, 224), size_pair)
    crop: str = setting("box", one_of("box", "full"))
    margin: float = setting(0.08, non_negative)


@dataclass(frozen=True)
class DataSettings(_Settings):
    """The dataset: ``"synthetic"`` or its folder (relative to the workspace root), and how it is decoded."""

    dataset: str = setting("data/stanford_cars", path_text)
    synthetic: SyntheticSettings = setting(check=nested(SyntheticSettings), factory=SyntheticSettings)
    decode: DecodeSettings = setting(check=nested(DecodeSettings), factory=DecodeSettings)


@dataclass(frozen=True)
class AugmentSettings(_Settings):
    """The report's step 8: ``augmentation`` offline (the report's), online (per batch) or none; CutMix, MixUp."""

    augmentation: str = setting("offline", one_of("offline", "online", "none"))
    n_variants: int = setting(1, positive_int)
    pipeline: str = setting("report", one_of("report"))
    cutmix: Any = setting(False, alpha_switch)
    mixup: Any = setting(False, alpha_switch)


@dataclass(frozen=True)
class EarlyStoppingSettings(_Settings):
    monitor: str = setting("val_loss", text)
    mode: str = setting("min", one_of("min", "max"))
    patience: int = setting(5, non_negative_int)
    min_delta: float = setting(0.0, non_negative)
    restore_best_weights: bool = setting(True, boolean)


@dataclass(frozen=True)
class ReduceLRSettings(_Settings):
    monitor: str = setting("val_loss", text)
    mode: str = setting("min", one_of("min", "max"))
    factor: float = setting(0.2, number_in(0.0, 1.0, low_open=True, high_open=True))
    patience: int = setting(2, non_negative_int)
    min_delta: float = setting(1e-4, non_negative)
    cooldown: int = setting(0, non_negative_int)
    min_lr: float = setting(0.0, non_negative)


@dataclass(frozen=True)
class CheckpointSettings(_Settings):
    monitor: str = setting("val_top3_accuracy", text)
    mode: str = setting("max", one_of("min", "max"))


@dataclass(frozen=True)
class CallbackSettings(_Settings):
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
class TrainSettings(_Settings):
    """How a model trains (the report's "Model Pipeline")."""

    batch_size: int = setting(32, positive_int)
    epochs: int = setting(22, positive_int)
    accum_steps: int | None = setting(None, optional(non_negative_int))
    two_phase: bool = setting(False, boolean)
    head_epochs: int | None = setting(None, optional(positive_int))
    finetune_lr_scale: float = setting(0.1, positive)
    callbacks: CallbackSettings = setting(check=nested(CallbackSettings), factory=CallbackSettings)
    mixed_precision: Any = setting(
        "auto", one_of("auto", True, False, "float32", "float16", "mixed_float16", "bfloat16", "mixed_bfloat16")
    )
    jit_compile: Any = setting("auto", one_of("auto", True, False))
    # How to run, not what is computed: not in stage keys.
    verbose: Any = setting("auto", one_of("auto", 0, 1, 2, True, False), key=False)
    tensorboard: bool = setting(True, boolean, key=False)
    plot: bool = setting(True, boolean, key=False)
    evaluate: bool = setting(True, boolean, key=False)


@dataclass(frozen=True)
class Hyperparams(_Settings):
    """The report's hyperparameters of one run: the optimizer's and the builders' (docs/models.md)."""

    optimizer_type: str = setting("Adam", one_of("Adam", "SGD", "RMSprop", "Adagrad"))
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
class SkoptSettings(_Settings):
    """scikit-optimize's ``Optimizer``: random points before the Gaussian process, the acquisition function."""

    n_initial_points: int = setting(10, positive_int)
    acq_func: str = setting("gp_hedge", one_of("gp_hedge", "EI", "LCB", "PI"))


@dataclass(frozen=True)
class OptunaSettings(_Settings):
    """Optuna's study: where it is stored, TPE, the pruner, the heartbeat of parallel workers."""

    storage: str | None = setting(None, optional(text), key=False)
    study_name: str | None = setting(None, optional(text), key=False)
    pruner: str | None = setting("median", one_of("median", None))
    prune_startup_trials: int = setting(5, non_negative_int)
    prune_warmup_epochs: int = setting(1, non_negative_int)
    tpe_startup_trials: int = setting(10, non_negative_int)
    heartbeat_interval: int = setting(60, positive_int, key=False)
    grace_period: int | None = setting(None, optional(positive_int), key=False)
    max_retry: int | None = setting(3, optional(non_negative_int), key=False)
    timeout: float | None = setting(None, optional(positive), key=False)


def _subsample(value):
    if _is_int(value):
        return positive_int(value)
    return number_in(0.0, 1.0, low_open=True)(value)


def _objective(value):
    if not isinstance(value, str) or not value.startswith("val_"):
        raise ValueError("must be a validation metric such as 'val_loss' or 'val_top3_accuracy'")
    return value


@dataclass(frozen=True)
class SearchSettings(_Settings):
    """The report's step 10 on a validation split of the training set; one group per backend."""

    backend: str = setting("skopt", one_of("skopt", "optuna"))
    model: str = setting("resnet50", model_name)
    n_trials: int = setting(20, positive_int)
    epochs: int = setting(5, positive_int)
    patience: int = setting(2, positive_int)
    objective: str = setting("val_loss", _objective)
    adam_only: bool = setting(True, boolean)
    validation_fraction: float = setting(0.2, number_in(0.0, 1.0, low_open=True, high_open=True))
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
class RunSettings(_Settings):
    """Everything a profile decides."""

    profile: str = setting("full", text)
    models: tuple = setting(MODEL_NAMES, model_names)
    seed: int = setting(0, non_negative_int)
    data: DataSettings = setting(check=nested(DataSettings), factory=DataSettings)
    augment: AugmentSettings = setting(check=nested(AugmentSettings), factory=AugmentSettings)
    train: TrainSettings = setting(check=nested(TrainSettings), factory=TrainSettings)
    hyperparams: Hyperparams = setting(check=nested(Hyperparams), factory=Hyperparams)
    hyperparams_by_model: Mapping = setting(check=_hyperparams_by_model, factory=dict)
    search: SearchSettings = setting(check=nested(SearchSettings), factory=SearchSettings)

    def hyperparams_for(self, name) -> Hyperparams:
        """The default hyperparameters of model ``name``: the profile's, its own overrides on top."""
        return replace(self.hyperparams, **self.hyperparams_by_model.get(name, {}))


# --------------------------------------------------------------------------- #
# Overrides by name
# --------------------------------------------------------------------------- #

#: Groups whose settings may be named without their group ("epochs" for "train.epochs") when the name is unique.
_PLAIN_GROUPS = ("data", "augment", "train")


def _leaves(obj, prefix=()):
    for f in fields(obj):
        value = getattr(obj, f.name)
        yield (*prefix, f.name)
        if is_dataclass(value):
            yield from _leaves(value, (*prefix, f.name))


def _plain_names(cls) -> dict[str, tuple]:
    defaults = cls()
    names = {f.name: (f.name,) for f in fields(defaults)}
    if cls is not RunSettings:
        return names
    seen: dict[str, list[tuple]] = {}
    for group in _PLAIN_GROUPS:
        for path in _leaves(getattr(defaults, group), (group,)):
            seen.setdefault(path[-1], []).append(path)
    for name, paths in seen.items():
        if name not in names and len(paths) == 1:
            names[name] = paths[0]
    return names


def setting_names(cls=None) -> list[str]:
    """Every name :func:`override` takes for settings of type ``cls`` (default :class:`RunSettings`)."""
    cls = type(cls) if is_dataclass(cls) and not isinstance(cls, type) else cls or RunSettings
    dotted = [".".join(path) for path in _leaves(cls())]
    return sorted(set(dotted) | set(_plain_names(cls)))


def _path_of(settings, name: str) -> tuple:
    plain = _plain_names(type(settings))
    if name in plain:
        return plain[name]
    parts = tuple(name.split("."))
    obj = type(settings)()  # the defaults hold every group, also those a profile sets to None
    for i, part in enumerate(parts):
        if not is_dataclass(obj) or part not in {f.name for f in fields(obj)}:
            break
        if i == len(parts) - 1:
            return parts
        obj = getattr(obj, part)
    valid = setting_names(settings)
    close = difflib.get_close_matches(name, valid, n=1, cutoff=0.6)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise SettingsError(f"unknown setting {name!r}{hint}; the settings are: {', '.join(valid)}")


def _set(obj, path: tuple, value):
    head, rest = path[0], path[1:]
    if rest:
        child = getattr(obj, head)
        if child is None:  # a group switched off: switch it on with its defaults first
            child = getattr(type(obj)(), head)
        try:
            value = _set(child, rest, value)
        except SettingsError as exc:
            raise SettingsError(f"{head}.{exc}") from None
    return replace(obj, **{head: value})


def override(settings, **changes):
    """A copy of ``settings`` with ``changes`` applied, each named by its dotted path or its unique plain name.

    ``override(FULL, epochs=30, **{"search.backend": "optuna"})``. An unknown name, or a value a setting
    cannot take, raises :class:`SettingsError` naming it and what is allowed.
    """
    for name, value in changes.items():
        settings = _set(settings, _path_of(settings, name), value)
    return settings


def flatten(settings, prefix="") -> dict[str, Any]:
    """``{dotted name: value}`` of every leaf setting (for tables)."""
    out = {}
    for f in fields(settings):
        value = getattr(settings, f.name)
        name = f"{prefix}{f.name}"
        if is_dataclass(value):
            out.update(flatten(value, f"{name}."))
        elif isinstance(value, Mapping):
            out[name] = {k: dict(v) if isinstance(v, Mapping) else v for k, v in value.items()}
        else:
            out[name] = value
    return out


# --------------------------------------------------------------------------- #
# The profiles: "full" is the report's run; "demo" is derived from it
# --------------------------------------------------------------------------- #

FULL = RunSettings(
    profile="full",
    hyperparams=Hyperparams(weights="imagenet"),
    search=SearchSettings(model="resnet50", n_trials=20, epochs=5, subsample=0.5, input_size=(160, 160)),
)

DEMO = FULL.override(
    profile="demo",
    dataset="synthetic",
    image_size=(80, 80),  # InceptionV3 needs 75, AlexNet 67
    batch_size=16,
    epochs=1,
    # On a CPU the six large bases train frozen (the report's x_trainable="none"): their training graphs
    # take most of a demo's time to build. model1 and AlexNet train whole.
    hyperparams_by_model={"model1": {"x_trainable": "all"}, "alexnet": {"x_trainable": "all"}},
    **{
        "hyperparams.learning_rate": 1e-3,
        "hyperparams.weights": None,
        "hyperparams.x_trainable": "none",
        "search.model": "model1",
        "search.n_trials": 4,
        "search.epochs": 2,
        "search.subsample": None,
        "search.input_size": None,
        "search.skopt.n_initial_points": 2,
    },
)

PROFILES = MappingProxyType({"demo": DEMO, "full": FULL})


def profile(name: str, **changes) -> RunSettings:
    """The settings of profile ``name`` ("demo" or "full") with ``changes`` (see :func:`override`)."""
    if name not in PROFILES:
        raise SettingsError(f"unknown profile {name!r}: choose one of {', '.join(PROFILES)}")
    return override(PROFILES[name], **changes)


def key_fields(obj) -> dict:
    """The fields of a settings object that belong in stage keys (``key=False`` ones left out)."""
    return {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj) if f.metadata.get("key", True)}
