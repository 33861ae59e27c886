"""``python -m carclf`` as a user runs it: each stage, the errors, then the notebook end to end.

The stages run first, in one workspace, as a user would run them one by one;
the demo notebook then runs twice in the same workspace: the first run loads
what the commands computed and trains the other models, the second loads
everything.
"""

import contextlib
import io
import json
import os
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest

from carclf import cli, models
from carclf.models import NAMES

#: Every test here runs the command line in a fresh workspace or the demo notebook: minutes, not seconds.
pytestmark = pytest.mark.slow


def _subprocess(home, *args, timeout=300):
    env = {**os.environ, "CARCLF_HOME": str(home)}
    return subprocess.run(
        [sys.executable, "-m", "carclf", *args], env=env, capture_output=True, text=True, timeout=timeout
    )


class Ran:
    def __init__(self, code, out, err):
        self.returncode, self.stdout, self.stderr = code, out, err


def _main(home, *args):
    """One command in this process (saves the 5 s of importing TensorFlow again)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(["--root", str(home), *args])
    return Ran(code, out.getvalue(), err.getvalue())


def test_the_parser_knows_every_model_without_importing_keras():
    assert cli.MODEL_NAMES == NAMES


def test_a_missing_dataset_folder_is_a_clear_error(tmp_path):
    missing = tmp_path / "no-such-folder"
    for command in (
        ["prepare", "--profile", "full", "--dataset", str(missing)],
        ["run", "--profile", "full", "--dataset", str(missing)],
        ["train", "--model", "model1", "--dataset", str(missing)],
    ):
        result = _subprocess(tmp_path, *command)
        assert result.returncode == 2, result.stderr
        assert str(missing) in result.stderr
        assert "names.csv" in result.stderr  # says what the folder should hold
        assert "Traceback" not in result.stderr


def test_set_changes_one_setting_by_name_and_a_bad_one_is_a_one_line_error(tmp_path, capsys):
    args = cli.build_parser().parse_args(
        ["train", "--model", "model1", "--set", "evaluation.validation_fraction=0.25", "--set", "tta=True"]
    )
    args.root = str(tmp_path)
    settings = cli._workspace(args).settings
    assert settings.evaluation.validation_fraction == 0.25 and settings.evaluation.tta is True
    out_of_range = _main(tmp_path, "prepare", "--set", "evaluation.validation_fraction=0.7")
    assert out_of_range.returncode == 2 and "validation_fraction" in out_of_range.stderr
    assert "Traceback" not in out_of_range.stderr
    unknown = _main(tmp_path, "prepare", "--set", "validation_fractoin=0.2")
    assert unknown.returncode == 2 and "validation_fractoin" in unknown.stderr
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["prepare", "--set", "no-equals-sign"])
    assert "expected NAME=VALUE" in capsys.readouterr().err


@pytest.fixture(scope="module")
def stages(tmp_path_factory):
    """Every stage command, in the order a user runs them, in one fresh workspace (in-process)."""
    home = tmp_path_factory.mktemp("carclf-home")
    runs = {}
    runs["prepare"] = _main(home, "prepare")
    runs["prepare-again"] = _main(home, "prepare")
    runs["augment"] = _main(home, "augment")
    runs["evaluate-untrained"] = _main(home, "evaluate")
    runs["report-untrained"] = _main(home, "report")
    runs["predict-untrained"] = _main(home, "predict", str(_test_images(home)[0]))
    runs["search"] = _main(home, "search")
    runs["train-unknown"] = _main(home, "train", "--model", "resnet")
    runs["train"] = _main(home, "train", "--model", "model1")
    runs["train-again"] = _main(home, "train", "--model", "model1", "--hyperparams", "default")
    runs["evaluate"] = _main(home, "evaluate", "--model", "model1")
    runs["evaluate-vgg16"] = _main(home, "evaluate", "--model", "vgg16")
    runs["report"] = _main(home, "report")
    images = _test_images(home)[:3]
    runs["predict"] = _main(home, "predict", "--json", *map(str, images))
    runs["predict-text"] = _main(home, "predict", "--hyperparams", "default", str(images[0]))
    not_an_image = home / "notes.jpg"
    not_an_image.write_text("not a JPEG")
    runs["predict-bad"] = _main(home, "predict", str(home / "missing.jpg"))
    models.build("model1", (32, 32, 3), 3).save(home / "three-classes.keras")
    runs["predict-wrong-model"] = _main(
        home, "predict", "--model-file", str(home / "three-classes.keras"), str(images[0])
    )
    runs["predict-file"] = _main(
        home,
        "predict",
        "--json",
        "--top",
        "3",
        "--model-file",
        str(home / "models" / "model1" / "model1.keras"),
        str(images[0]),
    )
    runs["predict-no-model"] = _main(home, "predict", "--model-file", str(home / "none.keras"), str(images[0]))
    runs["predict-unreadable"] = _main(home, "predict", str(not_an_image))
    return home, images, runs


def _test_images(home):
    return sorted((home / "data" / "synthetic").glob("*/car_data/car_data/test/*/*.jpg"))


def test_prepare_builds_then_loads_the_decoded_images(stages):
    home, _, runs = stages
    first, second = runs["prepare"], runs["prepare-again"]
    assert first.returncode == 0, first.stderr
    assert "dataset: 10 classes, 160 train and 80 test images" in first.stdout
    assert "decoded train: (160, 80, 80, 3) uint8" in first.stdout
    assert "stage cache: 0 of 2 stages served" in first.stdout
    assert second.returncode == 0 and "stage cache: 2 of 2 stages served" in second.stdout
    assert (home / "logs" / "carclf.log").read_text().count("computing stage dataset ") == 1


def test_augment_writes_the_variants_and_the_example_grid(stages):
    home, _, runs = stages
    assert runs["augment"].returncode == 0, runs["augment"].stderr
    assert "augmented training set: 160 images, 1 per original" in runs["augment"].stdout
    assert len(list((home / "data" / "augmented").glob("*/*.jpg"))) == 160
    assert (home / "reports" / "augment_grid.png").stat().st_size > 10_000


def test_search_prints_its_trials_and_the_best_hyperparameters(stages):
    home, _, runs = stages
    search = runs["search"]
    assert search.returncode == 0, search.stderr
    assert "trial 0: the defaults" in search.stdout and "learning_rate" in search.stdout
    assert "best of each search against its trial one" in search.stdout and "val_accuracy" in search.stdout
    assert (home / "reports" / "search_convergence.png").is_file()
    assert len(list((home / "pickles" / "search").glob("*.pkl"))) == 1


def test_train_one_model_with_both_hyperparameter_sets(stages):
    home, _, runs = stages
    train, again = runs["train"], runs["train-again"]
    assert train.returncode == 0, train.stderr
    rows = [line.split() for line in train.stdout.splitlines() if line.startswith("model1")]
    assert [row[1] for row in rows] == ["default", "optimal"]
    # "loaded": the default run is trained; the optimal one too, unless the search's best was its trial one
    # (the defaults), which makes it the same run
    (result,) = (home / "pickles" / "search").glob("*/result.json")
    same = json.loads(result.read_text())["best_trial"] == 0
    assert [row[-1] for row in rows] == ["False", str(same)]
    assert len(list((home / "models" / "model1").glob("*/model1.keras"))) == (1 if same else 2)
    assert (home / "models" / "model1" / "model1.keras").is_file()  # the latest, published
    assert again.returncode == 0, again.stderr
    rows = [line.split() for line in again.stdout.splitlines() if line.startswith("model1")]
    assert [(row[1], row[-1]) for row in rows] == [("default", "True")]  # loaded, not trained again


def test_an_unknown_model_name_is_a_clear_error(stages):
    result = stages[2]["train-unknown"]
    assert result.returncode == 2
    assert "unknown model 'resnet' (did you mean 'resnet50'?)" in result.stderr
    assert "model1, alexnet, vgg16" in result.stderr


def test_commands_that_need_a_trained_model_say_what_to_run(stages):
    home, _, runs = stages
    for name in ("evaluate-untrained", "report-untrained", "predict-untrained"):
        result = runs[name]
        assert result.returncode == 2, (name, result.stderr)
        assert "no model has been trained in profile 'demo'" in result.stderr, name
        assert "train --profile demo --model NAME" in result.stderr
    vgg16 = runs["evaluate-vgg16"]
    assert vgg16.returncode == 2
    assert "model 'vgg16' has not been trained" in vgg16.stderr and "--model vgg16" in vgg16.stderr
    assert not list((home / "models").glob("vgg16/*/*.keras"))  # asking did not train it
    assert (home / "logs" / "carclf.log").read_text().count("computing stage search ") == 1


def test_evaluate_prints_the_classification_report_and_writes_the_confusion_matrix(stages):
    home, _, runs = stages
    result = runs["evaluate"]
    assert result.returncode == 0, result.stderr
    assert "on 80 test images" in result.stdout
    assert "macro avg" in result.stdout and "weighted avg" in result.stdout
    assert "most confused pairs:" in result.stdout
    label = result.stdout.split(" with the ")[1].split()[0]
    assert (home / "reports" / f"confusion_model1_{label}.png").is_file()
    per_class = pd.read_csv(home / "reports" / f"classification_model1_{label}.csv")
    assert len(per_class) == 10 + 3  # the classes, accuracy, macro and weighted averages


def test_report_covers_the_trained_runs_and_lists_the_others(stages):
    home, _, runs = stages
    result = runs["report"]
    assert result.returncode == 0, result.stderr
    table = pd.read_csv(home / "reports" / "comparison.csv")
    assert list(zip(table["model"], table["hyperparams"])) == [("model1", "default"), ("model1", "optimal")]
    assert table["loaded"].all()  # read from the cache, nothing trained
    assert "not trained yet: alexnet (default), alexnet (optimal)" in result.stdout
    for plot in ("comparison.png", "history_model1_default.png", "history_model1_optimal.png", "timings.png"):
        assert (home / "reports" / plot).is_file(), plot
    timings = pd.read_csv(home / "reports" / "timings.csv", header=[0, 1], index_col=0)
    assert timings.loc["model1", ("default", "wall_min")] > 0  # the training's minutes, not a cache load's


def test_evaluate_and_report_say_how_the_figures_were_obtained(stages):
    home, _, runs = stages
    evaluate, report = runs["evaluate"].stdout, runs["report"].stdout
    for text in (evaluate, report):
        assert "protocol: validation: 10% of the training set; box crops (margin 0.08), stretch to 80x80" in text
        assert "validation: 20 training images held out" in text and "80 test images are read once" in text
    assert "test accuracy" in evaluate and "(95% interval)" in evaluate
    for kind in ("make_model_accuracy", "make_accuracy", "same model, other year", "same make, other model"):
        assert kind in evaluate
    assert "McNemar" in report
    table = pd.read_csv(home / "reports" / "comparison.csv")
    assert (table["validation"] == "split").all() and table["kept_epoch"].ge(1).all()
    assert table["val_accuracy"].between(0, 1).all() and table["val_loss"].gt(0).all()
    assert (table["accuracy_low"] <= table["accuracy"]).all() and (table["accuracy"] <= table["accuracy_high"]).all()
    assert table["best"].sum() == 1 and table.loc[table["best"], "val_accuracy"].iloc[0] == table["val_accuracy"].max()
    assert table.loc[table["hyperparams"] == "optimal", "p_vs_default"].between(0, 1).all()


def test_predict_gives_the_five_most_probable_classes_of_each_image(stages):
    home, images, runs = stages
    result = runs["predict"]
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    assert list(answer) == [str(image) for image in images]
    class_names = set(pd.read_csv(next((home / "data" / "synthetic").glob("*/names.csv")), header=None)[0])
    for image, top in answer.items():
        assert len(top) == 5
        assert {entry["class"] for entry in top} <= class_names and len({entry["class"] for entry in top}) == 5
        probabilities = [entry["probability"] for entry in top]
        assert probabilities == sorted(probabilities, reverse=True)
        assert 0 < sum(probabilities) <= 1 + 1e-6
    from_file = runs["predict-file"]
    assert from_file.returncode == 0, from_file.stderr
    assert [len(top) for top in json.loads(from_file.stdout).values()] == [3]
    text = runs["predict-text"]
    assert text.returncode == 0, text.stderr
    assert text.stdout.splitlines()[0] == str(images[0]) and text.stdout.splitlines()[5].lstrip().startswith("5. ")


def test_predict_names_a_missing_or_unreadable_image_or_model_file(stages):
    home, _, runs = stages
    missing, unreadable = runs["predict-bad"], runs["predict-unreadable"]
    assert missing.returncode == 2 and f"{home / 'missing.jpg'}: no such image file" in missing.stderr
    assert unreadable.returncode == 2 and f"{home / 'notes.jpg'}: not an image OpenCV can read" in unreadable.stderr
    wrong, absent = runs["predict-wrong-model"], runs["predict-no-model"]
    assert wrong.returncode == 2
    assert (
        f"{home / 'three-classes.keras'}: the model has 3 outputs but the dataset of profile 'demo' has 10"
        in wrong.stderr
    )
    assert absent.returncode == 2 and f"{home / 'none.keras'}: no such model file" in absent.stderr


def _outputs(notebook):
    cells = json.loads(notebook.read_text())["cells"]
    text = []
    for cell in cells:
        for out in cell.get("outputs", []):
            assert out["output_type"] != "error", out
            text.append(out.get("text", "") if isinstance(out.get("text"), str) else "".join(out.get("text", [])))
            text.append("".join(out.get("data", {}).get("text/plain", "")))
    return "\n".join(text)


def _served(text):
    served = [line for line in text.splitlines() if line.startswith("stage cache:")]
    assert served, text[-2000:]
    done, total = (int(v) for v in served[-1].split()[2:5:2])
    return done, total


def test_the_demo_notebook_runs_end_to_end_then_from_the_cache(stages):
    home, _, _ = stages
    start = time.perf_counter()
    first = _subprocess(home, "demo", timeout=1500)
    first_s = time.perf_counter() - start
    assert first.returncode == 0, first.stderr[-3000:]
    executed = home / "reports" / "stanford_cars_demo.ipynb"
    assert executed.is_file() and executed.with_suffix(".html").is_file()
    done, total = _served(_outputs(executed))
    assert 0 < done < total  # what the commands computed loaded; the other models trained
    displays = [
        out
        for cell in json.loads(executed.read_text())["cells"]
        for out in cell.get("outputs", [])
        if out["output_type"] == "display_data"
    ]
    assert displays and all("".join(out["data"].get("text/plain", "")).strip() for out in displays)  # none empty
    for name in NAMES:
        for label in ("default", "optimal"):
            assert (home / "reports" / f"history_{name}_{label}.png").is_file()
    for plot in ("comparison.png", "timings.png", "confusion_best.png", "search_convergence.png", "augment_grid.png"):
        assert (home / "reports" / plot).is_file(), plot
    table = pd.read_csv(home / "reports" / "comparison.csv")
    assert sorted(table["model"].unique()) == sorted(NAMES)
    assert len(table) == 2 * len(NAMES) and set(table["hyperparams"]) == {"default", "optimal"}
    assert table["accuracy"].between(0, 1).all()
    assert table.set_index("model")["loaded"].groupby(level=0).all().to_dict() == {
        name: name == "model1" for name in NAMES
    }  # only the command line's model1 runs were loaded

    start = time.perf_counter()
    second = _subprocess(home, "demo", timeout=1500)
    second_s = time.perf_counter() - start
    assert second.returncode == 0, second.stderr[-3000:]
    done, total = _served(_outputs(executed))
    assert done == total > 0  # every stage loaded, none recomputed
    assert second_s < first_s / 2, (first_s, second_s)
    assert np.allclose(pd.read_csv(home / "reports" / "comparison.csv")["accuracy"], table["accuracy"])

    # After a kernel restart: the set-up cells, then every other cell in reverse order, so that none can
    # lean on a variable an earlier cell defined; each must load what it needs from the cache.
    text = _restarted_kernel_runs_cells_backwards(home)
    done, total = _served(text)
    assert done == total > 0


def _restarted_kernel_runs_cells_backwards(home):
    import nbformat
    from nbclient import NotebookClient

    from carclf.paths import PROJECT_ROOT
    from carclf.workflow import NOTEBOOK

    source = PROJECT_ROOT / NOTEBOOK
    notebook = nbformat.read(source, as_version=4)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    setup = next(i for i, cell in enumerate(code) if "Workspace.open" in cell.source) + 1
    summary = code[-1]
    assert "workflow.summary(ws)" in summary.source
    cells = [
        code[0],  # the parameters cell, so a parameter added to it is defined here too
        nbformat.v4.new_code_cell(f"profile, root = 'demo', {str(home)!r}"),
        *code[1:setup],
        *reversed(code[setup:-1]),
        summary,
    ]
    notebook.cells = cells
    NotebookClient(
        notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(source.parent)}}
    ).execute()
    out = home / "reports" / "restarted.ipynb"
    nbformat.write(notebook, out)
    return _outputs(out)


def test_predict_crops_a_dataset_image_like_training_and_agrees_with_evaluate(stages):
    from carclf import workflow

    home, _, _ = stages
    ws = workflow.Workspace.open("demo", root=home)
    row = workflow.trained_run(ws, "model1", "default")
    evaluation = workflow.evaluate_run(ws, row)
    frame = workflow.load_dataset(ws).value
    test = frame[frame["split"] == "test"].reset_index(drop=True)
    picked = [0, 17, 41]
    table = workflow.predict(ws, test["path"].iloc[picked], "model1", "default", top=10)
    probabilities = table.pivot(index="input", columns="class_id", values="probability").loc[test["path"].iloc[picked]]
    np.testing.assert_allclose(probabilities.to_numpy(), evaluation.probabilities[picked], rtol=1e-4, atol=1e-6)
