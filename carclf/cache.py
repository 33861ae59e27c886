"""The stage cache: the one place that decides where a stage's result lives.

Every intermediate result of the notebook is a *stage*: a name, a config (plain
data) and the keys of the upstream results it was computed from. Its key is a
hash of all three, so changing one stage's config recomputes that stage and
everything downstream of it, and nothing else. Results live under ``root``::

    root/<stage>/<key>.pkl         the result (written atomically)
    root/<stage>/<key>.json        what the pickle holds, for people
    root/<stage>/<key>/            large non-pickle files of that result
    root/<stage>/<key>.parts/      finished units of a result still being built

Nothing here is ever half-written: every file goes through :func:`atomic_write`
or :func:`atomic_pickle` (temp file in the same folder, fsync, ``os.replace``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import enum
import hashlib
import json
import logging
import math
import os
import pickle
import re
import secrets
import shutil
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import Any

import numpy as np

log = logging.getLogger("carclf.cache")

#: Bumped when the layout or the meaning of stored results changes; part of every key.
CACHE_FORMAT = 1

#: Length of the hex digests used as keys (64 bits).
KEY_LENGTH = 16

_TMP_SUFFIX = ".tmp"
_NAME_OK = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")


class NotComputedError(LookupError):
    """A stage's result is not in the cache and the caller asked not to compute it."""

    def __init__(self, stage: str, key: str, path: Path):
        super().__init__(f"stage {stage} has no stored result (expected {path})")
        self.stage, self.key, self.path = stage, key, path


# --------------------------------------------------------------------------- #
# Atomic writes
# --------------------------------------------------------------------------- #


def _fsync_dir(folder: Path) -> None:
    """Make the rename itself durable (best effort: not every OS allows it)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _temp_beside(path: Path):
    """Create ``.<name>.<random>.tmp`` beside ``path`` (mode 0o666 less the umask)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    while True:
        tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}{_TMP_SUFFIX}"
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:
            continue


@contextlib.contextmanager
def atomic_open(path, mode: str = "wb", durable: bool = True):
    """Open a temp file beside ``path``; on a clean exit it replaces ``path``.

    Readers see either the old file or the whole new one: the rename is atomic.
    If the body raises, the temp file is removed and ``path`` is left
    untouched. (A SIGKILL can leave a ``.<name>.*.tmp`` file behind; it is
    never mistaken for a result.)

    ``durable=True`` also fsyncs the file and its folder, so the result
    survives a power cut, not just a killed process. Writers of many small
    files (augmented images) pass ``durable=False`` and sync once per batch of
    files instead: a per-file fsync costs more than the work.
    """
    if "w" not in mode:
        raise ValueError(f"atomic_open writes only, got mode {mode!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _temp_beside(path)
    try:
        with os.fdopen(fd, mode) as handle:
            yield handle
            handle.flush()
            if durable:
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if durable:
        _fsync_dir(path.parent)


def atomic_write(path, data: bytes, durable: bool = True) -> Path:
    """Write ``data`` to ``path`` so that a crash never leaves a partial file (see :func:`atomic_open`)."""
    with atomic_open(path, "wb", durable=durable) as handle:
        handle.write(data)
    return Path(path)


def atomic_pickle(path, obj) -> Path:
    """Pickle ``obj`` to ``path`` atomically (streamed, not built in memory)."""
    with atomic_open(path, "wb") as handle:
        pickle.dump(obj, handle, protocol=pickle.HIGHEST_PROTOCOL)
    return Path(path)


def load_pickle(path):
    with open(path, "rb") as handle:
        return pickle.load(handle)


# --------------------------------------------------------------------------- #
# Config hashing
# --------------------------------------------------------------------------- #


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


# --------------------------------------------------------------------------- #
# The stage cache
# --------------------------------------------------------------------------- #


@dataclass(frozen=True)
class StageResult:
    """One stage's result, and whether it came from disk."""

    stage: str
    key: str
    value: Any = dataclasses.field(repr=False)
    loaded: bool
    path: Path


def _check_name(kind: str, name: str) -> str:
    if not isinstance(name, str) or not _NAME_OK.match(name) or name.endswith(_TMP_SUFFIX):
        raise ValueError(f"{kind} name {name!r} must be letters, digits, '_', '.', '-'")
    return name


def unit_filename(unit) -> str:
    """A safe file stem for a unit id (str or int); unsafe ids get a hash suffix."""
    if isinstance(unit, (bool,)) or not isinstance(unit, (str, int, np.integer)):
        raise TypeError(f"unit ids must be str or int, got {unit!r}")
    text = str(int(unit)) if isinstance(unit, (int, np.integer)) else unit
    safe = _UNSAFE.sub("_", text)[:80]
    if safe != text or not safe or safe.startswith("."):
        safe = f"{safe.lstrip('.')}-{hashlib.sha256(text.encode()).hexdigest()[:8]}"
    return safe


def _dep_key(dep) -> str:
    key = dep.key if isinstance(dep, StageResult) else dep
    if not isinstance(key, str):
        raise TypeError(f"deps must be StageResults or key strings, got {dep!r}")
    return key


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).astimezone().isoformat(timespec="seconds")


class StageCache:
    """Results of notebook stages, stored as pickles under ``root``.

    ``deps`` everywhere are the upstream :class:`StageResult` objects or their
    keys. ``events`` records ``(stage, key, "loaded" | "computed")`` for every
    :meth:`run` / :meth:`run_units` call.
    """

    def __init__(self, root="pickles"):
        self.root = Path(root)
        self.events: list[tuple[str, str, str]] = []
        self._frozen: tuple[str, ...] = ()

    def __repr__(self):
        return f"StageCache({str(self.root)!r})"

    # -- where things live -------------------------------------------------- #

    def key(self, stage: str, config, deps: Iterable = ()) -> str:
        _check_name("stage", stage)
        return config_hash(
            {
                "format": CACHE_FORMAT,
                "stage": stage,
                "config": config,
                "deps": [_dep_key(d) for d in deps],
            }
        )

    def stage_dir(self, stage: str) -> Path:
        return self.root / _check_name("stage", stage)

    def path(self, stage: str, key: str) -> Path:
        return self.stage_dir(stage) / f"{_check_name('key', key)}.pkl"

    def meta_path(self, stage: str, key: str) -> Path:
        return self.stage_dir(stage) / f"{_check_name('key', key)}.json"

    def parts_dir(self, stage: str, key: str) -> Path:
        return self.stage_dir(stage) / f"{_check_name('key', key)}.parts"

    def artifact_dir(self, stage: str, key: str, create: bool = True) -> Path:
        """Folder for the large non-pickle files (memmaps) of one result."""
        folder = self.stage_dir(stage) / _check_name("key", key)
        if create:
            folder.mkdir(parents=True, exist_ok=True)
        return folder

    def exists(self, stage: str, key: str) -> bool:
        return self.path(stage, key).is_file()

    @contextlib.contextmanager
    def only_cached(self, *stages: str):
        """Inside the block, the named stages load or raise :class:`NotComputedError`, never compute.

        A name ending in ``-`` covers every stage it starts (``"train-"``).
        Commands that read results (evaluate, report, predict) use it so that
        a missing result is an error naming it, not hours of training.
        """
        before = self._frozen
        self._frozen = before + tuple(stages)
        try:
            yield self
        finally:
            self._frozen = before

    def _check_may_compute(self, stage: str, key: str) -> None:
        if any(stage == s or (s.endswith("-") and stage.startswith(s)) for s in self._frozen):
            raise NotComputedError(stage, key, self.path(stage, key))

    # -- loading and saving ------------------------------------------------- #

    def _load(self, stage: str, key: str):
        """(True, value) for a readable finished result, else (False, None)."""
        path = self.path(stage, key)
        if not path.is_file():
            return False, None
        try:
            envelope = load_pickle(path)
            if not (isinstance(envelope, dict) and envelope.get("key") == key and "value" in envelope):
                raise ValueError("not a carclf stage result for this key")
        except Exception as exc:  # truncated, corrupt, or from code that no longer exists
            log.warning("stale result %s (%s: %s); recomputing stage %s", path, type(exc).__name__, exc, stage)
            return False, None
        log.info("loaded stage %s from %s", stage, path)
        return True, envelope["value"]

    def _save(self, stage: str, key: str, config, deps, value, extra=None) -> Path:
        path = self.path(stage, key)
        envelope = {"format": CACHE_FORMAT, "stage": stage, "key": key, "value": value}
        atomic_pickle(path, envelope)
        meta = {
            "stage": stage,
            "key": key,
            "format": CACHE_FORMAT,
            "config": canonical(config),
            "deps": [_dep_key(d) for d in deps],
            "written": _now(),
            "pickle": path.name,
            "bytes": path.stat().st_size,
            **(extra or {}),
        }
        atomic_write(self.meta_path(stage, key), (json.dumps(meta, indent=2, sort_keys=True) + "\n").encode())
        return path

    def _finish(self, stage, key, value, loaded) -> StageResult:
        self.events.append((stage, key, "loaded" if loaded else "computed"))
        return StageResult(stage, key, value, loaded, self.path(stage, key))

    def run(self, stage: str, config, compute: Callable[[], Any], deps: Iterable = ()) -> StageResult:
        """Load the stage's finished result, or ``compute()`` it and save it."""
        deps = list(deps)
        key = self.key(stage, config, deps)
        found, value = self._load(stage, key)
        if found:
            return self._finish(stage, key, value, True)
        self._check_may_compute(stage, key)
        log.info("computing stage %s (key %s)", stage, key)
        value = compute()
        self._save(stage, key, config, deps, value)
        return self._finish(stage, key, value, False)

    def run_units(
        self,
        stage: str,
        config,
        units: Iterable,
        compute_unit: Callable[[Any], Any],
        combine: Callable[[dict], Any] | None = None,
        deps: Iterable = (),
        progress: bool = True,
    ) -> StageResult:
        """Like :meth:`run`, for work that divides into units (chunks, trials, epochs).

        Each finished unit's value is saved at once to ``<key>.parts/<unit>.pkl``,
        so a run that is killed resumes with the missing units only, in order.
        When all are done, ``combine({unit: value})`` (default: that dict, in
        unit order) is saved as the stage result and the parts are removed.
        ``config`` (with ``deps``) must determine the units and their results:
        the key does not include ``units``.
        """
        deps = list(deps)
        units = list(units)
        names = [unit_filename(u) for u in units]
        if len(set(names)) != len(names):
            raise ValueError(f"unit ids of stage {stage} are not unique: {units!r}")
        key = self.key(stage, config, deps)
        found, value = self._load(stage, key)
        if found:
            return self._finish(stage, key, value, True)
        self._check_may_compute(stage, key)

        parts = self.parts_dir(stage, key)
        done: dict[Any, Any] = {}
        for unit, name in zip(units, names):
            part = parts / f"{name}.pkl"
            if part.is_file():
                try:
                    done[unit] = load_pickle(part)
                except Exception as exc:
                    log.warning("stale unit %s (%s: %s); recomputing it", part, type(exc).__name__, exc)
        if done:
            log.info("resuming stage %s (key %s): %d of %d units done", stage, key, len(done), len(units))
        else:
            log.info("computing stage %s (key %s): %d units", stage, key, len(units))

        from tqdm.auto import tqdm

        with tqdm(total=len(units), initial=len(done), desc=stage, unit="unit", disable=not progress) as bar:
            for unit, name in zip(units, names):
                if unit in done:
                    continue
                result = compute_unit(unit)
                atomic_pickle(parts / f"{name}.pkl", result)
                done[unit] = result
                bar.update(1)

        ordered = {unit: done[unit] for unit in units}
        value = combine(ordered) if combine is not None else ordered
        self._save(stage, key, config, deps, value, extra={"units": len(units)})
        shutil.rmtree(parts, ignore_errors=True)
        return self._finish(stage, key, value, False)

    # -- housekeeping ------------------------------------------------------- #

    def _stage_dirs(self, stage=None) -> list[Path]:
        if stage is not None:
            folder = self.stage_dir(stage)
            return [folder] if folder.is_dir() else []
        if not self.root.is_dir():
            return []
        return sorted(p for p in self.root.iterdir() if p.is_dir() and _NAME_OK.match(p.name))

    def invalidate(self, stage: str | None = None, key: str | None = None) -> int:
        """Delete one stage's results (one key of it, or all), or every stage's.

        Removes pickles, their ``.json`` notes, artifact folders and unfinished
        parts. Returns how many results (finished or not) were removed.
        """
        if key is not None:
            if stage is None:
                raise ValueError("invalidate(key=...) needs the stage too")
            targets = [
                self.path(stage, key),
                self.meta_path(stage, key),
                self.artifact_dir(stage, key, create=False),
                self.parts_dir(stage, key),
            ]
            removed = int(targets[0].exists() or targets[3].exists())
            for target in targets:
                if target.is_dir():
                    shutil.rmtree(target)
                elif target.exists():
                    target.unlink()
            log.info("invalidated stage %s key %s", stage, key)
            return removed
        removed = 0
        for folder in self._stage_dirs(stage):
            removed += sum(1 for p in folder.iterdir() if p.suffix in (".pkl", ".parts"))
            shutil.rmtree(folder)
            log.info("invalidated stage %s", folder.name)
        return removed

    def status(self):
        """A DataFrame of stored results: stage, key, size (bytes), written, complete."""
        import pandas as pd

        rows = []
        for folder in self._stage_dirs():
            keys = {p.stem for p in folder.glob("*.pkl")} | {p.name[: -len(".parts")] for p in folder.glob("*.parts")}
            for key in sorted(keys):
                pkl = folder / f"{key}.pkl"
                size = 0
                for item in (pkl, folder / f"{key}.json", folder / key, folder / f"{key}.parts"):
                    if item.is_file():
                        size += item.stat().st_size
                    elif item.is_dir():
                        size += sum(f.stat().st_size for f in item.rglob("*") if f.is_file())
                written = None
                meta = folder / f"{key}.json"
                if pkl.is_file():
                    try:
                        written = json.loads(meta.read_text())["written"]
                    except (OSError, ValueError, KeyError):
                        written = _dt.datetime.fromtimestamp(pkl.stat().st_mtime).astimezone().isoformat()
                rows.append(
                    {
                        "stage": folder.name,
                        "key": key,
                        "size": size,
                        "written": pd.Timestamp(written) if written else pd.NaT,
                        "complete": pkl.is_file(),
                    }
                )
        frame = pd.DataFrame(rows, columns=["stage", "key", "size", "written", "complete"])
        return frame.astype({"size": "int64", "complete": "bool"})


__all__ = [
    "CACHE_FORMAT",
    "NotComputedError",
    "StageCache",
    "StageResult",
    "atomic_open",
    "atomic_pickle",
    "atomic_write",
    "canonical",
    "config_hash",
    "json_safe",
    "load_pickle",
    "native",
    "qualname",
    "unit_filename",
]
