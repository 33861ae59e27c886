"""A :class:`Workspace` ties one run together: its settings, where its results go, and this session's memo."""

from __future__ import annotations

import logging
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from carclf.cache import NotComputedError
from carclf.paths import Paths, Store
from carclf.runlog import setup_logging
from carclf.settings import RunSettings
from carclf.settings import profile as profile_settings

log = logging.getLogger("carclf.workflow")

__all__ = ["Workspace"]


@dataclass
class Workspace:
    """The settings of one run profile, its store (folders, stage cache, timer) and what this session computed.

    ``settings`` is a frozen :class:`carclf.settings.RunSettings`; :meth:`update` replaces it. What a stage
    returned is remembered with the settings it was computed under, so a result made under other settings
    is never handed out: the stage is looked up in the cache again.
    """

    settings: RunSettings
    store: Store
    _memo: dict = field(default_factory=dict, repr=False)

    @classmethod
    def open(cls, profile="demo", root=None, **overrides) -> Workspace:
        """Set up the folders and logging for a profile ("demo" or "full") with ``overrides``.

        ``overrides`` name settings by their dotted path or their unique plain name
        (``Workspace.open("full", epochs=30, **{"search.backend": "optuna"})``); see
        :func:`carclf.settings.override`.
        """
        settings = profile_settings(profile, **overrides)
        paths = Paths.default(root).make()
        setup_logging(paths.logs)
        log.info("profile %s, results under %s", settings.profile, paths.root)
        return cls(settings, Store.at(paths.root, timer=True))

    @property
    def profile(self) -> str:
        return self.settings.profile

    @property
    def paths(self) -> Paths:
        return self.store.paths

    @property
    def cache(self):
        return self.store.cache

    @property
    def timer(self):
        return self.store.timer

    def update(self, **overrides) -> Workspace:
        """Change settings for this session (``ws.update(epochs=30)``); stages then follow the new settings."""
        self.settings = self.settings.override(**overrides)
        return self

    def derived(self, **overrides) -> Workspace:
        """A workspace with ``overrides`` on this one's settings, sharing its store and this session's memo
        (the optimal run of a search that tuned training settings trains under them)."""
        return Workspace(self.settings.override(**overrides), self.store, self._memo)

    def recall(self, name: str) -> Any:
        """What stage ``name`` returned in this session under the current settings, or None."""
        settings, value = self._memo.get(name, (None, None))
        return value if settings == self.settings else None

    def remember(self, name: str, value) -> Any:
        self._memo[name] = (self.settings, value)
        return value

    @contextmanager
    def timed(self, name: str):
        """Time a cached stage. A run that only loaded results is recorded as "cached", so the execution-time
        table keeps the minutes of the run that computed them; a read-only lookup that found nothing, as
        "missing"."""
        before = len(self.cache.events)
        with self.timer.stage(name) as run:
            try:
                yield
            except NotComputedError:
                run.status = "missing"
                raise
            if all(how == "loaded" for *_, how in self.cache.events[before:]):
                run.status = "cached"
