"""The report's plots and tables (workflow step 15): training curves, model comparison, timings.

Every ``plot_*`` function returns a ``matplotlib.figure.Figure`` built without
pyplot, so it shows once when it is a notebook cell's value (and never
twice), and it holds no global state; with a path it is also written as PNG,
atomically (``carclf.cache.atomic_write``).

- :func:`plot_history`: accuracy, loss, precision, recall, AUC and top-3
  accuracy, train against validation, for one model (the report's
  ``plot_train_results``).
- :func:`plot_comparison`: the models side by side, default against optimal
  hyperparameters, for accuracy, top-3 accuracy, precision, recall and AUC
  (from ``carclf.evaluate`` comparison rows or ``TrainResult.test_metrics``).
- :func:`plot_confusion`: a confusion matrix as a heat map.
- :func:`timing_table` and :func:`plot_timings`: the "Execution time" table,
  wall and CPU minutes per stage and per model, from
  ``carclf.runlog.StageTimer``.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator

from carclf.cache import atomic_write
from carclf.settings import check_positive_int

__all__ = [
    "COMPARISON_METRICS",
    "HISTORY_PANELS",
    "comparison_frame",
    "plot_augmentations",
    "plot_comparison",
    "plot_confusion",
    "plot_convergence",
    "plot_history",
    "plot_importance",
    "plot_search_importances",
    "plot_searches",
    "plot_timings",
    "protocol_text",
    "save_figure",
    "timing_table",
]

#: The panels of :func:`plot_history`: (history key, title).
HISTORY_PANELS = (
    ("accuracy", "Accuracy"),
    ("loss", "Loss"),
    ("precision", "Precision"),
    ("recall", "Recall"),
    ("auc", "AUC"),
    ("top3_accuracy", "Top-3 accuracy"),
)

#: The metrics of :func:`plot_comparison`.
COMPARISON_METRICS = ("accuracy", "top3_accuracy", "precision", "recall", "auc")


def save_figure(fig: Figure, path, dpi: int = 100) -> Path:
    """Write ``fig`` as PNG to ``path`` atomically; return the path."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    return atomic_write(Path(path), buffer.getvalue())


def _history_dict(history) -> dict:
    if hasattr(history, "history") and isinstance(history.history, dict):  # keras History, TrainResult
        history = history.history
    if isinstance(history, pd.DataFrame):
        return {c: history[c].tolist() for c in history.columns}
    return dict(history)


def _finished(fig, caption, out_path) -> Figure:
    """``fig`` with how it was made (``caption``) under it, saved to ``out_path`` when given."""
    if caption:
        fig.supxlabel(caption, fontsize=8)
    if out_path is not None:
        save_figure(fig, out_path)
    return fig


def plot_history(history, model_name: str, out_dir=None, out_path=None, panels=HISTORY_PANELS, caption=None) -> Figure:
    """Training curves of one model: a 2x3 grid, train against validation per metric.

    ``history`` is a ``{metric: [values per epoch]}`` dict (``TrainResult.history``,
    ``keras.callbacks.History.history``), a History, a TrainResult or a
    DataFrame. A panel whose metric is missing says so. Saved as
    ``out_dir/<model_name>_history.png`` or ``out_path`` when given.
    """
    hist = _history_dict(history)
    n_epochs = max((len(v) for v in hist.values()), default=0)
    epochs = np.arange(1, n_epochs + 1)
    rows = math.ceil(len(panels) / 3)
    fig = Figure(figsize=(15, 4.2 * rows), layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, 3)).ravel()
    for ax, (key, title) in zip(axes, panels):
        plotted = False
        for prefix, label, style in (("", "train", "-o"), ("val_", "validation", "-s")):
            values = hist.get(prefix + key)
            if values is None or not len(values):
                continue
            ax.plot(epochs[: len(values)], np.asarray(values, dtype=float), style, markersize=3, label=label)
            plotted = True
        if "phase" in hist and plotted:
            phase = np.asarray(hist["phase"], dtype=float)
            for boundary in np.flatnonzero(np.diff(phase)) + 1.5:
                ax.axvline(boundary, color="grey", linestyle=":", linewidth=1)
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))  # whole epochs, even for one
        ax.grid(True, alpha=0.3)
        if plotted:
            ax.legend()
        else:
            ax.text(0.5, 0.5, f"no '{key}' in the history", ha="center", va="center", transform=ax.transAxes)
    for ax in axes[len(panels) :]:
        ax.set_visible(False)
    fig.suptitle(f"{model_name}: training and validation")
    if caption:
        fig.supxlabel(caption, fontsize=8)
    if out_path is None and out_dir is not None:
        out_path = Path(out_dir) / f"{model_name}_history.png"
    if out_path is not None:
        save_figure(fig, out_path)
    return fig


def comparison_frame(table) -> pd.DataFrame:
    """The comparison table as a DataFrame with ``model`` and ``hyperparams`` columns.

    Accepts a DataFrame or a list of dicts (``EvaluationResult.comparison_row``
    rows, or ``{"model": ..., "hyperparams": ..., **test_metrics}``). A
    missing ``hyperparams`` column is filled with ``"default"``.
    """
    frame = table.copy() if isinstance(table, pd.DataFrame) else pd.DataFrame(list(table))
    if "model" not in frame.columns:
        frame = frame.reset_index().rename(columns={"index": "model"})
    if "hyperparams" not in frame.columns:
        frame["hyperparams"] = "default"
    return frame


def plot_comparison(table, out_path=None, metrics=COMPARISON_METRICS, models=None, caption=None) -> Figure:
    """All models side by side: one panel per metric, grouped bars per hyperparameter set.

    ``table`` has a row per (model, hyperparams label), e.g. "default" and "optimal"; see
    :func:`comparison_frame`. Where it holds ``<metric>_low`` / ``<metric>_high`` the bars carry those
    intervals; the best run (``best``) is starred, and the runs whose difference from it is not significant
    (``differs_from_best`` False) are hatched. ``models`` fixes the order; ``caption`` says how the figures
    were obtained (:func:`protocol_text`).
    """
    frame = comparison_frame(table)
    metrics = [m for m in metrics if m in frame.columns]
    if not metrics:
        raise ValueError(f"the table has none of the metrics {list(COMPARISON_METRICS)}: {list(frame.columns)}")
    models = list(models) if models is not None else list(dict.fromkeys(frame["model"]))
    labels = list(dict.fromkeys(frame["hyperparams"]))
    cols = min(3, len(metrics))
    rows = math.ceil(len(metrics) / cols)
    fig = Figure(figsize=(6 * cols, 4.2 * rows + (0.5 if caption else 0)), layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, cols)).ravel()
    for ax, metric in zip(axes, metrics):
        for i, label in enumerate(labels):
            _comparison_bars(ax, frame, metric, label, models, i, len(labels))
        ax.set_title(metric.replace("_", " "))
        ax.set_xticks(np.arange(len(models)), models, rotation=30, ha="right")
        ax.set_ylim(0, 1.12)
        ax.grid(True, axis="y", alpha=0.3)
        # plain swatches: a legend drawn from the bars would copy the first bar's hatching
        ax.legend(handles=[Patch(facecolor=f"C{i}", label=str(label)) for i, label in enumerate(labels)], fontsize=7)
    for ax in axes[len(metrics) :]:
        ax.set_visible(False)
    title = "Models on the test set: default against optimal hyperparameters"
    if "differs_from_best" in frame.columns:
        title += "\n(* the best run; hatched: not significantly different from it, McNemar's exact test)"
    fig.suptitle(title)
    return _finished(fig, caption, out_path)


def _comparison_bars(ax, frame, metric, label, models, index, n_labels):
    part = frame[frame["hyperparams"] == label].drop_duplicates("model", keep="last").set_index("model")

    def column(name, default=np.nan):
        return np.array([float(part[name].get(m, default)) if m in part.index else default for m in models])

    values = column(metric)
    width = 0.8 / max(1, n_labels)
    x = np.arange(len(models)) + (index - (n_labels - 1) / 2) * width
    err = None
    if f"{metric}_low" in part.columns:
        err = np.vstack([values - column(f"{metric}_low"), column(f"{metric}_high") - values])
    same = column("differs_from_best", 1.0) == 0 if "differs_from_best" in part.columns else np.zeros(len(models), bool)
    if "best" in part.columns:  # the best run is starred, not hatched: it is the reference
        same &= column("best", 0.0) != 1
    bars = ax.bar(x, values, width, yerr=err, capsize=2, label=str(label), error_kw={"linewidth": 0.8})
    for bar, hatch in zip(bars, same):
        if hatch:
            bar.set_hatch("//")
    labels = [f"{v:.2f}" for v in values]
    if "best" in part.columns:
        labels = [f"{t}*" if b == 1 else t for t, b in zip(labels, column("best", 0.0))]
    ax.bar_label(bars, labels=labels, fontsize=7, padding=1)


def protocol_text(settings, search=False) -> str:
    """How a figure was obtained, from a run's ``RunSettings``: validation, crop and resize, recipe, TTA, seed."""
    evaluation, decode = settings.evaluation, settings.data.decode
    if search:
        validation = f"validation: {settings.search.validation_fraction:.0%} of the training set (the search's)"
    elif evaluation.validation == "split":
        validation = f"validation: {evaluation.validation_fraction:.0%} of the training set"
    else:
        validation = "validation: the test set (the report's protocol)"
    crop = f"box crops (margin {decode.margin:g})" if decode.crop == "box" else "whole images"
    size = "x".join(map(str, decode.image_size))
    parts = [
        validation,
        f"{crop}, {decode.resize} to {size}",
        f"recipe {settings.recipe}",
        f"TTA {'on' if evaluation.tta else 'off'}",
        f"{evaluation.confidence:.0%} intervals ({evaluation.interval})",
        f"seed {settings.seed}",
    ]
    if evaluation.refit:
        parts.insert(1, "refit on training + validation")
    return "; ".join(parts)


def plot_confusion(
    cm, class_names=None, normalize: bool = True, out_path=None, title=None, max_labels: int = 40, caption=None
) -> Figure:
    """A confusion matrix (rows: true class, columns: predicted) as a heat map.

    ``normalize`` divides each row by its count (per-class recall on the
    diagonal). Class names label the axes when there are at most
    ``max_labels`` classes (196 names would be unreadable).
    """
    cm = np.asarray(cm, dtype=float)
    n = cm.shape[0]
    if normalize:
        totals = cm.sum(axis=1, keepdims=True)
        cm = np.divide(cm, totals, out=np.zeros_like(cm), where=totals > 0)
    size = min(16, max(5, n * 0.35))
    fig = Figure(figsize=(size + 1.5, size), layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(cm, cmap="Blues", vmin=0, vmax=1 if normalize else None, interpolation="nearest")
    fig.colorbar(image, ax=ax, shrink=0.8, label="share of the true class" if normalize else "count")
    if class_names is not None and n <= max_labels:
        ax.set_xticks(np.arange(n), list(class_names), rotation=90, fontsize=7)
        ax.set_yticks(np.arange(n), list(class_names), fontsize=7)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title or ("Confusion matrix (row-normalised)" if normalize else "Confusion matrix"))
    return _finished(fig, caption, out_path)


def timing_table(timer) -> pd.DataFrame:
    """The report's "Execution time" table from a ``StageTimer`` (or its ``table()``).

    Rows: stages (data augmentation, hyperparameter search, each model) and
    ``Total (hours)``; columns: ``(group, "wall_min" | "cpu_min")``, e.g.
    ``("default", "wall_min")``. Minutes, except the total row in hours.
    """
    table = timer.table() if hasattr(timer, "table") else timer
    return table.copy()


def plot_timings(timer_or_table, out_path=None) -> Figure:
    """Wall and CPU minutes per stage, one bar group per hyperparameter group.

    The ``Total (hours)`` row is left out of the bars and shown in the title.
    """
    table = timing_table(timer_or_table)
    if table.empty:
        raise ValueError("no timings recorded yet")
    total = table.loc["Total (hours)"] if "Total (hours)" in table.index else None
    table = table.drop(index="Total (hours)", errors="ignore")
    groups = list(dict.fromkeys(table.columns.get_level_values(0)))
    stages = list(table.index)
    fig = Figure(figsize=(max(8, 1.1 * len(stages) + 3), 5), layout="constrained")
    ax = fig.subplots()
    x = np.arange(len(stages))
    series = [(g, kind) for g in groups for kind in ("wall_min", "cpu_min") if (g, kind) in table.columns]
    width = 0.8 / max(1, len(series))
    for i, (group, kind) in enumerate(series):
        values = table[(group, kind)].astype(float).to_numpy()
        label = f"{group}: {'wall' if kind == 'wall_min' else 'CPU'}"
        ax.bar(
            x + (i - (len(series) - 1) / 2) * width,
            values,
            width,
            label=label,
            hatch="//" if kind == "cpu_min" else None,
        )
    ax.set_xticks(x, stages, rotation=30, ha="right")
    ax.set_ylabel("minutes")
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    title = "Execution time per stage"
    if total is not None:
        parts = [
            f"{g} {float(total[(g, 'wall_min')]):.2f} h wall / {float(total[(g, 'cpu_min')]):.2f} h CPU"
            for g in groups
            if (g, "wall_min") in total.index and (g, "cpu_min") in total.index
        ]
        if parts:
            title += " (total: " + "; ".join(parts) + ")"
    ax.set_title(title)
    if out_path is not None:
        save_figure(fig, out_path)
    return fig


# --------------------------------------------------------------------------- #
# The search and the augmentation
# --------------------------------------------------------------------------- #


def _axes(ax, figsize):
    if ax is not None:
        return ax.figure, ax
    fig = Figure(figsize=figsize, layout="constrained")
    return fig, fig.subplots()


def _search_grid(results, plot, caption, out_path, height) -> Figure:
    """One panel per search of ``results`` (a dict of model -> SearchResult), drawn by ``plot(result, ax)``."""
    cols = min(2, len(results))
    rows = -(-len(results) // cols)
    fig = Figure(figsize=(7 * cols, height * rows), layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    for ax, result in zip(axes, results.values()):
        plot(result, ax=ax)
    for ax in axes[len(results) :]:
        ax.set_axis_off()
    return _finished(fig, caption, out_path)


def plot_searches(results, out_path=None, caption=None) -> Figure:
    """:func:`plot_convergence` of each model's search, one panel per model (a Figure)."""
    return _search_grid(results, plot_convergence, caption, out_path, 4.2)


def plot_search_importances(results, out_path=None, caption=None) -> Figure:
    """:func:`plot_importance` of each model's search, one panel per model (a Figure)."""
    height = 0.5 * max(3, max(len(r.space) for r in results.values())) + 1.2
    return _search_grid(results, plot_importance, caption, out_path, height)


def plot_convergence(result, out_path=None, caption=None, ax=None) -> Figure:
    """The objective of every trial and the best so far, against the trial number; a dotted line at trial
    one, the defaults (a Figure, or drawn on ``ax``)."""
    trials = result.trials
    fig, ax = _axes(ax, (7, 4.2))
    first = trials[trials["trial"] == trials["trial"].min()]
    if len(first) and first["state"].iloc[0] == "complete":
        ax.axhline(float(first["value"].iloc[0]), ls=":", color="0.4", label="defaults (trial one)")
    done = trials[trials["state"] == "complete"]
    ax.plot(done["trial"], done["value"], "o", label="trial", alpha=0.7)
    values = done["value"].to_numpy(dtype=float)
    if len(values):
        best = np.minimum.accumulate(values) if result.direction == "minimize" else np.maximum.accumulate(values)
        ax.step(done["trial"], best, where="post", label="best so far", color="C1")
    stopped = trials[trials["state"].isin(["pruned", "diverged"])]
    if len(stopped):
        shown = pd.to_numeric(stopped["last_value"], errors="coerce")
        if shown.notna().any():
            ax.plot(stopped["trial"][shown.notna()], shown[shown.notna()], "x", color="C3", label="pruned (last value)")
    ax.set_xlabel("trial")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    ax.set_ylabel(result.objective)
    ax.set_title(f"{result.model_name}: {result.backend} search, {result.objective} ({result.direction})")
    ax.grid(True, alpha=0.3)
    ax.legend()
    return _finished(fig, caption, out_path)


def plot_importance(result, out_path=None, caption=None, ax=None) -> Figure:
    """A bar chart of the hyperparameters' importance for the objective (fANOVA; a Figure, or drawn on
    ``ax``)."""
    importances = result.importances()
    fig, ax = _axes(ax, (7, 0.5 * max(3, len(importances)) + 1.2))
    if importances:
        names = list(importances)[::-1]
        ax.barh(names, [importances[n] for n in names], color="C0")
        ax.set_xlabel("importance (fANOVA, share of the variance of the objective)")
        ax.set_xlim(0, 1)
        ax.grid(True, axis="x", alpha=0.3)
    else:
        ax.text(
            0.5,
            0.5,
            "not enough completed trials to rank the hyperparameters",
            ha="center",
            va="center",
            transform=ax.transAxes,
        )
        ax.set_axis_off()
    ax.set_title(f"{result.model_name}: hyperparameter importance for {result.objective}")
    return _finished(fig, caption, out_path)


def plot_augmentations(images, pipeline=None, n_variants=4, seed=0, class_names=None, rows=None):
    """A grid: each original crop (first column) beside ``n_variants`` augmented variants.

    ``images``: uint8 RGB (N, H, W, 3) (e.g. ``decoded["train"].read(idx, np.uint8)``).
    ``rows``: their rows in the training split (default 0..N-1); with the set's
    ``seed`` the variants are exactly those :func:`build_augmented_set` writes
    for those rows. ``class_names``: one title per image. Returns a matplotlib
    ``Figure`` (not registered with pyplot; a notebook shows it as a cell's value).
    """
    images = np.asarray(images)
    if images.ndim == 3:
        images = images[None]
    if images.dtype != np.uint8 or images.ndim != 4 or len(images) == 0:
        raise ValueError(f"images must be uint8 (N, H, W, 3), got {images.dtype} {images.shape}")
    n_variants = check_positive_int("n_variants", n_variants)
    rows = list(range(len(images))) if rows is None else [int(r) for r in rows]
    if len(rows) != len(images) or (class_names is not None and len(class_names) != len(images)):
        raise ValueError("rows and class_names need one entry per image")
    from carclf.augment import REPORT_PIPELINE, augment_image

    declaration = REPORT_PIPELINE if pipeline is None else pipeline
    n, cols = len(images), n_variants + 1
    figure = Figure(figsize=(2.0 * cols, 2.1 * n), layout="constrained")
    axes = figure.subplots(n, cols, squeeze=False)
    for i, (image, row) in enumerate(zip(images, rows)):
        title = "original" if class_names is None else f"{class_names[i]}"
        axes[i, 0].imshow(image)
        axes[i, 0].set_title(title, fontsize=8)
        for v in range(n_variants):
            axes[i, v + 1].imshow(augment_image(image, seed, row, v, declaration))
            axes[i, v + 1].set_title(f"variant {v}", fontsize=8)
    for ax in axes.flat:
        ax.set_axis_off()
    return figure
