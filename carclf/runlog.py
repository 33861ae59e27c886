"""Logging to ``logs/`` and the stage timer behind the report's "Execution time" table."""

import csv
import logging
import resource
import sys
import time
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd

LOG_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
TIMING_COLUMNS = ["stage", "group", "wall_min", "cpu_min", "started", "status"]

#: ``log.warning(..., extra=FILE_ONLY)`` goes to ``logs/carclf.log`` but not to the console (one line per file
#: of a long list, such as the validation report's problems).
FILE_ONLY = {"carclf_file_only": True}


def _not_file_only(record) -> bool:
    return not getattr(record, "carclf_file_only", False)


def setup_logging(log_dir="logs", level=logging.INFO, filename="carclf.log"):
    """Send the ``carclf`` loggers to ``log_dir/filename`` and to the console.

    Safe to call again (a notebook cell re-run): handlers are replaced, not
    stacked, so each message is written once.
    """
    log_dir = Path(log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    logger = logging.getLogger("carclf")
    logger.setLevel(level)
    for handler in list(logger.handlers):
        if getattr(handler, "_carclf", False):
            logger.removeHandler(handler)
            handler.close()
    formatter = logging.Formatter(LOG_FORMAT)
    console = logging.StreamHandler(sys.stderr)
    console.addFilter(_not_file_only)
    for handler in (logging.FileHandler(log_dir / filename), console):
        handler.setFormatter(formatter)
        handler._carclf = True
        logger.addHandler(handler)
    # The root logger may have its own handlers (Jupyter, pytest): don't print twice.
    logger.propagate = False
    return logger


def cpu_seconds():
    """CPU seconds of this process and its finished children (the report's CPU column covered the whole job)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _is_row(row) -> bool:
    if len(row) != len(TIMING_COLUMNS) or not row[0] or not row[5]:
        return False
    try:
        float(row[2]), float(row[3])
    except ValueError:
        return False
    return True


class _StageRun:
    """What the block of :meth:`StageTimer.stage` may say about its run: a ``status`` other than
    "ok" (on success) or "failed" (on an exception)."""

    status = None


class StageTimer:
    """Records wall and CPU minutes per stage, appended to a CSV under ``logs/``.

    The CSV survives a crash, so the table covers every stage ever run; a stage
    that raised is recorded with ``status="failed"``. The block may set
    another status (``with timer.stage(...) as run: ... run.status = "cached"``),
    such as ``"cached"`` when it only loaded a stored result: only ``"ok"``
    rows make the table, so loading a result does not replace the time it took
    to compute. Use ``table()`` for the report's layout: one row per stage, one
    column pair per group (e.g. "default" and "optimal" hyperparameters).
    """

    def __init__(self, path="logs/timings.csv"):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._log = logging.getLogger("carclf.timer")

    @contextmanager
    def stage(self, name, group="default"):
        started = datetime.now(UTC).isoformat(timespec="seconds")
        wall0, cpu0 = time.perf_counter(), cpu_seconds()
        run = _StageRun()
        try:
            yield run
        except BaseException:
            run.status = run.status or "failed"
            raise
        finally:
            status = run.status or "ok"
            row = {
                "stage": name,
                "group": group,
                "wall_min": round((time.perf_counter() - wall0) / 60, 4),
                "cpu_min": round((cpu_seconds() - cpu0) / 60, 4),
                "started": started,
                "status": status,
            }
            self._append(row)
            self._log.info(
                "stage %s (%s): %.2f min wall, %.2f min CPU, %s", name, group, row["wall_min"], row["cpu_min"], status
            )

    def _append(self, row):
        new = not self.path.exists() or self.path.stat().st_size == 0
        if not new:
            self._end_torn_line()
        with self.path.open("a", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=TIMING_COLUMNS)
            if new:
                writer.writeheader()
            writer.writerow(row)
            fh.flush()

    def _end_torn_line(self):
        """A process killed mid-write leaves a last line without its newline: end it, so the next row starts
        on a line of its own (the torn one is skipped when read)."""
        with self.path.open("rb+") as fh:
            fh.seek(-1, 2)
            if fh.read(1) != b"\n":
                fh.write(b"\n")

    def records(self):
        """Every recorded run of every stage, oldest first.

        Lines that do not parse as a whole row (a write torn by a kill or a full disk) are left out, with a
        warning naming the file.
        """
        if not self.path.exists() or self.path.stat().st_size == 0:
            return pd.DataFrame(columns=TIMING_COLUMNS)
        with self.path.open(newline="", errors="replace") as fh:
            rows = [row for row in csv.reader(fh) if row != TIMING_COLUMNS]
        good = [row for row in rows if _is_row(row)]
        if len(good) != len(rows):
            self._log.warning(
                "%s: %d damaged line(s) left out of the execution-time table", self.path, len(rows) - len(good)
            )
        frame = pd.DataFrame(good, columns=TIMING_COLUMNS)
        return frame.astype({"wall_min": float, "cpu_min": float})

    def table(self):
        """The latest successful timing of each stage, stages as rows and groups as columns."""
        records = self.records()
        records = records[records["status"] == "ok"]
        if records.empty:
            return pd.DataFrame()
        latest = records.groupby(["stage", "group"], sort=False).tail(1)
        table = latest.pivot(index="stage", columns="group", values=["wall_min", "cpu_min"])
        table = table.swaplevel(axis=1).sort_index(axis=1, level=0, sort_remaining=False)
        table = table.reindex(latest["stage"].drop_duplicates())
        totals = table.sum(numeric_only=True) / 60
        table.loc["Total (hours)"] = totals
        return table
