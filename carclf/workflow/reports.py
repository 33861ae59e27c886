"""Plots and tables under ``reports/``: one file name per kind, for the notebook and the command line alike."""

from __future__ import annotations

from pathlib import Path

from carclf.cache import atomic_write
from carclf.workflow.results import _not_trained, histories, trained_runs, with_uncertainty
from carclf.workflow.stages import decode_images, load_dataset, search_hyperparameters, stored, train_models

__all__ = [
    "REPORT_FILES",
    "plot_augmentations",
    "plot_comparison",
    "plot_evaluation",
    "plot_histories",
    "plot_search",
    "plot_timings",
    "protocol_summary",
    "report_path",
    "save_table",
    "summary",
    "write_report",
]

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
    "validation": "validation.csv",
}


def report_path(ws, kind, **fields):
    """Where the report file of ``kind`` (:data:`REPORT_FILES`) lives.

    For example ``report_path(ws, "confusion", stem="best")``.
    """
    return ws.paths.reports / REPORT_FILES[kind].format(**fields)


def save_table(ws, table, kind, **fields):
    path = report_path(ws, kind, **fields)
    atomic_write(path, table.to_csv(index=False).encode())
    return path


def plot_augmentations(ws, rows=range(4)):
    """Original training crops beside their augmented variants (``reports/augment_grid.png``)."""
    from carclf import report

    decoded = stored(ws, "decoded", decode_images)
    frame = stored(ws, "dataset", load_dataset).value
    rows = [r for r in rows if r < len(decoded["train"])]
    grid = report.plot_augmentations(
        decoded["train"].read(rows, dtype="uint8"),
        seed=ws.settings.seed,
        rows=rows,
        class_names=[frame.attrs["class_names"][c] for c in decoded["train"].class_ids[rows]],
    )
    report.save_figure(grid, report_path(ws, "augment_grid"))
    return grid


def plot_search(ws, results=None):
    """Each searched model's convergence and hyperparameter importance, one panel per model
    (``reports/search_*.png``). ``results``: ``{model: SearchResult}`` or one result (default: the searches)."""
    from carclf import report
    from carclf.search import SearchResult

    results = results or search_hyperparameters(ws)
    if isinstance(results, SearchResult):
        results = {results.model_name: results}
    caption = report.protocol_text(ws.settings, search=True)
    return (
        report.plot_searches(results, out_path=report_path(ws, "search_convergence"), caption=caption),
        report.plot_search_importances(results, out_path=report_path(ws, "search_importance"), caption=caption),
    )


def plot_histories(ws, table=None):
    """Training curves of every run of the table (``reports/history_<model>_<hyperparams>.png``)."""
    from carclf import report

    caption = report.protocol_text(ws.settings)
    return [
        report.plot_history(
            history,
            f"{name} ({label})",
            out_path=report_path(ws, "history", model=name, hyperparams=label),
            caption=caption,
        )
        for (name, label), history in histories(ws, table).items()
    ]


def plot_comparison(ws, table=None):
    """The models side by side, default against optimal (``reports/comparison.png``)."""
    from carclf import report

    return report.plot_comparison(
        stored(ws, "comparison", train_models) if table is None else table,
        out_path=report_path(ws, "comparison"),
        caption=report.protocol_text(ws.settings),
    )


def plot_evaluation(ws, name, label, evaluation, stem=None):
    """The confusion matrix of an evaluated run (``reports/confusion_<stem>.png``) and its per-class
    precision, recall and F1 (``reports/classification_<stem>.csv``); ``stem`` defaults to
    ``<model>_<hyperparams>``."""
    import pandas as pd

    from carclf import report

    stem = stem or f"{name}_{label}"
    per_class = pd.DataFrame(evaluation.classification_report).T.rename_axis("class").reset_index()
    intervals = evaluation.per_class(ws.settings.evaluation.confidence)[["accuracy", "low", "high"]]
    per_class = per_class.merge(intervals.add_prefix("accuracy_").reset_index(), on="class", how="left")
    save_table(ws, per_class, "classification", stem=stem)
    class_names = evaluation.class_names
    return report.plot_confusion(
        evaluation.confusion_matrix,
        class_names,
        title=f"{name} ({label})",
        out_path=report_path(ws, "confusion", stem=stem),
        caption=report.protocol_text(ws.settings),
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
    table = with_uncertainty(ws, table)
    save_table(ws, table, "comparison_table")
    ws.remember("comparison", table)
    plot_histories(ws, table)
    plot_comparison(ws, table)
    searched = {name: ws.recall(f"search-{name}") for name in ws.settings.models}
    searched = {name: result for name, result in searched.items() if result is not None}
    if searched:
        plot_search(ws, searched)
    if not ws.timer.table().empty:
        plot_timings(ws)
    return table


def recipe_table(ws):
    """The report's and the modern fine-tuning recipes, and this run's values, one row per setting
    (``part``: what makes the recipe; the other rows are where it starts)."""
    import pandas as pd

    from carclf.settings import recipe_rows

    table = pd.DataFrame(recipe_rows(ws.settings)).set_index("setting")
    return table.map(lambda v: v if isinstance(v, bool) else str(v))


def protocol_summary(ws) -> str:
    """How the figures are obtained, in words, with the sizes of the training, validation and test sets."""
    from carclf import report
    from carclf.workflow.stages import generators

    gens = generators(ws)
    lines = [f"protocol: {report.protocol_text(ws.settings)}"]
    test_n = len(gens.test.split)
    if gens.protocol == "split":
        lines.append(
            f"validation: {len(gens.validation.split)} training images held out (with their augmented variants) "
            f"select the epochs and the best run; training reads {len(gens.train.split)} rows; the {test_n} "
            f"test images are read once per finished run"
        )
    else:
        lines.append(
            f"validation: the {test_n} test images select the epochs and the best run (the report's protocol: "
            f"the test figures are then optimistic)"
        )
    return "\n".join(lines)


def summary(ws):
    """A short text on what the workspace holds: data, validation, decoded arrays, cache, timings."""
    lines = [f"carclf workspace: profile {ws.profile}, results under {ws.paths.root}"]
    dataset = ws.recall("dataset")
    if dataset is not None:
        frame = dataset.value
        names = frame.attrs["class_names"]
        counts = frame["split"].value_counts()
        lines.append(
            f"dataset: {len(names)} classes, {counts.get('train', 0)} train and "
            f"{counts.get('test', 0)} test images ({dataset.path.parent})"
        )
        report = frame.attrs.get("report")
        if report is not None:
            listing = report_path(ws, "validation")
            lines.append(report.summary(listing=listing if listing.is_file() else None))
    for split, part in (ws.recall("decoded") or {}).items():
        lines.append(f"decoded {split}: {part.images.shape} {part.images.dtype} in {Path(part.images.filename).parent}")
    loaded = sum(1 for *_, how in ws.cache.events if how == "loaded")
    lines.append(f"stage cache: {loaded} of {len(ws.cache.events)} stages served from {ws.cache.root}")
    table = ws.timer.table()
    if not table.empty:
        lines.append("execution time (minutes; the last row in hours):")
        lines.append(table.round(3).to_string())
    return "\n".join(lines)
