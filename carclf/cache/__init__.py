"""The stage cache under ``pickles/``: atomic files (``files``), keys (``keys``) and the store (``store``)."""

from carclf.cache.files import atomic_open, atomic_pickle, atomic_write, load_pickle
from carclf.cache.keys import KEY_LENGTH, canonical, canonical_json, config_hash, json_safe, native, qualname
from carclf.cache.store import CACHE_FORMAT, NotComputedError, StageCache, StageResult, unit_filename

__all__ = [
    "CACHE_FORMAT",
    "KEY_LENGTH",
    "NotComputedError",
    "StageCache",
    "StageResult",
    "atomic_open",
    "atomic_pickle",
    "atomic_write",
    "canonical",
    "canonical_json",
    "config_hash",
    "json_safe",
    "load_pickle",
    "native",
    "qualname",
    "unit_filename",
]
