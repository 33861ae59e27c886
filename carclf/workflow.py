"""The notebook's stages as calls: each loads its cached result or computes it.

A :class:`Workspace` ties one run together: the folders, the stage cache, the
stage timer and the profile's settings. The notebook and ``python -m carclf``
call the same functions, so a stage re-run from either place is served from
the same cache.
"""

import contextlib
import logging
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from carclf.cache import StageCache, atomic_write, config_hash
from carclf.config import PROFILES, Paths
from carclf.runlog import StageTimer, setup_logging

log = logging.getLogger("carclf.workflow")


@dataclass
class Workspace:
    """Paths, cache, timer and settings of one run profile."""

    profile: str
    settings: dict
    paths: Paths
    cache: StageCache
    timer: StageTimer
    results: dict = field(default_factory=dict)

    @classmethod
    def open(cls, profile="demo", root=None, **overrides):
        """Set up the folders and logging for ``profile`` ("demo" or "full").

        ``overrides`` replace the profile's settings (``dataset=PATH``,
        ``image_size=(128, 128)``...).
        """
        if profile not in PROFILES:
            raise ValueError(f"unknown profile {profile!r}: choose one of {sorted(PROFILES)}")
        paths = Paths.default(root).make()
        setup_logging(paths.logs)
        settings = {**PROFILES[profile], **overrides}
        log.info("profile %s, results under %s", profile, paths.root)
        return cls(profile, settings, paths, StageCache(paths.pickles), StageTimer(paths.logs / "timings.csv"))


@contextmanager
def _timed(ws, name):
    """Time a cached stage; a run that only loaded results is recorded as "cached", so the
    execution-time table keeps the minutes of the run that computed them."""
    from carclf.cache import NotComputedError

    before = len(ws.cache.events)
    with ws.timer.stage(name) as run:
        try:
            yield
        except NotComputedError:
            run.status = "missing"  # a read-only command looked for it: nothing ran
            raise
        if all(how == "loaded" for *_, how in ws.cache.events[before:]):
            run.status = "cached"


def _stored(ws, key, stage):
    """This session's ``ws.results[key]``, else ``stage(ws)``, which loads it from the cache when it
    has run: after a kernel restart, any notebook cell can run right after the set-up cells."""
    value = ws.results.get(key)
    return value if value is not None else stage(ws)


def dataset_root(ws):
    """The dataset folder of the profile; the synthetic set is made first if the profile asks for it."""
    dataset = ws.settings["dataset"]
    if dataset != "synthetic":
        root = Path(dataset)
        return root if root.is_absolute() else ws.paths.root / root
    from carclf.synthetic import make_synthetic

    options = ws.settings["synthetic"]
    # One folder per set of options: make_synthetic refuses to mix two sets in one folder.
    root = ws.paths.data / "synthetic" / config_hash(options, length=8)
    with ws.timer.stage("synthetic dataset") as run:
        # The annotation files are written last: with them on disk, the set is complete.
        complete = (root / "names.csv").is_file() or (root / "devkit" / "cars_meta.mat").is_file()
        make_synthetic(root, **options)
        if complete:
            run.status = "cached"
    return root


def load_dataset(ws):
    """The report's step 2: names and annotations, validated (a cached stage)."""
    from carclf.data import dataset_fingerprint, load_stanford_cars

    root = dataset_root(ws)
    with _timed(ws, "load dataset"):
        result = ws.cache.run("dataset", dataset_fingerprint(root), lambda: load_stanford_cars(root))
    ws.results["dataset"] = result
    return result


def decode_images(ws, dataset=None):
    """Crop, resize and store every image once as uint8 memmaps (a cached, resumable stage)."""
    from carclf.decoded import build_decoded_cache

    dataset = dataset or _stored(ws, "dataset", load_dataset)
    with _timed(ws, "decode images"):
        decoded = build_decoded_cache(
            dataset.value,
            ws.cache,
            image_size=tuple(ws.settings["image_size"]),
            crop=ws.settings["crop"],
            margin=ws.settings["margin"],
            deps=[dataset],
        )
    ws.results["decoded"] = decoded
    return decoded


def configure_device(ws):
    """The report's step 5: mixed precision and XLA, on by themselves on a GPU, off on a CPU."""
    from carclf.device import configure

    device = configure(ws.settings.get("mixed_precision", "auto"), ws.settings.get("jit_compile", "auto"))
    ws.results["device"] = device
    return device


def augment_images(ws, decoded=None):
    """The report's step 8: the offline augmented set from the training box crops (cached, resumable).

    Returns None when the profile augments online or not at all.
    """
    from carclf.augment import build_augmented_set

    if ws.settings["augmentation"] != "offline":
        return None
    decoded = decoded or _stored(ws, "decoded", decode_images)
    with _timed(ws, "data augmentation"):
        augmented = build_augmented_set(
            decoded["train"],
            ws.cache,
            out_dir=ws.paths.augmented,
            n_variants=ws.settings["n_variants"],
            seed=ws.settings["seed"],
        )
    ws.results["augmented"] = augmented
    return augmented


def generators(ws):
    """The report's step 9: ``(train_generator, test_generator)`` over the decoded and augmented images."""
    from carclf.generators import make_generators

    decoded = _stored(ws, "decoded", decode_images)
    augmented = ws.results.get("augmented")
    if augmented is None and ws.settings["augmentation"] == "offline":
        augmented = augment_images(ws, decoded)
    pair = make_generators(
        decoded,
        batch_size=ws.settings["batch_size"],
        augmentation=ws.settings["augmentation"],
        augmented=augmented,
        cutmix=ws.settings["cutmix"],
        mixup=ws.settings["mixup"],
        seed=ws.settings["seed"],
        cache=ws.cache,
    )
    ws.results["generators"] = pair
    return pair


def model_hyperparams(ws, name):
    """The profile's default hyperparameters for model ``name`` (its own overrides on top)."""
    return {**ws.settings["hyperparams"], **ws.settings.get("hyperparams_by_model", {}).get(name, {})}


def search_hyperparameters(ws):
    """The report's step 10: the hyperparameter search, on the training set only (cached, resumable)."""
    from carclf import search

    settings = dict(ws.settings["search"])
    decoded = _stored(ws, "decoded", decode_images)
    searched = search.search_space(settings.get("adam_only", True))
    fixed = {k: v for k, v in model_hyperparams(ws, settings["model"]).items() if k not in searched}
    with _timed(ws, "hyperparameter search"):
        result = search.run_search(
            settings.pop("model"),
            decoded["train"],
            backend=settings.pop("backend"),
            n_trials=settings.pop("n_trials"),
            hyperparams=fixed,
            batch_size=ws.settings["batch_size"],
            seed=ws.settings["seed"],
            paths=ws.paths,
            cache=ws.cache,
            **settings,
        )
    ws.results["search"] = result
    return result


#: The two runs of every model: the profile's default hyperparameters and the search's optimal ones.
LABELS = ("default", "optimal")

#: The stages that cost hours; commands that only read results never start them.
EXPENSIVE_STAGES = ("search", "search-", "train-")


class NotTrainedError(LookupError):
    """A command needs a trained model (or a finished search) that the stage cache does not hold."""


class ImageFileError(ValueError):
    """An image given to :func:`predict` is missing or is not an image OpenCV can read."""


class ModelFileError(ValueError):
    """A model file given to :func:`predict` is missing or does not fit the profile's classes."""


def _check_labels(labels):
    labels = (labels,) if isinstance(labels, str) else tuple(labels)
    unknown = [label for label in labels if label not in LABELS]
    if unknown or not labels:
        raise ValueError(f"hyperparams must be among {LABELS}, got {labels!r}")
    return labels


def train_model(ws, name, labels=LABELS, optimal=None):
    """Train one model with the default and/or the optimal hyperparameters (each run cached and resumable).

    The optimal run needs the search, which runs first if it has not.
    Returns the model's rows of the comparison table.
    """
    from carclf.models import check_name
    from carclf.search import compare_default_optimal

    check_name(name)
    labels = _check_labels(labels)
    if "optimal" in labels:
        optimal = optimal or _stored(ws, "search", search_hyperparameters)
    train_gen, test_gen = _stored(ws, "generators", generators)
    return compare_default_optimal(
        [name],
        optimal,
        train_gen,
        test_gen,
        ws.settings["epochs"],
        ws.settings["accum_steps"],
        default=model_hyperparams(ws, name),
        paths=ws.paths,
        cache=ws.cache,
        timer=ws.timer,
        seed=ws.settings["seed"],
        verbose=0,
        labels=labels,
    )


def train_models(ws, optimal=None):
    """The report's steps 11 to 13: build, compile, train and test every model of the profile,
    with the default and with the optimal hyperparameters (each run cached and resumable).

    Returns the comparison table: one row per (model, "default" | "optimal"),
    also written to ``reports/comparison.csv``.
    """
    import pandas as pd
    from tqdm.auto import tqdm

    optimal = optimal or _stored(ws, "search", search_hyperparameters)
    tables = [
        train_model(ws, name, optimal=optimal) for name in tqdm(ws.settings["models"], desc="models", unit="model")
    ]
    table = pd.concat(tables, ignore_index=True)
    _save_table(ws, table, "comparison_table")
    ws.results["comparison"] = table
    return table


def trained_runs(ws, names=None, labels=LABELS):
    """The comparison table of the runs trained so far, read from the stage cache.

    Nothing is searched or trained: runs that have not finished are left out
    and listed in ``table.attrs["missing"]`` as ``(model, label)`` pairs.
    """
    import pandas as pd

    from carclf.cache import NotComputedError

    labels = _check_labels(labels)
    rows, missing = [], []
    with ws.cache.only_cached(*EXPENSIVE_STAGES):
        optimal = None
        if "optimal" in labels:
            with contextlib.suppress(NotComputedError):  # no search yet, so no optimal run either
                optimal = _stored(ws, "search", search_hyperparameters)
        for name in names or ws.settings["models"]:
            for label in labels:
                if label == "optimal" and optimal is None:
                    missing.append((name, label))
                    continue
                try:
                    rows.append(train_model(ws, name, (label,), optimal))
                except NotComputedError:
                    missing.append((name, label))
    table = pd.concat(rows, ignore_index=True) if rows else pd.DataFrame(columns=["model", "hyperparams"])
    table.attrs["missing"] = missing
    return table


def _not_trained(ws, what, name=None):
    # ``what`` is the sentence's subject and verb: "no model has been", "model 'vgg16' has not been".
    return NotTrainedError(
        f"{what} trained in profile {ws.profile!r} under {ws.paths.root}: run "
        f"`python -m carclf --root {ws.paths.root} train --profile {ws.profile} --model {name or 'NAME'}` "
        f"(or the notebook) first; `python -m carclf report` lists the runs that are trained"
    )


def trained_run(ws, name=None, label=None, metric="accuracy"):
    """The comparison row of one trained run: ``name`` with ``label``, or the best trained run by ``metric``.

    Raises :class:`NotTrainedError` when no such run has finished.
    """
    table = trained_runs(ws, None if name is None else [name], LABELS if label is None else (label,))
    if table.empty:
        what = (
            "no model has been"
            if name is None
            else f"model {name!r}{f' ({label} hyperparameters)' if label else ''} has not been"
        )
        raise _not_trained(ws, what, name)
    return table.loc[table[metric].idxmax()]


def histories(ws, table=None):
    """The per-epoch history of every run in the comparison table, keyed by (model, hyperparams)."""
    import pandas as pd

    table = _stored(ws, "comparison", train_models) if table is None else table
    return {
        (row.model, row.hyperparams): pd.read_csv(ws.paths.models / row.model / row.train_key / "history.csv")
        for row in table.itertuples()
    }


def model_path(ws, row):
    """The saved ``.keras`` file of a comparison row's run."""
    return ws.paths.models / row["model"] / row["train_key"] / f"{row['model']}.keras"


def evaluate_run(ws, row):
    """The report's step 15 for one run (a comparison row): classification report, confusion matrix,
    per-class accuracy and the most-confused pairs of classes, on the test set."""
    from carclf.evaluate import evaluate_model
    from carclf.train import load_model

    model = load_model(model_path(ws, row))
    _, test_gen = _stored(ws, "generators", generators)
    class_names = _stored(ws, "dataset", load_dataset).value.attrs["class_names"]
    evaluation = evaluate_model(model, test_gen, class_names)
    ws.results["evaluation"] = (row["model"], row["hyperparams"], evaluation)
    return evaluation


def evaluate_best(ws, table=None, metric="accuracy"):
    """:func:`evaluate_run` for the best run of the comparison table; ``(model, hyperparams, evaluation)``."""
    table = _stored(ws, "comparison", train_models) if table is None else table
    best = table.loc[table[metric].idxmax()]
    return best["model"], best["hyperparams"], evaluate_run(ws, best)


def predict(ws, images, name=None, label=None, model_file=None, top=5, box=None):
    """The ``top`` most probable classes of each image file, from a saved model.

    The model is ``model_file`` if given, else the trained run ``name`` /
    ``label`` (default: the best trained run). Each image is cropped as in
    training: to ``box`` (x1, y1, x2, y2) when given, to its annotated box
    when it is an image of the profile's dataset, else not at all; then
    resized to the model's input. Returns :func:`carclf.evaluate.top_k`'s
    table, ``input`` being the file path.
    """
    import numpy as np

    from carclf.decoded import decode_image
    from carclf.evaluate import top_k
    from carclf.train import load_model

    images = [Path(image) for image in images]
    for image in images:
        if not image.is_file():
            raise ImageFileError(f"{image}: no such image file; give the paths of JPEG or PNG files")
    if model_file is None:
        model_file = model_path(ws, trained_run(ws, name, label))
    elif not Path(model_file).is_file():
        raise ModelFileError(
            f"{model_file}: no such model file; give a .keras file saved by carclf (models/<name>/<name>.keras)"
        )
    model = load_model(model_file, compile=False)
    frame = _stored(ws, "dataset", load_dataset).value
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
    size = tuple(int(v) for v in model.input_shape[1:3])
    arrays = []
    for image in images:
        try:
            arrays.append(
                decode_image(
                    image,
                    box=box or annotated.get(image.resolve()),
                    image_size=size,
                    crop=ws.settings["crop"],
                    margin=ws.settings["margin"],
                )
            )
        except ValueError as exc:
            raise ImageFileError(f"{image}: not an image OpenCV can read ({exc}); give JPEG or PNG files") from exc
    probabilities = model.predict(np.stack(arrays).astype("float32"), verbose=0)
    return top_k(probabilities, class_names, k=top, index=[str(image) for image in images])


# --------------------------------------------------------------------------- #
# Plots and tables under reports/ (one file name per kind, for the notebook and the CLI alike)


#: The files under reports/, by kind: the one place that names them, for the notebook and the command line.
REPORT_FILES = {
    "augment_grid": "augment_grid.png",
    "search_convergence": "search_convergence.png",
    "search_importance": "search_importance.png",
    "history": "history_{model}_{hyperparams}.png",
    "comparison_table": "comparison.csv",
    "comparison": "comparison.png",
    "classification": "classification_{stem}.csv",
    "confusion": "confusion_{stem}.png",
    "timings_table": "timings.csv",
    "timings": "timings.png",
}


def report_path(ws, kind, **fields):
    """Where the report file of ``kind`` (:data:`REPORT_FILES`) lives.

    For example ``report_path(ws, "confusion", stem="best")``.
    """
    return ws.paths.reports / REPORT_FILES[kind].format(**fields)


def _save_table(ws, table, kind, **fields):
    path = report_path(ws, kind, **fields)
    atomic_write(path, table.to_csv(index=False).encode())
    return path


def plot_augmentations(ws, rows=range(4)):
    """Original training crops beside their augmented variants (``reports/augment_grid.png``)."""
    from carclf import augment, report

    decoded = _stored(ws, "decoded", decode_images)
    frame = _stored(ws, "dataset", load_dataset).value
    rows = [r for r in rows if r < len(decoded["train"])]
    grid = augment.plot_augmentations(
        decoded["train"].read(rows, dtype="uint8"),
        seed=ws.settings["seed"],
        rows=rows,
        class_names=[frame.attrs["class_names"][c] for c in decoded["train"].class_ids[rows]],
    )
    report.save_figure(grid, report_path(ws, "augment_grid"))
    return grid


def plot_search(ws, result=None):
    """The search's convergence and hyperparameter importance (``reports/search_*.png``)."""
    from carclf import search

    result = result or _stored(ws, "search", search_hyperparameters)
    return (
        search.plot_convergence(result, out_path=report_path(ws, "search_convergence")),
        search.plot_importance(result, out_path=report_path(ws, "search_importance")),
    )


def plot_histories(ws, table=None):
    """Training curves of every run of the table (``reports/history_<model>_<hyperparams>.png``)."""
    from carclf import report

    return [
        report.plot_history(
            history, f"{name} ({label})", out_path=report_path(ws, "history", model=name, hyperparams=label)
        )
        for (name, label), history in histories(ws, table).items()
    ]


def plot_comparison(ws, table=None):
    """The models side by side, default against optimal (``reports/comparison.png``)."""
    from carclf import report

    return report.plot_comparison(
        _stored(ws, "comparison", train_models) if table is None else table, out_path=report_path(ws, "comparison")
    )


def plot_evaluation(ws, name, label, evaluation, stem=None):
    """The confusion matrix of an evaluated run (``reports/confusion_<stem>.png``) and its per-class
    precision, recall and F1 (``reports/classification_<stem>.csv``); ``stem`` defaults to
    ``<model>_<hyperparams>``."""
    import pandas as pd

    from carclf import report

    stem = stem or f"{name}_{label}"
    per_class = pd.DataFrame(evaluation.classification_report).T.rename_axis("class").reset_index()
    _save_table(ws, per_class, "classification", stem=stem)
    class_names = evaluation.class_names
    return report.plot_confusion(
        evaluation.confusion_matrix,
        class_names,
        title=f"{name} ({label})",
        out_path=report_path(ws, "confusion", stem=stem),
    )


def plot_timings(ws):
    """The execution-time table (``reports/timings.csv``) and its plot (``reports/timings.png``)."""
    from carclf import report

    table = report.timing_table(ws.timer)
    atomic_write(report_path(ws, "timings_table"), table.to_csv().encode())
    return table, report.plot_timings(table, out_path=report_path(ws, "timings"))


def write_report(ws):
    """Every table and plot of the runs trained so far, from the cache, under ``reports/``.

    Nothing is trained: the comparison covers the finished runs (the others are
    in ``table.attrs["missing"]``). Returns the comparison table. Raises
    :class:`NotTrainedError` when no run has finished.
    """
    table = trained_runs(ws)
    if table.empty:
        raise _not_trained(ws, "no model has been")
    _save_table(ws, table, "comparison_table")
    ws.results["comparison"] = table
    plot_histories(ws, table)
    plot_comparison(ws, table)
    if "search" in ws.results:
        plot_search(ws)
    if not ws.timer.table().empty:
        plot_timings(ws)
    return table


def summary(ws):
    """A short text on what the workspace holds: data, validation, decoded arrays, cache, timings."""
    lines = [f"carclf workspace: profile {ws.profile}, results under {ws.paths.root}"]
    if "dataset" in ws.results:
        frame = ws.results["dataset"].value
        names = frame.attrs["class_names"]
        counts = frame["split"].value_counts()
        lines.append(
            f"dataset: {len(names)} classes, {counts.get('train', 0)} train and "
            f"{counts.get('test', 0)} test images ({ws.results['dataset'].path.parent})"
        )
        report = frame.attrs.get("report")
        if report is not None:
            lines.append(report.summary())
    for split, part in ws.results.get("decoded", {}).items():
        lines.append(f"decoded {split}: {part.images.shape} {part.images.dtype} in {Path(part.images.filename).parent}")
    loaded = sum(1 for *_, how in ws.cache.events if how == "loaded")
    lines.append(f"stage cache: {loaded} of {len(ws.cache.events)} stages served from {ws.cache.root}")
    table = ws.timer.table()
    if not table.empty:
        lines.append("execution time (minutes; the last row in hours):")
        lines.append(table.round(3).to_string())
    return "\n".join(lines)


NOTEBOOK = "notebooks/stanford_cars.ipynb"


def run_notebook(profile="demo", root=None, dataset=None, notebook=None, timeout=None):
    """Execute the workflow notebook headless (papermill) for ``profile``.

    Writes the executed notebook and an HTML copy under ``reports/`` and
    returns their paths. Every stage is served from the stage cache when it has
    run before, so a second run takes a fraction of the first's time.
    """
    import papermill
    from nbconvert import HTMLExporter

    from carclf.config import PROJECT_ROOT

    paths = Paths.default(root).make()
    source = Path(notebook or PROJECT_ROOT / NOTEBOOK)
    executed = paths.reports / f"stanford_cars_{profile}.ipynb"
    parameters = {"profile": profile, "root": str(paths.root), "dataset": None if dataset is None else str(dataset)}
    papermill.execute_notebook(
        str(source),
        str(executed),
        parameters=parameters,
        cwd=str(source.parent),
        progress_bar=True,
        execution_timeout=timeout,
    )
    html, _ = HTMLExporter().from_filename(str(executed))
    html_path = executed.with_suffix(".html")
    atomic_write(html_path, html.encode("utf-8"))
    return executed, html_path
