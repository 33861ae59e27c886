"""Disk space: check it before a stage writes, allocate memory-mapped files up front, say what to delete.

docs/integrity.md has the decisions: which stages estimate what, and why the memmaps are allocated.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

__all__ = ["DiskFullError", "allocate", "check_free_space", "disk_full_message", "human_bytes"]

#: What a user can delete to make room (the ENOSPC sentence names it).
CLEAN_UP = (
    "free space there, e.g. `make clean-results` (removes data/, pickles/, models/ and logs/ results), "
    "superseded checkpoints (models/<name>/<key>/best.weights.h5 of finished runs, old run folders under models/), "
    "or point --root at a bigger disk"
)

#: Headroom kept free beyond an estimate (logs, JSON notes, the filesystem's own reserve).
MARGIN = 64 << 20


class DiskFullError(OSError):
    """Not enough free space for what a stage is about to write; the message says where, how much, what to delete."""

    def __init__(self, folder, needed=None, free=None, what="the results"):
        self.folder, self.needed, self.free = Path(folder), needed, free
        need = "" if needed is None else f": {what} need {human_bytes(needed)}"
        have = "" if free is None else f", {human_bytes(free)} free"
        super().__init__(errno.ENOSPC, f"not enough disk space in {self.folder}{need}{have}; {CLEAN_UP}")

    def __str__(self):
        return self.strerror


def human_bytes(n) -> str:
    n = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def _existing(folder: Path) -> Path:
    folder = Path(folder)
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return folder


def free_bytes(folder) -> int:
    """Bytes an unprivileged process may still write under ``folder`` (its nearest existing parent)."""
    stat = os.statvfs(_existing(folder))
    return stat.f_bavail * stat.f_frsize


def check_free_space(folder, needed: int, what: str = "the results") -> None:
    """Raise :class:`DiskFullError` unless ``needed`` bytes (plus a small margin) fit under ``folder``."""
    free = free_bytes(folder)
    if free < int(needed) + MARGIN:
        raise DiskFullError(folder, int(needed), free, what)


def allocate(path, size: int) -> None:
    """Reserve ``size`` bytes for the open-able file ``path`` now, so that writing through a memory map
    cannot later die of SIGBUS on a full disk. ENOSPC here is a :class:`DiskFullError`."""
    fd = os.open(path, os.O_RDWR)
    try:
        if hasattr(os, "posix_fallocate"):
            try:
                os.posix_fallocate(fd, 0, int(size))
            except OSError as exc:
                if exc.errno == errno.ENOSPC:
                    raise DiskFullError(Path(path).parent, int(size), free_bytes(Path(path).parent)) from exc
                if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL):  # a filesystem without fallocate
                    raise
    finally:
        os.close(fd)


def disk_full_message(exc: OSError) -> str | None:
    """The one sentence for an ENOSPC anywhere (the folder of the file being written), else None."""
    if isinstance(exc, DiskFullError):
        return str(exc)
    if getattr(exc, "errno", None) != errno.ENOSPC:
        return None
    where = Path(exc.filename).parent if getattr(exc, "filename", None) else "the results folder"
    return f"the disk is full while writing {exc.filename or 'a result'} (in {where}); {CLEAN_UP}"
