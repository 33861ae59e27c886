"""The workflow's searches: each model searched for itself, its optimal run trained with its own result;
the modern recipe's trials train the way its runs do."""

from types import SimpleNamespace

import pytest

import carclf.train as T
from carclf import workflow
from carclf.paths import Store
from carclf.settings import SettingsError


def test_each_model_is_searched_for_itself_and_its_optimal_run_uses_its_own(tmp_path, monkeypatch):
    ws = workflow.Workspace.open(
        "demo",
        root=tmp_path,
        models=("model1", "alexnet"),
        image_size=72,  # AlexNet's smallest is 67
        n_classes=3,
        per_class_train=4,
        per_class_test=2,
        augmentation="none",
        epochs=1,
        hyperparams_by_model={"alexnet": {"x_trainable": "all", "learning_rate": 3e-4}},
        **{
            "search.per_model": True,
            "search.n_trials": 1,  # trial one only: the defaults, which differ between the two models
            "search.epochs": 1,
            "search.validation_fraction": 0.5,
            "evaluation.validation_fraction": 0.5,
        },
    )
    searches = workflow.search_hyperparameters(ws)
    assert list(searches) == ["model1", "alexnet"]
    assert searches["model1"].key != searches["alexnet"].key
    for name, result in searches.items():
        assert result.model_name == name and result.best_trial == 0
        assert result.best_params["learning_rate"] == ws.settings.hyperparams_for(name).learning_rate
    summary = workflow.search_summary(searches)
    assert list(summary["model"]) == ["model1", "alexnet"] and (summary["best"] >= summary["defaults"]).all()

    calls = []
    original = T.run_model_pipeline

    def spy(builder, name, hyperparams, *args, **kwargs):
        calls.append((name, kwargs.get("timer_group"), dict(hyperparams), kwargs.get("settings")))
        return original(builder, name, hyperparams, *args, **kwargs)

    monkeypatch.setattr(T, "run_model_pipeline", spy)
    table = workflow.train_models(ws)
    assert sorted(zip(table["model"], table["hyperparams"])) == [
        ("alexnet", "default"),
        ("alexnet", "optimal"),
        ("model1", "default"),
        ("model1", "optimal"),
    ]
    optimal = {name: hp for name, label, hp, _ in calls if label == "optimal"}
    assert optimal["model1"]["learning_rate"] == 1e-3 and optimal["alexnet"]["learning_rate"] == 3e-4
    for name, hp in optimal.items():
        assert hp.items() >= searches[name].best_params.items()

    # a searched training setting reaches the optimal run's settings, not its hyperparameters
    calls.clear()
    workflow.train_model(ws, "model1", ("optimal",), {"learning_rate": 1e-3, "label_smoothing": 0.2})
    ((_, label, hp, settings),) = calls
    assert label == "optimal" and settings.label_smoothing == 0.2 and "label_smoothing" not in hp

    # the report's practice by name: one search, reused for every model
    ws.update(**{"search.per_model": False, "search.model": "model1"})
    assert workflow.search_model(ws, "alexnet").key == searches["model1"].key
    assert list(workflow.search_hyperparameters(ws)) == ["model1"]

    ws.update(**{"search.per_model": True, "search.models": ("model1",)})
    with pytest.raises(SettingsError, match=r"model 'alexnet' is not searched in profile 'demo'"):
        workflow.train_model(ws, "alexnet", ("optimal",))


def test_modern_trials_train_with_the_recipe_and_its_knobs(synthetic_cars32, tmp_path, monkeypatch, caplog):
    """Under the modern recipe a trial trains in two phases (a pretrained base), with warmup and cosine,
    label smoothing and the online crop; those knobs are searched, the defaults are trial one."""
    from carclf.search import objective, run_search
    from carclf.settings import profile

    full = profile("full", image_size=32)
    hp = full.hyperparams_for("resnet50").as_dict()
    ctx = objective.prepare(
        "resnet50", synthetic_cars32.decoded, full.search, hyperparams=hp, training=full.train, augment=full.augment
    )
    assert ctx.training.two_phase and ctx.training.head_epochs == 3 and ctx.training.epochs == 5
    assert {"label_smoothing", "warmup", "finetune_lr_scale", "crop_scale", "weight_decay"} <= set(ctx.space)
    assert "decay" not in ctx.space and ctx.space["optimizer_type"] == ["AdamW"]
    assert {k: ctx.defaults[k] for k in ("label_smoothing", "warmup", "finetune_lr_scale", "crop_scale")} == {
        "label_smoothing": 0.1,
        "warmup": 0.1,
        "finetune_lr_scale": 0.1,
        "crop_scale": 0.35,
    }
    assert ctx.defaults["weight_decay"] == 0.05 and not ctx.widened

    seen = []

    def fake(builder, name, hyperparams, input_shape, num_classes, train_gen, val_gen, settings=None, **kwargs):
        crop = train_gen.augment.get_config()["pipeline"][0]
        seen.append((dict(hyperparams), settings, crop))
        return SimpleNamespace(
            history={"val_accuracy": [0.1 + len(seen) / 100], "val_loss": [2.0], "loss": [2.0]},
            epochs_run=1,
            wall_min=0.5,
            cpu_min=0.0,
            key=f"fake{len(seen)}",
            resumed_from_epoch=None,
        )

    monkeypatch.setattr(T, "run_model_pipeline", fake)
    caplog.set_level("INFO", logger="carclf.search")
    settings = full.search.override(
        n_trials=2, epochs=1, subsample=None, input_size=None, **{"skopt.n_initial_points": 1}
    )
    result = run_search(
        "model1",
        synthetic_cars32.decoded,
        settings,
        hyperparams=full.hyperparams_for("model1").as_dict(),
        training=full.train,
        augment=full.augment,
        store=Store.at(tmp_path),
    )
    (hp0, train0, crop0), (hp1, train1, crop1) = seen
    assert not train0.two_phase  # model1 has no pretrained base to keep
    assert train0.label_smoothing == 0.1 and train0.schedule == "warmup_cosine" and train0.ema
    assert crop0[0] == "RandomResizedCrop" and tuple(crop0[1]["scale"]) == (0.35, 1.0)
    assert "label_smoothing" not in hp1 and "crop_scale" not in hp1
    row = result.trials.loc[1]
    assert train1.label_smoothing == pytest.approx(row["label_smoothing"])
    assert tuple(crop1[1]["scale"])[0] == pytest.approx(row["crop_scale"])
    assert result.best_trial == 1  # the fake's accuracy rises with each trial
    # after trial one, what the rest will take at most: 1 trial of 1 epoch at 0.5 min an epoch
    assert "model1: trial 1 took 0.5 min (0.50 min an epoch); the other 1 trials: at most 0.5 min" in caplog.text
    assert "model1: trial 0 (the defaults) val_accuracy 0.11, best so far 0.11" in caplog.text
