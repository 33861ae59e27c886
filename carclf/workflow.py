"""The notebook's stages as calls: each loads its cached result or computes it.

A :class:`Workspace` ties one run together: the folders, the stage cache, the
stage timer and the profile's settings. The notebook and ``python -m carclf``
call the same functions, so a stage re-run from either place is served from
the same cache.
"""

import logging
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
    with ws.timer.stage("synthetic dataset"):
        make_synthetic(root, **options)
    return root


def load_dataset(ws):
    """The report's step 2: names and annotations, validated (a cached stage)."""
    from carclf.data import dataset_fingerprint, load_stanford_cars

    root = dataset_root(ws)
    with ws.timer.stage("load dataset"):
        result = ws.cache.run("dataset", dataset_fingerprint(root), lambda: load_stanford_cars(root))
    ws.results["dataset"] = result
    return result


def decode_images(ws, dataset=None):
    """Crop, resize and store every image once as uint8 memmaps (a cached, resumable stage)."""
    from carclf.decoded import build_decoded_cache

    dataset = dataset or ws.results.get("dataset") or load_dataset(ws)
    with ws.timer.stage("decode images"):
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
    decoded = decoded or ws.results.get("decoded") or decode_images(ws)
    with ws.timer.stage("data augmentation"):
        augmented = build_augmented_set(decoded["train"], ws.cache, out_dir=ws.paths.augmented,
                                        n_variants=ws.settings["n_variants"], seed=ws.settings["seed"])
    ws.results["augmented"] = augmented
    return augmented


def generators(ws):
    """The report's step 9: ``(train_generator, test_generator)`` over the decoded and augmented images."""
    from carclf.generators import make_generators

    decoded = ws.results.get("decoded") or decode_images(ws)
    augmented = ws.results.get("augmented")
    if augmented is None and ws.settings["augmentation"] == "offline":
        augmented = augment_images(ws, decoded)
    pair = make_generators(decoded, batch_size=ws.settings["batch_size"], augmentation=ws.settings["augmentation"],
                           augmented=augmented, cutmix=ws.settings["cutmix"], mixup=ws.settings["mixup"],
                           seed=ws.settings["seed"], cache=ws.cache)
    ws.results["generators"] = pair
    return pair


def model_hyperparams(ws, name):
    """The profile's default hyperparameters for model ``name`` (its own overrides on top)."""
    return {**ws.settings["hyperparams"], **ws.settings.get("hyperparams_by_model", {}).get(name, {})}


def search_hyperparameters(ws):
    """The report's step 10: the hyperparameter search, on the training set only (cached, resumable)."""
    from carclf import search

    settings = dict(ws.settings["search"])
    decoded = ws.results.get("decoded") or decode_images(ws)
    searched = search.search_space(settings.get("adam_only", True))
    fixed = {k: v for k, v in model_hyperparams(ws, settings["model"]).items() if k not in searched}
    with ws.timer.stage("hyperparameter search"):
        result = search.run_search(
            settings.pop("model"), decoded["train"], backend=settings.pop("backend"),
            n_trials=settings.pop("n_trials"), hyperparams=fixed,
            batch_size=ws.settings["batch_size"], seed=ws.settings["seed"], paths=ws.paths, cache=ws.cache,
            **settings,
        )
    ws.results["search"] = result
    return result


def train_models(ws, optimal=None):
    """The report's steps 11 to 13: build, compile, train and test every model of the profile,
    with the default and with the optimal hyperparameters (each run cached and resumable).

    Returns the comparison table: one row per (model, "default" | "optimal").
    """
    from carclf.search import compare_default_optimal

    import pandas as pd
    from tqdm.auto import tqdm

    optimal = optimal or ws.results.get("search") or search_hyperparameters(ws)
    train_gen, test_gen = ws.results.get("generators") or generators(ws)
    tables = []
    for name in tqdm(ws.settings["models"], desc="models", unit="model"):
        default = model_hyperparams(ws, name)
        tables.append(compare_default_optimal(
            [name], optimal, train_gen, test_gen, ws.settings["epochs"], ws.settings["accum_steps"],
            default=default, paths=ws.paths, cache=ws.cache, timer=ws.timer, seed=ws.settings["seed"], verbose=0,
        ))
    table = pd.concat(tables, ignore_index=True)
    atomic_write(ws.paths.reports / "comparison.csv", table.to_csv(index=False).encode())
    ws.results["comparison"] = table
    return table


def histories(ws, table=None):
    """The per-epoch history of every run in the comparison table, keyed by (model, hyperparams)."""
    import pandas as pd

    table = ws.results["comparison"] if table is None else table
    return {(row.model, row.hyperparams): pd.read_csv(ws.paths.models / row.model / row.train_key / "history.csv")
            for row in table.itertuples()}


def evaluate_best(ws, table=None, metric="accuracy"):
    """The report's step 15 for the best run of the table: classification report, confusion matrix,
    per-class accuracy and the most-confused pairs of classes, on the test set."""
    from carclf.evaluate import evaluate_model
    from carclf.train import load_model

    table = ws.results["comparison"] if table is None else table
    best = table.loc[table[metric].idxmax()]
    model = load_model(ws.paths.models / best["model"] / best["train_key"] / f"{best['model']}.keras")
    _, test_gen = ws.results.get("generators") or generators(ws)
    class_names = ws.results["dataset"].value.attrs["class_names"]
    evaluation = evaluate_model(model, test_gen, class_names)
    ws.results["evaluation"] = (best["model"], best["hyperparams"], evaluation)
    return best["model"], best["hyperparams"], evaluation


def summary(ws):
    """A short text on what the workspace holds: data, validation, decoded arrays, cache, timings."""
    lines = [f"carclf workspace: profile {ws.profile}, results under {ws.paths.root}"]
    if "dataset" in ws.results:
        frame = ws.results["dataset"].value
        names = frame.attrs["class_names"]
        counts = frame["split"].value_counts()
        lines.append(f"dataset: {len(names)} classes, {counts.get('train', 0)} train and "
                     f"{counts.get('test', 0)} test images ({ws.results['dataset'].path.parent})")
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
    papermill.execute_notebook(str(source), str(executed), parameters=parameters, cwd=str(source.parent),
                               progress_bar=True, execution_timeout=timeout)
    html, _ = HTMLExporter().from_filename(str(executed))
    html_path = executed.with_suffix(".html")
    atomic_write(html_path, html.encode("utf-8"))
    return executed, html_path

