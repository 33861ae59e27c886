"""What a search returns: the best hyperparameters, one row per trial, the settings that identify it."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from carclf.cache import atomic_write, json_safe, native
from carclf.search.objective import SearchContext

log = logging.getLogger("carclf.search")

__all__ = ["Incomplete", "SearchResult", "finish", "make_result", "param_importances"]

#: The stage of every finished search's result (whatever its backend).
RESULT_STAGE = "search"


@dataclass
class SearchResult:
    """A finished (or, after a timeout, partial) search.

    ``best_params`` are the searched hyperparameters of the best trial (with
    the space's constants, such as ``optimizer_type="Adam"``), ready to pass to
    ``run_model_pipeline``; :attr:`best_hyperparams` adds the search's fixed
    ones. ``trials`` has one row per trial: ``trial``, ``state``
    (complete, pruned, diverged, ...), ``value`` (the objective at the best
    epoch), one column per hyperparameter, ``epochs_run``, ``best_epoch``,
    ``wall_min`` and more. ``settings`` are what identify the search (docs/search.md).
    """

    backend: str
    model_name: str
    objective: str
    direction: str
    best_params: dict
    best_value: float
    best_trial: int
    n_trials: int
    trials: pd.DataFrame = field(repr=False)
    settings: dict = field(repr=False)
    key: str | None = None
    loaded: bool = False
    complete: bool = True
    storage: str | None = None
    study_name: str | None = None
    json_path: Path | None = None

    @property
    def best_hyperparams(self) -> dict:
        """The fixed hyperparameters of the search with the best searched ones on top."""
        return {**self.settings.get("hyperparams", {}), **self.best_params}

    @property
    def space(self) -> dict:
        return self.settings["space"]

    def importances(self, seed: int = 0) -> dict:
        """fANOVA importance of each searched hyperparameter (:func:`param_importances`)."""
        return param_importances(self, seed)

    def to_value(self) -> dict:
        """Plain data (and the trials DataFrame) for the stage cache."""
        value = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        for name in ("key", "loaded", "json_path"):
            value.pop(name)
        return value

    @classmethod
    def from_value(cls, value: dict, key=None, loaded=False, json_path=None) -> SearchResult:
        return cls(**value, key=key, loaded=loaded, json_path=json_path)

    def to_json_dict(self) -> dict:
        return json_safe(
            {
                "backend": self.backend,
                "model_name": self.model_name,
                "objective": self.objective,
                "direction": self.direction,
                "best_value": self.best_value,
                "best_trial": self.best_trial,
                "best_params": self.best_params,
                "best_hyperparams": self.best_hyperparams,
                "n_trials": self.n_trials,
                "complete": self.complete,
                "key": self.key,
                "storage": self.storage,
                "study_name": self.study_name,
                "settings": self.settings,
                "trials": self.trials.to_dict("records"),
            }
        )

    def save_json(self, path) -> Path:
        """Write the result (best hyperparameters, settings, trials) as readable JSON, atomically."""
        text = json.dumps(self.to_json_dict(), indent=2, sort_keys=False, allow_nan=False)
        return atomic_write(Path(path), (text + "\n").encode())


_TABLE_FRONT = ["trial", "state", "value"]
_TABLE_BACK = ["best_epoch", "epochs_run", "wall_min", "cpu_min", "last_value", "error"]


def _trials_frame(rows: list[dict], space: dict) -> pd.DataFrame:
    frame = pd.DataFrame(rows)
    for column in _TABLE_FRONT + _TABLE_BACK:
        if column not in frame.columns:
            frame[column] = None
    params = [name for name in space if name in frame.columns]
    other = [c for c in frame.columns if c not in _TABLE_FRONT + _TABLE_BACK + params]
    frame = frame[_TABLE_FRONT + params + _TABLE_BACK + other]
    frame["value"] = pd.to_numeric(frame["value"], errors="coerce")
    return frame.sort_values("trial").reset_index(drop=True)


def _best(rows: list[dict], direction: str) -> dict | None:
    done = [
        r for r in rows if r.get("state") == "complete" and r.get("value") is not None and math.isfinite(r["value"])
    ]
    if not done:
        return None
    pick = min if direction == "minimize" else max
    return pick(done, key=lambda r: r["value"])


def make_result(
    ctx: SearchContext, rows: list[dict], params_of: dict, n_trials: int, complete: bool, storage=None, study_name=None
) -> SearchResult:
    best = _best(rows, ctx.direction)
    if best is None:
        raise RuntimeError(
            f"{ctx.model_name}: no trial of the search completed ({len(rows)} trials: "
            f"{sorted({r.get('state') for r in rows})}); widen the budget or check the errors"
        )
    return SearchResult(
        backend=ctx.backend,
        model_name=ctx.model_name,
        objective=ctx.objective,
        direction=ctx.direction,
        best_params=dict(params_of[best["trial"]]),
        best_value=float(best["value"]),
        best_trial=int(best["trial"]),
        n_trials=n_trials,
        trials=_trials_frame(rows, ctx.space),
        settings=ctx.identity,
        complete=complete,
        storage=storage,
        study_name=study_name,
    )


class Incomplete(Exception):
    """A search stopped (timeout) before its trials were done: not stored as a finished result."""

    def __init__(self, result: SearchResult):
        super().__init__("incomplete search")
        self.result = result


def finish(ctx: SearchContext, config: dict, compute: Callable[[], SearchResult]) -> SearchResult:
    """Load the finished result of ``config`` or compute it; store it with a readable JSON beside."""
    try:
        # Optuna's parallel workers share one study and each run the search: none may wait for another.
        parallel = ctx.settings.backend == "optuna"
        stored = ctx.store.cache.run(
            RESULT_STAGE, config, lambda: compute().to_value(), deps=ctx.deps, lock=not parallel
        )
    except Incomplete as stop:
        log.warning(
            "%s: the search stopped after %d of %d trials; the result is not stored",
            ctx.model_name,
            len(stop.result.trials),
            stop.result.n_trials,
        )
        return stop.result
    json_path = ctx.store.cache.artifact_dir(RESULT_STAGE, stored.key) / "result.json"
    result = SearchResult.from_value(stored.value, key=stored.key, loaded=stored.loaded, json_path=json_path)
    if not json_path.is_file():
        result.save_json(json_path)
    log.info(
        "%s: best %s %.4g at trial %d of %d: %s",
        ctx.model_name,
        ctx.objective,
        result.best_value,
        result.best_trial,
        result.n_trials,
        result.best_params,
    )
    return result


def param_importances(result: SearchResult, seed: int = 0) -> dict:
    """fANOVA importance of each searched hyperparameter (Optuna's evaluator, for either backend)."""
    import optuna

    from carclf.search.optuna_backend import distributions

    dists = distributions(result.space)
    done = result.trials[(result.trials["state"] == "complete") & result.trials["value"].notna()]
    names = [n for n in dists if n in done.columns and done[n].notna().all() and done[n].nunique() > 1]
    if len(done) < 2 or not names:
        return {}
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # no "new study created in memory" line
    try:
        study = optuna.create_study(direction=result.direction)
    finally:
        optuna.logging.set_verbosity(verbosity)
    for _, row in done.iterrows():
        study.add_trial(
            optuna.trial.create_trial(
                params={n: native(row[n]) for n in names},
                distributions={n: dists[n] for n in names},
                value=float(row["value"]),
            )
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        importances = optuna.importance.get_param_importances(
            study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=seed)
        )
    return {k: float(v) for k, v in importances.items()}
