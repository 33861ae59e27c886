"""Optuna on PostgreSQL: workers in several processes share one study (tests/_postgres.py starts the server).

model1 on the 32x32 synthetic set, 1-2 epochs a trial, 3-4 trials; the workers are tests/_search_helpers.py
run as subprocesses, with the study's URL in $CARCLF_TEST_STORAGE. Without PostgreSQL's initdb and pg_ctl
these tests fail (saying what to install); they never skip.
"""

import importlib.util
import itertools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from _postgres import free_port, start_cluster

from carclf.settings import SettingsError

HELPER = Path(__file__).with_name("_search_helpers.py")
_spec = importlib.util.spec_from_file_location("_search_helpers", HELPER)
helpers = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(helpers)

_names = itertools.count()


@pytest.fixture(scope="module")
def cluster():
    """A PostgreSQL server of its own (initdb -A trust) on 127.0.0.1, stopped and removed after the module."""
    server = start_cluster()
    try:
        yield server
    finally:
        server.remove()


@pytest.fixture
def database(cluster):
    """A new database on the cluster (the server started again if a test left it stopped): its URL."""
    if not cluster.running():
        cluster.start()
    name = f"carclf_{os.getpid()}_{next(_names)}"
    cluster.createdb(name)
    return cluster.url(name)


def worker_cmd(mode, synthetic_cars32, home, n_trials):
    return [
        sys.executable,
        str(HELPER),
        mode,
        str(synthetic_cars32.cache.root),
        synthetic_cars32.decoded_key,
        str(home),
        str(n_trials),
    ]


def worker_env(url, **extra):
    return {**os.environ, "CARCLF_TEST_STORAGE": url, **extra}


def load(url, study_name):
    import optuna

    return optuna.load_study(study_name=study_name, storage=url)


def finished_trials(study):
    from optuna.trial import TrialState

    return [t for t in study.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]


def search_here(flat, synthetic_cars32, database, n_trials, home):
    """The search of a worker's settings (``helpers.OPTUNA_*``), run in this process on ``database``."""
    settings = dict(flat)
    return helpers.optuna(
        settings.pop("model"),
        synthetic_cars32.decoded,
        n_trials=n_trials,
        storage=database,
        **settings,
        **helpers.where(home),
    )


def param_set(params):
    return tuple(sorted(params.items()))


@pytest.mark.slow
def test_two_workers_share_one_postgres_study(synthetic_cars32, database, tmp_path):
    n_trials = 3
    (tmp_path / "barrier").mkdir()
    env = worker_env(database, CARCLF_TEST_BARRIER=f"{tmp_path / 'barrier'}:2")
    homes = [tmp_path / "machine-a", tmp_path / "machine-b"]  # no shared files: only the database is shared
    workers = [
        subprocess.Popen(
            worker_cmd("optuna-worker", synthetic_cars32, home, n_trials),
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for home in homes
    ]
    outputs = [w.communicate(timeout=300) for w in workers]
    for worker, (_, err) in zip(workers, outputs):
        assert worker.returncode == 0, err[-3000:]
    summaries = [json.loads(out.strip().splitlines()[-1]) for out, _ in outputs]
    assert {s["n_trials"] for s in summaries} == {n_trials}
    assert len({s["study"] for s in summaries}) == 1
    study = load(database, summaries[0]["study"])
    finished = finished_trials(study)
    assert len(finished) == n_trials  # exactly the agreed number, together
    assert len({t.number for t in finished}) == n_trials  # no trial number twice
    assert len({param_set(t.params) for t in finished}) == n_trials  # no draw shared between the workers
    pids = [t.user_attrs["pid"] for t in finished]
    assert set(pids) == {s["pid"] for s in summaries}  # each worker ran at least one trial
    for home in homes:  # each worker cleaned up its finished trials' work folders
        assert not list(home.glob("pickles/search-optuna/*/work/trial-*"))


@pytest.mark.slow
def test_worker_killed_mid_trial_is_retried_by_another(synthetic_cars32, database, tmp_path):
    from optuna.trial import TrialState

    n_trials = 3
    proc = subprocess.run(
        worker_cmd("optuna-kill", synthetic_cars32, tmp_path, n_trials),
        env=worker_env(database),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]

    result = search_here(helpers.OPTUNA_KILL, synthetic_cars32, database, n_trials, tmp_path)
    study = load(database, result.study_name)
    killed = study.trials[0]
    assert killed.state == TrialState.FAIL  # marked failed through the heartbeat
    (retry,) = [t for t in study.trials if t.system_attrs.get("failed_trial") == 0]
    assert retry.state == TrialState.COMPLETE and retry.params == killed.params
    assert retry.user_attrs["pid"] == os.getpid() != killed.user_attrs["pid"]  # another worker retried it
    assert retry.user_attrs["resumed_from_epoch"] == 1  # and resumed the killed training
    assert len(finished_trials(study)) == n_trials
    assert (result.trials["state"] == "complete").sum() == n_trials


@pytest.mark.parametrize(
    "case",
    ["refused", "password", "unknown-host", "no-database", "no-role", "no-driver"],
)
def test_unreachable_storage_is_one_line_before_any_training(case, synthetic_cars32, cluster, tmp_path, monkeypatch):
    import carclf.train

    def no_training(*args, **kwargs):
        raise AssertionError("a trial started although the database cannot be reached")

    monkeypatch.setattr(carclf.train, "run_model_pipeline", no_training)
    port = free_port()  # nothing listens there
    url, shown, reason = {
        "refused": (f"postgresql://carclf@127.0.0.1:{port}/carclf", None, "connection refused"),
        "password": (
            f"postgresql+psycopg2://carclf:s3cret@127.0.0.1:{port}/carclf",
            f"postgresql+psycopg2://carclf:***@127.0.0.1:{port}/carclf",
            "connection refused",
        ),
        "unknown-host": ("postgresql://carclf@no-such-host.invalid:5432/carclf", None, "unknown host"),
        "no-database": (cluster.url("no_such_db"), None, "no such database"),
        "no-role": (cluster.url("postgres", user="nobody_here"), None, "bad credentials"),
        "no-driver": (cluster.url("postgres"), None, "pip install psycopg2-binary"),
    }[case]
    if not cluster.running():
        cluster.start()
    if case == "no-driver":
        monkeypatch.setitem(sys.modules, "psycopg2", None)  # as if psycopg2-binary were not installed
    start = time.monotonic()
    with pytest.raises(SettingsError) as caught:
        helpers.optuna(
            "model1", synthetic_cars32.decoded, n_trials=2, epochs=1, storage=url, seed=1, **helpers.where(tmp_path)
        )
    message = str(caught.value)
    assert "\n" not in message
    assert f"search.optuna.storage {shown or url!r}" in message, message
    assert reason in message, message
    assert "s3cret" not in message
    if case != "no-driver":
        assert "start the server" in message or "create it" in message or "fix the user" in message, message
    assert time.monotonic() - start < 60
    assert not list(tmp_path.glob("pickles/search-optuna/*/work/trial-*"))


@pytest.mark.slow
def test_server_lost_mid_trial_then_the_search_resumes(synthetic_cars32, cluster, database, tmp_path):
    import optuna
    from optuna.trial import TrialState

    n_trials = 3
    proc = subprocess.Popen(
        worker_cmd("optuna-lose", synthetic_cars32, tmp_path, n_trials),
        env=worker_env(database),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 240
        while not (tmp_path / "in-trial").exists():
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "the worker never reached its first trial"
            time.sleep(0.1)
        cluster.stop(check=True)  # the server is lost in the middle of trial 0
        (tmp_path / "server-stopped").touch()
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
        if not cluster.running():
            cluster.start()
    assert proc.returncode == 1, err[-3000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith("carclf.search.storage.DatabaseLostError: "), err[-3000:]
    assert f"search.optuna.storage {database!r}" in last
    assert "lost mid-search" in last and "resumes from the database" in last
    assert "direct cause" not in err and "During handling" not in err  # no pages of the driver's tracebacks
    assert "Exception in thread" not in err  # the heartbeat thread logged its failed beats, and lived on

    # the server is back: the interrupted trial is still RUNNING until the same search fails it as stale
    (study_name,) = optuna.get_all_study_names(database)
    interrupted = load(database, study_name).trials[0]
    assert interrupted.state == TrialState.RUNNING
    result = search_here(helpers.OPTUNA_LOSE, synthetic_cars32, database, n_trials, tmp_path)
    study = load(database, result.study_name)
    assert study.trials[0].state == TrialState.FAIL
    (retry,) = [t for t in study.trials if t.system_attrs.get("failed_trial") == 0]
    assert retry.state == TrialState.COMPLETE and retry.params == interrupted.params
    assert len(finished_trials(study)) == n_trials
    assert (result.trials["state"] == "complete").sum() == n_trials
