"""Atomic writes: a file is either its old whole self or its new whole self, never half-written."""

from __future__ import annotations

import contextlib
import hashlib
import os
import pickle
import secrets
from pathlib import Path

__all__ = [
    "TMP_SUFFIX",
    "DamagedFileError",
    "atomic_open",
    "atomic_pickle",
    "atomic_write",
    "file_sha256",
    "load_pickle",
]

#: The suffix of the temporary files beside a file being written (never mistaken for a result).
TMP_SUFFIX = ".tmp"

#: What ends every pickle carclf writes: this tag, then the sha256 of the bytes before it (docs/integrity.md).
_TRAILER_TAG = b"carclf-sha256:"
_TRAILER_SIZE = len(_TRAILER_TAG) + 32
_BLOCK = 1 << 20


class DamagedFileError(ValueError):
    """A stored file is not what was written: truncated, changed in place, or without its checksum."""

    def __init__(self, path, detail):
        super().__init__(f"{path}: {detail}")
        self.path, self.detail = Path(path), detail


class _Hashing:
    """A write-only file wrapper that hashes what passes through (pickle streams into it)."""

    def __init__(self, handle):
        self.handle, self.digest = handle, hashlib.sha256()

    def write(self, data):
        self.digest.update(data)
        return self.handle.write(data)


def file_sha256(path, limit=None) -> str:
    """The sha256 of a file's first ``limit`` bytes (all of it by default), read in blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        left = os.fstat(handle.fileno()).st_size if limit is None else limit
        while left > 0:
            block = handle.read(min(_BLOCK, left))
            if not block:
                break
            digest.update(block)
            left -= len(block)
    return digest.hexdigest()


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
        tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}{TMP_SUFFIX}"
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
    """Pickle ``obj`` to ``path`` atomically (streamed, not built in memory), its sha256 appended."""
    with atomic_open(path, "wb") as handle:
        hashing = _Hashing(handle)
        pickle.dump(obj, hashing, protocol=pickle.HIGHEST_PROTOCOL)
        handle.write(_TRAILER_TAG + hashing.digest.digest())
    return Path(path)


def load_pickle(path):
    """What :func:`atomic_pickle` wrote to ``path``, after checking its sha256.

    Raises :class:`DamagedFileError` naming the file when it is truncated, changed, or has no checksum.
    """
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as handle:
        if size >= _TRAILER_SIZE:
            handle.seek(size - _TRAILER_SIZE)
            trailer = handle.read(_TRAILER_SIZE)
        if size < _TRAILER_SIZE or not trailer.startswith(_TRAILER_TAG):
            raise DamagedFileError(path, "truncated, or not written by carclf (no checksum at its end)")
        if file_sha256(path, size - _TRAILER_SIZE) != trailer[len(_TRAILER_TAG) :].hex():
            raise DamagedFileError(path, "its content does not match the checksum written with it (damaged)")
        handle.seek(0)
        return pickle.load(handle)
