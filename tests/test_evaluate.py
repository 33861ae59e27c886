import keras
import numpy as np
import pandas as pd
import pytest

from carclf.evaluate import comparison_table, evaluate_model, evaluate_predictions, top_k
from carclf.generators import ImageBatches
from carclf.metrics import METRIC_NAMES, report_metrics
from carclf.models import create_model1_model

NAMES = ["Audi A4", "BMW M3", "Ram C/V Cargo Van Minivan 2012", "Volvo XC90"]


@pytest.fixture
def result():
    # true:      0  0  0  1  1  1  2  2  2  2 ; class 3 has no test image
    # predicted: 0  0  1  1  2  2  2  2  2  1
    y_true = np.array([0, 0, 0, 1, 1, 1, 2, 2, 2, 2])
    predicted = np.array([0, 0, 1, 1, 2, 2, 2, 2, 2, 1])
    probs = np.full((10, 4), 0.1, dtype=np.float32)
    probs[np.arange(10), predicted] = 0.7
    return evaluate_predictions(y_true, probs, NAMES)


def test_confusion_matrix_and_per_class_accuracy(result):
    expected = np.array([[2, 1, 0, 0], [0, 1, 2, 0], [0, 1, 3, 0], [0, 0, 0, 0]])
    np.testing.assert_array_equal(result.confusion_matrix, expected)
    acc = result.per_class_accuracy
    assert list(acc.index) == NAMES
    np.testing.assert_allclose(acc.to_numpy()[:3], [2 / 3, 1 / 3, 3 / 4])
    assert np.isnan(acc.iloc[3])  # no test image: no accuracy


def test_most_confused_pairs_by_name(result):
    top = result.most_confused(2)
    assert list(top.columns[:3]) == ["true_class", "predicted_class", "count"]
    assert top.iloc[0][["true_class", "predicted_class", "count"]].tolist() == [
        "BMW M3",
        "Ram C/V Cargo Van Minivan 2012",
        2,
    ]
    assert top.iloc[0]["share"] == pytest.approx(2 / 3)
    assert len(result.most_confused(10)) == 3  # only pairs that were confused


def test_metrics_and_classification_report(result):
    assert set(result.metrics) == {"loss", *METRIC_NAMES}
    assert result.metrics["accuracy"] == pytest.approx(0.6)
    assert result.metrics["top5_accuracy"] == pytest.approx(1.0)
    report = result.classification_report
    assert report["Audi A4"]["precision"] == pytest.approx(1.0)
    assert report["BMW M3"]["recall"] == pytest.approx(1 / 3)
    assert report["Volvo XC90"]["support"] == 0
    assert "Ram C/V Cargo Van Minivan 2012" in result.classification_report_text


def test_comparison_rows(result):
    rows = [result.comparison_row("model1", "default"), result.comparison_row("model1", "optimal")]
    assert rows[0]["accuracy"] == pytest.approx(0.6) and rows[0]["n_test"] == 10
    assert {"top3_accuracy", "precision", "recall", "auc", "macro_f1"} <= set(rows[0])
    table = comparison_table(rows)
    assert table.index.names == ["model", "hyperparams"]
    assert table.loc[("model1", "optimal"), "accuracy"] == pytest.approx(0.6)


def test_evaluate_model_agrees_with_keras(synthetic_cars32):
    keras.utils.set_random_seed(0)
    model = create_model1_model((32, 32, 3), 10)
    model.compile("adam", "categorical_crossentropy", metrics=report_metrics())
    test = ImageBatches(synthetic_cars32.decoded["test"], 32, shuffle=False)  # 4 batches, the last partial
    result = evaluate_model(model, test, synthetic_cars32.class_names)
    np.testing.assert_array_equal(result.y_true, synthetic_cars32.decoded["test"].class_ids)
    assert result.probabilities.shape == (100, 10)
    keras_metrics = model.evaluate(test, verbose=0, return_dict=True)
    for name, value in keras_metrics.items():
        assert result.metrics[name] == pytest.approx(value, rel=1e-4, abs=1e-6), name
    assert isinstance(result.per_class_accuracy, pd.Series)
    with pytest.raises(ValueError, match="unshuffled"):
        evaluate_model(model, ImageBatches(synthetic_cars32.decoded["test"], 32, shuffle=True))


def test_top_k_names_the_most_probable_classes_best_first():
    probabilities = np.array([[0.1, 0.6, 0.3, 0.0], [0.25, 0.25, 0.2, 0.3]])
    table = top_k(probabilities, ["a", "b", "c", "d"], k=3, index=["x.jpg", "y.jpg"])
    assert list(table["input"]) == ["x.jpg"] * 3 + ["y.jpg"] * 3
    assert list(table["rank"]) == [1, 2, 3, 1, 2, 3]
    assert list(table["class_name"]) == ["b", "c", "a", "d", "a", "b"]  # a tie keeps class order
    np.testing.assert_allclose(table["probability"], [0.6, 0.3, 0.1, 0.3, 0.25, 0.25])
    assert len(top_k(probabilities, list("abcd"), k=10)) == 8  # never more than the classes
    with pytest.raises(ValueError, match="3 class names for a model with 4 outputs"):
        top_k(probabilities, list("abc"))
