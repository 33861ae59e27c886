"""carclf.settings: typed, checked settings; overrides by name; keys; the notebook's memo follows them."""

import contextlib
import io
import json
from dataclasses import FrozenInstanceError, replace

import pytest

from carclf import cli
from carclf.cache import config_hash
from carclf.settings import (
    DEMO,
    FULL,
    MODEL_NAMES,
    PROFILES,
    AugmentSettings,
    DecodeSettings,
    SearchSettings,
    SettingsError,
    TrainSettings,
    flatten,
    profile,
    setting_names,
)


def test_the_demo_profile_is_the_full_one_with_its_differences():
    assert set(PROFILES) == {"demo", "full"}
    assert FULL.data.dataset == "data/stanford_cars" and DEMO.data.dataset == "synthetic"
    assert FULL.data.decode.image_size == (224, 224) and DEMO.data.decode.image_size == (80, 80)
    assert FULL.hyperparams.weights == "imagenet" and DEMO.hyperparams.weights is None
    assert FULL.search.model == "resnet50" and DEMO.search.model == "model1"
    assert FULL.recipe == "modern" and DEMO.recipe == "report"
    report = flatten(profile("full", recipe="report"))
    same = {k for k, v in flatten(DEMO).items() if report[k] == v}
    assert {"augment.augmentation", "data.decode.crop", "train.callbacks.early_stopping.patience"} <= same
    assert DEMO.models == FULL.models == MODEL_NAMES
    with pytest.raises(FrozenInstanceError):
        DEMO.train.epochs = 3


def test_overrides_by_plain_and_dotted_name():
    s = profile("full", epochs=30, image_size=160, **{"search.backend": "optuna", "search.optuna.pruner": None})
    assert s.train.epochs == 30 and s.data.decode.image_size == (160, 160)
    assert s.search.backend == "optuna" and s.search.optuna.pruner is None
    assert s.search.epochs == FULL.search.epochs  # "epochs" is train.epochs; the search's needs its group
    assert profile("demo", augmentation="online").augment.augmentation == "online"
    off = profile("demo", **{"train.callbacks.early_stopping": None})
    assert off.train.callbacks.early_stopping is None
    back = off.override(**{"train.callbacks.early_stopping.patience": 8})  # switched on again, with its defaults
    assert (
        back.train.callbacks.early_stopping.patience == 8 and back.train.callbacks.early_stopping.monitor == "val_loss"
    )
    assert profile("demo", callbacks={"reduce_lr": None}).train.callbacks.reduce_lr is None
    assert DEMO.train.epochs == 1  # the profile itself is unchanged


def test_an_unknown_name_lists_the_settings_and_suggests_one():
    with pytest.raises(SettingsError, match=r"unknown setting 'epoch' \(did you mean 'epochs'\?\)") as error:
        profile("demo", epoch=3)
    assert "search.skopt.n_initial_points" in str(error.value) and "train.batch_size" in str(error.value)
    with pytest.raises(SettingsError, match="unknown setting 'search.skopt.n_initial'"):
        profile("demo", **{"search.skopt.n_initial": 3})
    with pytest.raises(SettingsError, match="unknown profile 'quick'"):
        profile("quick")
    assert "patience" not in setting_names()  # ambiguous (early stopping and ReduceLROnPlateau): dotted only
    assert {"epochs", "image_size", "train.callbacks.reduce_lr.patience"} <= set(setting_names())


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"epochs": 0}, "train.epochs must be an integer >= 1, got 0"),
        ({"epochs": 2.5}, "train.epochs must be an integer >= 1, got 2.5"),
        ({"image_size": -5}, r"data.decode.image_size must be an integer or a \(height, width\) pair"),
        ({"crop": "tight"}, "data.decode.crop must be one of 'box', 'full', got 'tight'"),
        ({"search.validation_fraction": 1.5}, r"search.validation_fraction must be a number in \(0.0, 0.5\]"),
        ({"search.model": "resnet"}, r"search.model must be one of .* \(did you mean 'resnet50'\?\), got 'resnet'"),
        ({"models": ["model1", "model1"]}, "models must be a non-empty list of distinct model names"),
        ({"hyperparams.dropout": 1.0}, r"hyperparams.dropout must be a number in \[0.0, 1.0\), got 1.0"),
        ({"hyperparams_by_model": {"vgg16": {"dropot": 0.1}}}, "unknown hyperparameters \\['dropot'\\]"),
        ({"train.callbacks.reduce_lr.factor": 2}, r"train.callbacks.reduce_lr.factor must be a number in \(0.0, 1.0\)"),
    ],
)
def test_a_wrong_value_names_the_setting_what_is_allowed_and_what_it_got(changes, message):
    with pytest.raises(SettingsError, match=message):
        profile("demo", **changes)


def test_values_take_their_normal_form():
    assert DecodeSettings(image_size=64).image_size == (64, 64)
    assert profile("demo", **{"hyperparams.fc_layers": [256, 128]}).hyperparams.fc_layers == (256, 128)
    assert profile("demo", **{"hyperparams.optimizer_type": "adam"}).hyperparams.optimizer_type == "Adam"
    assert DEMO.hyperparams_for("model1").x_trainable == "all" and DEMO.hyperparams_for("vgg16").x_trainable == "none"
    assert DEMO.hyperparams_for("vgg16").as_dict()["fc_layers"] == [512]  # the report's dict


def test_how_to_run_stays_out_of_stage_keys():
    assert config_hash(TrainSettings(verbose=0, plot=False)) == config_hash(TrainSettings(verbose=2))
    assert config_hash(TrainSettings(epochs=3)) != config_hash(TrainSettings(epochs=4))
    skopt = SearchSettings(backend="skopt")
    assert config_hash(replace(skopt, keep_trials=True)) == config_hash(skopt)
    assert config_hash(AugmentSettings(n_variants=2)) != config_hash(AugmentSettings())


def test_a_search_sees_only_its_own_backends_settings(synthetic_cars32):
    from carclf.search.objective import prepare

    settings = SearchSettings(backend="optuna", **{"skopt": {"n_initial_points": 3}})
    ctx = prepare("model1", synthetic_cars32.decoded, settings, store=None)
    assert "optuna" in ctx.identity and "skopt" not in ctx.identity
    other = prepare("model1", synthetic_cars32.decoded, replace(settings, skopt=SearchSettings().skopt))
    assert other.key == ctx.key  # the skopt group does not reach an Optuna search, nor its key


def _main(*args):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(list(args))
    return code, out.getvalue(), err.getvalue()


def test_the_command_line_turns_its_flags_into_overrides(tmp_path, monkeypatch):
    from carclf import workflow

    seen = {}

    def fake_train_model(ws, name, labels):
        seen["settings"] = ws.settings
        raise workflow.NotTrainedError("stop here")

    monkeypatch.setattr(workflow, "train_model", fake_train_model)
    code, _, err = _main(
        "--root",
        str(tmp_path),
        "train",
        "--model",
        "model1",
        "--image-size",
        "48",
        "--epochs",
        "3",
        "--hyperparams",
        "default",
    )
    assert code == 2 and "stop here" in err
    assert seen["settings"].data.decode.image_size == (48, 48) and seen["settings"].train.epochs == 3

    code, _, err = _main("--root", str(tmp_path), "train", "--model", "model1", "--image-size", "0")
    assert code == 2 and err.count("\n") == 1
    assert err.startswith("carclf: data.decode.image_size must be") and "got 0" in err


def test_the_notebook_memo_follows_changed_settings(tmp_path):
    """In one kernel: decode at one size, change it, decode again; generators after a batch-size change."""
    import nbformat
    from nbclient import NotebookClient

    cells = [
        "from carclf import workflow\n"
        f"ws = workflow.Workspace.open('demo', root={str(tmp_path)!r}, augmentation='none', validation='test',\n"
        "                              n_classes=3, per_class_train=2, per_class_test=1, image_size=32)",
        "first = workflow.decode_images(ws)['train'].image_size\n"
        "ws.update(image_size=40)\n"
        "second = workflow.decode_images(ws)['train'].image_size",
        "before = workflow.generators(ws).train.batch_size\n"
        "ws.update(batch_size=4)\n"
        "after = workflow.generators(ws).train.batch_size",
        "import json\nprint(json.dumps({'sizes': [first, second], 'batches': [before, after]}))",
    ]
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
    NotebookClient(notebook, timeout=300, kernel_name="python3").execute()
    printed = json.loads(notebook.cells[-1].outputs[0]["text"])
    assert printed == {"sizes": [[32, 32], [40, 40]], "batches": [16, 4]}
