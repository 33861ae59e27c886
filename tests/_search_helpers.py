"""Searches that tests/test_search.py runs in subprocesses (and kills). Not a test module.

    python tests/_search_helpers.py skopt-kill    PICKLES DECODED_KEY HOME LOG
    python tests/_search_helpers.py optuna-worker PICKLES DECODED_KEY HOME N_TRIALS
    python tests/_search_helpers.py optuna-kill   PICKLES DECODED_KEY HOME N_TRIALS

``skopt-kill`` runs :data:`SKOPT_KILL` and SIGKILLs itself in the third
trial (index 2), at batch 1 of epoch 1 (so epoch 0's resume state is saved);
every trial's hyperparameters are appended to LOG as a JSON line when it
starts. ``optuna-worker`` runs :data:`OPTUNA_WORKERS` to N_TRIALS and prints
a JSON summary. ``optuna-kill`` runs :data:`OPTUNA_KILL` and SIGKILLs itself
in its first trial the same way.
"""

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

#: The killed skopt search (the test resumes it with the same settings).
SKOPT_KILL = {
    "model": "model1",
    "n_calls": 4,
    "epochs": 2,
    "patience": 2,
    "n_initial_points": 3,
    "acq_func": "EI",
    "seed": 3,
}

#: Two workers sharing one SQLite study.
OPTUNA_WORKERS = {"model": "model1", "epochs": 1, "heartbeat_interval": 1, "pruner": None, "seed": 5}

#: A worker killed mid-trial; the test's worker must retry that trial.
OPTUNA_KILL = {"model": "model1", "epochs": 2, "heartbeat_interval": 1, "grace_period": 2, "pruner": None, "seed": 9}

KILL_EPOCH, KILL_BATCH = 1, 1


_SKOPT_KEYS = {"n_initial_points", "acq_func"}
_CALL_KEYS = {"seed", "enqueue", "hyperparams", "augment", "callback", "model_name", "store", "training"}


def settings_and_args(backend, n_trials, flat):
    """The tests' flat keyword style split into SearchSettings and the search call's own arguments."""
    from dataclasses import fields

    from carclf.settings import OptunaSettings, SearchSettings

    optuna_keys = {f.name for f in fields(OptunaSettings)}
    changes, call = {}, {}
    for name, value in flat.items():
        if name in _CALL_KEYS:
            call[name] = value
        elif name in _SKOPT_KEYS:
            changes[f"skopt.{name}"] = value
        elif name in optuna_keys:
            changes[f"optuna.{name}"] = value
        else:
            changes[name] = value
    return SearchSettings(backend=backend, n_trials=n_trials).override(**changes), call


def skopt(model, train, n_calls, **flat):
    from carclf.search import run_skopt_search

    settings, call = settings_and_args("skopt", n_calls, flat)
    return run_skopt_search(model, train, settings, **call)


def optuna(model, train, n_trials, **flat):
    from carclf.search import run_optuna_search

    settings, call = settings_and_args("optuna", n_trials, flat)
    return run_optuna_search(model, train, settings, **call)


def search(model, train, backend="skopt", n_trials=20, **flat):
    from carclf.search import run_search

    settings, call = settings_and_args(backend, n_trials, flat)
    return run_search(model, train, settings, **call)


def where(root):
    from carclf.paths import Store

    return {"store": Store.at(root)}


def open_data(pickles, decoded_key):
    from carclf.cache import StageCache
    from carclf.decoded import open_decoded

    return open_decoded(StageCache(pickles), decoded_key)


def kill_callback(home):
    # The training test's killer (it waits for the previous epoch's state under ``home``); tests/ is on
    # sys.path both as a script and under pytest.
    from _train_helpers import kill_at

    return kill_at(KILL_EPOCH, KILL_BATCH, home)


def patch_pipeline(kill_at_call, log_path=None):
    """Wrap carclf.train.run_model_pipeline: log each call, kill inside call number ``kill_at_call`` (1-based)."""
    import carclf.train as train

    original = train.run_model_pipeline
    calls = []

    def wrapper(*args, **kwargs):
        calls.append(args[2])
        if log_path:
            with open(log_path, "a") as handle:
                handle.write(json.dumps(args[2]) + "\n")
                handle.flush()
        if len(calls) == kill_at_call:
            kwargs["extra_callbacks"] = [*kwargs.get("extra_callbacks", ()), kill_callback(kwargs["store"].paths.root)]
        return original(*args, **kwargs)

    train.run_model_pipeline = wrapper


def skopt_kill(pickles, decoded_key, home, log_path):
    patch_pipeline(3, log_path)
    settings = dict(SKOPT_KILL)
    skopt(settings.pop("model"), open_data(pickles, decoded_key), settings.pop("n_calls"), **settings, **where(home))
    raise SystemExit("the search finished without being killed")


def optuna_run(pickles, decoded_key, home, n_trials, settings):
    settings = dict(settings)
    return optuna(settings.pop("model"), open_data(pickles, decoded_key), int(n_trials), **settings, **where(home))


if __name__ == "__main__":
    mode, args = sys.argv[1], sys.argv[2:]
    if mode == "skopt-kill":
        skopt_kill(*args[:4])
    elif mode == "optuna-worker":
        result = optuna_run(*args[:4], OPTUNA_WORKERS)
        print(
            json.dumps(
                {
                    "pid": os.getpid(),
                    "n_trials": result.n_trials,
                    "study": result.study_name,
                    "best_trial": result.best_trial,
                }
            )
        )
    elif mode == "optuna-kill":
        patch_pipeline(1)
        optuna_run(*args[:4], OPTUNA_KILL)
        raise SystemExit("the search finished without being killed")
    else:
        raise SystemExit(f"unknown mode {mode}")
