"""carclf.search on the 32x32 synthetic set: tiny model (model1), 1-2 epochs per trial."""

import dataclasses
import importlib.util
import json
import math
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

import carclf.train as T
from carclf import search as S
from carclf.cache import load_pickle, native
from carclf.generators import ImageBatches
from carclf.paths import Store
from carclf.report import plot_convergence, plot_importance
from carclf.search.optuna_backend import distributions
from carclf.search.skopt_backend import dimensions
from carclf.search.space import applied, is_choices
from carclf.settings import TrainSettings
from carclf.workflow import compare_default_optimal

HELPER = Path(__file__).with_name("_search_helpers.py")
_spec = importlib.util.spec_from_file_location("_search_helpers", HELPER)
helpers = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(helpers)

#: The 4-call search of the module fixture (1 epoch per trial).
SKOPT = {"epochs": 1, "patience": 1, "n_initial_points": 2, "acq_func": "EI", "seed": 0}


class Forbidden:
    """A stand-in for the test split: any use of it fails the test."""

    def __getattr__(self, name):
        raise AssertionError(f"the search touched the test set (.{name})")

    def __len__(self):
        raise AssertionError("the search touched the test set (len)")

    def __getitem__(self, item):
        raise AssertionError("the search touched the test set ([])")

    def __iter__(self):
        raise AssertionError("the search touched the test set (iter)")


class ReadSpy:
    """The training split, recording every row the search reads."""

    def __init__(self, split):
        self._split = split
        self.rows = []

    def __getattr__(self, name):
        return getattr(self._split, name)

    def __len__(self):
        return len(self._split)

    def read(self, indices, dtype=np.float32):
        self.rows.extend(int(i) for i in np.asarray(indices))
        return self._split.read(indices, dtype=dtype)


class PipelineSpy:
    """Counts run_model_pipeline calls (the search imports it from carclf.train at call time)."""

    def __init__(self, monkeypatch):
        self.calls = []
        self.results = []
        original = T.run_model_pipeline

        def spy(*args, **kwargs):
            self.calls.append(dict(args[2]))
            result = original(*args, **kwargs)
            self.results.append(result)
            return result

        monkeypatch.setattr(T, "run_model_pipeline", spy)


where = helpers.where


def param_set(params):
    return tuple(sorted((k, round(v, 12) if isinstance(v, float) else v) for k, v in params.items()))


# --------------------------------------------------------------------------- #
# The space and the validation split
# --------------------------------------------------------------------------- #


def test_space_is_declared_once_and_restricts_to_adam():
    report_names = {
        "learning_rate",
        "weight_decay",
        "dropout",
        "beta_1",
        "beta_2",
        "decay",
        "momentum",
        "rho",
        "optimizer_type",
    }
    assert set(S.REPORT_SPACE) == report_names
    assert set(S.SEARCH_SPACE) == report_names | {"label_smoothing", "warmup", "finetune_lr_scale", "crop_scale"}
    assert S.SEARCH_SPACE["learning_rate"] == S.REPORT_SPACE["learning_rate"] == (1e-6, 1e-3, "log-uniform")
    assert S.REPORT_SPACE["weight_decay"][:2] == (1e-6, 1e-4)  # the report's, kept as search.ranges="report"
    assert S.SEARCH_SPACE["weight_decay"][:2] == (1e-3, 0.5)  # where lr * weight_decay per step moves weights
    assert S.SEARCH_SPACE["dropout"][:2] == (0.1, 0.5)
    lo, hi, _ = S.SEARCH_SPACE["decay"]
    assert lo < 1e-6 < hi  # "a small value like 1e-6"

    # each dimension only where the run reads it
    report = S.search_space()
    assert "decay" in report and not {"label_smoothing", "warmup", "finetune_lr_scale", "crop_scale"} & set(report)
    modern = S.search_space(
        optimizer="AdamW", schedule="warmup_cosine", two_phase=True, label_smoothing=True, crop=True
    )
    assert modern["optimizer_type"] == ["AdamW"] and "decay" not in modern
    assert {"label_smoothing", "warmup", "finetune_lr_scale", "crop_scale"} <= set(modern)
    assert "finetune_lr_scale" not in S.search_space(optimizer="AdamW", schedule="warmup_cosine")

    full = S.search_space(adam_only=False)
    assert full["optimizer_type"] == ["Adam", "SGD", "RMSprop", "Adagrad"]
    adam = S.search_space()
    assert adam["optimizer_type"] == ["Adam"]
    assert "momentum" not in adam and "rho" not in adam

    # skopt dimensions and optuna distributions come from the same declaration
    dims = {d.name for d in dimensions(full)}
    assert dims == set(distributions(full)) == set(full)
    assert {d.name for d in dimensions(adam)} == set(adam) - {"optimizer_type"}  # a constant

    # a trial keeps only what its optimizer reads
    sgd = applied({"optimizer_type": "SGD", "learning_rate": 1e-4, "beta_1": 0.9, "momentum": 0.9, "rho": 0.9}, full)
    assert sgd == {"optimizer_type": "SGD", "learning_rate": 1e-4, "momentum": 0.9}

    with pytest.raises(ValueError, match="log-uniform"):
        S.search_space(space={"learning_rate": (0.0, 1e-3, "log-uniform")})
    with pytest.raises(ValueError, match="low must be below"):
        S.search_space(space={"dropout": (0.5, 0.1, "uniform")})
    with pytest.raises(ValueError, match="nothing to search"):
        S.search_space(space={"optimizer_type": ["Adam"]})


def test_validation_split_is_stratified_seeded_and_train_only(synthetic_cars32):
    train = synthetic_cars32.decoded["train"]
    fit, val = S.validation_split(train, 0.2, seed=1)
    assert len(fit) + len(val) == len(train)
    assert not set(fit.indices) & set(val.indices)
    counts = np.bincount(val.class_ids, minlength=train.num_classes)
    assert (counts == 4).all()  # 20 per class, 20% each
    again = S.validation_split(train, 0.2, seed=1)[1]
    assert np.array_equal(val.indices, again.indices)
    assert not np.array_equal(val.indices, S.validation_split(train, 0.2, seed=2)[1].indices)

    np.testing.assert_array_equal(val.read([0, 3]), train.read(val.indices[[0, 3]]))
    small = S.validation_split(train, 0.2, seed=1, image_size=(16, 16))[1]
    assert small.read([0, 1]).shape == (2, 16, 16, 3) and small.image_size == (16, 16)
    batch = ImageBatches(val, batch_size=8, shuffle=False)[0]
    assert batch[0].shape == (8, 32, 32, 3) and batch[1].shape == (8, train.num_classes)

    sub = S.subsample_split(train, 0.5, seed=0)
    assert len(sub) == 100 and (np.bincount(sub.class_ids) == 10).all()

    with pytest.raises(ValueError, match="test"):
        S.validation_split(synthetic_cars32.decoded["test"])
    with pytest.raises(ValueError, match="test"):
        helpers.skopt("model1", synthetic_cars32.decoded["test"], 1)


# --------------------------------------------------------------------------- #
# scikit-optimize
# --------------------------------------------------------------------------- #


@pytest.fixture(scope="module")
def skopt_run(synthetic_cars32, tmp_path_factory):
    """A 4-call search; the data dict's test split may not be touched."""
    root = tmp_path_factory.mktemp("skopt4")
    spy = ReadSpy(synthetic_cars32.decoded["train"])
    result = helpers.skopt("model1", {"train": spy, "test": Forbidden()}, 4, **SKOPT, **where(root))
    return result, spy, root


def test_skopt_search_four_calls_inside_the_space(skopt_run, synthetic_cars32):
    result, spy, _ = skopt_run
    space = result.space
    # the declared space, widened to hold the defaults: weight decay is off (0) by default under Adam
    assert set(space) == set(S.search_space())
    assert tuple(space["weight_decay"]) == (0.0, 0.5, "uniform")
    assert tuple(space["learning_rate"]) == S.SEARCH_SPACE["learning_rate"]
    assert result.backend == "skopt" and result.n_trials == 4 and result.complete
    assert len(result.trials) == 4 and list(result.trials["trial"]) == [0, 1, 2, 3]
    assert (result.trials["state"] == "complete").all()
    assert len({param_set(r) for r in result.trials[list(space)].to_dict("records")}) == 4
    for name, spec in space.items():
        value = result.best_params[name]
        assert value in spec if is_choices(spec) else spec[0] <= value <= spec[1]
    # trial one is the defaults (Hyperparams()), so the best is never worse than they are
    first = result.trials.iloc[0]
    assert first["defaults"] and not result.trials["defaults"].iloc[1:].any()
    expected = {"learning_rate": 1e-4, "dropout": 0.5, "decay": 1e-6, "weight_decay": 0.0, "beta_1": 0.9}
    assert {k: first[k] for k in expected} == pytest.approx(expected)
    assert result.best_value == pytest.approx(result.trials["value"].max())
    assert result.best_value >= first["value"]
    assert result.best_params["optimizer_type"] == "Adam"
    # the settings, recorded with the result, say what was searched on
    settings = result.settings
    assert settings["objective"] == "val_accuracy" and settings["epochs"] == 1 and settings["subsample"] is None
    assert settings["train_rows"] + settings["validation_rows"] == 200
    assert settings["data"]["rows"] == 200 and settings["data"]["image_size"] == [32, 32]
    # the search read training rows only (the test split is a Forbidden object)
    assert spy.rows and max(spy.rows) < 200
    saved = json.loads(result.json_path.read_text())
    assert saved["best_params"] == result.best_params and len(saved["trials"]) == 4
    exported = result.save_json(result.json_path.parent / "copy.json")
    assert json.loads(exported.read_text())["best_value"] == pytest.approx(result.best_value)


def test_skopt_search_reloads_and_extends(skopt_run, synthetic_cars32, monkeypatch):
    result, _, root = skopt_run
    data = synthetic_cars32.decoded
    spy = PipelineSpy(monkeypatch)
    again = helpers.skopt("model1", data, 4, **SKOPT, **where(root))
    assert again.loaded and not spy.calls and again.best_params == result.best_params

    more = helpers.skopt("model1", data, 5, **SKOPT, **where(root))
    assert len(spy.calls) == 1  # only the new trial trains
    assert not more.loaded and len(more.trials) == 5
    cols = ["trial", "value", *S.search_space()]
    pd.testing.assert_frame_equal(more.trials[cols].iloc[:4], result.trials[cols])
    assert param_set(spy.calls[0]) == param_set(more.trials[list(S.search_space())].iloc[4].to_dict())


def test_affordable_settings_are_recorded_and_start_another_search(skopt_run, synthetic_cars32, monkeypatch):
    result, _, root = skopt_run
    spy = PipelineSpy(monkeypatch)
    small = helpers.skopt(
        "model1", synthetic_cars32.decoded, 1, **{**SKOPT, "subsample": 0.5}, input_size=(16, 16), **where(root)
    )
    assert len(spy.calls) == 1 and len(small.trials) == 1  # not mistaken for the finished 4-call search
    assert small.settings["subsample"] == 0.5 and small.settings["input_size"] == [16, 16]
    assert small.settings["input_shape"] == [16, 16, 3]
    assert small.settings["train_rows"] + small.settings["validation_rows"] == 100
    assert spy.results[0].history["loss"]  # it trained
    assert small.key != result.key


def test_plots_and_importance(skopt_run):
    from matplotlib.figure import Figure

    result, _, root = skopt_run
    fig = plot_convergence(result, out_path=root / "convergence.png")
    assert isinstance(fig, Figure) and (root / "convergence.png").stat().st_size > 0
    importance = S.param_importances(result)
    assert importance and set(importance) <= set(S.search_space())
    assert sum(importance.values()) == pytest.approx(1.0, abs=1e-6)
    assert isinstance(plot_importance(result), Figure)


@pytest.mark.slow
def test_skopt_search_killed_in_trial_3_resumes_there(synthetic_cars32, tmp_path, monkeypatch):
    log_path = tmp_path / "calls.jsonl"
    proc = subprocess.run(
        [
            sys.executable,
            str(HELPER),
            "skopt-kill",
            str(synthetic_cars32.cache.root),
            synthetic_cars32.decoded_key,
            str(tmp_path),
            str(log_path),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    started = [json.loads(line) for line in log_path.read_text().splitlines()]
    assert len(started) == 3  # trials 0 and 1 finished, killed in trial 2

    settings = dict(helpers.SKOPT_KILL)
    model, n_calls = settings.pop("model"), settings.pop("n_calls")
    spy = PipelineSpy(monkeypatch)
    result = helpers.skopt(model, synthetic_cars32.decoded, n_calls, **settings, **where(tmp_path))
    assert len(spy.calls) == 2  # trials 2 and 3: nothing finished is repeated
    assert spy.calls[0] == started[2]  # the optimizer asked the killed trial's point again
    assert spy.results[0].resumed_from_epoch == 1  # and that trial resumed after its saved epoch

    space = list(S.search_space())
    rows = result.trials[space].to_dict("records")
    assert len(result.trials) == 4 and len({param_set(r) for r in rows}) == 4
    assert [param_set(r) for r in rows[:3]] == [param_set(p) for p in started]
    assert result.trials["resumed_from_epoch"].tolist()[2] == 1
    folder = result.json_path.parents[2] / "search-skopt"
    (search_dir,) = folder.iterdir()
    assert sorted(p.name for p in (search_dir / "trials").iterdir()) == [f"{k:05d}.pkl" for k in range(4)]
    assert load_pickle(search_dir / "optimizer.pkl")["n_told"] == 4
    assert not list((search_dir / "work").iterdir())  # trial folders removed once recorded


def fake_pipeline(monkeypatch, diverge_at):
    """Replace training by a stub: call ``diverge_at`` (1-based) raises NonFiniteLossError, the others
    return a val_loss (and val_accuracy) that improves with the learning rate. Returns the list of
    hyperparameters seen."""
    calls = []

    def fake(model_func, model_name, hyperparams, *args, **kwargs):
        calls.append(dict(hyperparams))
        if len(calls) == diverge_at:
            raise T.NonFiniteLossError("the training loss became nan")
        value = 2.0 + 0.01 * math.log10(hyperparams["learning_rate"])
        return SimpleNamespace(
            history={"val_loss": [value + 0.1, value], "val_accuracy": [0.0, 2.1 - value], "loss": [1.0, 0.9]},
            epochs_run=2,
            wall_min=0.0,
            cpu_min=0.0,
            key=f"fake{len(calls)}",
            resumed_from_epoch=None,
        )

    monkeypatch.setattr(T, "run_model_pipeline", fake)
    return calls


def test_full_space_and_diverged_trials(synthetic_cars32, tmp_path, monkeypatch):
    """All four optimizers, each trial with only what its optimizer reads; a NaN loss is a diverged trial."""
    reads = {"Adam": {"beta_1", "beta_2"}, "SGD": {"momentum"}, "RMSprop": {"rho"}, "Adagrad": set()}
    common = {"optimizer_type", "learning_rate", "weight_decay", "dropout", "decay"}

    calls = fake_pipeline(monkeypatch, diverge_at=2)
    result = helpers.skopt(
        "model1",
        synthetic_cars32.decoded,
        4,
        adam_only=False,
        n_initial_points=3,
        acq_func="EI",
        epochs=2,
        objective="val_loss",
        **where(tmp_path / "skopt"),
    )
    assert len(calls) == 4
    for hp in calls:
        assert set(hp) == common | reads[hp["optimizer_type"]]
    assert result.trials["state"].tolist() == ["complete", "diverged", "complete", "complete"]
    first = result.trials.loc[0, "value"]
    assert result.trials.loc[1, "skopt_loss"] == pytest.approx(max(first, math.log(10)))  # worst seen so far
    assert result.best_trial != 1 and result.trials.loc[1, "error"]

    calls = fake_pipeline(monkeypatch, diverge_at=2)
    result = helpers.search(
        "model1",
        synthetic_cars32.decoded,
        backend="optuna",
        n_trials=3,
        adam_only=False,
        epochs=2,
        heartbeat_interval=1,
        **where(tmp_path / "optuna"),
    )
    assert result.backend == "optuna"
    for hp in calls:
        assert set(hp) == common | reads[hp["optimizer_type"]]
    assert result.trials["state"].tolist() == ["complete", "diverged", "complete"]
    assert result.best_trial != 1
    with pytest.raises(ValueError, match="backend"):
        helpers.search("model1", synthetic_cars32.decoded, backend="hyperopt")


def test_skopt_replay_gives_the_uninterrupted_search(synthetic_cars32, tmp_path, monkeypatch):
    """Without its optimizer state, a search rebuilds it from the trials and asks what it would have asked."""
    fake_pipeline(monkeypatch, diverge_at=None)
    settings = {"epochs": 2, "n_initial_points": 2, "acq_func": "EI", "seed": 4}
    straight = helpers.skopt("model1", synthetic_cars32.decoded, 3, **settings, **where(tmp_path / "a"))

    resumed = where(tmp_path / "b")
    helpers.skopt("model1", synthetic_cars32.decoded, 2, **settings, **resumed)
    (folder,) = (tmp_path / "b" / "pickles" / "search-skopt").iterdir()
    (folder / "optimizer.pkl").unlink()  # as if killed between the trial file and the optimizer file
    replayed = helpers.skopt("model1", synthetic_cars32.decoded, 3, **settings, **resumed)
    cols = ["trial", "value", *S.search_space()]
    pd.testing.assert_frame_equal(replayed.trials[cols], straight.trials[cols])
    assert load_pickle(folder / "optimizer.pkl")["n_told"] == 3


# --------------------------------------------------------------------------- #
# Optuna
# --------------------------------------------------------------------------- #


GOOD = {"learning_rate": 1e-3, "weight_decay": 1e-3, "dropout": 0.1, "beta_1": 0.9, "beta_2": 0.999, "decay": 1e-7}
POOR = {**GOOD, "learning_rate": 1e-6, "dropout": 0.5}


@pytest.mark.slow
def test_optuna_prunes_a_poor_trial(synthetic_cars32, tmp_path):
    """The median pruner (the report's Optuna pruning); trial 0 is the defaults, then the enqueued ones."""
    result = helpers.optuna(
        "model1",
        synthetic_cars32.decoded,
        n_trials=4,
        epochs=2,
        patience=2,
        objective="val_loss",
        pruner="median",
        prune_startup_trials=2,
        prune_warmup_epochs=0,
        enqueue=[GOOD, {**GOOD, "beta_1": 0.85}, POOR],
        heartbeat_interval=1,
        **where(tmp_path),
    )
    states = dict(zip(result.trials["trial"], result.trials["state"]))
    assert states == {0: "complete", 1: "complete", 2: "complete", 3: "pruned"}, result.trials.to_string()
    assert result.trials.loc[0, "learning_rate"] == pytest.approx(1e-4)  # the defaults
    assert result.trials.loc[3, "learning_rate"] == pytest.approx(1e-6)
    assert result.trials.loc[3, "pruned_at_epoch"] in (1, 2)
    assert result.best_trial in (0, 1, 2)
    assert result.best_value <= result.trials.loc[0, "value"]  # val_loss: never worse than the defaults
    db = tmp_path / "pickles" / "search-optuna" / f"{result.study_name.split('-')[-1]}.db"  # <model>-<key>
    assert db.is_file()
    assert not list((db.with_suffix("") / "work").iterdir())  # pruned and finished trials cleaned up


@pytest.mark.slow
def test_hyperband_stops_a_poor_trial_after_its_first_rung(synthetic_cars32, tmp_path):
    """Hyperband (the default pruner) over 3 epochs: a trial worse than the best at 1 epoch stops there."""
    result = helpers.optuna(
        "model1",
        synthetic_cars32.decoded,
        n_trials=2,
        epochs=3,
        patience=3,
        objective="val_loss",
        enqueue=[POOR],
        heartbeat_interval=1,
        **where(tmp_path),
    )
    assert result.settings["optuna"]["pruner"] == "hyperband"
    states = dict(zip(result.trials["trial"], result.trials["state"]))
    assert states == {0: "complete", 1: "pruned"}, result.trials.to_string()
    assert result.trials.loc[0, "epochs_run"] == 3
    assert result.trials.loc[1, "pruned_at_epoch"] == 1 and result.trials.loc[1, "epochs_run"] == 1


def _study(name, tmp_path):
    import optuna

    key = name.split("-")[-1]
    url = f"sqlite:///{tmp_path / 'pickles' / 'search-optuna' / key}.db"
    return optuna.load_study(study_name=name, storage=url)


@pytest.mark.slow
def test_two_optuna_workers_share_one_sqlite_study(synthetic_cars32, tmp_path):
    from optuna.trial import TrialState

    n_trials = 2
    cmd = [
        sys.executable,
        str(HELPER),
        "optuna-worker",
        str(synthetic_cars32.cache.root),
        synthetic_cars32.decoded_key,
        str(tmp_path),
        str(n_trials),
    ]
    workers = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [w.communicate(timeout=300) for w in workers]
    for worker, (out, err) in zip(workers, outputs):
        assert worker.returncode == 0, err[-3000:]
        assert "database is locked" not in err
    summaries = [json.loads(out.strip().splitlines()[-1]) for out, _ in outputs]
    assert {s["n_trials"] for s in summaries} == {n_trials}
    study = _study(summaries[0]["study"], tmp_path)
    finished = [t for t in study.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(finished) == n_trials  # exactly the agreed number, together
    assert {t.user_attrs["pid"] for t in finished} == {s["pid"] for s in summaries}  # both worked
    assert len({param_set(t.params) for t in finished}) == n_trials  # no draw shared between workers


@pytest.mark.slow
def test_optuna_trial_killed_mid_run_is_retried(synthetic_cars32, tmp_path):
    from optuna.trial import TrialState

    n_trials = 1  # trial 0 is killed mid-run: this worker waits for it to go stale, then retries it
    proc = subprocess.run(
        [
            sys.executable,
            str(HELPER),
            "optuna-kill",
            str(synthetic_cars32.cache.root),
            synthetic_cars32.decoded_key,
            str(tmp_path),
            str(n_trials),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]

    settings = dict(helpers.OPTUNA_KILL)
    result = helpers.optuna(
        settings.pop("model"), synthetic_cars32.decoded, n_trials=n_trials, **settings, **where(tmp_path)
    )
    study = _study(result.study_name, tmp_path)
    killed = study.trials[0]
    assert killed.state == TrialState.FAIL  # marked failed through the heartbeat
    (retry,) = [t for t in study.trials if t.system_attrs.get("failed_trial") == 0]
    assert retry.state == TrialState.COMPLETE and retry.params == killed.params
    assert retry.user_attrs["resumed_from_epoch"] == 1  # the retry resumed the killed training
    finished = [t for t in study.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(finished) == n_trials and len(result.trials[result.trials["state"] == "complete"]) == n_trials


# --------------------------------------------------------------------------- #
# Default against optimal
# --------------------------------------------------------------------------- #


def test_compare_default_optimal(skopt_run, synthetic_cars32, tmp_path):
    from carclf.report import plot_comparison

    result, _, _ = skopt_run
    decoded = synthetic_cars32.decoded
    train = ImageBatches(decoded["train"], 32, shuffle=True, seed=0)
    test = ImageBatches(decoded["test"], 64, shuffle=False)
    kwargs = {
        "store": Store.at(tmp_path),
        "settings": TrainSettings(epochs=1, verbose=0, plot=False, tensorboard=False),
    }

    def best_at(trial):
        row = result.trials.loc[trial]
        return dataclasses.replace(result, best_params={k: native(row[k]) for k in result.best_params})

    # when a search's best is its trial one, the defaults, "optimal" is the default run, loaded
    frame = compare_default_optimal(["model1"], best_at(0), train, test, **kwargs)
    assert frame["train_key"].nunique() == 1 and list(frame["loaded"]) == [False, True]
    # another trial's values are another run
    result = best_at(1)
    kwargs["store"] = Store.at(tmp_path / "other")
    frame = compare_default_optimal(["model1"], result, train, test, **kwargs)
    assert list(frame["hyperparams"]) == ["default", "optimal"] and set(frame["model"]) == {"model1"}
    for metric in ("accuracy", "top3_accuracy", "precision", "recall", "auc", "loss"):
        assert frame[metric].map(math.isfinite).all()
    assert frame["train_key"].nunique() == 2 and not frame["loaded"].any()
    plot_comparison(frame)
    again = compare_default_optimal(["model1"], {"model1": result}, train, test, **kwargs)
    assert again["loaded"].all() and list(again["train_key"]) == list(frame["train_key"])


# --------------------------------------------------------------------------- #
# A weight decay that acts
# --------------------------------------------------------------------------- #


@pytest.mark.backend
def test_the_space_s_weight_decay_changes_the_weights_the_report_s_does_not():
    """One epoch (8 steps at 1e-3) of model1: the top of the space's weight decay moves the weights by more
    than 0.1% of their norm against no decay; the top of the report's range by twenty times less (its
    decay itself is 8e-7 of the weights; what is measured above that is Adam's response to it)."""
    import keras

    from carclf.models import model_spec
    from carclf.train.optimizers import make_optimizer, optimizer_settings

    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (64, 32, 32, 3)).astype("float32")
    y = keras.utils.to_categorical(rng.integers(0, 10, 64), 10)

    def trained(weight_decay):
        keras.utils.set_random_seed(0)
        model = model_spec("model1").builder((32, 32, 3), 10, {"dropout": 0.0, "spatial_dropout": 0.0})
        hp = {"learning_rate": 1e-3, "weight_decay": weight_decay, "decay": 0.0}
        optimizer, _ = make_optimizer(optimizer_settings(hp))
        model.compile(optimizer=optimizer, loss="categorical_crossentropy")
        model.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
        return np.concatenate([np.ravel(w) for w in model.get_weights()])

    plain = trained(0.0)

    def moved(weight_decay):
        return float(np.linalg.norm(trained(weight_decay) - plain) / np.linalg.norm(plain))

    acting = moved(S.SEARCH_SPACE["weight_decay"][1])
    assert acting > 1e-3
    assert moved(S.REPORT_SPACE["weight_decay"][1]) < acting / 20
