"""The stage cache under ``pickles/``: atomic, checksummed files (``files``), disk space (``space``), keys
(``keys``) and the store (``store``)."""

from carclf.cache.files import DamagedFileError, atomic_open, atomic_pickle, atomic_write, file_sha256, load_pickle
from carclf.cache.keys import KEY_LENGTH, canonical, canonical_json, config_hash, json_safe, native, qualname
from carclf.cache.space import DiskFullError, allocate, check_free_space, disk_full_message, human_bytes
from carclf.cache.store import CACHE_FORMAT, NotComputedError, StageCache, StageResult, unit_filename

__all__ = [
    "CACHE_FORMAT",
    "DamagedFileError",
    "DiskFullError",
    "KEY_LENGTH",
    "NotComputedError",
    "StageCache",
    "StageResult",
    "atomic_open",
    "atomic_pickle",
    "atomic_write",
    "allocate",
    "check_free_space",
    "disk_full_message",
    "file_sha256",
    "human_bytes",
    "canonical",
    "canonical_json",
    "config_hash",
    "json_safe",
    "load_pickle",
    "native",
    "qualname",
    "unit_filename",
]
