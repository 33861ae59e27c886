"""The report's metrics ("Metrics Used"), as fresh Keras metric objects with fixed names.

``report_metrics()`` returns new objects each call (a metric holds state, so
two models must not share one). Their names are fixed, so that the history
keys are the same for every model and backend: ``accuracy``,
``categorical_accuracy``, ``top3_accuracy``, ``top5_accuracy``,
``precision``, ``recall``, ``auc`` and, for the validation data, the same
with ``val_`` in front.

Notes on what they compute for one-hot labels and softmax outputs:

- ``accuracy`` is the report's ``"accuracy"`` string, which Keras resolves
  to categorical accuracy for a categorical cross-entropy loss; it is written
  out here as ``CategoricalAccuracy(name="accuracy")`` (the generic
  ``keras.metrics.Accuracy`` compares the probabilities with the labels
  element by element, which would be wrong). The two accuracies are therefore
  equal, as the report says they are "interchangeable".
- ``precision``, ``recall`` and ``auc`` treat every (sample, class) entry as
  one binary decision (micro-averaging; precision and recall at threshold
  0.5), which is what the Keras metrics do with multi-class inputs and what
  the report reported. ``carclf.evaluate`` adds the per-class (macro)
  precision and recall of scikit-learn's classification report.
"""

import keras

__all__ = ["HISTORY_METRICS", "METRIC_NAMES", "report_metrics"]

#: The metric names, in the report's order of presentation.
METRIC_NAMES = (
    "accuracy",
    "categorical_accuracy",
    "top3_accuracy",
    "top5_accuracy",
    "precision",
    "recall",
    "auc",
)

#: Every key of a training history (loss and metrics, train and validation).
HISTORY_METRICS = ("loss", *METRIC_NAMES)


def report_metrics():
    """New metric objects for ``model.compile(metrics=...)``, names as in ``METRIC_NAMES``."""
    return [
        keras.metrics.CategoricalAccuracy(name="accuracy"),
        keras.metrics.CategoricalAccuracy(name="categorical_accuracy"),
        keras.metrics.TopKCategoricalAccuracy(k=3, name="top3_accuracy"),
        keras.metrics.TopKCategoricalAccuracy(k=5, name="top5_accuracy"),
        keras.metrics.Precision(name="precision"),
        keras.metrics.Recall(name="recall"),
        keras.metrics.AUC(name="auc"),
    ]
