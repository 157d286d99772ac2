"""Metric functions against values computed by hand, and the figures drawn from them."""

import math
import os

import numpy as np
import pytest

from abo_tf.reports import metrics

# 4 examples over 4 classes; class 3 never appears. Per class (P, R, F1):
# 0: (1, 1/2, 2/3), 1: (1/3, 1, 1/2), 2: (0, 0, 0).
LABELS = np.array([0, 0, 1, 2])
PREDICTIONS = np.array([0, 1, 1, 1])


def test_macro_averages_leave_out_classes_absent_from_labels_and_predictions():
    result = metrics.classification_metrics(LABELS, PREDICTIONS, num_classes=4)
    assert result["num_examples"] == 4
    assert result["accuracy"] == pytest.approx(0.5)
    assert result["macro_precision"] == pytest.approx(4 / 9)
    assert result["macro_recall"] == pytest.approx(1 / 2)
    assert result["macro_f1"] == pytest.approx(7 / 18)
    # Weighted by support (2, 1, 1): F1 = (2 * 2/3 + 1/2 + 0) / 4.
    assert result["weighted_f1"] == pytest.approx((4 / 3 + 1 / 2) / 4)


def test_macro_averages_are_over_the_classes_with_support_not_the_predicted_ones():
    # Class 1 is the only class in the labels: P 1, R 2/3, F1 0.8. Class 0 is predicted but absent:
    # its mistake costs class 1 its recall, and shows as class 0's precision 0 in per_class_metrics.
    result = metrics.classification_metrics([1, 1, 1], [1, 1, 0], num_classes=3)
    assert result["accuracy"] == pytest.approx(2 / 3)
    assert result["macro_precision"] == pytest.approx(1.0) and result["macro_recall"] == pytest.approx(2 / 3)
    assert result["macro_f1"] == pytest.approx(0.8)
    assert result["macro_classes"] == 1 and result["predicted_without_support"] == 1
    per_class = metrics.per_class_metrics([1, 1, 1], [1, 1, 0], ["a", "b", "c"])
    assert per_class["in_macro_average"].tolist() == [False, True, False]
    assert per_class["support"].tolist() == [0, 3, 0] and per_class["precision"].tolist()[0] == 0.0
    strata = metrics.strata_metrics([1, 1, 1], [1, 1, 0], np.array(["tail", "tail", "head"]))
    assert strata["tail"]["macro_f1"] == pytest.approx(0.8)
    perfect = metrics.classification_metrics([2, 2], [2, 2], num_classes=3)
    assert perfect["macro_f1"] == pytest.approx(1.0) and perfect["accuracy"] == 1.0


def test_labels_outside_the_label_space_are_refused():
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        metrics.classification_metrics([0, 3], [0, 1], num_classes=3)


def test_top_k_accuracy():
    scores = np.array([[0.5, 0.3, 0.2], [0.1, 0.2, 0.7], [0.6, 0.3, 0.1]])
    assert metrics.top_k_accuracy([1, 0, 2], scores, k=1) == pytest.approx(0.0)
    assert metrics.top_k_accuracy([1, 0, 2], scores, k=2) == pytest.approx(1 / 3)
    assert metrics.top_k_accuracy([1, 0, 2], scores, k=5) == pytest.approx(1.0)  # k capped at the classes


def test_strata_boundaries():
    strata = metrics.frequency_strata([1000, 999, 100, 99, 0], head_min=1000, tail_below=100)
    assert strata.tolist() == ["head", "torso", "torso", "tail", "tail"]
    assert metrics.frequency_strata([5, 50], head_min=10, tail_below=10).tolist() == ["tail", "head"]
    with pytest.raises(ValueError, match="tail_below"):
        metrics.frequency_strata([1], head_min=10, tail_below=20)


def test_strata_metrics_by_hand():
    strata = metrics.frequency_strata([1500, 200, 5, 50])  # head, torso, tail, tail
    scores = np.eye(4)[PREDICTIONS]
    result = metrics.strata_metrics(LABELS, PREDICTIONS, strata, scores)
    assert result["head"] == pytest.approx(
        {
            "num_classes": 1,
            "num_examples": 2,
            "accuracy": 0.5,
            "macro_precision": 1.0,
            "macro_recall": 0.5,
            "macro_f1": 2 / 3,
            "top5_accuracy": 1.0,
        }
    )
    assert result["torso"]["accuracy"] == 1.0 and result["torso"]["macro_f1"] == pytest.approx(0.5)
    # Tail: classes 2 and 3, but class 3 is in neither labels nor predictions.
    assert result["tail"]["num_classes"] == 2 and result["tail"]["num_examples"] == 1
    assert result["tail"]["accuracy"] == 0.0 and result["tail"]["macro_f1"] == 0.0


def test_stratum_without_examples_is_nan_not_zero():
    result = metrics.strata_metrics([0, 1], [0, 1], np.array(["tail", "tail"]))
    assert (
        result["head"]["num_examples"] == 0
        and math.isnan(result["head"]["accuracy"])
        and math.isnan(result["head"]["macro_f1"])
    )
    assert result["tail"]["macro_f1"] == 1.0


def test_expected_calibration_error_by_hand():
    labels = [0, 1, 0, 1]
    probabilities = np.array([[0.9, 0.1], [0.6, 0.4], [0.2, 0.8], [0.3, 0.7]])
    # One example per bin: |1 - 0.9|, |0 - 0.6|, |0 - 0.8|, |1 - 0.7|, averaged.
    assert metrics.expected_calibration_error(labels, probabilities, num_bins=10) == pytest.approx(0.45)
    table = metrics.calibration_table(labels, probabilities, num_bins=10)
    assert table["count"].sum() == 4 and len(table) == 10
    assert metrics.expected_calibration_error([0, 1], np.array([[1.0, 0.0], [0.0, 1.0]])) == pytest.approx(0.0)
    assert math.isnan(metrics.expected_calibration_error([], np.zeros((0, 2))))


def test_evaluation_metrics_leaves_ece_out_for_uncalibrated_scores():
    scores = np.eye(4)[PREDICTIONS] * 3.0 - 1.0  # a decision function, not probabilities
    result = metrics.evaluation_metrics(LABELS, PREDICTIONS, scores, [1500, 200, 5, 50], calibrated=False)
    assert result["expected_calibration_error"] is None
    assert result["macro_f1"] == pytest.approx(7 / 18) and set(result["strata"]) == set(metrics.STRATA)
    assert result["strata_thresholds"] == {"head_min": metrics.HEAD_MIN, "tail_below": metrics.TAIL_BELOW}


def test_confusion_matrix_top_counts_the_classes_of_the_mistakes_and_pools_the_rest():
    labels = [0, 0, 0, 1, 1, 2, 3]
    predictions = [0, 1, 3, 1, 1, 2, 0]
    matrix, names = metrics.confusion_matrix_top(labels, predictions, ["a", "b", "c", "d"], top_n=2)
    assert names == ["a", "b", "all others"]  # a -> b is the first mistake; a, b the largest classes
    assert matrix.tolist() == [[1, 1, 1], [0, 2, 0], [1, 0, 1]]  # a -> d (other); c -> c (other), d -> a


@pytest.mark.parametrize("train_counts,order", [(None, ["a", "b", "c", "d"]), ([1, 2, 3, 4], ["d", "c", "b", "a"])])
def test_confusion_matrix_top_without_all_others_when_every_class_fits(train_counts, order):
    labels, predictions = [0, 0, 0, 1, 1, 2, 3], [0, 1, 3, 1, 1, 2, 0]
    matrix, names = metrics.confusion_matrix_top(labels, predictions, ["a", "b", "c", "d"], 4, train_counts)
    assert names == order and matrix.sum() == 7  # the per-class F1 chart's order: most training examples first
    assert matrix[names.index("a"), names.index("d")] == 1


def test_confusion_matrix_of_576_classes_shows_where_the_mistakes_are():
    names, labels, predictions = _576_classes()
    matrix, shown = metrics.confusion_matrix_top(labels, predictions, names, top_n=20)
    planted = {"TYPE_006", "TYPE_007", "TYPE_013", "TYPE_500", "TYPE_569", "TYPE_000", "TYPE_300", "TYPE_301"}
    assert len(shown) == 21 and shown[-1] == "all others" and planted <= set(shown)
    assert matrix.sum() == len(labels) and matrix[shown.index("TYPE_006"), shown.index("TYPE_007")] == 5


def test_figures_are_written(tmp_path):
    per_class = metrics.per_class_metrics(LABELS, PREDICTIONS, ["a", "b", "c", "d"], train_counts=[1500, 200, 5, 50])
    assert per_class["stratum"].tolist() == ["head", "torso", "tail", "tail"]
    assert per_class["support"].tolist() == [2, 1, 1, 0]
    probabilities = np.array([[0.9, 0.1, 0, 0], [0.4, 0.6, 0, 0], [0.2, 0.7, 0.1, 0], [0.1, 0.5, 0.4, 0]])
    paths = [
        metrics.plot_per_class_f1(per_class, str(tmp_path / "f1.png")),
        metrics.plot_reliability_diagram(
            metrics.calibration_table(LABELS, probabilities), 0.1, str(tmp_path / "reliability.png")
        ),
        metrics.plot_confusion_matrix(
            *metrics.confusion_matrix_top(LABELS, PREDICTIONS, ["a", "b", "c", "d"]), str(tmp_path / "confusion.png")
        ),
    ]
    for path in paths:
        with open(path, "rb") as handle:
            assert handle.read(8) == b"\x89PNG\r\n\x1a\n" and os.path.getsize(path) > 5000


# --- hundreds of classes: what scales ------------------------------------------


def test_confused_pairs_by_hand():
    # a: 4 images (2 right, 2 -> b); b: 3 images (1 -> a, 1 -> c); c: 1 image, right.
    labels = [0, 0, 0, 0, 1, 1, 1, 2]
    predictions = [0, 0, 1, 1, 1, 0, 2, 2]
    pairs = metrics.confused_pairs(labels, predictions, ["a", "b", "c"])
    assert pairs.to_dict("records") == [
        {"true_class": "a", "predicted_class": "b", "count": 2, "share": pytest.approx(2 / 4)},
        {"true_class": "b", "predicted_class": "a", "count": 1, "share": pytest.approx(1 / 3)},
        {"true_class": "b", "predicted_class": "c", "count": 1, "share": pytest.approx(1 / 3)},
    ]
    assert metrics.confused_pairs([0, 1], [0, 1], ["a", "b"]).empty


def _576_classes():
    """ABO's 576 product types: class i has 1 + i % 7 test images, all right except the planted confusions."""
    names = [f"TYPE_{index:03d}" for index in range(576)]
    labels = np.repeat(np.arange(576), 1 + np.arange(576) % 7)
    predictions = labels.copy()
    planted = [(6, 7, 5), (13, 500, 3), (569, 0, 2), (300, 301, 1)]  # (true, predicted, count)
    for true, predicted, count in planted:
        predictions[np.flatnonzero(labels == true)[:count]] = predicted
    return names, labels, predictions


def test_confused_pairs_of_576_classes():
    names, labels, predictions = _576_classes()
    pairs = metrics.confused_pairs(labels, predictions, names)
    # Support 1 + i % 7: TYPE_006, TYPE_013 and TYPE_300 (300 = 42 * 7 + 6) have 7 images, TYPE_569 (81 * 7 + 2) has 3.
    assert pairs.to_dict("records") == [
        {"true_class": "TYPE_006", "predicted_class": "TYPE_007", "count": 5, "share": pytest.approx(5 / 7)},
        {"true_class": "TYPE_013", "predicted_class": "TYPE_500", "count": 3, "share": pytest.approx(3 / 7)},
        {"true_class": "TYPE_569", "predicted_class": "TYPE_000", "count": 2, "share": pytest.approx(2 / 3)},
        {"true_class": "TYPE_300", "predicted_class": "TYPE_301", "count": 1, "share": pytest.approx(1 / 7)},
    ]


def _png_size(path):
    from PIL import Image

    with Image.open(path) as image:
        return image.size


@pytest.mark.parametrize("num_classes,chart", [(12, "bars"), (40, "bars"), (41, "scatter"), (576, "scatter")])
def test_per_class_f1_figure_stays_readable(num_classes, chart, tmp_path):
    rng = np.random.default_rng(num_classes)
    labels = np.repeat(np.arange(num_classes), 3)
    predictions = np.where(rng.random(len(labels)) < 0.7, labels, rng.integers(0, num_classes, len(labels)))
    train_counts = np.round(10 ** rng.uniform(0, 4, num_classes)).astype(int)
    train_counts[0] = 0  # a class without training examples still has a place on the log axis
    names = [f"C{index}" for index in range(num_classes)]
    per_class = metrics.per_class_metrics(labels, predictions, names, train_counts)
    width, height = _png_size(metrics.plot_per_class_f1(per_class, str(tmp_path / "f1.png")))
    assert width <= 2000 and height <= 1000
    # A bar per class grows with the classes (0.22 in each at 110 dpi); the scatter has a fixed size.
    assert (width > 0.22 * 110 * num_classes) == (chart == "bars")


def test_format_summary_says_n_a_for_an_empty_stratum():
    result = metrics.evaluation_metrics(LABELS, PREDICTIONS, np.eye(4)[PREDICTIONS], [5, 200, 5, 50])  # no head class
    summary = metrics.format_summary(result, "test")
    head = next(line for line in summary.splitlines() if line.strip().startswith("head"))
    assert "macro F1 n/a" in head and "accuracy n/a" in head
    assert "nan" not in summary.lower() and "test: 4 images, macro F1 0.389" in summary
