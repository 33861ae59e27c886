"""Where carclf keeps things: the folders under one root, and the store of a run's results."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from carclf.cache import StageCache
from carclf.runlog import StageTimer


def usable_cpus():
    """The CPUs this process may run on (a container's or taskset's limit, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


#: The repository root: the folder that holds the ``carclf`` package.
PROJECT_ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Paths:
    """The design card's folders under one root.

    ``CARCLF_HOME`` overrides the root, so a notebook started from
    ``notebooks/`` and a test working in a temporary folder agree on where
    results live.
    """

    root: Path

    @classmethod
    def default(cls, root=None):
        root = root or os.environ.get("CARCLF_HOME") or PROJECT_ROOT
        return cls(Path(root).resolve())

    @property
    def data(self):
        return self.root / "data"

    @property
    def pickles(self):
        return self.root / "pickles"

    @property
    def models(self):
        return self.root / "models"

    @property
    def logs(self):
        return self.root / "logs"

    @property
    def reports(self):
        """Plots, tables and executed notebooks of a run."""
        return self.root / "reports"

    @property
    def synthetic(self):
        return self.data / "synthetic"

    @property
    def augmented(self):
        return self.data / "augmented"

    def make(self):
        for folder in (self.data, self.pickles, self.models, self.logs, self.reports):
            folder.mkdir(parents=True, exist_ok=True)
        return self


@dataclass(frozen=True)
class Store:
    """Where a stage's results go: the folders, the stage cache, and the timer of the execution-time table."""

    paths: Paths
    cache: StageCache
    timer: StageTimer | None = None

    @classmethod
    def at(cls, root=None, timer: bool = False) -> Store:
        """The store under ``root`` (default :meth:`Paths.default`); with ``timer``, its ``logs/timings.csv``."""
        paths = Paths.default(root)
        return cls(paths, StageCache(paths.pickles), StageTimer(paths.logs / "timings.csv") if timer else None)
