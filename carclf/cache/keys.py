"""Stage keys: any config of plain data (and settings dataclasses) as canonical JSON, hashed."""

from __future__ import annotations

import dataclasses
import datetime as _dt
import enum
import hashlib
import json
import math
from collections.abc import Mapping
from pathlib import PurePath

import numpy as np

__all__ = ["KEY_LENGTH", "canonical", "canonical_json", "config_hash", "json_safe", "native", "qualname"]

#: Length of the hex digests used as keys (64 bits).
KEY_LENGTH = 16


def _where(trail: str) -> str:
    return trail or "config"


def canonical(value, _trail: str = ""):
    """``value`` as plain JSON data: the form :func:`config_hash` digests.

    dict keys are sorted by json (non-str keys become their JSON text), tuples
    and lists become lists, sets become sorted lists, Paths become strings,
    numpy scalars and arrays become Python numbers and lists, dataclasses and
    enums their fields and values. Anything else raises TypeError naming the
    key where it was found.
    """
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, enum.Enum):
        return canonical(value.value, _trail)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    if isinstance(value, np.generic):
        return canonical(value.item(), _trail)
    if isinstance(value, np.ndarray):
        if value.dtype == object:
            raise TypeError(f"cannot hash object array at {_where(_trail)}")
        return canonical(value.tolist(), _trail)
    if isinstance(value, PurePath):
        return value.as_posix()
    if isinstance(value, Mapping):
        out = {}
        for k, v in value.items():
            if isinstance(k, str):
                name = k
            elif k is None or isinstance(k, (bool, int, float, np.generic)):
                name = json.dumps(canonical(k))
            else:
                raise TypeError(f"cannot hash dict key {k!r} ({type(k).__name__}) at {_where(_trail)}")
            if name in out:
                raise TypeError(f"dict keys {k!r} and {name!r} collide at {_where(_trail)}")
            out[name] = canonical(v, f"{_trail}[{k!r}]")
        return out
    if isinstance(value, (list, tuple)):
        return [canonical(v, f"{_trail}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, (set, frozenset)):
        items = [canonical(v, f"{_trail}{{}}") for v in value]
        return sorted(items, key=lambda v: json.dumps(v, sort_keys=True))
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        # A field marked key=False (carclf.settings) says how to run, not what is computed.
        fields = {f.name: getattr(value, f.name) for f in dataclasses.fields(value) if f.metadata.get("key", True)}
        return {"__dataclass__": type(value).__qualname__, **canonical(fields, _trail)}
    raise TypeError(
        f"cannot hash {type(value).__name__} value {value!r:.80} at {_where(_trail)}: "
        "configs must be plain data (str, numbers, bool, None, lists, tuples, dicts, Paths)"
    )


def qualname(obj) -> str:
    """``module.QualifiedName`` of a function or class (how keys and logs name a builder or a hook)."""
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', type(obj).__qualname__)}"


def native(value):
    """A numpy scalar as the Python number it holds; anything else as it is."""
    return value.item() if isinstance(value, np.generic) else value


def json_safe(value):
    """``value`` for ``json.dumps(allow_nan=False)``: numpy scalars as numbers, non-finite floats as None,
    Paths and timestamps as strings, containers walked."""
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    value = native(value)
    if type(value).__name__ in ("NaTType", "NAType"):  # pandas' missing values, without importing pandas
        return None
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, (PurePath, _dt.datetime)):
        return str(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return json_safe(canonical(value))
    return value


def canonical_json(config) -> str:
    return json.dumps(canonical(config), sort_keys=True, separators=(",", ":"), allow_nan=True)


def config_hash(config, length: int = KEY_LENGTH) -> str:
    """A stable short hex digest of ``config`` (sha256 of its canonical JSON)."""
    return hashlib.sha256(canonical_json(config).encode("utf-8")).hexdigest()[:length]
