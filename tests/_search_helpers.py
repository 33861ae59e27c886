"""Searches that tests/test_search.py runs in subprocesses (and kills). Not a test module.

    python tests/_search_helpers.py skopt-kill    PICKLES DECODED_KEY HOME LOG
    python tests/_search_helpers.py optuna-worker PICKLES DECODED_KEY HOME N_TRIALS
    python tests/_search_helpers.py optuna-kill   PICKLES DECODED_KEY HOME N_TRIALS
    python tests/_search_helpers.py optuna-lose   PICKLES DECODED_KEY HOME N_TRIALS

``skopt-kill`` runs :data:`SKOPT_KILL` and SIGKILLs itself in the third
trial (index 2), at batch 1 of epoch 1 (so epoch 0's resume state is saved);
every trial's hyperparameters are appended to LOG as a JSON line when it
starts. ``optuna-worker`` runs :data:`OPTUNA_WORKERS` to N_TRIALS and prints
a JSON summary. ``optuna-kill`` runs :data:`OPTUNA_KILL` and SIGKILLs itself
in its first trial the same way. ``optuna-lose`` runs :data:`OPTUNA_LOSE` and, at batch 1 of
its first trial's first epoch, creates HOME/in-trial and waits for HOME/server-stopped (the test stops
the database server in between), then trains on into the lost server.

With ``$CARCLF_TEST_STORAGE`` set, the Optuna searches use that storage URL (tests/test_search_postgres.py);
with ``$CARCLF_TEST_BARRIER`` = ``FOLDER:COUNT``, each Optuna worker waits, once Keras is imported, until
COUNT workers have come that far (so parallel workers start their trials together).
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

#: A worker whose database server is stopped mid-trial; the test's rerun must retry that trial.
OPTUNA_LOSE = {"model": "model1", "epochs": 1, "heartbeat_interval": 1, "grace_period": 2, "pruner": None, "seed": 11}

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


def hold_callback(home):
    """At batch 1 of epoch 0: create HOME/in-trial, wait (up to 5 min) for HOME/server-stopped."""
    import time
    from pathlib import Path

    import keras

    class HoldMidEpoch(keras.callbacks.Callback):
        def on_epoch_begin(self, e, logs=None):
            self.epoch = e

        def on_train_batch_end(self, b, logs=None):
            if self.epoch == 0 and b == 1:
                (Path(home) / "in-trial").touch()
                deadline = time.monotonic() + 300
                while not (Path(home) / "server-stopped").exists() and time.monotonic() < deadline:
                    time.sleep(0.05)

    return HoldMidEpoch()


def patch_pipeline(kill_at_call, log_path=None, make_callback=kill_callback):
    """Wrap carclf.train.run_model_pipeline: log each call, kill inside call number ``kill_at_call`` (1-based)
    (or add another ``make_callback(home)`` there)."""
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
            kwargs["extra_callbacks"] = [*kwargs.get("extra_callbacks", ()), make_callback(kwargs["store"].paths.root)]
        return original(*args, **kwargs)

    train.run_model_pipeline = wrapper


def skopt_kill(pickles, decoded_key, home, log_path):
    patch_pipeline(3, log_path)
    settings = dict(SKOPT_KILL)
    skopt(settings.pop("model"), open_data(pickles, decoded_key), settings.pop("n_calls"), **settings, **where(home))
    raise SystemExit("the search finished without being killed")


def barrier():
    """Wait until ``$CARCLF_TEST_BARRIER``'s COUNT workers reach this point (none set: return at once)."""
    import time
    from pathlib import Path

    spec = os.environ.get("CARCLF_TEST_BARRIER")
    if not spec:
        return
    folder, count = spec.rsplit(":", 1)
    (Path(folder) / f"ready-{os.getpid()}").touch()
    deadline = time.monotonic() + 300
    while len(list(Path(folder).glob("ready-*"))) < int(count) and time.monotonic() < deadline:
        time.sleep(0.05)


def optuna_run(pickles, decoded_key, home, n_trials, settings):
    import keras  # noqa: F401  (imported before the barrier: the workers' slowest start-up step)

    settings = dict(settings)
    if os.environ.get("CARCLF_TEST_STORAGE"):
        settings["storage"] = os.environ["CARCLF_TEST_STORAGE"]
    barrier()
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
    elif mode == "optuna-lose":
        patch_pipeline(1, make_callback=lambda _trial_root: hold_callback(args[2]))  # HOME, not the trial's folder
        optuna_run(*args[:4], OPTUNA_LOSE)
        raise SystemExit("the search finished although its database server was stopped")
    else:
        raise SystemExit(f"unknown mode {mode}")
