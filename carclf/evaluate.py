"""Testing a trained model (workflow step 13): metrics, classification report, confusions.

``evaluate_model(model, test_generator, class_names)`` predicts the test set
once and derives everything from those predictions:

- ``metrics``: the report's metrics (``carclf.metrics``) and the loss, on the
  whole test set;
- scikit-learn's classification report (per class precision, recall, F1 and
  support; macro and weighted averages), as a dict and as text;
- the confusion matrix (rows: true class, columns: predicted);
- the accuracy of each class (a Series indexed by class name);
- the most-confused class pairs, with their names;
- ``comparison_row(model_name, hyperparams_label)``: one row of the
  default-against-optimal comparison table (``carclf.report.plot_comparison``).

The generator must give its batches in a fixed order (the test generator is
not shuffled): the labels are read in the same order as the predictions.
"""

from __future__ import annotations

from dataclasses import dataclass

import keras
import numpy as np
import pandas as pd
from sklearn.metrics import classification_report, confusion_matrix

from carclf.metrics import report_metrics
from carclf.names import mistake_kinds
from carclf.stats import interval, mcnemar, wilson_interval

__all__ = [
    "EvaluationResult",
    "add_uncertainty",
    "comparison_table",
    "evaluate_model",
    "evaluate_predictions",
    "labels_in_order",
    "predict_probabilities",
    "selection_metric",
    "top_k",
]


@dataclass
class EvaluationResult:
    """Predictions of one model on the test set and what follows from them (picklable)."""

    class_names: list
    y_true: np.ndarray  # (N,) int class ids
    probabilities: np.ndarray  # (N, num_classes) float32
    metrics: dict  # loss and the report's metrics

    @property
    def y_pred(self) -> np.ndarray:
        return self.probabilities.argmax(axis=1)

    @property
    def num_classes(self) -> int:
        return self.probabilities.shape[1]

    @property
    def labels(self) -> np.ndarray:
        return np.arange(self.num_classes)

    @property
    def classification_report(self) -> dict:
        """scikit-learn's report as a dict (class names as keys; classes without test images included)."""
        return classification_report(
            self.y_true,
            self.y_pred,
            labels=self.labels,
            target_names=self.class_names,
            output_dict=True,
            zero_division=0,
        )

    @property
    def classification_report_text(self) -> str:
        return classification_report(
            self.y_true, self.y_pred, labels=self.labels, target_names=self.class_names, digits=3, zero_division=0
        )

    @property
    def confusion_matrix(self) -> np.ndarray:
        """``(num_classes, num_classes)`` counts: row = true class, column = predicted class."""
        return confusion_matrix(self.y_true, self.y_pred, labels=self.labels)

    @property
    def per_class_accuracy(self) -> pd.Series:
        """Share of each class's test images predicted correctly (NaN for a class without any)."""
        cm = self.confusion_matrix
        totals = cm.sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            acc = np.where(totals > 0, np.diag(cm) / np.maximum(totals, 1), np.nan)
        return pd.Series(acc, index=pd.Index(self.class_names, name="class"), name="accuracy")

    def per_class(self, confidence: float = 0.95) -> pd.DataFrame:
        """Per class: its test images (``support``), its accuracy and the accuracy's Wilson interval."""
        support = np.bincount(self.y_true, minlength=self.num_classes)
        right = np.bincount(self.y_true[self.y_pred == self.y_true], minlength=self.num_classes)
        bounds = [wilson_interval(r, n, confidence) for r, n in zip(right, support)]
        with np.errstate(invalid="ignore", divide="ignore"):
            accuracy = np.where(support > 0, right / np.maximum(support, 1), np.nan)
        return pd.DataFrame(
            {"support": support, "accuracy": accuracy, "low": [b[0] for b in bounds], "high": [b[1] for b in bounds]},
            index=pd.Index(self.class_names, name="class"),
        )

    def mistakes(self) -> dict:
        """Accuracy at make-and-model and make level, and the share of each kind of mistake
        (:func:`carclf.names.mistake_kinds`)."""
        return mistake_kinds(self.y_true, self.y_pred, self.class_names)

    def most_confused(self, n: int = 10) -> pd.DataFrame:
        """The ``n`` (true, predicted) pairs of different classes seen most often.

        Columns: ``true_class``, ``predicted_class`` (names), ``count``,
        ``share`` (of the true class's test images), ``true_id``,
        ``predicted_id``. Pairs never confused are left out.
        """
        cm = self.confusion_matrix.copy()
        np.fill_diagonal(cm, 0)
        totals = np.bincount(self.y_true, minlength=self.num_classes)
        true_ids, pred_ids = np.nonzero(cm)
        counts = cm[true_ids, pred_ids]
        order = np.lexsort((pred_ids, true_ids, -counts))[:n]
        names = np.asarray(self.class_names, dtype=object)
        return pd.DataFrame(
            {
                "true_class": names[true_ids[order]],
                "predicted_class": names[pred_ids[order]],
                "count": counts[order].astype(int),
                "share": counts[order] / np.maximum(totals[true_ids[order]], 1),
                "true_id": true_ids[order],
                "predicted_id": pred_ids[order],
            }
        )

    def comparison_row(self, model_name: str, hyperparams_label: str = "default") -> dict:
        """One row of the model comparison table: the test metrics and the macro averages."""
        report = self.classification_report
        macro = report.get("macro avg", {})
        return {
            "model": model_name,
            "hyperparams": hyperparams_label,
            **{k: float(v) for k, v in self.metrics.items()},
            "macro_precision": float(macro.get("precision", np.nan)),
            "macro_recall": float(macro.get("recall", np.nan)),
            "macro_f1": float(macro.get("f1-score", np.nan)),
            "n_test": int(len(self.y_true)),
        }


def top_k(probabilities, class_names, k: int = 5, index=None) -> pd.DataFrame:
    """The ``k`` most probable classes of each row of ``probabilities``, best first.

    One row per (input, rank): ``input`` (from ``index``, default the row
    number), ``rank`` (1 to k), ``class_id``, ``class_name``, ``probability``.
    """
    probabilities = np.asarray(probabilities, dtype=np.float64)
    if probabilities.ndim != 2:
        raise ValueError(f"probabilities must be (inputs, classes), got shape {probabilities.shape}")
    if len(class_names) != probabilities.shape[1]:
        raise ValueError(f"{len(class_names)} class names for a model with {probabilities.shape[1]} outputs")
    k = min(int(k), probabilities.shape[1])
    index = list(range(len(probabilities))) if index is None else list(index)
    # A stable sort keeps equal probabilities in class order, so the answer does not depend on the platform.
    best = np.argsort(-probabilities, axis=1, kind="stable")[:, :k]
    names = np.asarray(class_names, dtype=object)
    return pd.DataFrame(
        {
            "input": np.repeat(np.asarray(index, dtype=object), k),
            "rank": np.tile(np.arange(1, k + 1), len(best)),
            "class_id": best.ravel(),
            "class_name": names[best.ravel()],
            "probability": np.take_along_axis(probabilities, best, axis=1).ravel(),
        }
    )


def comparison_table(rows) -> pd.DataFrame:
    """The rows of :meth:`EvaluationResult.comparison_row` as a table indexed by (model, hyperparams)."""
    return pd.DataFrame(list(rows)).set_index(["model", "hyperparams"])


def evaluate_predictions(y_true, probabilities, class_names=None) -> EvaluationResult:
    """An :class:`EvaluationResult` from labels (ids or one-hot) and predicted probabilities."""
    probabilities = np.asarray(probabilities, dtype=np.float32)
    y_true = np.asarray(y_true)
    if y_true.ndim == 2:
        y_true = y_true.argmax(axis=1)
    y_true = y_true.astype(np.int64)
    num_classes = probabilities.shape[1]
    if len(y_true) != len(probabilities):
        raise ValueError(f"{len(y_true)} labels but {len(probabilities)} predictions")
    if class_names is None:
        class_names = [str(i) for i in range(num_classes)]
    class_names = list(class_names)
    if len(class_names) != num_classes:
        raise ValueError(f"{len(class_names)} class names for a model with {num_classes} outputs")
    onehot = np.eye(num_classes, dtype=np.float32)[y_true]
    metrics = {
        "loss": float(np.mean(keras.ops.convert_to_numpy(keras.losses.categorical_crossentropy(onehot, probabilities))))
    }
    for metric in report_metrics():
        metric.update_state(onehot, probabilities)
        metrics[metric.name] = float(keras.ops.convert_to_numpy(metric.result()))
    return EvaluationResult(class_names, y_true, probabilities, metrics)


def selection_metric(table: pd.DataFrame) -> str:
    """What picks the best run: validation accuracy, or test accuracy under the report's protocol."""
    if "validation" in table.columns and (table["validation"] == "split").all() and "val_accuracy" in table.columns:
        return "val_accuracy"
    return "accuracy"


def add_uncertainty(table: pd.DataFrame, probabilities: list, y_true, settings, seed: int = 0) -> pd.DataFrame:
    """``table`` (one row per run, all tested on the same images) with intervals and paired tests.

    ``probabilities[i]`` are row ``i``'s test predictions, ``settings`` a ``carclf.settings.EvalSettings``
    (interval method, confidence). Adds, per run: ``<metric>_low`` / ``<metric>_high`` for accuracy, top-3
    and top-5 accuracy; ``best`` (the run :func:`selection_metric` picks); ``p_vs_best`` and
    ``differs_from_best`` (McNemar's exact test against the best run, at 1 - confidence); ``p_vs_default``
    and ``differs_from_default`` (an optimal run against the default run of the same model); ``n_test``.
    """
    y_true = np.asarray(y_true, dtype=np.int64)
    table = table.reset_index(drop=True).copy()
    hits = [_hits(p, y_true) for p in probabilities]
    for k, name in ((1, "accuracy"), (3, "top3_accuracy"), (5, "top5_accuracy")):
        bounds = [
            interval(h[k], settings.interval, settings.confidence, settings.bootstrap_resamples, seed) for h in hits
        ]
        table[f"{name}_low"], table[f"{name}_high"] = [b[0] for b in bounds], [b[1] for b in bounds]
    alpha = 1 - settings.confidence
    best = int(table[selection_metric(table)].astype(float).idxmax())
    table["best"] = table.index == best
    table["p_vs_best"] = [mcnemar(h[1], hits[best][1])["p_value"] for h in hits]
    table["differs_from_best"] = table["p_vs_best"] < alpha
    table.loc[best, "differs_from_best"] = False
    defaults = {m: i for i, (m, label) in enumerate(zip(table["model"], table["hyperparams"])) if label == "default"}
    p_default = [
        mcnemar(h[1], hits[defaults[m]][1])["p_value"] if label == "optimal" and m in defaults else np.nan
        for h, m, label in zip(hits, table["model"], table["hyperparams"])
    ]
    table["p_vs_default"] = p_default
    table["differs_from_default"] = table["p_vs_default"] < alpha
    table["n_test"] = len(y_true)
    return table


def _hits(probabilities, y_true) -> dict:
    top = np.argsort(-np.asarray(probabilities), axis=1, kind="stable")[:, :5]
    return {k: (top[:, :k] == y_true[:, None]).any(axis=1) for k in (1, 3, 5)}


def labels_in_order(generator) -> np.ndarray:
    """The class ids of every batch, in order, without reading images where possible."""
    split = getattr(generator, "split", None)
    if split is not None and hasattr(generator, "batch_indices") and getattr(generator, "mix", None) is None:
        return np.concatenate([split.class_ids[generator.batch_indices(i)] for i in range(len(generator))])
    return np.concatenate([np.asarray(generator[i][1]).argmax(axis=1) for i in range(len(generator))])


def predict_probabilities(model, generator, tta: bool = False) -> np.ndarray:
    """The model's class probabilities for every image of ``generator``, in order (float32).

    With ``tta``, the mean of the probabilities for each image and its horizontal flip.
    """
    if getattr(generator, "shuffle", False):
        raise ValueError(
            "predictions need an unshuffled generator (shuffle=False): the order of the "
            "predictions must match the order of the labels"
        )
    out = []
    for index in range(len(generator)):
        images = np.asarray(generator[index][0])
        probabilities = np.asarray(keras.ops.convert_to_numpy(model.predict_on_batch(images)), dtype=np.float32)
        if tta:
            flipped = np.ascontiguousarray(images[:, :, ::-1])
            probabilities = (probabilities + keras.ops.convert_to_numpy(model.predict_on_batch(flipped))) / 2
        out.append(probabilities.astype(np.float32))
    return np.concatenate(out) if out else np.empty((0, model.output_shape[-1]), dtype=np.float32)


def evaluate_model(model, test_generator, class_names=None, verbose=0, tta: bool = False) -> EvaluationResult:
    """Predict ``test_generator`` with ``model`` (``tta``: also its horizontal flips) and evaluate.

    Raises ``ValueError`` for a shuffled generator: its order would change between reading the labels and
    predicting.
    """
    probabilities = predict_probabilities(model, test_generator, tta=tta)
    y_true = labels_in_order(test_generator)
    if len(y_true) != len(probabilities):
        raise ValueError(f"the generator gave {len(probabilities)} predictions for {len(y_true)} labels")
    if class_names is None:
        split = getattr(test_generator, "split", None)
        class_names = getattr(split, "class_names", None)
    return evaluate_predictions(y_true, probabilities, class_names)
