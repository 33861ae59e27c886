"""Optuna's search: TPE with a Hyperband pruner, resumable, and shared by parallel workers (docs/search.md)."""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import socket
import time
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np

from carclf.cache import config_hash, json_safe
from carclf.search.objective import SearchContext, log_projection, prepare, run_trial, timed
from carclf.search.result import Incomplete, SearchResult, finish, make_result
from carclf.search.space import applied, applies, constants, in_space, is_choices
from carclf.search.storage import lost_server, open_storage
from carclf.search.storage import redact as _redact
from carclf.settings import SearchSettings

log = logging.getLogger("carclf.search")

__all__ = ["distributions", "run_optuna_search"]

STAGE = "search-optuna"


def run_optuna_search(model, train, settings: SearchSettings | None = None, *, enqueue=(), **context) -> SearchResult:
    """Optuna search (TPE, Hyperband pruning by default) on the training set; resumable, and parallel across processes.

    Run it in one process, or start it in several (on one machine with the default SQLite study, or on
    several with a PostgreSQL ``settings.optuna.storage``) with the same arguments: together they finish
    ``settings.n_trials`` finished (complete or pruned) trials. Arguments as
    :func:`carclf.search.run_skopt_search` (``context`` goes to :func:`carclf.search.objective.prepare`);
    ``settings.optuna`` holds the storage (default: SQLite at
    ``pickles/search-optuna/<key>.db``), the study name (default ``<model>-<key>``), the pruner, TPE's
    random start-up trials and the heartbeat of running trials (one silent for the grace period is marked
    failed and re-queued, up to ``max_retry`` times). ``enqueue``: hyperparameter dicts to try first when
    the study is new. With ``settings.optuna.timeout`` the search stops starting trials after that many
    seconds (the result is then not stored).
    """
    settings = replace(settings or SearchSettings(), backend="optuna")
    ctx = prepare(model, train, settings, **context)
    opt = settings.optuna
    study_name = opt.study_name or f"{ctx.model_name}-{ctx.key}"
    shown = "default" if opt.storage is None else _redact(opt.storage)
    config = {
        "settings": ctx.identity,
        "search_key": ctx.key,
        "n_trials": settings.n_trials,
        "storage": shown,
        "study_name": study_name,
    }

    def compute() -> SearchResult:
        sampler = _seeded_tpe_class()(ctx.seed, n_startup_trials=opt.tpe_startup_trials)
        # Trial one is the run's own values, so the search's best is never worse than the default's.
        study, rdb = _open_study(
            ctx, study_name, sampler, _pruner(opt, settings.epochs), [applied(ctx.defaults, ctx.space), *enqueue]
        )
        try:
            with timed(ctx), lost_server(rdb):
                finished = _optuna_worker(ctx, study, settings.n_trials)
            rows, params_of = _optuna_rows(ctx, study)
        finally:  # close the database connections this call opened
            rdb.remove_session()
            rdb.engine.dispose()
        result = make_result(ctx, rows, params_of, settings.n_trials, finished, storage=shown, study_name=study_name)
        if not finished:
            raise Incomplete(result)
        return result

    return finish(ctx, config, compute)


def _pruner(opt, epochs: int):
    """Optuna's pruner by name; its steps are epochs done (1, 2, ...), its resource the trial's epochs."""
    import optuna

    if not opt.pruner:
        return optuna.pruners.NopPruner()
    if opt.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(
            min_resource=1, max_resource=epochs, reduction_factor=opt.reduction_factor
        )
    if opt.pruner == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=opt.reduction_factor)
    return optuna.pruners.MedianPruner(
        n_startup_trials=opt.prune_startup_trials, n_warmup_steps=opt.prune_warmup_epochs + 1
    )


def suggest(trial, space: dict) -> dict:
    """Optuna's suggestions from the same declaration (only what the chosen optimizer reads)."""
    values = dict(constants(space))
    choices = space.get("optimizer_type")
    if choices is not None and len(choices) > 1:
        values["optimizer_type"] = trial.suggest_categorical("optimizer_type", list(choices))
    kind = values.get("optimizer_type")
    for name, spec in space.items():
        if name == "optimizer_type" or not applies(name, kind):
            continue
        if is_choices(spec):
            if len(spec) > 1:
                values[name] = trial.suggest_categorical(name, list(spec))
        else:
            low, high, prior = spec
            if isinstance(low, int) and isinstance(high, int):
                values[name] = trial.suggest_int(name, low, high, log=prior == "log-uniform")
            else:
                values[name] = trial.suggest_float(name, float(low), float(high), log=prior == "log-uniform")
    return applied(values, space)


def distributions(space: dict) -> dict:
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    out = {}
    for name, spec in space.items():
        if is_choices(spec):
            if len(spec) > 1:
                out[name] = CategoricalDistribution(list(spec))
        else:
            low, high, prior = spec
            if isinstance(low, int) and isinstance(high, int):
                out[name] = IntDistribution(low, high, log=prior == "log-uniform")
            else:
                out[name] = FloatDistribution(float(low), float(high), log=prior == "log-uniform")
    return out


def _trial_seed(seed: int, number: int) -> int:
    return int(np.random.SeedSequence([int(seed), int(number)]).generate_state(1)[0])


def _seeded_tpe_class():
    import optuna

    class TrialSeededTPESampler(optuna.samplers.BaseSampler):
        """TPE whose random generator is re-seeded from ``(seed, trial number)`` for every trial.

        TPE's model is rebuilt from the stored trials each time, so with this
        the sampler holds no state outside the study: a resumed search and
        parallel workers need nothing else, and workers never share draws.
        """

        def __init__(self, seed: int, **tpe_kwargs):
            self.seed = int(seed)
            self.tpe_kwargs = dict(tpe_kwargs)
            self._inner = optuna.samplers.TPESampler(seed=self.seed, **self.tpe_kwargs)

        def before_trial(self, study, trial):
            self._inner = optuna.samplers.TPESampler(seed=_trial_seed(self.seed, trial.number), **self.tpe_kwargs)
            self._inner.before_trial(study, trial)

        def infer_relative_search_space(self, study, trial):
            return self._inner.infer_relative_search_space(study, trial)

        def sample_relative(self, study, trial, search_space):
            return self._inner.sample_relative(study, trial, search_space)

        def sample_independent(self, study, trial, param_name, param_distribution):
            return self._inner.sample_independent(study, trial, param_name, param_distribution)

        def after_trial(self, study, trial, state, values):
            self._inner.after_trial(study, trial, state, values)

        def reseed_rng(self):
            self._inner.reseed_rng()

    return TrialSeededTPESampler


def _pruning_callback(trial, monitor: str):
    import keras

    class OptunaPruning(keras.callbacks.Callback):
        """Reports the objective at each epoch end; stops training when the pruner says so."""

        def __init__(self):
            super().__init__()
            self.pruned_at = None
            self.last_value = None

        def on_epoch_end(self, epoch, logs=None):
            value = (logs or {}).get(monitor)
            if value is None:
                return
            value = float(value)
            if not math.isfinite(value):
                return
            self.last_value = value
            trial.report(value, step=int(epoch) + 1)
            if trial.should_prune():
                self.pruned_at = int(epoch)
                self.model.stop_training = True  # the pipeline stores its run; the trial is then pruned

    return OptunaPruning()


class _Surplus(Exception):
    """This trial started after the study already had its agreed number of trials (a race between workers)."""


def _params_key(params: dict) -> str:
    return config_hash(params, length=12)


def _open_study(ctx: SearchContext, study_name, sampler, pruner, enqueue):
    import optuna
    from optuna.exceptions import ExperimentalWarning

    opt = ctx.settings.optuna
    default_file = ctx.store.cache.stage_dir(STAGE) / f"{ctx.key}.db"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)
        # checked before any trial; one process at a time creates the tables and the study
        with open_storage(opt.storage, default_file, opt.heartbeat_interval, opt.grace_period, opt.max_retry) as rdb:
            study = optuna.create_study(
                study_name=study_name,
                storage=rdb,
                sampler=sampler,
                pruner=pruner,
                direction=ctx.direction,
                load_if_exists=True,
            )
            _claim(study, ctx, study_name)
            if enqueue and not study.user_attrs.get("carclf_enqueued") and not study.get_trials(deepcopy=False):
                _enqueue(study, ctx, enqueue)
    return study, rdb


def _claim(study, ctx: SearchContext, study_name):
    """Record the search's settings in a new study; refuse a study made with other settings."""
    stored = study.user_attrs.get("carclf_settings")
    mine = json.dumps(json_safe(ctx.identity), sort_keys=True)
    if stored is None:
        study.set_user_attr("carclf_settings", mine)
        study.set_user_attr("carclf_key", ctx.key)
        study.set_user_attr("seed", ctx.seed)
    elif stored != mine:
        raise ValueError(
            f"the study {study_name!r} was made with other settings; use another study_name or the same settings"
        )


def _enqueue(study, ctx: SearchContext, enqueue):
    fixed = constants(ctx.space)
    for params in enqueue:
        params = dict(params)
        if not in_space(params, ctx.space):
            raise ValueError(f"enqueued hyperparameters {params} are outside the space {ctx.space}")
        # constants are not suggested, so they are not enqueued either
        study.enqueue_trial({k: v for k, v in params.items() if k not in fixed}, skip_if_exists=True)
    study.set_user_attr("carclf_enqueued", True)


def _optuna_worker(ctx: SearchContext, study, n_trials: int) -> bool:
    """Run trials until the study holds ``n_trials`` finished ones; True when it does."""
    import optuna
    from optuna.exceptions import ExperimentalWarning
    from optuna.trial import TrialState

    work = ctx.store.cache.stage_dir(STAGE) / ctx.key / "work"
    finished_states = (TrialState.COMPLETE, TrialState.PRUNED)
    if not ctx.settings.keep_trials:
        _sweep_work(ctx, study, work)

    def objective(trial):
        trials = study.get_trials(deepcopy=False)
        done = sum(t.state in finished_states for t in trials)
        ahead = sum(t.state == TrialState.RUNNING and t.number < trial.number for t in trials)
        if done + ahead >= n_trials:
            trial.set_user_attr("surplus", True)
            raise _Surplus(f"the study already has its {n_trials} trials (finished or running)")
        params = suggest(trial, ctx.space)
        trial.set_user_attr("host", socket.gethostname())
        trial.set_user_attr("pid", os.getpid())
        pruning = _pruning_callback(trial, ctx.objective)
        out = run_trial(ctx, params, work / f"trial-{_params_key(params)}", extra_callbacks=[pruning])
        for name in ("epochs_run", "best_epoch", "wall_min", "cpu_min", "resumed_from_epoch"):
            if out.get(name) is not None:
                trial.set_user_attr(name, out[name])
        if out["state"] == "diverged":
            trial.set_user_attr("error", out["error"])
            raise optuna.TrialPruned(f"diverged: {out['error']}")
        if trial.number == 0:
            log_projection(ctx, out, n_trials - 1)
        if pruning.pruned_at is not None:
            trial.set_user_attr("pruned_at_epoch", pruning.pruned_at + 1)
            _log_trial(ctx, study, trial.number, f"pruned after epoch {pruning.pruned_at + 1}")
            raise optuna.TrialPruned(f"pruned after epoch {pruning.pruned_at + 1}")
        _log_trial(ctx, study, trial.number, f"{ctx.objective} {out['value']:.4g}", out["value"])
        return out["value"]

    def cleanup(study_, frozen):
        if not ctx.settings.keep_trials and frozen.state in finished_states:
            shutil.rmtree(work / f"trial-{_params_key(applied(frozen.params, ctx.space))}", ignore_errors=True)

    timeout, heartbeat = ctx.settings.optuna.timeout, ctx.settings.optuna.heartbeat_interval
    deadline = None if timeout is None else time.monotonic() + timeout
    poll = min(10.0, max(0.5, heartbeat / 2))
    while True:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)  # a dead worker's trial: failed and re-queued
        trials = study.get_trials(deepcopy=False)
        done = sum(t.state in finished_states for t in trials)
        running = sum(t.state == TrialState.RUNNING for t in trials)
        waiting = sum(t.state == TrialState.WAITING for t in trials)
        if done >= n_trials:
            return True
        if deadline is not None and time.monotonic() >= deadline:
            return False
        if done + running >= n_trials and not waiting:
            time.sleep(poll)  # the last trials run elsewhere: wait, to retry them if their worker dies
            continue
        study.optimize(
            objective, n_trials=1, catch=(_Surplus,), callbacks=[cleanup], gc_after_trial=False, show_progress_bar=False
        )


def _log_trial(ctx: SearchContext, study, number: int, what: str, value=None) -> None:
    from optuna.trial import TrialState

    values = [t.value for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
    values += [] if value is None else [value]
    pick = min if ctx.direction == "minimize" else max
    best = f"{pick(values):.4g}" if values else "none"
    log.info("%s: trial %d%s %s, best so far %s", ctx.model_name, number, " (the defaults)" * (number == 0), what, best)


def _sweep_work(ctx: SearchContext, study, work: Path) -> None:
    """Remove work folders of trials that are over (a kill between a trial's end and its clean-up)."""
    from optuna.trial import TrialState

    if not work.is_dir():
        return
    folders = list(work.glob("trial-*"))  # listed before the trials are read: a new folder's trial is in the read
    active = {
        _params_key(applied(t.params, ctx.space))
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING, TrialState.WAITING))
    }
    for folder in folders:
        if folder.name[len("trial-") :] not in active:
            shutil.rmtree(folder, ignore_errors=True)


def _optuna_rows(ctx: SearchContext, study) -> tuple[list[dict], dict]:
    from optuna.trial import TrialState

    rows, params_of = [], {}
    for t in study.get_trials(deepcopy=False):
        if t.user_attrs.get("surplus"):
            continue
        params = applied(t.params, ctx.space)
        params_of[t.number] = params
        state = t.state.name.lower()
        if t.state == TrialState.PRUNED and t.user_attrs.get("error"):
            state = "diverged"
        last = t.intermediate_values[max(t.intermediate_values)] if t.intermediate_values else None
        rows.append(
            {
                "trial": t.number,
                "state": state,
                "value": t.value if t.state == TrialState.COMPLETE else None,
                **params,
                "best_epoch": t.user_attrs.get("best_epoch"),
                "epochs_run": t.user_attrs.get("epochs_run"),
                "wall_min": t.user_attrs.get("wall_min"),
                "cpu_min": t.user_attrs.get("cpu_min"),
                "last_value": last,
                "error": t.user_attrs.get("error"),
                "pruned_at_epoch": t.user_attrs.get("pruned_at_epoch"),
                "retry_of": t.system_attrs.get("failed_trial"),
                "pid": t.user_attrs.get("pid"),
                "host": t.user_attrs.get("host"),
            }
        )
    return rows, params_of
