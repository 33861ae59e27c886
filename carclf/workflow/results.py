"""Reading what was trained: the comparison of the finished runs, one run's evaluation, predictions."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from carclf.cache import NotComputedError
from carclf.settings import LABELS, SettingsError
from carclf.workflow.stages import (
    _check_labels,
    generators,
    load_dataset,
    stored,
    train_model,
    train_models,
)

__all__ = [
    "EXPENSIVE_STAGES",
    "ImageFileError",
    "ModelFileError",
    "NotTrainedError",
    "evaluate_best",
    "evaluate_run",
    "histories",
    "model_path",
    "predict",
    "test_probabilities",
    "trained_run",
    "trained_runs",
    "with_uncertainty",
]

#: The stages that cost hours; commands that only read results never start them.
EXPENSIVE_STAGES = ("search", "search-", "train-")


class NotTrainedError(LookupError):
    """A command needs a trained model (or a finished search) that the stage cache does not hold."""


class ImageFileError(ValueError):
    """An image given to :func:`predict` is missing or is not an image OpenCV can read."""


class ModelFileError(ValueError):
    """A model file given to :func:`predict` is missing or does not fit the profile's classes."""


def trained_runs(ws, names=None, labels=LABELS):
    """The comparison table of the runs trained so far, read from the stage cache.

    Nothing is searched or trained: runs that have not finished are left out
    and listed in ``table.attrs["missing"]`` as ``(model, label)`` pairs.
    """
    import pandas as pd

    labels = _check_labels(labels)
    rows, missing, chosen = [], [], []
    with ws.cache.only_cached(*EXPENSIVE_STAGES):
        for name in names or ws.settings.models:
            for label in labels:
                row, note = _find_run(ws, name, label)
                if row is None:
                    missing.append((name, label))
                    continue
                rows.append(row)
                if note:
                    chosen.append(note)
    table = pd.concat(rows, ignore_index=True) if rows else pd.DataFrame(columns=["model", "hyperparams"])
    table.attrs["missing"] = missing
    table.attrs["chosen"] = chosen
    return table


def _find_run(ws, name, label):
    """``(one-row frame or None, note)``: the run of the current settings when it is stored (an optimal run
    needs its search stored too), else the latest stored run of ``name`` / ``label``
    (:func:`carclf.workflow.runs.stored_run`)."""
    import pandas as pd

    from carclf.workflow.runs import stored_run

    # not trained yet, or (an optimal run) not searched in this profile
    missing = (NotComputedError, SettingsError) if label == "optimal" else (NotComputedError,)
    try:
        frame = train_model(ws, name, (label,))
    except missing:
        pass
    else:
        return frame, stored_run(ws, name, label, exact_key=frame["train_key"].iloc[0])[1]
    row, note = stored_run(ws, name, label)
    return (None, None) if row is None else (pd.DataFrame([row]), note)


def _not_trained(ws, what, name=None):
    # ``what`` is the sentence's subject and verb: "no model has been", "model 'vgg16' has not been".
    return NotTrainedError(
        f"{what} trained in profile {ws.profile!r} under {ws.paths.root}: run "
        f"`python -m carclf --root {ws.paths.root} train --profile {ws.profile} --model {name or 'NAME'}` "
        f"(or the notebook) first; `python -m carclf report` lists the runs that are trained"
    )


def trained_run(ws, name=None, label=None, metric=None):
    """The comparison row of one trained run: ``name`` with ``label``, or the best trained run by ``metric``
    (default: validation accuracy, or test accuracy under the report's protocol).

    Raises :class:`NotTrainedError` when no such run has finished.
    """
    from carclf.evaluate import selection_metric

    table = trained_runs(ws, None if name is None else [name], LABELS if label is None else (label,))
    if table.empty:
        what = (
            "no model has been"
            if name is None
            else f"model {name!r}{f' ({label} hyperparameters)' if label else ''} has not been"
        )
        raise _not_trained(ws, what, name)
    row = table.loc[table[metric or selection_metric(table)].astype(float).idxmax()].copy()
    notes = [
        note for note in table.attrs.get("chosen", []) if note.startswith(f"{row['model']} ({row['hyperparams']})")
    ]
    row.attrs["chosen"] = notes[0] if notes else None
    return row


def histories(ws, table=None):
    """The per-epoch history of every run in the comparison table, keyed by (model, hyperparams)."""
    import pandas as pd

    table = stored(ws, "comparison", train_models) if table is None else table
    return {
        (row.model, row.hyperparams): pd.read_csv(ws.paths.models / row.model / row.train_key / "history.csv")
        for row in table.itertuples()
    }


def model_path(ws, row):
    """The saved ``.keras`` file of a comparison row's run."""
    return ws.paths.models / row["model"] / row["train_key"] / f"{row['model']}.keras"


def test_probabilities(ws, row):
    """The test predictions of a comparison row's run: those its training stored when it read the test set
    once, or with ``evaluation.tta`` those of the image and its horizontal flip (a cached stage)."""
    import numpy as np

    from carclf.evaluate import predict_probabilities
    from carclf.generators import describe_generator
    from carclf.train import load_model

    test = _test_generator(ws, row)
    stored_path = ws.paths.models / row["model"] / row["train_key"] / "test_probabilities.npy"
    if not ws.settings.evaluation.tta and stored_path.is_file():
        return np.load(stored_path)
    tta = ws.settings.evaluation.tta
    config = {"train_key": row["train_key"], "test": describe_generator(test), "tta": tta}

    def compute():
        return predict_probabilities(load_model(_checked_model_file(ws, row), compile=False), test, tta=tta)

    return ws.cache.run(f"tta-{row['model']}", config, compute).value


def with_uncertainty(ws, table):
    """The comparison table with intervals and paired tests (:func:`carclf.evaluate.add_uncertainty`)."""
    from carclf.evaluate import add_uncertainty, labels_in_order

    if table.empty:
        return table
    probabilities = [test_probabilities(ws, row) for _, row in table.iterrows()]
    y_true = labels_in_order(generators(ws).test)
    out = add_uncertainty(table, probabilities, y_true, ws.settings.evaluation, ws.settings.seed)
    out.attrs.update(table.attrs)
    return out


def evaluate_run(ws, row):
    """The report's step 15 for one run (a comparison row), from its test predictions: classification
    report, confusion matrix, per-class accuracy, the kinds of mistakes, the most-confused pairs."""
    from carclf.evaluate import evaluate_predictions, labels_in_order

    class_names = stored(ws, "dataset", load_dataset).value.attrs["class_names"]
    y_true = labels_in_order(_test_generator(ws, row))
    return evaluate_predictions(y_true, test_probabilities(ws, row), class_names)


def _test_generator(ws, row):
    """The test batches the run was tested on (its own decoded test images, at its input size), or the
    profile's when its note does not say."""
    from carclf.decoded import open_decoded
    from carclf.generators import ImageBatches

    test = (ws.cache.meta(f"train-{row['model']}", row["train_key"]) or {}).get("config", {}).get("test", {})
    decoded = test.get("split", {}).get("decoded") or []
    current = generators(ws).test
    if (
        len(decoded) != 1
        or decoded == current.identity()["split"]["decoded"]
        or not ws.cache.exists("decoded", decoded[0])
    ):
        return current
    split = open_decoded(ws.cache, decoded[0])["test"]
    return ImageBatches(split, test.get("batch_size", ws.settings.train.batch_size), shuffle=False)


def _checked_model_file(ws, row):
    """The run's model file, whole; else :class:`ModelFileError` saying how to get it back."""
    from carclf.cache import DamagedFileError
    from carclf.train.saving import check_model_file

    try:
        return check_model_file(model_path(ws, row))
    except DamagedFileError as exc:
        raise ModelFileError(
            f"{exc.path}: {exc.detail}; train the run again: `python -m carclf --root {ws.paths.root} train "
            f"--profile {ws.profile} --model {row['model']} --hyperparams {row['hyperparams']}`"
        ) from None


def evaluate_best(ws, table=None, metric=None):
    """:func:`evaluate_run` for the best run of the comparison table (by validation accuracy, or by test
    accuracy under the report's protocol); ``(model, hyperparams, evaluation)``."""
    from carclf.evaluate import selection_metric

    table = stored(ws, "comparison", train_models) if table is None else table
    best = table.loc[table[metric or selection_metric(table)].astype(float).idxmax()]
    return best["model"], best["hyperparams"], evaluate_run(ws, best)


def predict(ws, images, name=None, label=None, model_file=None, top=5, box=None):
    """The ``top`` most probable classes of each image file, from a saved model.

    The model is ``model_file`` if given, else the trained run ``name`` /
    ``label`` (default: the best trained run). Each image is cropped as in
    training: to ``box`` (x1, y1, x2, y2) when given, to its annotated box
    when it is an image of the profile's dataset, else not at all; then
    resized to the model's input. An image from outside the dataset is turned
    upright by its EXIF orientation first (a phone photo); the dataset's keep
    their raw pixels, which their boxes refer to. Returns
    :func:`carclf.evaluate.top_k`'s table, ``input`` being the file path.
    """
    import numpy as np

    from carclf.cache import DamagedFileError
    from carclf.decoded import decode_image
    from carclf.evaluate import top_k
    from carclf.images import ImageError
    from carclf.settings import check_positive_int
    from carclf.train import load_model
    from carclf.train.saving import check_model_file

    top = check_positive_int("top", top)
    images = [Path(image) for image in images]
    for image in images:
        if not image.is_file():
            raise ImageFileError(f"{image}: no such image file; give the paths of JPEG or PNG files")
    chosen = None
    if model_file is None:
        row = trained_run(ws, name, label)
        model_file, chosen = _checked_model_file(ws, row), row.attrs.get("chosen")
    elif not Path(model_file).is_file():
        raise ModelFileError(
            f"{model_file}: no such model file; give a .keras file saved by carclf (models/<name>/<name>.keras)"
        )
    try:
        model = load_model(check_model_file(model_file), compile=False)
    except DamagedFileError as exc:
        raise ModelFileError(f"{exc}; give a .keras file saved by carclf (models/<name>/<name>.keras)") from None
    frame = stored(ws, "dataset", load_dataset).value
    class_names = frame.attrs["class_names"]
    if model.output_shape[-1] != len(class_names):
        raise ModelFileError(
            f"{model_file}: the model has {model.output_shape[-1]} outputs but the dataset of "
            f"profile {ws.profile!r} has {len(class_names)} classes; give the --profile and "
            f"--dataset it was trained on"
        )
    annotated = {
        Path(path).resolve(): (x1, y1, x2, y2)
        for path, x1, y1, x2, y2 in frame[["path", "x1", "y1", "x2", "y2"]].itertuples(index=False)
    }
    decode = replace(ws.settings.data.decode, image_size=tuple(int(v) for v in model.input_shape[1:3]))
    arrays = []
    for image in images:
        known = annotated.get(image.resolve())
        try:
            arrays.append(decode_image(image, box or known, decode, orient=known is None))
        except ImageError as exc:
            what = "not an image OpenCV can read" if exc.unidentified else "a damaged image"
            raise ImageFileError(f"{image}: {what} ({exc.detail}); give JPEG or PNG files") from exc
        except ValueError as exc:  # an empty crop box
            raise ImageFileError(f"{image}: {exc}") from exc
    probabilities = model.predict(np.stack(arrays).astype("float32"), verbose=0)
    table = top_k(probabilities, class_names, k=top, index=[str(image) for image in images])
    table.attrs["chosen"] = chosen  # which stored run answered, when there was a choice
    return table
