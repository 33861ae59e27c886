"""The stage cache: the one place that decides where a stage's result lives (docs/architecture.md)."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import hashlib
import json
import logging
import re
import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from carclf.cache.files import TMP_SUFFIX, DamagedFileError, atomic_pickle, atomic_write, load_pickle
from carclf.cache.keys import canonical, config_hash

log = logging.getLogger("carclf.cache")

__all__ = ["CACHE_FORMAT", "NotComputedError", "StageCache", "StageResult", "unit_filename"]

#: Bumped when the layout or the meaning of stored results changes; part of every key.
CACHE_FORMAT = 1

_NAME_OK = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")


class NotComputedError(LookupError):
    """A stage's result is not in the cache and the caller asked not to compute it."""

    def __init__(self, stage: str, key: str, path: Path):
        super().__init__(f"stage {stage} has no stored result (expected {path})")
        self.stage, self.key, self.path = stage, key, path


@dataclass(frozen=True)
class StageResult:
    """One stage's result, and whether it came from disk."""

    stage: str
    key: str
    value: Any = dataclasses.field(repr=False)
    loaded: bool
    path: Path


def _check_name(kind: str, name: str) -> str:
    if not isinstance(name, str) or not _NAME_OK.match(name) or name.endswith(TMP_SUFFIX):
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

    @contextlib.contextmanager
    def lock(self, stage: str, key: str):
        """One process at a time computes a stage's result: a second one waits here (logged), then loads it.

        A file lock (``filelock``) on ``<stage>/<key>.lock``, released when the process ends, however it ends;
        re-entrant within a process (a stage that locks around :meth:`run_units` itself).
        """
        from filelock import FileLock, Timeout

        path = self.stage_dir(stage) / f"{_check_name('key', key)}.lock"
        path.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(path.resolve(), is_singleton=True)
        try:
            lock.acquire(timeout=0)
        except Timeout:
            log.warning("stage %s (key %s) is being computed by another process; waiting for it (%s)", stage, key, path)
            lock.acquire()
            log.info("stage %s (key %s): the other process is done; taking its result", stage, key)
        try:
            yield
        finally:
            lock.release()

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

    def may_compute(self, stage: str) -> bool:
        """False inside :meth:`only_cached` for ``stage``: results are read, never computed or removed."""
        return not any(stage == s or (s.endswith("-") and stage.startswith(s)) for s in self._frozen)

    def _check_may_compute(self, stage: str, key: str) -> None:
        if not self.may_compute(stage):
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
        except DamagedFileError as exc:
            log.warning("damaged result %s; recomputing stage %s (this result only)", exc, stage)
            return False, None
        except Exception as exc:  # unreadable, or from code that no longer exists
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

    def run(
        self, stage: str, config, compute: Callable[[], Any], deps: Iterable = (), lock: bool = True
    ) -> StageResult:
        """Load the stage's finished result, or ``compute()`` it and save it.

        With ``lock`` (the default), a second process asking for the same result while it is computed waits
        for it and loads it (:meth:`lock`); work that coordinates its own processes (the Optuna search's
        parallel workers) passes ``lock=False``.
        """
        deps = list(deps)
        key = self.key(stage, config, deps)
        found, value = self._load(stage, key)
        if found:
            return self._finish(stage, key, value, True)
        self._check_may_compute(stage, key)
        with self.lock(stage, key) if lock else contextlib.nullcontext():
            found, value = self._load(stage, key)  # finished by the process we waited for
            if found:
                return self._finish(stage, key, value, True)
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
        with self.lock(stage, key):
            found, value = self._load(stage, key)  # finished by the process we waited for
            if found:
                return self._finish(stage, key, value, True)
            value = self._compute_units(stage, key, units, names, compute_unit, combine, progress)
            self._save(stage, key, config, deps, value, extra={"units": len(units)})
            shutil.rmtree(self.parts_dir(stage, key), ignore_errors=True)
        return self._finish(stage, key, value, False)

    def _compute_units(self, stage, key, units, names, compute_unit, combine, progress):
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
        return combine(ordered) if combine is not None else ordered

    # -- what is stored --------------------------------------------------- #

    def load(self, stage: str, key: str) -> StageResult | None:
        """The finished result of ``stage`` under ``key`` (checked as every load is), or None."""
        found, value = self._load(stage, key)
        return self._finish(stage, key, value, True) if found else None

    def note(self, stage: str, key: str, **fields) -> None:
        """Add ``fields`` to the ``.json`` note of a finished result (who asked for it, under which name)."""
        meta = self.meta(stage, key)
        if meta is not None and any(meta.get(k) != v for k, v in fields.items()):
            meta.update(fields)
            atomic_write(self.meta_path(stage, key), (json.dumps(meta, indent=2, sort_keys=True) + "\n").encode())

    def meta(self, stage: str, key: str) -> dict | None:
        """The ``.json`` note of a finished result, or None."""
        try:
            return json.loads(self.meta_path(stage, key).read_text())
        except (OSError, ValueError):
            return None

    def stored(self, stage: str) -> list[tuple[str, dict]]:
        """``(key, note)`` of every finished result of ``stage``, the most recently written first."""
        folder = self.stage_dir(stage)
        found = [(p.stem, self.meta(stage, p.stem)) for p in folder.glob("*.pkl")] if folder.is_dir() else []
        found = [(key, meta) for key, meta in found if meta is not None]
        return sorted(found, key=lambda item: item[1].get("written", ""), reverse=True)

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
