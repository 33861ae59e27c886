"""A run's settings: one frozen dataclass per concern, checked when made, and the two profiles.

``checks`` holds the value checks, ``groups`` the dataclasses, ``names`` the overrides by name, ``profiles``
the "demo" and "full" profiles (docs/settings.md). Nothing heavy is imported: the command line checks its
flags with these before Keras is loaded.
"""

from carclf.settings.checks import (
    LABELS,
    MIN_INPUT_SIZES,
    MODEL_NAMES,
    Settings,
    SettingsError,
    check_positive_int,
    nested,
    non_negative_int,
    positive_int,
)
from carclf.settings.groups import (
    AugmentSettings,
    CallbackSettings,
    CheckpointSettings,
    DataSettings,
    DecodeSettings,
    EarlyStoppingSettings,
    EvalSettings,
    Hyperparams,
    OptunaSettings,
    ReduceLRSettings,
    RunSettings,
    SearchSettings,
    SkoptSettings,
    SyntheticSettings,
    TrainSettings,
)
from carclf.settings.names import flatten, key_fields, override, setting_names
from carclf.settings.profiles import DEMO, FULL, PROFILES, profile
from carclf.settings.recipes import RECIPES, recipe_of, recipe_rows

__all__ = [
    "RECIPES",
    "recipe_of",
    "recipe_rows",
    "AugmentSettings",
    "CallbackSettings",
    "CheckpointSettings",
    "DEMO",
    "DataSettings",
    "DecodeSettings",
    "EarlyStoppingSettings",
    "EvalSettings",
    "FULL",
    "Hyperparams",
    "LABELS",
    "MIN_INPUT_SIZES",
    "MODEL_NAMES",
    "OptunaSettings",
    "PROFILES",
    "ReduceLRSettings",
    "RunSettings",
    "SearchSettings",
    "Settings",
    "SettingsError",
    "SkoptSettings",
    "SyntheticSettings",
    "TrainSettings",
    "check_positive_int",
    "flatten",
    "key_fields",
    "nested",
    "non_negative_int",
    "override",
    "positive_int",
    "profile",
    "setting_names",
]
