"""The checks of settings values: each returns the value in its normal form or says what is allowed."""

from __future__ import annotations

import difflib
import math
import numbers
from collections.abc import Callable, Mapping
from dataclasses import field, fields

#: The eight models in the report's order: ``carclf.models.NAMES`` without importing Keras (a test pins the two).
MODEL_NAMES = ("model1", "alexnet", "vgg16", "resnet50", "densenet121", "imagenet", "efficientnetb0", "inceptionv3")

#: Each model's smallest input height and width: ``carclf.models.MIN_INPUT_SIZE`` without importing Keras (the
#: command line checks ``--image-size`` with it; a test pins the two).
MIN_INPUT_SIZES = {
    "model1": 16,
    "alexnet": 67,
    "vgg16": 32,
    "resnet50": 32,
    "densenet121": 32,
    "imagenet": 32,
    "efficientnetb0": 32,
    "inceptionv3": 75,
}

#: The two runs of every model: the profile's default hyperparameters and the search's optimal ones.
LABELS = ("default", "optimal")


class SettingsError(ValueError):
    """A setting that does not exist, or a value it cannot take; the message names both and what is allowed."""


# --------------------------------------------------------------------------- #
# Checks: each returns the value in its normal form or raises ValueError saying what is allowed
# --------------------------------------------------------------------------- #


def is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def int_at_least(low: int) -> Callable:
    def check(value):
        if not is_int(value) or value < low:
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
    if is_int(value):
        value = (value, value)
    try:
        height, width = value
    except (TypeError, ValueError):
        raise ValueError("must be an integer or a (height, width) pair of integers >= 1") from None
    if not (is_int(height) and is_int(width) and height >= 1 and width >= 1):
        raise ValueError("must be an integer or a (height, width) pair of integers >= 1")
    return int(height), int(width)


def units(value):
    """``fc_layers``: a sequence of positive ints (or one int)."""
    if is_int(value):
        value = (value,)
    try:
        out = tuple(value)
    except TypeError:
        raise ValueError("must be a list of positive integers") from None
    if not all(is_int(v) and v >= 1 for v in out):
        raise ValueError("must be a list of positive integers")
    return tuple(int(v) for v in out)


def trainable(value):
    if is_int(value) and value >= 0:
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
            from carclf.settings.names import override

            return override(cls(), **value)
        raise ValueError(f"must be a {cls.__name__}{' or None' if allow_none else ''} (or a dict of its fields)")

    return check


def setting(default=None, check: Callable | None = None, *, key: bool = True, factory=None):
    """A settings field: its default, its check, and whether it is part of stage keys."""
    metadata = {"check": check, "key": key}
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


class Settings:
    """The base of every settings group: runs each field's check when an instance is made (also by
    ``dataclasses.replace``)."""

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
        """A copy with ``changes`` applied (see :func:`carclf.settings.override`)."""
        from carclf.settings.names import override

        return override(self, **changes)
