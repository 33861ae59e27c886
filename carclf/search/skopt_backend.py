"""scikit-optimize's Bayesian search (the report's choice), resumable trial by trial (docs/search.md)."""

from __future__ import annotations

import json
import logging
import shutil
import warnings
from dataclasses import replace
from pathlib import Path

from carclf.cache import atomic_pickle, atomic_write, json_safe, load_pickle, native
from carclf.search.objective import SearchContext, folder_lock, log_projection, prepare, run_trial, timed
from carclf.search.result import SearchResult, finish, make_result
from carclf.search.space import applied, is_choices
from carclf.settings import SearchSettings

log = logging.getLogger("carclf.search")

__all__ = ["dimensions", "run_skopt_search"]

STAGE = "search-skopt"


def run_skopt_search(model, train, settings: SearchSettings | None = None, *, callback=None, **context) -> SearchResult:
    """Bayesian search (a Gaussian process, scikit-optimize) on the training set; resumable and extendable.

    Args:
        model: a name of ``carclf.models.NAMES`` or a builder ``f(input_shape, num_classes, hyperparams)``.
        train: the training split (or ``build_decoded_cache``'s dict, of which only "train" is read); a
            validation split is carved from it (:func:`carclf.splits.validation_split`).
        settings: the search (:class:`carclf.settings.SearchSettings`; its ``skopt`` group). ``n_trials``
            is how many trials the search should have: finished trials are reused, so more extends a finished
            search and a killed search resumes at its first missing trial.
        callback: called with each new trial's record.
        context: what :func:`carclf.search.objective.prepare` takes: ``model_name`` (of the trials' runs),
            ``hyperparams`` (fixed for every trial: ``fc_layers``, ``weights``...), ``training`` (how each
            trial trains, :class:`carclf.settings.TrainSettings`; the search sets its epochs and an
            EarlyStopping on the objective), ``seed`` (the split, the optimizer and every trial's training),
            ``augment`` (an online augmentation hook), ``store`` and ``deps`` (where results live, and the
            upstream results the search depends on).

    Returns:
        A :class:`SearchResult` (stored through the stage cache; ``json_path`` is its JSON).
    """
    settings = replace(settings or SearchSettings(), backend="skopt")
    ctx = prepare(model, train, settings, **context)
    n_trials = settings.n_trials
    config = {"settings": ctx.identity, "search_key": ctx.key, "n_trials": n_trials}

    def compute() -> SearchResult:
        with timed(ctx):
            records = _skopt_trials(ctx, n_trials, callback)[:n_trials]
        params_of = {r["number"]: r["params"] for r in records}
        return make_result(ctx, [_skopt_row(r) for r in records], params_of, n_trials, True)

    return finish(ctx, config, compute)


def dimensions(space: dict):
    """skopt's dimensions of a space (a single choice is a constant, not a dimension)."""
    from skopt.space import Categorical, Integer, Real

    dims = []
    for name, spec in space.items():
        if is_choices(spec):
            if len(spec) > 1:
                dims.append(Categorical(list(spec), name=name))
        else:
            low, high, prior = spec
            if isinstance(low, int) and isinstance(high, int):
                dims.append(Integer(low, high, prior=prior, name=name))
            else:
                dims.append(Real(float(low), float(high), prior=prior, name=name))
    return dims


def _skopt_row(record: dict) -> dict:
    row = {"trial": record["number"], "state": record["state"], "value": record["value"], **record["params"]}
    for name in ("best_epoch", "epochs_run", "wall_min", "cpu_min", "error", "resumed_from_epoch"):
        row[name] = record.get(name)
    row["skopt_loss"] = record["loss"]
    row["defaults"] = bool(record.get("defaults"))
    return row


def _new_optimizer(ctx: SearchContext):
    from skopt import Optimizer

    s = ctx.settings.skopt
    return Optimizer(
        dimensions(ctx.space),
        base_estimator="GP",
        n_initial_points=s.n_initial_points,
        initial_point_generator="random",
        acq_func=s.acq_func,
        random_state=ctx.seed,
        model_queue_size=1,  # only the latest GP is needed; keeps optimizer.pkl small
    )


def _load_trials(folder: Path, key: str) -> list[dict]:
    """The finished trials 0, 1, 2, ... (stops at the first missing one)."""
    records = []
    while True:
        path = folder / f"{len(records):05d}.pkl"
        if not path.is_file():
            return records
        try:
            record = load_pickle(path)
        except Exception as exc:  # atomic writes make this unlikely; redo the trial if it happens
            log.warning("unreadable trial %s (%s: %s); it will run again", path, type(exc).__name__, exc)
            return records
        if record.get("search_key") != key or record.get("number") != len(records):
            raise RuntimeError(f"{path} belongs to another search; remove the folder {folder.parent}")
        records.append(record)


def _restore_optimizer(ctx: SearchContext, folder: Path, records: list[dict]):
    """The optimizer after the stored trials: the saved one if it is in step, else replayed."""
    path = folder / "optimizer.pkl"
    if path.is_file():
        try:
            saved = load_pickle(path)
            if saved.get("search_key") == ctx.key and saved.get("n_told") == len(records):
                return saved["optimizer"]
            log.info("optimizer state is at trial %s, the trials at %d: replaying", saved.get("n_told"), len(records))
        except Exception as exc:
            log.warning("unreadable optimizer state %s (%s: %s); replaying the trials", path, type(exc).__name__, exc)
    # Replay ask/tell in the original order: the optimizer's random state advances exactly as it did.
    optimizer = _new_optimizer(ctx)
    for record in records:
        if record.get("defaults"):  # trial one was told, not asked
            optimizer.tell(record["x"], record["loss"])
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            asked = [native(v) for v in optimizer.ask()]
        if asked != record["x"]:
            log.warning(
                "replaying trial %d: the optimizer now asks %s, the trial had %s (another skopt "
                "version?); telling the stored point",
                record["number"],
                asked,
                record["x"],
            )
        optimizer.tell(record["x"], record["loss"])
    return optimizer


def _skopt_trials(ctx: SearchContext, n_calls: int, callback) -> list[dict]:
    folder = ctx.store.cache.artifact_dir(STAGE, ctx.key)
    with folder_lock(folder, f"the search {ctx.key}", blocking=False):
        settings_path = folder / "settings.json"
        if not settings_path.is_file():
            atomic_write(settings_path, (json.dumps(json_safe(ctx.identity), indent=2) + "\n").encode())
        trials_dir = folder / "trials"
        work = folder / "work"
        records = _load_trials(trials_dir, ctx.key)
        if not ctx.settings.keep_trials:
            for record in records:  # leftovers of a kill between recording a trial and removing its folder
                shutil.rmtree(work / f"trial-{record['number']:05d}", ignore_errors=True)
        if len(records) >= n_calls:
            return records
        log.info("%s: skopt search %s, %d of %d trials done", ctx.model_name, ctx.key, len(records), n_calls)
        optimizer = _restore_optimizer(ctx, folder, records)
        names = [dim.name for dim in optimizer.space.dimensions]
        for number in range(len(records), n_calls):
            first = number == 0
            if first:  # the run's own values: the search's best is never worse than the default's
                x = [native(ctx.defaults[name]) for name in names]
            else:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", UserWarning)  # "evaluated at this point before"
                    x = [native(v) for v in optimizer.ask()]
            params = applied(dict(zip(names, x)), ctx.space)
            log.info("%s: trial %d/%d %s", ctx.model_name, number + 1, n_calls, params)
            trial_dir = work / f"trial-{number:05d}"
            out = run_trial(ctx, params, trial_dir)
            if out["state"] == "complete":
                loss = out["value"] if ctx.direction == "minimize" else -out["value"]
            else:  # the worst seen so far: deterministic, and keeps the GP's scale
                seen = [r["loss"] for r in records if r["state"] == "complete"]
                loss = max(seen + [ctx.chance_loss()])
            record = {
                "search_key": ctx.key,
                "number": number,
                "x": x,
                "params": params,
                "loss": float(loss),
                "defaults": first,
                **out,
            }
            atomic_pickle(trials_dir / f"{number:05d}.pkl", record)  # the trial is done from here on
            optimizer.tell(x, float(loss))
            atomic_pickle(
                folder / "optimizer.pkl", {"search_key": ctx.key, "n_told": number + 1, "optimizer": optimizer}
            )
            if not ctx.settings.keep_trials:
                shutil.rmtree(trial_dir, ignore_errors=True)
            records.append(record)
            done = [r["loss"] for r in records if r["state"] == "complete"]
            best = (min(done) if ctx.direction == "minimize" else -min(done)) if done else None
            log.info(
                "%s: trial %d%s %s %s, best so far %s",
                ctx.model_name,
                number,
                " (the defaults)" if first else "",
                ctx.objective,
                "diverged" if out["value"] is None else f"{out['value']:.4g}",
                "none" if best is None else f"{best:.4g}",
            )
            if first:
                log_projection(ctx, out, n_calls - 1)
            if callback is not None:
                callback(record)
        return records
