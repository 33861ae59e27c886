"""The decoded cache's ``.npy`` files: space allocated before they are mapped, checksummed chunk by chunk,
shrunk to the rows that were kept (docs/integrity.md)."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

from carclf.cache import allocate, atomic_write, check_free_space

__all__ = ["create_npy", "damaged_chunks", "is_complete_npy", "rows_sha256", "shrink_npy", "write_stamp"]


def is_complete_npy(path: Path, shape) -> bool:
    """Whether ``path`` is a whole uint8 ``.npy`` of ``shape`` (header and every byte of data there)."""
    try:
        array = np.load(path, mmap_mode="r")
    except Exception:
        return False
    ok = array.dtype == np.uint8 and array.shape == tuple(shape)
    del array
    return ok


def create_npy(path: Path, shape) -> None:
    """A zero-filled uint8 ``.npy`` of ``shape``, its space allocated (writing through a memory map into a
    sparse file on a full disk dies of SIGBUS), made atomically. Not enough space: ``DiskFullError``."""
    nbytes = int(np.prod(shape))
    check_free_space(path.parent, nbytes, f"the decoded {path.stem} images {tuple(shape)}")
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    array = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=tuple(shape))
    offset = array.offset
    del array
    try:
        allocate(tmp, offset + nbytes)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)


def rows_sha256(array, start: int, stop: int) -> str:
    """The sha256 of rows ``start:stop`` of a C-contiguous array (one chunk of the decoded cache)."""
    return hashlib.sha256(memoryview(np.ascontiguousarray(array[start:stop])).cast("B")).hexdigest()


def shrink_npy(path: Path, rows: int) -> None:
    """Keep the first ``rows`` rows of the ``.npy`` at ``path``: its header says so, the rest is cut off.

    NumPy pads every header so that the first dimension can change without moving the data.
    """
    array = np.load(path, mmap_mode="r")
    shape, offset, row_bytes = (rows, *array.shape[1:]), array.offset, array[0].nbytes if len(array) else 0
    del array
    header = {"descr": "|u1", "fortran_order": False, "shape": shape}
    with open(path, "r+b") as handle:
        np.lib.format.write_array_header_1_0(handle, header)
        if handle.tell() != offset:  # never for uint8 images; the data would be misread
            raise ValueError(f"{path}: the new header does not fit the old one")
        handle.truncate(offset + rows * row_bytes)
        handle.flush()
        os.fsync(handle.fileno())


def _stamp(path: Path) -> dict:
    st = os.stat(path)
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "ctime_ns": st.st_ctime_ns, "inode": st.st_ino}


def _stamp_path(path: Path) -> Path:
    return path.with_name(f"{path.name}.verified.json")


def write_stamp(path: Path) -> None:
    """Record that ``path`` matches its checksums as it is now (any later write changes its ctime)."""
    atomic_write(_stamp_path(path), json.dumps(_stamp(path)).encode(), durable=False)


def damaged_chunks(path: Path, chunks: list) -> list:
    """The chunks (``{"offset", "rows", "sha256"}``) of ``path`` whose rows no longer match their sha256.

    A file unchanged since its last check (size, times, inode as recorded then) is not read again.
    """
    try:
        if json.loads(_stamp_path(path).read_text()) == _stamp(path):
            return []
    except (OSError, ValueError):
        pass
    array = np.load(path, mmap_mode="r")
    damaged = [c for c in chunks if rows_sha256(array, c["offset"], c["offset"] + len(c["rows"])) != c["sha256"]]
    del array
    if not damaged:
        write_stamp(path)
    return damaged
