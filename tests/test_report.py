import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from carclf import report  # noqa: E402
from carclf.metrics import HISTORY_METRICS  # noqa: E402
from carclf.runlog import StageTimer  # noqa: E402

PNG = b"\x89PNG\r\n\x1a\n"


def _history(epochs=5, phase=False):
    rng = np.random.default_rng(0)
    h = {}
    for name in HISTORY_METRICS:
        h[name] = rng.random(epochs).tolist()
        h[f"val_{name}"] = rng.random(epochs).tolist()
    h["learning_rate"] = [1e-3] * epochs
    if phase:
        h["phase"] = [0.0, 0.0, 1.0, 1.0, 1.0][:epochs]
    return h


def test_history_plot_is_written(tmp_path):
    fig = report.plot_history(_history(phase=True), "resnet50", out_dir=tmp_path)
    assert isinstance(fig, Figure)
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == ["Accuracy", "Loss", "Precision", "Recall", "AUC", "Top-3 accuracy"]
    assert all(len(ax.get_lines()) >= 2 for ax in fig.axes)  # train and validation
    assert (tmp_path / "resnet50_history.png").read_bytes()[:8] == PNG
    one = report.plot_history(_history(epochs=1), "model1")
    fig.canvas.draw(), one.canvas.draw()
    for ax in (*fig.axes, *one.axes):  # whole epochs on the axis, also for a run of one epoch
        assert all(float(tick).is_integer() for tick in ax.get_xticks())


def test_history_plot_tolerates_missing_metrics(tmp_path):
    fig = report.plot_history({"loss": [1.0, 0.5], "val_loss": [1.2, 0.9]}, "model1", out_path=tmp_path / "h.png")
    assert "no 'auc' in the history" in [t.get_text() for t in fig.axes[4].texts]
    assert (tmp_path / "h.png").read_bytes()[:8] == PNG


def test_comparison_plot_default_against_optimal(tmp_path):
    rows = []
    for model in ("model1", "alexnet", "efficientnetb0"):
        for label, bonus in (("default", 0.0), ("optimal", 0.05)):
            rows.append(
                {
                    "model": model,
                    "hyperparams": label,
                    "accuracy": 0.5 + bonus,
                    "top3_accuracy": 0.7 + bonus,
                    "precision": 0.6,
                    "recall": 0.4,
                    "auc": 0.9,
                }
            )
    rows = rows[:-1]  # a model without its optimal run leaves a gap, not an error
    fig = report.plot_comparison(rows, out_path=tmp_path / "comparison.png")
    assert [ax.get_title() for ax in fig.axes if ax.get_visible()] == [
        "accuracy",
        "top3 accuracy",
        "precision",
        "recall",
        "auc",
    ]
    assert len(fig.axes[0].patches) == 6  # 3 models x 2 hyperparameter sets (one NaN)
    assert (tmp_path / "comparison.png").read_bytes()[:8] == PNG
    with pytest.raises(ValueError, match="none of the metrics"):
        report.plot_comparison([{"model": "m", "loss": 1.0}])


def test_comparison_plot_stars_the_best_run_and_hatches_only_the_runs_not_different_from_it():
    rows = [
        {"model": "a", "hyperparams": "default", "accuracy": 0.8, "best": True, "differs_from_best": False},
        {"model": "b", "hyperparams": "default", "accuracy": 0.75, "best": False, "differs_from_best": False},
        {"model": "c", "hyperparams": "default", "accuracy": 0.3, "best": False, "differs_from_best": True},
    ]
    ax = report.plot_comparison(rows, metrics=("accuracy",)).axes[0]
    assert [bar.get_hatch() for bar in ax.patches] == [None, "//", None]
    assert [text.get_text() for text in ax.texts] == ["0.80*", "0.75", "0.30"]
    assert [patch.get_hatch() for patch in ax.get_legend().get_patches()] == [None]


def test_confusion_plot(tmp_path):
    cm = np.array([[5, 1, 0], [2, 3, 0], [0, 0, 0]])
    fig = report.plot_confusion(cm, ["a", "b", "c"], out_path=tmp_path / "cm.png")
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["a", "b", "c"]
    assert (tmp_path / "cm.png").read_bytes()[:8] == PNG


def test_timing_table_and_plot(tmp_path):
    timer = StageTimer(tmp_path / "timings.csv")
    for group in ("default", "optimal"):
        for stage in ("Data augmentation", "model1", "alexnet"):
            with timer.stage(stage, group=group):
                pass
    table = report.timing_table(timer)
    assert list(table.index) == ["Data augmentation", "model1", "alexnet", "Total (hours)"]
    assert ("default", "wall_min") in table.columns and ("optimal", "cpu_min") in table.columns
    fig = report.plot_timings(timer, out_path=tmp_path / "timings.png")
    assert len(fig.axes[0].patches) == 3 * 4  # 3 stages x (2 groups x wall/CPU)
    assert "total" in fig.axes[0].get_title()
    assert (tmp_path / "timings.png").read_bytes()[:8] == PNG
    with pytest.raises(ValueError, match="no timings"):
        report.plot_timings(pd.DataFrame())
