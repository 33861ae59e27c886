"""Settings by name: overrides by dotted path or unique plain name, the list of names, flat tables."""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Mapping
from dataclasses import fields, is_dataclass, replace
from typing import Any

from carclf.settings.checks import SettingsError
from carclf.settings.groups import RunSettings
from carclf.settings.recipes import RECIPES, recipe_of

#: Groups whose settings may be named without their group ("epochs" for "train.epochs") when the name is unique.
_PLAIN_GROUPS = ("data", "augment", "train", "evaluation")


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


def _apply_recipe(settings, name):
    if name == "custom":
        return settings
    if name not in RECIPES:
        raise SettingsError(f"recipe must be one of {', '.join(RECIPES)} or 'custom', got {name!r}")
    for dotted, value in RECIPES[name].settings.items():
        settings = _set(settings, _path_of(settings, dotted), value)
    return settings


def override(settings, **changes):
    """A copy of ``settings`` with ``changes`` applied, each named by its dotted path or its unique plain name.

    ``override(FULL, epochs=30, **{"search.backend": "optuna"})``. ``recipe="modern"`` applies that recipe's
    settings first (carclf/settings/recipes.py); the recipe recorded is then the one whose parts the result
    has, or "custom". An unknown name, or a value a setting cannot take, raises :class:`SettingsError`
    naming it and what is allowed.
    """
    if isinstance(settings, RunSettings) and "recipe" in changes:  # the bundle first, then what else is asked
        settings = _apply_recipe(settings, changes.pop("recipe"))
    for name, value in changes.items():
        settings = _set(settings, _path_of(settings, name), value)
    if isinstance(settings, RunSettings):
        settings.train.check_combination()
        settings = replace(settings, recipe=recipe_of(settings))
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


def key_fields(obj) -> dict:
    """The fields of a settings object that belong in stage keys (``key=False`` ones left out)."""
    return {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj) if f.metadata.get("key", True)}
