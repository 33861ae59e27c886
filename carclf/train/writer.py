"""Writes a run's resume state off the training loop's path: one background thread, at most one write in
flight, the newest pending state replacing an older one that has not started (docs/training.md)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

log = logging.getLogger("carclf.train")

__all__ = ["BackgroundWriter"]


class BackgroundWriter:
    """Runs ``write(job)`` for submitted jobs in one daemon thread.

    :meth:`submit` returns at once: a job submitted while another is being written waits in a single slot,
    and a newer one takes that slot (the state it holds is newer, so the older is not worth writing).
    :meth:`flush` waits until nothing is pending or in flight; an error raised by ``write`` is raised again
    by the next :meth:`submit` or :meth:`flush`. ``background=False`` writes in the caller's thread.
    """

    def __init__(self, write: Callable, *, background: bool = True, name: str = "carclf-state-writer"):
        self._write = write
        self._background = background
        self._name = name
        self._cond = threading.Condition()
        self._pending = None
        self._busy = False
        self._error: BaseException | None = None
        self._running = False
        self.written = 0
        self.dropped = 0

    def submit(self, job) -> None:
        """Write ``job`` soon (now when not in the background)."""
        self._raise_error()
        if not self._background:
            self._write(job)
            self.written += 1
            return
        with self._cond:
            if self._pending is not None:
                self.dropped += 1
            self._pending = job
            if not self._running:
                self._running = True
                threading.Thread(target=self._loop, name=self._name, daemon=True).start()
            self._cond.notify_all()

    def flush(self) -> None:
        """Wait for the pending and in-flight writes; raise the error of a failed one."""
        with self._cond:
            while self._pending is not None or self._busy:
                self._cond.wait()
        self._raise_error()

    def _raise_error(self):
        with self._cond:
            error, self._error = self._error, None
        if error is not None:
            raise error

    def _loop(self):
        while True:
            with self._cond:
                while self._pending is None:
                    if not self._cond.wait(timeout=5.0) and self._pending is None:
                        self._running = False  # idle: the next submit starts a new thread
                        return
                job, self._pending, self._busy = self._pending, None, True
            try:
                self._write(job)
                self.written += 1
            except BaseException as exc:  # handed to the training thread at its next submit or flush
                log.error("writing the resume state failed (%s: %s)", type(exc).__name__, exc)
                with self._cond:
                    self._error = exc
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()
