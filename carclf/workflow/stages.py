"""The notebook's stages as calls, in the report's order: each loads its cached result or computes it."""

from __future__ import annotations

import functools
import logging
from collections.abc import Mapping
from dataclasses import asdict, replace
from pathlib import Path

from carclf.cache import config_hash
from carclf.settings import LABELS, SettingsError
from carclf.settings.checks import model_name

log = logging.getLogger("carclf.workflow")

__all__ = [
    "augment_images",
    "compare_default_optimal",
    "configure_device",
    "dataset_root",
    "decode_images",
    "generators",
    "load_dataset",
    "model_hyperparams",
    "note_runs",
    "result_row",
    "search_hyperparameters",
    "search_model",
    "search_summary",
    "searched_models",
    "stored",
    "train_model",
    "train_models",
]


def stored(ws, name, stage):
    """What ``stage(ws)`` returned in this session under the current settings, else ``stage(ws)``, which
    loads it from the cache when it has run: after a kernel restart any cell runs after the set-up cells."""
    value = ws.recall(name)
    return value if value is not None else stage(ws)


def dataset_root(ws) -> Path:
    """The dataset folder of the profile; the synthetic set is made first if the profile asks for it."""
    data = ws.settings.data
    if data.dataset != "synthetic":
        root = Path(data.dataset)
        return root if root.is_absolute() else ws.paths.root / root
    from carclf.synthetic import make_synthetic

    # One folder per set of options: make_synthetic refuses to mix two sets in one folder.
    root = ws.paths.data / "synthetic" / config_hash(data.synthetic, length=8)
    with ws.timer.stage("synthetic dataset") as run:
        # The annotation files are written last: with them on disk, the set is complete.
        complete = (root / "names.csv").is_file() or (root / "devkit" / "cars_meta.mat").is_file()
        make_synthetic(root, **asdict(data.synthetic))
        if complete:
            run.status = "cached"
    return root


def load_dataset(ws):
    """The report's step 2: names and annotations, validated (a cached stage)."""
    from carclf.data import dataset_fingerprint, load_stanford_cars

    root = dataset_root(ws)
    with ws.timed("load dataset"):
        result = ws.cache.run("dataset", dataset_fingerprint(root), lambda: load_stanford_cars(root))
    return ws.remember("dataset", result)


def decode_images(ws, dataset=None, strict=False):
    """Crop, resize and store every image once as uint8 memmaps (a cached, resumable stage).

    Every image is decoded whole here, once: one that cannot be (truncated, damaged) is left out of the
    arrays, so nothing trains on it. What decoding found joins the validation report, which is written to
    ``reports/validation.csv`` (kind, split, file, detail) and to the log. With ``strict``, any problem
    in the report (clipped boxes aside) is a :class:`carclf.data.DatasetError` naming that file.
    """
    from carclf.decoded import build_decoded_cache, decode_problems

    dataset = dataset or stored(ws, "dataset", load_dataset)
    before = len(ws.cache.events)
    with ws.timed("decode images"):
        decoded = build_decoded_cache(dataset.value, ws.cache, ws.settings.data.decode, deps=[dataset], on_error="skip")
    report = dataset.value.attrs.get("report")
    if report is not None:
        report.add_decode_problems(decode_problems(decoded))
        new = not dataset.loaded or any(how == "computed" for *_, how in ws.cache.events[before:])
        _publish_validation(ws, report, log_each=new)
        if strict and not report.ok:
            raise _strict_error(ws, report)
    return ws.remember("decoded", decoded)


def _publish_validation(ws, report, log_each):
    """The validation report as ``reports/validation.csv``; its summary in the log, and each problem too
    (to the log file only) when it is new."""
    import logging

    from carclf.cache import atomic_write
    from carclf.runlog import FILE_ONLY
    from carclf.workflow.reports import report_path

    path = report_path(ws, "validation")
    frame = report.to_frame().rename(columns={"problem": "kind"})
    atomic_write(path, frame.to_csv(index=False).encode())
    log = logging.getLogger("carclf.data")
    log.log(logging.INFO if report.ok else logging.WARNING, "%s", report.summary(listing=path))
    if log_each:
        for row in frame.itertuples(index=False):
            log.warning("%s (%s) %s: %s", row.kind.replace("_", " "), row.split, row.file, row.detail, extra=FILE_ONLY)


def _strict_error(ws, report):
    from carclf.data import DatasetError
    from carclf.workflow.reports import report_path

    counts = ", ".join(
        f"{n} {kind.replace('_', ' ')}" for kind, n in report.counts().items() if n and kind not in report.NOTES
    )
    return DatasetError(
        f"--strict: the dataset at {report.root} has problems ({counts}), listed file by file in "
        f"{report_path(ws, 'validation')}: fix them, or run without --strict to leave those images out"
    )


def configure_device(ws):
    """The report's step 5: mixed precision and XLA, on by themselves on a GPU, off on a CPU."""
    from carclf.device import configure

    train = ws.settings.train
    return ws.remember("device", configure(train.mixed_precision, train.jit_compile))


def augment_images(ws, decoded=None):
    """The report's step 8: the offline augmented set from the training box crops (cached, resumable).

    Returns None when the profile augments online or not at all.
    """
    from carclf.augment import build_augmented_set

    if ws.settings.augment.augmentation != "offline":
        return None
    decoded = decoded or stored(ws, "decoded", decode_images)
    with ws.timed("data augmentation"):
        augmented = build_augmented_set(
            decoded["train"], ws.cache, ws.settings.augment, ws.settings.seed, out_dir=ws.paths.augmented
        )
    return ws.remember("augmented", augmented)


def generators(ws, validation=None):
    """The report's step 9: the training, validation and test batches (:class:`carclf.generators.Generators`).

    The validation batches are a held-out split of the training set (``evaluation.validation="split"``) or,
    under the report's protocol (``"test"``), the test batches. ``validation=False`` gives the training
    batches over every training image (what a refit trains on).
    """
    from carclf.generators import make_generators

    evaluation = ws.settings.evaluation
    split = evaluation.validation == "split" if validation is None else validation
    name = "generators" if validation is None else f"generators-{split}"
    remembered = ws.recall(name)
    if remembered is not None:
        return remembered
    decoded = stored(ws, "decoded", decode_images)
    augmented = stored(ws, "augmented", lambda ws: augment_images(ws, decoded))
    gens = make_generators(
        decoded,
        ws.settings.augment,
        batch_size=ws.settings.train.batch_size,
        seed=ws.settings.seed,
        validation_fraction=evaluation.validation_fraction if split else None,
        augmented=augmented,
        cache=ws.cache,
    )
    return ws.remember(name, gens)


def model_hyperparams(ws, name) -> dict:
    """The profile's default hyperparameters for model ``name`` (its own overrides on top), as the report's dict."""
    return ws.settings.hyperparams_for(name).as_dict()


def searched_models(ws) -> tuple:
    """The models the profile searches: each for itself (``search.per_model``, of ``search.models`` or
    every model), or only ``search.model``, whose result every model reuses (the report's practice)."""
    settings = ws.settings.search
    if not settings.per_model:
        return (settings.model,)
    return tuple(settings.models or ws.settings.models)


def search_model(ws, name):
    """The search whose result model ``name``'s optimal run uses: its own, or without ``search.per_model``
    the reused one of ``search.model`` (cached, resumable; on the training set only)."""
    from carclf import search

    settings = ws.settings.search
    if not settings.per_model:
        name = settings.model
    elif name not in searched_models(ws):
        raise SettingsError(
            f"model {name!r} is not searched in profile {ws.profile!r} (search.models: "
            f"{', '.join(searched_models(ws))}): add it to search.models, or train its default run only"
        )
    remembered = ws.recall(f"search-{name}")
    if remembered is not None:
        return remembered
    decoded = stored(ws, "decoded", decode_images)
    with ws.timed(f"hyperparameter search {name}"):
        result = search.run_search(
            name,
            decoded["train"],
            settings,
            hyperparams=model_hyperparams(ws, name),
            training=ws.settings.train,
            augment=ws.settings.augment,
            seed=ws.settings.seed,
            store=ws.store,
        )
    return ws.remember(f"search-{name}", result)


def search_hyperparameters(ws, models=None):
    """The report's step 10: the hyperparameter search of each searched model (``models``: some of them),
    on the training set only (cached, resumable). Returns ``{model: SearchResult}``."""
    from tqdm.auto import tqdm

    names = searched_models(ws) if models is None else ((models,) if isinstance(models, str) else tuple(models))
    for name in names:
        try:
            model_name(name)
        except ValueError as exc:
            raise SettingsError(f"search model {name!r} {exc}") from None
    unknown = [name for name in names if name not in searched_models(ws)]
    if unknown:
        raise SettingsError(
            f"models {unknown} are not searched in profile {ws.profile!r} (searched: {', '.join(searched_models(ws))}):"
            " set search.models to search them (with search.per_model=True)"
        )
    shown = tqdm(names, desc="searches", unit="model", disable=len(names) < 2)
    results = {name: search_model(ws, name) for name in shown}
    if models is None:
        ws.remember("search", results)
    return results


def search_summary(results):
    """One row per searched model: its objective with the defaults (trial one) and at its best trial."""
    import pandas as pd

    rows = []
    for name, result in results.items():
        trials = result.trials
        first = trials.loc[trials["trial"] == trials["trial"].min(), "value"]
        rows.append(
            {
                "model": name,
                "objective": result.objective,
                "defaults": None if first.empty else first.iloc[0],
                "best": result.best_value,
                "best_trial": result.best_trial,
                "trials": len(trials),
                "pruned": int((trials["state"] == "pruned").sum()),
                **{f"best {k}": v for k, v in result.best_params.items() if k != "optimizer_type"},
            }
        )
    return pd.DataFrame(rows)


def _split_knobs(params) -> tuple[dict, dict]:
    """Searched values as ``(hyperparameters, {dotted setting: value})`` for the training and augmentation
    settings among them."""
    from carclf.search.space import split_params

    hyper, train, augment = split_params(params)
    return hyper, {**{f"train.{k}": v for k, v in train.items()}, **{f"augment.{k}": v for k, v in augment.items()}}


def _check_labels(labels):
    labels = (labels,) if isinstance(labels, str) else tuple(labels)
    unknown = [label for label in labels if label not in LABELS]
    if unknown or not labels:
        raise SettingsError(f"hyperparams must be among {LABELS}, got {labels!r}")
    return labels


def _optimal_for(name, optimal) -> dict:
    from carclf.search import SearchResult

    if isinstance(optimal, SearchResult):
        return dict(optimal.best_params)
    if isinstance(optimal, Mapping) and name in optimal and isinstance(optimal[name], (Mapping, SearchResult)):
        return _optimal_for(name, optimal[name])
    if isinstance(optimal, Mapping):
        return dict(optimal)
    raise TypeError(
        f"optimal must be a SearchResult, a hyperparameter dict, or one of those per model; got {optimal!r}"
    )


def compare_default_optimal(
    names,
    optimal,
    train_generator,
    test_generator,
    *,
    validation_generator=None,
    refit_generator=None,
    default=None,
    settings=None,
    store=None,
    seed=0,
    labels=LABELS,
):
    """Train each model with the default and with the optimal hyperparameters; one row per run.

    ``optimal`` is a :class:`carclf.search.SearchResult`, a hyperparameter dict, or a dict of either per
    model name (the report used one set for all models, and advised one per model). ``default`` is the
    report's global defaults (:class:`carclf.settings.Hyperparams`) unless given; the optimal run uses it with
    the searched values on top, so only the searched hyperparameters differ between the two. Both runs go
    through ``run_model_pipeline`` with ``settings`` (:class:`carclf.settings.TrainSettings`) and its cache
    (a rerun loads them); with the store's timer, they are timed in groups "default" and "optimal" (the
    report's execution-time table). ``labels`` picks the runs: ``("default",)`` needs no ``optimal``.
    ``validation_generator`` selects the epochs (``None``: the report's protocol, the test batches do);
    with ``refit_generator`` (training and validation images) each run is trained again on it for its kept
    number of epochs, and tested.

    Returns a frame with ``model``, ``hyperparams`` ("default" or "optimal"), ``validation`` (the protocol),
    ``kept_epoch``, ``val_accuracy`` and ``val_loss`` of the kept epoch, the test metrics, ``epochs_run``,
    ``wall_min``, ``cpu_min``, ``train_key``, ``refit_key`` and ``loaded`` (from the cache).
    """
    import pandas as pd

    from carclf.models import model_spec
    from carclf.settings import Hyperparams
    from carclf.train import run_model_pipeline

    names = [names] if isinstance(names, str) else list(names)
    default = dict(default if default is not None else Hyperparams().as_dict())
    split = train_generator.split
    rows = []
    for name in names:
        for label in _check_labels(labels):
            hp = default if label == "default" else {**default, **_optimal_for(name, optimal)}
            run = functools.partial(
                run_model_pipeline,
                model_spec(name).builder,
                name,
                hp,
                (*split.image_size, 3),
                split.num_classes,
                store=store,
                seed=seed,
                timer_group=label,
            )
            own = _settings_for(name, hp, settings)
            result = run(train_generator, test_generator, validation_generator=validation_generator, settings=own)
            tested = result
            if refit_generator is not None and result.kept_epoch:
                tested = run(
                    refit_generator,
                    test_generator,
                    validation_generator=validation_generator,
                    settings=_refit_settings(own, result.kept_epoch),
                )
            rows.append(result_row(name, label, result, tested))
    return pd.DataFrame(rows)


def _settings_for(name, hyperparams, settings):
    """How model ``name`` trains: ``settings``, in one phase when there is nothing pretrained to keep (a model
    of its own trunk, model1 or AlexNet, or a base with ``weights=None``): a frozen random base would only
    slow the head down (docs/recipes.md)."""
    from carclf.models import keeps_pretrained

    if settings is None or not settings.two_phase:
        return settings
    if not keeps_pretrained(name, hyperparams):
        log.debug("%s: nothing pretrained to keep, so one phase instead of two", name)
        return replace(settings, two_phase=False)
    return settings


def _refit_settings(settings, epochs):
    """Train again for the kept number of epochs: nothing to select any more, so no callback reads validation."""
    from carclf.settings import CallbackSettings, TrainSettings

    settings = settings or TrainSettings()
    return replace(
        settings,
        epochs=epochs,
        two_phase=settings.two_phase and epochs >= 2,
        callbacks=CallbackSettings(early_stopping=None, reduce_lr=None, checkpoint=None),
    )


def result_row(name, label, result, tested=None) -> dict:
    """One row of the comparison from a :class:`carclf.train.TrainResult`: the selected run's validation
    figures, the tested run's (``tested``, the refit; default: the same run) test figures."""
    tested = result if tested is None else tested
    return {
        "model": name,
        "hyperparams": label,
        "validation": result.validation,
        "kept_epoch": result.kept_epoch,
        "val_accuracy": result.val_metrics.get("accuracy"),
        "val_loss": result.val_metrics.get("loss"),
        **tested.test_metrics,
        "epochs_run": result.epochs_run,
        "wall_min": result.wall_min + (tested.wall_min if tested is not result else 0.0),
        "cpu_min": result.cpu_min + (tested.cpu_min if tested is not result else 0.0),
        "train_key": tested.key,
        "selection_key": result.key,
        "refit": tested is not result,
        "loaded": result.loaded and tested.loaded,
    }


def note_runs(ws, table):
    """Write beside each run's stage result which run it is (model, label, profile, dataset), so that
    ``report``, ``evaluate`` and ``predict`` find it whatever its epochs or settings (:mod:`~.runs`)."""
    dataset = stored(ws, "dataset", load_dataset).key
    for row in table.itertuples():
        ws.cache.note(f"train-{row.model}", row.train_key, label=row.hyperparams, profile=ws.profile, dataset=dataset)


def train_model(ws, name, labels=LABELS, optimal=None):
    """Train one model with the default and/or the optimal hyperparameters (each run cached and resumable).

    The optimal run needs the search, which runs first if it has not. Returns the model's rows of the
    comparison table.
    """
    from carclf.models import check_name

    check_name(name)
    labels = _check_labels(labels)
    if "optimal" in labels:
        optimal = _optimal_for(name, optimal if optimal is not None else search_model(ws, name))
        hyper, knobs = _split_knobs(optimal)
        if knobs:  # searched training or augmentation settings: the optimal run trains under them
            import pandas as pd

            rest = tuple(label for label in labels if label != "optimal")
            tables = [train_model(ws, name, rest)] if rest else []
            tables.append(train_model(ws.derived(**knobs), name, ("optimal",), hyper))
            return pd.concat(tables, ignore_index=True)
    gens = generators(ws)
    refit = generators(ws, validation=False).train if ws.settings.evaluation.refit else None
    table = compare_default_optimal(
        [name],
        optimal,
        gens.train,
        gens.test,
        validation_generator=None if gens.protocol == "test" else gens.validation,
        refit_generator=refit,
        default=model_hyperparams(ws, name),
        settings=ws.settings.train,
        store=ws.store,
        seed=ws.settings.seed,
        labels=labels,
    )
    note_runs(ws, table)
    return table


def train_models(ws, optimal=None):
    """The report's steps 11 to 13: build, compile, train and test every model of the profile, with the
    default and with the optimal hyperparameters (each run cached and resumable).

    Returns the comparison table: one row per (model, "default" | "optimal"), with the validation figures of
    the kept epoch, the test figures and their intervals, and the paired tests
    (:func:`carclf.evaluate.add_uncertainty`); also written to ``reports/comparison.csv``.
    """
    import pandas as pd
    from tqdm.auto import tqdm

    from carclf.workflow.reports import save_table
    from carclf.workflow.results import with_uncertainty

    models = tqdm(ws.settings.models, desc="models", unit="model")
    table = pd.concat([train_model(ws, name, optimal=optimal) for name in models], ignore_index=True)
    table = with_uncertainty(ws, table)
    save_table(ws, table, "comparison_table")
    return ws.remember("comparison", table)
